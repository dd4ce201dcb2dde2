"""NbdServer in-process: iothread loops, connection limits, export removal, node allocation."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from iochannel import UnixAddress
from iochannel.block import open_file
from iochannel.block.iothread import IOThread
from iochannel.block.nodes import STATUS_HOLE, STATUS_ZERO, BlockNode, NullNode, RawNode
from iochannel.nbd import server as nbd_server
from iochannel.nbd.protocol import (
    ClientConnection,
    Command,
    ExportReady,
    Reply,
    TransmissionFlag,
)
from iochannel.nbd.server import NbdExport, NbdServer


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
    assert NullNode("n", True, 100, False).block_status(0, 100) == [(100, STATUS_HOLE)]
    assert BlockNode("b", True).block_status(5, 10) == [(10, 0)]
