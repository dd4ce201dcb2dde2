"""Channels that translate the bytes of another channel (TLS, WebSocket).

A layer *owns* its master channel: closing the layer closes the master.  It
advertises ``Feature.SHUTDOWN`` when the master does and never ``FD_PASS``;
blocking mode, delay, cork and shutdown are forwarded to the master.

Every layer starts with a handshake, written once as a non-blocking step
(:meth:`LayerChannel._handshake_step`) that returns the condition it needs on
the master, or ``Condition.NONE`` when done.  Three drivers run it:

* :meth:`handshake` blocks;
* ``await`` :meth:`ahandshake` waits on the running loop;
* :meth:`handshake_task` returns a :class:`~iochannel.Task` completed on a
  loop through a watch on the master; its callback runs exactly once, and
  never after :meth:`close`.

``readv``/``writev`` also drive a pending handshake (returning ``None`` while it
waits), so a layer can be used without calling any of these.  A handshake
failure is sticky: every later call raises the same error.

Writes: ``writev`` encodes at most one chunk of the caller's bytes and pushes
the result to the master.  If the master does not take all of it, ``writev``
returns ``None`` and the encoded bytes stay queued; the next ``writev`` (the
caller retries with the same bytes, as ``writev_all`` does) finishes pushing
them and returns the count encoded earlier.  So a non-blocking layer never
holds more than one chunk, and nothing is left behind once ``writev_all``
returns.  Protocol replies (TLS alerts, WebSocket pongs) share the queue.

Readiness reflects the layer: ``_pending`` first finishes any work that needs
no waiting (a handshake step, flushing queued bytes) when the master is
non-blocking, then reports what the layer holds; ``_wait_fds`` asks the master
for the direction the layer really needs.

Threads: one reader and one writer may run at once (for instance on two
loops).  ``_engine`` guards the protocol engine, ``_wlock`` the queue and
master writes (taken before ``_engine`` when both are needed); master reads
happen outside both, so a blocked reader never stalls the writer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

from .._core.channel import Buffer, Channel
from .._core.flags import Condition, Feature, Shutdown, WriteFlag
from .._core.task import Task
from .._core.watch import FdSpec, Watch
from ..errors import ChannelBusyError

__all__ = ["LayerChannel"]

_MAX_IOV = 64
# Large master reads amortise the per-call cost over several records or frames.
_READ_CHUNK = 256 * 1024


class LayerChannel(Channel):
    """Base class of channels layered over a master channel (see the module doc)."""

    __slots__ = (
        "_engine",
        "_hs_done",
        "_hs_error",
        "_hs_task",
        "_hs_want",
        "_hs_watch",
        "_master",
        "_owed",
        "_rbuf",
        "_wlock",
        "_wq",
        "_wq_size",
    )

    def __init__(self, master: Channel, name: str) -> None:
        master._check_open()
        super().__init__(master.features & Feature.SHUTDOWN, name)
        self._master = master
        self._blocking = master.blocking
        self._hs_done = False
        self._hs_error: BaseException | None = None
        # The master condition the handshake waits for; a fresh one may need either.
        self._hs_want = Condition.IN | Condition.OUT
        self._hs_task: Task[LayerChannel] | None = None
        self._hs_watch: Watch | None = None
        # Encoded bytes the master has not taken yet.
        self._wq: list[Buffer] = []
        self._wq_size = 0
        # Caller bytes encoded into the queue by a writev that returned None.
        self._owed = 0
        self._engine = threading.Lock()
        self._wlock = threading.Lock()
        self._rbuf = bytearray()

    @property
    def master(self) -> Channel:
        """The channel this layer reads and writes."""
        return self._master

    @property
    def handshake_done(self) -> bool:
        return self._hs_done

    def _read_master(self) -> tuple[memoryview, int | None]:
        """One master read into the layer's buffer: (buffer, count / 0 at EOF / None).

        The buffer is allocated on first use, so idle layers stay small.
        """
        if not self._rbuf:
            self._rbuf = bytearray(_READ_CHUNK)
        return memoryview(self._rbuf), self._master.readv((self._rbuf,))

    # ---- the output queue ---------------------------------------------------

    def _collect_output(self) -> None:
        """Move what the protocol engine produced into the queue (under ``_engine``)."""

    def _queue(self, data: Buffer) -> None:
        self._wq.append(data)
        self._wq_size += len(memoryview(data))

    def _flush(self) -> bool:
        """Push queued bytes to the master; ``True`` once the queue is empty."""
        with self._wlock:
            return self._flush_locked()

    def _flush_locked(self) -> bool:
        with self._engine:
            self._collect_output()
        wq = self._wq
        while wq:
            # Many small replies (pongs) must not exceed the kernel's iovec limit.
            n = self._master.writev(wq[:_MAX_IOV])
            if n is None:
                return False
            self._wq_size -= n
            while n:
                head = memoryview(wq[0])
                if n < len(head):
                    wq[0] = head[n:]
                    break
                n -= len(head)
                del wq[0]
        return True

    def _flush_if_free(self) -> bool:
        """Flush unless a writer is doing it already; ``True`` if the queue emptied.

        Readers use this: waiting for a writer blocked on the master could
        deadlock two blocking peers that both write and read.
        """
        if not self._wlock.acquire(blocking=False):
            return False
        try:
            return self._flush_locked()
        finally:
            self._wlock.release()

    def _try_flush(self) -> None:
        """Flush without waiting for the lock or the master (readiness checks)."""
        if self._wq and not self._master.blocking:
            self._flush_if_free()

    def _drain(self) -> None:
        """Flush, waiting for the master as long as needed."""
        while not self._flush():
            self._master.wait(Condition.OUT)

    async def _adrain(self) -> None:
        while not self._flush():
            await self._master.wait_async(Condition.OUT)

    # ---- writing ---------------------------------------------------------------

    def _encode(self, buffers: Sequence[Buffer]) -> int:
        """Encode up to one chunk of *buffers* into the queue; return the count taken.

        Called with ``_wlock`` held and the queue empty.
        """
        raise NotImplementedError

    def _writev(
        self, buffers: Sequence[Buffer], fds: Sequence[int], flags: WriteFlag
    ) -> int | None:
        if not self._can_transfer():
            return None
        with self._wlock:
            # Whatever the engine produced meanwhile is collected after our bytes:
            # both are whole records or frames, so the order between them is free.
            if self._wq and not self._flush_locked():
                return None
            if self._owed:
                n, self._owed = self._owed, 0
                return n
            n = self._encode(buffers)
            if n and not self._flush_locked():
                # The caller may reuse its buffers once we return: own what is queued.
                self._wq = [bytes(d) if isinstance(d, memoryview) else d for d in self._wq]
                self._owed = n
                return None
            return n

    # ---- the handshake ---------------------------------------------------

    def _handshake_step(self) -> Condition:
        """Advance the handshake without blocking on a non-blocking master.

        Returns the master condition to wait for, or ``NONE`` once complete.
        """
        raise NotImplementedError

    def _step(self) -> Condition:
        if self._hs_done:
            return Condition.NONE
        if self._hs_error is not None:
            raise self._hs_error
        self._check_open()
        try:
            want = self._handshake_step()
        except Exception as exc:
            self._hs_error = exc
            raise
        if want:
            self._hs_want = want
        else:
            self._hs_done = True
        return want

    def _can_transfer(self) -> bool:
        """True once the handshake is done; ``False`` if it still waits on the master."""
        return self._hs_done or not self._step()

    def handshake(self) -> None:
        """Run the handshake to completion, waiting as needed."""
        while cond := self._step():
            self._master.wait(cond)

    async def ahandshake(self) -> None:
        """Run the handshake on the running loop."""
        self._async_mode()
        while cond := self._step():
            await self._master.wait_async(cond)

    def handshake_task(
        self,
        callback: Callable[[Task[LayerChannel]], None] | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Task[LayerChannel]:
        """Start the handshake on *loop* (default: running); return its task.

        The task's result is this channel; ``callback(task)`` runs once on the
        loop when the handshake ends, and never if the channel is closed first.
        Switches the channel to non-blocking mode.
        """
        if loop is None:
            loop = asyncio.get_running_loop()
        if self._hs_task is not None:
            raise ChannelBusyError(f"{self.name}: a handshake task is already running")
        self.set_blocking(False)
        task: Task[LayerChannel] = Task(self, callback, loop=loop)
        self._hs_task = task

        def arm(cond: Condition) -> None:
            self._hs_watch = self._master.add_watch(cond, on_ready, loop=loop)

        def on_ready(_master: Channel, _ready: Condition) -> bool:
            if task.done or self._closed:
                return False
            try:
                want = self._step()
            except Exception as exc:
                task.set_error(exc)
            else:
                if want:
                    if self._hs_watch is not None and want == self._hs_watch.condition:
                        return True
                    arm(want)
                    return False
                task.set_result(self)
            self._hs_task = self._hs_watch = None
            task.complete()
            return False

        arm(self._hs_want)
        return task

    # ---- readiness ---------------------------------------------------------

    def _pending(self, cond: Condition) -> Condition:
        if not self._hs_done:
            if self._master.blocking:
                return Condition.NONE
            try:
                if self._step():
                    return Condition.NONE
            except Exception:
                return cond  # the next read or write reports the error
        self._try_flush()
        ready = Condition.NONE
        if cond & Condition.IN and self._readable():
            ready |= Condition.IN
        if cond & Condition.OUT and not self._wq:
            ready |= Condition.OUT
        return ready

    def _wait_fds(self, cond: Condition) -> FdSpec:
        if not self._hs_done:
            return self._master._wait_fds(self._hs_want)
        need = self._read_needs() if cond & Condition.IN else Condition.NONE
        if cond & Condition.OUT or self._wq:
            need |= Condition.OUT
        return self._master._wait_fds(need)

    def _readable(self) -> bool:
        """Whether a read would make progress without waiting (handshake done)."""
        raise NotImplementedError

    def _read_needs(self) -> Condition:
        """The master condition a blocked read waits for (besides flushing)."""
        return Condition.IN

    def _io_owner(self) -> object:
        return self._master._io_owner()

    # ---- forwarded controls --------------------------------------------------

    def _set_blocking(self, blocking: bool) -> None:
        self._master.set_blocking(blocking)

    def _set_delay(self, enabled: bool) -> None:
        self._master.set_delay(enabled)

    def _set_cork(self, enabled: bool) -> None:
        self._master.set_cork(enabled)

    def _shutdown(self, how: Shutdown) -> None:
        self._master.shutdown(how)

    # ---- closing ---------------------------------------------------------------

    def _goodbye(self) -> None:
        """Best effort, never blocking: tell the peer the stream ends here."""

    def _close(self) -> None:
        task, self._hs_task = self._hs_task, None
        if task is not None:
            task.cancel()
        watch, self._hs_watch = self._hs_watch, None
        if watch is not None:
            watch.cancel()
        try:
            if self._hs_done and not self._master.closed:
                # The master is closed next: never let a goodbye block on it.
                self._master.set_blocking(False)
                self._goodbye()
        except Exception:
            pass  # a goodbye is a courtesy; closing must not fail because of it
        finally:
            self._master.close()
