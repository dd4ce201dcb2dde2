"""NbdServer in-process: iothread loops, connection limits, export removal, node allocation."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from iochannel import UnixAddress
from iochannel.block import nodes
from iochannel.block.iothread import IOThread
from iochannel.block.nodes import (
    STATUS_HOLE,
    STATUS_ZERO,
    BlockNode,
    FileNode,
    NullNode,
    RawNode,
    open_file,
)
from iochannel.nbd import server as nbd_server
from iochannel.nbd.protocol import (
    ClientConnection,
    Command,
    ExportReady,
    Reply,
    TransmissionFlag,
)
from iochannel.nbd.server import NbdExport, NbdServer
from tests.conftest import require_tool


class Recording(NullNode):
    """A null node that notes the threads its I/O runs on."""

    def __init__(self) -> None:
        super().__init__("rec", False, 1 << 20, False)  # data, so reads read
        self.threads: set[str] = set()

    def preadv_nowait(self, bufs: list[memoryview], offset: int) -> bool:
        self.threads.add(threading.current_thread().name)
        return super().preadv_nowait(bufs, offset)

    def pwritev(self, bufs: list[memoryview], offset: int) -> int:
        self.threads.add(threading.current_thread().name)
        return super().pwritev(bufs, offset)


class Client:
    """A blocking client driven by the protocol core."""

    def __init__(self, path: Path, export: str = "disk") -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.core = ClientConnection(export)
        self.ready = self._until(lambda ev: isinstance(ev, ExportReady))

    def _until(self, done: Callable[[Any], bool]) -> Any:
        while True:
            for buf in self.core.data_to_send():
                self.sock.sendall(buf)
            for ev in self.core.events_received():
                if done(ev):
                    return ev
            data = self.sock.recv(1 << 20)
            if not data:
                self.core.receive_eof()
                raise EOFError("server closed the connection")
            self.core.receive_data(data)

    def call(
        self, command: Command, offset: int = 0, length: int = 0, data: bytes | None = None
    ) -> Reply:
        cookie = self.core.request(command, offset, length, data=data)
        reply: Reply = self._until(lambda ev: isinstance(ev, Reply) and ev.cookie == cookie)
        return reply

    def close(self) -> None:
        self.sock.close()


def serving(tmp_path: Path, body: Callable[[NbdServer], Awaitable[None]], **kwargs: Any) -> None:
    """Run *body* with a server listening on tmp_path/nbd.sock (its own asyncio loop)."""

    async def main() -> None:
        srv = NbdServer(**kwargs)
        srv.listen(UnixAddress(str(tmp_path / "nbd.sock")))
        task = asyncio.create_task(srv.serve())
        try:
            await body(srv)
        finally:
            srv.close()
            await task
            await asyncio.to_thread(srv.shutdown_pool)

    asyncio.run(main())


def test_requests_run_on_the_exports_iothread(tmp_path: Path) -> None:
    serving(tmp_path, lambda srv: iothread_session(srv, tmp_path))


async def iothread_session(server: NbdServer, tmp_path: Path) -> None:
    thread = IOThread("io0")
    try:
        node = Recording()
        server.add_export(NbdExport("disk", node, writable=True, loop=thread.loop))

        def session() -> None:
            c = Client(tmp_path / "nbd.sock")
            try:
                assert c.call(Command.READ, 0, 4096).data == bytes(4096)
                assert c.call(Command.WRITE, 0, data=b"x" * 100).error == 0
            finally:
                c.close()

        await asyncio.to_thread(session)
        # As the daemon does: the export goes (its connections drained) before its iothread.
        await server.remove_export("disk")
        # The read was served on the iothread's loop, the write on a pool thread.
        assert "iothread-io0" in node.threads
        assert "MainThread" not in node.threads
        assert any(name.startswith("nbd-io") for name in node.threads)
    finally:
        await asyncio.to_thread(thread.stop)


class CachedWrites(Recording):
    """A node whose writes land in a cache (on the caller's thread) unless told otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.cached = True
        self.data = bytearray(1 << 20)

    def pwritev_nowait(self, bufs: list[memoryview], offset: int) -> bool:
        if not self.cached:
            return False
        self.threads.add(f"cached on {threading.current_thread().name}")
        self.data[offset : offset + len(bufs[0])] = bufs[0]
        return True

    def pwritev(self, bufs: list[memoryview], offset: int) -> int:
        self.data[offset : offset + len(bufs[0])] = bufs[0]
        return super().pwritev(bufs, offset)

    def preadv_nowait(self, bufs: list[memoryview], offset: int) -> bool:
        bufs[0][:] = self.data[offset : offset + len(bufs[0])]
        return True


def test_cached_writes_run_on_the_loop(tmp_path: Path) -> None:
    node = CachedWrites()

    async def body(srv: NbdServer) -> None:
        srv.add_export(NbdExport("disk", node, writable=True))

        def session() -> None:
            c = Client(tmp_path / "nbd.sock")
            try:
                # Requests sent at once: each big payload's read brings the next header along.
                size = 128 << 10
                cookies = [
                    c.core.request(Command.WRITE, i * size, size, data=bytes([i + 1]) * size)
                    for i in range(3)
                ]
                cookies.append(c.core.request(Command.READ, 0, 3 * size))
                c.sock.sendall(b"".join(bytes(b) for b in c.core.data_to_send()))
                replies: dict[int, Reply] = {}

                def answered(ev: Any) -> bool:
                    if isinstance(ev, Reply):
                        replies[ev.cookie] = ev
                    return len(replies) == len(cookies)

                c._until(answered)
                assert all(r.error == 0 for r in replies.values())
                assert bytes(replies[cookies[3]].data) == b"".join(
                    bytes([i + 1]) * size for i in range(3)
                )
                assert node.threads == {"cached on MainThread"}  # none on the pool
                # One that would wait for the disk goes to the pool.
                node.cached = False
                assert c.call(Command.WRITE, 0, data=b"x" * 100).error == 0
                assert any(name.startswith("nbd-io") for name in node.threads)
            finally:
                c.close()

        await asyncio.to_thread(session)

    serving(tmp_path, body)


def test_file_block_status_keeps_the_last_data_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "img"
    with open(path, "wb") as f:
        f.truncate(2 << 20)
        f.write(b"d" * (1 << 20))
    node = open_file(str(path))
    seeks: list[int] = []
    real = os.lseek

    def lseek(fd: int, pos: int, how: int) -> int:
        seeks.append(how)
        return real(fd, pos, how)

    monkeypatch.setattr(nodes.os, "lseek", lseek)
    hole = STATUS_HOLE | STATUS_ZERO
    try:
        assert node.block_status(0, 4096) == [(4096, 0)]
        assert len(seeks) == 2  # SEEK_DATA, SEEK_HOLE
        # Reads through the run ask the file system nothing more (tmpfs walks the
        # file's pages for each SEEK_HOLE).
        for offset in range(4096, 1 << 20, 64 << 10):
            assert node.block_status(offset, 4096) == [(4096, 0)]
        assert len(seeks) == 2
        # Past the run, the file system is asked again.
        assert node.block_status((1 << 20) - 4096, 8192) == [(4096, 0), (4096, hole)]
        # A hole punched into the run is seen at once.
        node.discard(0, 64 << 10)
        assert node.block_status(0, 4096) == [(4096, hole)]
    finally:
        node.close()


def test_file_writes_into_the_page_cache_until_one_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "img"
    path.write_bytes(bytes(1 << 20))
    node = open_file(str(path))
    data = memoryview(b"a" * 4096)
    try:
        assert node.pwritev_nowait([data], 0)
        assert path.read_bytes()[:4096] == b"a" * 4096
        # A write that took half a second waited for the disk: the next ones go to a
        # thread for a second, then one is tried again (each pwritev_nowait reads the
        # clock before and, if it writes, around the write).
        clock = iter([100.0, 100.0, 100.5, 100.6, 101.6, 101.6, 101.6])
        monkeypatch.setattr(nodes, "monotonic", lambda: next(clock))
        assert node.pwritev_nowait([data], 4096)
        assert not node.pwritev_nowait([data], 8192)
        assert node.pwritev_nowait([data], 8192)
        assert path.read_bytes()[:12288] == b"a" * 12288
        monkeypatch.undo()
        # A raw window passes it on, except past its end.
        raw = RawNode("r", False, node, 4096, 4096)
        assert raw.pwritev_nowait([data], 0)
        assert not raw.pwritev_nowait([data], 4096)
    finally:
        node.close()
    # O_DIRECT writes go to the disk: always a thread.
    direct = FileNode("d", False, str(path), os.open(path, os.O_RDWR | os.O_DIRECT), False)
    try:
        assert not direct.pwritev_nowait([data], 0)
    finally:
        direct.close()


def test_a_unix_client_gets_a_send_buffer_that_holds_a_whole_reply(tmp_path: Path) -> None:
    ss = require_tool("ss")
    path = tmp_path / "nbd.sock"

    async def body(srv: NbdServer) -> None:
        srv.add_export(NbdExport("disk", NullNode("n", True, 4096, True)))
        client = await asyncio.to_thread(Client, path)
        try:
            cmd = [ss, "-xmH", "state", "established", "src", str(path)]
            shown = await asyncio.to_thread(subprocess.check_output, cmd, text=True)
        finally:
            client.close()
        # The server's end of the connection: its send buffer ("tb") takes a 256 KiB reply.
        (size,) = [int(n) for n in re.findall(r"\btb(\d+)", shown)]
        assert size > (256 << 10) + 32

    serving(tmp_path, body)


def test_max_connections_and_multi_conn(tmp_path: Path) -> None:
    async def body(srv: NbdServer) -> None:
        srv.add_export(NbdExport("disk", NullNode("n", True, 4096, True)))
        first = await asyncio.to_thread(Client, tmp_path / "nbd.sock")
        assert not first.ready.flags & TransmissionFlag.CAN_MULTI_CONN
        # The second client waits unserved until the first leaves.
        second = asyncio.create_task(asyncio.to_thread(Client, tmp_path / "nbd.sock"))
        await asyncio.sleep(0.3)
        assert not second.done()
        first.close()
        (await second).close()

    serving(tmp_path, body, max_connections=1)


def test_removing_an_export_disconnects_its_clients(tmp_path: Path) -> None:
    serving(tmp_path, lambda srv: removal(srv, tmp_path))


async def removal(server: NbdServer, tmp_path: Path) -> None:
    server.add_export(NbdExport("disk", NullNode("n", True, 4096, True)))
    c = await asyncio.to_thread(Client, tmp_path / "nbd.sock")
    try:
        assert len(server.exports["disk"].connections) == 1
        await server.remove_export("disk")
        with pytest.raises((EOFError, OSError)):
            await asyncio.to_thread(c.call, Command.READ, 0, 512)
    finally:
        c.close()


def test_handshake_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nbd_server, "HANDSHAKE_TIMEOUT", 0.2)
    serving(tmp_path, lambda srv: silent_client(tmp_path))


async def silent_client(tmp_path: Path) -> None:
    def client() -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(tmp_path / "nbd.sock"))
            assert len(s.recv(18)) == 18
            # No reply to the greeting: the server gives up.
            assert s.recv(100) == b""

    await asyncio.to_thread(client)


def test_node_allocation(tmp_path: Path) -> None:
    path = tmp_path / "img"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
        f.seek(256 << 10)
        f.write(b"d" * 4096)
    node = open_file(str(path), read_only=True)
    try:
        hole = STATUS_HOLE | STATUS_ZERO
        assert node.block_status(0, 1 << 20) == [
            (256 << 10, hole),
            (4096, 0),
            ((1 << 20) - (256 << 10) - 4096, hole),
        ]
        # raw shifts by its offset and clips to its window.
        raw = RawNode("r", True, node, 256 << 10, 8192)
        assert raw.block_status(0, 1 << 20) == [(4096, 0), (4096, hole)]
        buf = memoryview(bytearray(4096))
        assert raw.preadv_nowait([buf], 0) in (True, False)
        assert not raw.preadv_nowait([memoryview(bytearray(8192))], 4096)  # past the window
    finally:
        node.close()
    assert NullNode("n", True, 100, True).block_status(0, 100) == [(100, hole)]
    assert not NullNode("n", False, 100, True).pwritev_nowait([buf], 0)  # no cache: a thread
    assert NullNode("n", True, 100, False).block_status(0, 100) == [(100, STATUS_HOLE)]
    assert BlockNode("b", True).block_status(5, 10) == [(10, 0)]
