"""Block drivers written in Python: the examples, and drivers that misbehave."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from iochannel.block import BlockError
from iochannel.block.storage import Storage
from iochannel.vhost_user import blk
from iochannel.vhost_user.frontend import Frontend
from tests.block.test_nodes import read
from tests.block.test_process import _read_sector
from tests.conftest import wait_for_file
from tests.vhost_user.test_blk import submit

EX = {"driver": "python", "module": "iochannel.block.examples"}
BAD = {"driver": "python", "module": "tests.block.drivers_for_tests"}


def test_ram_disk_and_error_injector() -> None:
    s = Storage()
    try:
        ram = s.blockdev_add(
            {**EX, "node-name": "ram", "class": "RamDisk", "size": "8192"}, typed=False
        )
        assert ram.size() == 8192
        assert ram.pwritev([memoryview(b"abc"), memoryview(b"def")], 100) == 6
        assert read(ram, 100, 6) == b"abcdef"
        bad = s.blockdev_add(
            {
                **EX,
                "node-name": "bad",
                "class": "ErrorInjector",
                "file": "ram",
                "fail-offset": 4096,
                "fail-length": 512,
                "fail-on": "read",
            },
            typed=True,
        )
        assert read(bad, 100, 6) == b"abcdef"
        with pytest.raises(OSError) as info:
            read(bad, 4096, 512)
        assert info.value.errno == errno.EIO
        assert bad.pwritev([memoryview(b"x" * 512)], 4096) == 512  # writes still pass
        assert read(ram, 4096, 1) == b"x"
        with pytest.raises(BlockError, match="Block device ram is in use by node 'bad'"):
            s.blockdev_del("ram")
        assert [n["drv"] for n in s.query_named_block_nodes()] == ["python", "python"]
    finally:
        for name in ("bad", "ram"):
            if name in s.nodes:
                s.blockdev_del(name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({**EX, "class": "Nope"}, "Parameter 'class': cannot load iochannel.block.examples.Nope"),
        ({**EX, "module": "no.such.module", "class": "X"}, "cannot load no.such.module.X"),
        ({**EX}, "Parameter 'class' is missing"),
        ({**EX, "class": "RamDisk"}, "RamDisk"),  # size missing: the constructor's error
        ({**EX, "class": "RamDisk", "size": 1, "frob": 2}, "frob"),
        ({**BAD, "class": "BadSize"}, "size() failed"),
        ({**EX, "class": "RamDisk", "size": 1, "timeout": 0}, "'timeout' expects a value in"),
    ],
)
def test_python_driver_refusals(args: dict[str, Any], message: str) -> None:
    s = Storage()
    with pytest.raises(BlockError, match=message.replace("(", r"\(").replace(")", r"\)")):
        s.blockdev_add({"node-name": "p", **args}, typed=True)
    assert s.nodes == {}


def test_misbehaving_driver_costs_only_its_request() -> None:
    s = Storage()
    try:
        node = s.blockdev_add(
            {**BAD, "node-name": "m", "class": "Misbehaving", "timeout": 1}, typed=True
        )
        for offset in (0, 512, 1024):  # raises, hangs, short data
            with pytest.raises(OSError) as info:
                read(node, offset, 512)
            assert info.value.errno == errno.EIO
        assert read(node, 2048, 512) == bytes(512)
    finally:
        s.blockdev_del("m")


def test_guest_side_error_and_export_keeps_serving(tmp_path: Path) -> None:
    sock = tmp_path / "vub.sock"
    argv = [
        "--blockdev", "driver=python,node-name=ram,module=iochannel.block.examples,"
        "class=RamDisk,size=1048576",
        "--blockdev", "driver=python,node-name=bad,module=iochannel.block.examples,"
        "class=ErrorInjector,file=ram,fail-offset=4096,fail-length=512",
        "--export", f"vhost-user-blk,id=e0,node-name=bad,addr.type=unix,addr.path={sock}",
        "--pidfile", str(tmp_path / "pid"),
    ]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "iochannel", *argv], stderr=subprocess.PIPE)
    try:
        wait_for_file(tmp_path / "pid", proc)
        with Frontend(str(sock)) as fe:
            fe.start(1)
            q = fe.queues[0]
            assert submit(fe, q, blk.T_IN, 8, in_len=512)[0] == blk.S_IOERR
            assert submit(fe, q, blk.T_IN, 9, in_len=512)[:2] == (blk.S_OK, bytes(512))
        assert _read_sector(sock, 8)[0] == blk.S_IOERR
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert "injected read error at 4096+512" in err
