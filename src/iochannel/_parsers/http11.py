"""One HTTP/1.1 request head, read with h11 (sans-I/O).

The web console and the WebSocket server both start by reading a request
head.  :class:`RequestReader` feeds the bytes received to an
:class:`h11.Connection`, so the head ends where h11 says it does, and keeps
every byte: the head, and what followed it (a WebSocket client's first
frames).  h11 checks the grammar (request line, header fields, exactly one
``Host``); the reader adds the limits of a server that only speaks to
browsers and WebSocket clients:

==========  ===============================================================
status      cause
==========  ===============================================================
400         anything h11 refuses, a non-ASCII or control byte in the
            head, a version other than HTTP/1.1
431         more than :data:`MAX_HEADERS` header fields, or no end of the
            head within :data:`MAX_HEAD` bytes
==========  ===============================================================

Errors are :class:`h11.RemoteProtocolError`; its ``error_status_hint`` is the
status to answer.
"""

from __future__ import annotations

import re

import h11

from .._core.channel import Buffer

__all__ = ["MAX_HEAD", "MAX_HEADERS", "RequestReader", "read_request"]

#: Longest request (or WebSocket handshake response) head accepted, blank
#: line included: half h11's default.
MAX_HEAD = 8192
#: Most header fields accepted in one head; a browser sends about fifteen.
MAX_HEADERS = 32

_BAD_BYTE = re.compile(rb"[^\t\r\n\x20-\x7e]")


class RequestReader:
    """Reads one request head from the bytes given to :meth:`receive_data`."""

    __slots__ = ("_conn", "data", "head_size")

    def __init__(self) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        #: Every byte received so far.
        self.data = bytearray()
        #: The length of the head within :attr:`data`, once complete.
        self.head_size = 0

    def room(self) -> int:
        """The most bytes worth reading next: one past the limit proves it exceeded."""
        return MAX_HEAD + 1 - len(self.data)

    @property
    def rest(self) -> bytes:
        """The bytes received after the head."""
        return bytes(self.data[self.head_size :])

    def receive_data(self, data: Buffer) -> h11.Request | None:
        """Take received bytes; return the request once its head is complete.

        Raises :class:`h11.RemoteProtocolError` (see the module doc).
        """
        self.data += data
        self._conn.receive_data(bytes(data))
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise _too_large() from None
            self._check_size()  # a flood is answered 431, whatever else is wrong
            raise
        if event is h11.NEED_DATA:
            return None
        assert isinstance(event, h11.Request), event  # the first event of a server
        self._check_size()
        # h11 lets control characters and obs-text through; nobody we serve sends them.
        bad = _BAD_BYTE.search(self.data, 0, self.head_size)
        if bad:
            raise h11.RemoteProtocolError(
                f"non-ASCII or control byte {bad[0]!r} in the request head", 400
            )
        if event.http_version != b"1.1":
            version = event.http_version.decode()
            raise h11.RemoteProtocolError(
                f"HTTP version must be HTTP/1.1, not 'HTTP/{version}'", 400
            )
        return event

    def _check_size(self) -> None:
        """Bound the head h11 consumed (given whole, it may exceed h11's limit)."""
        self.head_size = len(self.data) - len(self._conn.trailing_data[0])
        if self.head_size > MAX_HEAD:
            raise _too_large()
        # The request line and the blank line end in a newline too.
        if self.data.count(b"\n", 0, self.head_size) - 2 > MAX_HEADERS:
            raise h11.RemoteProtocolError(f"more than {MAX_HEADERS} header fields", 431)


def read_request(head: bytes) -> h11.Request:
    """Parse *head*, one complete request head and nothing after it.

    Raises :class:`h11.RemoteProtocolError` (see the module doc).
    """
    reader = RequestReader()
    request = reader.receive_data(head)
    if request is None or reader.rest:
        raise h11.RemoteProtocolError("the request head must end with one empty line", 400)
    return request


def _too_large() -> h11.RemoteProtocolError:
    return h11.RemoteProtocolError(
        f"end of the request head not found within {MAX_HEAD} bytes", 431
    )
