"""Sans-I/O NBD (Network Block Device) protocol core, server and client side.

One byte-level implementation of the fixed-newstyle protocol serves both
roles: :class:`ServerConnection` answers a client, :class:`ClientConnection`
drives a server.  Neither does I/O.  Both follow the same contract:

* :meth:`~_Connection.receive_data` is fed the bytes read off the wire (after
  TLS, if any), :meth:`~_Connection.receive_eof` the end of the stream;
  :meth:`~_Connection.events_received` then returns what they decoded, and
  :meth:`~_Connection.data_to_send` the buffers to write, in order.  The core
  keeps a reference to each fed buffer until it is decoded: do not reuse it.
* Every violation by the peer raises :class:`ProtocolError` (its ``field``
  names the bad header or payload field) from ``receive_data``/``receive_eof``;
  nothing else escapes for any input.  The connection is then dead: send what
  :meth:`~_Connection.data_to_send` still holds (a last error reply) and close.
* A client refused by the server (unknown export, TLS required …) gets
  :class:`OptionRefused`, a :class:`ProtocolError` naming the option.
* STARTTLS: after the :class:`StartTLS` event, flush ``data_to_send()``, run
  the TLS handshake on the channel, then call
  ``tls_started()``; everything after is fed and sent through
  TLS.  Bytes received in between are a protocol error.

Limits (the protocol's and QEMU's): names, descriptions and meta-context
queries are at most :data:`MAX_STRING` bytes, an option payload at most
:data:`MAX_OPTION` (larger ones are skipped unread and answered
``NBD_REP_ERR_TOO_BIG``), a request's length at most :data:`MAX_REQUEST`.

The server core checks every request against the export (flags, range,
read-only, negotiated features) and answers a bad one itself with ``EINVAL``
(``EPERM`` for writes to a read-only export), as QEMU does; only valid
requests become :class:`Request` events.  Replies may be sent in any order.
"""

from __future__ import annotations

import enum
import errno
import itertools
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ChannelError, RemoteProtocolError

if TYPE_CHECKING:
    from typing_extensions import Buffer
else:
    Buffer = Any

__all__ = [
    "BASE_ALLOCATION",
    "MAX_OPTION",
    "MAX_REQUEST",
    "MAX_STRING",
    "REQUEST_SIZE",
    "STATE_HOLE",
    "STATE_ZERO",
    "ClientConnection",
    "Command",
    "CommandFlag",
    "Disconnect",
    "Event",
    "Export",
    "ExportList",
    "ExportReady",
    "Extent",
    "NbdError",
    "Option",
    "OptionRefused",
    "OptionReply",
    "ProtocolError",
    "Reply",
    "Request",
    "ServerConnection",
    "StartTLS",
    "TransmissionFlag",
    "TransmissionStarted",
    "host_errno",
    "nbd_errno",
]

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

#: Longest name, description or meta-context query (the protocol's limit).
MAX_STRING = 4096
#: Longest option payload read: a GO with the longest name and every info
#: request, or a meta-context option with a few hundred queries.
MAX_OPTION = 64 * 1024
#: Longest READ/WRITE (QEMU's NBD_MAX_BUFFER_SIZE); clients learn it as the
#: maximum block size.
MAX_REQUEST = 32 * 1024 * 1024
#: The only meta context served.
BASE_ALLOCATION = "base:allocation"
#: Its id on the wire (QEMU's too).
BASE_ALLOCATION_ID = 0

_GREETING = struct.Struct(">QQH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_OPTION = struct.Struct(">QII")
_OPTION_REPLY = struct.Struct(">QIII")
_REQUEST = struct.Struct(">IHHQQI")
#: Bytes of a request header (a shell may read one along with the payload before it).
REQUEST_SIZE = _REQUEST.size
_SIMPLE = struct.Struct(">IIQ")
_CHUNK = struct.Struct(">IHHQI")
_EXPORT_INFO = struct.Struct(">HQH")
_BLOCK_SIZE = struct.Struct(">HIII")
_EXTENT = struct.Struct(">II")
_ERROR = struct.Struct(">IH")


class HandshakeFlag(enum.IntFlag):
    FIXED_NEWSTYLE = 1
    NO_ZEROES = 2


class Option(enum.IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


_ERR = 1 << 31


class OptionReply(enum.IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = _ERR | 1
    ERR_POLICY = _ERR | 2
    ERR_INVALID = _ERR | 3
    ERR_PLATFORM = _ERR | 4
    ERR_TLS_REQD = _ERR | 5
    ERR_UNKNOWN = _ERR | 6
    ERR_SHUTDOWN = _ERR | 7
    ERR_BLOCK_SIZE_REQD = _ERR | 8
    ERR_TOO_BIG = _ERR | 9


class Info(enum.IntEnum):
    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class TransmissionFlag(enum.IntFlag):
    HAS_FLAGS = 0x1
    READ_ONLY = 0x2
    SEND_FLUSH = 0x4
    SEND_FUA = 0x8
    ROTATIONAL = 0x10
    SEND_TRIM = 0x20
    SEND_WRITE_ZEROES = 0x40
    SEND_DF = 0x80
    CAN_MULTI_CONN = 0x100
    SEND_RESIZE = 0x200
    SEND_CACHE = 0x400
    SEND_FAST_ZERO = 0x800


class Command(enum.IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7


class CommandFlag(enum.IntFlag):
    FUA = 0x1
    NO_HOLE = 0x2
    DF = 0x4
    REQ_ONE = 0x8
    FAST_ZERO = 0x10


class ChunkType(enum.IntEnum):
    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = (1 << 15) + 1
    ERROR_OFFSET = (1 << 15) + 2


_DONE = 1
#: base:allocation extent flags.
STATE_HOLE = 1
STATE_ZERO = 2

# Errors on the wire (the protocol fixes these values, whatever the host's).
EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 1, 5, 12, 22, 28, 75, 95, 108
_OS_TO_NBD = {
    errno.EPERM: EPERM,
    errno.EROFS: EPERM,
    errno.EIO: EIO,
    errno.ENOMEM: ENOMEM,
    errno.EINVAL: EINVAL,
    errno.ENOSPC: ENOSPC,
    errno.EDQUOT: ENOSPC,
    errno.EFBIG: ENOSPC,
    errno.EOVERFLOW: EOVERFLOW,
    errno.EOPNOTSUPP: ENOTSUP,
    errno.ESHUTDOWN: ESHUTDOWN,
}
_NBD_TO_OS = {
    EPERM: errno.EPERM,
    EIO: errno.EIO,
    ENOMEM: errno.ENOMEM,
    EINVAL: errno.EINVAL,
    ENOSPC: errno.ENOSPC,
    EOVERFLOW: errno.EOVERFLOW,
    ENOTSUP: errno.EOPNOTSUPP,
    ESHUTDOWN: errno.ESHUTDOWN,
}


def nbd_errno(os_errno: int | None) -> int:
    """The wire error for a host errno (QEMU's mapping: unknown ones are EINVAL)."""
    return _OS_TO_NBD.get(os_errno or errno.EIO, EINVAL)


def host_errno(nbd_error: int) -> int:
    """The host errno for a wire error (unknown ones are EINVAL, as the protocol says)."""
    return _NBD_TO_OS.get(nbd_error, errno.EINVAL)


# Which flags each command may carry; DF only once structured replies are on.
_ALLOWED_FLAGS = {
    Command.READ: CommandFlag.DF,
    Command.WRITE: CommandFlag.FUA,
    Command.DISC: CommandFlag(0),
    Command.FLUSH: CommandFlag(0),
    Command.TRIM: CommandFlag.FUA,
    Command.CACHE: CommandFlag(0),
    Command.WRITE_ZEROES: CommandFlag.FUA | CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO,
    Command.BLOCK_STATUS: CommandFlag.REQ_ONE,
}
_WRITING = frozenset((Command.WRITE, Command.TRIM, Command.WRITE_ZEROES))


# ---- errors ----------------------------------------------------------------------------


class NbdError(ChannelError):
    """Base class of NBD errors."""


class ProtocolError(NbdError, RemoteProtocolError):
    """The peer broke the protocol; ``field`` names what was wrong.  Close the connection."""

    field: str

    def __init__(self, field: str, reason: str, reply: int | None = None) -> None:
        RemoteProtocolError.__init__(self, f"NBD {field}: {reason}", field=field, reply=reply)
        self.reason = reason


class OptionRefused(ProtocolError):
    """The server refused an option the client needs (``reply`` is its error type)."""

    def __init__(self, option: Option, reply: int, message: str) -> None:
        try:
            kind = OptionReply(reply).name
        except ValueError:
            kind = f"error {reply & ~_ERR}"
        text = f"server refused: {kind}" + (f": {message}" if message else "")
        super().__init__(f"option {option.name}", text, reply)
        self.option = option
        self.message = message


# ---- exports and events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Export:
    """What a client learns about an export, and what the server core checks requests by.

    The server side fills the capabilities; :attr:`flags` turns them into
    transmission flags.  A client reads them back from the server's flags.
    """

    name: str
    size: int
    description: str = ""
    read_only: bool = True
    can_flush: bool = True
    can_trim: bool = False
    can_write_zeroes: bool = False
    can_fast_zero: bool = False
    can_multi_conn: bool = False
    can_cache: bool = True
    min_block: int = 1
    preferred_block: int = 4096
    max_block: int = MAX_REQUEST

    def flags(self, structured: bool) -> int:
        """Transmission flags (QEMU's set for the same capabilities)."""
        f = TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FUA
        if self.read_only:
            f |= TransmissionFlag.READ_ONLY
        else:
            if self.can_trim:
                f |= TransmissionFlag.SEND_TRIM
            if self.can_write_zeroes:
                f |= TransmissionFlag.SEND_WRITE_ZEROES
                if self.can_fast_zero:
                    f |= TransmissionFlag.SEND_FAST_ZERO
        if self.can_flush:
            f |= TransmissionFlag.SEND_FLUSH
        if self.can_multi_conn:
            f |= TransmissionFlag.CAN_MULTI_CONN
        if self.can_cache:
            f |= TransmissionFlag.SEND_CACHE
        if structured:
            f |= TransmissionFlag.SEND_DF
        return int(f)

    @classmethod
    def from_flags(cls, name: str, size: int, flags: int, description: str = "") -> Export:
        """The export as a client sees it from the server's transmission flags."""
        t = TransmissionFlag
        return cls(
            name,
            size,
            description,
            read_only=bool(flags & t.READ_ONLY),
            can_flush=bool(flags & t.SEND_FLUSH),
            can_trim=bool(flags & t.SEND_TRIM),
            can_write_zeroes=bool(flags & t.SEND_WRITE_ZEROES),
            can_fast_zero=bool(flags & t.SEND_FAST_ZERO),
            can_multi_conn=bool(flags & t.CAN_MULTI_CONN),
            can_cache=bool(flags & t.SEND_CACHE),
        )


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Run the TLS handshake now, then call ``tls_started()`` (both sides)."""


@dataclass(frozen=True, slots=True)
class TransmissionStarted:
    """Server side: the client chose *export*; requests follow."""

    export: Export
    structured: bool
    #: Negotiated meta contexts by id (``{0: "base:allocation"}`` or empty).
    meta_contexts: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class Request:
    """Server side: a valid request.  ``data`` is the payload of a WRITE."""

    cookie: int
    command: Command
    flags: CommandFlag
    offset: int
    length: int
    data: Buffer | None = None


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The peer ended the session cleanly (DISC, ABORT); flush and close."""


@dataclass(frozen=True, slots=True)
class ExportReady:
    """Client side: the handshake finished; requests may be sent.

    ``export.flags(structured)`` need not equal ``flags``: ``flags`` is what the
    server sent.
    """

    export: Export
    flags: int
    structured: bool
    #: Meta contexts the server agreed to, name → id.
    meta_contexts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ExportList:
    """Client side, ``list_exports=True``: the server's exports, (name, description)."""

    exports: Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Extent:
    """One block-status descriptor: *length* bytes with *flags* (STATE_HOLE/STATE_ZERO)."""

    length: int
    flags: int


@dataclass(slots=True)
class Reply:
    """Client side: the complete answer to one request.

    ``error`` is the wire error (0 = success; :func:`host_errno` converts it),
    ``message`` the server's text if it sent one.  A good READ has ``data`` (of
    the request's length; holes read as zeros), a good BLOCK_STATUS the
    ``extents`` of each context id.
    """

    cookie: int
    command: Command
    error: int = 0
    message: str = ""
    data: Buffer | None = None
    extents: dict[int, list[Extent]] = field(default_factory=dict)


Event = StartTLS | TransmissionStarted | Request | Disconnect | ExportReady | ExportList | Reply


# ---- input buffering --------------------------------------------------------------------


class _Input:
    """Received bytes not yet decoded: a queue of views, sliced without copying when possible."""

    __slots__ = ("_chunks", "size")

    def __init__(self) -> None:
        self._chunks: list[memoryview] = []
        self.size = 0

    def feed(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        if len(view):
            self._chunks.append(view)
            self.size += len(view)

    def take(self, n: int) -> memoryview:
        """The next *n* bytes (``n <= size``): a slice of one fed buffer, or a copy."""
        if n == 0:
            return memoryview(b"")
        self.size -= n
        first = self._chunks[0]
        if len(first) >= n:
            if len(first) == n:
                self._chunks.pop(0)
            else:
                self._chunks[0] = first[n:]
            return first[:n]
        out = bytearray(n)
        pos = 0
        while pos < n:
            chunk = self._chunks[0]
            k = min(len(chunk), n - pos)
            out[pos : pos + k] = chunk[:k]
            pos += k
            if k == len(chunk):
                self._chunks.pop(0)
            else:
                self._chunks[0] = chunk[k:]
        return memoryview(out)

    def skip(self, n: int) -> int:
        """Drop up to *n* bytes; the count dropped."""
        done = 0
        while done < n and self._chunks:
            chunk = self._chunks[0]
            k = min(len(chunk), n - done)
            done += k
            if k == len(chunk):
                self._chunks.pop(0)
            else:
                self._chunks[0] = chunk[k:]
        self.size -= done
        return done

    def clear(self) -> None:
        self._chunks.clear()
        self.size = 0


class _Payload:
    """A cursor over an option payload, raising ProtocolError on a short read."""

    __slots__ = ("data", "name", "pos")

    def __init__(self, data: memoryview, name: str) -> None:
        self.data = data
        self.name = name
        self.pos = 0

    def _need(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise _Invalid(f"{self.name}.{what}", "option payload too short")
        view = self.data[self.pos : self.pos + n]
        self.pos += n
        return view

    def u16(self, what: str) -> int:
        return int(_U16.unpack(self._need(2, what))[0])

    def u32(self, what: str) -> int:
        return int(_U32.unpack(self._need(4, what))[0])

    def string(self, what: str) -> str:
        n = self.u32(f"{what} length")
        if n > MAX_STRING:
            raise _Invalid(f"{self.name}.{what}", f"{n} bytes, at most {MAX_STRING} allowed")
        return _text(self._need(n, what), f"{self.name}.{what}")

    def end(self) -> None:
        if self.pos != len(self.data):
            extra = len(self.data) - self.pos
            raise _Invalid(f"{self.name}.length", f"{extra} bytes past the option's fields")


class _Invalid(Exception):
    """An option the server answers with NBD_REP_ERR_INVALID (the session goes on)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")


def _text(view: memoryview | bytes, field: str) -> str:
    try:
        return bytes(view).decode()
    except UnicodeDecodeError:
        raise _Invalid(field, "not valid UTF-8") from None


def _string(text: str) -> bytes:
    data = text.encode()
    return _U32.pack(len(data)) + data


# ---- the common machinery --------------------------------------------------------------

_Step = Callable[[memoryview], None]


class _Connection:
    """What both sides share: input decoding by steps, output queue, event list."""

    def __init__(self) -> None:
        self._input = _Input()
        self._out: list[Buffer] = []
        self._out_bytes = 0
        self._events: list[Event] = []
        self._need = 0
        self._step: _Step | None = None
        self._skipping = 0
        self._after_skip: Callable[[], None] | None = None
        self._dead: ProtocolError | None = None
        self._paused = False
        #: True once the peer's stream or the session ended.
        self.closed = False

    # public API

    def receive_data(self, data: Buffer) -> None:
        """Decode *data*; raises :class:`ProtocolError` if the peer broke the protocol."""
        if self._dead is not None:
            raise self._dead
        self._input.feed(data)
        try:
            self._run()
        except ProtocolError as exc:
            self._dead = exc
            self._input.clear()
            raise

    def receive_eof(self) -> None:
        """The peer's stream ended; raises :class:`ProtocolError` inside a message."""
        if self._dead is not None:
            raise self._dead
        self.closed = True
        if self._input.size or self._skipping or self._mid_message():
            self._dead = ProtocolError("connection", "end of stream inside a message")
            raise self._dead

    def events_received(self) -> list[Event]:
        """The events decoded since the last call."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[Buffer]:
        """The buffers to write since the last call, in order (possibly empty)."""
        out, self._out = self._out, []
        self._out_bytes = 0
        return out

    @property
    def pending_output(self) -> int:
        """Bytes queued for sending (read no more requests while this is large)."""
        return self._out_bytes

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded."""
        return self._input.size

    @property
    def wanted(self) -> int:
        """Bytes needed to decode the next step (a read hint; at least 1)."""
        if self._skipping:
            return self._skipping
        return max(1, self._need - self._input.size)

    def tls_started(self) -> None:
        """The TLS handshake after :class:`StartTLS` completed; resume the protocol."""
        if not self._paused:
            raise NbdError("tls_started() without a pending StartTLS")
        self._paused = False
        self._resume_after_tls()

    # internals

    def _resume_after_tls(self) -> None:
        raise NotImplementedError

    def _mid_message(self) -> bool:
        raise NotImplementedError

    def _send(self, *buffers: Buffer) -> None:
        for b in buffers:
            self._out.append(b)
            self._out_bytes += len(memoryview(b))

    def _expect(self, n: int, step: _Step) -> None:
        self._need = n
        self._step = step

    def _skip(self, n: int, then: Callable[[], None]) -> None:
        self._skipping = n
        self._after_skip = then

    def _pause_for_tls(self) -> None:
        self._paused = True
        self._events.append(StartTLS())

    def _run(self) -> None:
        inp = self._input
        while True:
            if self._paused:
                if inp.size:
                    raise ProtocolError("connection", "data received before the TLS handshake")
                return
            if self._skipping:
                self._skipping -= inp.skip(self._skipping)
                if self._skipping:
                    return
                then, self._after_skip = self._after_skip, None
                assert then is not None
                then()
                continue
            step = self._step
            if step is None:
                if inp.size:
                    raise ProtocolError("connection", "data received after the session ended")
                return
            if inp.size < self._need:
                return
            self._step = None
            step(inp.take(self._need))


# ---- server -----------------------------------------------------------------------------


class ServerConnection(_Connection):
    """Sans-I/O NBD server for one client; see the module docstring.

    *exports* is looked up when the client asks (it may change meanwhile).
    With *tls*, the server offers TLS and requires it, as QEMU does: options
    other than STARTTLS and ABORT are refused with ``NBD_REP_ERR_TLS_REQD``
    until the TLS handshake completed.  The greeting is queued at once.
    """

    def __init__(self, exports: Mapping[str, Export], *, tls: bool = False) -> None:
        super().__init__()
        self.exports = exports
        self.tls = tls
        self.tls_done = False
        self.structured = False
        self.no_zeroes = False
        #: The export being served, once transmission started.
        self.export: Export | None = None
        self._meta: dict[int, str] = {}
        self._meta_export: str | None = None
        self._flags = 0
        self._option = 0
        self._pending: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._send(_GREETING.pack(NBDMAGIC, IHAVEOPT, HandshakeFlag.FIXED_NEWSTYLE | 2))
        self._expect(4, self._client_flags)

    def _mid_message(self) -> bool:
        return self._step not in (None, self._option_header, self._request_header)

    def _resume_after_tls(self) -> None:
        self.tls_done = True
        self._expect(_OPTION.size, self._option_header)

    # handshake

    def _client_flags(self, view: memoryview) -> None:
        (flags,) = _U32.unpack(view)
        if flags & ~(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES):
            raise ProtocolError("client flags", f"unknown bits in {flags:#x}")
        if not flags & HandshakeFlag.FIXED_NEWSTYLE:
            raise ProtocolError("client flags", "FIXED_NEWSTYLE is required")
        self.no_zeroes = bool(flags & HandshakeFlag.NO_ZEROES)
        self._expect(_OPTION.size, self._option_header)

    def _option_header(self, view: memoryview) -> None:
        magic, option, length = _OPTION.unpack(view)
        if magic != IHAVEOPT:
            raise ProtocolError("option magic", f"{magic:#x}, expected {IHAVEOPT:#x}")
        self._option = option
        if option == Option.EXPORT_NAME and length > MAX_STRING:
            raise ProtocolError("EXPORT_NAME.name", f"{length} bytes, at most {MAX_STRING}")
        if option not in Option._value2member_map_ or length > MAX_OPTION:
            # Unknown or oversized: skip the payload without keeping it.
            self._skip(length, lambda: self._refuse_unread(option, length))
            return
        self._expect(length, self._option_payload)

    def _refuse_unread(self, option: int, length: int) -> None:
        if option in Option._value2member_map_:
            self._reply_error(
                option, OptionReply.ERR_TOO_BIG, f"option payload of {length} bytes is too big"
            )
        else:
            self._reply_error(option, OptionReply.ERR_UNSUP, f"Unsupported option {option}")
        self._expect(_OPTION.size, self._option_header)

    def _reply(self, option: int, kind: OptionReply, data: bytes = b"") -> None:
        self._send(_OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, kind, len(data)) + data)

    def _reply_error(self, option: int, kind: OptionReply, message: str) -> None:
        self._reply(option, kind, message.encode()[:MAX_STRING])

    def _option_payload(self, view: memoryview) -> None:
        option = Option(self._option)
        self._expect(_OPTION.size, self._option_header)
        if option == Option.ABORT:
            # The spec asks for an ACK; the client may already be gone.
            self._reply(option, OptionReply.ACK)
            self._end_session()
            return
        if self.tls and not self.tls_done and option != Option.STARTTLS:
            if option == Option.EXPORT_NAME:
                raise ProtocolError("option EXPORT_NAME", "TLS is required first")
            self._reply_error(option, OptionReply.ERR_TLS_REQD, "Option not permitted before TLS")
            return
        try:
            handler = self._OPTIONS[option]
        except KeyError:
            self._reply_error(option, OptionReply.ERR_UNSUP, f"Unsupported option {option.name}")
            return
        try:
            handler(self, _Payload(view, option.name))
        except _Invalid as exc:
            self._reply_error(option, OptionReply.ERR_INVALID, str(exc))

    def _end_session(self) -> None:
        self._step = None
        self.closed = True
        self._events.append(Disconnect())

    def _opt_export_name(self, p: _Payload) -> None:
        try:
            name = _text(p.data, "EXPORT_NAME.name")
        except _Invalid as exc:
            raise ProtocolError("EXPORT_NAME.name", str(exc)) from None
        export = self.exports.get(name)
        if export is None:
            # EXPORT_NAME has no error reply: the protocol says to disconnect.
            raise ProtocolError("EXPORT_NAME.name", f"export '{name}' not present")
        reply = _U64.pack(export.size) + _U16.pack(export.flags(self.structured))
        self._send(reply if self.no_zeroes else reply + bytes(124))
        self._start(export)

    def _opt_list(self, p: _Payload) -> None:
        if len(p.data):
            raise _Invalid("LIST.length", "LIST takes no payload")
        for name in list(self.exports):
            description = self.exports[name].description.encode()[:MAX_STRING]
            self._reply(Option.LIST, OptionReply.SERVER, _string(name) + description)
        self._reply(Option.LIST, OptionReply.ACK)

    def _opt_starttls(self, p: _Payload) -> None:
        if len(p.data):
            raise _Invalid("STARTTLS.length", "STARTTLS takes no payload")
        if not self.tls:
            self._reply_error(Option.STARTTLS, OptionReply.ERR_POLICY, "TLS not configured")
            return
        if self.tls_done:
            raise _Invalid("STARTTLS", "TLS is already running")
        self._reply(Option.STARTTLS, OptionReply.ACK)
        # What was negotiated in the clear does not count (the protocol says so).
        self.structured = False
        self._meta.clear()
        self._meta_export = None
        self._pause_for_tls()

    def _opt_structured(self, p: _Payload) -> None:
        if len(p.data):
            raise _Invalid("STRUCTURED_REPLY.length", "STRUCTURED_REPLY takes no payload")
        if self.structured:
            raise _Invalid("STRUCTURED_REPLY", "structured replies are already negotiated")
        self.structured = True
        self._reply(Option.STRUCTURED_REPLY, OptionReply.ACK)

    def _opt_info(self, p: _Payload) -> None:
        option = Option(self._option)
        name = p.string("name")
        count = p.u16("number of requests")
        wanted = [p.u16(f"request[{i}]") for i in range(count)]
        p.end()
        export = self.exports.get(name)
        if export is None:
            self._reply_error(option, OptionReply.ERR_UNKNOWN, f"export '{name}' not present")
            return
        flags = export.flags(self.structured)
        self._reply(option, OptionReply.INFO, _EXPORT_INFO.pack(Info.EXPORT, export.size, flags))
        if Info.NAME in wanted:
            self._reply(option, OptionReply.INFO, _U16.pack(Info.NAME) + name.encode())
        if Info.DESCRIPTION in wanted and export.description:
            text = export.description.encode()[:MAX_STRING]
            self._reply(option, OptionReply.INFO, _U16.pack(Info.DESCRIPTION) + text)
        # Sent unasked, as QEMU does: clients that ignore it lose nothing.
        sizes = _BLOCK_SIZE.pack(
            Info.BLOCK_SIZE, export.min_block, export.preferred_block, export.max_block
        )
        self._reply(option, OptionReply.INFO, sizes)
        self._reply(option, OptionReply.ACK)
        if option == Option.GO:
            if self._meta_export != name:
                self._meta.clear()
            self._start(export)

    def _meta_queries(self, p: _Payload) -> tuple[str, list[str]]:
        name = p.string("export name")
        count = p.u32("number of queries")
        queries = [p.string(f"query[{i}]") for i in range(count)]
        p.end()
        return name, queries

    def _opt_meta(self, p: _Payload) -> None:
        option = Option(self._option)
        if not self.structured:
            raise _Invalid(option.name, "structured replies must be negotiated first")
        name, queries = self._meta_queries(p)
        if name not in self.exports:
            self._reply_error(option, OptionReply.ERR_UNKNOWN, f"export '{name}' not present")
            return
        listing = option == Option.LIST_META_CONTEXT
        found = any(q == BASE_ALLOCATION or (listing and q == "base:") for q in queries) or (
            listing and not queries
        )
        if found:
            reply = _U32.pack(BASE_ALLOCATION_ID) + BASE_ALLOCATION.encode()
            self._reply(option, OptionReply.META_CONTEXT, reply)
        if not listing:
            self._meta = {BASE_ALLOCATION_ID: BASE_ALLOCATION} if found else {}
            self._meta_export = name
        self._reply(option, OptionReply.ACK)

    _OPTIONS: dict[Option, Callable[[ServerConnection, _Payload], None]] = {
        Option.EXPORT_NAME: _opt_export_name,
        Option.LIST: _opt_list,
        Option.STARTTLS: _opt_starttls,
        Option.INFO: _opt_info,
        Option.GO: _opt_info,
        Option.STRUCTURED_REPLY: _opt_structured,
        Option.LIST_META_CONTEXT: _opt_meta,
        Option.SET_META_CONTEXT: _opt_meta,
    }

    def _start(self, export: Export) -> None:
        self.export = export
        self._flags = export.flags(self.structured)
        self._events.append(TransmissionStarted(export, self.structured, dict(self._meta)))
        self._expect(_REQUEST.size, self._request_header)

    # transmission

    def _request_header(self, view: memoryview) -> None:
        magic, flags, kind, cookie, offset, length = _REQUEST.unpack(view)
        if magic != REQUEST_MAGIC:
            self.reply_error(cookie, EINVAL, f"bad request magic {magic:#x}")
            raise ProtocolError("request magic", f"{magic:#x}, expected {REQUEST_MAGIC:#x}")
        if kind == Command.WRITE:
            if length > MAX_REQUEST:
                # The payload cannot be skipped safely: the client may not send it.
                self.reply_error(cookie, EINVAL, f"len ({length}) is larger than max len")
                raise ProtocolError("request length", f"WRITE of {length} bytes")
            self._pending = (cookie, flags, offset, length)
            self._expect(length, self._write_payload)
            return
        self._expect(_REQUEST.size, self._request_header)
        problem = self._check(kind, flags, offset, length)
        if problem is not None:
            code, message = problem
            self.reply_error(cookie, code, message)
            return
        command = Command(kind)
        if command == Command.DISC:
            self._end_session()
            return
        self._events.append(Request(cookie, command, CommandFlag(flags), offset, length))

    def _write_payload(self, view: memoryview) -> None:
        cookie, flags, offset, length = self._pending
        self._expect(_REQUEST.size, self._request_header)
        problem = self._check(Command.WRITE, flags, offset, length)
        if problem is not None:
            self.reply_error(cookie, *problem)
            return
        self._events.append(
            Request(cookie, Command.WRITE, CommandFlag(flags), offset, length, view)
        )

    def _check(self, kind: int, flags: int, offset: int, length: int) -> tuple[int, str] | None:
        """Why a request is refused (wire error, text), or None if it is valid."""
        export = self.export
        assert export is not None
        try:
            command = Command(kind)
        except ValueError:
            return EINVAL, f"unsupported command {kind}"
        allowed = int(_ALLOWED_FLAGS[command])
        if not self.structured:
            allowed &= ~int(CommandFlag.DF)
        if not self._flags & TransmissionFlag.SEND_FAST_ZERO:
            allowed &= ~int(CommandFlag.FAST_ZERO)
        if flags & ~allowed:
            return EINVAL, f"unsupported flags {flags:#x} for {command.name}"
        if command in _WRITING and export.read_only:
            return EPERM, "Export is read-only"
        if command == Command.TRIM and not export.can_trim:
            return EINVAL, "TRIM is not supported by this export"
        if command == Command.WRITE_ZEROES and not export.can_write_zeroes:
            return EINVAL, "WRITE_ZEROES is not supported by this export"
        if command == Command.READ and length > MAX_REQUEST:
            return EINVAL, f"len ({length}) is larger than max len ({MAX_REQUEST})"
        if command == Command.BLOCK_STATUS:
            if not self._meta:
                return EINVAL, "CMD_BLOCK_STATUS not negotiated"
            if length == 0:
                return EINVAL, "BLOCK_STATUS of length 0"
        if command in (Command.DISC, Command.FLUSH):
            if offset or length:
                return EINVAL, f"{command.name} takes no offset or length"
        elif offset + length > export.size:
            return (
                EINVAL,
                f"operation past EOF; From: {offset}, Len: {length}, Size: {export.size}",
            )
        return None

    # replies (public)

    def reply_ok(self, cookie: int) -> None:
        """A request without data succeeded."""
        if self.structured:
            self._send(_CHUNK.pack(STRUCTURED_REPLY_MAGIC, _DONE, ChunkType.NONE, cookie, 0))
        else:
            self._send(_SIMPLE.pack(SIMPLE_REPLY_MAGIC, 0, cookie))

    def reply_error(self, cookie: int, error: int, message: str = "") -> None:
        """A request failed with wire *error* (see :func:`nbd_errno`); *message* if structured."""
        error = error or EINVAL
        if self.structured:
            text = message.encode()[:MAX_STRING]
            body = _ERROR.pack(error, len(text)) + text
            head = _CHUNK.pack(STRUCTURED_REPLY_MAGIC, _DONE, ChunkType.ERROR, cookie, len(body))
            self._send(head + body)
        else:
            self._send(_SIMPLE.pack(SIMPLE_REPLY_MAGIC, error, cookie))

    def reply_read(
        self, cookie: int, offset: int, parts: Sequence[Buffer | int], *, df: bool = False
    ) -> None:
        """A READ at *offset* succeeded: *parts* in order, each data or a hole's length.

        Holes become OFFSET_HOLE chunks with structured replies (unless *df*,
        the request's DF flag, which asks for one chunk), zeros otherwise.  The
        data buffers are sent as they are, without copying.
        """
        if not self.structured or df:
            payload: list[Buffer] = [bytes(p) if isinstance(p, int) else p for p in parts]
            total = sum(len(memoryview(p)) for p in payload)
            if self.structured:
                head = _CHUNK.pack(
                    STRUCTURED_REPLY_MAGIC, _DONE, ChunkType.OFFSET_DATA, cookie, 8 + total
                )
                self._send(head + _U64.pack(offset), *payload)
            else:
                self._send(_SIMPLE.pack(SIMPLE_REPLY_MAGIC, 0, cookie), *payload)
            return
        # A chunk may not be empty.
        parts = [p for p in parts if (p if isinstance(p, int) else len(memoryview(p)))]
        if not parts:
            self.reply_ok(cookie)
            return
        last = len(parts) - 1
        for i, part in enumerate(parts):
            flags = _DONE if i == last else 0
            if isinstance(part, int):
                head = _CHUNK.pack(STRUCTURED_REPLY_MAGIC, flags, ChunkType.OFFSET_HOLE, cookie, 12)
                self._send(head + _U64.pack(offset) + _U32.pack(part))
                offset += part
            else:
                n = len(memoryview(part))
                head = _CHUNK.pack(
                    STRUCTURED_REPLY_MAGIC, flags, ChunkType.OFFSET_DATA, cookie, 8 + n
                )
                self._send(head + _U64.pack(offset), part)
                offset += n

    def reply_block_status(
        self, cookie: int, context_id: int, extents: Iterable[Extent], length: int, one: bool
    ) -> None:
        """A BLOCK_STATUS of *length* bytes succeeded; *one* is the REQ_ONE flag.

        Adjacent extents with equal flags are merged, the total is clipped to
        *length*, and each descriptor fits in 32 bits.
        """
        descs: list[list[int]] = []
        left = length
        for ext in extents:
            n = min(ext.length, left)
            if n <= 0:
                break
            left -= n
            if descs and descs[-1][1] == ext.flags:
                descs[-1][0] += n
            else:
                descs.append([n, ext.flags])
        if not descs:
            self.reply_error(cookie, EIO, "no block status for the range")
            return
        if one:
            del descs[1:]
        limit = 0xFFFFF000  # the largest 4 KiB-aligned 32-bit length
        body = bytearray(_U32.pack(context_id))
        for n, flags in descs:
            while n:
                k = min(n, limit)
                body += _EXTENT.pack(k, flags)
                n -= k
                if one:
                    break
        head = _CHUNK.pack(STRUCTURED_REPLY_MAGIC, _DONE, ChunkType.BLOCK_STATUS, cookie, len(body))
        self._send(head + body)


# ---- client -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    command: Command
    offset: int
    length: int
    reply: Reply
    buffer: bytearray | None = None
    received: int = 0


class ClientConnection(_Connection):
    """Sans-I/O NBD client; see the module docstring.

    The handshake runs by itself once the server's greeting is fed: STARTTLS
    first with *tls* (after the :class:`StartTLS` event, do the TLS handshake and
    call ``tls_started()``), then structured replies (with *structured*) and
    the *meta_contexts* (ignored without structured replies), then GO on
    *export* (falling back to EXPORT_NAME for a server without GO).
    :class:`ExportReady` then says requests may be sent with :meth:`request`.

    With *list_exports*, the client asks for the export list instead, reports
    it as :class:`ExportList` and aborts the session (:class:`Disconnect`).
    """

    def __init__(
        self,
        export: str = "",
        *,
        structured: bool = True,
        meta_contexts: Sequence[str] = (BASE_ALLOCATION,),
        tls: bool = False,
        list_exports: bool = False,
    ) -> None:
        super().__init__()
        if len(export.encode()) > MAX_STRING:
            raise ValueError(f"export name is longer than {MAX_STRING} bytes")
        self.export_name = export
        self.want_structured = structured
        self.want_meta = list(meta_contexts)
        self.want_tls = tls
        self.list_exports = list_exports
        self.structured = False
        self.no_zeroes = False
        #: The export, once :class:`ExportReady` was reported.
        self.export: Export | None = None
        self.flags = 0
        self.meta_contexts: dict[str, int] = {}
        self._meta_ids: set[int] = set()
        self._option = Option.ABORT
        self._option_data: list[bytes] = []
        self._info_size: int | None = None
        self._info_flags = 0
        self._description = ""
        self._block = (1, 4096, MAX_REQUEST)
        self._cookies = itertools.count(1)
        self._inflight: dict[int, _Pending] = {}
        self._chunk: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._chunk_start = b""
        self._reply_kind = 0
        self._simple_cookie = 0
        self._listing: list[tuple[str, str]] = []
        self._expect(_GREETING.size, self._greeting)

    def _mid_message(self) -> bool:
        if self._option == Option.ABORT and self.export is None:
            return False  # the server may close without acknowledging an ABORT
        return self._step not in (None, self._reply_header) or bool(self._inflight)

    def _resume_after_tls(self) -> None:
        self._negotiate()

    # handshake

    def _greeting(self, view: memoryview) -> None:
        magic, opt_magic, flags = _GREETING.unpack(view)
        if magic != NBDMAGIC:
            raise ProtocolError("server magic", f"{magic:#x}, expected {NBDMAGIC:#x}")
        if opt_magic != IHAVEOPT:
            raise ProtocolError("server magic", "oldstyle servers are not supported")
        if not flags & HandshakeFlag.FIXED_NEWSTYLE:
            raise ProtocolError("server flags", "the server does not speak fixed newstyle")
        self.no_zeroes = bool(flags & HandshakeFlag.NO_ZEROES)
        mine = HandshakeFlag.FIXED_NEWSTYLE | (HandshakeFlag.NO_ZEROES if self.no_zeroes else 0)
        self._send(_U32.pack(mine))
        if self.want_tls:
            self._option_send(Option.STARTTLS, b"")
        else:
            self._negotiate()

    def _negotiate(self) -> None:
        if self.list_exports:
            self._option_send(Option.LIST, b"")
        elif self.want_structured:
            self._option_send(Option.STRUCTURED_REPLY, b"")
        else:
            self._go()

    def _go(self) -> None:
        name = self.export_name.encode()
        infos = (Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE)
        data = _U32.pack(len(name)) + name + _U16.pack(len(infos))
        self._info_size = None
        self._option_send(Option.GO, data + b"".join(_U16.pack(i) for i in infos))

    def _option_send(self, option: Option, data: bytes) -> None:
        self._option = option
        self._option_data = []
        self._send(_OPTION.pack(IHAVEOPT, option, len(data)) + data)
        if option == Option.EXPORT_NAME:
            size = 10 if self.no_zeroes else 134
            self._expect(size, self._export_name_reply)
        else:
            self._expect(_OPTION_REPLY.size, self._option_reply_header)

    def _option_reply_header(self, view: memoryview) -> None:
        magic, option, kind, length = _OPTION_REPLY.unpack(view)
        if magic != OPTION_REPLY_MAGIC:
            raise ProtocolError("option reply magic", f"{magic:#x}")
        if option != self._option:
            raise ProtocolError("option reply", f"answers option {option}, not {self._option}")
        if length > MAX_OPTION:
            raise ProtocolError("option reply length", f"{length} bytes, at most {MAX_OPTION}")
        self._reply_kind = kind
        self._expect(length, self._option_reply)

    def _option_reply(self, view: memoryview) -> None:
        kind, option = self._reply_kind, self._option
        self._expect(_OPTION_REPLY.size, self._option_reply_header)
        if kind & _ERR:
            self._option_failed(kind, bytes(view).decode(errors="replace"))
            return
        if kind == OptionReply.ACK:
            if len(view):
                raise ProtocolError("option reply length", "an ACK carries no data")
            self._option_done()
        elif kind == OptionReply.SERVER and option == Option.LIST:
            p = _Payload(view, "SERVER")
            try:
                name = p.string("name")
                desc = _text(p.data[p.pos :], "SERVER.description")
            except _Invalid as exc:
                raise ProtocolError("SERVER reply", str(exc)) from None
            self._listing.append((name, desc))
        elif kind == OptionReply.INFO and option == Option.GO:
            self._info(view)
        elif kind == OptionReply.META_CONTEXT and option == Option.SET_META_CONTEXT:
            if len(view) < 4 or len(view) > 4 + MAX_STRING:
                raise ProtocolError("META_CONTEXT reply length", f"{len(view)} bytes")
            (ident,) = _U32.unpack(view[:4])
            try:
                name = _text(view[4:], "META_CONTEXT.name")
            except _Invalid as exc:
                raise ProtocolError("META_CONTEXT reply", str(exc)) from None
            self.meta_contexts[name] = ident
        else:
            raise ProtocolError("option reply type", f"{kind} is unexpected for {option.name}")

    def _info(self, view: memoryview) -> None:
        if len(view) < 2:
            raise ProtocolError("INFO reply length", f"{len(view)} bytes")
        (kind,) = _U16.unpack(view[:2])
        if kind == Info.EXPORT:
            if len(view) != _EXPORT_INFO.size:
                raise ProtocolError("INFO EXPORT length", f"{len(view)} bytes")
            _, self._info_size, self._info_flags = _EXPORT_INFO.unpack(view)
        elif kind == Info.DESCRIPTION:
            self._description = bytes(view[2:]).decode(errors="replace")
        elif kind == Info.BLOCK_SIZE:
            if len(view) != _BLOCK_SIZE.size:
                raise ProtocolError("INFO BLOCK_SIZE length", f"{len(view)} bytes")
            _, lo, pref, hi = _BLOCK_SIZE.unpack(view)
            if not lo or lo & (lo - 1) or lo > 65536 or pref < lo or hi < lo:
                raise ProtocolError("INFO BLOCK_SIZE", f"bad sizes {lo}/{pref}/{hi}")
            self._block = (lo, pref, hi)
        # NAME and unknown types carry nothing we need.

    def _option_failed(self, kind: int, message: str) -> None:
        option = self._option
        if option == Option.STRUCTURED_REPLY:
            self._go()  # simple replies only
        elif option == Option.SET_META_CONTEXT:
            self.meta_contexts.clear()
            self._go()
        elif option == Option.GO and kind == OptionReply.ERR_UNSUP:
            self._option_send(Option.EXPORT_NAME, self.export_name.encode())
        else:
            raise OptionRefused(option, kind, message)

    def _option_done(self) -> None:
        option = self._option
        if option == Option.STARTTLS:
            self._pause_for_tls()
        elif option == Option.LIST:
            self._events.append(ExportList(list(self._listing)))
            self._option_send(Option.ABORT, b"")
        elif option == Option.ABORT:
            self._step = None
            self.closed = True
            self._events.append(Disconnect())
        elif option == Option.STRUCTURED_REPLY:
            self.structured = True
            queries = [q.encode() for q in self.want_meta]
            if not queries:
                self._go()
                return
            name = self.export_name.encode()
            data = _U32.pack(len(name)) + name + _U32.pack(len(queries))
            data += b"".join(_U32.pack(len(q)) + q for q in queries)
            self._option_send(Option.SET_META_CONTEXT, data)
        elif option == Option.SET_META_CONTEXT:
            self._meta_ids = set(self.meta_contexts.values())
            self._go()
        elif option == Option.GO:
            if self._info_size is None:
                raise ProtocolError("GO reply", "no INFO EXPORT before the ACK")
            self._ready(self._info_size, self._info_flags)

    def _export_name_reply(self, view: memoryview) -> None:
        size, flags = struct.unpack(">QH", view[:10])
        self.meta_contexts.clear()
        self._ready(size, flags)

    def _ready(self, size: int, flags: int) -> None:
        if not flags & TransmissionFlag.HAS_FLAGS:
            flags = TransmissionFlag.HAS_FLAGS
        lo, pref, hi = self._block
        base = Export.from_flags(self.export_name, size, flags, self._description)
        self.export = Export(
            base.name,
            base.size,
            base.description,
            base.read_only,
            base.can_flush,
            base.can_trim,
            base.can_write_zeroes,
            base.can_fast_zero,
            base.can_multi_conn,
            base.can_cache,
            lo,
            pref,
            min(hi, MAX_REQUEST),
        )
        self.flags = flags
        self._meta_ids = set(self.meta_contexts.values())
        self._events.append(ExportReady(self.export, flags, self.structured, self.meta_contexts))
        self._expect(_SIMPLE.size, self._reply_header)

    # transmission

    def request(
        self,
        command: Command,
        offset: int = 0,
        length: int = 0,
        flags: int = 0,
        data: Buffer | None = None,
    ) -> int:
        """Queue a request; its cookie.  A WRITE's *length* is that of *data*.

        Raises :class:`NbdError` before :class:`ExportReady` or after the
        session ended, :class:`ValueError` for a length over :data:`MAX_REQUEST`.
        """
        if self.export is None or self.closed or self._dead is not None:
            raise NbdError("no NBD export is ready for requests")
        command = Command(command)
        if data is not None:
            length = len(memoryview(data))
        if command in (Command.READ, Command.WRITE) and length > MAX_REQUEST:
            raise ValueError(f"length {length} exceeds the {MAX_REQUEST}-byte request limit")
        cookie = next(self._cookies)
        header = _REQUEST.pack(REQUEST_MAGIC, flags, command, cookie, offset, length)
        if command == Command.DISC:
            self._send(header)
            self.closed = True
            return cookie
        self._inflight[cookie] = _Pending(command, offset, length, Reply(cookie, command))
        if command == Command.WRITE and data is not None:
            self._send(header, data)
        else:
            self._send(header)
        return cookie

    def disconnect(self) -> None:
        """Queue NBD_CMD_DISC; the server replies nothing and closes."""
        self.request(Command.DISC)

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._inflight)

    def _reply_header(self, view: memoryview) -> None:
        (magic,) = _U32.unpack(view[:4])
        if magic == SIMPLE_REPLY_MAGIC:
            _, error, cookie = _SIMPLE.unpack(view[: _SIMPLE.size])
            pending = self._pending_for(cookie)
            reply = pending.reply
            reply.error = error
            if error or pending.command != Command.READ:
                self._finish(cookie)
                self._expect(_SIMPLE.size, self._reply_header)
            elif pending.length == 0:
                reply.data = b""
                self._finish(cookie)
                self._expect(_SIMPLE.size, self._reply_header)
            else:
                self._simple_cookie = cookie
                self._expect(pending.length, self._simple_data)
        elif magic == STRUCTURED_REPLY_MAGIC:
            if not self.structured:
                raise ProtocolError("reply magic", "structured reply without negotiation")
            # The chunk header is 20 bytes, 4 more than a simple reply's.
            self._chunk_start = bytes(view)
            self._expect(_CHUNK.size - _SIMPLE.size, self._chunk_rest)
        else:
            raise ProtocolError("reply magic", f"{magic:#x}")

    def _pending_for(self, cookie: int) -> _Pending:
        pending = self._inflight.get(cookie)
        if pending is None:
            raise ProtocolError("reply cookie", f"{cookie:#x} matches no request in flight")
        return pending

    def _simple_data(self, view: memoryview) -> None:
        cookie = self._simple_cookie
        self._inflight[cookie].reply.data = view
        self._finish(cookie)
        self._expect(_SIMPLE.size, self._reply_header)

    def _finish(self, cookie: int) -> None:
        pending = self._inflight.pop(cookie)
        reply = pending.reply
        if pending.command == Command.READ and not reply.error and reply.data is None:
            if pending.buffer is not None:
                if pending.received != pending.length:
                    raise ProtocolError(
                        "structured reply",
                        f"READ answered {pending.received} of {pending.length} bytes",
                    )
                reply.data = pending.buffer
            elif pending.length:
                raise ProtocolError("structured reply", "READ answered without data")
            else:
                reply.data = b""
        if pending.command == Command.BLOCK_STATUS and not reply.error and not reply.extents:
            raise ProtocolError("structured reply", "BLOCK_STATUS answered without extents")
        self._events.append(reply)

    def _chunk_rest(self, view: memoryview) -> None:
        _, flags, kind, cookie, length = _CHUNK.unpack(self._chunk_start + bytes(view))
        pending = self._pending_for(cookie)
        if flags & ~_DONE:
            raise ProtocolError("chunk flags", f"unknown bits in {flags:#x}")
        limit = pending.length + 8 if pending.command == Command.READ else MAX_OPTION
        if length > max(limit, MAX_OPTION):
            raise ProtocolError("chunk length", f"{length} bytes for a request of {limit}")
        self._chunk = (flags, kind, cookie, length)
        self._expect(length, self._chunk_payload)

    def _chunk_payload(self, view: memoryview) -> None:
        flags, kind, cookie, length = self._chunk
        self._expect(_SIMPLE.size, self._reply_header)
        pending = self._inflight[cookie]
        reply = pending.reply
        if kind == ChunkType.NONE:
            if length or not flags & _DONE:
                raise ProtocolError("NONE chunk", "must be empty and the last chunk")
        elif kind in (ChunkType.ERROR, ChunkType.ERROR_OFFSET):
            if length < _ERROR.size:
                raise ProtocolError("ERROR chunk length", f"{length} bytes")
            error, n = _ERROR.unpack(view[: _ERROR.size])
            extra = 8 if kind == ChunkType.ERROR_OFFSET else 0
            if error == 0 or _ERROR.size + n + extra != length:
                raise ProtocolError("ERROR chunk", f"error {error}, message of {n} bytes")
            if not reply.error:
                reply.error = error
                reply.message = bytes(view[6 : 6 + n]).decode(errors="replace")
        elif kind in (ChunkType.OFFSET_DATA, ChunkType.OFFSET_HOLE):
            self._read_chunk(pending, kind, view)
        elif kind == ChunkType.BLOCK_STATUS:
            self._status_chunk(pending, view)
        elif kind & (1 << 15):
            # An unknown error type still carries the error number first.
            if length < _ERROR.size:
                raise ProtocolError("chunk length", f"{length} bytes for error type {kind}")
            reply.error = reply.error or _ERROR.unpack(view[: _ERROR.size])[0] or EINVAL
        else:
            raise ProtocolError("chunk type", f"unknown type {kind}")
        if flags & _DONE:
            self._finish(cookie)

    def _read_chunk(self, pending: _Pending, kind: int, view: memoryview) -> None:
        if pending.command != Command.READ:
            raise ProtocolError("chunk type", f"read data for {pending.command.name}")
        if len(view) < (12 if kind == ChunkType.OFFSET_HOLE else 9):
            raise ProtocolError("chunk length", f"{len(view)} bytes for a read chunk")
        (offset,) = _U64.unpack(view[:8])
        if kind == ChunkType.OFFSET_HOLE:
            if len(view) != 12:
                raise ProtocolError("OFFSET_HOLE length", f"{len(view)} bytes")
            (n,) = _U32.unpack(view[8:12])
            data: memoryview | None = None
        else:
            data = view[8:]
            n = len(data)
        start = offset - pending.offset
        if n == 0 or start < 0 or start + n > pending.length:
            raise ProtocolError(
                "read chunk offset", f"{n} bytes at {offset} outside the requested range"
            )
        if pending.buffer is None:
            if data is not None and n == pending.length:
                pending.reply.data = data  # the whole read in one chunk: no copy
                pending.received = n
                pending.buffer = bytearray()
                return
            pending.buffer = bytearray(pending.length)
        if data is not None:
            pending.buffer[start : start + n] = data
        pending.received += n

    def _status_chunk(self, pending: _Pending, view: memoryview) -> None:
        if pending.command != Command.BLOCK_STATUS:
            raise ProtocolError("chunk type", f"block status for {pending.command.name}")
        if len(view) < 4 + _EXTENT.size or (len(view) - 4) % _EXTENT.size:
            raise ProtocolError("BLOCK_STATUS chunk length", f"{len(view)} bytes")
        (ident,) = _U32.unpack(view[:4])
        if ident not in self._meta_ids:
            raise ProtocolError("BLOCK_STATUS context", f"id {ident} was not negotiated")
        # One chunk per context (as QEMU's client insists), so a server cannot grow
        # the client's memory by sending more; extents past the request are dropped.
        if ident in pending.reply.extents:
            raise ProtocolError("BLOCK_STATUS context", f"a second chunk for id {ident}")
        extents: list[Extent] = []
        left = pending.length
        for n, f in _EXTENT.iter_unpack(view[4:]):
            if n and left:
                extents.append(Extent(min(n, left), f))
                left -= extents[-1].length
        pending.reply.extents[ident] = extents
