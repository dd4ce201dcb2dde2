"""The daemon's QMP commands and events, driven by the qemu.qmp client library."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient

from iochannel import Shutdown, SocketChannel, UnixAddress
from iochannel.daemon import Daemon, parse_args

from ..chardev.test_socket import run, until


@asynccontextmanager
async def daemon_with_client(tmp_path: Path, *argv: str) -> AsyncIterator[tuple[Daemon, QMPClient]]:
    qmp = str(tmp_path / "qmp.sock")
    config = parse_args(
        [
            *("-chardev", f"socket,id=qmp,path={qmp},server=on,wait=off"),
            *("--monitor", "chardev=qmp"),
            *argv,
        ]
    )
    daemon = Daemon(config)
    await daemon.start()
    client = QMPClient("test")
    try:
        await client.connect(qmp)
        yield daemon, client
    finally:
        await client.disconnect()
        await daemon.stop()


async def error_of(
    client: QMPClient, cmd: str, args: dict[str, Any] | None = None
) -> tuple[str, str]:
    with pytest.raises(ExecuteError) as info:
        await client.execute(cmd, args)
    return info.value.error.error.class_, info.value.error.error.desc


def test_qemu_commands(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with_client(tmp_path) as (daemon, client):
            assert (await client.execute("query-version"))["package"] == "iochannel"
            names = {c["name"] for c in await client.execute("query-commands")}
            assert {
                "chardev-add",
                "chardev-change",
                "chardev-remove",
                "chardev-send-break",
                "query-chardev",
                "query-chardev-backends",
                "ringbuf-write",
                "ringbuf-read",
                "quit",
                "query-chardev-stats",
                "query-hub-members",
                "query-relays",
            } <= names
            backends = {b["name"] for b in await client.execute("query-chardev-backends")}
            assert {"socket", "ringbuf", "command", "hub", "pty"} <= backends
            ring = {"id": "r0", "backend": {"type": "ringbuf", "data": {"size": 1024}}}
            assert await client.execute("chardev-add", ring) == {}
            await client.execute("ringbuf-write", {"device": "r0", "data": "hello"})
            data = base64.b64encode(b"\x00\xff").decode()
            await client.execute(
                "ringbuf-write", {"device": "r0", "data": data, "format": "base64"}
            )
            assert await client.execute("ringbuf-read", {"device": "r0", "size": 5}) == "hello"
            got = await client.execute(
                "ringbuf-read", {"device": "r0", "size": 9, "format": "base64"}
            )
            assert base64.b64decode(got) == b"\x00\xff"
            labels = {c["label"]: c for c in await client.execute("query-chardev")}
            assert labels["qmp"]["frontend-open"] is True
            assert labels["r0"] == {
                "label": "r0",
                "filename": "ringbuf",
                "frontend-open": False,
                "open": True,
            }
            pty = await client.execute(
                "chardev-change", {"id": "r0", "backend": {"type": "pty", "data": {}}}
            )
            assert pty["pty"].startswith("/dev/pts/")
            await client.execute("chardev-send-break", {"id": "r0"})
            await client.execute("chardev-remove", {"id": "r0"})
            assert "r0" not in daemon.registry

    run(main)


def test_errors_have_qmp_classes_and_messages(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon_with_client(tmp_path, "-chardev", "null,id=n") as (_, client):
            assert await error_of(client, "chardev-remove", {"id": "zz"}) == (
                "GenericError",
                "Chardev 'zz' not found",
            )
            assert await error_of(client, "chardev-remove", {"id": "qmp"}) == (
                "GenericError",
                "Chardev 'qmp' is busy",
            )
            dup = {"id": "n", "backend": {"type": "null", "data": {}}}
            assert (await error_of(client, "chardev-add", dup))[1] == (
                "Chardev with id 'n' already exists"
            )
            bad = {"id": "x", "backend": {"type": "socket", "data": {}}}
            assert (await error_of(client, "chardev-add", bad))[1] == (
                "Parameter 'backend.data.addr' is missing"
            )
            nodrv = {"id": "x", "backend": {"type": "nope", "data": {}}}
            assert (
                "'nope' is not a valid char driver name"
                in (await error_of(client, "chardev-add", nodrv))[1]
            )
            assert await error_of(client, "chardev-send-break", {"id": "zz"}) == (
                "DeviceNotFound",
                "Device 'zz' not found",
            )
            assert await error_of(client, "ringbuf-read", {"device": "n", "size": 1}) == (
                "GenericError",
                "n is not a ringbuf device",
            )
            assert (await error_of(client, "ringbuf-read", {"device": "n"}))[1] == (
                "Parameter 'size' is missing"
            )
            assert (await error_of(client, "query-hub-members", {"hub": "n"}))[1] == (
                "n is not a hub device"
            )
            assert (await error_of(client, "no-such-command"))[0] == "CommandNotFound"
            assert (await client.execute("query-chardev-stats"))[0]["label"] == "qmp"

    run(main)


async def next_event(listener: EventListener, name: str) -> dict[str, Any]:
    """The next event *name* that is not about the QMP connection itself."""
    while True:
        event = await asyncio.wait_for(listener.get(), 5)
        if event["event"] == name and event["data"].get("id") != "qmp":
            return dict(event["data"])


def test_events_stats_and_quit(tmp_path: Path) -> None:
    async def main() -> None:
        dev, view = str(tmp_path / "dev.sock"), str(tmp_path / "view.sock")
        argv = [
            *("-chardev", f"socket,id=dev,path={dev},server=on,wait=off"),
            *("-chardev", f"socket,id=view,path={view},server=on,wait=off"),
            *("-chardev", "hub,id=h,chardevs.0=view"),
            *("--relay", "chardev=dev,peer=h,id=r"),
        ]
        async with daemon_with_client(tmp_path, *argv) as (daemon, client):
            listener = EventListener()
            with client.listen(listener):
                guest = SocketChannel.connect(UnixAddress(dev))
                assert await next_event(listener, "CHARDEV_OPENED") == {"id": "dev"}
                viewer = SocketChannel.connect(UnixAddress(view))
                assert await next_event(listener, "HUB_MEMBER_JOINED") == {
                    "hub": "h",
                    "member": "view",
                }
                await guest.awrite_all(b"0123456789")
                assert await viewer.aread_all(10) == b"0123456789"
                viewer.close()
                assert await next_event(listener, "HUB_MEMBER_LEFT") == {
                    "hub": "h",
                    "member": "view",
                }
                guest.shutdown(Shutdown.WRITE)
                assert await next_event(listener, "CHARDEV_CLOSED") == {"id": "dev"}
            members = await client.execute("query-hub-members", {"hub": "h"})
            assert members == [
                {
                    "hub": "h",
                    "member": "view",
                    "mode": "block",
                    "limit": 65536,
                    "open": False,
                    "bytes": 10,
                    "dropped": 0,
                    "disconnects": 0,
                    "queued": 0,
                }
            ]
            stats = {s["label"]: s for s in await client.execute("query-chardev-stats")}
            assert stats["dev"]["bytes-in"] == 10 and stats["dev"]["reconnects"] == 0
            assert stats["view"]["bytes-out"] == 10 and not stats["view"]["open"]
            guest.close()
            relays = await client.execute("query-relays")
            assert relays[0]["bytes-forward"] == 10 and relays[0]["id"] == "r"
            await client.execute("quit")
            await asyncio.wait_for(daemon.stopped.wait(), 5)

    run(main)


def test_flapping_connection_reports_both_events(tmp_path: Path) -> None:
    async def main() -> None:
        dev = str(tmp_path / "dev.sock")
        argv = [
            *("-chardev", f"socket,id=dev,path={dev},server=on,wait=off"),
            *("-chardev", "null,id=n"),
            *("--relay", "chardev=dev,peer=n"),
        ]
        async with daemon_with_client(tmp_path, *argv) as (daemon, client):
            chr = daemon.registry.get("dev")
            assert chr is not None
            listener = EventListener()
            with client.listen(listener):
                # Two connections that come and go faster than the events are polled.
                for n in (1, 2):
                    SocketChannel.connect(UnixAddress(dev)).close()
                    await until(lambda n=n: chr.stats.closes == n, "the connection to end")
                events = [
                    (name, await next_event(listener, name))
                    for name in ("CHARDEV_OPENED", "CHARDEV_CLOSED") * 2
                ]
            assert (
                events
                == [
                    ("CHARDEV_OPENED", {"id": "dev"}),
                    ("CHARDEV_CLOSED", {"id": "dev"}),
                ]
                * 2
            )

    run(main)
