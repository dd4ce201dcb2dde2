"""WebsockChannel against the `websockets` asyncio client and server; wss end to end."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from websockets.asyncio.client import unix_connect
from websockets.asyncio.server import ServerConnection, unix_serve

from iochannel import Channel, SocketChannel, TLSChannel, UnixAddress, WebsockChannel
from iochannel.testing import check_two_way_channel

from .test_tls import Creds, make_creds, send_across


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Creds:
    return make_creds(str(tmp_path_factory.mktemp("wss")))


async def _serve_one(listener: SocketChannel) -> None:
    """Accept one connection; echo what a WebsockChannel server reads until EOF."""
    conn = await listener.aaccept()
    ws = WebsockChannel.server(conn)
    try:
        await ws.ahandshake()
        while data := await ws.aread(65536):
            await ws.awrite_all(data)
    finally:
        ws.close()


def test_websockets_client_against_our_server(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "ws.sock")

    async def run() -> None:
        with SocketChannel.listen(UnixAddress(path)) as listener:
            server = asyncio.ensure_future(_serve_one(listener))
            async with unix_connect(path, uri="ws://localhost/") as ws:
                for size in (1, 125, 126, 65536, 300_000):
                    payload = os.urandom(size)
                    await ws.send(payload)
                    got = b""
                    while len(got) < size:
                        msg = await ws.recv()
                        assert isinstance(msg, bytes)
                        got += msg
                    assert got == payload
                await ws.send("text is delivered as bytes")
                assert await ws.recv() == b"text is delivered as bytes"
                pong = await ws.ping(b"are you there")
                await asyncio.wait_for(pong, 30)
            await asyncio.wait_for(server, 30)

    asyncio.run(run())


def test_our_client_against_websockets_server(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "ws.sock")

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def run() -> None:
        async with unix_serve(echo, path):
            client = WebsockChannel.client(
                SocketChannel.connect(UnixAddress(path)), host="localhost"
            )
            try:
                await client.ahandshake()
                assert client.protocol is None  # the echo server picks no sub-protocol
                data = os.urandom(200_000)
                await client.awrite_all(data)
                assert await client.aread_all(len(data)) == data
            finally:
                await client.aclose()

    asyncio.run(run())


# ---- wss: WebSocket over TLS over a socket ---------------------------------------------


def wss_pair(creds: Creds) -> tuple[Channel, Channel]:
    a, b = SocketChannel.pair()
    ctls = TLSChannel.client(a, creds.client_creds(), "qemu.org")
    stls = TLSChannel.server(b, creds.server_creds())
    client, server = WebsockChannel.client(ctls, host="qemu.org"), WebsockChannel.server(stls)
    t = threading.Thread(target=server.handshake)  # drives the TLS handshake first
    t.start()
    client.handshake()
    t.join()
    assert ctls.handshake_done and server.handshake_done
    return client, server


def test_wss_end_to_end(creds: Creds) -> None:
    client, server = wss_pair(creds)
    try:
        data = os.urandom(1 << 20)
        send_across(client, server, data)
        server.write_all(b"secure")
        assert client.read_all(6) == b"secure"
        client.close()
        assert server.read(1) == b""
    finally:
        client.close()
        server.close()


def test_wss_conformance(creds: Creds) -> None:
    check_two_way_channel(lambda: wss_pair(creds))


def test_websockets_wss_client_against_our_stack(creds: Creds, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "wss.sock")

    async def serve_one(listener: SocketChannel) -> None:
        conn = await listener.aaccept()
        ws = WebsockChannel.server(TLSChannel.server(conn, creds.server_creds()))
        try:
            await ws.ahandshake()
            while data := await ws.aread(65536):
                await ws.awrite_all(data[::-1])
        finally:
            ws.close()

    async def run() -> None:
        with SocketChannel.listen(UnixAddress(path)) as listener:
            server = asyncio.ensure_future(serve_one(listener))
            ctx = creds.client_creds().ssl_context()
            async with unix_connect(
                path, uri="wss://qemu.org/", ssl=ctx, server_hostname="qemu.org"
            ) as ws:
                await ws.send(b"abc")
                assert await ws.recv() == b"cba"
            await asyncio.wait_for(server, 30)

    asyncio.run(run())
