"""In-memory connected channel pairs for tests: :func:`memory_pair`.

Each direction is a bounded byte queue (``capacity`` bytes; 0 clogs it) with
the semantics of a unix stream socket:

* writes take what fits and return the count; a full queue blocks, or returns
  ``None`` when non-blocking;
* fds written with data are duplicated into the queue and delivered to the
  read that receives the first byte of that write (a read never crosses into
  the next write that carries fds); a read that does not ask for fds closes
  them, as the kernel does; peeking returns no fds;
* ``shutdown(WRITE)`` or ``close()`` gives the peer end of stream after the
  queued data; writing to a peer that closed or shut its read side raises
  :class:`~iochannel.errors.ChannelBrokenPipeError` (also a :class:`BrokenPipeError`).

Readiness is exposed through eventfds kept level-triggered (readable exactly
while the condition holds), so memory channels work with blocking waits,
every asyncio loop and any layer stacked on top, like fd-backed channels.
"""

from __future__ import annotations

import errno
import os
import select
import threading
from collections import deque
from collections.abc import Sequence
from typing import final

from .._core.channel import Buffer, Channel, close_fds
from .._core.flags import Condition, Feature, ReadFlag, Shutdown, WriteFlag
from .._core.watch import FdSpec, forget_fd
from ..errors import ChannelBrokenPipeError

__all__ = ["LevelFd", "MemoryChannel", "memory_pair"]

_POLLIN = select.POLLIN


class LevelFd:
    """An eventfd that is readable exactly while a condition holds."""

    __slots__ = ("fd", "on")

    def __init__(self) -> None:
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.on = False

    def set(self, on: bool) -> None:
        if on != self.on:
            self.on = on
            if on:
                os.eventfd_write(self.fd, 1)
            else:
                os.eventfd_read(self.fd)


class _Queue:
    """One direction of a pair; every field is guarded by ``lock``."""

    __slots__ = (
        "capacity",
        "data",
        "eof",
        "fds",
        "lock",
        "read_closed",
        "read_pos",
        "readable",
        "users",
        "writable",
    )

    def __init__(self, capacity: int) -> None:
        self.lock = threading.Lock()
        self.capacity = capacity
        self.data = bytearray()
        self.read_pos = 0  # stream position of data[0]
        # (stream position of the write's first byte, fds), in order
        self.fds: deque[tuple[int, list[int]]] = deque()
        self.eof = False
        self.read_closed = False
        self.readable = LevelFd()
        self.writable = LevelFd()
        self.users = 2
        self.update()

    def update(self) -> None:
        self.readable.set(bool(self.data) or self.eof or bool(self.fds))
        self.writable.set(self.read_closed or self.eof or len(self.data) < self.capacity)

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            for _pos, fds in self.fds:
                close_fds(fds)
            self.fds.clear()
            for level in (self.readable, self.writable):
                forget_fd(level.fd)
                os.close(level.fd)


@final
class MemoryChannel(Channel):
    """One end of a :func:`memory_pair`."""

    __slots__ = ("_in", "_out", "_shut")

    def __init__(self, incoming: _Queue, outgoing: _Queue, name: str) -> None:
        super().__init__(Feature.FD_PASS | Feature.SHUTDOWN | Feature.READ_MSG_PEEK, name)
        self._in = incoming
        self._out = outgoing
        self._shut = Shutdown(0)

    @property
    def capacity(self) -> int:
        """Bytes the outgoing queue holds before writes block (0 clogs it)."""
        return self._out.capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        q = self._out
        with q.lock:
            q.capacity = value
            q.update()

    def _block_until(self, level: LevelFd) -> None:
        poller = select.poll()
        poller.register(level.fd, _POLLIN)
        poller.poll(None)

    def _readv(
        self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int | None:
        q = self._in
        while True:
            with q.lock:
                if self._shut & Shutdown.READ:
                    return 0
                if q.data or q.fds or q.eof:
                    return self._take(q, buffers, flags, fds)
            if not self._blocking:
                return None
            self._block_until(q.readable)
            self._check_open()

    def _take(
        self, q: _Queue, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int:
        limit = len(q.data)
        attached: list[int] = []
        if q.fds:
            pos, first = q.fds[0]
            if pos == q.read_pos:
                attached = first
                limit = q.fds[1][0] - q.read_pos if len(q.fds) > 1 else limit
            else:
                limit = pos - q.read_pos
        n = 0
        with memoryview(q.data) as src:
            for b in buffers:
                view = memoryview(b).cast("B")
                with src[n : min(limit, n + len(view))] as chunk:
                    view[: len(chunk)] = chunk
                    n += len(chunk)
                if n >= limit:
                    break
        if flags & ReadFlag.MSG_PEEK:
            return n
        if attached and (n or not q.data):
            q.fds.popleft()
            if fds is not None:
                if not flags & ReadFlag.FD_PRESERVE_BLOCKING:
                    for fd in attached:
                        os.set_blocking(fd, True)
                fds.extend(attached)
            else:
                close_fds(attached)
        del q.data[:n]
        q.read_pos += n
        q.update()
        return n

    def _writev(
        self, buffers: Sequence[Buffer], fds: Sequence[int], flags: WriteFlag
    ) -> int | None:
        q = self._out
        while True:
            with q.lock:
                if self._shut & Shutdown.WRITE or q.eof:
                    raise ChannelBrokenPipeError(
                        errno.EPIPE, f"{self.name}: write side is shut down"
                    )
                if q.read_closed:
                    raise ChannelBrokenPipeError(errno.EPIPE, f"{self.name}: peer closed")
                room = q.capacity - len(q.data)
                if room > 0:
                    return self._put(q, buffers, fds, room)
            if not self._blocking:
                return None
            self._block_until(q.writable)
            self._check_open()

    def _put(self, q: _Queue, buffers: Sequence[Buffer], fds: Sequence[int], room: int) -> int:
        start = len(q.data)
        for b in buffers:
            view = memoryview(b).cast("B")
            take = view[: room - (len(q.data) - start)]
            q.data += take
            if len(take) < len(view):
                break
        n = len(q.data) - start
        if fds and n:
            dups = [os.dup(fd) for fd in fds]  # os.dup makes them non-inheritable
            q.fds.append((q.read_pos + start, dups))
        q.update()
        return n

    def _pending(self, cond: Condition) -> Condition:
        # The eventfds only wake waiters; the queue state says what holds.
        ready = Condition.NONE
        if cond & Condition.IN and self._in.readable.on:
            ready |= Condition.IN
        if cond & Condition.OUT and self._out.writable.on:
            ready |= Condition.OUT
        return ready

    def _wait_fds(self, cond: Condition) -> FdSpec:
        spec: list[tuple[int, int]] = []
        if cond & Condition.IN:
            spec.append((self._in.readable.fd, _POLLIN))
        if cond & Condition.OUT:
            spec.append((self._out.writable.fd, _POLLIN))
        return tuple(spec)

    def _set_blocking(self, blocking: bool) -> None:
        pass

    def _shutdown(self, how: Shutdown) -> None:
        self._shut |= how
        if how & Shutdown.WRITE:
            with self._out.lock:
                self._out.eof = True
                self._out.update()
        if how & Shutdown.READ:
            with self._in.lock:
                self._in.read_closed = True
                self._in.update()

    def _close(self) -> None:
        self._shutdown(Shutdown.BOTH)
        for q in (self._in, self._out):
            with q.lock:
                q.readable.set(True)  # wake our own blocked calls; they see the close
                q.release()


def memory_pair(capacity: int = 65536) -> tuple[MemoryChannel, MemoryChannel]:
    """Two connected :class:`MemoryChannel` ends; each direction holds *capacity* bytes."""
    a_to_b, b_to_a = _Queue(capacity), _Queue(capacity)
    return (
        MemoryChannel(b_to_a, a_to_b, "memory[0]"),
        MemoryChannel(a_to_b, b_to_a, "memory[1]"),
    )
