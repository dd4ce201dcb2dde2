"""vhost-user-blk in a real guest: this package's export / qemu-storage-daemon.

Boots the test guest (QEMU TCG, Debian kernel, busybox initramfs) once per
back-end on the same image and runs a static direct-I/O load generator
(``vhost_user_guest_io.c``, built with ``gcc -static``) at queue depth 1:

* sequential 1 MiB reads (throughput ratio);
* random 4 KiB reads (IOPS ratio);
* sequential 1 MiB writes (throughput ratio);

each against qemu-storage-daemon, with the goal of at least :data:`GOAL`.

Beside each figure, per transfer: the back-end's CPU time and its context
switches (all its threads, from /proc; switches voluntary and involuntary),
which show what a request costs and its thread hops.

Then ``num-queues=2`` scaling: the export with its two virtqueues on one
iothread, then on two, while a guest with two vCPUs runs the same tests as two
jobs at once, one pinned to each vCPU (so each drives its own queue).  The
figure is the sum of both jobs' transfers over the slower job's time.  On a
machine with as few CPUs as this benchmark's guest and back-end have threads,
they compete for the cores, and the machine's CPU count is printed with it.

Needs qemu-system-x86_64, qemu-storage-daemon, busybox, cpio, gcc and a
Debian kernel in /boot.  Figures under TCG are dominated by guest emulation,
so they compare the two back-ends, not absolute speeds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import verdict  # type: ignore[import-not-found]

from tests.vhost_user.guest import Backend, Guest, build_initrd

#: Each single-queue figure against qemu-storage-daemon's.
GOAL = 0.9
IMAGE_SIZE = 256 << 20
ROUNDS = 2
TESTS = [
    ("seq-read-1M", "read", 1 << 20, 192),
    ("rand-read-4K", "randread", 4096, 3000),
    ("seq-write-1M", "write", 1 << 20, 96),
]
#: What the load generator prints for one job.
JOB = r"ops=(\d+) bytes=(\d+) ns=(\d+)"
#: The num-queues=2 layouts: (name, --object values, export keys).
LAYOUTS = [
    ("one iothread", ["iothread,id=io0"], "iothread=io0"),
    (
        "two iothreads",
        ["iothread,id=io0", "iothread,id=io1"],
        "iothread-vq-mapping.0.iothread=io0,iothread-vq-mapping.1.iothread=io1",
    ),
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


@contextmanager
def booted(backend: Backend, kernel: Path, initrd: Path, sock: str, queues: int) -> Iterator[Guest]:
    """The guest (one vCPU per queue) on *backend*, once its script starts; both end after."""
    try:
        guest = Guest(kernel, initrd, sock, num_queues=queues, smp=queues, mem="512M")
        try:
            guest.expect("GUEST-START")
            yield guest
            guest.expect("GUEST-END")
            guest.wait()
        finally:
            guest.close()
    finally:
        backend.stop()


def run(
    kind: str, workdir: Path, kernel: Path, initrd: Path, image: Path
) -> dict[str, tuple[float, float, float]]:
    """{test: (MiB/s or IOPS, back-end CPU seconds and context switches per transfer)}"""
    sock = str(workdir / "vub.sock")
    backend = Backend(kind, image, sock, num_queues=1)
    results: dict[str, tuple[float, float, float]] = {}
    with booted(backend, kernel, initrd, sock, 1) as guest:
        used = usage(backend.proc.pid)
        for name, *_ in TESTS:
            m = guest.expect(rf"RESULT {name} {JOB}", timeout=600)
            ops, nbytes, ns = (int(x) for x in m.groups())
            before, used = used, usage(backend.proc.pid)
            rate = (nbytes if "4K" not in name else ops) / (ns / 1e9)
            results[name] = (rate, (used[0] - before[0]) / ops, (used[1] - before[1]) / ops)
    return results


def run_two_queues(
    workdir: Path, kernel: Path, initrd: Path, image: Path, objects: list[str], export: str
) -> dict[str, float]:
    """{test: MiB/s or IOPS of two guest jobs on a num-queues=2 export laid out as given}"""
    sock = str(workdir / "vub.sock")
    backend = Backend("iochannel", image, sock, num_queues=2, objects=objects, export=export)
    results: dict[str, float] = {}
    with booted(backend, kernel, initrd, sock, 2) as guest:
        for name, *_ in TESTS:
            m = guest.expect(rf"RESULT {name} {JOB} {JOB}", timeout=600)
            ops0, bytes0, ns0, ops1, bytes1, ns1 = (int(x) for x in m.groups())
            done = bytes0 + bytes1 if "4K" not in name else ops0 + ops1
            results[name] = done / (max(ns0, ns1) / 1e9)
    return results


def two_queue_script() -> str:
    """Each test as two jobs at once, pinned to vCPU 0 and vCPU 1."""
    return "".join(
        f"taskset 1 gio /dev/vda {mode} {bs} {count} >/tmp/job0 &\n"
        f"taskset 2 gio /dev/vda {mode} {bs} {count} >/tmp/job1 &\n"
        f"wait\necho RESULT {name} $(cat /tmp/job0) $(cat /tmp/job1)\n"
        for name, mode, bs, count in TESTS
    )


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
            print(f"{name:14} {shown[0]}  {shown[1]}  ratio {ratio:.3f} {verdict(ratio, GOAL)}")

        kernel, initrd = build_initrd(workdir, two_queue_script(), extra=[tool])
        scaled: dict[str, dict[str, float]] = {layout: {} for layout, *_ in LAYOUTS}
        for _ in range(ROUNDS):
            for layout, objects, export in LAYOUTS:
                got = run_two_queues(workdir, kernel, initrd, image, objects, export)
                for name, rate in got.items():
                    scaled[layout][name] = max(scaled[layout].get(name, 0.0), rate)
        print(
            f"num-queues=2, two guest jobs (2 vCPUs; {os.cpu_count()} host CPUs shared by "
            "guest and back-end):"
        )
        for name, *_ in TESTS:
            unit = "IOPS" if "4K" in name else "MiB/s"
            scale = 1 if "4K" in name else 1 / (1 << 20)
            one, two = (scaled[layout][name] for layout, *_ in LAYOUTS)
            print(
                f"{name:14} one iothread {one * scale:9.1f} {unit}  "
                f"two iothreads {two * scale:9.1f} {unit}  scaling {two / one:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
