"""Random input never crashes the WebSocket handshake parser or the frame decoder."""

from __future__ import annotations

import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iochannel import SocketChannel
from iochannel.websock import HandshakeError, WebsockChannel, WebsockError
from iochannel.websock_handshake import check_response, server_response

from .test_websock import MASK, frame, recv_head, request
from .test_websock_handshake import GOOD, parse_answer

_settings = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

header_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=40)


@_settings
@given(st.binary(max_size=600))
def test_random_heads(data: bytes) -> None:
    for head in (data + b"\r\n\r\n", b"GET / HTTP/1.1\r\n" + data + b"\r\n\r\n"):
        try:
            server_response(head)
        except HandshakeError as exc:
            assert exc.status is not None
            assert parse_answer(exc.response)[0] == exc.status
        try:
            check_response(head, "AAAAAAAAAAAAAAAAAAAAAA==")
        except HandshakeError as exc:
            assert exc.status is None


@_settings
@given(st.dictionaries(header_text, header_text, max_size=8), st.sampled_from(sorted(GOOD)))
def test_random_headers_around_a_good_request(extra: dict[str, str], drop: str) -> None:
    fields = {k: v for k, v in GOOD.items() if k != drop}
    lines = ["GET / HTTP/1.1"] + [f"{k}: {v}" for k, v in {**fields, **extra}.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    try:
        response, _ = server_response(head)
        assert response.startswith(b"HTTP/1.1 101 ")
    except HandshakeError as exc:
        assert parse_answer(exc.response)[0] == exc.status


frames = st.lists(
    st.builds(
        lambda op, payload, fin, masked: frame(op, payload, fin=fin, mask=MASK if masked else None),
        st.integers(0, 15),
        st.binary(max_size=200),
        st.booleans(),
        st.booleans(),
    ),
    max_size=6,
)


@_settings
@given(frames, st.binary(max_size=40))
def test_random_frames_end_cleanly(wire: list[bytes], tail: bytes) -> None:
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a))
    try:
        b.sendall(request())
        server.handshake()
        recv_head(b)
        b.sendall(b"".join(wire) + tail)
        b.shutdown(socket.SHUT_WR)
        try:
            while server.read(4096):
                pass
        except WebsockError as exc:
            assert 1000 <= exc.code < 5000
    finally:
        server.close()
        b.close()
