"""A QEMU TCG guest driven through the daemon's hub, as docs/daemon.md sets it up.

QEMU's serial port connects to the daemon's device socket; the daemon relays
it to a hub with a unix socket and a telnet port.  A console on the unix
viewer boots the guest to busybox's prompt (``Kernel panic`` is a failure),
runs commands that succeed and fail, and checks their exit statuses and
output, while a console on the telnet viewer sees the same output.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from iochannel.console import CommandFailedError, Console
from iochannel.daemon.cli import program

from ..conftest import require_tool
from ..vhost_user.guest import build_initrd
from .conftest import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SHELL = "PS1='guest# ' exec sh -i\n"


def test_guest_through_the_hub_with_a_second_viewer(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    qemu_binary = require_tool("qemu-system-x86_64")
    kernel, initrd = build_initrd(tmp_path, SHELL)
    vm, view = tmp_path / "vm.sock", tmp_path / "view.sock"
    d = hostile_daemon(
        *("-chardev", f"socket,id=vm,path={vm},server=on,wait=off"),
        *("-chardev", f"socket,id=view,path={view},server=on,wait=off,connections=4"),
        "-chardev",
        "socket,id=tel,host=127.0.0.1,port=0,telnet=on,server=on,wait=off,connections=4",
        *("-chardev", "hub,id=viewers,chardevs.0=view,chardevs.1=tel"),
        *("--relay", "chardev=vm,peer=viewers"),
    )
    d.wait_log(f"tel: {program()} console telnet://")
    telnet = re.search(rf"tel: {re.escape(program())} console (telnet://\S+)", d.log())
    assert telnet, d.log()
    # The viewers come first: QEMU's serial output is not replayed to late joiners.
    with (
        Console.connect(str(view), linesep="\r", timeout=20) as vm_console,
        Console.connect(telnet[1], timeout=20) as watcher,
    ):
        qemu = subprocess.Popen(
            [
                qemu_binary,
                *("-machine", "q35,accel=tcg", "-m", "256M", "-nodefaults", "-display", "none"),
                *("-no-reboot", "-serial", "chardev:s0", "-chardev", f"socket,id=s0,path={vm}"),
                *("-kernel", str(kernel), "-initrd", str(initrd)),
                *("-append", "console=ttyS0 panic=-1 quiet"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            vm_console.expect_exact("guest# ", timeout=180, failures=["Kernel panic"])
            assert vm_console.run("echo hello from $((6 * 7))") == ("hello from 42\n", 0)
            output, status = vm_console.run("ls /no/such/file")
            assert status == 1 and "No such file" in output
            assert vm_console.run("(exit 5)") == ("", 5)
            with pytest.raises(CommandFailedError) as e:
                vm_console.run_check("cat /proc/nonexistent")
            assert e.value.status == 1
            listing = vm_console.run_check("seq 1 300 | tr '\\n' ' '")
            assert listing.split() == [str(i) for i in range(1, 301)]
            # The second viewer saw the same session: the prompt, the output, in order.
            watcher.expect_exact("guest# ", timeout=10)
            watcher.expect_exact("hello from 42", timeout=10)
            watcher.expect_exact("No such file", timeout=10)
            m = watcher.expect(r"1 2 3 .* 299 300 ", timeout=10)
            assert m.after.split() == [str(i) for i in range(1, 301)]
        finally:
            qemu.kill()
            qemu.wait()
