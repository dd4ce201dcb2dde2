"""A TCG guest boots against a vhost-user-blk export added over QMP on an iothread."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.block.test_process import _qmp
from tests.conftest import iochannel_process
from tests.vhost_user.guest import Guest, build_initrd

pytestmark = pytest.mark.slow

SCRIPT = r"""
echo "SIZE:$(cat /sys/block/vda/size)"
echo "MAGIC:$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c 16)"
echo GUEST-WROTE-THIS-0123456789 > /tmp/pat
dd if=/tmp/pat of=/dev/vda bs=512 seek=8 conv=sync,fsync 2>/dev/null && echo WRITE-OK
echo "READBACK:$(dd if=/dev/vda bs=512 skip=8 count=1 iflag=direct 2>/dev/null | head -c 27)"
"""


def test_guest_on_export_added_over_qmp(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
        f.write(b"HOST-MAGIC-01234")
    sock, qmp = tmp_path / "vub.sock", tmp_path / "qmp.sock"
    argv = [
        "--object", "iothread,id=io0",
        "--blockdev", f"driver=file,node-name=file0,filename={image}",
        "--chardev", f"socket,id=m,path={qmp},server=on,wait=off",
        "--monitor", "chardev=m",
    ]  # fmt: skip
    with iochannel_process(tmp_path / "pid", *argv, log=tmp_path / "daemon.log"):
        export = {
            "type": "vhost-user-blk",
            "id": "exp0",
            "node-name": "file0",
            "addr": {"type": "unix", "path": str(sock)},
            "writable": True,
            "num-queues": 2,
            "iothread": "io0",
        }
        added = _qmp(
            qmp,
            ("blockdev-add", {"driver": "raw", "node-name": "disk0", "file": "file0"}),
            ("block-export-add", {**export, "node-name": "disk0"}),
        )
        assert added == [{"return": {}}, {"return": {}}]
        kernel, initrd = build_initrd(tmp_path, SCRIPT)
        guest = Guest(kernel, initrd, str(sock), num_queues=2)
        try:
            assert guest.expect(r"SIZE:(\d+)").group(1) == str((64 << 20) // 512)
            assert guest.expect(r"MAGIC:(.*)").group(1) == "HOST-MAGIC-01234"
            guest.expect("WRITE-OK")
            assert guest.expect(r"READBACK:(.*)").group(1) == "GUEST-WROTE-THIS-0123456789"
            guest.expect("GUEST-END")
            assert guest.wait() == 0
        finally:
            guest.close()
        (deleted,) = _qmp(qmp, ("block-export-del", {"id": "exp0"}))
        assert deleted == {"return": {}}
    assert image.read_bytes()[8 * 512 : 8 * 512 + 27] == b"GUEST-WROTE-THIS-0123456789"


RESIZE_SCRIPT = r"""
echo "SIZE:$(cat /sys/block/vda/size)"
echo GUEST-WROTE-THIS-0123456789 > /tmp/pat
dd if=/tmp/pat of=/dev/vda bs=512 seek=8 conv=sync,fsync 2>/dev/null && echo WRITE-OK
# Reads keep going while the host resizes.
(while [ ! -e /tmp/stop ]; do
  dd if=/dev/vda of=/dev/null bs=64k count=256 iflag=direct 2>/dev/null
done) &
n=0
while [ "$(cat /sys/block/vda/size)" = "131072" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
echo "NEWSIZE:$(cat /sys/block/vda/size)"
echo > /tmp/stop
wait
dd if=/dev/vda of=/dev/null bs=512 skip=262000 count=8 iflag=direct 2>/dev/null && echo READ-END-OK
"""


def test_guest_sees_block_resize_with_queues_on_two_iothreads(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    sock, qmp = tmp_path / "vub.sock", tmp_path / "qmp.sock"
    argv = [
        "--blockdev", f"driver=file,node-name=file0,filename={image}",
        "--chardev", f"socket,id=m,path={qmp},server=on,wait=off",
        "--monitor", "chardev=m",
    ]  # fmt: skip
    with iochannel_process(tmp_path / "pid", *argv, log=tmp_path / "daemon.log"):
        export = {
            "type": "vhost-user-blk",
            "id": "exp0",
            "node-name": "disk0",
            "addr": {"type": "unix", "path": str(sock)},
            "writable": True,
            "num-queues": 2,
            "iothread": "io0",
            "iothread-vq-mapping": [{"iothread": "io0"}, {"iothread": "io1"}],
        }
        added = _qmp(
            qmp,
            ("object-add", {"qom-type": "iothread", "id": "io0"}),
            ("object-add", {"qom-type": "iothread", "id": "io1"}),
            ("blockdev-add", {"driver": "raw", "node-name": "disk0", "file": "file0"}),
            ("block-export-add", export),
        )
        assert added == [{"return": {}}] * 4
        kernel, initrd = build_initrd(tmp_path, RESIZE_SCRIPT)
        guest = Guest(kernel, initrd, str(sock), num_queues=2)
        try:
            assert guest.expect(r"SIZE:(\d+)").group(1) == str((64 << 20) // 512)
            guest.expect("WRITE-OK")
            time.sleep(0.5)  # the guest's reads are under way
            resized = _qmp(qmp, ("block_resize", {"node-name": "disk0", "size": 128 << 20}))
            assert resized == [{"return": {}}]
            assert guest.expect(r"NEWSIZE:(\d+)").group(1) == str((128 << 20) // 512)
            guest.expect("READ-END-OK")
            guest.expect("GUEST-END")
            assert guest.wait() == 0
        finally:
            guest.close()
    assert image.stat().st_size == 128 << 20
    assert image.read_bytes()[8 * 512 : 8 * 512 + 27] == b"GUEST-WROTE-THIS-0123456789"
