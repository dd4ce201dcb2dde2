"""Test-wide fixtures: every test must give back the fds and threads it took."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # libuv opens a process-wide signal pipe the first time a uvloop loop runs;
    # open it before any test counts fds.
    try:
        import uvloop
    except ImportError:
        return
    uvloop.run(_noop())
    # IOCHANNEL_TEST_LOOP=uvloop (the test matrix) runs asyncio.run() on uvloop.
    if os.environ.get("IOCHANNEL_TEST_LOOP") == "uvloop":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _noop() -> None:
    pass


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves fds open or threads running."""
    gc.collect()
    fds_before, threads_before = _fds(), _threads()
    yield
    deadline = time.monotonic() + 5
    while True:
        gc.collect()
        leaked_fds = _fds() - fds_before
        leaked_threads = _threads() - threads_before
        if not (leaked_fds or leaked_threads) or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # threads finishing and fds closed by finalizers
    details = []
    for fd in sorted(leaked_fds):
        try:
            details.append(f"fd {fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    if details:
        pytest.fail("leaked fds: " + ", ".join(details))
    if leaked_threads:
        pytest.fail("leaked threads: " + ", ".join(t.name for t in leaked_threads))


def require_tool(name: str) -> str:
    """Path of system tool *name*; fails under CI when missing, skips (saying why) otherwise."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (apt-get install it; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return path


def wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Wait until *proc* creates *path* (a pid file, a socket); fail if it exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@contextlib.contextmanager
def iochannel_process(
    pidfile: Path,
    *argv: str,
    module: str = "iochannel",
    pass_fds: tuple[int, ...] = (),
    log: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m MODULE ARGV --pidfile PIDFILE``, ready (its pid file written).

    Its standard error goes to a pipe, or to the file *log* for a long run.
    When the block ends without an error, SIGTERM must end the daemon with status 0.
    """
    argv = (*argv, "--pidfile", str(pidfile))
    with contextlib.ExitStack() as stack:
        stderr = stack.enter_context(open(log, "wb")) if log else subprocess.PIPE
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *argv], stderr=stderr, pass_fds=pass_fds
        )
        stack.callback(lambda: proc.stderr and proc.stderr.close())
        try:
            wait_for_file(pidfile, proc)
            yield proc
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
