"""vhost-user-blk in a real guest: this package's export / qemu-storage-daemon.

Boots the test guest (QEMU TCG, Debian kernel, busybox initramfs) once per
back-end on the same image and runs a static direct-I/O load generator
(``vhost_user_guest_io.c``, built with ``gcc -static``) at queue depth 1:

* sequential 1 MiB reads (throughput ratio, goal ≥ 0.5);
* random 4 KiB reads (IOPS ratio);
* sequential 1 MiB writes (throughput ratio).

Beside each figure: the back-end's context switches per transfer (all its
threads, voluntary and involuntary, from /proc), which shows thread hops.

Needs qemu-system-x86_64, qemu-storage-daemon, busybox, cpio, gcc and a
Debian kernel in /boot.  Figures under TCG are dominated by guest emulation,
so they compare the two back-ends, not absolute speeds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.vhost_user.guest import Backend, Guest, build_initrd

IMAGE_SIZE = 256 << 20
ROUNDS = 2
TESTS = [
    ("seq-read-1M", "read", 1 << 20, 192),
    ("rand-read-4K", "randread", 4096, 3000),
    ("seq-write-1M", "write", 1 << 20, 96),
]


def build_tool(workdir: Path) -> Path:
    src = Path(__file__).with_name("vhost_user_guest_io.c")
    out = workdir / "gio"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(src)], check=True)
    return out


def context_switches(pid: int) -> int:
    """Context switches of the threads of *pid* so far (those of ended threads are lost)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                total += int(value)
    return total


def run(
    kind: str, workdir: Path, kernel: Path, initrd: Path, image: Path
) -> dict[str, tuple[float, float]]:
    """{test: (MiB/s or IOPS, back-end context switches per transfer)}"""
    sock = str(workdir / "vub.sock")
    backend = Backend(kind, image, sock, num_queues=1)
    try:
        guest = Guest(kernel, initrd, sock, num_queues=1, smp=1, mem="512M")
        try:
            results: dict[str, tuple[float, float]] = {}
            guest.expect("GUEST-START")
            switches = context_switches(backend.proc.pid)
            for name, *_ in TESTS:
                m = guest.expect(rf"RESULT {name} ops=(\d+) bytes=(\d+) ns=(\d+)", timeout=600)
                ops, nbytes, ns = (int(x) for x in m.groups())
                before, switches = switches, context_switches(backend.proc.pid)
                rate = (nbytes if "4K" not in name else ops) / (ns / 1e9)
                results[name] = (rate, (switches - before) / ops)
            guest.expect("GUEST-END")
            guest.wait()
        finally:
            guest.close()
    finally:
        backend.stop()
    return results


def main() -> int:
    for prog in ("qemu-system-x86_64", "qemu-storage-daemon", "busybox", "cpio", "gcc"):
        if shutil.which(prog) is None:
            print(f"skipped: {prog} is not installed")
            return 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        image = workdir / "disk.img"
        with open(image, "wb") as f:
            # Written data, so neither back-end reads holes.
            chunk = bytes(range(256)) * 4096
            for _ in range(IMAGE_SIZE // len(chunk)):
                f.write(chunk)
        tool = build_tool(workdir)
        commands = "".join(
            f"echo RESULT {name} $(gio /dev/vda {mode} {bs} {count})\n"
            for name, mode, bs, count in TESTS
        )
        kernel, initrd = build_initrd(workdir, commands, extra=[tool])
        # The best round of each back-end, with its context switches.
        best: dict[str, dict[str, tuple[float, float]]] = {"iochannel": {}, "qsd": {}}
        for _ in range(ROUNDS):
            for kind in best:
                for name, value in run(kind, workdir, kernel, initrd, image).items():
                    best[kind][name] = max(best[kind].get(name, (0.0, 0.0)), value)
        for name, *_ in TESTS:
            (ours, ours_cs), (base, base_cs) = best["iochannel"][name], best["qsd"][name]
            unit = "IOPS" if "4K" in name else "MiB/s"
            scale = 1 if "4K" in name else 1 / (1 << 20)
            print(
                f"{name:14} iochannel {ours * scale:9.1f} {unit} ({ours_cs:4.1f} cs/op)  "
                f"qemu-storage-daemon {base * scale:9.1f} {unit} ({base_cs:4.1f} cs/op)  "
                f"ratio {ours / base:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
