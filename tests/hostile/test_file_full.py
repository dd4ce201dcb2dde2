"""A ``file`` chardev on a disk that fills up and then has room again.

The disk is a real filesystem: a 64 KiB tmpfs mounted for the test (root
only).  Output reaches the file through a hub, as the default console's log
does, from a unix socket relayed to the hub.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Daemon, Qmp, wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A freshly mounted 64 KiB tmpfs; fails under CI, skips elsewhere, if mounting is refused."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(path: Path) -> None:
    """Write to *path* until its filesystem is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.strerror == "No space left on device", exc


@pytest.mark.parametrize("timestamp", ["off", "on"])
def test_a_full_disk_loses_bytes_visibly_and_writing_resumes(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path, small_disk: Path, timestamp: str
) -> None:
    src, qmp_path, out = tmp_path / "src.sock", tmp_path / "qmp.sock", small_disk / "out.log"
    d = hostile_daemon(
        *("-chardev", f"socket,id=src,path={src},server=on,wait=off"),
        *("-chardev", f"file,id=out,path={out},timestamp={timestamp}"),
        *("-chardev", "hub,id=h,chardevs.0=out"),
        *("--relay", "chardev=src,peer=h"),
        *("-chardev", f"socket,id=qmp,path={qmp_path},server=on,wait=off"),
        *("--monitor", "chardev=qmp"),
    )
    qmp = Qmp(qmp_path)
    client = socket.socket(socket.AF_UNIX)
    try:
        client.connect(str(src))

        def chardev(label: str) -> dict[str, Any]:
            return next(c for c in qmp.cmd("query-chardev") if c["label"] == label)

        def member() -> dict[str, Any]:
            return next(iter(qmp.cmd("query-hub-members", hub="h")))

        filler = small_disk / "filler"
        fill(filler)
        client.sendall(b"lost line\n" * 100)
        wait_for(lambda: "error" in chardev("out"), "query-chardev to report the error")
        assert chardev("out")["error"] == "write failed: No space left on device"
        assert chardev("out")["open"] is True
        assert member()["error"] == "write failed: No space left on device"
        assert member()["open"] is True

        def stats() -> dict[str, Any]:
            return next(s for s in qmp.cmd("query-chardev-stats") if s["label"] == "out")

        wait_for(lambda: stats()["dropped"] == 1000, "the lost bytes to be counted")
        assert stats()["bytes-out"] == 0
        d.wait_log("chardev 'out': cannot write to")
        assert "No space left on device" in d.log()

        # Many more failing writes: the log stays short.
        for _ in range(50):
            client.sendall(b"x\n")
        wait_for(lambda: member()["bytes"] >= 1100, "the hub to write them")
        assert d.log().count("cannot write to") <= 5

        filler.unlink()
        client.sendall(b"back again\n")
        wait_for(lambda: out.exists() and b"back again" in out.read_bytes(), "the file to resume")
        assert out.read_bytes().endswith(b"back again\n") and b"lost" not in out.read_bytes()
        assert out.read_bytes().startswith(b"[20" if timestamp == "on" else b"back")
        assert "error" not in chardev("out")
        assert "error" not in member()
        d.wait_log("chardev 'out': writing to")
        assert "1100 bytes were lost" in d.log()
    finally:
        client.close()
        qmp.close()
