"""vhost-user-blk in a real guest: this package's export / qemu-storage-daemon.

Boots the test guest (QEMU TCG, Debian kernel, busybox initramfs) once per
back-end on the same image and runs a static direct-I/O load generator
(``vhost_user_guest_io.c``, built with ``gcc -static``) at queue depth 1:

* sequential 1 MiB reads (throughput ratio, goal ≥ 0.5);
* random 4 KiB reads (IOPS ratio);
* sequential 1 MiB writes (throughput ratio).

Beside each figure, per transfer: the back-end's CPU time and its context
switches (all its threads, from /proc; switches voluntary and involuntary),
which show what a request costs and its thread hops.

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


def _thread_totals(pid: int, name: str, keys: tuple[str, ...]) -> float:
    """The sum of *keys* in /proc/PID/task/*/NAME (the figures of ended threads are lost)."""
    total = 0.0
    for path in Path(f"/proc/{pid}/task").glob(f"*/{name}"):
        try:
            lines = path.read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key.strip() in keys:
                total += float(value)
    return total


def usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, context switches) of the threads of *pid* so far."""
    cpu_ms = _thread_totals(pid, "sched", ("se.sum_exec_runtime",))
    switches = _thread_totals(
        pid, "status", ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
    )
    return cpu_ms / 1000, switches


def run(
    kind: str, workdir: Path, kernel: Path, initrd: Path, image: Path
) -> dict[str, tuple[float, float, float]]:
    """{test: (MiB/s or IOPS, back-end CPU seconds and context switches per transfer)}"""
    sock = str(workdir / "vub.sock")
    backend = Backend(kind, image, sock, num_queues=1)
    try:
        guest = Guest(kernel, initrd, sock, num_queues=1, smp=1, mem="512M")
        try:
            results: dict[str, tuple[float, float, float]] = {}
            guest.expect("GUEST-START")
            used = usage(backend.proc.pid)
            for name, *_ in TESTS:
                m = guest.expect(rf"RESULT {name} ops=(\d+) bytes=(\d+) ns=(\d+)", timeout=600)
                ops, nbytes, ns = (int(x) for x in m.groups())
                before, used = used, usage(backend.proc.pid)
                rate = (nbytes if "4K" not in name else ops) / (ns / 1e9)
                results[name] = (
                    rate,
                    (used[0] - before[0]) / ops,
                    (used[1] - before[1]) / ops,
                )
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
        # The best round of each back-end, with its CPU time and context switches.
        best: dict[str, dict[str, tuple[float, float, float]]] = {"iochannel": {}, "qsd": {}}
        for _ in range(ROUNDS):
            for kind in best:
                for name, value in run(kind, workdir, kernel, initrd, image).items():
                    best[kind][name] = max(best[kind].get(name, (0.0, 0.0, 0.0)), value)
        for name, *_ in TESTS:
            unit = "IOPS" if "4K" in name else "MiB/s"
            scale = 1 if "4K" in name else 1 / (1 << 20)
            shown = [
                f"{kind} {rate * scale:9.1f} {unit} ({cpu * 1e6:5.0f} us CPU, {cs:4.1f} cs/op)"
                for kind, (rate, cpu, cs) in (
                    ("iochannel", best["iochannel"][name]),
                    ("qemu-storage-daemon", best["qsd"][name]),
                )
            ]
            ratio = best["iochannel"][name][0] / best["qsd"][name][0]
            print(f"{name:14} {shown[0]}  {shown[1]}  ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
