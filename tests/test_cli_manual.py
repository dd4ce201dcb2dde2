"""The manual page, the shell completions and `make run`, checked against the parser and real tools.

The man page is rendered by groff, the completions run in bash (and zsh) as a
shell runs them, typed at a terminal under tmux, and the Makefile is asked
(``make -n``) what each target would do from each starting point.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from iochannel.__main__ import main as entry
from iochannel.chardev.options import backend_names
from iochannel.daemon.cli import parser

from .conftest import require_tool
from .test_console_client import Tmux

ROOT = Path(__file__).parents[1]


_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _parser_options() -> set[str]:
    """Every option string the parser knows, read from argparse's own help."""
    lines = parser().format_help().splitlines()
    # An option's line starts with its names and placeholders; its help follows two spaces.
    return {o for ln in lines if ln.startswith("  -") for o in _OPTION.findall(ln.split("  ")[1])}


def _output(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert entry(argv) == 0
    return capsys.readouterr().out


# ---- the manual page ---------------------------------------------------------------


def test_the_man_page_names_every_option_the_parser_has(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    groff = require_tool("groff")
    page = tmp_path / "iochannel.1"
    page.write_text(_output(capsys, ["--man"]))
    shown = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-P-cbou", str(page)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stderr == ""  # no roff warnings
    # groff prints an escaped minus as U+2212.
    text = shown.stdout.replace("\u2212", "-")
    sections = re.findall(r"^([A-Z][A-Z ]+)$", text, re.MULTILINE)
    assert sections == [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "CHARDEV BACKENDS",
        "EXAMPLES",
        "SEE ALSO",
    ]
    options = text.split("\nOPTIONS\n", 1)[1].split("\nCHARDEV BACKENDS\n", 1)[0]
    listed = set(_OPTION.findall(options))
    missing = _parser_options() - listed
    assert not missing and len(_parser_options()) > 15, missing
    backends = text.split("\nCHARDEV BACKENDS\n", 1)[1].split("\nEXAMPLES\n", 1)[0]
    for name in backend_names():
        assert re.search(rf"^ +{re.escape(name)}\b", backends, re.MULTILINE), name
    assert "reconnect-ms=<num>" in backends  # a socket key, as -chardev socket,help lists it
    assert "iochannel --blockdev driver=file" in text.split("\nEXAMPLES\n", 1)[1]


# ---- bash completion ---------------------------------------------------------------

#: Calls the completion function as bash does when Tab is pressed at the end of $1.
_COMPLETE = """
eval "$(cat)"
complete -p iochannel
for line in "$@"; do
    COMP_LINE=$line COMP_POINT=${#line} COMPREPLY=()
    _iochannel
    printf '%s\\n' "${COMPREPLY[*]}"
done
"""


def _bash_complete(script: str, *lines: str) -> list[str]:
    bash = require_tool("bash")
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", _COMPLETE, "bash", *lines],
        input=script,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_bash_completion_from_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    script = _output(capsys, ["--completion", "bash"])
    registered, *replies = _bash_complete(
        script,
        "iochannel -",
        "iochannel --blo",
        "iochannel -chardev so",
        "iochannel -chardev ",
        "iochannel --chardev socket,id=x,pa",
        "iochannel --blockdev driver=",
        "iochannel --blockdev driver=nu",
        "iochannel --export type=",
        "iochannel --nbd-server addr.type=u",
        "iochannel --object tls",
        "iochannel --completion ",
        "iochannel co",
    )
    assert registered == "complete -o default -F _iochannel iochannel"
    assert set(replies[0].split()) == _parser_options()
    # readline replaces only what follows the last '=' or ':', so replies start there.
    assert replies[1:] == [
        "--blockdev",
        "socket",
        " ".join([*backend_names(), "help"]),
        "x,path=",
        "file host_device raw null-co null-aio python nbd",
        "null-co null-aio",
        "vhost-user-blk nbd",
        "unix",
        "tls-creds-x509 tls-creds-psk",
        "bash zsh",
        "console",
    ]


def _type(term: Tmux, text: str, key: str) -> None:
    """Type *text* (literally: it may start with '-'), then press *key*."""
    term.keys("-l", "--", text)
    term.keys(key)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_at_a_terminal(tmp_path: Path, shell: str) -> None:
    """Tab in an interactive shell, with the shell's own word splitting (bash splits at '=')."""
    path = require_tool(shell)
    script = tmp_path / "completion"
    script.write_text(
        subprocess.run(
            [sys.executable, "-m", "iochannel", "--completion", shell],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    if shell == "bash":
        argv, setup = [path, "--norc", "--noprofile"], f". {script}"
    else:
        argv, setup = [path, "-f"], f"autoload -U compinit; compinit -u -D; . {script}"
    term = Tmux(tmp_path)
    try:
        _type(term, f"exec {shlex.join(argv)}", "Enter")
        _type(term, f'{setup}; echo READ""Y', "Enter")
        term.wait_for("READY")
        _type(term, "iochannel --blockdev driver=fi", "Tab")
        term.wait_for("iochannel --blockdev driver=file")
        # A whole value is followed by a space, a key by its '=' alone.
        _type(term, "-chardev socket,id=x,pa", "Tab")
        term.wait_for("driver=file -chardev socket,id=x,path=")
        _type(term, "v.sock --nbd-server addr.type=u", "Tab")
        term.wait_for("path=v.sock --nbd-server addr.type=unix")
    finally:
        term.kill()


# ---- make run --------------------------------------------------------------------------


def _make_dry(venv: Path, target: str) -> str:
    make = require_tool("make")
    # --no-print-directory: under `make test` this make is a sub-make, which would print
    # "Entering directory" lines around what it would run.
    return subprocess.run(
        [make, "-n", "--no-print-directory", f"VENV={venv}", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_make_run_installs_the_package_without_the_test_extras(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    fresh = _make_dry(venv, "run")
    assert f"{venv}/bin/python -m pip install -q -e .\n" in fresh
    assert "[test]" not in fresh
    assert fresh.rstrip().endswith(f"{venv}/bin/python -m iochannel")
    # After `make run`, `make test` still installs the test extras ...
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".installed-run").touch()
    assert "pip install -q -e '.[test]'" in _make_dry(venv, "test")
    # ... and after `make test`, `make run` has what it needs.
    (venv / ".installed").touch()
    assert "pip" not in _make_dry(venv, "run")
