"""The engine's contract with asyncio itself, on the default loop and on uvloop.

A channel's async calls await genuine futures of the running loop and nothing
else, so any asyncio task implementation drives them: a wait resumes its task
through the loop's own scheduling, on the next iteration at the latest, in the
task's context.  Cancelling a task mid-wait or mid-transfer loses and repeats
no byte, and leaves the channel usable.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from iochannel import Condition, SocketChannel

LOOPS = pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")


@pytest.fixture
def pair() -> Iterator[tuple[SocketChannel, SocketChannel]]:
    """A connected socket pair, closed after the test."""
    ch, peer = SocketChannel.pair()
    yield ch, peer
    ch.close()
    peer.close()


def run(new_loop: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, None]) -> None:
    loop = new_loop()
    try:
        loop.run_until_complete(coro)
    finally:
        loop.close()


@LOOPS
def test_a_wait_is_a_future_of_the_running_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop], pair: tuple[SocketChannel, SocketChannel]
) -> None:
    """Driven by hand, a read that must wait yields a plain future of the running loop."""
    ch, peer = pair

    async def main() -> None:
        read = ch.aread_all(2)
        yielded = read.send(None)  # runs the read up to its first wait
        assert isinstance(yielded, asyncio.Future)
        assert yielded.get_loop() is asyncio.get_running_loop()
        peer.write_all(b"ab")
        for _ in range(1000):  # the loop ends the wait; this task only watches it
            if yielded.done():
                break
            await asyncio.sleep(0.001)
        with pytest.raises(StopIteration) as stop:
            read.send(None)
        assert stop.value.value == b"ab"

    run(new_loop, main())


@LOOPS
def test_a_wait_resumes_its_task_by_the_next_iteration_in_its_context(
    new_loop: Callable[[], asyncio.AbstractEventLoop], pair: tuple[SocketChannel, SocketChannel]
) -> None:
    """Readiness resumes the waiting task within an iteration, as that task, in its context."""
    ch, peer = pair
    iterations = 0

    async def main() -> None:
        nonlocal iterations
        loop = asyncio.get_running_loop()

        async def reader() -> None:
            request_id.set("reader's own")
            before = iterations
            data = await ch.aread_all(3)
            # The peer wrote before the wait started to count: resumed at most
            # one iteration after the loop saw the fd readable.
            assert iterations - before <= 2, iterations - before
            assert data == b"abc"
            assert asyncio.current_task() is task
            assert request_id.get() == "reader's own"

        def tick() -> None:
            nonlocal iterations
            iterations += 1
            if not task.done():
                loop.call_soon(tick)

        request_id.set("main's")
        task = asyncio.ensure_future(reader())
        await asyncio.sleep(0.01)  # the read now waits
        peer.write_all(b"abc")
        loop.call_soon(tick)
        await task
        assert request_id.get() == "main's"

    run(new_loop, main())


@LOOPS
def test_cancelling_a_read_mid_transfer_loses_and_repeats_nothing(
    new_loop: Callable[[], asyncio.AbstractEventLoop], pair: tuple[SocketChannel, SocketChannel]
) -> None:
    """A read_all cancelled part-way: its bytes stay in its buffer, the rest comes next."""
    ch, peer = pair

    async def main() -> None:
        buf = bytearray(8)
        read = asyncio.ensure_future(ch.areadv_all((buf,)))
        await asyncio.sleep(0.01)
        peer.write_all(b"0123")
        for _ in range(50):  # until the read took the first part and waits again
            await asyncio.sleep(0.001)
            if buf[:4] == b"0123":
                break
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        assert bytes(buf[:4]) == b"0123"
        peer.write_all(b"4567")
        # The cancelled read took nothing more: the next read starts at "4".
        assert await asyncio.wait_for(ch.aread_all(4), 10) == b"4567"

    run(new_loop, main())


@LOOPS
def test_cancelling_a_write_mid_transfer_sends_a_prefix_and_nothing_later(
    new_loop: Callable[[], asyncio.AbstractEventLoop], pair: tuple[SocketChannel, SocketChannel]
) -> None:
    """A write_all cancelled part-way has sent a prefix of its data and sends no more of it."""
    ch, peer = pair
    ch.set_send_buffer(4096)
    data = bytes(range(256)) * 4096  # 1 MiB: far more than the socket holds

    async def main() -> None:
        write = asyncio.ensure_future(ch.awrite_all(data))
        await asyncio.sleep(0.05)  # the write filled the socket and waits
        assert not write.done()
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write

        async def drain() -> bytes:
            received = bytearray()
            while not received.endswith(b"END!"):
                received += await peer.aread(65536)
            return bytes(received)

        reader = asyncio.ensure_future(drain())
        await asyncio.wait_for(ch.awrite_all(b"END!"), 10)
        received = await asyncio.wait_for(reader, 10)
        sent = received[:-4]
        assert 0 < len(sent) < len(data)
        assert data.startswith(sent)

    run(new_loop, main())


@LOOPS
def test_cancelling_mid_wait_leaves_the_channel_usable(
    new_loop: Callable[[], asyncio.AbstractEventLoop], pair: tuple[SocketChannel, SocketChannel]
) -> None:
    """After cancelled waits, reads, writes and wake_read() behave as on a fresh channel."""
    ch, peer = pair

    async def main() -> None:
        for _ in range(3):
            read = asyncio.ensure_future(ch.aread_all(1))
            await asyncio.sleep(0.005)
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
        peer.write_all(b"x")
        assert await asyncio.wait_for(ch.aread_all(1), 10) == b"x"
        await ch.awrite_all(b"y")
        assert peer.read_all(1) == b"y"
        ch.wake_read()
        assert await asyncio.wait_for(ch.wait_async(Condition.IN), 10) == Condition.NONE

    run(new_loop, main())
