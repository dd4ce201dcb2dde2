"""The daemon as a process, played against by hostile and unlucky peers.

Every test here starts the real ``iochannel`` daemon and plays the peer.  The
:func:`hostile_daemon` fixture starts it and, when the test ends, checks what one
bad peer must never cost: the daemon is still alive, its open fds are back to
what they were once it was ready, its RSS grew by less than the test allows, and
SIGTERM still shuts it down cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def wait_for(pred: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Daemon:
    """A running daemon: its pid, its log, and what it holds."""

    def __init__(self, tmp_path: Path, argv: list[str], rss_slack_mib: int) -> None:
        self.pidfile = tmp_path / "daemon.pid"
        self.log_path = tmp_path / "daemon.log"
        self.rss_slack_mib = rss_slack_mib
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iochannel", *argv, "--pidfile", str(self.pidfile)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            wait_for(lambda: self.pidfile.exists() or self.proc.poll() is not None, "the daemon")
            self.assert_alive()
        except BaseException:
            self.stop()
            raise
        self.fds_at_start = self.fd_count()
        self.rss_at_start = self.rss_kib()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the daemon printed so far (stdout and stderr)."""
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        wait_for(lambda: text in self.log(), f"{text!r} in the daemon's log", timeout)

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc/PID/status")

    def assert_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"the daemon exited with {code}; its log:\n{self.log()}")

    def assert_intact(self, timeout: float = 10.0) -> None:
        """Alive, back to its starting fds, RSS within the test's slack."""
        self.assert_alive()
        wait_for(
            lambda: self.fd_count() <= self.fds_at_start,
            f"the daemon's fds to return to {self.fds_at_start} "
            f"(now {self.fd_count()}: {sorted(os.listdir(f'/proc/{self.pid}/fd'))})",
            timeout,
        )
        grown = (self.rss_kib() - self.rss_at_start) // 1024
        assert grown < self.rss_slack_mib, f"the daemon's RSS grew by {grown} MiB"

    def stop(self) -> int | None:
        """SIGTERM; the exit status (None if it had to be killed)."""
        code: int | None = self.proc.poll()
        if code is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                code = None
        self._log.close()
        return code


@pytest.fixture
def hostile_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start the daemon with ``start(*argv, rss_slack_mib=64)``; checked intact at the end."""
    started: list[Daemon] = []

    def start(*argv: str, rss_slack_mib: int = 64) -> Daemon:
        d = Daemon(tmp_path, list(argv), rss_slack_mib)
        started.append(d)
        return d

    yield start
    failures = []
    for d in started:
        try:
            if d.proc.poll() is None:
                d.assert_intact()
        except AssertionError as exc:
            failures.append(str(exc))
        code = d.stop()
        if code != 0:
            failures.append(f"the daemon did not shut down cleanly (exit {code}):\n{d.log()}")
    if failures:
        pytest.fail("\n".join(failures))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class QmpConnection:
    """A raw QMP connection: the greeting read, whole reply lines in, bytes out."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        try:
            self.sock.settimeout(10)
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise
        self.file = self.sock.makefile("rb")
        greeting = self.reply()
        assert "QMP" in greeting, greeting

    def reply(self) -> Any:
        line = self.file.readline()
        assert line.endswith(b"\r\n"), f"connection ended: {line!r}"
        return json.loads(line)

    def replies(self, n: int) -> list[Any]:
        return [self.reply() for _ in range(n)]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Qmp(QmpConnection):
    """A minimal QMP client: one command at a time, events skipped."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self.cmd("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    def cmd(self, name: str, **args: Any) -> Any:
        self.sock.sendall(json.dumps({"execute": name, "arguments": args}).encode())
        while True:
            reply = self.reply()
            if "event" not in reply:
                return reply["return"]
