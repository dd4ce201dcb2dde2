"""HeadChannel: a layer that reads one HTTP request head, then replays it.

The console serves pages and WebSocket upgrades on one port, so it must read
a request before it knows who handles it; the WebSocket layer, though, reads
(and checks) the request itself.  This layer's handshake reads the master
through a :class:`~iochannel._parsers.http11.RequestReader` (h11, at most
:data:`~iochannel._parsers.http11.MAX_HEAD` bytes) until the head is complete or
refused: :attr:`HeadChannel.request` is then the request, checked by
:func:`~iochannel.web.http.check_request`, or :attr:`HeadChannel.error` the
:class:`~iochannel.web.http.HttpError` to answer.  Afterwards reads return
every byte the handshake consumed — the head and whatever followed it —
before reading the master again, so a :class:`~iochannel.WebsockChannel`
stacked on top sees the connection from its first byte.  Writes go to the
master unchanged.  A master EOF before the end of the head fails the
handshake with :class:`~iochannel.errors.ChannelEOFError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import h11

from .._core.channel import Buffer, Channel
from .._core.flags import Condition, ReadFlag
from .._layers.layer import LayerChannel
from .._parsers.http11 import RequestReader
from ..errors import ChannelEOFError
from .http import HttpError, Request, check_request

__all__ = ["HeadChannel"]

# Reads are small: the head is bounded anyway and the rest is replayed.
_CHUNK = 4096


class HeadChannel(LayerChannel):
    """Reads one request head from *master* (see the module docstring)."""

    __slots__ = ("_reader", "_replay", "error", "request")

    def __init__(self, master: Channel, name: str = "") -> None:
        super().__init__(master, name or f"http({master.name})")
        self._reader: RequestReader | None = RequestReader()  # dropped once done
        self._replay = memoryview(b"")
        #: The request, once the handshake is done; ``None`` if it was refused.
        self.request: Request | None = None
        #: The answer to a refused request, once the handshake is done.
        self.error: HttpError | None = None

    def _handshake_step(self) -> Condition:
        reader = self._reader
        assert reader is not None  # the handshake is not done
        while True:
            chunk = bytearray(min(_CHUNK, reader.room()))
            n = self._master.readv((chunk,))
            if n is None:
                return Condition.IN
            if n == 0:
                raise ChannelEOFError(
                    f"{self.name}: connection closed inside the request head "
                    f"({len(reader.data)} bytes received)"
                )
            try:
                request = reader.receive_data(memoryview(chunk)[:n])
                if request is not None:
                    self.request = check_request(request)
            except h11.RemoteProtocolError as exc:
                self.error = HttpError.of(exc)
            except HttpError as exc:
                self.error = exc
            if self.request is not None or self.error is not None:
                break
        self._replay = memoryview(reader.data)
        self._reader = None
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
