"""Virtqueues served on asyncio loops (iothreads) instead of worker threads.

Contract:

* :class:`LoopRings` implements :class:`~.handler.RingControl` like
  :class:`~.worker.WorkerPool`, but queue *i* is served on ``loops[i]``: a
  task there waits for its kick fd with :meth:`~iochannel.Channel.wait_async`
  (which waits on the loop running the task) and calls
  :meth:`VhostUserBackend.handle_queue` on that loop's thread.  Several queues
  may share a loop.
* :meth:`LoopRings.start` returns at once; the task processes the queue once
  before its first wait, so kicks sent before the start are not lost.
* :meth:`LoopRings.stop` (any thread, the queue's own loop included) returns
  once the queue's task will not touch it again and its requests in flight
  completed: it waits for a ``handle_queue`` call in progress, then closes the
  task's channel, which ends its wait.
* A :class:`VirtqueueError` or a device bug from ``handle_queue`` stops the
  queue and reports the reason to ``on_broken``, as the worker pool does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence

from .._core.flags import Condition
from .._transports.file import FileChannel
from ..errors import ChannelClosedError
from .device import VhostUserBackend
from .virtqueue import Virtqueue, VirtqueueError

__all__ = ["LoopRings"]

log = logging.getLogger(__name__)


class _Session:
    """One start..stop of a queue: its kick channel and whether it was stopped."""

    def __init__(self, vq: Virtqueue, kick: FileChannel) -> None:
        self.vq = vq
        self.kick = kick
        self.stopped = False
        #: Held while handle_queue runs: stop() waits for it.
        self.lock = threading.Lock()
        self.task: asyncio.Task[None] | None = None


class LoopRings:
    """Serves queue *i* of *backend* on ``loops[i]``; see the module docstring."""

    def __init__(
        self,
        backend: VhostUserBackend,
        loops: Sequence[asyncio.AbstractEventLoop],
        on_broken: Callable[[str], None],
    ) -> None:
        if len(loops) != backend.num_queues:
            raise ValueError(f"{len(loops)} loops for {backend.num_queues} queues")
        self.backend = backend
        self.loops = list(loops)
        self.on_broken = on_broken
        self._sessions: dict[int, _Session] = {}

    def start(self, vq: Virtqueue) -> None:
        self.stop(vq)
        assert vq.kick_fd is not None
        kick = FileChannel.from_dup(vq.kick_fd, name=f"queue {vq.index} kick")
        kick.set_blocking(False)
        session = self._sessions[vq.index] = _Session(vq, kick)
        loop = self.loops[vq.index]

        def spawn() -> None:
            # Referenced until done: the loop keeps only a weak reference.
            session.task = loop.create_task(self._serve(session))

        loop.call_soon_threadsafe(spawn)

    def stop(self, vq: Virtqueue) -> None:
        session = self._sessions.pop(vq.index, None)
        if session is not None:
            with session.lock:
                session.stopped = True
            session.kick.close()  # ends the task's wait, from any thread
        vq.drain()

    def close(self) -> None:
        """Stop every queue; idempotent."""
        for session in list(self._sessions.values()):
            self.stop(session.vq)

    async def _serve(self, s: _Session) -> None:
        counter = bytearray(8)
        reason = ""
        try:
            while True:
                with s.lock:
                    if s.stopped:
                        return
                    try:
                        self.backend.handle_queue(s.vq, s.vq.index)
                    except VirtqueueError as exc:
                        # Only the text: a traceback would keep guest memory mapped.
                        reason = str(exc)
                    except Exception:
                        log.exception("vhost-user queue %d: device error", s.vq.index)
                        reason = f"queue {s.vq.index}: device error"
                    if reason:
                        s.stopped = True
                        break
                await s.kick.wait_async(Condition.IN)
                s.kick.readv([counter])  # None if another reader took the kick
        except ChannelClosedError:
            return  # stopped
        finally:
            s.kick.close()
        self.on_broken(reason)
