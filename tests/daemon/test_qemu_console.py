"""A real QEMU guest's serial console relayed by the daemon to a hub of viewers.

QEMU 7.2 (TCG) boots Debian's kernel with a busybox initramfs whose console
is ``ttyS0``, connected with ``-serial chardev:s0`` to the daemon's device
socket.  The daemon relays it to a hub of a unix socket, a telnet port and a
log file.  The guest prints a marker, runs the command typed into the unix
viewer, prints a numbered sequence and powers off: the telnet viewer, the
unix viewer and the log all get the lot, and the command's output proves it
ran in the guest.
"""

from __future__ import annotations

import asyncio
import asyncio.subprocess as aproc
import sys
from pathlib import Path

import pytest

from iochannel.daemon.cli import program

from ..chardev.test_socket import run, until
from ..conftest import require_tool
from ..vhost_user.guest import build_initrd

LINES = 500
SCRIPT = f"""\
echo CONSOLE-READY
read -r cmd
eval "$cmd"
seq 1 {LINES}
echo CONSOLE-DONE
"""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require_tool("qemu-system-x86_64")
    return build_initrd(tmp_path_factory.mktemp("guest"), SCRIPT)


class Viewer:
    """Everything a viewer connection receives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.out = bytearray()
        self.task = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            self.out += data

    def text(self) -> str:
        return self.out.decode(errors="replace").replace("\r\n", "\n")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
        await self.task


def check_output(text: str) -> None:
    assert "RAN-42" in text, text[-2000:]
    body = text.split("RAN-42\n", 1)[1].split("CONSOLE-DONE", 1)[0]
    assert body.split() == [str(i) for i in range(1, LINES + 1)]


def test_qemu_console_reaches_every_viewer(guest: tuple[Path, Path], tmp_path: Path) -> None:
    kernel, initrd = guest
    vm, view, log = tmp_path / "vm.sock", tmp_path / "view.sock", tmp_path / "console.log"

    async def main() -> None:
        daemon = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "iochannel"),
            *("-chardev", f"socket,id=vm,path={vm},server=on,wait=off"),
            *("-chardev", f"socket,id=unix,path={view},server=on,wait=off,connections=4"),
            "-chardev",
            "socket,id=tel,host=127.0.0.1,port=0,telnet=on,server=on,wait=off,connections=4",
            *("-chardev", f"file,id=log,path={log}"),
            *("-chardev", "hub,id=h,chardevs.0=unix,chardevs.1=tel,chardevs.2=log"),
            *("--relay", "chardev=vm,peer=h"),
            stdout=aproc.PIPE,
        )
        qemu = None
        try:
            assert daemon.stdout is not None
            port = None
            while port is None:
                line = (await asyncio.wait_for(daemon.stdout.readline(), 10)).decode()
                assert line, "the daemon exited"
                if line.strip().startswith(f"tel: {program()} console telnet://"):
                    port = int(line.strip().rsplit(":", 1)[-1])
            unix = Viewer(*await asyncio.open_unix_connection(str(view)))
            telnet = Viewer(*await asyncio.open_connection("127.0.0.1", port))
            qemu = await asyncio.create_subprocess_exec(
                require_tool("qemu-system-x86_64"),
                *("-machine", "q35,accel=tcg", "-m", "256M", "-nodefaults", "-display", "none"),
                *("-no-reboot", "-serial", "chardev:s0", "-chardev", f"socket,id=s0,path={vm}"),
                *("-kernel", str(kernel), "-initrd", str(initrd)),
                *("-append", "console=ttyS0 panic=-1 quiet"),
                stdin=aproc.DEVNULL,
                stdout=aproc.DEVNULL,
            )
            await until(lambda: "CONSOLE-READY\n" in unix.text(), "the guest's marker", 300)
            unix.writer.write(b"echo RAN-$((6*7))\n")
            await until(lambda: "CONSOLE-DONE" in telnet.text(), "the guest's output", 300)
            assert await asyncio.wait_for(qemu.wait(), 120) == 0
            await until(lambda: "CONSOLE-DONE" in unix.text(), "the unix viewer's output")
            await until(lambda: "CONSOLE-DONE" in log.read_text(errors="replace"), "the log")
            for text in (unix.text(), telnet.text(), log.read_text().replace("\r\n", "\n")):
                check_output(text)
            await unix.close()
            await telnet.close()
        finally:
            for proc in (qemu, daemon):
                if proc is not None and proc.returncode is None:
                    proc.terminate()
                    await proc.wait()
        assert daemon.returncode == 0

    run(main)
