"""The QMP monitor on a chardev, driven by the qemu.qmp client library."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient

from iochannel import SocketChannel, UnixAddress
from iochannel.qmp import QMPError, QMPMonitor

from ..chardev.pair import PairChardev


async def serve_one(path: str, setup: Any) -> tuple[QMPClient, QMPMonitor]:
    """Listen on *path*, connect a qemu.qmp client, and put a monitor on the accepted socket."""
    listener = SocketChannel.listen(UnixAddress(path))
    client = QMPClient("test")
    connecting = asyncio.ensure_future(client.connect(path))
    conn = await listener.aaccept()
    listener.close()
    chr = PairChardev("mon0", conn)
    monitor = QMPMonitor(chr, version=(0, 1, 0), package="iochannel test")
    setup(monitor)
    chr.open()
    await asyncio.wait_for(connecting, 10)
    return client, monitor


def test_qemu_qmp_client_session(tmp_path: Any) -> None:
    quits: list[bool] = []

    def setup(mon: QMPMonitor) -> None:
        mon.register("echo", lambda args: args["value"], {"value": ("any", True)})

        async def slow(args: dict[str, Any]) -> str:
            await asyncio.sleep(0.01)
            return "done"

        mon.register("slow", slow, {})

        def fail(args: dict[str, Any]) -> None:
            raise QMPError("Device 'x' not found", "DeviceNotFound")

        mon.register("fail", fail, {})
        mon._on_quit = lambda: quits.append(True)

    async def main() -> None:
        client, monitor = await serve_one(os.path.join(tmp_path, "qmp.sock"), setup)
        assert client.greeting is not None
        version = await client.execute("query-version")
        assert version == {
            "qemu": {"major": 0, "minor": 1, "micro": 0},
            "package": "iochannel test",
        }
        names = {c["name"] for c in await client.execute("query-commands")}
        assert {"qmp_capabilities", "query-version", "quit", "echo", "fail"} <= names
        assert await client.execute("echo", {"value": [1, "two"]}) == [1, "two"]
        # Replies keep request order even when a handler awaits.
        results = await asyncio.gather(client.execute("slow"), client.execute("echo", {"value": 3}))
        assert results == ["done", 3]
        with pytest.raises(ExecuteError) as info:
            await client.execute("fail")
        assert info.value.error.error.class_ == "DeviceNotFound"
        with pytest.raises(ExecuteError, match="Parameter 'value' is missing"):
            await client.execute("echo")
        listener = EventListener()
        with client.listen(listener):
            monitor.emit("CHARDEV_OPENED", {"id": "c0"})
            event = await asyncio.wait_for(listener.get(), 5)
            assert event["event"] == "CHARDEV_OPENED" and event["data"] == {"id": "c0"}
        await client.execute("quit")
        await asyncio.sleep(0.01)
        assert quits == [True]
        await client.disconnect()
        monitor.close()
        monitor.chardev.close()

    asyncio.run(main())


def test_client_that_never_reads_is_disconnected(tmp_path: Any) -> None:
    async def main() -> None:
        path = os.path.join(tmp_path, "qmp.sock")
        listener = SocketChannel.listen(UnixAddress(path))
        raw = SocketChannel.connect(UnixAddress(path))
        conn = await listener.aaccept()
        listener.close()
        chr = PairChardev("mon0", conn)
        monitor = QMPMonitor(chr, max_output=64 * 1024)
        monitor.register("big", lambda args: "x" * 4096, {})
        chr.open()
        try:
            await raw.awrite_all(b'{"execute": "qmp_capabilities"}')
            for _ in range(400):
                if not chr.be_open:
                    break
                try:
                    await raw.awrite_all(b'{"execute": "big"}')
                except (BrokenPipeError, ConnectionResetError):
                    break  # the monitor hung up on us: what this test wants
                await asyncio.sleep(0)
            for _ in range(200):
                if not chr.be_open:
                    break
                await asyncio.sleep(0.01)
            assert not chr.be_open, "a client that never reads must be disconnected"
        finally:
            raw.close()
            monitor.close()
            chr.close()

    asyncio.run(main())
