"""Ports of QEMU test-io-channel-command.c, plus process lifecycle."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import pytest

from iochannel import CommandChannel, Feature, Shutdown, UnsupportedFeatureError
from iochannel.testing import check_transfer

from .conftest import require_tool


@pytest.mark.parametrize("blocking", [True, False], ids=["sync", "async"])
def test_fifo(blocking: bool, tmp_path: os.PathLike[str]) -> None:
    socat = require_tool("socat")
    fifo = os.path.join(tmp_path, "test-io-channel-command.fifo")
    os.mkfifo(fifo)
    writer = CommandChannel.spawn([socat, "-", f"PIPE:{fifo},wronly"], "w")
    reader = CommandChannel.spawn([socat, f"PIPE:{fifo},rdonly", "-"], "r")
    check_transfer(writer, reader, blocking=blocking)
    writer.close()
    reader.close()
    os.unlink(fifo)
    os.rmdir(tmp_path)


@pytest.mark.parametrize("blocking", [True, False], ids=["sync", "async"])
def test_echo(blocking: bool) -> None:
    socat = require_tool("socat")
    ch = CommandChannel.spawn([socat, "-", "-"])
    check_transfer(ch, ch, blocking=blocking)
    ch.close()
    assert ch.returncode == 0


def test_close_waits_for_exit_status() -> None:
    ch = CommandChannel.spawn(["sh", "-c", "read line; exit 3"], "w")
    ch.write_all(b"go\n")
    ch.close()
    assert ch.returncode == 3


def test_aclose_does_not_block_the_loop() -> None:
    async def main() -> None:
        ch = CommandChannel.spawn(["sh", "-c", "cat >/dev/null; sleep 0.2; exit 5"], "w")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        await ch.aclose()
        t.cancel()
        assert ch.returncode == 5
        assert ticks > 3, "the loop kept running while the child exited"

    asyncio.run(main())


def test_finalizer_kills_a_child_that_ignores_sigterm() -> None:
    ch = CommandChannel.spawn(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
    assert ch.read_all(6) == b"ready\n"
    pid = ch.pid
    proc = ch._proc
    del ch
    gc.collect()
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_pty_child_has_a_terminal() -> None:
    # The child reports its size only after the resize (it waits for a line first).
    ch = CommandChannel.spawn(["sh", "-c", "tty -s && echo tty-ok; read go; stty size"], pty=True)
    ch.resize(33, 101)
    ch.write_all(b"go\n")
    out = b""
    while b"33 101" not in out:
        chunk = ch.read(100)
        if not chunk:
            break
        out += chunk
    ch.close()
    assert b"tty-ok" in out
    assert b"33 101" in out


def test_spawn_error_names_the_program() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-program"):
        CommandChannel.spawn(["no-such-program-iochannel"])


def test_write_only_channel_refuses_reads() -> None:
    with (
        CommandChannel.spawn(["true"], "w") as ch,
        pytest.raises(UnsupportedFeatureError, match=r"not connected \(mode 'w'\)"),
    ):
        ch.read(1)


def test_read_only_channel_refuses_writes() -> None:
    with (
        CommandChannel.spawn(["true"], "r") as ch,
        pytest.raises(UnsupportedFeatureError, match=r"not connected \(mode 'r'\)"),
    ):
        ch.write(b"x")


@pytest.mark.parametrize("blocking", [True, False], ids=["sync", "async"])
def test_shutdown_write_ends_the_childs_input_and_keeps_its_output(blocking: bool) -> None:
    """The child sees end of input (wc prints its count) while its output stays readable."""

    async def read_to_end(ch: CommandChannel) -> bytes:
        out = b""
        while chunk := await ch.aread(100):
            out += chunk
        return out

    with CommandChannel.spawn(["wc", "-c"]) as ch:
        ch.write_all(b"12345")
        ch.shutdown(Shutdown.WRITE)
        if blocking:
            out = b""
            while chunk := ch.read(100):
                out += chunk
        else:
            out = asyncio.run(read_to_end(ch))
    assert out.strip() == b"5"
    assert ch.returncode == 0


def test_a_pty_has_no_shutdown() -> None:
    with CommandChannel.spawn(["cat"], pty=True) as ch:
        assert not ch.has_feature(Feature.SHUTDOWN)
        with pytest.raises(UnsupportedFeatureError):
            ch.shutdown(Shutdown.WRITE)
        ch.write_all(b"\x04")  # the terminal's end of file ends cat
