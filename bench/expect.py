"""Finding a prompt at the end of a long console stream.

``dd`` sends a 50 MB boot-log-like stream, then the pattern, in 4 KiB writes
over an AF_UNIX socketpair; the main thread waits for the pattern:

* ours: ``Console.expect_exact`` (text mode, UTF-8) on a ``SocketChannel``;
* pexpect: ``fdpexpect.fdspawn(...).expect_exact`` on the same kind of socket,
  text mode, ``maxread=65536`` (its default of 2000 is slower) — goal: ours >= 5x;
* QEMU's functional-test style: ``recv(1)`` in a loop, a line at a time.  It is
  run on the first 4 MB only and its rate compared (for information).

The rate is bounded by the writer too; the reader's own cost is also shown,
as MB per CPU second of the waiting thread (for information).

Then the latency from the writer's last byte to ``expect`` returning, over
many short rounds: p50 and p99, ours and pexpect's.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable

from _common import report  # type: ignore[import-not-found]
from pexpect import fdpexpect

from iochannel import SocketChannel
from iochannel.console import Console

SIZE = 50 * 1000 * 1000
BYTE_LOOP_SIZE = 4 * 1000 * 1000
WRITE = 4096
PATTERN = "buildroot login: "
LINE = b"[    1.234567] virtio_blk virtio2: [vda] 131072 512-byte logical blocks\r\n"
ROUNDS = 3
LATENCY_ROUNDS = 300


def _stream(size: int) -> bytes:
    return (LINE * (size // len(LINE) + 1))[:size] + PATTERN.encode()


def _send(sock: socket.socket, data: bytes, stamp: list[float]) -> None:
    view = memoryview(data)
    for i in range(0, len(view), WRITE):
        sock.sendall(view[i : i + WRITE])
    stamp.append(time.perf_counter())


def _timed(size: int, wait: Callable[[socket.socket], None]) -> tuple[float, float]:
    """MB/s of waiting for the pattern at the end of *size* bytes, and MB per CPU second.

    The second figure counts only the waiting thread's CPU time: what the
    reader costs, whatever the writer's speed and the machine's load.
    """
    with tempfile.NamedTemporaryFile() as f:
        f.write(_stream(size))
        f.flush()
        ours, peer = socket.socketpair()
        start = time.perf_counter()
        # dd writes 4 KiB per write(2) and is not slowed by sharing our GIL.
        writer = subprocess.Popen(["dd", f"if={f.name}", f"bs={WRITE}", "status=none"], stdout=peer)
        peer.close()
        try:
            cpu = time.thread_time()
            wait(ours)
            elapsed = time.perf_counter() - start
            cpu = time.thread_time() - cpu
        finally:
            ours.close()
            writer.wait()
    total = (size + len(PATTERN)) / 1e6
    return total / elapsed, total / cpu


def _ours(sock: socket.socket) -> None:
    c = Console(SocketChannel(sock.dup()), timeout=600)
    with c:
        c.expect_exact(PATTERN)


def _pexpect(sock: socket.socket) -> None:
    p = fdpexpect.fdspawn(sock.fileno(), encoding="utf-8", maxread=65536, timeout=600)
    p.expect_exact(PATTERN)


def _byte_loop(sock: socket.socket) -> None:
    """QEMU's wait_for_console_pattern: one recv(1) per byte, a line at a time."""
    pattern = PATTERN.encode()
    line = b""
    while True:
        c = sock.recv(1)
        if not c:
            raise EOFError("console closed")
        line += c
        if c == b"\n":
            line = b""
        elif pattern in line:
            return


def _latencies(wait: Callable[[socket.socket], Callable[[], None]]) -> list[float]:
    """Seconds from the pattern's last byte written to the wait returning."""
    ours, peer = socket.socketpair()
    expect_once = wait(ours)
    chunk = _stream(8 * WRITE)
    out = []
    try:
        for _ in range(LATENCY_ROUNDS):
            stamp: list[float] = []
            writer = threading.Thread(target=_send, args=(peer, chunk, stamp))
            writer.start()
            expect_once()
            done = time.perf_counter()
            writer.join()
            out.append(done - stamp[0])
    finally:
        ours.close()
        peer.close()
    return out


def _ours_waiter(sock: socket.socket) -> Callable[[], None]:
    c = Console(SocketChannel(sock.dup()), timeout=60)
    return lambda: c.expect_exact(PATTERN) and None


def _pexpect_waiter(sock: socket.socket) -> Callable[[], None]:
    p = fdpexpect.fdspawn(sock.fileno(), encoding="utf-8", maxread=65536, timeout=60)
    return lambda: p.expect_exact(PATTERN) and None


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1e6


def main() -> None:
    ours_runs = [_timed(SIZE, _ours) for _ in range(ROUNDS)]
    theirs_runs = [_timed(SIZE, _pexpect) for _ in range(ROUNDS)]
    ours, theirs = max(r[0] for r in ours_runs), max(r[0] for r in theirs_runs)
    byte_loop = _timed(BYTE_LOOP_SIZE, _byte_loop)[0]
    report("expect 50 MB in 4 KiB writes", ours, theirs, "MB/s", 5.0, "pexpect")
    report(
        "  the same, per reader CPU second",
        max(r[1] for r in ours_runs),
        max(r[1] for r in theirs_runs),
        "MB/cpu-s",
        None,
        "pexpect",
    )
    report(
        f"vs recv(1) loop ({BYTE_LOOP_SIZE // 10**6} MB run)",
        ours,
        byte_loop,
        "MB/s",
        None,
        "recv(1)",
    )
    for name, waiter in (("ours", _ours_waiter), ("pexpect", _pexpect_waiter)):
        lat = _latencies(waiter)
        print(
            f"latency last byte -> expect, {name:8} p50 {_pct(lat, 50):8.1f} us  "
            f"p99 {_pct(lat, 99):8.1f} us",
            flush=True,
        )


if __name__ == "__main__":
    main()
