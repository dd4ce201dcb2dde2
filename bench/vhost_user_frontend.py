"""vhost-user-blk requests/s driven by the Python front-end: this package's
export / qemu-storage-daemon, side by side on the same image.

Each queue is driven by its own thread keeping DEPTH 4 KiB reads in flight
(and then 64 KiB writes), with 1 and 2 queues.  The driver is Python too, so
the ratio understates the export's own speed when the driver saturates.  The
export is also measured with unsealed guest RAM, which it reaches through
system calls and copies instead of mapping it.
"""

from __future__ import annotations

import shutil
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iochannel.vhost_user.frontend import DATA_BASE, QEMU_SEALS, DriverQueue, Frontend, Segment
from tests.vhost_user.guest import Backend

IMAGE_SIZE = 64 << 20
DEPTH = 32
DURATION = 2.0
SLOT = 0x20000  # guest memory per in-flight request: header, data, status


def drive(fe: Frontend, q: DriverQueue, rtype: int, size: int, stop: float) -> int:
    """Keep DEPTH requests in flight on *q* until *stop*; return completions."""
    base = DATA_BASE + q.index * DEPTH * SLOT
    sectors = IMAGE_SIZE // 512
    slot_of: dict[int, int] = {}

    def submit(k: int, n: int) -> None:
        hdr = base + k * SLOT
        sector = (n * (size // 512) * 7919) % (sectors - size // 512)
        fe.write(hdr, struct.pack("<IIQ", rtype, 0, sector))
        data = Segment(hdr + 0x1000, size, rtype == 0)
        # Fixed descriptors per slot: completions may come out of order.
        head = q.add_chain(
            [Segment(hdr, 16), data, Segment(hdr + 0x1000 + size, 1, True)], head=3 * k
        )
        slot_of[head] = k

    submitted = 0
    for k in range(DEPTH):
        submit(k, submitted)
        submitted += 1
    q.notify()
    done = 0
    while time.monotonic() < stop:
        for head, _ in q.wait_used(1):
            k = slot_of.pop(head)
            if fe.read(base + k * SLOT + 0x1000 + size, 1) != b"\0":
                raise RuntimeError("request failed")
            done += 1
            submit(k, submitted)
            submitted += 1
        q.notify()
    q.wait_used(DEPTH)
    return done


def measure(sock: str, queues: int, rtype: int, size: int, sealed: bool = True) -> float:
    with Frontend(sock, mem_size=64 << 20, seals=QEMU_SEALS if sealed else None) as fe:
        fe.start(queues, size=128)  # 3 descriptors per request
        counts = [0] * queues
        stop = time.monotonic() + DURATION
        start = time.monotonic()

        def run(i: int) -> None:
            counts[i] = drive(fe, fe.queues[i], rtype, size, stop)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(queues)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        fe.stop()
    return sum(counts) / elapsed


def main() -> int:
    if shutil.which("qemu-storage-daemon") is None:
        print("skipped: qemu-storage-daemon is not installed")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "disk.img"
        image.write_bytes(bytes(range(256)) * (IMAGE_SIZE // 256))
        sock = str(Path(tmp) / "vub.sock")
        for label, rtype, size in (("4K read", 0, 4096), ("64K write", 1, 65536)):
            for queues in (1, 2):
                rates = {}
                for kind in ("iochannel", "qsd"):
                    backend = Backend(kind, image, sock, num_queues=2)
                    try:
                        rates[kind] = measure(sock, queues, rtype, size)
                        if kind == "iochannel":
                            rates["unsealed"] = measure(sock, queues, rtype, size, sealed=False)
                    finally:
                        backend.stop()
                print(
                    f"{label:9} {queues} queue(s): iochannel {rates['iochannel']:9.0f} req/s  "
                    f"qemu-storage-daemon {rates['qsd']:9.0f} req/s  "
                    f"ratio {rates['iochannel'] / rates['qsd']:.2f}  "
                    f"unsealed RAM {rates['unsealed'] / rates['iochannel']:.2f} of sealed"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
