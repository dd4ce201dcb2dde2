"""The Daemon in-process: reload keeps what did not change, web console wiring, start failures."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from iochannel.chardev import CommandChardev, HubChardev
from iochannel.daemon import ConfigError, Daemon, parse_args
from iochannel.daemon.cli import program

from ..chardev.test_socket import port_of, run, until


def chardevs(tmp_path: Path, second: str = "b") -> list[str]:
    return [
        *("-chardev", f"socket,id=a,path={tmp_path}/a.sock,server=on,wait=off"),
        *("-chardev", f"socket,id=b,path={tmp_path}/{second}.sock,server=on,wait=off"),
        *("-chardev", "ringbuf,id=dev"),
        *("-chardev", "hub,id=h,chardevs.0=b"),
        *("--relay", "chardev=dev,peer=h,id=r"),
        *("-chardev", "null,id=q"),
        *("--monitor", "chardev=q,id=m"),
    ]


def test_reload_rebuilds_what_changed_and_what_uses_it(tmp_path: Path) -> None:
    async def main() -> None:
        daemon = Daemon(parse_args(chardevs(tmp_path)))
        await daemon.start()
        reg = daemon.registry
        before = {q["label"]: reg.get(q["label"]) for q in reg.query()}
        relay, monitor = daemon.relays["r"], daemon.monitors["m"]
        await daemon.reload(parse_args(chardevs(tmp_path, second="b2")))
        after = {q["label"]: reg.get(q["label"]) for q in reg.query()}
        assert set(after) == set(before)
        same = {k for k in after if after[k] is before[k]}
        assert same == {"a", "dev", "q"}  # b changed; the hub over it and the relay followed
        assert not (tmp_path / "b.sock").exists() and (tmp_path / "b2.sock").exists()
        assert daemon.relays["r"] is not relay and daemon.monitors["m"] is monitor
        hub = reg.get("h")
        assert isinstance(hub, HubChardev) and [m.chardev.id for m in hub.members] == ["b"]
        # Removing items: the relay and the hub go, the rest stays.
        await daemon.reload(parse_args(chardevs(tmp_path, second="b2")[:6]))
        assert {q["label"] for q in reg.query()} == {"a", "b", "dev"}
        assert not daemon.relays and not daemon.monitors
        assert reg.get("a") is before["a"]
        await daemon.stop()
        assert not (tmp_path / "a.sock").exists()

    run(main)


def test_a_failed_start_leaves_nothing_behind(tmp_path: Path) -> None:
    async def main() -> None:
        argv = [
            *("-chardev", f"socket,id=a,path={tmp_path}/a.sock,server=on,wait=off"),
            # A directory where the file should be: only opening it finds out.
            *("-chardev", f"file,id=f,path={tmp_path}"),
        ]
        daemon = Daemon(parse_args(argv))
        with pytest.raises(ConfigError, match=r"^-chardev file,id=f,path=.*Is a directory"):
            await daemon.start()
        assert len(daemon.registry) == 0 and not (tmp_path / "a.sock").exists()

    run(main)


class FakeConsole:
    """Stands in for iochannel.web.WebConsole, recording how it was built."""

    made: list[FakeConsole] = []

    def __init__(self, hub: HubChardev, host: str, port: int, **kwargs: Any) -> None:
        self.hub, self.host, self.port, self.kwargs = hub, host, port, kwargs
        self.closed = False
        self.urls = {"rw": f"http://{host}:{port}/?token=rw"}
        FakeConsole.made.append(self)

    async def start(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_web_console_is_wired_to_the_hub_and_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = types.ModuleType("iochannel.web")
    fake.WebConsole = FakeConsole  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "iochannel.web", fake)
    argv = [
        *("-chardev", "command,id=sh,cmd=cat"),
        *("-chardev", "ringbuf,id=r"),
        *("-chardev", "hub,id=h,chardevs.0=r"),
        *("--relay", "chardev=sh,peer=h"),
        *("--web", "hub=h,addr=127.0.0.1:0,rw-token=secret"),
    ]

    async def main() -> None:
        daemon = Daemon(parse_args(argv))
        await daemon.start()
        (console,) = FakeConsole.made
        assert console.hub is daemon.registry.get("h") and (console.host, console.port) == (
            "127.0.0.1",
            0,
        )
        assert console.kwargs["rw_token"] == "secret" and console.kwargs["ro_token"] is None
        sh = daemon.registry.get("sh")
        assert isinstance(sh, CommandChardev)
        assert console.kwargs["on_resize"] == sh.resize
        assert "web (rw): http://127.0.0.1:0/?token=rw" in daemon.endpoints()
        await daemon.stop()
        assert console.closed

    run(main)


def test_hints_name_the_console_client(tmp_path: Path) -> None:
    argv = [
        *("-chardev", "socket,id=w,host=127.0.0.1,port=0,server=on,wait=off,websocket=on"),
        *("-chardev", f"socket,id=u,path={tmp_path}/u.sock,server=on,wait=off"),
        *("-chardev", "socket,id=t,host=127.0.0.1,port=0,server=on,wait=off,telnet=on"),
    ]

    async def main() -> None:
        daemon = Daemon(parse_args(argv))
        await daemon.start()
        try:
            port = port_of(daemon.registry.get("w"))
            command = program()  # what the hints name: this installation
            assert f"w: {command} console ws://127.0.0.1:{port}/" in daemon.endpoints()
            assert f"u: {command} console {tmp_path}/u.sock" in daemon.endpoints()
            port = port_of(daemon.registry.get("t"))
            assert f"t: {command} console telnet://127.0.0.1:{port}" in daemon.endpoints()
        finally:
            await daemon.stop()

    run(main)


def test_web_console_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "iochannel.web", None)
    argv = ["-chardev", "ringbuf,id=r", "-chardev", "hub,id=h,chardevs.0=r", "--web", "0"]

    async def main() -> None:
        daemon = Daemon(parse_args(argv))
        with pytest.raises(ConfigError, match="--web: the web console is not available"):
            await daemon.start()

    run(main)


def test_exports_run_on_the_daemons_loop(tmp_path: Path) -> None:
    image, sock = tmp_path / "disk.img", tmp_path / "vub.sock"
    image.write_bytes(bytes(1 << 20))
    argv = [
        *("--blockdev", f"driver=file,node-name=f,filename={image}"),
        "--export",
        f"type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={sock}",
        *("-chardev", "ringbuf,id=r"),
    ]

    async def main() -> None:
        daemon = Daemon(parse_args(argv))
        await daemon.start()
        assert sock.exists() and "r" in daemon.registry
        await daemon.stop()
        assert not sock.exists()

    run(main)


def test_the_command_routes_export_only_lines_to_the_export_tool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from iochannel import __main__ as entry
    from iochannel.vhost_user import cli

    seen: list[list[str]] = []
    monkeypatch.setattr(cli, "main", lambda args: seen.append(args) or 0)
    exports = ["--blockdev", "driver=file,node-name=f,filename=x", "--export=type=vhost-user-blk"]
    assert entry.main(exports) == 0
    assert seen == [exports]
    assert entry.main([*exports, "-chardev", "null,id=n", "--check"]) == 1  # the daemon's
    assert len(seen) == 1


def test_tls_socket_with_object_credentials(tmp_path: Path) -> None:
    import ssl

    import trustme

    from iochannel.chardev.socket import SocketChardev

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    (tmp_path / "ca-cert.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "server-cert.pem").write_bytes(cert.cert_chain_pems[0].bytes())
    (tmp_path / "server-key.pem").write_bytes(cert.private_key_pem.bytes())
    argv = [
        *("--object", f"tls-creds-x509,id=tls0,dir={tmp_path},endpoint=server,verify-peer=off"),
        "-chardev",
        "socket,id=s,host=127.0.0.1,port=0,server=on,wait=off,tls-creds=tls0",
        *("-chardev", "ringbuf,id=r", "--relay", "chardev=s,peer=r"),
    ]

    async def main() -> None:
        import asyncio

        daemon = Daemon(parse_args(argv))
        await daemon.start()
        chr = daemon.registry.get("s")
        assert isinstance(chr, SocketChardev)
        port = int(port_of(chr))
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        try:
            # What the TLS client sends is relayed into the ring buffer.
            writer.write(b"over tls")
            await writer.drain()
            await until(lambda: chr.stats.bytes_in >= 8, "the bytes through TLS")
            assert daemon.registry.ringbuf_read("r", 100) == "over tls"
        finally:
            writer.close()
            await daemon.stop()

    run(main)
