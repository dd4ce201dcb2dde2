"""The test matrix: the core suites on every supported Python, default loop and uvloop.

Run with ``make test-matrix`` (or ``nox`` from the project venv).  Each Python
comes from ``python3.X`` on PATH, else from pyenv.  A missing interpreter
fails the run when ``CI`` is set and is skipped, with the reason printed,
otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import nox

PYTHONS = ["3.11", "3.12", "3.13"]

#: The suites that exercise the channel engine on each loop.
CORE_SUITES = [
    "tests/test_conformance.py",
    "tests/test_loops.py",
    "tests/test_asyncio_contract.py",
    "tests/test_socket.py",
    "tests/test_tls.py",
    "tests/test_tls_handshakes.py",
    "tests/test_websock.py",
    "tests/test_websock_interop.py",
    "tests/chardev/test_core.py",
]

LOOPS = ["asyncio", "uvloop"]

nox.options.sessions = ["core"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))


def _works(python: str) -> bool:
    try:
        subprocess.run([python, "-c", ""], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def _pyenv_bin(version: str) -> str | None:
    """The bin directory of pyenv's newest *version* (``3.12`` -> ``.../3.12.x/bin``)."""
    if shutil.which("pyenv") is None:
        return None
    listed = subprocess.run(
        ["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False
    ).stdout.split()
    matches = [v for v in listed if v == version or v.startswith(version + ".")]
    if not matches:
        return None
    newest = max(matches, key=lambda v: [int(p) if p.isdigit() else 0 for p in v.split(".")])
    prefix = subprocess.run(
        ["pyenv", "prefix", newest], capture_output=True, text=True, check=False
    ).stdout.strip()
    return os.path.join(prefix, "bin") if prefix else None


def _find_pythons() -> None:
    """Put an interpreter for each of PYTHONS on PATH where nox looks for ``python3.X``."""
    for version in PYTHONS:
        name = f"python{version}"
        # A pyenv shim is on PATH even when its version is not selected, and fails when run.
        if shutil.which(name) and _works(name):
            continue
        bindir = _pyenv_bin(version)
        if bindir is not None and _works(os.path.join(bindir, name)):
            os.environ["PATH"] = bindir + os.pathsep + os.environ["PATH"]
        else:
            print(f"nox: no {name} on PATH or in pyenv; its sessions are skipped outside CI")


_find_pythons()


@nox.session(python=PYTHONS)
def core(session: nox.Session) -> None:
    """The core suites on one Python, once per event loop."""
    session.install("-q", "-e", ".[test]")
    for loop in LOOPS:
        session.log(f"event loop: {loop}")
        session.run(
            "python",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *CORE_SUITES,
            *session.posargs,
            env={"IOCHANNEL_TEST_LOOP": loop},
        )
