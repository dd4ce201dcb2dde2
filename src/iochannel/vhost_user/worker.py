"""Worker threads that process virtqueues.

Contract:

* :class:`WorkerPool` implements :class:`~.handler.RingControl`.  Each worker
  thread owns the queues of one mask from
  :meth:`VhostUserBackend.queues_per_thread`, polls their kick eventfds plus a
  private wake eventfd, and calls :meth:`VhostUserBackend.handle_queue` after a
  kick.
* :meth:`WorkerPool.start` and :meth:`WorkerPool.stop` are synchronous: they
  return once the worker has applied the change.  A worker applies changes only
  between two ``handle_queue`` calls, and ``stop`` then waits for the queue's
  requests still in flight (:meth:`Virtqueue.drain`), so after it returns
  nothing touches the queue; that is the drain done before GET_VRING_BASE is
  answered and before guest memory is unmapped.
* After ``start`` the worker processes the queue once without waiting for a
  kick, so kicks sent before the queue was enabled are not lost.
* An exception from ``handle_queue`` (a :class:`VirtqueueError` from a bad
  driver or from guest memory that went away, or a device bug) stops the
  queue, and ``on_broken`` gets the reason so the server can log it and end
  the connection.
* :meth:`WorkerPool.close` stops and joins every thread and closes the wake fds.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

from .device import VhostUserBackend
from .virtqueue import Virtqueue, VirtqueueError

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)


class _Worker:
    """One thread serving a fixed set of queue indexes."""

    def __init__(
        self, backend: VhostUserBackend, thread_id: int, on_broken: Callable[[str], None]
    ) -> None:
        self.backend = backend
        self.thread_id = thread_id
        self.on_broken = on_broken
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._lock = threading.Lock()
        self._adopted = threading.Condition(self._lock)
        # What the control side wants; the thread copies it when woken.
        self._wanted: dict[int, Virtqueue] = {}
        self._rescan: set[int] = set()
        self._generation = 0
        self._applied = 0
        self._exit = False
        self._dead = False
        self._thread = threading.Thread(
            target=self._run, name=f"vhost-user-worker-{thread_id}", daemon=True
        )
        self._thread.start()

    def change(self, vq: Virtqueue, run: bool) -> None:
        """Start or stop *vq* and wait until the thread has adopted the change."""
        with self._lock:
            if run:
                self._wanted[vq.index] = vq
                self._rescan.add(vq.index)
            else:
                self._wanted.pop(vq.index, None)
                self._rescan.discard(vq.index)
            self._generation += 1
            target = self._generation
            os.eventfd_write(self.wake_fd, 1)
            while self._applied < target and not self._dead:
                self._adopted.wait()

    def close(self) -> None:
        with self._lock:
            self._exit = True
            os.eventfd_write(self.wake_fd, 1)
        self._thread.join()
        os.close(self.wake_fd)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            # A failed poll or eventfd read: nothing of this worker's queues can
            # be served any more, so the connection ends.
            log.exception("vhost-user worker %d failed", self.thread_id)
            self.on_broken(f"worker {self.thread_id} failed")
        finally:
            with self._lock:
                self._dead = True
                self._adopted.notify_all()

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self.wake_fd, select.POLLIN)
        registered: dict[int, Virtqueue] = {}
        while True:
            kicked: list[Virtqueue] = []
            for fd, _ in poller.poll():
                vq = registered.get(fd)
                if vq is None:
                    continue
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                kicked.append(vq)
            # Adopt control changes before handling kicks, so a queue is never
            # processed after stop() returned.
            with self._lock:
                try:
                    os.eventfd_read(self.wake_fd)
                except BlockingIOError:
                    pass
                if self._exit:
                    self._applied = self._generation
                    self._adopted.notify_all()
                    return
                if self._applied != self._generation:
                    for fd in registered:
                        poller.unregister(fd)
                    registered = {
                        vq.kick_fd: vq for vq in self._wanted.values() if vq.kick_fd is not None
                    }
                    for fd in registered:
                        poller.register(fd, select.POLLIN)
                    kicked += [self._wanted[i] for i in self._rescan]
                    self._rescan.clear()
                    self._applied = self._generation
                    self._adopted.notify_all()
                active = set(self._wanted.values())
            for vq in dict.fromkeys(kicked):
                if vq in active:
                    self._handle(vq)

    def _handle(self, vq: Virtqueue) -> None:
        try:
            self.backend.handle_queue(vq, self.thread_id)
        except VirtqueueError as exc:
            # Only the text, which names the queue, is kept: the traceback
            # references guest-memory views that would keep the mapping alive
            # after disconnect.
            reason = str(exc)
        except Exception:
            log.exception("vhost-user queue %d: device error", vq.index)
            reason = f"queue {vq.index}: device error"
        else:
            return
        with self._lock:
            self._wanted.pop(vq.index, None)
            # Makes the loop drop the kick fd from the poll set.
            self._generation += 1
            os.eventfd_write(self.wake_fd, 1)
        self.on_broken(reason)


class WorkerPool:
    """Worker threads for a backend's queues; a :class:`~.handler.RingControl`."""

    def __init__(self, backend: VhostUserBackend, on_broken: Callable[[str], None]) -> None:
        self._workers: list[_Worker] = []
        self._by_queue: dict[int, _Worker] = {}
        try:
            for thread_id, mask in enumerate(backend.queues_per_thread()):
                worker = _Worker(backend, thread_id, on_broken)
                self._workers.append(worker)
                for i in range(backend.num_queues):
                    if mask >> i & 1:
                        self._by_queue.setdefault(i, worker)
        except BaseException:
            self.close()
            raise
        missing = set(range(backend.num_queues)) - set(self._by_queue)
        if missing:
            self.close()
            raise ValueError(f"queues_per_thread() leaves queues {sorted(missing)} unserved")

    def start(self, vq: Virtqueue) -> None:
        self._by_queue[vq.index].change(vq, True)

    def stop(self, vq: Virtqueue) -> None:
        self._by_queue[vq.index].change(vq, False)
        vq.drain()

    def close(self) -> None:
        """Stop every worker thread; idempotent."""
        workers, self._workers = self._workers, []
        for w in workers:
            w.close()
