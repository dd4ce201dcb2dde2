"""HeadChannel: a layer that reads one HTTP request head, then replays it.

The console serves pages and WebSocket upgrades on one port, so it must read
a request before it knows who handles it; the WebSocket layer, though, reads
(and checks) the request itself.  This layer's handshake reads the master up
to the blank line ending the head, at most :data:`~iochannel.web.http.MAX_HEAD`
bytes; :attr:`HeadChannel.head` is then the head (or ``None`` when the limit
was reached without one — answer 431).  Afterwards reads return every byte
the handshake consumed — the head and whatever followed it — before reading
the master again, so a :class:`~iochannel.websock.WebsockChannel` stacked on
top sees the connection from its first byte.  Writes go to the master
unchanged.  A master EOF before the end of the head fails the handshake with
:class:`ConnectionError`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..channel import Buffer, Channel
from ..flags import Condition, ReadFlag
from ..layer import LayerChannel
from ..websock_handshake import end_of_head
from .http import MAX_HEAD

__all__ = ["HeadChannel"]

# Reads are small: the head is bounded anyway and the rest is replayed.
_CHUNK = 4096


class HeadChannel(LayerChannel):
    """Reads one request head from *master* (see the module docstring)."""

    __slots__ = ("_buf", "_replay", "head")

    def __init__(self, master: Channel, name: str = "") -> None:
        super().__init__(master, name or f"http({master.name})")
        self._buf = bytearray()
        self._replay = memoryview(b"")
        #: The request head, blank line included; ``None`` if it exceeded the limit.
        self.head: bytes | None = None

    def _handshake_step(self) -> Condition:
        buf = self._buf
        end = end_of_head(buf)
        while end < 0 and len(buf) < MAX_HEAD:
            chunk = bytearray(min(_CHUNK, MAX_HEAD - len(buf)))
            n = self._master.readv((chunk,))
            if n is None:
                return Condition.IN
            if n == 0:
                raise ConnectionError(
                    f"{self.name}: connection closed inside the request head "
                    f"({len(buf)} bytes received)"
                )
            start = len(buf)
            buf += memoryview(chunk)[:n]
            end = end_of_head(buf, start)
        self.head = bytes(buf[:end]) if end >= 0 else None
        self._replay = memoryview(bytes(buf))
        self._buf = bytearray()
        return Condition.NONE

    def _readv(
        self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int | None:
        if not self._can_transfer():
            return None
        if not self._replay:
            return self._master.readv(buffers)
        total = 0
        for buf in buffers:
            view = memoryview(buf).cast("B")
            n = min(len(view), len(self._replay))
            view[:n] = self._replay[:n]
            self._replay = self._replay[n:]
            total += n
            if not self._replay:
                break
        return total

    def _encode(self, buffers: Sequence[Buffer]) -> int:
        total = 0
        for buf in buffers:
            view = memoryview(buf).cast("B")
            if view:
                self._queue(view)
                total += len(view)
        return total

    def _readable(self) -> bool:
        return bool(self._replay) or bool(self._master._pending(Condition.IN))
