"""Every code sample in README.md and docs/ runs as a test (Sybil).

A ``python`` block runs in the namespace of its page (blocks run in order); a
``sh`` block runs in bash with ``set -euo pipefail`` and the interpreter's
scripts directory first on PATH, so ``iochannel`` and ``python`` are this
installation's.  Each page runs in an empty temporary directory, which must be
empty again when the page is done: a sample cleans up after itself.  A block a
test cannot run (it needs a terminal, or serves until stopped) is preceded by
``<!-- skip: next "the reason" -->``, and a test elsewhere covers it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sybil import Example, Sybil
from sybil.parsers.myst import CodeBlockParser, PythonCodeBlockParser, SkipParser

_SCRIPTS = str(Path(sys.executable).parent)


def _run_shell(example: Example) -> None:
    env = dict(os.environ, PATH=f"{_SCRIPTS}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", example.parsed],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"exit status {done.returncode}\n--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
        )


def _setup(namespace: dict[str, Any]) -> None:
    namespace["_docs_cwd"] = os.getcwd()
    namespace["_docs_dir"] = tempfile.mkdtemp(prefix="iochannel-docs-")
    os.chdir(namespace["_docs_dir"])


def _teardown(namespace: dict[str, Any]) -> None:
    where = namespace["_docs_dir"]
    os.chdir(namespace["_docs_cwd"])
    left = sorted(os.listdir(where))
    shutil.rmtree(where)
    assert not left, f"the samples left files behind: {left}"


pytest_collect_file = Sybil(
    parsers=[
        PythonCodeBlockParser(),
        CodeBlockParser(language="sh", evaluator=_run_shell),
        SkipParser(),
    ],
    patterns=["README.md", "docs/*.md"],
    setup=_setup,
    teardown=_teardown,
).pytest()
