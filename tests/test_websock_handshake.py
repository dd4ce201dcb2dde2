"""The WebSocket opening handshake: every bad request gets a well-formed HTTP answer."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from iochannel import SocketChannel
from iochannel._layers.websock import HandshakeError, WebsockChannel
from iochannel._layers.websock_handshake import (
    MAX_HEAD,
    accept_key,
    check_response,
    client_request,
    server_response,
)

from .test_websock import QEMU_KEY, frame, recv_head, request

GOOD = {
    "Host": "localhost",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": QEMU_KEY,
    "Sec-WebSocket-Version": "13",
}


def head(start: str = "GET / HTTP/1.1", **fields: str | None) -> bytes:
    headers = {**GOOD, **{k.replace("_", "-"): v for k, v in fields.items()}}
    lines = [start] + [f"{k}: {v}" for k, v in headers.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_answer(response: bytes) -> tuple[int, dict[str, str], bytes]:
    """A strict reading of an HTTP answer: status, headers, body of Content-Length."""
    top, sep, body = response.partition(b"\r\n\r\n")
    assert sep, "the answer has no blank line after its headers"
    lines = top.decode("ascii").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Connection"] == "close"
    return int(status), headers, body


def test_good_request() -> None:
    response, protocol = server_response(head())
    assert protocol is None
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert f"Sec-WebSocket-Accept: {accept_key(QEMU_KEY)}".encode() in response
    assert b"Sec-WebSocket-Protocol" not in response  # noVNC sends none


@pytest.mark.parametrize(
    ("request_head", "status", "words"),
    [
        (head(Sec_WebSocket_Version="8"), 426, "Sec-WebSocket-Version must be 13"),
        (head(Sec_WebSocket_Version=None), 400, "missing Sec-WebSocket-Version"),
        (head(Sec_WebSocket_Key="o9JHNiS3/0/0zYE1wa3yIw="), 400, "Sec-WebSocket-Key"),
        (head(Sec_WebSocket_Key="o9JHNiS3/0/0zYE1wa3yIw===="), 400, "Sec-WebSocket-Key"),
        (head(Sec_WebSocket_Key="!!!!!!!!!!!!!!!!!!!!!!=="), 400, "Sec-WebSocket-Key"),
        (head(Sec_WebSocket_Key=None), 400, "missing Sec-WebSocket-Key"),
        (head(Host=None), 400, "Missing mandatory Host"),
        (head(Upgrade=None), 400, "Upgrade header must name 'websocket'"),
        (head(Upgrade="h2c"), 400, "Upgrade"),
        (head(Connection=None), 400, "Connection header must include 'Upgrade'"),
        (head(Connection="close"), 400, "Connection"),
        (head("GET /x HTTP/1.1"), 404, "no WebSocket service at '/x'"),
        (head("POST / HTTP/1.1"), 400, "method must be GET, not 'POST'"),
        (head("get / HTTP/1.1"), 400, "method must be GET"),
        (head("GET / HTTP/1.0"), 400, "HTTP version must be HTTP/1.1, not 'HTTP/1.0'"),
        (head("GET /"), 400, "illegal request line"),
        (head("GET  / HTTP/1.1"), 400, "illegal request line"),
        (head(Sec_WebSocket_Protocol="text"), 400, "must offer 'binary'"),
    ],
)
def test_bad_requests(request_head: bytes, status: int, words: str) -> None:
    with pytest.raises(HandshakeError) as info:
        server_response(request_head)
    assert info.value.status == status
    assert words in str(info.value)
    got_status, headers, body = parse_answer(info.value.response)
    assert got_status == status
    assert words in body.decode()
    if status in (400, 426):
        assert headers["Sec-WebSocket-Version"] == "13"


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n", 400, "illegal header line"),
        (b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", 400, "illegal header line"),
        (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400, "continuation line"),
        (b"GET / HTTP/1.1\r\nHost: a\nb\r\n\r\n", 400, "illegal header line"),
        (b"GET / HTTP/1.1\r\nHost: \x00\r\n\r\n", 400, "illegal header line"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n", 400, "control byte"),
        (b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n", 400, "non-ASCII"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(33)) + b"\r\n",
            431,  # RFC 6585 §5: the header fields are collectively too large
            "more than 32 header fields",
        ),
        (head().replace(b"Host: localhost", b"Host: a\r\nHost: b"), 400, "multiple Host"),
    ],
)
def test_malformed_heads(raw: bytes, status: int, words: str) -> None:
    with pytest.raises(HandshakeError, match=words) as info:
        server_response(raw)
    assert parse_answer(info.value.response)[0] == status


def test_token_lists_and_case() -> None:
    ok = head(Connection="keep-alive, UPGRADE", Upgrade="WebSocket")
    assert server_response(ok)[0].startswith(b"HTTP/1.1 101")
    response, protocol = server_response(head(Sec_WebSocket_Protocol="chat, Binary"))
    assert protocol == "binary"
    assert b"Sec-WebSocket-Protocol: binary\r\n" in response
    lower = head().replace(b"Sec-WebSocket-Key", b"sec-websocket-key")
    assert server_response(lower)[0].startswith(b"HTTP/1.1 101")


def test_path_and_origin_checks() -> None:
    assert server_response(head("GET /vnc?token=1 HTTP/1.1"), path="/vnc")
    with pytest.raises(HandshakeError) as info:
        server_response(head(Origin="http://evil"), origins={"http://good"})
    assert info.value.status == 403
    assert server_response(head(Origin="http://good"), origins={"http://good"})
    with pytest.raises(HandshakeError, match="origin '' is not allowed"):
        server_response(head(), origins={"http://good"})


def test_client_request_and_response_checks() -> None:
    req = client_request(QEMU_KEY, host="qemu.org:5700", path="/ws", origin="http://qemu.org")
    assert server_response(req, path="/ws")[1] == "binary"
    good, _ = server_response(req, path="/ws")
    assert check_response(good, QEMU_KEY) == "binary"
    with pytest.raises(HandshakeError, match="invalid Sec-WebSocket-Accept header"):
        check_response(good, "AAAAAAAAAAAAAAAAAAAAAA==")
    with pytest.raises(HandshakeError, match=r"refused the WebSocket upgrade: 'HTTP/1\.1 404"):
        check_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", QEMU_KEY)
    with pytest.raises(HandshakeError, match="missing Upgrade header"):
        check_response(good.replace(b"Upgrade: websocket\r\n", b""), QEMU_KEY)
    with pytest.raises(HandshakeError, match="extension"):
        check_response(
            good.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: x\r\n\r\n"), QEMU_KEY
        )
    with pytest.raises(HandshakeError, match="unsupported subprotocol"):
        check_response(good.replace(b"binary", b"chat"), QEMU_KEY)
    with pytest.raises(ValueError, match="invalid character"):
        client_request(QEMU_KEY, host="evil\r\nX: y")


# ---- at the channel level -----------------------------------------------------------


def refused(
    raw: bytes,
    *,
    shutdown: bool = False,
    path: str = "/",
    origins: list[str] | None = None,
) -> tuple[HandshakeError, bytes]:
    """Send *raw* to a server channel; return its error and everything it answered."""
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a), path=path, origins=origins)
    answer = bytearray()

    def collect() -> None:
        while chunk := b.recv(65536):
            answer.extend(chunk)

    reader = threading.Thread(target=collect)
    reader.start()
    try:
        b.sendall(raw)
        if shutdown:
            b.shutdown(socket.SHUT_WR)
        with pytest.raises(HandshakeError) as info:
            server.handshake()
        if info.value.response:
            reader.join()  # the answer ends with EOF: the server shut its side down
        return info.value, bytes(answer)
    finally:
        server.close()
        reader.join()
        b.close()


def test_channel_answers_wrong_version_with_426() -> None:
    err, answer = refused(head(Sec_WebSocket_Version="7"))
    assert err.status == 426
    assert parse_answer(answer)[0] == 426


def test_channel_answers_path_with_404() -> None:
    err, answer = refused(request().replace(b"GET / ", b"GET /x "), path="/")
    assert err.status == 404
    assert parse_answer(answer)[0] == 404


def test_channel_answers_origin_with_403() -> None:
    _, answer = refused(request(), origins=["https://qemu.org"])
    assert parse_answer(answer)[0] == 403


def test_header_flood_gets_431_with_bounded_reads() -> None:
    # Headers that never end (CVE-2015-1779): refused once MAX_HEAD bytes arrived.
    flood = b"GET / HTTP/1.1\r\n" + b"X-Flood: " + b"a" * (4 * MAX_HEAD)
    err, answer = refused(flood)
    assert err.status == 431
    assert "not found within 8192 bytes" in str(err)
    assert parse_answer(answer)[0] == 431


def test_eof_inside_the_request() -> None:
    err, answer = refused(b"GET / HTTP/1.1\r\nHost: x", shutdown=True)
    assert err.status is None
    assert "connection closed before the end of the WebSocket handshake (23 bytes" in str(err)
    assert answer == b""


def test_frame_bytes_after_the_head_are_kept() -> None:
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a))
    try:
        b.sendall(request() + frame(0x2, b"early"))
        server.handshake()
        recv_head(b)
        assert server.read_all(5) == b"early"
    finally:
        server.close()
        b.close()


def test_refusal_on_a_non_blocking_channel() -> None:
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a))

    async def run() -> None:
        b.sendall(request().replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        with pytest.raises(HandshakeError, match=r"HTTP/1\.0"):
            await server.ahandshake()

    try:
        asyncio.run(run())
        answer = b""
        while chunk := b.recv(4096):
            answer += chunk
        assert parse_answer(answer)[0] == 400
    finally:
        server.close()
        b.close()


def test_frames_sent_with_the_head_are_not_counted_as_header_lines() -> None:
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a))
    try:
        b.sendall(request() + frame(0x2, b"\n" * 100))
        server.handshake()
        recv_head(b)
        assert server.read_all(100) == b"\n" * 100
    finally:
        server.close()
        b.close()


def test_a_tls_hello_is_refused_without_waiting_for_a_head() -> None:
    # A TLS client on a plain port never sends a blank line: h11 refuses its first byte.
    a, b = socket.socketpair()
    server = WebsockChannel.server(SocketChannel(a))

    async def run() -> HandshakeError:
        b.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        with pytest.raises(HandshakeError) as info:
            async with asyncio.timeout(5):
                await server.ahandshake()
        return info.value

    try:
        err = asyncio.run(run())
        assert err.status == 400
        assert "illegal request line" in str(err)
        answer = b""
        while chunk := b.recv(4096):
            answer += chunk
        assert parse_answer(answer)[0] == 400
    finally:
        server.close()
        b.close()


def test_a_client_refuses_an_endless_answer_without_answering_it() -> None:
    a, b = socket.socketpair()
    client = WebsockChannel.client(SocketChannel(a))
    try:
        start = b"HTTP/1.1 101 Switching Protocols\r\nX: "
        # One byte past the limit, so the client reads all of it and closes without a reset.
        b.sendall(start + b"a" * (MAX_HEAD + 1 - len(start)))
        with pytest.raises(HandshakeError, match="not found within 8192 bytes") as info:
            client.handshake()
        assert info.value.status is None and info.value.response == b""
        client.close()
        assert recv_head(b).startswith(b"GET / HTTP/1.1\r\n")
        assert b.recv(4096) == b""  # the request, then nothing: a client answers no answer
    finally:
        client.close()
        b.close()
