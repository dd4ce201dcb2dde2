"""Consoles that follow a reconnecting socket, and consoles attached to in-process chardevs.

socat plays a console server that restarts: the console reconnects, and an
``expect`` in progress waits across the reconnection.  A socket chardev
server in this process plays the daemon's device: a console attached to it as
its frontend sees what its client (a stand-in for QEMU) sends, across that
client's reconnection, and ends when the chardev is closed.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from iochannel import UnixAddress
from iochannel.chardev import ChardevBusyError, SocketChardev
from iochannel.console import AsyncConsole, Console, ExpectEOF, ExpectTimeout, Reconnect
from iochannel.console._attach import LoopThread, on_loop

from .conftest import require_tool


class Socat:
    """A unix-socket console server: says ``BOOT-n`` and a prompt, then echoes lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.boots = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.boots += 1
        script = self.path.with_name(f"boot{self.boots}.sh")
        script.write_text(f"printf 'BOOT-{self.boots}\\r\\nlogin: '; exec cat\n")
        self.proc = subprocess.Popen(
            [require_tool("socat"), f"UNIX-LISTEN:{self.path},unlink-early", f"EXEC:sh {script}"],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.path.exists():
            assert time.monotonic() < deadline, "socat did not listen"
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self.path.unlink(missing_ok=True)


@contextmanager
def socat_server(tmp_path: Path) -> Iterator[Socat]:
    server = Socat(tmp_path / "console.sock")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_expect_waits_across_a_server_restart(tmp_path: Path) -> None:
    with (
        socat_server(tmp_path) as server,
        Console.connect(f"unix:{server.path}", reconnect=Reconnect(delay=0.05), timeout=10) as c,
    ):
        c.expect_exact("login: ")
        assert c.before == "BOOT-1\r\n"
        c.sendline("root")
        c.expect_exact("root\n")
        server.stop()
        # While nobody serves the socket, a send fails rather than waiting for the next one.
        deadline = time.monotonic() + 5
        with pytest.raises(ConnectionError, match="not connected"):
            while time.monotonic() < deadline:
                c.sendline("lost")
                time.sleep(0.01)
        restart = threading.Timer(0.3, server.start)
        restart.start()
        try:
            t0 = time.monotonic()
            m = c.expect(r"BOOT-(\d)\r\nlogin: ")
            assert m.match is not None and m.match.group(1) == "2"
            assert time.monotonic() - t0 >= 0.25
        finally:
            restart.join()
        assert c.channel.connections == 2  # type: ignore[attr-defined]
        c.sendline("again")
        c.expect_exact("again\n")


def test_reconnect_deadline_ends_the_wait_with_a_clear_error(tmp_path: Path) -> None:
    with socat_server(tmp_path) as server:
        c = Console.connect(
            str(server.path), reconnect=Reconnect(delay=0.05, deadline=0.5), timeout=10
        )
        with c:
            c.expect_exact("login: ")
            server.stop()
            t0 = time.monotonic()
            with pytest.raises(
                ExpectEOF,
                match=r"end of stream on .*console.sock \(no connection for 0.5 s\) "
                r"while waiting for 'never'",
            ):
                c.expect_exact("never")
            assert time.monotonic() - t0 < 3


def test_without_reconnect_a_lost_server_is_the_end_of_the_stream(tmp_path: Path) -> None:
    with socat_server(tmp_path) as server, Console.connect(str(server.path), timeout=10) as c:
        c.expect_exact("login: ")
        server.stop()
        with pytest.raises(ExpectEOF):
            c.expect_exact("never")


def test_async_console_reconnects_on_its_own_loop(tmp_path: Path) -> None:
    async def main(server: Socat) -> None:
        c = await AsyncConsole.connect(f"unix:{server.path}", reconnect=0.05, timeout=10)
        async with c:
            await c.expect_exact("login: ")
            server.stop()
            asyncio.get_running_loop().call_later(0.2, server.start)
            m = await c.expect(r"BOOT-(\d)")
            assert m.match is not None and m.match.group(1) == "2"
            await c.expect_exact("login: ")

    with socat_server(tmp_path) as server:
        asyncio.run(main(server))


def test_flood_through_a_reconnecting_console_is_bounded_and_times_out(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "flood.sock"))
    listener.listen()
    stop = threading.Event()

    def flood() -> None:
        conn, _ = listener.accept()
        block = (b"no match here " * 300)[:4096]
        with conn:
            try:
                for _ in range((100 << 20) // len(block)):
                    if stop.is_set():
                        break
                    conn.sendall(block)
            except OSError:
                pass  # the console went away

    server = threading.Thread(target=flood)
    server.start()
    tracemalloc.start()
    try:
        with Console.connect(str(tmp_path / "flood.sock"), reconnect=True) as c:
            t0 = time.monotonic()
            with pytest.raises(ExpectTimeout, match=r"timed out after 1\.5 s"):
                c.expect_exact("PROMPT# ", timeout=1.5)
            elapsed = time.monotonic() - t0
            _, peak = tracemalloc.get_traced_memory()
            assert c.expecter.received > 1 << 20
    finally:
        tracemalloc.stop()
        stop.set()
        server.join()
        listener.close()
    assert 1.5 <= elapsed < 2.5
    assert peak < 8 << 20, f"peak {peak} bytes while flooded"


def test_reconnect_options_are_checked() -> None:
    with pytest.raises(ValueError, match="reconnect delay=0"):
        Reconnect(delay=0)
    with pytest.raises(ValueError, match=r"max_delay=0\.1: must be at least delay=1"):
        Reconnect(delay=1, max_delay=0.1)
    with pytest.raises(ValueError, match="reconnect: not available for ws://"):
        Console.connect("ws://127.0.0.1:1/", reconnect=True)


# ---- a chardev in this process ------------------------------------------------


def _device(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> tuple[SocketChardev, Path]:
    """A socket chardev server, as the daemon has for a VM's serial port."""
    path = tmp_path / "vm.sock"
    chardev = SocketChardev("vm", UnixAddress(str(path)), server=True, loop=loop)
    on_loop(loop, chardev.open)
    return chardev, path


def _vm(path: Path) -> socket.socket:
    vm = socket.socket(socket.AF_UNIX)
    vm.settimeout(10)
    vm.connect(str(path))
    return vm


def test_blocking_console_attached_to_a_chardev_follows_its_connections(tmp_path: Path) -> None:
    loop = LoopThread()
    try:
        chardev, path = _device(tmp_path, loop.loop)
        with Console.attach(chardev, timeout=10) as c:
            vm = _vm(path)
            vm.sendall(b"guest# ")
            c.expect_exact("guest# ")
            c.sendline("uname")
            assert vm.recv(100) == b"uname\n"
            vm.close()  # QEMU restarts: the chardev closes, then opens again
            deadline = time.monotonic() + 10
            while chardev.be_open:
                assert time.monotonic() < deadline, "the chardev did not see the guest go"
                time.sleep(0.01)
            with pytest.raises(ConnectionError, match="'vm' is not connected"):
                c.sendline("typed while the guest is away")
            again: list[socket.socket] = []

            def reboot() -> None:
                again.append(_vm(path))
                again[0].sendall(b"booted again\n")

            restart = threading.Timer(0.2, reboot)
            restart.start()
            c.expect_exact("booted again")  # waits across the guest's reconnection
            restart.join()
            closing = threading.Timer(0.1, lambda: on_loop(loop.loop, chardev.close))
            closing.start()
            with pytest.raises(ExpectEOF, match="end of stream on chardev 'vm'"):
                c.expect_exact("never")
            closing.join()
            again[0].close()
        assert not chardev.busy  # closing the console detached it
    finally:
        on_loop(loop.loop, chardev.close)
        loop.stop()


def test_async_console_as_a_frontend_on_the_chardev_loop(tmp_path: Path) -> None:
    async def main() -> None:
        chardev, path = _device(tmp_path, asyncio.get_running_loop())
        try:
            async with AsyncConsole(chardev, encoding=None, timeout=10) as c:
                _, writer = await asyncio.open_unix_connection(str(path))
                writer.write(b"\x00binary\xff# ")
                m = await c.expect(rb"# ")
                assert m.before == b"\x00binary\xff"
                writer.close()
                await writer.wait_closed()
            assert not chardev.busy and not chardev.closed  # detached, not closed
        finally:
            chardev.close()

    asyncio.run(main())


def test_a_busy_chardev_is_refused(tmp_path: Path) -> None:
    loop = LoopThread()
    try:
        chardev, _ = _device(tmp_path, loop.loop)
        with Console.attach(chardev), pytest.raises(ChardevBusyError, match="already in use"):
            Console.attach(chardev)
    finally:
        on_loop(loop.loop, chardev.close)
        loop.stop()
