"""Console automation against a real QEMU TCG guest on its 16550 serial port.

QEMU serves the serial port on a unix socket; the console connects, waits for
busybox's shell prompt with ``Kernel panic`` as a failure pattern, and runs
commands that succeed and fail.  A console with ``reconnect`` follows the
guest through a restart of QEMU.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from iochannel.console import CommandFailedError, Console, ExpectFailure, Reconnect

from .conftest import require_tool
from .vhost_user.guest import build_initrd

pytestmark = pytest.mark.slow

SHELL = "PS1='guest# ' exec sh -i\n"


def _qemu(tmp_path: Path, sock: str, append: str = "") -> subprocess.Popen[bytes]:
    """A TCG guest whose serial port QEMU serves on the unix socket *sock*."""
    kernel, initrd = build_initrd(tmp_path, SHELL)
    qemu = subprocess.Popen(
        [
            require_tool("qemu-system-x86_64"),
            "-machine", "q35,accel=tcg", "-m", "256M",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", f"console=ttyS0 panic=-1 quiet {append}",
            "-display", "none", "-nodefaults", "-no-reboot",
            "-serial", f"unix:{sock},server=on,wait=off",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        assert qemu.poll() is None and time.monotonic() < deadline, "QEMU did not start"
        time.sleep(0.05)
    return qemu


def _stop(qemu: subprocess.Popen[bytes]) -> None:
    qemu.kill()
    qemu.wait()


@contextmanager
def _guest(tmp_path: Path, append: str = "") -> Iterator[Console[str]]:
    sock = str(tmp_path / "serial.sock")
    qemu = _qemu(tmp_path, sock, append)
    try:
        with Console.connect(f"unix:{sock}", linesep="\r", timeout=20) as console:
            yield console
    finally:
        _stop(qemu)


def test_boot_expect_prompt_and_run_commands(tmp_path: Path) -> None:
    with _guest(tmp_path) as c:
        c.expect_exact("guest# ", timeout=180, failures=["Kernel panic", "Call Trace"])
        assert c.run("echo hello from the guest") == ("hello from the guest\n", 0)
        output, status = c.run("ls /no/such/file")
        assert status == 1 and "No such file" in output
        assert c.run("test -d /proc") == ("", 0)
        assert c.run("(exit 5)") == ("", 5)
        # Output much longer than the 80-column terminal, wrapped by nothing but itself.
        long = c.run_check("seq 1 400 | tr '\\n' ' '")
        assert long.split() == [str(i) for i in range(1, 401)]
        with pytest.raises(CommandFailedError) as e:
            c.run_check("cat /proc/nonexistent")
        assert e.value.status == 1 and "nonexistent" in str(e.value.output)


def test_kernel_panic_is_a_failure_at_once(tmp_path: Path) -> None:
    with _guest(tmp_path, "rdinit=/no-such-init") as c:
        t0 = time.monotonic()
        with pytest.raises(ExpectFailure, match="'Kernel panic' appeared while waiting for"):
            c.expect_exact("guest# ", timeout=180, failures=["Kernel panic"])
        assert time.monotonic() - t0 < 170


def test_console_reconnects_to_a_restarted_guest(tmp_path: Path) -> None:
    sock = str(tmp_path / "serial.sock")
    qemus = [_qemu(tmp_path, sock)]
    try:
        with Console.connect(
            f"unix:{sock}", reconnect=Reconnect(delay=0.1), linesep="\r", timeout=180
        ) as c:
            c.expect_exact("guest# ", failures=["Kernel panic"])
            assert c.run("echo first boot", timeout=20) == ("first boot\n", 0)
            c.expect_exact("guest# ", timeout=20)  # the prompt after the command
            # The guest goes away and a new one boots: the expect below starts while no
            # QEMU is running and waits through the reconnection to the new one.
            _stop(qemus[0])
            restart = threading.Timer(1.0, lambda: qemus.append(_qemu(tmp_path, sock)))
            restart.start()
            try:
                c.expect_exact("guest# ", failures=["Kernel panic"])
            finally:
                restart.join()
            assert c.channel.connections == 2  # type: ignore[attr-defined]
            assert c.run("cat /proc/uptime | cut -d. -f1", timeout=20)[1] == 0
            assert c.run("(exit 3)", timeout=20) == ("", 3)
    finally:
        for qemu in qemus:
            _stop(qemu)
