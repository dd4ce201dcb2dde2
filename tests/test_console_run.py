"""Console.run / run_check over /bin/sh on a pty: echo on, wrapped lines, exit statuses."""

from __future__ import annotations

import asyncio

import pytest

from iochannel.console import AsyncConsole, CommandFailedError, Console

ENV = {"PATH": "/usr/bin:/bin", "PS1": "sh$ ", "TERM": "dumb", "LC_ALL": "C"}


def _shell() -> Console[str]:
    c: Console[str] = Console.spawn(["/bin/sh"], rows=24, cols=80, env=ENV, timeout=10)
    c.expect_exact("sh$ ")
    return c


def test_run_returns_output_and_status_despite_the_echo() -> None:
    with _shell() as c:
        assert c.run("echo hello") == ("hello\n", 0)
        assert c.run("printf 'no newline'") == ("no newline", 0)
        assert c.run("printf 'two\\n\\n'") == ("two\n\n", 0)
        assert c.run("true") == ("", 0)
        output, status = c.run("ls /nonexistent-dir")
        assert status == 2 and "nonexistent-dir" in output
        assert c.run("(exit 7)") == ("", 7)
        # The shell's state persists between commands.
        c.run("cd /usr; X=42")
        assert c.run("pwd; echo $X") == ("/usr\n42\n", 0)


def test_long_command_wrapping_at_80_columns() -> None:
    word = "w" * 150
    with _shell() as c:
        output, status = c.run(f"echo {word}; echo '# not a comment'  # a comment", timeout=10)
        assert (output, status) == (f"{word}\n# not a comment\n", 0)
        # The echo of that 200-column line wrapped, yet nothing leaked into the output.
        assert len(c.run("echo " + "x" * 300 + " | wc -c")[0].strip()) == 3


def test_run_check_raises_with_output() -> None:
    with _shell() as c:
        assert c.run_check("echo fine") == "fine\n"
        with pytest.raises(
            CommandFailedError, match=r"exited with status 3; output: 'oops\\n'"
        ) as e:
            c.run_check("echo oops; (exit 3)")
        assert (e.value.status, e.value.output) == (3, "oops\n")


def test_async_run_over_a_pty_shell() -> None:
    async def main() -> None:
        c: AsyncConsole[str] = AsyncConsole.spawn(["/bin/sh"], env=ENV, timeout=10)
        async with c:
            await c.expect_exact("sh$ ")
            assert await c.run("echo async; false") == ("async\n", 1)
            assert await c.run_check("echo ok") == "ok\n"

    asyncio.run(main())
