"""A VM's console through the daemon when the VM restarts: the client chardev comes back at once.

The daemon connects to the VM's serial socket with ``reconnect-ms`` and relays
it to a viewer.  The VM exits, its socket is gone for a while, then the next
VM listens on the same path: what it prints must reach the viewer, the way
QEMU's fixed ``reconnect-ms`` interval would bring it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..conftest import require_tool
from .conftest import Daemon, wait_for

#: How long the socket is gone between two VMs (longer than a few doubled delays).
DOWNTIME = 1.5


class Viewer:
    """What a console viewer connected to the daemon has received."""

    def __init__(self, path: Path) -> None:
        wait_for(path.exists, "the viewer socket")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(0.05)
        self.data = b""

    def wait_for(self, text: bytes, timeout: float, count: int = 1) -> None:
        """Until *text* has arrived *count* times in all."""

        def arrived() -> bool:
            try:
                self.data += self.sock.recv(4096)
            except TimeoutError:
                pass
            return self.data.count(text) >= count

        wait_for(arrived, f"{text!r} x{count} at the viewer (got {self.data!r})", timeout)

    def close(self) -> None:
        self.sock.close()


def start_daemon(hostile_daemon: Callable[..., Daemon], vm: Path, view: Path) -> Daemon:
    return hostile_daemon(
        *("-chardev", f"socket,id=vm,path={vm},reconnect-ms=200"),
        *("-chardev", f"socket,id=view,path={view},server=on,wait=off"),
        *("--relay", "chardev=vm,peer=view"),
    )


def test_a_restarted_vm_is_relayed_again(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A socket we run plays QEMU: a boot, then restarts after some downtime, short boots.

    Each boot is shorter than the delays a doubling schedule would have reached,
    so only a schedule that starts over after each connection finds them all.
    """
    vm, view = tmp_path / "vm.sock", tmp_path / "view.sock"
    d = start_daemon(hostile_daemon, vm, view)
    viewer = Viewer(view)
    try:
        for boot in (b"boot-1", b"boot-2", b"boot-3", b"boot-4"):
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(vm))
            listener.listen(1)
            listener.settimeout(10)
            listening = time.monotonic()
            conn, _ = listener.accept()
            accepted = time.monotonic()
            conn.sendall(boot + b"\r\n")
            viewer.wait_for(boot, timeout=2.0)
            # At a fixed 200 ms interval the VM's socket is found within one interval.
            assert accepted - listening < 1.0, f"{boot!r}: connected after {accepted - listening}"
            d.wait_log("chardev 'vm': connected to unix:")
            conn.close()  # the VM exits: its socket goes away
            listener.close()
            os.unlink(vm)
            d.wait_log("went away")
            time.sleep(DOWNTIME)
        d.assert_alive()
        assert "Traceback" not in d.log()
    finally:
        viewer.close()


def test_a_restarted_qemu_is_relayed_again(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The same with QEMU itself: its monitor greets each connection on its socket."""
    qemu = require_tool("qemu-system-x86_64")
    vm, view = tmp_path / "vm.sock", tmp_path / "view.sock"
    d = start_daemon(hostile_daemon, vm, view)
    viewer = Viewer(view)
    banner = b"monitor - type 'help' for more information"
    try:
        for run in (1, 2):
            proc = subprocess.Popen(
                [
                    *(qemu, "-machine", "none", "-nodefaults", "-display", "none", "-S"),
                    *("-chardev", f"socket,id=mon,path={vm},server=on,wait=off"),
                    *("-mon", "chardev=mon,mode=readline"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                viewer.wait_for(banner, timeout=10.0, count=run)  # QEMU's start-up included
            finally:
                proc.terminate()
                proc.wait(10)
            d.wait_log("went away")
            time.sleep(DOWNTIME)
        d.assert_alive()
    finally:
        viewer.close()
