"""The HTTP/1.1 the web console speaks, sans-I/O and strict.

:func:`parse_request` takes a complete request head (up to and including the
blank line, at most :data:`MAX_HEAD` bytes — the WebSocket handshake's bound,
since both read the same head) and returns a :class:`Request`, or raises
:class:`HttpError` carrying the status to answer:

==========  ===============================================================
status      cause
==========  ===============================================================
400         malformed request line or header field, a version other than
            HTTP/1.1, a missing or repeated ``Host``, a target that is not
            an absolute path, a bad percent-escape, a ``.`` or ``..`` path
            segment (also escaped), a NUL or backslash in the path, a
            malformed or repeated query parameter
405         a well-formed method other than GET and HEAD (the answer
            carries ``Allow: GET, HEAD``)
431         more than :data:`MAX_HEADERS` header fields, or no end of the
            head within :data:`MAX_HEAD` bytes (:func:`too_large`)
==========  ===============================================================

404 and 403 are the router's answers (:mod:`iochannel.web.console`).
:func:`response` builds every answer: ``Content-Length``, ``Connection:
close`` (one request per connection keeps the server trivial), no caching,
no MIME sniffing and no ``Referer`` — the page's URL carries a token.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping, Sequence

from ..websock_handshake import MAX_HEAD, MAX_HEADERS, parse_request_head

__all__ = ["MAX_HEAD", "HttpError", "Request", "parse_request", "response", "too_large"]

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}
METHODS = ("GET", "HEAD")
# More query parameters than this is not a browser talking to us.
_MAX_PARAMS = 8
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_PATH_CHARS = frozenset("\x00\\")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class HttpError(Exception):
    """A request the server refuses; ``status`` is the answer's status."""

    def __init__(self, status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason
        self.headers = tuple(headers)

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


def too_large() -> HttpError:
    """The error for a head without an end within :data:`MAX_HEAD` bytes."""
    return HttpError(431, f"end of the request head not found within {MAX_HEAD} bytes")


def parse_request(head: bytes) -> Request:
    """Validate a request head; raises :class:`HttpError` (see the module doc)."""
    if len(head) > MAX_HEAD:
        raise too_large()
    # The request line and the blank line end in CRLF too.
    if head.count(b"\r\n") - 2 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    try:
        method, target, version, headers = parse_request_head(head)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    if not _TOKEN.fullmatch(method):
        raise HttpError(400, f"malformed method {method[:20]!r}")
    if version != "HTTP/1.1":
        raise HttpError(400, f"HTTP version must be HTTP/1.1, not {version[:20]!r}")
    if method not in METHODS:
        raise HttpError(405, f"method {method[:20]!r} is not allowed", [("Allow", "GET, HEAD")])
    if len(headers.get("host", ())) != 1:
        raise HttpError(400, "exactly one Host header is required")
    raw_path, _, raw_query = target.partition("?")
    return Request(method, _path(raw_path), _query(raw_query), headers)


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
        *(f"{name}: {value}" for name, value in headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body
