"""NullChannel: writes are discarded whole, reads are end of stream, always ready."""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

from .._core.channel import Buffer, Channel
from .._core.flags import Condition, Feature, ReadFlag, WriteFlag

__all__ = ["NullChannel"]


@final
class NullChannel(Channel):
    """Writes are discarded whole, reads are end of stream, always ready.

    Like ``/dev/null`` without a file: writes return their full length, reads
    return 0, seeks return 0, and every watch or wait is satisfied at once.  After
    ``close()`` every operation raises :class:`~iochannel.ChannelClosedError`.
    """

    __slots__ = ()

    def __init__(self, *, name: str = "null") -> None:
        super().__init__(Feature.SEEKABLE, name)

    def _readv(self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None) -> int:
        return 0

    def _writev(self, buffers: Sequence[Buffer], fds: Sequence[int], flags: WriteFlag) -> int:
        return sum(memoryview(b).nbytes for b in buffers)

    def _preadv(self, buffers: Sequence[Buffer], offset: int) -> int:
        return 0

    def _pwritev(self, buffers: Sequence[Buffer], offset: int) -> int:
        return self._writev(buffers, (), WriteFlag.NONE)

    def _seek(self, offset: int, whence: int) -> int:
        return 0

    def _pending(self, cond: Condition) -> Condition:
        return cond & (Condition.IN | Condition.OUT)

    def _set_blocking(self, blocking: bool) -> None:
        pass

    def _close(self) -> None:
        pass
