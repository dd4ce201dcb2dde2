"""The command backend: a program on a pty or pipes; exit, restart with backoff, resize."""

from __future__ import annotations

from pathlib import Path

import pytest

from iochannel.chardev import (
    ChardevError,
    ChardevEvent,
    ChardevOptionError,
    ChardevRegistry,
    CommandChardev,
    Frontend,
    parse_chardev,
    validate_spec,
)

from ..chardev.fehandler import FeHandler
from ..chardev.test_socket import run, until
from .test_process import alive

OPENED, CLOSED = ChardevEvent.OPENED, ChardevEvent.CLOSED


def attach(chr: CommandChardev) -> FeHandler:
    h = FeHandler(Frontend(chr), 1 << 20)
    h.register()
    return h


def test_a_program_on_a_pty_opens_talks_and_closes_when_it_exits() -> None:
    async def main() -> None:
        with ChardevRegistry() as reg:
            chr = reg.add("command,id=c,cmd=sh -c 'echo hi; read x; echo got-$x'")
            assert isinstance(chr, CommandChardev) and chr.pty
            assert chr.filename == "command:sh -c 'echo hi; read x; echo got-$x'"
            h = attach(chr)
            pid = chr.pid
            assert pid is not None and h.events == [OPENED]
            await until(lambda: b"hi" in h.read_buf, "the greeting")
            await h.fe.awrite_all(b"yo\n")
            await until(lambda: h.events == [OPENED, CLOSED], "CLOSED at exit")
            assert b"got-yo" in h.read_buf
            assert chr.pid is None
            await until(lambda: not alive(pid), "the child to be reaped")
            h.fe.deinit()

    run(main)


def test_resize_reaches_the_program_and_survives_a_restart() -> None:
    async def main() -> None:
        with ChardevRegistry() as reg:
            chr = reg.add("command,id=c,restart=on,restart-ms=20,cmd=sh -c 'read x; stty size'")
            assert isinstance(chr, CommandChardev)
            h = attach(chr)
            chr.resize(30, 100)
            await h.fe.awrite_all(b"\n")
            await until(lambda: b"30 100" in h.read_buf, "the new size")
            await until(lambda: chr.starts == 2 and chr.be_open, "the restart")
            h.take()
            await h.fe.awrite_all(b"\n")
            await until(lambda: b"30 100" in h.read_buf, "the size kept for the new run")
            assert h.events[:3] == [OPENED, CLOSED, OPENED] and not h.mismatch
            chr.ioctl("resize", (10, 20))
            await until(lambda: chr.starts == 3 and chr.be_open, "another restart")
            await h.fe.awrite_all(b"\n")
            await until(lambda: b"10 20" in h.read_buf, "the size set through ioctl")
            h.fe.deinit()

    run(main)


def test_restart_backs_off_for_a_program_that_keeps_failing() -> None:
    async def main() -> None:
        with ChardevRegistry() as reg:
            chr = reg.add("command,id=c,pty=off,restart=on,restart-ms=10,cmd=true")
            assert isinstance(chr, CommandChardev) and chr.backoff is not None
            h = attach(chr)
            await until(lambda: chr.starts >= 4, "several restarts")
            # Runs shorter than their delay never reset the schedule: delays keep growing.
            assert chr.backoff.attempts >= 3
            assert chr.backoff.nominal(chr.backoff.attempts) > 0.01 * 4
            assert not h.mismatch
            h.fe.deinit()

    run(main)


def test_pipes_mode_and_no_restart() -> None:
    async def main() -> None:
        with ChardevRegistry() as reg:
            chr = reg.add("command,id=c,pty=off,cmd=cat")
            h = attach(chr)
            await h.fe.awrite_all(b"through a pipe\n")
            await until(lambda: h.read_buf == b"through a pipe\n", "the echo")
            with pytest.raises(ChardevError, match="not running on a pty"):
                chr.ioctl("resize", (1, 2))
            h.fe.deinit()

    run(main)


def test_closing_hangs_up_a_program_that_ignores_sigterm(tmp_path: Path) -> None:
    async def main() -> None:
        pidfile = tmp_path / "pid"
        reg = ChardevRegistry()
        chr = reg.add(
            f"command,id=c,cmd=sh -c 'trap \"\" TERM; sleep 100 & echo $! >{pidfile}; wait'"
        )
        assert isinstance(chr, CommandChardev)
        shell = chr.pid
        assert shell is not None
        await until(lambda: pidfile.exists() and pidfile.read_text().strip(), "the job's pid")
        job = int(pidfile.read_text())
        reg.close()
        assert not alive(shell)
        await until(lambda: not alive(job), "the job to be hung up too")

    run(main)


def test_a_program_that_cannot_run() -> None:
    async def main() -> None:
        with ChardevRegistry() as reg:
            with pytest.raises(ChardevError, match="cannot run /nonexistent"):
                reg.add("command,id=c,cmd=/nonexistent/program")
            assert "c" not in reg

    run(main)


def test_options_and_spec() -> None:
    spec = parse_chardev("command,id=c,cmd=ls -l /a,,b,pty=off,restart=on,restart-ms=5,cwd=/")
    assert spec["backend"] == {
        "type": "command",
        "data": {
            "argv": ["ls", "-l", "/a,b"],
            "pty": False,
            "restart": True,
            "restart-ms": 5,
            "restart-max-ms": 30000,
            "cwd": "/",
            "logappend": False,
        },
    }
    qmp = validate_spec({"id": "c", "backend": {"type": "command", "data": {"argv": ["sh"]}}})
    assert qmp["backend"]["data"]["pty"] is True
    for bad, message in (
        ({"argv": []}, "must name a program"),
        ({"argv": "sh"}, "expects a list of strings"),
        ({"argv": ["sh"], "restart-ms": 10, "restart-max-ms": 5}, "must not be below"),
        ({"argv": ["sh"], "shell": True}, "Invalid parameter 'backend.data.shell'"),
    ):
        with pytest.raises(ChardevOptionError, match=message):
            validate_spec({"id": "c", "backend": {"type": "command", "data": bad}})
    assert "command" in ChardevRegistry.backends()
