"""Socket addresses in QEMU's four kinds, their string forms, and name resolution.

* :class:`InetAddress` — TCP/UDP host and port, with QEMU's ``to`` (port range
  upper bound), ``ipv4``/``ipv6`` family flags, ``numeric`` and keep-alive.
* :class:`UnixAddress` — a filesystem path, or an abstract name (``abstract``),
  bound with its exact length (``tight``, the default) or padded to the full
  ``sun_path`` as some programs expect.
* :class:`VsockAddress` — a virtio-vsock context id and port.
* :class:`FdAddress` — an already-open socket, by number.

:func:`parse_address` reads QEMU's legacy strings (``host:port[,opt…]``,
``[v6addr]:port``, ``unix:path[,abstract][,tight=off]``, ``vsock:cid:port``,
``fd:N``) and raises :class:`AddressError` naming the bad part.  :func:`resolve`
expands an inet address into one numeric address per ``getaddrinfo`` result
(unix, vsock and fd addresses resolve to themselves); it blocks, so async code
runs it in a thread.
"""

from __future__ import annotations

import dataclasses
import socket

from ..errors import ConfigurationError

__all__ = [
    "Address",
    "AddressError",
    "FdAddress",
    "InetAddress",
    "UnixAddress",
    "VsockAddress",
    "format_address",
    "parse_address",
    "resolve",
]

# sun_path is 108 bytes on Linux; a path needs its NUL, an abstract name its leading NUL.
UNIX_PATH_MAX = 108


class AddressError(ConfigurationError):
    """A socket address string or field is invalid; ``field`` names the field at fault, if any."""


@dataclasses.dataclass(frozen=True)
class InetAddress:
    host: str
    port: str = ""
    numeric: bool = False
    #: Highest port to try when listening (QEMU ``to=``); ports in use are skipped.
    to: int | None = None
    #: Restrict to one family; ``None`` for both means "either".
    ipv4: bool | None = None
    ipv6: bool | None = None
    keep_alive: bool | None = None

    def __post_init__(self) -> None:
        if self.ipv4 is False and self.ipv6 is False:
            raise AddressError("ipv4 and ipv6 cannot both be off", field="ipv4")
        if self.port.isdigit():
            if int(self.port) > 65535:
                raise AddressError(f"port {self.port!r} is out of range 0-65535", field="port")
        elif self.port and (self.numeric or not self.port.replace("-", "").isalnum()):
            # Non-numeric ports are service names ("http"), resolved by getaddrinfo.
            raise AddressError(f"invalid port {self.port!r}", field="port")
        if self.to is not None:
            if not 0 <= self.to <= 65535:
                raise AddressError(f"to={self.to} is out of range 0-65535", field="to")
            if self.port and self.port.isdigit() and self.to < int(self.port):
                raise AddressError(f"to={self.to} is lower than port {self.port}", field="to")

    @property
    def family(self) -> int:
        if self.ipv4 and not self.ipv6:
            return socket.AF_INET
        if self.ipv6 and not self.ipv4:
            return socket.AF_INET6
        return socket.AF_UNSPEC


@dataclasses.dataclass(frozen=True)
class UnixAddress:
    #: Filesystem path, or the name of an abstract socket; ``""`` when listening
    #: means "make a fresh path in $TMPDIR".
    path: str
    abstract: bool = False
    #: Abstract names only: bind with the exact length (``True``) or padded.
    tight: bool = True

    def __post_init__(self) -> None:
        limit = UNIX_PATH_MAX - 1
        if len(self.path.encode()) > limit:
            kind = "abstract name" if self.abstract else "path"
            raise AddressError(
                f"UNIX socket {kind} {self.path!r} is too long "
                f"({len(self.path.encode())} bytes, at most {limit})"
            )

    def sockaddr(self) -> str | bytes:
        """The address as :mod:`socket` takes it."""
        if not self.abstract:
            return self.path
        name = b"\0" + self.path.encode()
        return name if self.tight else name.ljust(UNIX_PATH_MAX, b"\0")


@dataclasses.dataclass(frozen=True)
class VsockAddress:
    cid: int
    port: int

    def __post_init__(self) -> None:
        for field, value in (("cid", self.cid), ("port", self.port)):
            if not 0 <= value <= 0xFFFFFFFF:
                raise AddressError(f"vsock {field} {value} is out of range", field=field)


@dataclasses.dataclass(frozen=True)
class FdAddress:
    fd: int

    def __post_init__(self) -> None:
        if self.fd < 0:
            raise AddressError(f"invalid fd {self.fd}", field="fd")


Address = InetAddress | UnixAddress | VsockAddress | FdAddress


def _bool(key: str, value: str | None) -> bool:
    if value is None or value in ("on", "yes", "true"):
        return True
    if value in ("off", "no", "false"):
        return False
    raise AddressError(f"{key}={value!r} is not a boolean (on/off)", field=key)


def _int(what: str, text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise AddressError(f"invalid {what} {text!r}") from None


def _options(text: str) -> dict[str, str | None]:
    opts: dict[str, str | None] = {}
    for item in text.split(",") if text else ():
        key, sep, value = item.partition("=")
        if not key:
            raise AddressError(f"empty option in {text!r}")
        opts[key] = value if sep else None
    return opts


def parse_address(text: str) -> Address:
    """Parse a QEMU-style socket address string (see module docstring)."""
    if text.startswith("unix:"):
        path, _, rest = text[5:].partition(",")
        opts = _options(rest)
        abstract = _bool("abstract", opts.pop("abstract", "off"))
        tight = _bool("tight", opts.pop("tight", "on"))
        if opts:
            raise AddressError(f"unknown unix address option {next(iter(opts))!r}")
        return UnixAddress(path, abstract=abstract, tight=tight)
    if text.startswith("vsock:"):
        cid, sep, port = text[6:].partition(":")
        if not sep:
            raise AddressError(f"vsock address {text!r} needs the form vsock:CID:PORT")
        return VsockAddress(_int("vsock cid", cid), _int("vsock port", port))
    if text.startswith("fd:"):
        return FdAddress(_int("fd", text[3:]))
    return _parse_inet(text)


def _parse_inet(text: str) -> InetAddress:
    hostport, _, rest = text.partition(",")
    if hostport.startswith("["):
        host, sep, tail = hostport[1:].partition("]")
        if not sep or not tail.startswith(":"):
            raise AddressError(f"invalid IPv6 address {text!r}: expected [host]:port")
        port = tail[1:]
        implied_v6 = True
    else:
        host, sep, port = hostport.rpartition(":")
        if not sep:
            raise AddressError(f"address {text!r} has no ':port' (did you mean unix:{text}?)")
        if ":" in host:
            raise AddressError(f"IPv6 address {host!r} must be written in brackets: [{host}]")
        implied_v6 = False
    opts = _options(rest)
    to = opts.pop("to", None)
    ipv4 = opts.pop("ipv4", "") if "ipv4" in opts else ""
    ipv6 = opts.pop("ipv6", "") if "ipv6" in opts else ""
    numeric = opts.pop("numeric", "") if "numeric" in opts else ""
    keep_alive = opts.pop("keep-alive", "") if "keep-alive" in opts else ""
    if opts:
        raise AddressError(f"unknown inet address option {next(iter(opts))!r} in {text!r}")
    v6: bool | None = _bool("ipv6", ipv6) if ipv6 != "" else (True if implied_v6 else None)
    return InetAddress(
        host,
        port,
        numeric=_bool("numeric", numeric) if numeric != "" else False,
        to=_int("to", to) if to is not None else None,
        ipv4=_bool("ipv4", ipv4) if ipv4 != "" else None,
        ipv6=v6,
        keep_alive=_bool("keep-alive", keep_alive) if keep_alive != "" else None,
    )


def format_address(addr: Address) -> str:
    """The string :func:`parse_address` reads back as *addr* (options aside)."""
    if isinstance(addr, InetAddress):
        host = f"[{addr.host}]" if ":" in addr.host else addr.host
        return f"{host}:{addr.port}"
    if isinstance(addr, UnixAddress):
        return f"unix:{addr.path}" + (",abstract=on" if addr.abstract else "")
    if isinstance(addr, VsockAddress):
        return f"vsock:{addr.cid}:{addr.port}"
    return f"fd:{addr.fd}"


def resolve(addr: Address, *, passive: bool = True) -> list[Address]:
    """Expand *addr* to numeric addresses, one per ``getaddrinfo`` result.

    Blocks on DNS; inet addresses with an empty host mean every local address
    when *passive* (listening).  Raises :class:`AddressError` when the name does
    not resolve.
    """
    if not isinstance(addr, InetAddress):
        return [addr]
    flags = socket.AI_PASSIVE if passive else 0
    if addr.numeric:
        flags |= socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    host = addr.host or None
    try:
        infos = socket.getaddrinfo(
            host, addr.port or "0", addr.family, socket.SOCK_STREAM, 0, flags
        )
    except socket.gaierror as exc:
        raise AddressError(f"address resolution failed for {addr.host}:{addr.port}: {exc}") from exc
    out: list[Address] = []
    for family, _type, _proto, _name, sockaddr in infos:
        ip, port = str(sockaddr[0]), int(sockaddr[1])
        resolved = dataclasses.replace(
            addr,
            host=ip,
            port=str(port),
            numeric=True,
            ipv4=family == socket.AF_INET or None,
            ipv6=family == socket.AF_INET6 or None,
        )
        if resolved not in out:
            out.append(resolved)
    return out


def from_sockaddr(family: int, sockaddr: object) -> Address:
    """A typed address from what :meth:`socket.socket.getsockname` returns."""
    if family in (socket.AF_INET, socket.AF_INET6):
        assert isinstance(sockaddr, tuple)
        return InetAddress(
            str(sockaddr[0]),
            str(sockaddr[1]),
            numeric=True,
            ipv4=family == socket.AF_INET or None,
            ipv6=family == socket.AF_INET6 or None,
        )
    if family == socket.AF_UNIX:
        if isinstance(sockaddr, bytes) and sockaddr.startswith(b"\0"):
            name = sockaddr[1:]
            tight = len(sockaddr) < UNIX_PATH_MAX
            return UnixAddress(name.rstrip(b"\0").decode(errors="replace"), True, tight)
        path = sockaddr.decode(errors="replace") if isinstance(sockaddr, bytes) else str(sockaddr)
        return UnixAddress(path)
    if family == getattr(socket, "AF_VSOCK", -1):
        assert isinstance(sockaddr, tuple)
        return VsockAddress(int(sockaddr[0]), int(sockaddr[1]))
    raise AddressError(f"unsupported address family {family}")
