"""The HTTP/1.1 the web console speaks, sans-I/O and strict.

The request head is read with h11 (:mod:`iochannel._parsers.http11`, shared with the
WebSocket server, at most :data:`MAX_HEAD` bytes); :func:`check_request` turns
it into a :class:`Request`, or raises :class:`HttpError` carrying the status
to answer (:func:`parse_request` does both for a complete head):

==========  ===============================================================
status      cause
==========  ===============================================================
400         malformed request line or header field, a non-ASCII or
            control byte, a version other than HTTP/1.1, a missing or
            repeated ``Host``, a target that is not an absolute path, a bad
            percent-escape, a ``.`` or ``..`` path segment (also escaped), a
            NUL or backslash in the path, a malformed or repeated query
            parameter
405         a method other than GET and HEAD (the answer carries ``Allow:
            GET, HEAD``)
431         more than :data:`MAX_HEADERS` header fields, or no end of the
            head within :data:`MAX_HEAD` bytes
==========  ===============================================================

404 and 403 are the router's answers (:mod:`iochannel.web.console`).
:func:`response` builds every answer: ``Content-Length``, ``Connection:
close`` (one request per connection keeps the server trivial), no caching,
no MIME sniffing, no ``Referer`` — the page's URL carries a token — and
:data:`CSP` with ``X-Frame-Options: DENY``: the page runs only its own
scripts, talks only to its own server and is never framed by another site.

:func:`check_origin` is the WebSocket's cross-site check: a request whose
``Origin`` is neither the server's own (the scheme it serves and the request's
``Host``) nor in an allow-list (:func:`parse_origin` normalises both) gets
403; a request without ``Origin`` (not a browser) passes.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Collection, Mapping, Sequence

import h11

from .._parsers.http11 import MAX_HEAD, MAX_HEADERS, read_request
from ..errors import ConfigurationError, RemoteProtocolError

__all__ = [
    "CSP",
    "MAX_HEAD",
    "MAX_HEADERS",
    "HttpError",
    "Request",
    "check_origin",
    "check_request",
    "parse_origin",
    "parse_request",
    "response",
]

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}
METHODS = ("GET", "HEAD")
#: The page's Content-Security-Policy: its own files only (xterm.js sets
#: inline styles on the elements it draws), its own WebSocket, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# More query parameters than this is not a browser talking to us.
_MAX_PARAMS = 8
_BAD_PATH_CHARS = frozenset("\x00\\")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class HttpError(RemoteProtocolError):
    """A request the server refuses; ``status`` (also ``reply``) is the answer's status."""

    def __init__(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(f"HTTP {status}: {reason}", reply=status)
        self.status = status
        self.reason = reason
        self.headers = tuple(headers)

    @classmethod
    def of(cls, exc: h11.RemoteProtocolError) -> HttpError:
        """The answer to a head h11 (or :mod:`iochannel._parsers.http11`) refused."""
        return cls(exc.error_status_hint, str(exc))

    def response(self) -> bytes:
        """The complete answer, with the reason as a plain-text body."""
        return response(self.status, f"{self.reason}\n".encode(), headers=self.headers)


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    #: The decoded absolute path, without ``.``/``..`` segments.
    path: str
    #: Query parameters, each given at most once.
    query: Mapping[str, str]
    #: Header values by lower-case name.
    headers: Mapping[str, Sequence[str]]

    def header(self, name: str) -> str | None:
        """The value of header *name* (any case); ``None`` if absent."""
        values = self.headers.get(name.lower())
        return values[0] if values else None


def parse_request(head: bytes) -> Request:
    """Check one complete request head; raises :class:`HttpError` (see the module doc)."""
    try:
        request = read_request(head)
    except h11.RemoteProtocolError as exc:
        raise HttpError.of(exc) from None
    return check_request(request)


def check_request(request: h11.Request) -> Request:
    """The console's view of a request a :class:`~iochannel._parsers.http11.RequestReader` read.

    Raises :class:`HttpError` (see the module doc).
    """
    method = request.method.decode()
    if method not in METHODS:
        raise HttpError(405, f"method {method[:20]!r} is not allowed", [("Allow", "GET, HEAD")])
    headers: dict[str, list[str]] = {}
    for name, value in request.headers:  # h11 lower-cases the names
        headers.setdefault(name.decode(), []).append(value.decode())
    raw_path, _, raw_query = request.target.decode().partition("?")
    return Request(method, _path(raw_path), _query(raw_query), headers)


def parse_origin(text: str) -> str:
    """*text* (``http[s]://HOST[:PORT]``) in a canonical form; ``ValueError`` if it is not one.

    Scheme and host are lower-cased and a default port is left out, so equal
    origins compare equal as strings.
    """
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS or not rest or "/" in rest or "@" in rest:
        raise ConfigurationError(
            f"origin {text[:80]!r} must be http://HOST[:PORT] or https://HOST[:PORT]",
            field="origin",
        )
    try:
        parts = urllib.parse.urlsplit(f"{scheme}://{rest}")
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            f"origin {text[:80]!r} has a malformed host or port", field="origin"
        ) from None
    host = parts.hostname
    if not host or parts.query or parts.fragment:
        raise ConfigurationError(
            f"origin {text[:80]!r} must be http://HOST[:PORT] or https://HOST[:PORT]",
            field="origin",
        )
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def check_origin(request: Request, scheme: str, allowed: Collection[str] = ()) -> None:
    """Raise 403 unless *request* has no ``Origin``, its own one, or one of *allowed*.

    *scheme* is what the server speaks (``http``/``https``); *allowed* holds
    origins in :func:`parse_origin`'s form.
    """
    origin = request.header("origin")
    if origin is None:
        return
    given = _canonical(origin)
    own = _canonical(f"{scheme}://{request.header('host') or ''}")
    if given is None or (given != own and given not in allowed):
        raise HttpError(
            403,
            f"origin {origin[:80]!r} is not allowed: only the console's own, "
            "or one listed in the console's allowed origins",
        )


def _canonical(origin: str) -> str | None:
    try:
        return parse_origin(origin)
    except ValueError:
        return None


def _path(raw: str) -> str:
    if not raw.startswith("/"):
        raise HttpError(400, f"request target must be an absolute path, not {raw[:60]!r}")
    if _BAD_ESCAPE.search(raw):
        raise HttpError(400, "malformed percent-escape in the path")
    try:
        path = urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, "path is not UTF-8 after percent-decoding") from None
    if _BAD_PATH_CHARS & set(path):
        raise HttpError(400, "NUL or backslash in the path")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise HttpError(400, "'.' and '..' path segments are not allowed")
    return path


def _query(raw: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(
            raw,
            keep_blank_values=True,
            strict_parsing=bool(raw),
            errors="strict",
            max_num_fields=_MAX_PARAMS,
        )
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "malformed query string") from None
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise HttpError(400, f"query parameter {key[:20]!r} is repeated")
        query[key] = value
    return query


def response(
    status: int,
    body: bytes = b"",
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: Sequence[tuple[str, str]] = (),
    head_only: bool = False,
) -> bytes:
    """A complete HTTP/1.1 answer; *head_only* (a HEAD request) leaves the body out."""
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        "Connection: close",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Referrer-Policy: no-referrer",
        f"Content-Security-Policy: {CSP}",
        "X-Frame-Options: DENY",
        *(f"{name}: {value}" for name, value in headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body
