"""A real QEMU guest boots against the export; the same checks run against
qemu-storage-daemon side by side.

Every boot exercises a device start by SeaBIOS (queue 0 only, minimal
features) followed by a reset and a second start by Linux.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class Run:
    """One guest booted against one back-end; the back-end may be restarted."""

    kind: str
    image: Path
    sock: str
    backend: Backend
    guest: Guest | None = None

    def restart_backend(self) -> None:
        self.backend.kill()
        self.backend = Backend(self.kind, self.image, self.sock)


@contextmanager
def booted(
    tmp_path: Path,
    kind: str,
    script: str,
    *,
    writable: bool = True,
    queues: int = 1,
    **guest: Any,
) -> Iterator[Run]:
    """Boot a guest running *script* on a fresh image; on success it must end cleanly."""
    image = _image(tmp_path)
    kernel, initrd = build_initrd(tmp_path, script)
    sock = str(tmp_path / "vub.sock")
    backend = Backend(kind, image, sock, writable=writable, num_queues=queues)
    run = Run(kind, image, sock, backend)
    try:
        run.guest = Guest(kernel, initrd, sock, num_queues=queues, **guest)
        try:
            yield run
            run.guest.expect("GUEST-END")
            assert run.guest.wait() == 0
        finally:
            run.guest.close()
    finally:
        assert run.backend.stop() == 0, run.backend.log.read_text()


@pytest.mark.parametrize("kind", BACKENDS)
def test_boot_read_write_reboot(tmp_path: Path, kind: str) -> None:
    with booted(tmp_path, kind, BOOT_SCRIPT, queues=2, reboot=True) as run:
        guest = run.guest
        assert guest is not None
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
    assert run.image.read_bytes()[8 * 512 : 8 * 512 + 27] == b"GUEST-WROTE-THIS-0123456789"


UNSEALED_SCRIPT = r"""
echo "MAGIC:$(dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | head -c 16)"
echo GUEST-WROTE-THIS-0123456789 > /tmp/pat
dd if=/tmp/pat of=/dev/vda bs=512 seek=8 conv=sync oflag=direct 2>/dev/null && echo WRITE-OK
echo "READBACK:$(dd if=/dev/vda bs=512 skip=8 count=1 iflag=direct 2>/dev/null | head -c 27)"
dd if=/dev/vda of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null && echo BIG-READ-OK
"""


def test_guest_ram_in_a_tmpfs_file(tmp_path: Path) -> None:
    """QEMU's memory-backend-file on tmpfs cannot be sealed: the export serves
    it through system calls."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    with booted(tmp_path, "iochannel", UNSEALED_SCRIPT, mem_path="/dev/shm") as run:
        guest = run.guest
        assert guest is not None
        assert guest.expect(r"MAGIC:(.*)").group(1) == "HOST-MAGIC-01234"
        guest.expect("WRITE-OK")
        assert guest.expect(r"READBACK:(.*)").group(1) == "GUEST-WROTE-THIS-0123456789"
        guest.expect("BIG-READ-OK")
    assert run.image.read_bytes()[8 * 512 : 8 * 512 + 27] == b"GUEST-WROTE-THIS-0123456789"


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
    with booted(tmp_path, kind, RO_SCRIPT, writable=False) as run:
        guest = run.guest
        assert guest is not None
        assert guest.expect(r"RO:(\d)").group(1) == "1"
        assert guest.expect(r"MAGIC:(.*)").group(1) == "HOST-MAGIC-01234"
        assert guest.expect(r"WRITE-(\w+)").group(1) == "REFUSED"
    assert run.image.read_bytes()[8 * 512 : 8 * 512 + 512] == bytes(512)


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
    with booted(tmp_path, kind, RECONNECT_SCRIPT, reconnect=1) as run:
        guest = run.guest
        assert guest is not None
        assert guest.expect(r"PHASE1:(.*)").group(1) == "HOST-MAGIC-01234"
        run.restart_backend()
        with open(run.image, "r+b") as f:
            f.seek(16 * 512)
            f.write(b"GO")
        guest.expect("PHASE2-OK")
    assert run.image.read_bytes()[24 * 512 : 24 * 512 + 15] == b"AFTER-RECONNECT"
