"""Every code sample in README.md and docs/ runs as a test (Sybil).

A ``python`` block runs in the namespace of its page (blocks run in order); a
``sh`` block runs in bash with ``set -euo pipefail`` and the interpreter's
scripts directory first on PATH, so ``iochannel`` and ``python`` are this
installation's.  Each page runs in an empty temporary directory, which must be
empty again when the page is done, with no fd left open and no channel left for
the garbage collector to close: a sample cleans up after itself.  A block a
test cannot run (it needs a terminal, or serves until stopped) is preceded by
``<!-- skip: next "the reason" -->``, and a test elsewhere covers it.
"""

from __future__ import annotations

import doctest
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from sybil import Example, Sybil
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.myst import CodeBlockParser, PythonCodeBlockParser, SkipParser

_SCRIPTS = str(Path(sys.executable).parent)


_run_python_block = PythonEvaluator()


def _run_python(example: Example) -> None:
    try:
        _run_python_block(example)
    except Exception as exc:
        # The whole traceback as the message: pytest's report of a sample's chained
        # exceptions fails inside Sybil when a link of the chain is one frame deep.
        raise AssertionError("".join(traceback.format_exception(exc))) from None


class _PythonBlocks(PythonCodeBlockParser):
    """``python`` blocks: ``>>>`` sessions are doctests, other blocks run as code."""

    def __init__(self, doctest_optionflags: int) -> None:
        super().__init__(doctest_optionflags=doctest_optionflags)
        self.codeblock_parser = self.codeblock_parser_class("python", _run_python)


def _run_shell(example: Example) -> None:
    env = dict(os.environ, PATH=f"{_SCRIPTS}{os.pathsep}{os.environ.get('PATH', '')}")
    # A session of its own, so that whatever the block leaves running (a server
    # started with &) ends with it.
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", example.parsed],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    if proc.returncode != 0:
        raise AssertionError(f"exit status {proc.returncode}\n--- stdout\n{out}--- stderr\n{err}")


@pytest.fixture(scope="module")
def docs_page() -> Iterator[str]:
    """One page's samples: an empty working directory that must be empty again
    after them, and no fd left open or channel left to the garbage collector."""
    cwd = os.getcwd()
    where = tempfile.mkdtemp(prefix="iochannel-docs-")
    fds = set(os.listdir("/proc/self/fd"))
    unraisable: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}")
    os.chdir(where)
    try:
        yield where
        gc.collect()
    finally:
        sys.unraisablehook = hook
        os.chdir(cwd)
        left = sorted(os.listdir(where))
        shutil.rmtree(where)
    assert not left, f"the samples left files behind: {left}"
    assert not unraisable, f"the samples left objects to the garbage collector: {unraisable}"
    opened = set(os.listdir("/proc/self/fd")) - fds
    assert not opened, f"the samples left fds open: {sorted(opened)}"


pytest_collect_file = Sybil(
    parsers=[
        _PythonBlocks(doctest_optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS),
        CodeBlockParser(language="sh", evaluator=_run_shell),
        SkipParser(),
    ],
    patterns=["README.md", "docs/*.md", "docs/*/*.md"],
    fixtures=["docs_page"],
).pytest()
