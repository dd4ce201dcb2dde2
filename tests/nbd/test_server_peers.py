"""Our daemon's NBD export and qemu-storage-daemon's, driven by the same real clients.

Each test starts both daemons with the same command line on copies of one
image (data, holes, an unaligned tail-free size) and checks that qemu-io,
qemu-img, qemu-nbd, nbdinfo and nbdcopy see the same thing from each, so the
tests test the protocol, not our reading of it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool, wait_for_file

SIZE = 8 << 20
#: Where the image holds data (offset, length, byte); the rest is holes.
DATA = [(0, 64 << 10, 0x11), (1 << 20, 4096, 0x22), (5 << 20, 1 << 20, 0x33)]


def make_image(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for offset, length, byte in DATA:
            f.seek(offset)
            f.write(bytes([byte]) * length)
    return path


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([require_tool(argv[0]), *argv[1:]], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    return proc


@dataclass
class Served:
    kind: str
    dir: Path
    sock: Path
    image: Path

    def uri(self, export: str = "disk") -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"


@contextlib.contextmanager
def serving(
    kind: str, d: Path, *, writable: bool = True, objects: tuple[str, ...] = (), server: str = ""
) -> Iterator[Served]:
    d.mkdir()
    image = make_image(d / "disk.img")
    sock = d / "nbd.sock"
    binary = (
        [require_tool("qemu-storage-daemon")]
        if kind == "qsd"
        else [sys.executable, "-m", "iochannel"]
    )
    argv = [
        *binary,
        *objects,
        "--blockdev", f"driver=file,node-name=f0,filename={image}",
        "--nbd-server", f"addr.type=unix,addr.path={sock}{server}",
        "--export",
        "type=nbd,id=e0,node-name=f0,name=disk,description=the disk,"
        f"writable={'on' if writable else 'off'}",
        "--pidfile", str(d / "pid"),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_file(d / "pid", proc)
        yield Served(kind, d, sock, image)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out.decode(errors="replace")


@pytest.fixture
def both(tmp_path: Path) -> Iterator[dict[str, Served]]:
    with serving("qsd", tmp_path / "qsd") as qsd, serving("ours", tmp_path / "ours") as ours:
        yield {"qsd": qsd, "ours": ours}


def same(both: dict[str, Served], fn: Callable[[Served], str]) -> str:
    """*fn*'s output for each server, with the directory taken out; they must be equal."""
    out = {k: fn(s).replace(str(s.dir), "D") for k, s in both.items()}
    assert out["ours"] == out["qsd"], out
    return out["ours"]


def test_qemu_io_read_write_map(both: dict[str, Served]) -> None:
    def session(s: Served) -> str:
        out = run(
            "qemu-io", "-f", "raw",
            "-c", "read -P 0x11 0 64k",
            "-c", "read -P 0 64k 64k",
            "-c", "write -P 0x5a 2M 128k",
            "-c", "read -P 0x5a 2M 128k",
            "-c", "write -z 0 4k",
            "-c", "discard 5M 64k",
            "-c", "flush",
            "-c", "map",
            s.uri(),
        ).stdout  # fmt: skip
        # Drop the timing lines.
        return "\n".join(line for line in out.splitlines() if "/sec" not in line)

    out = same(both, session)
    assert "read 65536/65536 bytes at offset 0" in out
    for s in both.values():
        data = s.image.read_bytes()
        assert data[2 << 20 : (2 << 20) + (128 << 10)] == b"\x5a" * (128 << 10)
        assert data[:4096] == bytes(4096)


def test_read_only_export(tmp_path: Path) -> None:
    with (
        serving("qsd", tmp_path / "qsd", writable=False) as qsd,
        serving("ours", tmp_path / "ours", writable=False) as ours,
    ):
        for s in (qsd, ours):
            proc = run("qemu-io", "-f", "raw", "-c", "write 0 4k", s.uri(), check=False)
            assert "Permission denied" in proc.stderr + proc.stdout or proc.returncode != 0
            run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x11 0 4k", s.uri())
        same({"qsd": qsd, "ours": ours}, lambda s: run("nbdinfo", "--json", s.uri()).stdout)


def test_qemu_img_info_convert_compare(both: dict[str, Served]) -> None:
    same(both, lambda s: run("qemu-img", "info", "-f", "raw", s.uri()).stdout)
    for s in both.values():
        out = s.dir / "copy.qcow2"
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", s.uri(), str(out))
        run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", s.uri(), str(out))
        raw = s.dir / "copy.raw"
        run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(out), str(raw))
        assert raw.read_bytes() == s.image.read_bytes()
        # The holes stayed holes in the copy.
        info = run("qemu-img", "map", "--output=json", "-f", "qcow2", str(out)).stdout
        assert '"data": false' in info


def test_qemu_nbd_list(both: dict[str, Served]) -> None:
    out = same(both, lambda s: run("qemu-nbd", "--list", "-k", str(s.sock)).stdout)
    assert "export: 'disk'" in out and "description: the disk" in out
    assert "base:allocation" in out


def test_nbdinfo_list_and_map(both: dict[str, Served]) -> None:
    out = same(both, lambda s: run("nbdinfo", "--list", "--json", s.uri("")).stdout)
    assert '"export-name": "disk"' in out
    out = same(both, lambda s: run("nbdinfo", "--map", s.uri()).stdout)
    assert out.split("\n")[0].split() == ["0", "65536", "0", "data"]
    same(both, lambda s: run("nbdinfo", "--map", "--totals", s.uri()).stdout)


@pytest.mark.parametrize("connections", [1, 4])
def test_nbdcopy_both_directions(both: dict[str, Served], connections: int) -> None:
    for s in both.values():
        copy = s.dir / "copy.img"
        run("nbdcopy", f"--connections={connections}", s.uri(), str(copy))
        assert copy.read_bytes() == s.image.read_bytes()
        src = s.dir / "src.img"
        src.write_bytes(os.urandom(SIZE))
        run("nbdcopy", f"--connections={connections}", str(src), s.uri())
        assert s.image.read_bytes() == src.read_bytes()
        run("nbdcopy", "--connections=1", s.uri(), "null:")


def test_unknown_export_is_refused_alike(both: dict[str, Served]) -> None:
    def attempt(s: Served) -> str:
        proc = run("nbdinfo", s.uri("nope"), check=False)
        assert proc.returncode != 0
        return "refused" if "server replied with error" in proc.stderr else proc.stderr

    assert same(both, attempt) == "refused"
