"""BufferChannel: a growable in-memory file with a position."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import final

from .._core.channel import Buffer, Channel
from .._core.flags import Condition, Feature, ReadFlag, WriteFlag

__all__ = ["BufferChannel"]


@final
class BufferChannel(Channel):
    """A growable in-memory file with a position.

    Reads copy from the position up to the end of the data and return 0 at the end
    (never ``None``).  Writes store at the position, overwriting what is there and
    extending the data when they pass its end; seeking past the end and writing
    leaves a zero-filled gap, as a sparse file does.  ``seek`` accepts
    ``SEEK_SET``/``SEEK_CUR``/``SEEK_END`` and refuses negative positions.  The
    channel is always ready for reading and writing.  Thread-safe.
    """

    __slots__ = ("_data", "_lock", "_offset")

    def __init__(self, initial: Buffer = b"", *, name: str = "buffer") -> None:
        super().__init__(Feature.SEEKABLE, name)
        self._data = bytearray(initial)
        self._offset = 0
        self._lock = threading.Lock()

    def getvalue(self) -> bytes:
        """A copy of the whole content."""
        with self._lock:
            return bytes(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def offset(self) -> int:
        return self._offset

    def _copy_out(self, buffers: Sequence[Buffer], offset: int) -> int:
        data = memoryview(self._data)
        pos = offset
        for b in buffers:
            view = memoryview(b).cast("B")
            chunk = data[pos : pos + len(view)]
            view[: len(chunk)] = chunk
            pos += len(chunk)
            if len(chunk) < len(view):
                break
        return pos - offset

    def _copy_in(self, buffers: Sequence[Buffer], offset: int) -> int:
        data = self._data
        if offset > len(data):
            data.extend(bytes(offset - len(data)))
        pos = offset
        for b in buffers:
            view = memoryview(b).cast("B")
            data[pos : pos + len(view)] = view
            pos += len(view)
        return pos - offset

    def _readv(self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None) -> int:
        with self._lock:
            n = self._copy_out(buffers, self._offset)
            self._offset += n
            return n

    def _writev(self, buffers: Sequence[Buffer], fds: Sequence[int], flags: WriteFlag) -> int:
        with self._lock:
            n = self._copy_in(buffers, self._offset)
            self._offset += n
            return n

    def _preadv(self, buffers: Sequence[Buffer], offset: int) -> int:
        with self._lock:
            return self._copy_out(buffers, offset)

    def _pwritev(self, buffers: Sequence[Buffer], offset: int) -> int:
        with self._lock:
            return self._copy_in(buffers, offset)

    def _seek(self, offset: int, whence: int) -> int:
        with self._lock:
            base = {os.SEEK_SET: 0, os.SEEK_CUR: self._offset, os.SEEK_END: len(self._data)}
            if whence not in base:
                raise ValueError(f"invalid whence {whence}: use SEEK_SET, SEEK_CUR or SEEK_END")
            pos = base[whence] + offset
            if pos < 0:
                raise ValueError(f"seek to negative position {pos}")
            self._offset = pos
            return pos

    def _pending(self, cond: Condition) -> Condition:
        return cond & (Condition.IN | Condition.OUT)

    def _set_blocking(self, blocking: bool) -> None:
        pass

    def _close(self) -> None:
        with self._lock:
            self._data = bytearray()
            self._offset = 0
