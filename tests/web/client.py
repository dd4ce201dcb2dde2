"""Test clients of a web console: raw HTTP requests and WebSocket viewers."""

from __future__ import annotations

import asyncio
import contextlib
import re

from iochannel import Channel, SocketChannel, TLSChannel, WebsockChannel
from iochannel.crypto import X509Credentials
from iochannel.web import WebConsole


def token(console: WebConsole, role: str) -> str:
    return console.urls[role].rpartition("token=")[2]


def connect(console: WebConsole, creds: X509Credentials | None = None) -> Channel:
    channel: Channel = SocketChannel.connect(console.address)
    channel.set_blocking(False)
    if creds is not None:
        channel = TLSChannel.client(channel, creds, console.address.host)
    return channel


async def exchange(console: WebConsole, request: bytes) -> bytes:
    """Send *request* and return everything the server answers until it closes."""
    with connect(console) as channel:
        await channel.awrite_all(request)
        answer = bytearray()
        with contextlib.suppress(ConnectionError):
            while chunk := await channel.aread(65536):
                answer += chunk
        return bytes(answer)


async def get(console: WebConsole, target: str, *, method: str = "GET", extra: str = "") -> bytes:
    return await exchange(
        console, f"{method} {target} HTTP/1.1\r\nHost: console\r\n{extra}\r\n".encode()
    )


async def viewer(
    console: WebConsole, role: str, creds: X509Credentials | None = None
) -> WebsockChannel:
    """A WebSocket viewer with *role*'s token, handshake done."""
    ws = WebsockChannel.client(
        connect(console, creds), host="console", path=f"/ws?token={token(console, role)}"
    )
    await ws.ahandshake()
    return ws


#: The server's device-state messages (iochannel.web.protocol.encode_status).
STATUS = re.compile(rb"\x1b\]7761;device=(open|gone)\x07")


async def read_until(
    ws: Channel, expected: bytes, timeout: float = 10, *, status: bool = False
) -> bytes:
    """Read until the output received ends with *expected*; return it all.

    Output is what the server sent without its device-state messages, unless
    *status* is true.
    """
    got = bytearray()

    def output() -> bytes:
        return bytes(got) if status else STATUS.sub(b"", got)

    async with asyncio.timeout(timeout):
        # Output is never longer than what was read: skip stripping until it can match,
        # which keeps reading a large transfer linear.
        while len(got) < len(expected) or not output().endswith(expected):
            chunk = await ws.aread(65536)
            if not chunk:
                raise EOFError(f"end of stream after {bytes(got[-200:])!r}")
            got += chunk
    return output()


async def read_to_end(ws: Channel, timeout: float = 10) -> bytes:
    """The output (as :func:`read_until`) received until the stream ends."""
    got = bytearray()
    async with asyncio.timeout(timeout):
        while chunk := await ws.aread(65536):
            got += chunk
    return STATUS.sub(b"", got)


async def settle(condition: object, timeout: float = 5) -> None:
    """Let the loop run until ``condition()`` holds."""
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)
