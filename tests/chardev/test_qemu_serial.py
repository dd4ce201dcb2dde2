"""A real QEMU guest's serial port on our socket chardev, QEMU as client and as server.

The guest (Debian's kernel plus a busybox initramfs, ``console=ttyS0``)
prints a marker, reads one line typed from our side, echoes it, prints a
numbered sequence and powers off.  We check that the line reached the guest
and that the guest's output arrived complete and in order.
"""

from __future__ import annotations

import asyncio
import asyncio.subprocess as aproc
from pathlib import Path

import pytest

from iochannel import Address, InetAddress, UnixAddress
from iochannel.chardev import ChardevEvent, Frontend
from iochannel.chardev.socket import SocketChardev

from ..conftest import require_tool
from ..vhost_user.guest import build_initrd
from .test_socket import run, until

LINES = 2000
SCRIPT = f"""\
echo SERIAL-READY
read -r line
echo "GOT:$line"
seq 1 {LINES}
echo SERIAL-DONE
"""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class Console:
    """A frontend that keeps everything the guest prints."""

    def __init__(self, chr: SocketChardev) -> None:
        self.fe = Frontend(chr)
        self.out = bytearray()
        self.events: list[ChardevEvent] = []
        self.fe.set_handlers(lambda: 4096, self.out.extend, self.events.append)

    def text(self) -> str:
        return self.out.decode(errors="replace").replace("\r\n", "\n")


async def start_qemu(kernel: Path, initrd: Path, chardev: str) -> aproc.Process:
    return await asyncio.create_subprocess_exec(
        require_tool("qemu-system-x86_64"),
        *("-machine", "q35,accel=tcg", "-m", "256M", "-nodefaults", "-display", "none"),
        *("-no-reboot", "-serial", "chardev:s0", "-chardev", f"socket,id=s0,{chardev}"),
        *("-kernel", str(kernel), "-initrd", str(initrd)),
        *("-append", "console=ttyS0 panic=-1 quiet"),
        stdin=aproc.DEVNULL,
        stdout=aproc.DEVNULL,
        stderr=aproc.PIPE,
    )


async def converse(console: Console, proc: aproc.Process) -> None:
    """Type a line once the guest is ready, then check everything it printed."""
    try:
        await until(lambda: "SERIAL-READY\n" in console.text(), "the guest's marker", 300)
        await console.fe.awrite_all(b"hello-from-the-host\n")
        await until(lambda: "SERIAL-DONE" in console.text(), "the guest's output", 300)
        assert await asyncio.wait_for(proc.wait(), 120) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stderr is not None
        err = await proc.stderr.read()
    text = console.text()
    assert "GOT:hello-from-the-host" in text, err.decode(errors="replace")
    body = text.split("GOT:hello-from-the-host\n", 1)[1].split("SERIAL-DONE", 1)[0]
    assert body.split() == [str(i) for i in range(1, LINES + 1)]
    await until(lambda: console.events[-1:] == [ChardevEvent.CLOSED], "CLOSED at power-off")
    assert console.events == [ChardevEvent.OPENED, ChardevEvent.CLOSED]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require_tool("qemu-system-x86_64")
    return build_initrd(tmp_path_factory.mktemp("guest"), SCRIPT)


def test_qemu_connects_to_our_tcp_server(guest: tuple[Path, Path]) -> None:
    async def main() -> None:
        addr: Address = InetAddress("127.0.0.1", "0")
        chr = SocketChardev("serial", addr, server=True, loop=asyncio.get_running_loop())
        chr.open()
        console = Console(chr)
        port = chr.listen_addresses[0]
        assert isinstance(port, InetAddress)
        proc = await start_qemu(*guest, f"host=127.0.0.1,port={port.port}")
        try:
            await converse(console, proc)
        finally:
            console.fe.deinit(delete=True)

    run(main)


def test_we_connect_to_qemus_unix_server(guest: tuple[Path, Path], tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "serial.sock")
        # wait=on: the guest starts only once we are connected, so no output is lost.
        proc = await start_qemu(*guest, f"path={path},server=on,wait=on")
        chr = SocketChardev(
            "serial", UnixAddress(path), reconnect_ms=50, loop=asyncio.get_running_loop()
        )
        console = Console(chr)
        chr.open()  # QEMU may not listen yet: retried with backoff
        try:
            await converse(console, proc)
        finally:
            console.fe.deinit(delete=True)

    run(main)
