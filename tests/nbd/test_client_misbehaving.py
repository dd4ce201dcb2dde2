"""The NBD client against a misbehaving server: a clear error, no hang, no leak.

The server is a few lines of Python speaking the wire format by hand
(:class:`~tests.nbd.client_peers.BadServer`): it negotiates correctly (or not),
then answers requests with garbage, truncated replies, strange cookies, or
vanishes.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from iochannel.crypto import X509Credentials
from iochannel.crypto.certs import make_credentials_dir
from iochannel.nbd.client import AsyncNbdClient, NbdClient, NbdConnectionError, NbdError

from .client_peers import (
    IHAVEOPT,
    NBDMAGIC,
    REP_ACK,
    SIMPLE,
    STRUCTURED,
    BadServer,
    Request,
    opt_reply,
    recv_exact,
    transmission,
)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket], None]], BadServer]]:
    servers: list[BadServer] = []

    def start(script: Callable[[socket.socket], None]) -> BadServer:
        servers.append(BadServer(tmp_path / f"bad{len(servers)}.sock", script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _structured(cookie: int, kind: int, payload: bytes, done: bool = True) -> bytes:
    return struct.pack(">IHHQI", STRUCTURED, int(done), kind, cookie, len(payload)) + payload


async def _fails(call: Awaitable[object], within: float) -> BaseException:
    """The error *call* raises, which must come within *within* seconds."""
    try:
        await asyncio.wait_for(call, within)
    except TimeoutError:  # checked first: it is an OSError too
        pytest.fail(f"no answer within {within} s: the client hangs")
    except (NbdError, OSError) as exc:
        return exc
    pytest.fail("the request succeeded")


def _run_async_read(address: str, length: int = 512) -> BaseException:
    async def main() -> BaseException:
        async with await AsyncNbdClient.connect(address) as nbd:
            error = await _fails(nbd.read(0, length), 5)
            # After a broken reply the connection is unusable: the next call fails at once.
            await _fails(nbd.read(0, length), 1)
            return error

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("greeting", "message"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n" * 4, "magic"),
        (struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3)[:10], "closed"),
        (struct.pack(">QQ", NBDMAGIC, 0x00420281861253) + b"\0" * 8, "oldstyle"),
    ],
    ids=["garbage", "truncated", "oldstyle"],
)
def test_bad_greeting(serve: Callable[..., BadServer], greeting: bytes, message: str) -> None:
    server = serve(lambda conn: conn.sendall(greeting))
    with pytest.raises(NbdError, match=message):
        NbdClient.connect(server.address, "", timeout=5)


def test_option_reply_with_a_wrong_magic(serve: Callable[..., BadServer]) -> None:
    def script(conn: socket.socket) -> None:
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
        recv_exact(conn, 4)
        recv_exact(conn, 16)
        conn.sendall(b"\xde\xad" * 20)
        conn.recv(1)

    with pytest.raises(NbdError, match="magic"):
        NbdClient.connect(serve(script).address, "", timeout=5)


def test_reply_with_an_unknown_cookie(serve: Callable[..., BadServer]) -> None:
    def reply(conn: socket.socket, req: Request) -> bool:
        conn.sendall(_structured(req[2] + 1, 0, b""))
        return True

    exc = _run_async_read(serve(transmission(reply)).address)
    assert "cookie" in str(exc)


def test_garbage_reply(serve: Callable[..., BadServer]) -> None:
    def reply(conn: socket.socket, req: Request) -> bool:
        conn.sendall(b"\x00garbage!" * 8)
        return True

    exc = _run_async_read(serve(transmission(reply)).address)
    assert "magic" in str(exc)


def test_truncated_read_reply_then_close(serve: Callable[..., BadServer]) -> None:
    def reply(conn: socket.socket, req: Request) -> bool:
        conn.sendall(_structured(req[2], 1, struct.pack(">Q", 0) + b"x" * 100)[:60])
        return False

    _run_async_read(serve(transmission(reply)).address)


def test_data_chunk_outside_the_request(serve: Callable[..., BadServer]) -> None:
    def reply(conn: socket.socket, req: Request) -> bool:
        conn.sendall(_structured(req[2], 1, struct.pack(">Q", req[3] + 4096) + b"x" * 512))
        return True

    exc = _run_async_read(serve(transmission(reply)).address)
    assert "offset" in str(exc)


def test_server_vanishes_mid_request(serve: Callable[..., BadServer]) -> None:
    exc = _run_async_read(serve(transmission(lambda conn, req: False)).address)
    assert isinstance(exc, OSError)


def test_pending_requests_all_fail_when_one_reply_is_bad(serve: Callable[..., BadServer]) -> None:
    seen: list[int] = []

    def reply(conn: socket.socket, req: Request) -> bool:
        seen.append(req[2])
        if len(seen) == 4:
            conn.sendall(_structured(seen[0], 0x7777, b"??"))  # an unknown non-error chunk type
        return True

    async def main(address: str) -> list[BaseException | bytes]:
        async with await AsyncNbdClient.connect(address) as nbd:
            reads = [asyncio.wait_for(nbd.read(i * 512, 512), 5) for i in range(4)]
            return await asyncio.gather(*reads, return_exceptions=True)

    results = asyncio.run(main(serve(transmission(reply)).address))
    assert all(isinstance(r, NbdError) for r in results), results


def test_sync_client_error_then_close(serve: Callable[..., BadServer]) -> None:
    def reply(conn: socket.socket, req: Request) -> bool:
        conn.sendall(struct.pack(">IIQ", SIMPLE, 0, req[2] ^ 0xFF))
        return True

    with NbdClient.connect(serve(transmission(reply)).address, timeout=5) as nbd:
        with pytest.raises(NbdError, match="cookie"):
            nbd.flush()
        with pytest.raises(NbdError):
            nbd.read(0, 1)


def _stall(conn: socket.socket) -> None:
    conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
    conn.recv(1 << 16)
    conn.recv(1)  # until the client gives up and closes


def test_a_stalled_handshake_times_out(serve: Callable[..., BadServer]) -> None:
    server = serve(_stall)
    start = time.monotonic()
    with pytest.raises(NbdConnectionError, match="did not answer in time"):
        NbdClient.connect(server.address, timeout=0.5)
    with pytest.raises(NbdConnectionError, match="did not answer in time"):
        asyncio.run(AsyncNbdClient.connect(server.address, timeout=0.5))
    assert time.monotonic() - start < 5


def test_reconnecting_to_a_stalled_server_gives_up(serve: Callable[..., BadServer]) -> None:
    connections: list[int] = []

    def script(conn: socket.socket) -> None:
        connections.append(1)
        if len(connections) > 1:
            _stall(conn)  # the server came back broken
        else:
            transmission(lambda conn, req: False)(conn)  # vanishes at the first request

    async def main(address: str) -> BaseException:
        async with await AsyncNbdClient.connect(address, timeout=0.3, reconnect_delay=1) as nbd:
            return await _fails(nbd.read(0, 512), 5)

    error = asyncio.run(main(serve(script).address))
    assert isinstance(error, NbdConnectionError) and error.errno == errno.EIO
    assert len(connections) >= 2


def test_a_stalled_tls_handshake_times_out(serve: Callable[..., BadServer], tmp_path: Path) -> None:
    def script(conn: socket.socket) -> None:
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
        recv_exact(conn, 4)
        _, opt, length = struct.unpack(">QII", recv_exact(conn, 16))
        recv_exact(conn, length)
        opt_reply(conn, opt, REP_ACK)  # STARTTLS accepted, and then nothing
        while conn.recv(1 << 16):
            pass

    make_credentials_dir(tmp_path / "pki")
    creds = X509Credentials(tmp_path / "pki", "client")
    address = serve(script).address
    with pytest.raises(NbdConnectionError, match="did not answer in time"):
        NbdClient.connect(address, tls=creds, tls_hostname="localhost", timeout=0.5)
    with pytest.raises(NbdConnectionError, match="did not answer in time"):
        asyncio.run(
            AsyncNbdClient.connect(address, tls=creds, tls_hostname="localhost", timeout=0.5)
        )


def test_a_server_that_keeps_dropping_the_request(serve: Callable[..., BadServer]) -> None:
    connections: list[int] = []

    def script(conn: socket.socket) -> None:
        connections.append(1)
        transmission(lambda conn, req: False)(conn)  # negotiates, drops every request

    async def main(address: str) -> tuple[BaseException, float]:
        async with await AsyncNbdClient.connect(address, reconnect_delay=1) as nbd:
            start = time.monotonic()
            error = await _fails(nbd.read(0, 512), 5)
            return error, time.monotonic() - start

    error, waited = asyncio.run(main(serve(script).address))
    assert isinstance(error, NbdConnectionError) and error.errno == errno.EIO
    assert 0.9 < waited < 3 and len(connections) > 2  # sent again, then given up


def test_endless_block_status_chunks(serve: Callable[..., BadServer]) -> None:
    """A server that never ends a BLOCK_STATUS reply cannot grow the client's memory."""

    def reply(conn: socket.socket, req: Request) -> bool:
        # Context 1 (base:allocation), one 512-byte extent, chunk after chunk, never DONE.
        chunk = _structured(req[2], 5, struct.pack(">III", 1, 512, 0), done=False)
        try:
            for _ in range(100_000):
                conn.sendall(chunk)
        except OSError:
            pass  # the client hung up
        return False

    async def main() -> BaseException:
        async with await AsyncNbdClient.connect(serve(transmission(reply)).address) as nbd:
            return await _fails(nbd.block_status(0, 1 << 20), 5)

    exc = asyncio.run(main())
    assert "a second chunk" in str(exc)
