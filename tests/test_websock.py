"""WebsockChannel: QEMU's websocket exchange, the conformance suite, frames good and bad.

Frames are written by hand on a raw socket, so every byte on the wire is the
test's choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from iochannel import Channel, Condition, Feature, ReadFlag, SocketChannel, memory_pair, pipe_pair
from iochannel._layers.websock import HandshakeError, WebsockChannel, WebsockError
from iochannel.testing import check_two_way_channel

QEMU_KEY = "o9JHNiS3/0/0zYE1wa3yIw=="
QEMU_ACCEPT = "b3DnPh7O8hyYE5sIjQxl/c1J+S8="
MASK = b"\x37\xfa\x21\x3d"


def request(key: str = QEMU_KEY, extra: str = "Sec-WebSocket-Protocol: binary\r\n") -> bytes:
    return (
        "GET / HTTP/1.1\r\n"
        "Host: 127.0.0.1:0\r\n"
        "Origin: http://127.0.0.1:0\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"{extra}\r\n"
    ).encode()


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = MASK) -> bytes:
    """One frame as a client (masked) or, with ``mask=None``, as a server sends it."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    bit = 0x80 if mask is not None else 0
    if size < 126:
        head = struct.pack("!BB", first, bit | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, bit | 127, size)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def recv_head(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        assert chunk, f"EOF inside response head {data!r}"
        data += chunk
    return data


def recv_frame(sock: socket.socket) -> tuple[int, bytes]:
    """A server frame: (first byte, payload); asserts it is unmasked."""
    first, second = recv_exactly(sock, 2)
    assert not second & 0x80, "server frames must not be masked"
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", recv_exactly(sock, 2))
    elif size == 127:
        (size,) = struct.unpack("!Q", recv_exactly(sock, 8))
    return first, recv_exactly(sock, size)


@pytest.fixture
def server_raw() -> Iterator[tuple[WebsockChannel, socket.socket]]:
    """A shaken server channel and the raw client socket talking to it."""
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a))
    try:
        b.sendall(request())
        server.handshake()
        assert f"Sec-WebSocket-Accept: {QEMU_ACCEPT}".encode() in recv_head(b)
        yield server, b
    finally:
        server.close()
        b.close()


# ---- QEMU's test-char websocket exchange ------------------------------------------


def test_qemu_char_websocket_exchange() -> None:
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a))
    try:
        b.sendall(request())
        server.handshake()
        head = recv_head(b).decode()
        assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
        for line in (
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {QEMU_ACCEPT}",
            "Sec-WebSocket-Protocol: binary",
        ):
            assert f"\r\n{line}\r\n" in head
        assert server.protocol == "binary"
        b.sendall(frame(0x9, b"hello"))
        b.sendall(frame(0x2, b"world"))
        assert server.read_all(5) == b"world"
        assert recv_exactly(b, 7) == b"\x8a\x05hello"
        b.sendall(frame(0x8, struct.pack("!H", 1001) + b"bye"))
        assert server.read(10) == b""
        # The close reply echoes the peer's status (QEMU answers 1000 whatever was sent).
        assert recv_frame(b) == (0x88, struct.pack("!H", 1001) + b"bye")
    finally:
        server.close()
        b.close()


def test_server_frames_are_binary_and_unmasked(
    server_raw: tuple[WebsockChannel, socket.socket],
) -> None:
    server, b = server_raw
    for size in (0, 1, 125, 126, 65535, 65536, 100_000):
        data = os.urandom(size)
        if size:
            server.write_all(data)
            assert recv_frame(b) == (0x82, data)
    assert server.write(b"") == 0


def test_features(server_raw: tuple[WebsockChannel, socket.socket]) -> None:
    server, _ = server_raw
    assert server.has_feature(Feature.SHUTDOWN)
    assert not server.has_feature(Feature.FD_PASS)


# ---- the conformance suite --------------------------------------------------------


def shaken_pair(masters: tuple[Channel, Channel] | None = None) -> tuple[Channel, Channel]:
    a, b = masters or SocketChannel.pair()
    client, server = WebsockChannel.client(a), WebsockChannel.server(b)
    t = threading.Thread(target=server.handshake)
    t.start()
    client.handshake()
    t.join()
    return client, server


def test_conformance_over_socketpair() -> None:
    check_two_way_channel(shaken_pair)


def test_conformance_over_memory_pair() -> None:
    check_two_way_channel(lambda: shaken_pair(memory_pair()))


# ---- handshake drivers ---------------------------------------------------------------


def test_ahandshake_and_task() -> None:
    a, b = SocketChannel.pair()
    client, server = WebsockChannel.client(a), WebsockChannel.server(b)
    called: list[object] = []

    async def run() -> None:
        task = server.handshake_task(called.append)
        await client.ahandshake()
        assert await task is server
        await client.awrite_all(b"through")
        assert await server.aread_all(7) == b"through"

    try:
        asyncio.run(run())
    finally:
        client.close()
        server.close()
    assert len(called) == 1


def test_partial_request_then_close_never_calls_back() -> None:
    # CVE-2025-11234: "GET / HTTP/1.1", a pause, a disconnect; repeated.
    calls: list[object] = []

    async def once() -> None:
        a, b = socket.socketpair()
        server = WebsockChannel.server(SocketChannel(a))
        task = server.handshake_task(calls.append)
        b.sendall(b"GET / HTTP/1.1")
        await asyncio.sleep(0.01)
        server.close()
        b.close()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def run() -> None:
        await asyncio.gather(*(once() for _ in range(20)))

    asyncio.run(run())
    assert calls == []


def test_disconnect_mid_request_fails_the_task() -> None:
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a))

    async def run() -> None:
        task = server.handshake_task()
        b.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        b.close()
        with pytest.raises(HandshakeError, match="connection closed before the end"):
            await task

    try:
        asyncio.run(run())
    finally:
        server.close()


# ---- frames: good ------------------------------------------------------------------


def test_fragmented_message_and_zero_length_frames(
    server_raw: tuple[WebsockChannel, socket.socket],
) -> None:
    server, b = server_raw
    b.sendall(
        frame(0x2, b"", fin=True)
        + frame(0x2, b"frag", fin=False)
        + frame(0x9, b"mid")  # control frames may interleave fragments
        + frame(0x0, b"", fin=False)
        + frame(0x0, b"ments", fin=True)
    )
    assert server.read_all(9) == b"fragments"
    assert recv_frame(b) == (0x8A, b"mid")


def test_several_frames_in_one_segment(server_raw: tuple[WebsockChannel, socket.socket]) -> None:
    server, b = server_raw
    b.sendall(b"".join(frame(0x2, bytes([i]) * 3) for i in range(10)))
    assert server.read_all(30) == b"".join(bytes([i]) * 3 for i in range(10))


def test_ping_followed_by_data_in_one_segment(
    server_raw: tuple[WebsockChannel, socket.socket],
) -> None:
    server, b = server_raw
    b.sendall(frame(0x9, b"ping!") + frame(0x2, b"data"))
    assert server.read_all(4) == b"data"
    assert recv_frame(b) == (0x8A, b"ping!")  # only the ping's payload


def test_text_frames_read_as_bytes(server_raw: tuple[WebsockChannel, socket.socket]) -> None:
    server, b = server_raw
    b.sendall(frame(0x1, "héllo".encode()))
    assert server.read_all(6) == "héllo".encode()


def test_readiness_is_decoded_data_not_the_socket(
    server_raw: tuple[WebsockChannel, socket.socket],
) -> None:
    server, b = server_raw
    server.set_blocking(False)
    b.sendall(frame(0x9, b"only a ping"))
    # The socket is readable, but a ping carries no data for the reader.
    assert server.master.wait(Condition.IN, timeout=30) & Condition.IN
    assert server.read(10) is None
    assert recv_frame(b) == (0x8A, b"only a ping")
    b.sendall(frame(0x2, b"abcdef"))
    assert server.wait(Condition.IN, timeout=30) & Condition.IN
    assert server.read(2) == b"ab"
    assert server.wait(Condition.IN, timeout=0) == Condition.IN  # decoded, buffered
    assert server.read(10) == b"cdef"


def test_huge_declared_length_is_refused_before_buffering(
    server_raw: tuple[WebsockChannel, socket.socket],
) -> None:
    server, b = server_raw
    # 2**62 bytes declared: closed with 1009 before any payload is buffered.
    b.sendall(struct.pack("!BBQ", 0x82, 0xFF, 1 << 62) + MASK + b"xx")
    with pytest.raises(WebsockError, match="1009") as info:
        server.read(10)
    assert info.value.code == 1009
    first, payload = recv_frame(b)
    assert first == 0x88
    assert struct.unpack("!H", payload[:2]) == (1009,)


def test_message_size_limit() -> None:
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a), max_message=1000)
    try:
        b.sendall(request())
        server.handshake()
        recv_head(b)
        b.sendall(frame(0x2, bytes(600), fin=False) + frame(0x0, bytes(600)))
        assert server.read_all(600) == bytes(600)
        with pytest.raises(WebsockError, match="1009"):
            server.read(10)
    finally:
        server.close()
        b.close()


def test_text_frames_rejected_by_option() -> None:
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a), accept_text=False)
    try:
        b.sendall(request())
        server.handshake()
        recv_head(b)
        b.sendall(frame(0x2, b"bin") + frame(0x1, b"text"))
        assert server.read_all(3) == b"bin"
        with pytest.raises(WebsockError, match="1003") as info:
            server.read(10)
        assert info.value.code == 1003
        assert recv_frame(b)[1][:2] == struct.pack("!H", 1003)
    finally:
        server.close()
        b.close()


# ---- frames: bad --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "code", "words"),
    [
        (frame(0x2, b"unmasked", mask=None), 1002, "incorrect masking"),
        (frame(0x3, b"reserved"), 1002, "invalid opcode"),
        (frame(0xB, b"reserved control"), 1002, "invalid opcode"),
        (frame(0x9, b"ping", fin=False), 1002, "fragmented control frame"),
        (frame(0x9, bytes(126)), 1002, "control frame too long"),
        (frame(0x0, b"orphan"), 1002, "unexpected continuation frame"),
        (frame(0x2, b"a", fin=False) + frame(0x2, b"b"), 1002, "expected a continuation frame"),
        (bytes([0xC2, 0x81]) + MASK + b"x", 1002, "reserved bits must be 0"),
        (frame(0x8, b"\x03\xe8\xff\xfe"), 1007, ""),
        (frame(0x8, b"\x00\x01"), 1002, "invalid status code"),
    ],
)
def test_bad_frames_close_with_a_code(
    server_raw: tuple[WebsockChannel, socket.socket], wire: bytes, code: int, words: str
) -> None:
    server, b = server_raw
    b.sendall(wire)
    with pytest.raises(WebsockError, match=str(code)) as info:
        while server.read(10):
            pass  # data before the bad frame is delivered first
    assert info.value.code == code
    assert words in str(info.value)
    first, payload = recv_frame(b)
    assert first == 0x88
    assert struct.unpack("!H", payload[:2]) == (code,)
    with pytest.raises(BrokenPipeError):
        server.write(b"after the failure")


@pytest.mark.parametrize("cut", [1, 2, 3, 5])
def test_eof_inside_a_frame_header(
    server_raw: tuple[WebsockChannel, socket.socket], cut: int
) -> None:
    server, b = server_raw
    b.sendall(
        struct.pack("!BBH", 0x82, 0xFE, 300) + MASK[:2] if cut == 5 else b"\x82\xfe\x01"[:cut]
    )
    b.shutdown(socket.SHUT_WR)
    with pytest.raises(WebsockError, match="1006") as info:
        server.read(10)
    assert "without a WebSocket close frame" in str(info.value)


def test_eof_without_close_frame_relaxed(server_raw: tuple[WebsockChannel, socket.socket]) -> None:
    server, b = server_raw
    b.sendall(frame(0x2, b"tail"))
    b.shutdown(socket.SHUT_WR)
    assert server.read_all(4) == b"tail"
    assert server.readv([bytearray(4)], flags=ReadFlag.RELAXED_EOF) == 0


def test_peer_close_with_error_status(server_raw: tuple[WebsockChannel, socket.socket]) -> None:
    server, b = server_raw
    b.sendall(frame(0x8, struct.pack("!H", 1011) + b"server melted"))
    with pytest.raises(WebsockError, match="1011 \\(server melted\\)"):
        server.read(10)
    assert recv_frame(b)[1] == struct.pack("!H", 1011) + b"server melted"


def _accept_client(b: socket.socket, after: bytes = b"") -> None:
    """Answer a client's handshake on the raw socket *b*, then send *after*."""
    from iochannel._layers.websock_handshake import accept_key

    head = recv_head(b).decode()
    key = next(
        line.split(": ", 1)[1]
        for line in head.split("\r\n")
        if line.lower().startswith("sec-websocket-key")
    )
    b.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
        + accept_key(key).encode()
        + b"\r\n\r\n"
        + after
    )


@contextlib.contextmanager
def _shaken_client(after: bytes = b"") -> Iterator[tuple[WebsockChannel, socket.socket]]:
    """A client channel past its handshake, the raw server socket, and *after* sent to it."""
    a, b = socket.socketpair()
    client = WebsockChannel.client(SocketChannel(a))
    try:
        t = threading.Thread(target=_accept_client, args=(b, after))
        t.start()
        client.handshake()
        t.join()
        yield client, b
    finally:
        client.close()
        b.close()


@pytest.fixture
def client_raw() -> Iterator[tuple[WebsockChannel, socket.socket]]:
    with _shaken_client() as pair:
        yield pair


def test_client_refuses_masked_server_frames() -> None:
    # The bad frame comes in the same segment as the handshake answer.
    with (
        _shaken_client(frame(0x2, b"masked")) as (client, _raw),
        pytest.raises(WebsockError, match="1002"),
    ):
        client.read(10)


# ---- frames split anywhere --------------------------------------------------------


def _read_in_pieces(ch: WebsockChannel, sock: socket.socket, pieces: list[bytes]) -> bytes:
    """Send *pieces* one by one, each read to the end before the next: segment = piece."""
    ch.set_blocking(False)
    got = bytearray()
    for piece in pieces:
        sock.sendall(piece)
        while data := ch.read(1 << 20):
            got += data
    return bytes(got)


def _stream_frames(mask: bytes | None) -> tuple[bytes, bytes]:
    """Frames of every kind the stream uses, and the bytes they carry."""
    big = bytes(i % 251 for i in range(300))  # 16-bit length
    wire = (
        frame(0x2, big, mask=mask)
        + frame(0x1, b"text ", fin=False, mask=mask)
        + frame(0xA, b"pong", mask=mask)  # unsolicited: ignored, even between fragments
        + frame(0x0, b"in fragments", mask=mask)
        + frame(0x2, b"", mask=mask)
        + frame(0x2, b"tail", mask=mask)
    )
    return wire, big + b"text in fragments" + b"tail"


def test_frames_split_at_every_point_read_the_same(
    server_raw: tuple[WebsockChannel, socket.socket],
) -> None:
    server, b = server_raw
    wire, data = _stream_frames(MASK)
    wire += frame(0x9, b"ping")
    for cut in range(1, len(wire)):
        assert _read_in_pieces(server, b, [wire[:cut], wire[cut:]]) == data, cut
        assert recv_frame(b) == (0x8A, b"ping")
    one_byte_each = [wire[i : i + 1] for i in range(len(wire))]
    assert _read_in_pieces(server, b, one_byte_each) == data
    assert recv_frame(b) == (0x8A, b"ping")


def test_unmasked_frames_split_at_every_point_read_the_same(
    client_raw: tuple[WebsockChannel, socket.socket],
) -> None:
    client, b = client_raw
    wire, data = _stream_frames(None)
    for cut in range(1, len(wire)):
        assert _read_in_pieces(client, b, [wire[:cut], wire[cut:]]) == data, cut


def test_long_frame_across_many_segments(
    server_raw: tuple[WebsockChannel, socket.socket],
) -> None:
    server, b = server_raw
    payload = os.urandom(200_000)  # 64-bit length, 200 KB in segments of odd sizes
    wire = frame(0x2, payload)
    pieces = [wire[i : i + 4093] for i in range(0, len(wire), 4093)]
    assert _read_in_pieces(server, b, pieces) == payload


def test_eof_inside_a_payload(server_raw: tuple[WebsockChannel, socket.socket]) -> None:
    """Payload bytes are stream bytes: they are read as they come, then the EOF is an error."""
    server, b = server_raw
    b.sendall(frame(0x2, b"x" * 300)[:104])  # 4 header, 4 mask, 96 payload bytes
    b.shutdown(socket.SHUT_WR)
    assert server.read_all(96) == b"x" * 96
    with pytest.raises(WebsockError, match="1006") as info:
        server.read(10)
    assert "without a WebSocket close frame" in str(info.value)


# ---- memory stays bounded ----------------------------------------------------------------


def test_writes_block_when_the_peer_never_reads(
    server_raw: tuple[WebsockChannel, socket.socket],
) -> None:
    # CVE-2017-15268: the queue must not grow without bound.
    server, _b = server_raw
    server.set_blocking(False)
    written = 0
    chunk = bytes(65536)
    while (n := server.write(chunk)) is not None:
        written += n
        assert written < 64 << 20, "writes never blocked"
    assert server.wait(Condition.OUT, timeout=0) == Condition.NONE
    assert server._wq_size <= 256 * 1024 + 16


def test_ping_flood_with_a_peer_that_never_reads(
    server_raw: tuple[WebsockChannel, socket.socket],
) -> None:
    server, b = server_raw
    server.set_blocking(False)
    b.setblocking(False)
    ping = frame(0x9, bytes(125))
    sent = 0
    try:
        for _ in range(20_000):
            sent += b.send(ping * 16)
            server.read(100)
    except BlockingIOError:
        pass  # the server stopped reading: back-pressure reached the flooder
    assert server._wq_size < (256 + 64) * 1024 + 131 * 16 * 16
    assert sent < 20_000 * len(ping) * 16


def test_conformance_over_pipe_pair() -> None:
    check_two_way_channel(lambda: shaken_pair(pipe_pair()))


def test_constructor_arguments_are_checked() -> None:
    a, b = SocketChannel.pair()
    try:
        with pytest.raises(ValueError, match="must start with '/'"):
            WebsockChannel.server(a, path="ws")
        with pytest.raises(ValueError, match="max_message must be at least 1 byte"):
            WebsockChannel.client(b, max_message=0)
        with pytest.raises(ValueError, match="invalid character"):
            WebsockChannel.client(b, host="a b")
    finally:
        a.close()
        b.close()
