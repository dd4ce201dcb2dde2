"""WebSocket (RFC 6455) as a layer over any channel: :class:`WebsockChannel`.

The channel carries a byte stream in binary frames, server or client side.
The opening handshake is :mod:`iochannel._layers.websock_handshake` (h11 and the
``websockets`` handshake objects).  After it, the layer splits incoming
bytes into frames: a data frame that is a whole message and breaks no rule
is unmasked straight into the read queue as its bytes arrive; every other
frame goes whole to the sans-I/O
:class:`websockets.protocol.Protocol`, which checks masking (1002), opcodes
and reserved bits (1002), control frame size and fragmentation (1002), the
message size limit (1009, checked from the declared length before any
payload is buffered), answers pings with a pong echoing the payload and
echoes the peer's close status.  Outgoing data frames are built here, so a
write costs one masking pass (client) or no copy at all (server) when the
master takes the bytes at once.

Reads return the payload of data frames — text frames too, unless
``accept_text=False`` (then 1003).  A close frame with status 1000, 1001 or
none reads as end of stream; other statuses, protocol errors and a master EOF
without a close frame raise :class:`WebsockError` naming the close code
(``ReadFlag.RELAXED_EOF`` turns the last case into EOF).  Writes after the
closing handshake started raise :class:`~iochannel.errors.ChannelBrokenPipeError`
(also a :class:`BrokenPipeError`).

Memory is bounded in both directions: the master is read only when no decoded
byte is waiting, 256 KiB at a time, and incoming messages are
capped by *max_message*.  A ``writev`` sends one frame of at most
``_WRITE_CHUNK`` bytes and returns ``None`` until the master took it (see
:mod:`iochannel._layers.layer`); queued pongs and close replies beyond
``_READ_PAUSE`` pause reading until the master drains.  So a peer that never
reads cannot make either side grow (CVE-2017-15268).  :meth:`close` sends a 1000 close
frame when it can without blocking.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections import deque
from collections.abc import Collection, Sequence
from typing import cast, final

from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.protocol import Protocol, Side, State

from .._core.channel import Buffer, Channel
from .._core.flags import Condition, Feature, ReadFlag, Shutdown
from ..errors import ChannelBrokenPipeError, ConfigurationError, RemoteProtocolError
from . import websock_handshake as hs
from .layer import LayerChannel

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = ["DEFAULT_MAX_MESSAGE", "HandshakeError", "WebsockChannel", "WebsockError"]

HandshakeError = hs.HandshakeError

#: Largest incoming message accepted by default; larger ones are closed with 1009.
DEFAULT_MAX_MESSAGE = 1 << 20
# The largest frame one writev sends.
_WRITE_CHUNK = 256 * 1024
# Reading pauses while the queue holds more than one frame being written plus
# this much in replies (pongs, close), so a ping flood cannot grow it.
_READ_PAUSE = _WRITE_CHUNK + 16 + 64 * 1024
# Handshake reads are small: the head is bounded anyway, and bytes read past
# its end are handed to the frame decoder.
_HEAD_CHUNK = 4096
# A frame header: 2 bytes, up to 8 of extended length, 4 of mask.
_MAX_HEADER = 14
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_CLEAN_CLOSE = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, 1005})

_log = logging.getLogger(__name__)


class WebsockError(RemoteProtocolError):
    """The peer broke the WebSocket protocol or closed the connection abnormally.

    ``code`` (also ``reply``) is the close code sent or received: 1002 for a
    bad frame, 1009 for a message too big, 1006 for no close frame at all.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, reply=code)
        self.code = code


def _frame_header(length: int, masked: bool) -> bytes:
    second = 0x80 if masked else 0
    if length < 126:
        return struct.pack("!BB", 0x82, second | length)
    if length < 65536:
        return struct.pack("!BBH", 0x82, second | 126, length)
    return struct.pack("!BBQ", 0x82, second | 127, length)


@final
class WebsockChannel(LayerChannel):
    """A WebSocket byte stream over *master*; use :meth:`server` or :meth:`client`."""

    __slots__ = (
        "_accept_text",
        "_carry",
        "_eof",
        "_error",
        "_fragmented",
        "_hs",
        "_hs_failure",
        "_left",
        "_mask",
        "_max_message",
        "_offset",
        "_proto",
        "_replies",
        "_rq",
        "_side",
        "_text_message",
        "protocol",
    )

    def __init__(
        self,
        master: Channel,
        handshake: hs.ServerHandshake | hs.ClientHandshake,
        *,
        accept_text: bool = True,
        max_message: int = DEFAULT_MAX_MESSAGE,
        name: str = "",
    ) -> None:
        if max_message < 1:
            raise ConfigurationError(
                f"max_message must be at least 1 byte, not {max_message}", field="max_message"
            )
        side = Side.SERVER if isinstance(handshake, hs.ServerHandshake) else Side.CLIENT
        role = "server" if side is Side.SERVER else "client"
        super().__init__(master, name or f"websock-{role}({master.name})")
        self._side = side
        # The handshake's state, dropped once done.
        self._hs: hs.ServerHandshake | hs.ClientHandshake | None = handshake
        self._accept_text = accept_text
        self._max_message = max_message
        self._hs_failure: HandshakeError | None = None
        self._proto: Protocol | None = None
        #: The negotiated sub-protocol (``"binary"``) or ``None``.
        self.protocol: str | None = None
        self._rq: deque[memoryview] = deque()
        self._eof = False
        self._error: BaseException | None = None
        self._text_message = False
        # Frame splitting (see _receive): a partial header carried to the next
        # segment, the payload bytes left in the current frame, that frame's
        # mask (None: it goes to the protocol) and position in the mask, and
        # whether a fragmented message is under way.
        self._carry = bytearray()
        self._left = 0
        self._mask: bytes | None = None
        self._offset = 0
        self._fragmented = False
        # The protocol queued a reply (pong, close) that is not collected yet.
        self._replies = False

    @classmethod
    def server(
        cls,
        master: Channel,
        *,
        path: str = "/",
        origins: Collection[str] | None = None,
        accept_text: bool = True,
        max_message: int = DEFAULT_MAX_MESSAGE,
        name: str = "",
    ) -> WebsockChannel:
        """The server side: answers a GET for *path*, from *origins* if given."""
        return cls(
            master,
            hs.ServerHandshake(path=path, origins=origins),
            accept_text=accept_text,
            max_message=max_message,
            name=name,
        )

    @classmethod
    def client(
        cls,
        master: Channel,
        *,
        host: str = "localhost",
        path: str = "/",
        origin: str | None = None,
        accept_text: bool = True,
        max_message: int = DEFAULT_MAX_MESSAGE,
        name: str = "",
    ) -> WebsockChannel:
        """The client side: requests *path* on *host*, offering the binary protocol."""
        return cls(
            master,
            hs.ClientHandshake(host=host, path=path, origin=origin),
            accept_text=accept_text,
            max_message=max_message,
            name=name,
        )

    def _collect_output(self) -> None:
        self._replies = False
        if self._proto is not None:
            for data in self._proto.data_to_send():
                if data:  # b"" asks for a TCP half-close; closing the layer does that
                    self._queue(data)

    # ---- handshake ---------------------------------------------------------------

    def _handshake_step(self) -> Condition:
        if self._hs_failure is not None:
            return self._refuse(self._hs_failure)
        handshake = self._hs
        if handshake is not None:
            request = handshake.data_to_send()  # the client's request
            if request:
                self._queue(request)
        if not self._flush():
            return Condition.OUT
        if handshake is None:  # done, and the server's answer is sent
            return Condition.NONE
        done = False
        while not done:
            chunk = bytearray(min(_HEAD_CHUNK, handshake.room()))
            n = self._master.readv((chunk,))
            if n is None:
                return Condition.IN
            if n == 0:
                raise HandshakeError(
                    f"{self.name}: connection closed before the end of the WebSocket "
                    f"handshake ({handshake.received} bytes received)"
                )
            try:
                done = handshake.receive_data(memoryview(chunk)[:n])
            except HandshakeError as exc:
                exc.args = (f"{self.name}: {exc}",)
                return self._refuse(exc)
        self.protocol = handshake.protocol
        self._hs = None
        answer = handshake.data_to_send()  # the server's 101
        if answer:
            self._queue(answer)
        self._proto = Protocol(
            self._side, max_size=self._max_message, logger=_log.getChild(self._side.name.lower())
        )
        if handshake.rest:
            self._receive(handshake.rest)
        return Condition.NONE if self._flush() else Condition.OUT

    def _refuse(self, exc: HandshakeError) -> Condition:
        """Fail the handshake once the error answer (if any) has been sent."""
        if self._hs_failure is None:
            self._hs_failure = exc
            if exc.response:
                self._queue(exc.response)
        if not self._flush():
            return Condition.OUT
        if exc.response and Feature.SHUTDOWN in self._master.features:
            # The peer reads the whole answer, then EOF: no reset loses it.
            self._master.shutdown(Shutdown.WRITE)
        raise exc

    # ---- input -------------------------------------------------------------------

    def _receive(self, data: Buffer | None) -> None:
        """Split master bytes into frames (``None`` = master EOF) and deliver them.

        Whole-message data frames (the stream itself) are unmasked straight
        into the read queue, as they arrive.  Every other frame — control
        frames, fragments, and any frame that breaks a rule (reserved bits or
        opcodes, masking, size) — goes whole to the ``websockets`` protocol,
        which checks it, answers it and fails the connection with the right
        code; it therefore always sees a stream of complete frames.

        This fast path, with the data frames built in :meth:`_encode`, buys
        1.8-2.1x the bulk throughput per CPU-second of passing every frame
        through the protocol (``bench/websock.py``, masked 64 KiB writes).
        """
        proto = self._proto
        assert proto is not None
        with self._engine:
            if data is None:
                # Inside a frame, the protocol reports EOF as it would itself.
                if self._carry:
                    self._feed(proto, self._carry)
                    self._carry.clear()
                if self._error is None:
                    proto.receive_eof()
                    self._drain_events(proto)
                return
            view = memoryview(data).cast("B")
            pos, end = 0, len(view)
            while pos < end and self._error is None:
                left = self._left
                if left:
                    n = min(left, end - pos)
                    self._payload(proto, view[pos : pos + n])
                    self._left = left - n
                    pos += n
                elif proto.state is not State.OPEN:
                    self._feed(proto, view[pos:])  # closing: the protocol has the last word
                    break
                else:
                    pos = self._header(proto, view, pos)

    def _header(self, proto: Protocol, view: memoryview, pos: int) -> int:
        """Parse the frame header at *pos* (or what is carried over): where its payload starts."""
        carry = self._carry
        head = bytes(carry) + bytes(view[pos : pos + _MAX_HEADER - len(carry)])
        need = 2
        if len(head) >= 2:
            b0, b1 = head[0], head[1]
            length = b1 & 0x7F
            need += (0, 2, 8)[(length >= 126) + (length == 127)] + (4 if b1 & 0x80 else 0)
        if len(head) < need:
            carry += view[pos:]  # less than a header: the rest of the segment
            return len(view)
        used = need - len(carry)
        carry.clear()
        if length == 126:
            length = _U16.unpack_from(head, 2)[0]
        elif length == 127:
            length = _U64.unpack_from(head, 2)[0]
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        fragmented = self._fragmented
        if opcode == 0:
            if fin:
                self._fragmented = False
        elif opcode < 3:
            self._fragmented = not fin
            if (
                fin
                and not fragmented
                and not b0 & 0x70
                and bool(b1 & 0x80) is (self._side is Side.SERVER)
                and length <= self._max_message
                and (opcode == 2 or self._accept_text)
            ):
                self._mask = head[need - 4 : need] if b1 & 0x80 else b""
                self._offset = 0
                self._left = length
                return pos + used
        self._mask = None
        self._feed(proto, head[:need])
        self._left = length if self._error is None else 0
        return pos + used

    def _payload(self, proto: Protocol, chunk: memoryview) -> None:
        mask = self._mask
        if mask is None:
            self._feed(proto, chunk)
        elif mask:
            # Masking continues across segments: start the key where the last part ended.
            k = self._offset & 3
            self._rq.append(memoryview(apply_mask(chunk, mask[k:] + mask[:k])))
            self._offset += len(chunk)
        else:
            # Reads of the master wait until the queue is empty, so a view of its buffer is safe.
            self._rq.append(chunk)

    def _feed(self, proto: Protocol, data: Buffer) -> None:
        # The protocol copies the bytes at once, so a view of our buffer is safe.
        proto.receive_data(cast(bytes, data))
        self._drain_events(proto)

    def _drain_events(self, proto: Protocol) -> None:
        for frame in proto.events_received():
            if isinstance(frame, Frame) and not self._take(proto, frame):
                self._replies = True
                return
        if proto.parser_exc is not None and self._error is None:
            self._fail_from_protocol()
            self._replies = True

    def _take(self, proto: Protocol, frame: Frame) -> bool:
        """Deliver one frame; ``False`` once the connection failed."""
        opcode = frame.opcode
        if opcode is Opcode.BINARY or opcode is Opcode.TEXT or opcode is Opcode.CONT:
            if opcode is not Opcode.CONT:
                self._text_message = opcode is Opcode.TEXT
            if self._text_message and not self._accept_text:
                proto.fail(CloseCode.UNSUPPORTED_DATA, "text frames are not accepted")
                self._fail_from_protocol()
                return False
            if frame.data:
                self._rq.append(memoryview(frame.data))
        else:
            self._replies = True  # a ping's pong or a close's reply
        if opcode is Opcode.CLOSE:
            self._eof = True
            close = proto.close_rcvd
            if close is not None and close.code not in _CLEAN_CLOSE:
                self._error = WebsockError(
                    f"{self.name}: peer closed the WebSocket with {close.code} "
                    f"({close.reason or 'no reason'})",
                    close.code,
                )
        return True

    def _fail_from_protocol(self) -> None:
        proto = self._proto
        assert proto is not None
        sent = proto.close_sent or Close(CloseCode.ABNORMAL_CLOSURE, "")
        cause = proto.parser_exc
        if isinstance(cause, EOFError):
            reason = "connection closed without a WebSocket close frame"
        else:
            reason = sent.reason or str(cause or "") or "connection failed"
        self._error = WebsockError(
            f"{self.name}: WebSocket failed with {sent.code} ({reason})", sent.code
        )
        self._error.__cause__ = cause

    def _readv(
        self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int | None:
        if not self._can_transfer():
            return None
        while not self._rq:
            error = self._error
            if error is not None:
                if (
                    flags & ReadFlag.RELAXED_EOF
                    and isinstance(error, WebsockError)
                    and error.code == CloseCode.ABNORMAL_CLOSURE
                ):
                    return 0
                raise error
            if self._eof:
                return 0
            # Pongs and close frames wait in the queue too: stop reading while it is full.
            if (
                (self._wq or self._replies)
                and not self._flush_if_free()
                and self._wq_size >= _READ_PAUSE
            ):
                return None
            buf, n = self._read_master()
            if n is None:
                return None
            self._receive(buf[:n] if n else None)
            if self._wq or self._replies:
                self._flush_replies()
        return self._copy_out(buffers)

    def _flush_replies(self) -> None:
        """Flush pongs and close replies; a peer that is gone cannot get them anyway."""
        try:
            self._flush_if_free()
        except OSError:
            if not (self._eof or self._error):
                raise

    def _copy_out(self, buffers: Sequence[Buffer]) -> int:
        rq = self._rq
        total = 0
        for buf in buffers:
            view = memoryview(buf).cast("B")
            pos = 0
            while rq and pos < len(view):
                head = rq[0]
                n = min(len(head), len(view) - pos)
                view[pos : pos + n] = head[:n]
                pos += n
                if n == len(head):
                    rq.popleft()
                else:
                    rq[0] = head[n:]
            total += pos
            if not rq:
                break
        return total

    # ---- output ------------------------------------------------------------------

    def _encode(self, buffers: Sequence[Buffer]) -> int:
        proto = self._proto
        assert proto is not None
        if proto.state is not State.OPEN or self._error is not None:
            raise ChannelBrokenPipeError(
                errno.EPIPE, f"{self.name}: the WebSocket connection is closed"
            )
        views = [v for v in (memoryview(b).cast("B") for b in buffers) if v]
        if not views:
            return 0
        payload: memoryview | bytes
        if len(views) == 1 or len(views[0]) >= _WRITE_CHUNK:
            payload = views[0][:_WRITE_CHUNK]
        else:
            payload = b"".join(views)[:_WRITE_CHUNK]
        size = len(payload)
        if self._side is Side.CLIENT:
            mask = os.urandom(4)
            self._queue(_frame_header(size, True) + mask)
            self._queue(apply_mask(payload, mask))
        else:
            self._queue(_frame_header(size, False))
            self._queue(payload)
        return size

    def _send_close(self) -> None:
        proto = self._proto
        with self._engine:
            if proto is not None and proto.state is State.OPEN:
                proto.send_close(CloseCode.NORMAL_CLOSURE)

    def _goodbye(self) -> None:
        self._send_close()
        self._flush()

    def _shutdown(self, how: Shutdown) -> None:
        """WebSocket has no half-close: shutting down writing closes with 1000 first."""
        if how & Shutdown.WRITE and self._hs_done:
            self._send_close()
            self._drain()
        self._master.shutdown(how)

    # ---- readiness ---------------------------------------------------------------

    def _readable(self) -> bool:
        return bool(
            self._rq
            or self._eof
            or self._error is not None
            or (self._wq_size < _READ_PAUSE and self._master._pending(Condition.IN))
        )

    def _read_needs(self) -> Condition:
        # With the reply queue full, reading waits for the master to drain it.
        return Condition.IN if self._wq_size < _READ_PAUSE else Condition.NONE
