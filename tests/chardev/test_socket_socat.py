"""The socket chardev against socat: a real client of our server, a real server for our client."""

from __future__ import annotations

import asyncio
import asyncio.subprocess as aproc
from pathlib import Path

from iochannel import InetAddress, UnixAddress
from iochannel.chardev import ChardevEvent, Frontend
from iochannel.chardev.socket import SocketChardev

from ..conftest import require_tool
from .fehandler import FeHandler
from .test_socket import run, saw, until


async def socat(*args: str) -> aproc.Process:
    return await asyncio.create_subprocess_exec(
        require_tool("socat"), *args, stdin=aproc.PIPE, stdout=aproc.PIPE, stderr=aproc.PIPE
    )


async def finish(proc: aproc.Process) -> bytes:
    """Close socat's stdin, collect its stdout, reap it."""
    assert proc.stdin is not None
    proc.stdin.close()
    out, _err = await asyncio.wait_for(proc.communicate(), 30)
    return out


def test_socat_client_of_our_tcp_server() -> None:
    require_tool("socat")

    async def main() -> None:
        chr = SocketChardev(
            "s", InetAddress("127.0.0.1", "0"), server=True, loop=asyncio.get_running_loop()
        )
        chr.open()
        fe = Frontend(chr)
        h = FeHandler(fe, capacity=4096)
        h.register()
        addr = chr.listen_addresses[0]
        assert isinstance(addr, InetAddress)
        proc = await socat("-", f"TCP:127.0.0.1:{addr.port}")
        await until(lambda: chr.connected, "socat's connection")
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"typed into socat\n")
        await proc.stdin.drain()
        await until(lambda: h.read_buf == b"typed into socat\n", "socat's input")
        await fe.awrite_all(b"printed by socat\n")
        assert await proc.stdout.readexactly(17) == b"printed by socat\n"
        # stdin EOF: socat half-closes, then leaves; the chardev sees the end.
        out = await finish(proc)
        assert out == b""
        await until(saw(h, ChardevEvent.CLOSED), "CLOSED")
        assert h.events == [ChardevEvent.OPENED, ChardevEvent.CLOSED] and not h.mismatch
        fe.deinit(delete=True)

    run(main)


def test_socat_server_for_our_unix_client(tmp_path: Path) -> None:
    require_tool("socat")

    async def main() -> None:
        path = str(tmp_path / "socat.sock")
        proc = await socat(f"UNIX-LISTEN:{path}", "-")
        chr = SocketChardev(
            "c", UnixAddress(path), reconnect_ms=20, loop=asyncio.get_running_loop()
        )
        fe = Frontend(chr)
        h = FeHandler(fe, capacity=4096)
        h.register()
        chr.open()  # socat may not listen yet: the chardev retries
        await until(lambda: chr.connected, "the connection to socat", timeout=30)
        assert chr.filename == f"unix:{path}"
        assert proc.stdin is not None and proc.stdout is not None
        await fe.awrite_all(b"to socat\n")
        assert await proc.stdout.readexactly(9) == b"to socat\n"
        proc.stdin.write(b"from socat\n")
        await proc.stdin.drain()
        await until(lambda: h.read_buf == b"from socat\n", "socat's bytes")
        await finish(proc)
        await until(saw(h, ChardevEvent.CLOSED), "CLOSED when socat leaves")
        assert chr.filename == f"disconnected:unix:{path}"
        fe.deinit(delete=True)

    run(main)
