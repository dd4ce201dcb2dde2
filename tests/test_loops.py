"""Event-loop integration: waits follow the calling coroutine's loop (any loop, any thread)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from iochannel import ChannelClosedError, Condition, NetListener, SocketChannel, UnixAddress
from iochannel.testing import check_two_way_channel


async def until_suspended(task: asyncio.Future[Any]) -> None:
    """Let *task* run to its first suspension: a loop runs ready callbacks in order."""
    await asyncio.sleep(0)
    assert not task.done(), "the task was expected to wait"


async def loop_rounds(n: int) -> None:
    """Let the loop poll for I/O and run what that wakes, *n* times."""
    for _ in range(n):
        await asyncio.sleep(0)


def _in_loop_thread(
    factory: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, object]
) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        loop = factory()
        try:
            loop.run_until_complete(coro)
        except BaseException as exc:
            errors.append(exc)
        finally:
            loop.close()

    t = threading.Thread(target=run)
    t.errors = errors  # type: ignore[attr-defined]
    t.start()
    return t


@pytest.mark.parametrize(
    ("loop_a", "loop_b"),
    [
        (asyncio.new_event_loop, asyncio.new_event_loop),
        (uvloop.new_event_loop, uvloop.new_event_loop),
        (asyncio.new_event_loop, uvloop.new_event_loop),
    ],
    ids=["asyncio", "uvloop", "mixed"],
)
def test_read_on_loop_a_write_on_loop_b(
    loop_a: Callable[[], asyncio.AbstractEventLoop],
    loop_b: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Seed 004: one channel, a reader coroutine on loop A, a writer on loop B, no attach calls."""
    ch, peer = SocketChannel.pair()
    count = 2000

    async def reader() -> None:
        for i in range(count):
            assert await ch.aread_all(4) == i.to_bytes(4, "big")

    async def writer() -> None:
        for i in range(count):
            await ch.awrite_all(i.to_bytes(4, "big"))

    def echo() -> None:
        for _ in range(count):
            peer.write_all(peer.read_all(4))

    echo_thread = threading.Thread(target=echo)
    echo_thread.start()
    threads = [_in_loop_thread(loop_a, reader()), _in_loop_thread(loop_b, writer())]
    for t in threads:
        t.join(60)
        assert not t.errors  # type: ignore[attr-defined]
    echo_thread.join(60)
    ch.close()
    peer.close()


def test_wait_moves_between_loops() -> None:
    """A read wait on loop A woken by wake_read continues on loop B without losing data."""
    ch, peer = SocketChannel.pair()
    ch.set_blocking(False)
    woken = threading.Event()

    async def wait_on_a() -> None:
        cond = await ch.wait_async(Condition.IN)
        assert cond == Condition.NONE
        woken.set()

    t = _in_loop_thread(asyncio.new_event_loop, wait_on_a())
    while not woken.is_set():
        ch.wake_read()
        woken.wait(0.01)
    t.join()

    async def read_on_b() -> bytes:
        return await ch.aread_all(5)

    peer.write_all(b"moved")
    assert uvloop.run(read_on_b()) == b"moved"
    ch.close()
    peer.close()


def test_conformance_under_uvloop() -> None:
    # The suite runs asyncio.run(); under uvloop's policy every loop it makes is a uvloop.
    policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        check_two_way_channel(SocketChannel.pair)
    finally:
        asyncio.set_event_loop_policy(policy)


def test_close_from_other_thread_ends_async_wait() -> None:
    ch, peer = SocketChannel.pair()

    async def main() -> None:
        closer = threading.Timer(0.05, ch.close)
        closer.start()
        with pytest.raises(ChannelClosedError):
            await ch.aread(1)
        closer.join()

    asyncio.run(main())
    peer.close()


def test_netlistener_all_addresses_and_clients(tmp_path: Any) -> None:
    async def main() -> None:
        listener = NetListener(name="svc")
        listener.open(UnixAddress(str(tmp_path / "a.sock")))
        listener.open(UnixAddress(str(tmp_path / "b.sock")))
        assert len(listener.channels) == 2
        clients = [
            SocketChannel.connect(UnixAddress(str(tmp_path / n))) for n in ("a.sock", "b.sock")
        ]
        got = []
        async for server in listener:
            got.append(server)
            if len(got) == 2:
                break
        for c in clients:
            c.write_all(b"x")
        for s in got:
            assert await s.aread(1) == b"x"
            s.close()
        for c in clients:
            c.close()
        listener.close()
        assert not (tmp_path / "a.sock").exists()

    asyncio.run(main())


def test_netlistener_localhost_resolves_to_every_address() -> None:
    from iochannel import InetAddress

    with NetListener() as listener:
        listener.open(InetAddress("localhost", "0"))
        assert 1 <= len(listener.channels) <= 2
        addr = listener.local_addresses[0]
        client = SocketChannel.connect(addr)
        server = listener.wait_client(timeout=10)
        assert server is not None
        server.close()
        client.close()


def test_netlistener_callback() -> None:
    from iochannel import InetAddress

    async def main() -> None:
        got: asyncio.Queue[SocketChannel] = asyncio.Queue()
        with NetListener() as listener:
            listener.open(InetAddress("127.0.0.1", "0"), backlog=4)
            listener.set_client_callback(lambda _l, client: got.put_nowait(client))
            c = await SocketChannel.connect_async(listener.local_addresses[0])
            s = await asyncio.wait_for(got.get(), 10)
            s.close()
            c.close()

    asyncio.run(main())


def test_wake_read_before_the_wait_is_not_lost() -> None:
    ch, peer = SocketChannel.pair()
    ch.set_blocking(False)
    ch.wake_read()  # nobody waits yet
    assert ch.wait(Condition.IN, timeout=10) == Condition.NONE  # returns at once
    assert ch.wait(Condition.IN, timeout=0) == Condition.NONE  # the wake was used up

    async def main() -> None:
        ch.wake_read()
        assert await asyncio.wait_for(ch.wait_async(Condition.IN), 10) == Condition.NONE
        peer.write_all(b"x")
        assert await ch.aread(1) == b"x"

    asyncio.run(main())
    ch.close()
    peer.close()


async def _read_after_waiting(ch: SocketChannel, peer: SocketChannel, data: bytes) -> None:
    read = asyncio.ensure_future(ch.aread_all(len(data)))
    await until_suspended(read)
    peer.write_all(data)
    assert await read == data


def test_loop_goes_quiet_when_nobody_waits() -> None:
    """After a read, data arriving with no wait pending stops being watched (no busy loop)."""
    ch, peer = SocketChannel.pair()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await _read_after_waiting(ch, peer, b"a")
        peer.write_all(b"b")  # level-triggered: readable until read, yet nobody waits
        await loop_rounds(3)  # the loop reports it once, and nobody is listed
        # No longer registered, so the loop does not spin on it (remove_reader says
        # whether it was).
        assert not loop.remove_reader(ch.fileno())
        assert await ch.aread_all(1) == b"b"

    asyncio.run(main())
    ch.close()
    peer.close()


def test_alternating_loops_keep_reading() -> None:
    """Reads that alternate between two loops in two threads each see their own bytes."""
    ch, peer = SocketChannel.pair()
    ch.set_blocking(False)

    async def read_one(expect: bytes) -> None:
        assert await ch.aread_all(len(expect)) == expect

    for i in range(20):
        data = i.to_bytes(2, "big")
        t = _in_loop_thread(
            asyncio.new_event_loop if i % 2 else uvloop.new_event_loop, read_one(data)
        )
        peer.write_all(data)
        t.join()
        assert not t.errors  # type: ignore[attr-defined]
    ch.close()
    peer.close()


def test_unclosed_channel_used_async_is_collected() -> None:
    """A channel dropped without close() after async use is finalised (fd closed, warning)."""
    import gc
    import os
    import weakref

    async def main() -> weakref.ref[SocketChannel]:
        ch, peer = SocketChannel.pair()
        await _read_after_waiting(ch, peer, b"x")
        await ch.awrite_all(b"y")
        assert peer.read_all(1) == b"y"
        peer.close()
        fd = ch.fileno()
        ref = weakref.ref(ch)
        del ch
        gc.collect()
        assert ref() is None, "a waiter kept between waits must not keep the channel alive"
        with pytest.raises(OSError):
            os.fstat(fd)
        return ref

    with pytest.warns(ResourceWarning, match="unclosed channel"):
        asyncio.run(main())


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_cancelled_read_takes_no_bytes(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """A read cancelled while it waits (here by a timeout) leaves later bytes to the next read."""
    ch, peer = SocketChannel.pair()

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ch.aread_all(2), 0.02)
        # The cancelled read no longer counts as waiting: a wake is kept for the next wait.
        ch.wake_read()
        assert await asyncio.wait_for(ch.wait_async(Condition.IN), 10) == Condition.NONE
        peer.write_all(b"ab")
        assert await ch.aread_all(2) == b"ab"
        # Cancelled again, once the channel's waiter is kept subscribed: still nothing lost.
        reader = asyncio.ensure_future(ch.aread_all(1))
        await until_suspended(reader)
        reader.cancel("stop")
        with pytest.raises(asyncio.CancelledError, match="stop"):
            await reader
        peer.write_all(b"c")
        assert await ch.aread_all(1) == b"c"

    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    ch.close()
    peer.close()


def test_reader_resumed_by_readiness_sees_other_tasks_run() -> None:
    """A read finished by readiness resumes its task at once, yet tasks stay independent.

    Two echo pairs on one loop, each task waiting in turn: every exchange
    completes, in order, with no task resumed inside another.
    """

    async def pair_exchange(tag: bytes) -> list[bytes]:
        a, b = SocketChannel.pair()
        seen: list[bytes] = []

        async def echo() -> None:
            for _ in range(50):
                buf = await b.aread_all(3)
                assert asyncio.current_task() is echo_task
                await b.awrite_all(buf)

        echo_task = asyncio.ensure_future(echo())
        for i in range(50):
            msg = tag + i.to_bytes(2, "big")
            await a.awrite_all(msg)
            seen.append(await a.aread_all(3))
        await echo_task
        a.close()
        b.close()
        return seen

    async def main() -> None:
        x, y = await asyncio.gather(pair_exchange(b"x"), pair_exchange(b"y"))
        assert x == [b"x" + i.to_bytes(2, "big") for i in range(50)]
        assert y == [b"y" + i.to_bytes(2, "big") for i in range(50)]

    asyncio.run(main())


@pytest.mark.parametrize("how", ["close", "wake_read"])
def test_waiters_never_run_inside_the_call_that_ends_their_wait(how: str) -> None:
    """close() or wake_read() from a plain loop callback returns before the waiting task resumes."""
    ch, peer = SocketChannel.pair()
    events: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def reader() -> None:
            try:
                await ch.wait_async(Condition.IN)
            except ChannelClosedError:
                pass
            events.append("reader resumed")

        task = asyncio.ensure_future(reader())
        await until_suspended(task)

        def end_wait() -> None:
            getattr(ch, how)()
            events.append(f"{how} returned")

        loop.call_soon(end_wait)
        await task

    try:
        asyncio.run(main())
    finally:
        ch.close()
        peer.close()
    assert events == [f"{how} returned", "reader resumed"]


def test_a_watch_and_a_read_share_one_fd() -> None:
    """A watch and async reads on the same fd all hear it, whichever came first or ended."""
    ch, peer = SocketChannel.pair()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[Condition] = []
        fired = asyncio.Event()

        def on_ready(_ch: object, ready: Condition) -> bool:
            seen.append(ready)
            fired.set()
            return True

        watch = ch.add_watch(Condition.IN, on_ready, loop=loop)
        await loop_rounds(1)  # the watch alone on the fd
        read = asyncio.ensure_future(ch.aread_all(2))
        await until_suspended(read)  # then the read joins it
        peer.write_all(b"ab")
        assert await asyncio.wait_for(read, 10) == b"ab"
        # The watch is told after the read took the bytes (a watch reports
        # only readiness that still holds); it must still hear what comes next.
        fired.clear()
        peer.write_all(b"c")
        await asyncio.wait_for(fired.wait(), 10)
        assert all(r & Condition.IN for r in seen)
        watch.cancel()
        await loop_rounds(3)
        assert not loop.remove_reader(ch.fileno()), "nobody left: the fd stops being watched"
        assert await ch.aread_all(1) == b"c"

    asyncio.run(main())
    ch.close()
    peer.close()


def test_a_read_waits_on_its_own_loop_while_the_last_one_runs_on() -> None:
    """The waiter of a read on loop A (still running in its thread) is not used on loop B."""
    ch, peer = SocketChannel.pair()
    ch.set_blocking(False)
    first_done = threading.Event()
    release_a = threading.Event()
    loops: dict[str, asyncio.AbstractEventLoop] = {}

    waiting_a = threading.Event()
    waiting_b = threading.Event()

    async def on_a() -> None:
        loops["a"] = asyncio.get_running_loop()
        # Runs once this task waits in the read below.
        loops["a"].call_soon(waiting_a.set)
        assert await ch.aread_all(1) == b"a"
        first_done.set()
        # Loop A keeps running while B reads: its waiter must stay its own.
        await asyncio.get_running_loop().run_in_executor(None, release_a.wait, 30)

    async def on_b() -> None:
        loops["b"] = asyncio.get_running_loop()
        read = asyncio.ensure_future(ch.aread_all(1))
        await until_suspended(read)
        waiting_b.set()
        got = await asyncio.wait_for(read, 10)
        assert got == b"b"
        assert asyncio.get_running_loop() is loops["b"]
        assert threading.current_thread() is t_b

    # Each byte is sent once its read waits, so both reads go through the loop.
    t_a = _in_loop_thread(asyncio.new_event_loop, on_a())
    assert waiting_a.wait(10)
    peer.write_all(b"a")
    assert first_done.wait(10)
    t_b = _in_loop_thread(asyncio.new_event_loop, on_b())
    assert waiting_b.wait(10)
    peer.write_all(b"b")
    t_b.join(20)
    release_a.set()
    t_a.join(20)
    assert not t_a.errors  # type: ignore[attr-defined]
    assert not t_b.errors  # type: ignore[attr-defined]
    ch.close()
    peer.close()


def test_a_forked_child_never_waits_on_the_inherited_loop() -> None:
    """After a fork inside a running loop, a read in the child refuses the parent's loop.

    The child's copy of the loop shares the parent's epoll instance: waiting on
    it would steal the parent's events.  asyncio reports no running loop there.
    """
    ch, peer = SocketChannel.pair()

    async def main() -> int:
        read = asyncio.ensure_future(ch.aread_all(1))
        await until_suspended(read)  # waiting: its waiter stays on this loop after
        peer.write_all(b"x")
        assert await read == b"x"
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                await ch.aread_all(1)
            except RuntimeError as exc:
                status = 0 if "no running event loop" in str(exc) else 2
            finally:
                os._exit(status)
        for _ in range(1000):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            await asyncio.sleep(0.01)
        os.kill(pid, signal.SIGKILL)  # it waited on the parent's loop
        os.waitpid(pid, 0)
        return -1

    assert asyncio.run(main()) == 0
    ch.close()
    peer.close()


class _CountingChannel(SocketChannel):
    """Counts the read calls that found nothing (would block)."""

    failed_reads = 0

    def _readv(self, buffers: Any, flags: Any, fds: Any) -> int | None:
        n = super()._readv(buffers, flags, fds)
        if n is None:
            self.failed_reads += 1
        return n


def test_exact_reads_make_no_call_bound_to_fail() -> None:
    """Request/response: one failed call in all; bytes that keep coming: read at once.

    On asyncio's default loop; uvloop reports no stale readiness, so there the
    hint never holds (see iochannel._core.watch).
    """
    a, ch = _CountingChannel.pair()
    buf = bytearray(8)

    async def main() -> None:
        async def replies() -> None:
            for _ in range(50):
                await a.aread_all(8)
                await a.awrite_all(b"response")

        peer = asyncio.ensure_future(replies())
        for _ in range(50):
            await ch.awrite_all(b"request!")
            await ch.areadv_all((buf,))
        await peer
        # Only the first read called before the reply was there.
        assert ch.failed_reads == 1
        # Ten messages already queued: the exact reads get them with no failed
        # call, and only the read after them finds nothing.
        a.write_all(b"streamed" * 10)
        for _ in range(10):
            await ch.areadv_all((buf,))
        assert ch.failed_reads == 1
        late = asyncio.ensure_future(ch.areadv_all((buf,)))
        await loop_rounds(3)
        a.write_all(b"the last")
        await late
        assert bytes(buf) == b"the last"
        assert ch.failed_reads == 2

    # The default loop by name: the test matrix makes asyncio.run() use uvloop.
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        runner.run(main())
    a.close()
    ch.close()
