"""SIGHUP with a configuration that cannot be applied: the running one stays whole."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from .conftest import Daemon, Qmp, wait_for


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.settimeout(10)
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def read_until(sock: socket.socket, want: bytes) -> bytes:
    got = b""
    while want not in got:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed; got {got!r}"
        got += chunk
    return got


def write_config(path: Path, tmp_path: Path, log: str, web_port: int, spare: str = "") -> None:
    """An echo program relayed to a hub of two viewers and a log file, a QMP monitor, the web.

    And a spare listening socket, with *spare* added to its options.
    """
    path.write_text(
        f"""
chardev = [
  "socket,id=spare,path={tmp_path}/spare.sock,server=on,wait=off{spare}",
  "command,id=vm,pty=off,cmd=cat",
  "socket,id=view1,path={tmp_path}/view1.sock,server=on,wait=off",
  "socket,id=view2,path={tmp_path}/view2.sock,server=on,wait=off",
  "file,id=log,path={log}",
  "hub,id=viewers,chardevs.0=view1,chardevs.1=view2,chardevs.2=log",
  "socket,id=qmp,path={tmp_path}/qmp.sock,server=on,wait=off",
]
relay = ["chardev=vm,peer=viewers"]
monitor = ["chardev=qmp"]
web = "hub=viewers,addr=127.0.0.1:{web_port}"
"""
    )


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Console:
    """Two viewers on the hub and a QMP client, all connected once and kept."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.qmp = QMPClient("test")
        self.loop.run_until_complete(self.qmp.connect(str(tmp_path / "qmp.sock")))
        self.views = [connect(tmp_path / "view1.sock"), connect(tmp_path / "view2.sock")]
        wait_for(lambda: self.frontend_open()["view2"], "both viewers to be attached")

    def execute(self, cmd: str) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(self.qmp.execute(cmd), 10))

    def frontend_open(self) -> dict[str, bool]:
        return {c["label"]: c["frontend-open"] for c in self.execute("query-chardev")}

    def echo(self, text: bytes) -> None:
        """*text* typed on the first viewer comes back, through cat, on both."""
        self.views[0].sendall(text)
        for view in self.views:
            read_until(view, text)

    def close(self) -> None:
        for view in self.views:
            view.close()
        self.loop.run_until_complete(self.qmp.disconnect())
        self.loop.close()


def reload(d: Daemon) -> str:
    """SIGHUP, then the one line that says how the reload went."""
    before = len(outcomes(d))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(outcomes(d)) > before, "the reload's outcome in the log")
    (line,) = outcomes(d)[before:]
    return line


def outcomes(d: Daemon) -> list[str]:
    return [
        line
        for line in d.log().splitlines()
        if "configuration reloaded" in line or "reload failed" in line
    ]


def start(hostile_daemon: Callable[..., Daemon], tmp_path: Path) -> tuple[Daemon, Path, int]:
    config, port = tmp_path / "c.toml", free_port()
    write_config(config, tmp_path, f"{tmp_path}/log1.txt", port)
    return hostile_daemon("--config", str(config)), config, port


def test_a_reload_that_fails_to_build_changes_nothing(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d, config, port = start(hostile_daemon, tmp_path)
    console = Console(tmp_path)
    try:
        console.echo(b"before\n")
        chardevs = console.execute("query-chardev")
        relays = console.execute("query-relays")
        write_config(config, tmp_path, f"{tmp_path}/missing/dir/log.txt", port)
        reason = reload(d)
        console.echo(b"after\n")  # same connections, through the same relay and hub
        assert console.execute("query-chardev") == chardevs
        assert [r["id"] for r in console.execute("query-relays")] == [r["id"] for r in relays]
        wait_for(lambda: b"after\n" in (tmp_path / "log1.txt").read_bytes(), "the log")
        assert listening(port)  # the web console too
        assert "reload failed, keeping the running configuration: " in reason
        assert "c.toml: chardev[4]: " in reason and "missing/dir/log.txt" in reason

        write_config(config, tmp_path, f"{tmp_path}/log2.txt", port)  # a good one still applies
        assert "configuration reloaded" in reload(d)
        wait_for(lambda: console.frontend_open()["viewers"], "the rebuilt relay")
        console.echo(b"again\n")  # the viewers' connections survived, the hub was rebuilt
        wait_for(lambda: b"again\n" in (tmp_path / "log2.txt").read_bytes(), "the new log")
    finally:
        console.close()


def test_a_changed_listener_is_not_built_while_the_old_one_holds_its_path(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d, config, port = start(hostile_daemon, tmp_path)
    # The spare socket changes (same path) and the log cannot be opened: the reload fails, and
    # the spare socket must still be the old one, listening on its path.
    write_config(config, tmp_path, f"{tmp_path}/missing/log.txt", port, spare=",telnet=on")
    assert "reload failed, keeping the running configuration" in reload(d)
    with connect(tmp_path / "spare.sock") as spare:
        spare.sendall(b"x")
        spare.settimeout(0.3)
        try:  # a telnet server would start with option negotiation
            assert spare.recv(100) == b""
        except TimeoutError:
            pass
    write_config(config, tmp_path, f"{tmp_path}/log1.txt", port, spare=",telnet=on")
    assert "configuration reloaded" in reload(d)
    with connect(tmp_path / "spare.sock") as spare:
        assert spare.recv(100).startswith(b"\xff")  # now the telnet one


def test_a_reload_that_fails_after_the_swap_is_rolled_back(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d, config, port = start(hostile_daemon, tmp_path)
    console = Console(tmp_path)
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        # The web console can only move to the busy port once the old one is closed.
        write_config(config, tmp_path, f"{tmp_path}/log1.txt", taken.getsockname()[1])
        reason = reload(d)
        wait_for(lambda: listening(port), "the web console back on its old port")
        console.echo(b"kept\n")
        assert set(console.frontend_open()) == {
            *("spare", "vm", "view1", "view2", "log", "viewers", "qmp")
        }
        assert "reload failed, restoring the running configuration: --web: " in reason
    finally:
        taken.close()
        console.close()


def test_a_reload_never_waits_for_a_client(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A new socket server with wait=on would stop the running daemon until a client came."""
    config, qmp_path = tmp_path / "c.toml", tmp_path / "qmp.sock"
    monitor = f'"socket,id=qmp,path={qmp_path},server=on,wait=off"'
    config.write_text(f'chardev = [{monitor}]\nmonitor = ["chardev=qmp"]\n')
    d = hostile_daemon("--config", str(config))
    waiting = f'"socket,id=w,path={tmp_path}/w.sock,server=on,wait=on"'
    config.write_text(f'chardev = [{monitor}, {waiting}]\nmonitor = ["chardev=qmp"]\n')
    reason = reload(d)
    assert "reload failed, keeping the running configuration: " in reason
    assert "'wait' cannot be true once the daemon runs" in reason
    qmp = Qmp(qmp_path)
    try:
        assert "qemu" in qmp.cmd("query-version")
        assert {c["label"] for c in qmp.cmd("query-chardev")} == {"qmp"}
    finally:
        qmp.close()
