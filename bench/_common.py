"""Helpers shared by the benchmark scripts: timing, best-of runs and ratio reports."""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable

from iochannel import Channel

CHUNK = 64 * 1024
ROUNDS = 5


def verdict(ratio: float, goal: float | None) -> str:
    """How *ratio* stands against *goal* (``None``: a figure printed for information)."""
    if goal is None:
        return "(for information)"
    return f"(goal >= {goal}) " + ("ok" if ratio >= goal else "BELOW GOAL")


def report(
    name: str,
    ours: float,
    base: float,
    unit: str,
    goal: float | None,
    baseline: str,
    floor: float | None = None,
) -> None:
    """Print one comparison; *goal* ``None`` marks a figure printed for information.

    *floor*, for asyncio figures, is what the loop allows with bare fd callbacks:
    ours against it is the share the channel engine leaves.
    """
    ratio = ours / base
    beside = (
        "" if floor is None else f"  [fd-callback floor {floor:12,.1f}, ours {ours / floor:4.2f}]"
    )
    print(
        f"{name:34} {ours:12,.1f} {unit:8} vs {baseline} {base:12,.1f}  "
        f"ratio {ratio:6.3f} {verdict(ratio, goal)}{beside}",
        flush=True,
    )


Rates = tuple[float, float]  # (MB/s of wall time, MB per CPU-second)


def best_pair(ours: Callable[[], Rates], base: Callable[[], Rates]) -> tuple[Rates, Rates]:
    """Best rates of each over ROUNDS, alternating runs so load changes hit both alike."""
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(ours())
        b.append(base())
    return (max(r[0] for r in a), max(r[1] for r in a)), (
        max(r[0] for r in b),
        max(r[1] for r in b),
    )


def measure(
    write: Callable[[], None], read: Callable[[], None], bulk: int, *, fork: bool = False
) -> Rates:
    """Run *write* in a thread (or a forked child) and *read* here; the rates for *bulk* bytes.

    The CPU figure counts both sides, the child's too.
    """
    cpu, start = time.process_time(), time.perf_counter()
    if fork:
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                write()
            except BaseException:
                traceback.print_exc()  # as a writer thread's error would be
                status = 1
            finally:
                os._exit(status)
        read()
        child = os.wait4(pid, 0)[2]
        child_cpu = child.ru_utime + child.ru_stime
    else:
        t = threading.Thread(target=write)
        t.start()
        read()
        t.join()
        child_cpu = 0.0
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu + child_cpu
    return bulk / wall / 1e6, bulk / cpu / 1e6


def report_both(name: str, ours: Rates, base: Rates, goal: float | None, baseline: str) -> None:
    report(name, ours[0], base[0], "MB/s", goal, baseline)
    report(name + " per CPU", ours[1], base[1], "MB/cpu-s", goal, baseline)


def layer_bulk(client: Channel, server: Channel, bulk: int, *, fork: bool = False) -> Rates:
    """Handshake *client* and *server* (layers over a pair), then move *bulk* bytes one way.

    With *fork*, the client writes from a child process (see :func:`measure`).
    """
    t = threading.Thread(target=server.handshake)  # type: ignore[attr-defined]
    t.start()
    client.handshake()  # type: ignore[attr-defined]
    t.join()
    data = bytes(CHUNK)
    bufs = [memoryview(bytearray(CHUNK))]

    def write() -> None:
        for _ in range(bulk // CHUNK):
            client.write_all(data)

    def read() -> None:
        left = bulk
        while left:
            left -= server.readv(bufs) or 0

    try:
        return measure(write, read, bulk, fork=fork)
    finally:
        client.close()
        server.close()
