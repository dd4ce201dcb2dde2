"""A qemu-storage-daemon command line runs unchanged on ``iochannel``, and serves I/O."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from iochannel.vhost_user import blk
from iochannel.vhost_user.frontend import Frontend
from tests.conftest import iochannel_process
from tests.vhost_user.test_blk import submit


def _qmp(path: Path, *commands: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        f = s.makefile("rw")
        f.readline()
        replies = []
        for name, args in [("qmp_capabilities", {}), *commands]:
            f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
            f.flush()
            while "event" in (reply := json.loads(f.readline())):
                pass
            replies.append(reply)
        f.close()
        return replies[1:]


def _read_sector(sock: Path, sector: int) -> tuple[int, bytes]:
    with Frontend(str(sock)) as fe:
        fe.start(1)
        status, data, _ = submit(fe, fe.queues[0], blk.T_IN, sector, in_len=512)
        return status, data


def test_qsd_command_line_and_qmp_export_on_iothread(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"\xab" * (1 << 20))
    vub, vub2, qmp = tmp_path / "vub.sock", tmp_path / "vub2.sock", tmp_path / "qmp.sock"
    argv = [
        "--object", "iothread,id=io0",
        "--blockdev", f"driver=file,node-name=file0,filename={image},cache.direct=off,aio=threads",
        "--blockdev", "driver=null-co,node-name=null0,size=1048576,read-zeroes=on",
        "--export", f"vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={vub},"
        "writable=on,num-queues=1,iothread=io0",
        "--chardev", f"socket,id=m,path={qmp},server=on,wait=off",
        "--monitor", "chardev=m",
    ]  # fmt: skip
    with iochannel_process(tmp_path / "pid", *argv):
        assert _read_sector(vub, 0) == (blk.S_OK, b"\xab" * 512)
        export = {
            "type": "vhost-user-blk",
            "id": "exp1",
            "node-name": "null0",
            "addr": {"type": "unix", "path": str(vub2)},
        }
        added = _qmp(
            qmp,
            ("object-add", {"qom-type": "iothread", "id": "io1"}),
            ("block-export-add", {**export, "iothread": "io1"}),
        )
        assert added == [{"return": {}}, {"return": {}}]
        assert _read_sector(vub2, 3) == (blk.S_OK, bytes(512))
        refused, deleted, gone, query = _qmp(
            qmp,
            ("object-del", {"id": "io1"}),
            ("block-export-del", {"id": "exp1"}),
            ("object-del", {"id": "io1"}),
            ("query-block-exports", {}),
        )
        assert refused["error"]["desc"] == "object 'io1' is in use by export 'exp1'"
        assert deleted == gone == {"return": {}}
        assert [e["id"] for e in query["return"]] == ["exp0"]
        assert not vub2.exists()
        # The first export still serves after all that.
        assert _read_sector(vub, 2047) == (blk.S_OK, b"\xab" * 512)
    assert not vub.exists()


def test_version_and_trace(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "iochannel", "-V"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("iochannel ")
    log = tmp_path / "trace.log"
    check = subprocess.run(
        [sys.executable, "-m", "iochannel", "-T", f"vhost_user_*,file={log}", "--check",
         "--blockdev", "null-co,node-name=n"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "iochannel", "-T", "events=list.txt", "--check"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 1 and "'events' files are not supported" in bad.stderr
