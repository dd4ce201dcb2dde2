"""Consoles driving the daemon's shared shell as hub viewers: unix, telnet, the web console.

The daemon runs its built-in default: a shell on a pty relayed to a hub of a
unix socket, a telnet port and the web console.  A console attached through
each kind of viewer runs commands with their exit status while the others see
the same output; one viewer ends the shell and every console carries on with
the new one.  A console that floods the shell's output with a command whose
result it never waits for costs the daemon nothing it keeps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from iochannel.console import Console
from iochannel.daemon.cli import program
from iochannel.daemon.default import default_config

from .conftest import Daemon

CLOSED = "[iochannel: shell closed]"
OPENED = "[iochannel: shell open]"


def targets(d: Daemon) -> tuple[str, str, str]:
    """The unix, telnet and web console (read-write token) targets the daemon printed."""
    d.wait_log("web (ro):")
    log = d.log()
    command = re.escape(program())  # the hints name this installation
    unix = re.search(rf"unix: {command} console (\S+)", log)
    telnet = re.search(rf"telnet: {command} console (telnet://\S+)", log)
    web = re.search(r"web \(rw\): (http://\S+)", log)
    assert unix and telnet and web, log
    return unix[1], telnet[1], web[1]


@pytest.fixture
def daemon(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Daemon:
    monkeypatch.setenv("SHELL", "/bin/sh")
    argv, _ = default_config(str(tmp_path))
    return hostile_daemon(*argv)


def test_consoles_on_every_kind_of_viewer(daemon: Daemon) -> None:
    unix, telnet, web = targets(daemon)
    with (
        Console.connect(unix, timeout=10) as a,
        Console.connect(telnet, timeout=10) as b,
        Console.connect(web, timeout=10) as c,
    ):
        for console, name in ((a, "unix"), (b, "telnet"), (c, "web")):
            assert console.run(f"echo from-{name}") == (f"from-{name}\n", 0)
            assert console.run(f"echo {name} >&2; (exit 4)") == (f"{name}\n", 4)
            # Every other viewer saw that command's output too.
            for other in (a, b, c):
                if other is not console:
                    other.expect_exact(f"from-{name}")
        # One viewer ends the shell: the others are told, and a new shell serves everyone.
        a.sendline("exit")
        for console in (a, b, c):
            console.expect_exact(CLOSED)
            console.expect_exact(OPENED)
        assert b.run("echo $((6 * 7))") == ("42\n", 0)
        assert c.run_check("echo web-again") == "web-again\n"


def test_an_abandoned_flood_costs_the_daemon_nothing(daemon: Daemon) -> None:
    unix, _, _ = targets(daemon)
    with Console.connect(unix, timeout=10, max_before=1 << 16) as c:
        c.run("true")
        # 20 MB of output; the console waits for something that never comes.
        c.sendline("yes 'no match here, just noise' | head -c 20000000; echo FLOOD-$((1 + 1))")
        with pytest.raises(TimeoutError, match="waiting for 'never'"):
            c.expect_exact("never", timeout=1)
        c.expect_exact("FLOOD-2", timeout=60)
        assert c.run("echo still here") == ("still here\n", 0)
    daemon.assert_intact()
