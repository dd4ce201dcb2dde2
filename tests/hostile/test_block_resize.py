"""block_resize against the real daemon: bad sizes, resizes under I/O, drivers that fail.

Each costs at most its own command: a clear QMP error, and the daemon, its
exports and its other monitors go on.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from iochannel.vhost_user import blk
from iochannel.vhost_user.frontend import Frontend
from iochannel.vhost_user.protocol import BackendRequest
from tests.vhost_user.test_blk import submit

from .conftest import Daemon, QmpConnection

MiB = 1 << 20


class _Qmp(QmpConnection):
    """Whole replies, errors included."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        assert self.cmd("qmp_capabilities") == {"return": {}}

    def cmd(self, name: str, **args: Any) -> dict[str, Any]:
        self.sock.sendall(json.dumps({"execute": name, "arguments": args}).encode())
        while "event" in (reply := self.reply()):
            pass
        return dict(reply)


def _start(hostile_daemon: Any, tmp_path: Path, *extra: str) -> tuple[Daemon, _Qmp]:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(MiB))
    d: Daemon = hostile_daemon(
        *("--object", "iothread,id=io0"),
        *("--blockdev", f"driver=file,node-name=f0,filename={image}"),
        *("--blockdev", "driver=raw,node-name=r0,file=f0"),
        *extra,
        *("-chardev", f"socket,id=qmp,path={tmp_path / 'qmp.sock'},server=on,wait=off"),
        *("--monitor", "chardev=qmp"),
        *("-chardev", f"socket,id=qmp2,path={tmp_path / 'qmp2.sock'},server=on,wait=off"),
        *("--monitor", "chardev=qmp2"),
    )
    return d, _Qmp(tmp_path / "qmp.sock")


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("1M", "Invalid parameter type for 'size', expected: integer"),
        (1.5, "Invalid parameter type for 'size', expected: integer"),
        (True, "Invalid parameter type for 'size', expected: integer"),
        (None, "Invalid parameter type for 'size', expected: integer"),
        ([MiB], "Invalid parameter type for 'size', expected: integer"),
        (1 << 63, "Invalid parameter type for 'size', expected: integer"),
        (1 << 64, "Invalid parameter type for 'size', expected: integer"),
        (-(1 << 63) - 1, "Invalid parameter type for 'size', expected: integer"),
        (-1, "Parameter 'size' expects a >0 size"),
        (-(1 << 63), "Parameter 'size' expects a >0 size"),
        ((1 << 63) - 1, "offset(9223372036854775807) exceeds maximum(9223372035781033984)"),
        (9223372035781033984, "Could not resize file: File too large"),
    ],
)
def test_bad_sizes_get_a_clear_error(
    hostile_daemon: Any, tmp_path: Path, size: Any, message: str
) -> None:
    d, qmp = _start(hostile_daemon, tmp_path)
    try:
        reply = qmp.cmd("block_resize", **{"node-name": "r0", "size": size})
        assert reply == {"error": {"class": "GenericError", "desc": message}}
        assert (tmp_path / "disk.img").stat().st_size == MiB
        assert qmp.cmd("block_resize", **{"node-name": "r0", "size": 2 * MiB}) == {"return": {}}
    finally:
        qmp.close()
    d.assert_intact()


def test_resize_while_a_front_end_does_io(hostile_daemon: Any, tmp_path: Path) -> None:
    sock = tmp_path / "vub.sock"
    export = (
        f"type=vhost-user-blk,id=e0,node-name=r0,addr.type=unix,addr.path={sock},"
        "writable=on,num-queues=2,iothread=io0,"
        "iothread-vq-mapping.0.iothread=io0,iothread-vq-mapping.1.iothread=io1"
    )
    d, qmp = _start(
        hostile_daemon, tmp_path, *("--object", "iothread,id=io1"), *("--export", export)
    )
    statuses: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    try:
        with Frontend(str(sock)) as fe:
            fe.start(2)
            channel = fe.open_backend_channel()

            def io() -> None:
                # Requests straddle the size the daemon keeps changing.
                try:
                    i = 0
                    while not stop.is_set():
                        q = fe.queues[i % 2]
                        sector = MiB // 512 - 4 + i % 8
                        kind = blk.T_OUT if i % 2 else blk.T_IN
                        out = b"w" * 512 if kind == blk.T_OUT else b""
                        statuses.append(submit(fe, q, kind, sector, out, 0 if out else 512)[0])
                        i += 1
                except BaseException as exc:
                    failures.append(exc)

            worker = threading.Thread(target=io)
            worker.start()
            try:
                for n in range(40):
                    size = MiB + (1 - n % 2) * 4096
                    assert qmp.cmd("block_resize", **{"node-name": "r0", "size": size}) == {
                        "return": {}
                    }
                    assert fe.read_backend_request()[0] == BackendRequest.CONFIG_CHANGE_MSG
            finally:
                stop.set()
                worker.join()
            assert not failures, failures
            assert set(statuses) <= {blk.S_OK, blk.S_IOERR} and blk.S_OK in statuses
            capacity = struct.unpack("<Q", fe.get_config(0, 8))[0]
            assert capacity == MiB // 512
            channel.settimeout(0.1)
            with pytest.raises(TimeoutError):
                channel.recv(1)  # one message per change, nothing more
    finally:
        qmp.close()
    d.assert_intact()


def test_python_driver_resize_that_raises_or_hangs(hostile_daemon: Any, tmp_path: Path) -> None:
    driver = "driver=python,node-name=p0,module=tests.block.drivers_for_tests,class=BadResize"
    d, qmp = _start(hostile_daemon, tmp_path, "--blockdev", f"{driver},timeout=2")
    other = _Qmp(tmp_path / "qmp2.sock")
    try:
        reply = qmp.cmd("block_resize", **{"node-name": "p0", "size": 4096})
        assert reply["error"]["desc"] == (
            "Could not resize node 'p0': python driver of node 'p0' failed: "
            "ValueError: cannot shrink that far"
        )
        # A hanging resize holds up its own command only: the other monitor answers.
        qmp.sock.sendall(b'{"execute": "block_resize", "arguments": {"node-name": "p0", '
                         b'"size": 8192}}')  # fmt: skip
        time.sleep(0.2)
        began = time.monotonic()
        nodes = other.cmd("query-named-block-nodes")["return"]
        assert time.monotonic() - began < 1
        assert {n["node-name"] for n in nodes} == {"f0", "r0", "p0"}
        busy = other.cmd("blockdev-del", **{"node-name": "p0"})
        assert busy["error"]["desc"] == "Node p0 is in use by a block_resize still running"
        assert qmp.reply()["error"]["desc"] == (
            "Could not resize node 'p0': python driver of node 'p0' failed: timed out after 2 s"
        )
        assert qmp.cmd("block_resize", **{"node-name": "p0", "size": 2 * MiB}) == {"return": {}}
        assert qmp.cmd("blockdev-del", **{"node-name": "p0"}) == {"return": {}}
    finally:
        other.close()
        qmp.close()
    d.wait_log("timed out after 2 s")
    d.assert_intact()
