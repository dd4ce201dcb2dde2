"""The fd backends (file, pipe, pty, stdio, serial, udp) and hot-swap, ported from test-char."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

import pytest

from iochannel.chardev import ChardevClosedError, ChardevError, ChardevEvent, Frontend
from iochannel.chardev.pty import PtyChardev
from iochannel.chardev.registry import ChardevRegistry

from .fehandler import FeHandler

#: Upper bound on waiting for an event that must come (not a timing assertion).
PATIENCE = 10.0


async def until(cond: Callable[[], bool]) -> None:
    """Let the loop run until *cond* holds; fail after :data:`PATIENCE` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.01)


async def read_fd(fd: int, size: int) -> bytes:
    """Read exactly *size* bytes from non-blocking *fd*, letting the loop run."""
    got = b""

    def more() -> bool:
        nonlocal got
        try:
            got += os.read(fd, size - len(got))
        except BlockingIOError:
            pass
        return len(got) >= size

    await until(more)
    return got


# ---- file ------------------------------------------------------------------------


def test_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ChardevRegistry() as reg:
        fe = Frontend(reg.add(f"file,id=label-file,path={out}"))
        assert fe.write_all(b"hello!") == 6
        fe.deinit()
    assert out.read_bytes() == b"hello!"


def test_file_append(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"old,")
    with ChardevRegistry() as reg:
        reg.add(f"file,id=a,path={out},append=on").write(b"new")
    assert out.read_bytes() == b"old,new"
    with ChardevRegistry() as reg:
        reg.add(f"file,id=t,path={out}").write(b"trunc")
    assert out.read_bytes() == b"trunc"


def test_file_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)
    os.write(writer, b"fifo-in\0")

    async def main() -> None:
        with ChardevRegistry() as reg:
            chr = reg.add(f"file,id=label-file,path={tmp_path / 'out'},input-path={fifo}")
            h = FeHandler(Frontend(chr))
            h.register()
            assert h.events == [ChardevEvent.OPENED]
            with pytest.raises(ChardevError, match="not found"):
                reg.send_break("label-foo")
            assert h.events == [ChardevEvent.OPENED]
            reg.send_break("label-file")
            assert h.last_event == ChardevEvent.BREAK  # at once, not from the loop
            await until(lambda: len(h.read_buf) == 8)
            assert h.read_buf == b"fifo-in\0"
            h.fe.deinit()

    try:
        asyncio.run(main())
    finally:
        os.close(writer)


def test_file_input_end_closes(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.write_bytes(b"abc")

    async def main() -> None:
        with ChardevRegistry() as reg:
            chr = reg.add(f"file,id=f,path={tmp_path / 'out'},input-path={inp}")
            h = FeHandler(Frontend(chr))
            h.register()
            await until(lambda: h.last_event == ChardevEvent.CLOSED)
            assert h.read_buf == b"abc" and not h.mismatch
            with pytest.raises(ChardevClosedError):  # the file default: error
                chr.write(b"late")
            h.fe.deinit()

    asyncio.run(main())


# ---- pipe ------------------------------------------------------------------------


def test_pipe(tmp_path: Path) -> None:
    base = tmp_path / "pipe"
    os.mkfifo(f"{base}.in")
    os.mkfifo(f"{base}.out")

    async def main() -> None:
        with ChardevRegistry() as reg:
            h = FeHandler(Frontend(reg.add(f"pipe,id=pipe,path={base}")))
            h.register()
            assert h.fe.write(b"pipe-out\0") == 9
            out = os.open(f"{base}.out", os.O_RDONLY | os.O_NONBLOCK)
            inp = os.open(f"{base}.in", os.O_WRONLY | os.O_NONBLOCK)
            try:
                assert await read_fd(out, 9) == b"pipe-out\0"
                os.write(inp, b"pipe-in\0")
                await until(lambda: len(h.read_buf) == 8)
                assert h.read_buf == b"pipe-in\0"
            finally:
                os.close(out)
                os.close(inp)
            h.fe.deinit()

    asyncio.run(main())


def test_pipe_single_fifo_for_both_directions(tmp_path: Path) -> None:
    fifo = tmp_path / "both"
    os.mkfifo(fifo)
    with ChardevRegistry() as reg:
        chr = reg.new("p", f"pipe:{fifo}")
        assert chr.input_channel is chr.output_channel  # type: ignore[attr-defined]
        assert chr.write(b"x") == 1


# ---- pty --------------------------------------------------------------------------


def test_pty_no_output_lost_and_reconnects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "pty-link"

    async def main() -> None:
        with ChardevRegistry() as reg:
            chr = reg.add(f"pty,id=label-pty,path={link}")
            assert isinstance(chr, PtyChardev) and chr.pty_path is not None
            assert os.readlink(link) == chr.pty_path
            assert reg.query()[0]["filename"] == f"pty:{chr.pty_path}"
            h = FeHandler(Frontend(chr))
            h.register()
            assert not chr.be_open and h.events == []
            # Written before any reader: kept, not dropped.
            assert h.fe.write(b"boot banner\n") == 12
            slave = os.open(chr.pty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                await until(lambda: h.events == [ChardevEvent.OPENED])
                assert await read_fd(slave, 12) == b"boot banner\n"
                os.write(slave, b"typed")
                await until(lambda: h.read_buf == b"typed")
            finally:
                os.close(slave)
            await until(lambda: h.last_event == ChardevEvent.CLOSED)
            assert h.fe.write(b"again") == 5
            slave = os.open(chr.pty_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                await until(lambda: len(h.events) == 3)
                assert await read_fd(slave, 5) == b"again"
            finally:
                os.close(slave)
            assert h.events == [ChardevEvent.OPENED, ChardevEvent.CLOSED, ChardevEvent.OPENED]
            assert not h.mismatch
            h.fe.deinit()
        assert not link.exists()
        err = capsys.readouterr().err
        assert f"char device redirected to {chr.pty_path} (label label-pty)" in err

    asyncio.run(main())


def test_pty_reader_leaving_is_noticed_while_input_is_paused() -> None:
    async def main() -> None:
        with ChardevRegistry() as reg:
            chr = reg.add("pty,id=p")
            assert isinstance(chr, PtyChardev) and chr.pty_path is not None
            h = FeHandler(Frontend(chr), capacity=0)  # never reads: no read watch
            h.register()
            slave = os.open(chr.pty_path, os.O_RDWR | os.O_NOCTTY)
            await until(lambda: h.events == [ChardevEvent.OPENED])
            os.close(slave)
            await until(lambda: h.last_event == ChardevEvent.CLOSED)
            assert chr.pending_bytes == 0 and h.fe.write(b"kept") == 4
            assert chr.pending_bytes == 4
            h.fe.deinit()

    asyncio.run(main())


def test_pty_symlink_in_the_way_fails_cleanly(tmp_path: Path) -> None:
    link = tmp_path / "taken"
    link.write_bytes(b"")

    async def main() -> None:
        with ChardevRegistry() as reg:
            with pytest.raises(FileExistsError):
                reg.add(f"pty,id=p,path={link}")
            assert "p" not in reg

    asyncio.run(main())
    assert link.read_bytes() == b""


# ---- serial ----------------------------------------------------------------------


def test_serial_dev_null() -> None:
    with ChardevRegistry() as reg:
        chr = reg.add("serial,id=serial-id,path=/dev/null")
        assert chr.filename == "serial:/dev/null"
        with pytest.raises(ChardevError, match="set-params"):
            chr.ioctl("set-params", {"speed": 9600})
        assert reg.new("s2", "/dev/null").type_name == "serial"


def test_serial_controls_on_a_pty() -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    os.close(slave)

    async def main() -> None:
        with ChardevRegistry() as reg:
            chr = reg.add(f"serial,id=s,path={path}")
            fd = chr.input_channel.fileno()  # type: ignore[attr-defined]
            attrs = termios.tcgetattr(fd)
            assert attrs[4] == termios.B115200 and attrs[2] & termios.CSIZE == termios.CS8
            assert not attrs[3] & termios.ICANON
            chr.ioctl("set-params", {"speed": 9600, "parity": "E", "data-bits": 7, "stop-bits": 2})
            attrs = termios.tcgetattr(fd)
            # A pty keeps the speed and stop bits; it forces 8 bits without parity.
            assert attrs[4] == termios.B9600 and attrs[2] & termios.CSTOPB
            for bad, message in (
                ({"parity": "X"}, "parity"),
                ({"data-bits": 9}, "data-bits"),
                ({"stop-bits": 3}, "stop-bits"),
                ({"speed": 0}, "speed"),
                ({"baud": 1}, "unknown key 'baud'"),
            ):
                with pytest.raises(ChardevError, match=message):
                    chr.ioctl("set-params", bad)
            assert chr.ioctl("set-break", True) is None
            # A pty has no modem lines: the refusal names the control.
            with pytest.raises(ChardevError, match="get-tiocm"):
                chr.ioctl("get-tiocm")
            with pytest.raises(ChardevError, match="unknown modem line 'XYZ'"):
                chr.ioctl("set-tiocm", {"XYZ"})
            with pytest.raises(ChardevError, match="has no 'frobnicate' control"):
                chr.ioctl("frobnicate")
            h = FeHandler(Frontend(chr))
            h.register()
            assert h.fe.write(b"to-line") == 7
            os.set_blocking(master, False)
            assert await read_fd(master, 7) == b"to-line"
            os.write(master, b"from-line")
            await until(lambda: h.read_buf == b"from-line")
            h.fe.deinit()

    try:
        asyncio.run(main())
    finally:
        os.close(master)


# ---- udp and hot-swap ------------------------------------------------------------------


async def udp_round_trip(h: FeHandler, peer: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    assert await asyncio.to_thread(h.fe.write_all, b"hello") == 5
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(peer, 100), PATIENCE)
    assert data == b"hello"
    peer.sendto(data, addr)
    await until(lambda: len(h.read_buf) == 5)
    assert h.take() == b"hello"


def udp_peer() -> socket.socket:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    return peer


def test_udp() -> None:
    async def main() -> None:
        with udp_peer() as peer, ChardevRegistry() as reg:
            port = peer.getsockname()[1]
            h = FeHandler(Frontend(reg.add(f"udp,id=udp,host=127.0.0.1,port={port}")))
            h.register()
            assert h.events == [ChardevEvent.OPENED]  # open once the socket exists
            await udp_round_trip(h, peer)
            h.fe.deinit()

    asyncio.run(main())


def test_udp_datagram_delivered_as_can_read_allows() -> None:
    async def main() -> None:
        with udp_peer() as peer, ChardevRegistry() as reg:
            port = peer.getsockname()[1]
            chr = reg.new("u", f"udp:127.0.0.1:{port}@127.0.0.1:0")
            h = FeHandler(Frontend(chr), capacity=4)
            h.register()
            chr.write(b"hi")
            _, addr = await asyncio.wait_for(
                asyncio.get_running_loop().sock_recvfrom(peer, 100), PATIENCE
            )
            peer.sendto(b"0123456789", addr)
            peer.sendto(b"next", addr)
            chunks: list[bytes] = []
            while sum(map(len, chunks)) < 14:
                missing = 14 - sum(map(len, chunks))

                def ready(want: int = missing) -> bool:
                    return h.can_read() == 0 or len(h.read_buf) == want

                await until(ready)
                chunks.append(h.take())
                h.fe.accept_input()
            assert b"".join(chunks) == b"0123456789next"
            assert all(len(c) <= 4 for c in chunks)
            h.fe.deinit()

    asyncio.run(main())


def test_hotswap(tmp_path: Path) -> None:
    out = tmp_path / "swapped"

    async def main() -> None:
        with udp_peer() as peer, ChardevRegistry() as reg:
            port = peer.getsockname()[1]
            chr = reg.add(f"udp,id=chardev,host=127.0.0.1,port={port}")
            h = FeHandler(Frontend(chr))
            accept = [False]
            h.register(be_change=lambda: accept[0])
            await udp_round_trip(h, peer)
            with pytest.raises(ChardevError, match="Chardev 'chardev' change failed"):
                reg.change("chardev", f"file,path={out}")
            assert h.fe.chardev is chr and reg.get("chardev") is chr
            await udp_round_trip(h, peer)
            accept[0] = True
            new = reg.change("chardev", {"type": "file", "data": {"out": str(out)}})
            assert h.fe.chardev is new and chr.closed
            assert h.fe.write_all(b"hello") == 5
            assert not h.mismatch
            h.fe.deinit()
        assert out.read_bytes() == b"hello"

    asyncio.run(main())


# ---- stdio (in a subprocess: it takes the process's fds 0 and 1) ---------------------------

STDIO_CHILD = r"""
import asyncio, os, sys, termios
from iochannel.chardev import ChardevError, Frontend
from iochannel.chardev.registry import ChardevRegistry

def lflag():
    return termios.tcgetattr(0)[3] if os.isatty(0) else 0

async def main():
    before = lflag()
    with ChardevRegistry() as reg:
        chr = reg.add(sys.argv[1])
        during = lflag()
        chr.set_echo(True)
        echo = lflag()
        chr.set_echo(False)
        got = []
        fe = Frontend(chr)
        fe.set_handlers(lambda: 100, got.append, lambda e: None)
        n = fe.write(b"buf\0")
        try:
            reg.add("stdio,id=second")
        except ChardevError as exc:
            print("second:", exc, file=sys.stderr)
        if not os.isatty(0):
            while not got:
                await asyncio.sleep(0.01)
            print("input:", b"".join(got), file=sys.stderr)
        fe.deinit()
    print("wrote:", n, file=sys.stderr)
    print("flags:", before, during, echo, lflag(), file=sys.stderr)

asyncio.run(main())
"""


def run_child(spec: str, stdin: int | bytes) -> tuple[bytes, str]:
    """Run the stdio child with *stdin* as its fd 0, or fed those bytes through a pipe."""
    args = [sys.executable, "-c", STDIO_CHILD, spec]
    if isinstance(stdin, bytes):
        proc = subprocess.run(args, input=stdin, capture_output=True, timeout=60)
    else:
        proc = subprocess.run(args, stdin=stdin, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout, proc.stderr.decode()


def test_stdio() -> None:
    out, err = run_child("stdio,id=label-stdio", b"typed")
    assert b"buf" in out
    assert "wrote: 4" in err
    assert "second: cannot use stdio by multiple character devices" in err
    assert "input: b'typed'" in err


@pytest.mark.parametrize("signal", ["on", "off"])
def test_stdio_raw_terminal_restored(signal: str) -> None:
    master, slave = os.openpty()
    try:
        _, err = run_child(f"stdio,id=s,signal={signal}", slave)
    finally:
        os.close(slave)
        os.close(master)
    flags = err.split("flags:")[1].split()
    before, during, echo, after = (int(f) for f in flags)
    assert before & termios.ICANON and before & termios.ECHO
    assert not during & (termios.ICANON | termios.ECHO)
    assert echo & termios.ECHO and not echo & termios.ICANON
    assert bool(during & termios.ISIG) == (signal == "on")
    assert after == before


def test_file_timestamps_each_line(tmp_path: Path) -> None:
    import re

    async def main() -> None:
        with ChardevRegistry() as reg:
            chr = reg.add(f"file,id=log,path={tmp_path / 'log'},timestamp=on")
            fe = Frontend(chr)
            fe.set_handlers(lambda: 0, lambda d: None, lambda e: None)
            for piece in (b"first li", b"ne\nsecond line\n", b"third"):
                assert fe.write_all(piece) == len(piece)
            fe.deinit()

    asyncio.run(main())
    lines = (tmp_path / "log").read_bytes().split(b"\n")
    stamp = rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] "
    assert [re.sub(stamp, b"", line) for line in lines] == [b"first line", b"second line", b"third"]
    assert all(re.match(stamp, line) for line in lines)
