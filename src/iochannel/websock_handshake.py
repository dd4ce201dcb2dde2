"""The WebSocket opening handshake (RFC 6455 §4), sans-I/O and strict.

Server side, :func:`server_response` takes a complete request head (up to and
including the blank line) and returns the ``101 Switching Protocols`` answer, or
raises :class:`HandshakeError` whose ``response`` is a complete HTTP error
answer to send before giving up:

==========  ===============================================================
status      cause
==========  ===============================================================
400         malformed request line or header, method not GET, version not
            HTTP/1.1, too many or repeated headers, Host / Upgrade /
            Connection / Sec-WebSocket-Key / Sec-WebSocket-Version missing
            or wrong, a Sec-WebSocket-Protocol offer without ``binary``
403         an Origin outside the configured allow-list
404         a path other than the configured one
426         a Sec-WebSocket-Version other than 13
431         no end of the head within :data:`MAX_HEAD` bytes
==========  ===============================================================

Header names are case-insensitive; Upgrade, Connection and
Sec-WebSocket-Protocol are comma-separated token lists compared without case.

Client side, :func:`client_request` builds the request and
:func:`check_response` validates the server's answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Collection

from .errors import ChannelError

__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
    "HandshakeError",
    "accept_key",
    "check_response",
    "client_request",
    "end_of_head",
    "parse_head",
    "server_response",
]

#: Longest request or response head accepted, blank line included.
MAX_HEAD = 8192
#: Most header fields accepted in one head.
MAX_HEADERS = 32
#: The only sub-protocol spoken: a byte stream in binary frames.
PROTOCOL = "binary"

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REASONS = {
    101: "Switching Protocols",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
}

Headers = dict[str, list[str]]


class HandshakeError(ChannelError):
    """The opening handshake failed.

    ``status`` is the HTTP status answered (``None`` when nothing was sent) and
    ``response`` the bytes of that answer.
    """

    def __init__(self, message: str, status: int | None = None, response: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.response = response


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value answering *key*."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def end_of_head(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line ending a head, or -1; searching from *start*."""
    i = buf.find(b"\r\n\r\n", max(0, start - 3))
    return -1 if i < 0 else i + 4


def _http_error(status: int, reason: str) -> HandshakeError:
    body = f"{reason}\n".encode()
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Connection: close",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
    ]
    if status in (400, 426):
        lines.append("Sec-WebSocket-Version: 13")
    response = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body
    return HandshakeError(f"WebSocket handshake failed ({status}): {reason}", status, response)


def too_large() -> HandshakeError:
    """The error for a head without an end within :data:`MAX_HEAD` bytes."""
    return _http_error(431, f"end of the request head not found within {MAX_HEAD} bytes")


def parse_head(head: bytes) -> tuple[str, Headers]:
    """Split a head into its start line and headers (names lower-cased).

    Raises ``ValueError`` naming what is malformed.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("non-ASCII byte in the head") from None
    lines = text.split("\r\n")
    if len(lines) < 3 or lines[-1] or lines[-2]:
        raise ValueError("head does not end with an empty line")
    lines = lines[:-2]
    start, fields = lines[0], lines[1:]
    if len(fields) > MAX_HEADERS:
        raise ValueError(f"more than {MAX_HEADERS} header fields")
    headers: Headers = {}
    for line in fields:
        if "\r" in line or "\n" in line:
            raise ValueError("bare CR or LF in a header field")
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"malformed header field {line[:40]!r}: no ':'")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"malformed header field name {name[:40]!r}")
        value = value.strip(" \t")
        if any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in value):
            raise ValueError(f"control character in header field {name!r}")
        headers.setdefault(name.lower(), []).append(value)
    return start, headers


def parse_request_head(head: bytes) -> tuple[str, str, str, Headers]:
    """:func:`parse_head` for a request: ``(method, target, version, headers)``.

    Raises ``ValueError`` naming what is malformed.
    """
    start, headers = parse_head(head)
    parts = start.split(" ")
    if len(parts) != 3:
        raise ValueError(f"malformed request line {start[:60]!r}")
    method, target, version = parts
    return method, target, version, headers


def _tokens(headers: Headers, name: str) -> list[str]:
    return [t.strip().lower() for v in headers.get(name, ()) for t in v.split(",") if t.strip()]


def _single(headers: Headers, name: str, display: str) -> str:
    values = headers.get(name)
    if not values:
        raise _http_error(400, f"missing {display} header")
    if len(values) > 1:
        raise _http_error(400, f"repeated {display} header")
    return values[0]


def server_response(
    head: bytes, *, path: str = "/", origins: Collection[str] | None = None
) -> tuple[bytes, str | None]:
    """Validate a request head; return the 101 answer and the negotiated sub-protocol.

    Raises :class:`HandshakeError` carrying the error answer (see the module doc).
    """
    try:
        method, target, version, headers = parse_request_head(head)
    except ValueError as exc:
        raise _http_error(400, str(exc)) from None
    if method != "GET":
        raise _http_error(400, f"method must be GET, not {method[:20]!r}")
    if version != "HTTP/1.1":
        raise _http_error(400, f"HTTP version must be HTTP/1.1, not {version[:20]!r}")
    _single(headers, "host", "Host")
    if "websocket" not in _tokens(headers, "upgrade"):
        raise _http_error(400, "Upgrade header must name 'websocket'")
    if "upgrade" not in _tokens(headers, "connection"):
        raise _http_error(400, "Connection header must include 'Upgrade'")
    ws_version = _single(headers, "sec-websocket-version", "Sec-WebSocket-Version")
    if ws_version != "13":
        raise _http_error(426, f"Sec-WebSocket-Version must be 13, not {ws_version[:20]!r}")
    key = _single(headers, "sec-websocket-key", "Sec-WebSocket-Key")
    try:
        raw = base64.b64decode(key, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 16:
        raise _http_error(400, "Sec-WebSocket-Key must be 16 bytes in base64 (24 characters)")
    if target.partition("?")[0] != path:
        raise _http_error(404, f"no WebSocket service at {target[:60]!r}")
    if origins is not None:
        origin = headers.get("origin", [""])[0]
        if origin not in origins:
            raise _http_error(403, f"origin {origin[:60]!r} is not allowed")
    protocol = None
    if "sec-websocket-protocol" in headers:
        if PROTOCOL not in _tokens(headers, "sec-websocket-protocol"):
            raise _http_error(400, "Sec-WebSocket-Protocol must offer 'binary'")
        protocol = PROTOCOL
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept_key(key)}",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii"), protocol


def client_request(key: str, *, host: str, path: str = "/", origin: str | None = None) -> bytes:
    """The opening request offering the ``binary`` sub-protocol."""
    for field in (host, path, origin or ""):
        if any(ord(c) < 0x21 or ord(c) > 0x7E for c in field):
            raise ValueError(f"invalid character in WebSocket request field {field!r}")
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {PROTOCOL}",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def check_response(head: bytes, key: str) -> str | None:
    """Validate the server's answer to *key*; return the sub-protocol it chose.

    Raises :class:`HandshakeError` (``status`` is ``None``: nothing is answered).
    """
    try:
        start, headers = parse_head(head)
    except ValueError as exc:
        raise HandshakeError(f"malformed WebSocket handshake response: {exc}") from None
    parts = start.split(" ", 2)
    if len(parts) < 2 or parts[0] != "HTTP/1.1" or parts[1] != "101":
        raise HandshakeError(f"server refused the WebSocket upgrade: {start[:80]!r}")
    if "websocket" not in _tokens(headers, "upgrade"):
        raise HandshakeError("WebSocket handshake response lacks 'Upgrade: websocket'")
    if "upgrade" not in _tokens(headers, "connection"):
        raise HandshakeError("WebSocket handshake response lacks 'Connection: Upgrade'")
    accept = headers.get("sec-websocket-accept", [""])
    if accept != [accept_key(key)]:
        raise HandshakeError("WebSocket handshake response has a wrong Sec-WebSocket-Accept")
    if headers.get("sec-websocket-extensions"):
        raise HandshakeError("server accepted a WebSocket extension that was not offered")
    protocols = _tokens(headers, "sec-websocket-protocol")
    if protocols and protocols != [PROTOCOL]:
        raise HandshakeError(f"server chose an unoffered sub-protocol {protocols!r}")
    return PROTOCOL if protocols else None
