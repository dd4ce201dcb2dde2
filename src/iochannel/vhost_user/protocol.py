"""Sans-I/O vhost-user message codec.

Contract:

* :class:`MessageReader` is fed bytes and file descriptors exactly as they come
  off the socket (:meth:`MessageReader.feed`) and yields complete, validated
  :class:`Message` objects (:meth:`MessageReader.next_message`).  It never does
  I/O and never blocks.
* Every check that can fail raises :class:`ProtocolError`, whose ``field``
  names the offending header or payload field.  The reader is then *broken*:
  the connection must be closed.  Before raising, the reader closes every fd it
  still owns, so a hostile peer cannot leak descriptors into the process.
* A returned :class:`Message` owns its ``fds``; the consumer must close or keep
  each one (:meth:`Message.close_fds` closes the ones not taken).
* :func:`encode_reply` produces reply bytes with ``flags == 0x5``, the only
  value QEMU accepts.

Validation follows the strictest known back-ends: version bits must be 1, the
REPLY bit must be clear, the payload must not exceed :data:`MAX_PAYLOAD` and
must have the exact size of the request's payload type, at most
:data:`MAX_FDS` fds per message, and only requests that carry fds may have
them (with the exact count).
"""

from __future__ import annotations

import enum
import itertools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .._core.channel import close_fds
from ..errors import RemoteProtocolError

__all__ = [
    "HEADER",
    "MAX_FDS",
    "MAX_PAYLOAD",
    "VRING_NOFD",
    "BackendRequest",
    "ConfigPayload",
    "Flags",
    "InflightPayload",
    "Message",
    "MessageReader",
    "ProtocolError",
    "ProtocolFeature",
    "Region",
    "Request",
    "VringAddr",
    "encode_reply",
    "pack_config",
    "pack_u64",
    "pack_vring_state",
]

HEADER = struct.Struct("<III")
#: Largest payload accepted.  libvhost-user's limit is 272 bytes and rust-vmm's
#: 4 KiB; every request QEMU sends fits, and exact per-request sizes are
#: checked afterwards anyway.
MAX_PAYLOAD = 4096
#: Fds per message (VHOST_MEMORY_BASELINE_NREGIONS).
MAX_FDS = 8
#: Bit in a vring-file payload meaning "no fd attached".
VRING_NOFD = 0x100
#: Size of a virtio config space exchanged by GET/SET_CONFIG, at most.
MAX_CONFIG = 256

_U64 = struct.Struct("<Q")
_STATE = struct.Struct("<II")
_ADDR = struct.Struct("<IIQQQQ")
_REGION = struct.Struct("<QQQQ")
_CONFIG_HDR = struct.Struct("<III")
_INFLIGHT = struct.Struct("<QQHH4x")


class Request(enum.IntEnum):
    """Front-end to back-end request numbers."""

    NONE = 0
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_SLAVE_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


class BackendRequest(enum.IntEnum):
    """Back-end to front-end request numbers (on the SET_SLAVE_REQ_FD channel)."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3


class Flags(enum.IntFlag):
    """Header flag bits."""

    VERSION = 0x1
    REPLY = 0x4
    NEED_REPLY = 0x8


_VERSION_MASK = 0x3


class ProtocolFeature(enum.IntFlag):
    """VHOST_USER_PROTOCOL_F_* bits."""

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3
    MTU = 1 << 4
    SLAVE_REQ = 1 << 5
    CROSS_ENDIAN = 1 << 6
    CRYPTO_SESSION = 1 << 7
    PAGEFAULT = 1 << 8
    CONFIG = 1 << 9
    SLAVE_SEND_FD = 1 << 10
    HOST_NOTIFIER = 1 << 11
    INFLIGHT_SHMFD = 1 << 12
    RESET_DEVICE = 1 << 13
    INBAND_NOTIFICATIONS = 1 << 14
    CONFIGURE_MEM_SLOTS = 1 << 15
    STATUS = 1 << 16


class ProtocolError(RemoteProtocolError):
    """The front-end sent something the protocol does not allow.

    ``field`` names what was wrong (``"header.size"``, ``"SET_VRING_NUM.num"``
    …); the message says why.  The connection cannot continue.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Region:
    """One guest memory region as described by SET_MEM_TABLE / ADD_MEM_REG."""

    gpa: int
    size: int
    uaddr: int
    mmap_offset: int


@dataclass(frozen=True, slots=True)
class VringAddr:
    """SET_VRING_ADDR payload; ring addresses are front-end virtual addresses."""

    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


@dataclass(frozen=True, slots=True)
class ConfigPayload:
    """GET_CONFIG / SET_CONFIG payload."""

    offset: int
    size: int
    flags: int
    data: bytes


@dataclass(frozen=True, slots=True)
class InflightPayload:
    """GET/SET_INFLIGHT_FD payload."""

    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int


Payload = (
    None
    | int
    | tuple[int, int]
    | VringAddr
    | list[Region]
    | Region
    | ConfigPayload
    | InflightPayload
)


@dataclass(slots=True)
class Message:
    """A decoded request.

    ``payload`` depends on the request: ``None``, an ``int`` (u64 and vring-file
    payloads), ``(index, num)`` for vring states, :class:`VringAddr`, a list of
    :class:`Region` (SET_MEM_TABLE), one :class:`Region` (ADD/REM_MEM_REG),
    :class:`ConfigPayload` or :class:`InflightPayload`.
    """

    request: Request
    flags: int
    payload: Payload
    fds: list[int] = field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & Flags.NEED_REPLY)

    def take_fd(self) -> int:
        """Remove and return the first fd; the caller now owns it."""
        return self.fds.pop(0)

    def close_fds(self) -> None:
        """Close every fd not taken; idempotent."""
        close_all(self.fds)


def close_all(fds: list[int]) -> None:
    """Close and forget every fd in *fds*."""
    close_fds(fds)
    fds.clear()


def _u64(p: bytes) -> int:
    return int(_U64.unpack(p)[0])


def _state(p: bytes) -> tuple[int, int]:
    index, num = _STATE.unpack(p)
    return int(index), int(num)


def _addr(p: bytes) -> VringAddr:
    return VringAddr(*_ADDR.unpack(p))


def _region_at(p: bytes, off: int, name: str) -> Region:
    gpa, size, uaddr, mmap_offset = _REGION.unpack_from(p, off)
    if size == 0:
        raise ProtocolError(f"{name}.memory_size", "region size is 0")
    for what, base in (
        ("guest_phys_addr", gpa),
        ("userspace_addr", uaddr),
        ("mmap_offset", mmap_offset),
    ):
        if base + size > 1 << 64:
            raise ProtocolError(f"{name}.{what}", "region end overflows 64 bits")
    return Region(gpa, size, uaddr, mmap_offset)


def _mem_table(p: bytes) -> list[Region]:
    (nregions,) = struct.unpack_from("<I", p)
    if not 1 <= nregions <= MAX_FDS:
        raise ProtocolError("SET_MEM_TABLE.nregions", f"{nregions} not in 1..{MAX_FDS}")
    if len(p) != 8 + _REGION.size * nregions:
        raise ProtocolError("header.size", f"{len(p)} bytes for {nregions} regions")
    regions = [
        _region_at(p, 8 + _REGION.size * i, f"SET_MEM_TABLE.regions[{i}]") for i in range(nregions)
    ]
    check_no_overlap(regions, "SET_MEM_TABLE")
    return regions


def check_no_overlap(regions: Sequence[Region], name: str) -> None:
    """Raise unless guest-physical and front-end-virtual ranges are disjoint."""
    for attr in ("gpa", "uaddr"):
        spans = sorted((getattr(r, attr), getattr(r, attr) + r.size) for r in regions)
        for (_, end), (start, _) in itertools.pairwise(spans):
            if start < end:
                raise ProtocolError(f"{name}.{attr}", f"regions overlap at {start:#x}")


def _single_region(p: bytes) -> Region:
    return _region_at(p, 8, "MEM_REG.region")


def _config(p: bytes) -> ConfigPayload:
    offset, size, flags = _CONFIG_HDR.unpack_from(p)
    if size > MAX_CONFIG:
        raise ProtocolError("CONFIG.size", f"{size} exceeds {MAX_CONFIG}")
    if len(p) != _CONFIG_HDR.size + size:
        raise ProtocolError("header.size", f"{len(p)} bytes for a {size}-byte config")
    return ConfigPayload(offset, size, flags, bytes(p[_CONFIG_HDR.size :]))


def _inflight(p: bytes) -> InflightPayload:
    return InflightPayload(*_INFLIGHT.unpack(p))


def _none(p: bytes) -> None:
    return None


class _Spec:
    """How to decode one request: exact size (None = variable), parser, fds."""

    __slots__ = ("fds", "parse", "size")

    def __init__(
        self,
        size: int | None,
        parse: Callable[[bytes], Payload],
        fds: str = "none",
    ) -> None:
        self.size = size
        self.parse = parse
        #: "none", "one", "vring" (one unless NOFD), "regions" (one per region),
        #: "optional" (0 or 1; closed).
        self.fds = fds


_SPECS: dict[Request, _Spec] = {
    Request.GET_FEATURES: _Spec(0, _none),
    Request.SET_FEATURES: _Spec(8, _u64),
    Request.SET_OWNER: _Spec(0, _none),
    Request.RESET_OWNER: _Spec(0, _none),
    Request.SET_MEM_TABLE: _Spec(None, _mem_table, "regions"),
    Request.SET_VRING_NUM: _Spec(8, _state),
    Request.SET_VRING_ADDR: _Spec(40, _addr),
    Request.SET_VRING_BASE: _Spec(8, _state),
    Request.GET_VRING_BASE: _Spec(8, _state),
    Request.SET_VRING_KICK: _Spec(8, _u64, "vring"),
    Request.SET_VRING_CALL: _Spec(8, _u64, "vring"),
    Request.SET_VRING_ERR: _Spec(8, _u64, "vring"),
    Request.GET_PROTOCOL_FEATURES: _Spec(0, _none),
    Request.SET_PROTOCOL_FEATURES: _Spec(8, _u64),
    Request.GET_QUEUE_NUM: _Spec(0, _none),
    Request.SET_VRING_ENABLE: _Spec(8, _state),
    Request.SET_SLAVE_REQ_FD: _Spec(0, _none, "one"),
    Request.GET_CONFIG: _Spec(None, _config),
    Request.SET_CONFIG: _Spec(None, _config),
    Request.GET_INFLIGHT_FD: _Spec(24, _inflight),
    Request.SET_INFLIGHT_FD: _Spec(24, _inflight, "one"),
    Request.RESET_DEVICE: _Spec(0, _none),
    Request.GET_MAX_MEM_SLOTS: _Spec(0, _none),
    Request.ADD_MEM_REG: _Spec(40, _single_region, "one"),
    Request.REM_MEM_REG: _Spec(40, _single_region, "optional"),
    Request.SET_STATUS: _Spec(8, _u64),
    Request.GET_STATUS: _Spec(0, _none),
}


def decode(request_no: int, flags: int, payload: bytes, fds: list[int]) -> Message:
    """Validate and decode one message; see the module docstring.

    On error every fd in *fds* is closed before :class:`ProtocolError` is
    raised.  On success the returned message owns *fds*.
    """
    try:
        return _decode(request_no, flags, payload, fds)
    except ProtocolError:
        close_all(fds)
        raise
    except struct.error as exc:  # a short variable-size payload
        close_all(fds)
        raise ProtocolError("header.size", str(exc)) from exc


def _decode(request_no: int, flags: int, payload: bytes, fds: list[int]) -> Message:
    try:
        request = Request(request_no)
    except ValueError:
        raise ProtocolError("header.request", f"unknown request {request_no}") from None
    spec = _SPECS.get(request)
    if spec is None:
        raise ProtocolError("header.request", f"{request.name} is not supported")
    if spec.size is not None and len(payload) != spec.size:
        raise ProtocolError(
            "header.size", f"{request.name} needs {spec.size} bytes, got {len(payload)}"
        )
    value = spec.parse(payload)
    expected: tuple[int, ...]
    if spec.fds == "none":
        expected = (0,)
    elif spec.fds == "one":
        expected = (1,)
    elif spec.fds == "optional":
        expected = (0, 1)
    elif spec.fds == "vring":
        assert isinstance(value, int)
        expected = (0,) if value & VRING_NOFD else (1,)
        if value & ~(0xFF | VRING_NOFD):
            raise ProtocolError(f"{request.name}.u64", f"reserved bits set in {value:#x}")
    else:
        assert isinstance(value, list)
        expected = (len(value),)
    if len(fds) not in expected:
        counts = " or ".join(map(str, expected))
        raise ProtocolError("fds", f"{request.name} carries {len(fds)} fds, expected {counts}")
    if request is Request.REM_MEM_REG:
        close_all(fds)  # the fd only identifies the region; it is not needed
    return Message(request, flags, value, fds)


class MessageReader:
    """Incremental parser for the front-end's byte stream.

    Call :meth:`wanted` to learn how many bytes the next read should ask for
    (reading more could swallow fds meant for the next message), then
    :meth:`feed` what was read with the fds that came with it, then
    :meth:`next_message` until it returns ``None``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: list[int] = []
        self._header: tuple[int, int, int] | None = None
        self.broken = False

    def wanted(self) -> int:
        """Bytes needed to complete the current header or payload (≥ 1)."""
        if self._header is None:
            return HEADER.size - len(self._buf)
        return max(1, self._header[2] - len(self._buf))

    @property
    def pending(self) -> bool:
        """True if part of a message has been received (EOF now truncates it)."""
        return bool(self._buf) or self._header is not None or bool(self._fds)

    def feed(self, data: bytes | bytearray | memoryview, fds: Sequence[int] = ()) -> None:
        """Append received bytes and fds; the reader now owns the fds."""
        self._fds.extend(fds)
        self._buf += data
        if len(self._fds) > MAX_FDS:
            self._fail("fds", f"a message carries {len(self._fds)} fds, at most {MAX_FDS} allowed")

    def next_message(self) -> Message | None:
        """Return the next complete message, or None if more bytes are needed."""
        if self.broken:
            raise ProtocolError("connection", "reader is broken")
        if self._header is None:
            if len(self._buf) < HEADER.size:
                return None
            request, flags, size = HEADER.unpack_from(self._buf)
            del self._buf[: HEADER.size]
            if flags & _VERSION_MASK != Flags.VERSION:
                self._fail("header.flags", f"version {flags & _VERSION_MASK}, expected 1")
            if flags & Flags.REPLY:
                self._fail("header.flags", "REPLY bit set on a request")
            if size > MAX_PAYLOAD:
                self._fail("header.size", f"{size} exceeds {MAX_PAYLOAD}")
            self._header = (request, flags, size)
        request, flags, size = self._header
        if len(self._buf) < size:
            return None
        payload = bytes(self._buf[:size])
        del self._buf[:size]
        self._header = None
        fds, self._fds = self._fds, []
        try:
            return decode(request, flags, payload, fds)
        except ProtocolError:
            self.broken = True
            self.close()
            raise

    def eof(self) -> None:
        """The stream ended: raise if it ended inside a message."""
        if self.pending:
            self._fail("connection", "end of stream inside a message")

    def close(self) -> None:
        """Drop buffered state and close owned fds; idempotent."""
        close_all(self._fds)
        self._buf.clear()
        self._header = None

    def _fail(self, field_name: str, reason: str) -> None:
        self.broken = True
        self.close()
        raise ProtocolError(field_name, reason)


def encode_reply(request: Request, payload: bytes = b"") -> bytes:
    """Header plus payload of a reply to *request*."""
    return HEADER.pack(request, Flags.VERSION | Flags.REPLY, len(payload)) + payload


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def pack_vring_state(index: int, num: int) -> bytes:
    return _STATE.pack(index, num)


def pack_config(offset: int, flags: int, data: bytes) -> bytes:
    return _CONFIG_HDR.pack(offset, len(data), flags) + data


def pack_region(r: Region) -> bytes:
    """A single-region payload (ADD/REM_MEM_REG)."""
    return bytes(8) + _REGION.pack(r.gpa, r.size, r.uaddr, r.mmap_offset)


def pack_mem_table(regions: Sequence[Region]) -> bytes:
    return struct.pack("<II", len(regions), 0) + b"".join(
        _REGION.pack(r.gpa, r.size, r.uaddr, r.mmap_offset) for r in regions
    )


def pack_vring_addr(a: VringAddr) -> bytes:
    return _ADDR.pack(a.index, a.flags, a.desc, a.used, a.avail, a.log)


def encode_request(request: int, payload: bytes = b"", flags: int = Flags.VERSION) -> bytes:
    """Header plus payload of a request (front-end's or back-end's, without reply)."""
    return HEADER.pack(request, flags, len(payload)) + payload
