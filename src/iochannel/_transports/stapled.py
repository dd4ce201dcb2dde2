"""StapledChannel: one duplex channel from a channel to read and a channel to write."""

from __future__ import annotations

from collections.abc import Sequence

from .._core.channel import Buffer, Channel
from .._core.flags import Condition, Feature, ReadFlag, Shutdown, WriteFlag
from .._core.watch import FdSpec

__all__ = ["StapledChannel", "pipe_pair"]

_SHARED = Feature.FD_PASS


class StapledChannel(Channel):
    """One duplex channel from a channel to read and a channel to write.

    Reads go to *reader*, writes to *writer*; waits watch both (IN on the reader,
    OUT on the writer).  ``shutdown(WRITE)`` closes the writer, so a pipe's reader
    sees end of stream, and ``shutdown(READ)`` closes the reader; closing the
    stapled channel closes both.  Features are those both halves share, minus fd
    passing unless both carry fds.  Typical use: a pipe pair as a transport for a
    layer (``TLSChannel`` over two pipes), or a child's stdout and stdin.
    """

    __slots__ = ("_reader", "_writer")

    def __init__(self, reader: Channel, writer: Channel, *, name: str = "") -> None:
        shared = reader.features & writer.features & _SHARED
        super().__init__(Feature(shared) | Feature.SHUTDOWN, name or f"{reader.name}+{writer.name}")
        self._reader = reader
        self._writer = writer
        self._blocking = reader.blocking and writer.blocking

    @property
    def reader(self) -> Channel:
        return self._reader

    @property
    def writer(self) -> Channel:
        return self._writer

    def _readv(
        self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int | None:
        if self._reader.closed:
            return 0  # read side shut down
        return self._reader.readv(buffers, flags=flags, fds=fds)

    def _writev(
        self, buffers: Sequence[Buffer], fds: Sequence[int], flags: WriteFlag
    ) -> int | None:
        return self._writer.writev(buffers, fds=fds, flags=flags)

    def _wait_fds(self, cond: Condition) -> FdSpec:
        spec: FdSpec = ()
        if cond & Condition.IN and not self._reader.closed:
            spec += self._reader._wait_fds(Condition.IN)
        if cond & Condition.OUT and not self._writer.closed:
            spec += self._writer._wait_fds(Condition.OUT)
        return spec

    def _pending(self, cond: Condition) -> Condition:
        ready = Condition.NONE
        if cond & Condition.IN:
            ready |= Condition.IN if self._reader.closed else self._reader._pending(Condition.IN)
        if cond & Condition.OUT and not self._writer.closed:
            ready |= self._writer._pending(Condition.OUT)
        return ready

    def _set_blocking(self, blocking: bool) -> None:
        for ch in (self._reader, self._writer):
            if not ch.closed:
                ch.set_blocking(blocking)

    def _shutdown(self, how: Shutdown) -> None:
        if how & Shutdown.WRITE:
            self._writer.close()
        if how & Shutdown.READ:
            self._reader.close()

    def _close(self) -> None:
        self._reader.close()
        self._writer.close()


def pipe_pair() -> tuple[StapledChannel, StapledChannel]:
    """Two duplex channels over two pipes (what ``socketpair`` gives, with pipes)."""
    from .file import FileChannel

    r1, w1 = FileChannel.pipe()
    r2, w2 = FileChannel.pipe()
    return StapledChannel(r1, w2, name="pipes[0]"), StapledChannel(r2, w1, name="pipes[1]")
