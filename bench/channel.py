"""Channel core benchmarks, each measured side by side with its baseline in one run.

* sync bulk over AF_UNIX (64 KiB writes, readv into a preallocated buffer) / a raw socket loop,
  writer and reader pinned to two CPUs, as two threads and as two processes
* asyncio bulk through the channel's async API / asyncio streams
* asyncio 64-byte ping-pong / asyncio streams (also uvloop and trio figures)
* fd-passing messages per second / raw ``socket.sendmsg``/``recvmsg``
* RSS of 10,000 idle socket channels

asyncio streams allocate a 256 KiB bytes object per read, so their speed
depends on glibc's allocator state.  In a process that has done nothing else
each such buffer is mmap()ed and unmapped again; once glibc's dynamic
thresholds have grown (any earlier large free does it) they come from the heap
and streams run up to 2.4 times faster.  Every comparison runs in fresh
interpreters with the thresholds set as a long-running process has them, so
the baselines are measured at their best.

Beside each asyncio figure the floor of a single asyncio thread is printed, so
the cost of the channel engine itself shows: for bulk, fd callbacks that send
and recv_into with no coroutine at all; for ping-pong, one persistent reader
callback and a future per read.  Under each ping-pong figure, the task-read
floor: the same, but with the task making its own read after the wait.  An
engine that keeps a cancelled read from taking bytes has that shape, so the
floor bounds what any such engine can reach.
"""

from __future__ import annotations

import array
import asyncio
import functools
import gc
import multiprocessing
import os
import resource
import select
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor

import trio
import uvloop
from _common import measure, report  # type: ignore[import-not-found]

from iochannel import SocketChannel

CHUNK = 64 * 1024
BULK = 512 * 1024 * 1024
PINGS = 20000
FD_MSGS = 20000
REPEAT = 5


# ---- sync bulk ------------------------------------------------------------------


_CPUS = sorted(os.sched_getaffinity(0))


def _on_cpu(index: int) -> None:
    """Pin the calling thread to one CPU.

    Left alone, the scheduler sometimes runs writer and reader on one CPU and
    sometimes on two, and a run's figure moves by a third; pinned, both sides
    of a comparison run alike.  Every run is a fresh process, so nothing leaks.
    """
    if len(_CPUS) > 1:
        os.sched_setaffinity(0, {_CPUS[index % len(_CPUS)]})


def _bulk_sync(channels: bool, processes: bool = False) -> float:
    """Writer and reader as two threads of this process, or (*processes*) one per process."""
    a, b = socket.socketpair()
    data = bytes(CHUNK)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    if channels:
        ca, cb = SocketChannel(a), SocketChannel(b)

        def write() -> None:
            for _ in range(BULK // CHUNK):
                ca.write_all(data)

        def read() -> None:
            left = BULK
            bufs = [view]
            while left:
                left -= cb.readv(bufs) or 0
    else:

        def write() -> None:
            for _ in range(BULK // CHUNK):
                a.sendall(data)

        def read() -> None:
            left = BULK
            while left:
                left -= b.recv_into(view)

    def pinned_write() -> None:
        _on_cpu(0)
        write()

    _on_cpu(1)
    try:
        return measure(pinned_write, read, BULK, fork=processes)[0]
    finally:
        a.close()
        b.close()


async def _per_second(count: float, *work: Awaitable[object]) -> float:
    """*count* divided by the seconds that *work*, run together, takes."""
    start = time.perf_counter()
    await asyncio.gather(*work)
    return count / (time.perf_counter() - start)


async def _bulk_floor() -> float:
    """The least asyncio allows for bulk: persistent fd callbacks, no coroutines, no channel."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    data = memoryview(bytes(CHUNK))
    view = memoryview(bytearray(CHUNK))
    done = loop.create_future()
    chunks, offset, left = BULK // CHUNK, 0, BULK

    def on_writable() -> None:
        nonlocal chunks, offset
        while chunks:
            try:
                offset += a.send(data[offset:])
            except BlockingIOError:
                return
            if offset == CHUNK:
                chunks, offset = chunks - 1, 0
        loop.remove_writer(a.fileno())

    def on_readable() -> None:
        nonlocal left
        while left:
            try:
                left -= b.recv_into(view)
            except BlockingIOError:
                return
        loop.remove_reader(b.fileno())
        done.set_result(None)

    loop.add_writer(a.fileno(), on_writable)
    loop.add_reader(b.fileno(), on_readable)
    rate = await _per_second(BULK / 1e6, done)
    a.close()
    b.close()
    return rate


# ---- asyncio bulk ----------------------------------------------------------------


async def _bulk_async_channel() -> float:
    a, b = SocketChannel.pair()
    data = bytes(CHUNK)
    buf = bytearray(CHUNK)

    async def write() -> None:
        for _ in range(BULK // CHUNK):
            await a.awrite_all(data)

    async def read() -> None:
        left = BULK
        while left:
            left -= await b.areadinto(buf)

    rate = await _per_second(BULK / 1e6, write(), read())
    a.close()
    b.close()
    return rate


async def _streams_pair() -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamReader, asyncio.StreamWriter
]:
    """asyncio streams on the two ends of a socketpair."""
    sa, sb = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=sa)
    rb, wb = await asyncio.open_connection(sock=sb)
    return ra, wa, rb, wb


async def _bulk_async_streams() -> float:
    _ra, wa, rb, wb = await _streams_pair()
    data = bytes(CHUNK)

    async def write() -> None:
        for _ in range(BULK // CHUNK):
            wa.write(data)
            await wa.drain()

    async def read() -> None:
        left = BULK
        while left:
            left -= len(await rb.read(CHUNK))

    rate = await _per_second(BULK / 1e6, write(), read())
    for w in (wa, wb):
        w.close()
    return rate


# ---- ping-pong -------------------------------------------------------------------


async def _pingpong_channel() -> float:
    a, b = SocketChannel.pair()
    msg = bytes(64)
    abuf, bbuf = bytearray(64), bytearray(64)

    async def echo() -> None:
        for _ in range(PINGS):
            await b.areadv_all((bbuf,))
            await b.awrite_all(bbuf)

    async def client() -> None:
        for _ in range(PINGS):
            await a.awrite_all(msg)
            await a.areadv_all((abuf,))

    rate = await _per_second(PINGS, echo(), client())
    a.close()
    b.close()
    return rate


async def _pingpong_streams() -> float:
    ra, wa, rb, wb = await _streams_pair()
    msg = bytes(64)

    async def echo() -> None:
        for _ in range(PINGS):
            wb.write(await rb.readexactly(64))
            await wb.drain()

    async def client() -> None:
        for _ in range(PINGS):
            wa.write(msg)
            await wa.drain()
            await ra.readexactly(64)

    rate = await _per_second(PINGS, echo(), client())
    for w in (wa, wb):
        w.close()
    return rate


async def _pingpong_trio() -> float:
    sa, sb = trio.socket.socketpair()
    a, b = trio.SocketStream(sa), trio.SocketStream(sb)
    msg = bytes(64)

    async def read_exactly(stream: trio.SocketStream, n: int) -> bytes:
        got = b""
        while len(got) < n:
            got += await stream.receive_some(n - len(got))
        return got

    async def echo() -> None:
        for _ in range(PINGS):
            await b.send_all(await read_exactly(b, 64))

    async def client() -> None:
        for _ in range(PINGS):
            await a.send_all(msg)
            await read_exactly(a, 64)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        nursery.start_soon(client)
    elapsed = time.perf_counter() - start
    await a.aclose()
    await b.aclose()
    return PINGS / elapsed


async def _pingpong_floor(task_reads: bool = False) -> float:
    """The least asyncio allows: one persistent reader callback, a future per read.

    With *task_reads* the callback only ends the wait and the task makes its own
    read, as an engine must for a cancelled read to take no bytes.  The callback
    then confirms the readiness with a poll(2) first: asyncio's default loop
    reports readiness collected before the tasks it woke ran, and a task woken
    for nothing costs more.  No channel engine of that shape can be faster.
    """
    loop = asyncio.get_running_loop()
    sa, sb = socket.socketpair()
    msg = bytes(64)

    class Reader:
        def __init__(self, sock: socket.socket) -> None:
            sock.setblocking(False)
            self.sock, self.buf = sock, bytearray(64)
            self.fut: asyncio.Future[int] | None = None
            self.poller = select.poll()
            self.poller.register(sock, select.POLLIN)
            loop.add_reader(sock.fileno(), self.ready)

        def ready(self) -> None:
            if self.fut is None:
                return
            if not task_reads:
                self.fut.set_result(self.sock.recv_into(self.buf))
                self.fut = None
            elif self.poller.poll(0):
                self.fut.set_result(0)
                self.fut = None

        async def read(self) -> None:
            self.fut = loop.create_future()
            await self.fut
            if task_reads:
                self.sock.recv_into(self.buf)

    ra, rb = Reader(sa), Reader(sb)

    async def echo() -> None:
        for _ in range(PINGS):
            await rb.read()
            sb.send(rb.buf)

    async def client() -> None:
        for _ in range(PINGS):
            sa.send(msg)
            await ra.read()

    rate = await _per_second(PINGS, echo(), client())
    for sock in (sa, sb):
        loop.remove_reader(sock.fileno())
        sock.close()
    return rate


# ---- fd passing ------------------------------------------------------------------


def _fd_passing(channels: bool) -> float:
    a, b = socket.socketpair()
    r, w = os.pipe()
    one = bytearray(1)
    start = time.perf_counter()
    if channels:
        ca, cb = SocketChannel(a), SocketChannel(b)
        fds: list[int] = []
        for _ in range(FD_MSGS):
            ca.writev((b"x",), fds=(r,))
            cb.readv((one,), fds=fds)
            os.close(fds.pop())
    else:
        space = socket.CMSG_SPACE(16 * 4)
        for _ in range(FD_MSGS):
            a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
            _n, anc, _f, _ = b.recvmsg_into([one], space, socket.MSG_CMSG_CLOEXEC)
            got = array.array("i")
            got.frombytes(anc[0][2])
            os.set_blocking(got[0], True)  # what the channel does for every received fd
            os.close(got[0])
    elapsed = time.perf_counter() - start
    for fd in (r, w):
        os.close(fd)
    a.close()
    b.close()
    return FD_MSGS / elapsed


# ---- memory ----------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _idle_memory(count: int = 10000) -> float:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < count + 100:
        print(f"idle channels: fd limit {hard} is below {count}; skipped")
        return 0.0
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 100), hard))
    gc.collect()
    before = _rss_kib()
    channels: list[SocketChannel] = []
    for _ in range(count // 2):
        channels.extend(SocketChannel.pair())
    gc.collect()
    grown = (_rss_kib() - before) / 1024
    for ch in channels:
        ch.close()
    return grown


def run_in(factory: Callable[[], Awaitable[float]], loop: str = "asyncio") -> float:
    """Run *factory* on a fresh asyncio or uvloop loop."""
    if loop == "uvloop":
        return uvloop.run(factory())  # type: ignore[arg-type]
    return asyncio.run(factory())  # type: ignore[arg-type]


def in_loop(factory: Callable[[], Awaitable[float]], loop: str = "asyncio") -> Callable[[], float]:
    return functools.partial(run_in, factory, loop)


def _trio_pingpong() -> float:
    return trio.run(_pingpong_trio)  # type: ignore[no-any-return]


# glibc's allocator as a long-running process has it (see the module docstring).
WARM = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


def compare(
    name: str,
    ours: Callable[[], float],
    base: Callable[[], float],
    unit: str,
    goal: float | None,
    baseline: str,
    floor: Callable[[], float] | None = None,
    task_floor: Callable[[], float] | None = None,
    env: dict[str, str] = WARM,
) -> None:
    """Best of REPEAT alternating runs of each, every run in a fresh interpreter with *env*."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MALLOC_")}
    os.environ.update(env)
    fns = (ours, base, floor, task_floor)
    runs: list[list[float]] = [[] for _ in fns]
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(1, mp_context=context, max_tasks_per_child=1) as pool:
            for _ in range(REPEAT):
                for figures, fn in zip(runs, fns, strict=True):
                    if fn is not None:
                        figures.append(pool.submit(fn).result())
    finally:
        for k in env:
            del os.environ[k]
        os.environ.update(saved)
    a, b, f, t = (max(r) if r else None for r in runs)
    assert a is not None and b is not None
    report(name, a, b, unit, goal, baseline, f)
    if t is not None:
        # What the goal asks of the engine, against what its shape allows at best.
        print(
            f"{'':34} task-read floor {t:12,.1f} {unit}: {t / b:4.2f} x {baseline}, "
            f"ours {a / t:4.2f} of it"
        )


def main() -> None:
    compare(
        "sync bulk AF_UNIX (MB/s)",
        functools.partial(_bulk_sync, True),
        functools.partial(_bulk_sync, False),
        "MB/s",
        0.95,
        "raw socket",
    )
    # Two threads of one process share the GIL, so the side that holds it longer
    # per call also delays the other; one process per side measures the channel alone.
    compare(
        "sync bulk, one process per side",
        functools.partial(_bulk_sync, True, True),
        functools.partial(_bulk_sync, False, True),
        "MB/s",
        None,
        "raw socket",
    )
    compare(
        "asyncio bulk (MB/s)",
        in_loop(_bulk_async_channel),
        in_loop(_bulk_async_streams),
        "MB/s",
        1.5,
        "streams",
        in_loop(_bulk_floor),
    )
    compare(
        "asyncio ping-pong 64 B (rt/s)",
        in_loop(_pingpong_channel),
        in_loop(_pingpong_streams),
        "rt/s",
        1.1,
        "streams",
        in_loop(_pingpong_floor),
        in_loop(functools.partial(_pingpong_floor, True)),
    )
    compare(
        "uvloop ping-pong 64 B (rt/s)",
        in_loop(_pingpong_channel, "uvloop"),
        in_loop(_pingpong_streams, "uvloop"),
        "rt/s",
        0.9,
        "uvloop streams",
        in_loop(_pingpong_floor, "uvloop"),
        in_loop(functools.partial(_pingpong_floor, True), "uvloop"),
    )
    compare(
        "uvloop bulk (MB/s)",
        in_loop(_bulk_async_channel, "uvloop"),
        in_loop(_bulk_async_streams, "uvloop"),
        "MB/s",
        None,
        "uvloop streams",
        in_loop(_bulk_floor, "uvloop"),
    )
    compare(
        "asyncio ping-pong vs trio (rt/s)",
        in_loop(_pingpong_channel),
        _trio_pingpong,
        "rt/s",
        None,
        "trio streams",
        in_loop(_pingpong_floor),
    )
    compare(
        "fd passing (messages/s)",
        functools.partial(_fd_passing, True),
        functools.partial(_fd_passing, False),
        "msg/s",
        0.85,
        "raw sendmsg",
    )
    mib = _idle_memory()
    verdict = "ok" if mib <= 30 else "ABOVE GOAL"
    print(f"{'10,000 idle socket channels':34} {mib:12,.1f} MiB RSS (goal <= 30) {verdict}")


if __name__ == "__main__":
    main()
