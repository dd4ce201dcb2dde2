"""Random input never crashes the WebSocket handshake parser or the frame decoder."""

from __future__ import annotations

import socket

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side

from iochannel import SocketChannel
from iochannel._layers.websock import HandshakeError, WebsockChannel, WebsockError
from iochannel._layers.websock_handshake import check_response, server_response

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


def _reference(wire: bytes, max_message: int) -> tuple[bytes, int | None]:
    """What the ``websockets`` protocol alone makes of *wire*: data, and the failure code."""
    proto = Protocol(Side.SERVER, max_size=max_message)
    proto.receive_data(wire)
    kinds = (Opcode.CONT, Opcode.TEXT, Opcode.BINARY)
    data = b"".join(f.data for f in proto.events_received() if f.opcode in kinds)
    if proto.parser_exc is not None:
        assert proto.close_sent is not None
        return data, proto.close_sent.code
    close = proto.close_rcvd
    if close is not None and close.code not in (1000, 1001, 1005):
        return data, close.code  # the layer reports a peer's error status too
    return data, None


# Mostly well-formed traffic, so that runs of data frames take the fast path.
stream_frames = st.lists(
    st.builds(
        lambda op, payload, fin, masked: frame(op, payload, fin=fin, mask=MASK if masked else None),
        st.sampled_from([0, 0, 1, 2, 2, 2, 8, 9, 10]),
        st.binary(max_size=300),
        st.booleans(),
        st.sampled_from([True] * 9 + [False]),
    ),
    max_size=8,
)


@settings(_settings, max_examples=500)
@given(
    st.one_of(frames, stream_frames),
    st.lists(st.integers(1, 64), max_size=12),
    st.sampled_from([1, 100, 1 << 20]),
)
# A message starting inside a fragmented one; a split mask; a frame over the limit.
@example([frame(2, b"a", fin=False), frame(2, b"b")], [], 1 << 20)
@example([frame(2, b"0123456789"), frame(9, b"p"), frame(2, b"x" * 150)], [3, 4, 9], 100)
def test_frames_split_anywhere_read_as_the_protocol_alone_reads_them(
    wire: list[bytes], cuts: list[int], max_message: int
) -> None:
    """The layer's own frame splitting (fast path for whole data messages) agrees with
    ``websockets`` fed everything at once: the same bytes, then the same close code."""
    data = b"".join(wire)
    expected, code = _reference(data, max_message)
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(data[pos:])
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a), max_message=max_message)
    got = bytearray()
    try:
        b.sendall(request())
        server.handshake()
        recv_head(b)
        server.set_blocking(False)
        failed = None
        try:
            for piece in pieces:
                b.sendall(piece)
                while chunk := server.read(1 << 16):
                    got += chunk
        except WebsockError as exc:
            failed = exc.code
        # Close frames read as EOF (b""); anything after them is discarded by both.
        assert bytes(got) == expected
        assert failed == code
    finally:
        server.close()
        b.close()
