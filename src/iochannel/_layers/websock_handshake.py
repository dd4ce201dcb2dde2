"""The WebSocket opening handshake (RFC 6455 §4), sans-I/O.

h11 reads the HTTP; the ``websockets`` protocol objects check the WebSocket
part.  Both sides are driven the same way: give received bytes to
``receive_data`` until it returns ``True``, send ``data_to_send()``, and hand
``rest`` (the bytes after the head) to the frame decoder.

Server side, :class:`ServerHandshake` reads the request with
:class:`~iochannel._parsers.http11.RequestReader` (size caps, HTTP/1.1 grammar), checks
the method and path, then lets
:meth:`websockets.server.ServerProtocol.accept` check Upgrade, Connection,
Sec-WebSocket-Key and -Version and the Origin allow-list and build the
``101 Switching Protocols`` answer.  A refusal raises
:class:`HandshakeError` whose ``response`` is a complete HTTP answer to send
before giving up:

==========  ===============================================================
status      cause
==========  ===============================================================
400         malformed request line or header field, a non-ASCII or
            control byte, method not GET, version not HTTP/1.1, Host / Upgrade /
            Connection / Sec-WebSocket-Key / Sec-WebSocket-Version missing,
            repeated or wrong, a Sec-WebSocket-Protocol offer without
            ``binary``
403         an Origin outside the configured allow-list
404         a path other than the configured one
426         a Sec-WebSocket-Version other than 13
431         more than :data:`MAX_HEADERS` header fields, or no end of the
            head within :data:`MAX_HEAD` bytes
==========  ===============================================================

400 and 426 answers carry ``Sec-WebSocket-Version: 13`` (RFC 6455 §4.4).  The
``binary`` sub-protocol is matched without case; a request that offers none
gets none (noVNC).

Client side, :class:`ClientHandshake` builds the request with
:meth:`websockets.client.ClientProtocol.connect`, sends it through h11, reads
the answer with h11 and checks it with
:meth:`~websockets.client.ClientProtocol.process_response`; a refusal raises
:class:`HandshakeError` with nothing to answer.

:func:`server_response`, :func:`client_request` and :func:`check_response`
run one side over a complete head.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import h11
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import (
    InvalidHandshake,
    InvalidHeader,
    InvalidHeaderValue,
    InvalidOrigin,
    NegotiationError,
)
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri
from websockets.utils import accept_key

from .._core.channel import Buffer
from .._parsers.http11 import MAX_HEAD, MAX_HEADERS, RequestReader
from ..errors import ConfigurationError, RemoteProtocolError

__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
    "PROTOCOL",
    "ClientHandshake",
    "HandshakeError",
    "ServerHandshake",
    "accept_key",
    "check_response",
    "client_request",
    "server_response",
]

#: The only sub-protocol spoken: a byte stream in binary frames.
PROTOCOL = "binary"

# What to fix, for the request headers ``websockets`` refuses.
_HINTS = {
    "Upgrade": "the Upgrade header must name 'websocket'",
    "Connection": "the Connection header must include 'Upgrade'",
    "Sec-WebSocket-Key": "Sec-WebSocket-Key must be 16 bytes in base64 (24 characters)",
    "Sec-WebSocket-Version": "Sec-WebSocket-Version must be 13",
}


class HandshakeError(RemoteProtocolError):
    """The peer's side of the opening handshake is not acceptable.

    ``status`` (also ``reply``) is the HTTP status answered (``None`` when
    nothing was sent) and ``response`` the bytes of that answer.
    """

    def __init__(self, message: str, status: int | None = None, response: bytes = b"") -> None:
        super().__init__(message, reply=status)
        self.status = status
        self.response = response


def _check_path(path: str) -> None:
    if not path.startswith("/"):
        raise ConfigurationError(
            f"a WebSocket path must start with '/', not {path!r}", field="path"
        )


def _select_binary(_ws: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    if not offered:
        return None
    if any(p.lower() == PROTOCOL for p in offered):
        return Subprotocol(PROTOCOL)
    raise NegotiationError("Sec-WebSocket-Protocol must offer 'binary'")


def _headers(fields: Iterable[tuple[bytes, bytes]]) -> Headers:
    """h11's header *fields* as ``websockets`` takes them (h11 checked their syntax)."""
    headers = Headers()
    for name, value in fields:
        headers[name.decode()] = value.decode("iso-8859-1")  # as websockets decodes
    return headers


def _refusal_of(exc: Exception) -> tuple[int, str]:
    """The status and reason answering a request ``websockets`` refused."""
    if isinstance(exc, InvalidOrigin):
        return 403, f"origin {(exc.value or '')[:60]!r} is not allowed"
    if isinstance(exc, InvalidHeader):
        hint = _HINTS.get(exc.name)
        reason = f"{exc}; {hint}" if hint else str(exc)
        # RFC 6455 §4.2.2: a version we do not speak is answered with 426.
        if isinstance(exc, InvalidHeaderValue) and exc.name == "Sec-WebSocket-Version":
            return 426, reason
        return 400, reason
    return 400, str(exc)  # a NegotiationError names the offer


class ServerHandshake:
    """The server side: answers a GET for *path*, from *origins* if given.

    Raises ``ValueError`` for a *path* that does not start with ``/``.
    """

    __slots__ = ("_answer", "_path", "_reader", "_ws", "protocol")

    def __init__(self, *, path: str = "/", origins: Collection[str] | None = None) -> None:
        _check_path(path)
        self._path = path
        self._ws = ServerProtocol(
            origins=None if origins is None else [Origin(o) for o in origins],
            subprotocols=[Subprotocol(PROTOCOL)],
            select_subprotocol=_select_binary,
        )
        self._reader = RequestReader()
        self._answer = b""
        #: The negotiated sub-protocol (``"binary"``) or ``None``.
        self.protocol: str | None = None

    @property
    def received(self) -> int:
        """The bytes received so far."""
        return len(self._reader.data)

    @property
    def rest(self) -> bytes:
        """The bytes received after the head: the first frames."""
        return self._reader.rest

    def room(self) -> int:
        """The most bytes worth reading next."""
        return self._reader.room()

    def data_to_send(self) -> bytes:
        """The ``101`` answer, once :meth:`receive_data` returned ``True``."""
        answer, self._answer = self._answer, b""
        return answer

    def refusal(self, status: int, reason: str) -> HandshakeError:
        """The error answering the request with *status*."""
        body = f"{reason}\n"
        response = self._ws.reject(status, body)
        if status in (400, 426):
            response.headers["Sec-WebSocket-Version"] = "13"
        return HandshakeError(
            f"WebSocket handshake failed ({status}): {reason}", status, response.serialize()
        )

    def receive_data(self, data: Buffer) -> bool:
        """Take received bytes; ``True`` once the request is accepted.

        Raises :class:`HandshakeError` carrying the answer (see the module doc).
        """
        try:
            request = self._reader.receive_data(data)
        except h11.RemoteProtocolError as exc:
            raise self.refusal(exc.error_status_hint, str(exc)) from None
        if request is None:
            return False
        method = request.method.decode()
        if method != "GET":
            raise self.refusal(400, f"method must be GET, not {method[:20]!r}")
        target = request.target.decode()
        if target.partition("?")[0] != self._path:
            raise self.refusal(404, f"no WebSocket service at {target[:60]!r}")
        response = self._ws.accept(Request(target, _headers(request.headers.raw_items())))
        if self._ws.handshake_exc is not None:
            raise self.refusal(*_refusal_of(self._ws.handshake_exc))
        self.protocol = self._ws.subprotocol
        self._answer = response.serialize()
        return True


class ClientHandshake:
    """The client side: requests *path* on *host*, offering the ``binary`` sub-protocol.

    *key* replaces the random ``Sec-WebSocket-Key`` (tests).  Raises
    ``ValueError`` for a *host*, *path* or *origin* that cannot go in a request.
    """

    __slots__ = ("_http", "_request", "_ws", "protocol", "received", "rest")

    def __init__(
        self, *, host: str, path: str = "/", origin: str | None = None, key: str | None = None
    ) -> None:
        _check_path(path)
        for name, field in (("host", host), ("path", path), ("origin", origin or "")):
            if any(ord(c) < 0x21 or ord(c) > 0x7E for c in field):
                raise ConfigurationError(
                    f"invalid character in WebSocket request field {name} {field!r}", field=name
                )
        self._ws = ClientProtocol(
            parse_uri(f"ws://{host}{path}"),
            origin=None if origin is None else Origin(origin),
            subprotocols=[Subprotocol(PROTOCOL)],
        )
        if key is not None:
            self._ws.key = key
        request = self._ws.connect()
        headers = list(request.headers.raw_items())
        self._http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        sent = self._http.send(h11.Request(method="GET", target=request.path, headers=headers))
        self._request = sent or b""
        # The request is complete: h11 then reads a 101 as the switch it proposed.
        self._http.send(h11.EndOfMessage())
        #: The negotiated sub-protocol (``"binary"``) or ``None``.
        self.protocol: str | None = None
        #: The bytes received so far.
        self.received = 0
        #: The bytes received after the answer's head: the first frames.
        self.rest = b""

    def room(self) -> int:
        """The most bytes worth reading next: one past the limit proves it exceeded."""
        return MAX_HEAD + 1 - self.received

    def data_to_send(self) -> bytes:
        """The request, the first time."""
        request, self._request = self._request, b""
        return request

    def receive_data(self, data: Buffer) -> bool:
        """Take received bytes; ``True`` once the server accepted the upgrade.

        Raises :class:`HandshakeError` naming what the answer got wrong.
        """
        data = bytes(data)
        self.received += len(data)
        self._http.receive_data(data)
        try:
            event = self._http.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise HandshakeError(
                    f"end of the WebSocket handshake response not found within {MAX_HEAD} bytes"
                ) from None
            raise HandshakeError(f"malformed WebSocket handshake response: {exc}") from None
        if event is h11.NEED_DATA:
            return False
        assert isinstance(event, (h11.InformationalResponse, h11.Response)), event
        reason = event.reason.decode("iso-8859-1")
        if event.status_code != 101:
            start = f"HTTP/{event.http_version.decode()} {event.status_code} {reason}"
            raise HandshakeError(f"server refused the WebSocket upgrade: {start[:80]!r}")
        try:
            response = Response(101, reason, _headers(event.headers.raw_items()))
            self._ws.process_response(response)
        except InvalidHandshake as exc:
            raise HandshakeError(f"WebSocket handshake response refused: {exc}") from None
        self.protocol = self._ws.subprotocol
        self.rest = self._http.trailing_data[0]
        return True


def server_response(
    head: bytes, *, path: str = "/", origins: Collection[str] | None = None
) -> tuple[bytes, str | None]:
    """Check one complete request head; return the 101 answer and the sub-protocol.

    Raises :class:`HandshakeError` carrying the error answer (see the module doc).
    """
    handshake = ServerHandshake(path=path, origins=origins)
    if not handshake.receive_data(head) or handshake.rest:
        raise handshake.refusal(400, "the request head must end with one empty line")
    return handshake.data_to_send(), handshake.protocol


def client_request(key: str, *, host: str, path: str = "/", origin: str | None = None) -> bytes:
    """The opening request for *key*, offering the ``binary`` sub-protocol."""
    return ClientHandshake(host=host, path=path, origin=origin, key=key).data_to_send()


def check_response(head: bytes, key: str) -> str | None:
    """Check the server's complete answer to *key*; return the sub-protocol it chose.

    Raises :class:`HandshakeError` (``status`` is ``None``: nothing is answered).
    """
    handshake = ClientHandshake(host="localhost", key=key)
    if not handshake.receive_data(head) or handshake.rest:
        raise HandshakeError("the WebSocket handshake response must end with one empty line")
    return handshake.protocol
