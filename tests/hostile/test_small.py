"""Small robustness findings, each against the daemon as a process.

A telnet client that resets in a loop cannot flood the log; bad socket paths
and ring buffer sizes get one clear error (at start-up and over QMP), never a
traceback or an empty message; ``--check`` refuses what start-up refuses.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient

from iochannel.chardev.ratelimit import BURST, INTERVAL

from .conftest import Daemon


def iochannel(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run the daemon to completion (for configurations it must refuse)."""
    return subprocess.run(
        [sys.executable, "-m", "iochannel", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def qmp_errors(path: Path, commands: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The error message of each command, sent with the qemu.qmp client."""

    async def main() -> list[str]:
        client = QMPClient("test")
        await client.connect(str(path))
        errors = []
        try:
            for name, args in commands:
                try:
                    await client.execute(name, args)
                except ExecuteError as exc:
                    errors.append(exc.error.error.desc)
                else:
                    errors.append("")
        finally:
            await client.disconnect()
        return errors

    return asyncio.run(main())


def qmp_daemon(hostile_daemon: Callable[..., Daemon], tmp_path: Path) -> tuple[Daemon, Path]:
    qmp = tmp_path / "qmp.sock"
    d = hostile_daemon(
        *("-chardev", f"socket,id=qmp,path={qmp},server=on,wait=off"),
        *("--monitor", "chardev=qmp"),
    )
    return d, qmp


def test_telnet_clients_resetting_in_a_loop_cost_a_bounded_number_of_log_lines(
    hostile_daemon: Callable[..., Daemon],
) -> None:
    port = free_port()
    d = hostile_daemon(
        "-chardev",
        f"socket,id=tel,host=127.0.0.1,port={port},server=on,wait=off,telnet=on",
    )
    resets = 60
    started = time.monotonic()
    for _ in range(resets):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST instead of FIN: the greeting's write or the read fails
        time.sleep(0.01)  # one client at a time: a full backlog would delay the next SYN
    s = socket.create_connection(("127.0.0.1", port))  # served after all the others
    assert s.recv(3) == b"\xff\xfb\x01"  # IAC WILL ECHO, the greeting
    s.close()
    windows = 1 + int((time.monotonic() - started) // INTERVAL)
    d.assert_alive()
    lines = [line for line in d.log().splitlines() if "chardev 'tel'" in line]
    assert 1 <= len(lines) <= windows * (BURST + 1), "\n".join(lines)
    assert len(lines) < resets // 2


def test_a_socket_path_with_nul_is_one_clear_error(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    config = tmp_path / "nul.toml"
    config.write_text('chardev = ["socket,id=s,path=/tmp/a\\u0000b,server=on,wait=off"]\n')
    for argv in (("--config", str(config)), ("--check", "--config", str(config))):
        done = iochannel(*argv)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1 and "NUL" in done.stderr, done.stderr
        assert "path'" in done.stderr
    d, qmp = qmp_daemon(hostile_daemon, tmp_path)
    addr = {"type": "unix", "data": {"path": "/tmp/a\0b"}}
    [error] = qmp_errors(qmp, [("chardev-add", {"id": "s", "backend": _socket(addr)})])
    assert "path'" in error and "NUL" in error
    assert "Traceback" not in d.log()


def test_a_socket_in_a_missing_directory_is_one_clear_error(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    path = tmp_path / "no" / "such" / "dir" / "s.sock"
    done = iochannel("-chardev", f"socket,id=s,path={path},server=on,wait=off")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"'path': cannot create the socket {path}" in done.stderr
    assert f"directory {path.parent} does not exist" in done.stderr
    d, qmp = qmp_daemon(hostile_daemon, tmp_path)
    addr = {"type": "unix", "data": {"path": str(path)}}
    [error] = qmp_errors(qmp, [("chardev-add", {"id": "s", "backend": _socket(addr)})])
    assert f"directory {path.parent} does not exist" in error
    assert "Traceback" not in d.log()


def _socket(addr: dict[str, Any]) -> dict[str, Any]:
    return {"type": "socket", "data": {"addr": addr, "server": True}}


def test_a_huge_ringbuf_is_refused_with_a_message(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d, qmp = qmp_daemon(hostile_daemon, tmp_path)
    sizes = [1 << 40, 3, 1 << 31]
    errors = qmp_errors(
        qmp,
        [
            ("chardev-add", {"id": f"r{i}", "backend": {"type": "ringbuf", "data": {"size": n}}})
            for i, n in enumerate(sizes)
        ],
    )
    for n, error in zip(sizes, errors, strict=True):
        assert "Parameter 'backend.data.size'" in error
        assert "power of two of at most 1073741824" in error
        assert error.endswith(f"not {n}")
    assert "Traceback" not in d.log()
    done = iochannel("--check", "-chardev", "ringbuf,id=r,size=1T")
    assert done.returncode == 1 and "power of two of at most" in done.stderr


def test_check_refuses_parallel_as_start_up_does() -> None:
    argv = ("-chardev", "parallel,id=p,path=/dev/parport0")
    checked, started = iochannel("--check", *argv), iochannel(*argv)
    assert checked.returncode == started.returncode == 1
    assert checked.stderr == started.stderr
    assert "'parallel' is not a valid char driver name" in checked.stderr
    assert checked.stdout == ""
