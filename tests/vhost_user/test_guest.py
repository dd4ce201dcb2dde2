"""A real QEMU guest boots against the export; the same checks run against
qemu-storage-daemon side by side.

Every boot exercises a device start by SeaBIOS (queue 0 only, minimal
features) followed by a reset and a second start by Linux.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .guest import Backend, Guest, build_initrd

pytestmark = pytest.mark.slow

BACKENDS = ["iochannel", "qsd"]
SIZE = 64 << 20

BOOT_SCRIPT = r"""
if dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | grep -q REBOOTED; then
  echo "SECOND-BOOT $(dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c 8)"
  exit 0
fi
echo "SIZE:$(cat /sys/block/vda/size)"
echo "SERIAL:$(cat /sys/block/vda/serial)"
echo "RO:$(cat /sys/block/vda/ro)"
echo "QUEUES:$(ls /sys/block/vda/mq | wc -l)"
echo "MAGIC:$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c 16)"
echo GUEST-WROTE-THIS-0123456789 > /tmp/pat
dd if=/tmp/pat of=/dev/vda bs=512 seek=8 conv=sync,fsync 2>/dev/null && echo WRITE-OK
echo 3 > /proc/sys/vm/drop_caches
echo "READBACK:$(dd if=/dev/vda bs=512 skip=8 count=1 iflag=direct 2>/dev/null | head -c 27)"
# Both queues busy at once: two readers on two CPUs.
dd if=/dev/vda of=/dev/null bs=64k count=256 iflag=direct 2>/dev/null &
dd if=/dev/vda of=/dev/null bs=64k count=256 skip=256 iflag=direct 2>/dev/null &
wait && echo PARALLEL-OK
echo REBOOTED > /tmp/r
dd if=/tmp/r of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null
sync
reboot -f
"""


def _image(tmp_path: Path) -> Path:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(SIZE)
        f.write(b"HOST-MAGIC-01234")
    return image


@pytest.mark.parametrize("kind", BACKENDS)
def test_boot_read_write_reboot(tmp_path: Path, kind: str) -> None:
    image = _image(tmp_path)
    kernel, initrd = build_initrd(tmp_path, BOOT_SCRIPT)
    sock = str(tmp_path / "vub.sock")
    backend = Backend(kind, image, sock, num_queues=2)
    try:
        guest = Guest(kernel, initrd, sock, num_queues=2, reboot=True)
        try:
            assert guest.expect(r"SIZE:(\d+)").group(1) == str(SIZE // 512)
            assert guest.expect(r"SERIAL:(.*)").group(1) == "vhost_user_blk"
            assert guest.expect(r"RO:(\d)").group(1) == "0"
            assert guest.expect(r"QUEUES:\s*(\d+)").group(1) == "2"
            assert guest.expect(r"MAGIC:(.*)").group(1) == "HOST-MAGIC-01234"
            guest.expect("WRITE-OK")
            assert guest.expect(r"READBACK:(.*)").group(1) == "GUEST-WROTE-THIS-0123456789"
            guest.expect("PARALLEL-OK")
            # The guest rebooted: SeaBIOS and Linux start the device again.
            assert guest.expect(r"SECOND-BOOT (.*)").group(1) == "REBOOTED"
            guest.expect("GUEST-END")
            assert guest.wait() == 0
        finally:
            guest.close()
    finally:
        assert backend.stop() == 0, backend.log.read_text()
    assert image.read_bytes()[8 * 512 : 8 * 512 + 27] == b"GUEST-WROTE-THIS-0123456789"


RO_SCRIPT = r"""
echo "RO:$(cat /sys/block/vda/ro)"
echo "MAGIC:$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c 16)"
echo X > /tmp/x
if dd if=/tmp/x of=/dev/vda bs=512 seek=8 conv=sync oflag=direct 2>/dev/null; then
  echo WRITE-ACCEPTED
else
  echo WRITE-REFUSED
fi
"""


@pytest.mark.parametrize("kind", BACKENDS)
def test_read_only_export(tmp_path: Path, kind: str) -> None:
    image = _image(tmp_path)
    kernel, initrd = build_initrd(tmp_path, RO_SCRIPT)
    sock = str(tmp_path / "vub.sock")
    backend = Backend(kind, image, sock, writable=False)
    try:
        guest = Guest(kernel, initrd, sock)
        try:
            assert guest.expect(r"RO:(\d)").group(1) == "1"
            assert guest.expect(r"MAGIC:(.*)").group(1) == "HOST-MAGIC-01234"
            assert guest.expect(r"WRITE-(\w+)").group(1) == "REFUSED"
            guest.expect("GUEST-END")
            assert guest.wait() == 0
        finally:
            guest.close()
    finally:
        assert backend.stop() == 0, backend.log.read_text()
    assert image.read_bytes()[8 * 512 : 8 * 512 + 512] == bytes(512)


RECONNECT_SCRIPT = r"""
echo "PHASE1:$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c 16)"
n=0
until dd if=/dev/vda bs=512 skip=16 count=1 iflag=direct 2>/dev/null | grep -q GO; do
  sleep 0.5; n=$((n+1)); [ $n -gt 120 ] && break
done
echo AFTER-RECONNECT > /tmp/a
dd if=/tmp/a of=/dev/vda bs=512 seek=24 conv=sync oflag=direct 2>/dev/null && echo PHASE2-OK
"""


@pytest.mark.parametrize("kind", BACKENDS)
def test_backend_restart_with_reconnect(tmp_path: Path, kind: str) -> None:
    image = _image(tmp_path)
    kernel, initrd = build_initrd(tmp_path, RECONNECT_SCRIPT)
    sock = str(tmp_path / "vub.sock")
    backend = Backend(kind, image, sock)
    try:
        guest = Guest(kernel, initrd, sock, reconnect=1)
        try:
            assert guest.expect(r"PHASE1:(.*)").group(1) == "HOST-MAGIC-01234"
            backend.kill()
            backend = Backend(kind, image, sock)
            with open(image, "r+b") as f:
                f.seek(16 * 512)
                f.write(b"GO")
            guest.expect("PHASE2-OK")
            guest.expect("GUEST-END")
            assert guest.wait() == 0
        finally:
            guest.close()
    finally:
        assert backend.stop() == 0, backend.log.read_text()
    assert image.read_bytes()[24 * 512 : 24 * 512 + 15] == b"AFTER-RECONNECT"
