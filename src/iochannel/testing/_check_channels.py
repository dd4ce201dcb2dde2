"""The channel conformance suite: one set of checks every channel and layer must pass.

Each check takes a *pair maker*: a zero-argument callable returning
``(a, b)`` where bytes written to ``a`` are read from ``b``.  Makers for
two-way channels return ends that also carry ``b → a``; a loopback channel
(a command that echoes) returns the same object twice.  Every check closes
what it creates.

* :func:`check_one_way_channel` — QEMU's 1 MB pattern (250 chunks of 4194
  bytes, chunk *i* filled with byte *i*, one buffer per chunk) through
  blocking and non-blocking threads, asyncio, and two loops in two threads;
  end of stream; close ending a pending blocking and async wait; ``wake_read``;
  watches; feature checks; operations on a closed channel.
* :func:`check_two_way_channel` — the above both ways, plus one channel read
  on loop A in one thread while it is written on loop B in another.
* :func:`check_half_closeable_channel` — ``shutdown(WRITE)`` gives the peer end
  of stream while the other direction still works.
* :func:`check_fd_passing_channel` — three fds of one file arrive distinct and
  refer to the same open file.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .._core.channel import Channel
from .._core.flags import Condition, Feature, ReadFlag, Shutdown
from ..errors import ChannelClosedError, ChannelEOFError, ChannelError, UnsupportedFeatureError

__all__ = [
    "CHUNK_COUNT",
    "CHUNK_SIZE",
    "ConformanceError",
    "PairMaker",
    "check_fd_passing_channel",
    "check_half_closeable_channel",
    "check_one_way_channel",
    "check_transfer",
    "check_two_way_channel",
    "pattern",
]

PairMaker = Callable[[], tuple[Channel, Channel]]

CHUNK_COUNT = 250
CHUNK_SIZE = 4194
_TIMEOUT = 30.0


class ConformanceError(ChannelError, AssertionError):
    """A channel broke the contract; the message says which check and how.

    Also an :class:`AssertionError`, so test runners report it as a failure.
    """


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise ConformanceError(what)


def pattern(count: int = CHUNK_COUNT, size: int = CHUNK_SIZE) -> list[bytearray]:
    """QEMU's test data: *count* chunks of *size* bytes, chunk *i* filled with ``i & 0xff``."""
    return [bytearray([i & 0xFF]) * size for i in range(count)]


def _blank(count: int = CHUNK_COUNT, size: int = CHUNK_SIZE) -> list[bytearray]:
    return [bytearray(size) for _ in range(count)]


def _close(*channels: Channel) -> None:
    for ch in {id(c): c for c in channels}.values():
        ch.close()


class _Thread(threading.Thread):
    """A thread that re-raises its target's exception on join."""

    def __init__(self, target: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self._fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.join(_TIMEOUT)
        _expect(not self.is_alive(), "thread did not finish: a transfer hung")
        if self.error is not None:
            raise self.error


def _in_thread(fn: Callable[[], object]) -> _Thread:
    t = _Thread(fn)
    t.start()
    return t


def _run_loop_thread(coro: Callable[[], Coroutine[Any, Any, object]]) -> _Thread:
    return _in_thread(lambda: asyncio.run(coro()))


# ---- transfers ------------------------------------------------------------


def check_transfer(src: Channel, dst: Channel, *, blocking: bool = True) -> None:
    """QEMU's 1 MB pattern from *src* to *dst* by a writer and a reader thread."""
    src.set_blocking(blocking)
    if dst is not src:
        dst.set_blocking(blocking)
    data, out = pattern(), _blank()
    writer = _in_thread(lambda: src.writev_all(data))
    reader = _in_thread(lambda: dst.readv_all(out))
    writer.finish()
    reader.finish()
    _expect(out == data, f"{dst.name}: data read differs from data written ({blocking=})")


async def _together(what: str, *transfers: Awaitable[object]) -> None:
    """Run *transfers* at once; one that stalls fails the check instead of hanging it."""
    try:
        await asyncio.wait_for(asyncio.gather(*transfers), _TIMEOUT)
    except TimeoutError:
        raise ConformanceError(f"{what} did not finish within {_TIMEOUT:.0f} s") from None


async def _atransfer(src: Channel, dst: Channel) -> None:
    data, out = pattern(), _blank()
    await _together(
        f"{dst.name}: awritev_all/areadv_all", src.awritev_all(data), dst.areadv_all(out)
    )
    _expect(out == data, f"{dst.name}: data read differs from data written (asyncio)")
    # The single-buffer forms too: some channels make their first call inline.
    flat, into = b"".join(data), bytearray(sum(map(len, data)))
    await _together(f"{dst.name}: awrite_all", src.awrite_all(flat), dst.areadv_all((into,)))
    _expect(into == flat, f"{dst.name}: data read differs from data written (awrite_all)")


def _transfer_two_loops(src: Channel, dst: Channel) -> None:
    data, out = pattern(), _blank()

    async def write() -> None:
        await src.awritev_all(data)

    async def read() -> None:
        await dst.areadv_all(out)

    writer = _run_loop_thread(write)
    reader = _run_loop_thread(read)
    writer.finish()
    reader.finish()
    _expect(out == data, f"{dst.name}: data differs after a transfer across two loops")


# ---- individual checks ------------------------------------------------------


def _check_transfers(make: PairMaker) -> None:
    for blocking in (True, False):
        a, b = make()
        try:
            check_transfer(a, b, blocking=blocking)
        finally:
            _close(a, b)
    a, b = make()
    try:
        asyncio.run(_atransfer(a, b))
    finally:
        _close(a, b)
    a, b = make()
    try:
        _transfer_two_loops(a, b)
    finally:
        _close(a, b)


def _check_small_io(make: PairMaker) -> None:
    a, b = make()
    try:
        _expect(a.write(b"ping") == 4, f"{a.name}: a 4-byte write to an empty channel was partial")
        got = b""
        while len(got) < 4:
            chunk = b.read(16)
            _expect(
                chunk is not None and chunk != b"", f"{b.name}: blocking read returned {chunk!r}"
            )
            assert chunk is not None
            got += chunk
        _expect(got == b"ping", f"{b.name}: read {got!r}, expected b'ping'")
        b.set_blocking(False)
        _expect(b.read(16) is None, f"{b.name}: non-blocking read with no data did not return None")
        _expect(
            b.wait(Condition.IN, timeout=0.05) == Condition.NONE,
            f"{b.name}: wait(IN) with no data reported ready",
        )
        a.write(b"x")
        _expect(bool(b.wait(Condition.IN, timeout=_TIMEOUT) & Condition.IN), "wait(IN) missed data")
        _expect(b.read(1) == b"x", f"{b.name}: data after wait was wrong")
    finally:
        _close(a, b)


def _check_eof(make: PairMaker) -> None:
    a, b = make()
    try:
        a.write_all(b"abc")
        a.close()
        buf = bytearray(3)
        _expect(b.readv_all_eof([buf]) and buf == b"abc", f"{b.name}: data before EOF lost")
        _expect(not b.readv_all_eof([bytearray(3)]), f"{b.name}: clean EOF not reported")
        _expect(b.read(10) == b"", f"{b.name}: read at EOF did not return b''")
        try:
            b.read_all(4)
        except ChannelEOFError:
            pass
        else:
            raise ConformanceError(f"{b.name}: read_all at EOF did not raise ChannelEOFError")
    finally:
        _close(a, b)
    a, b = make()
    try:
        a.write_all(b"ab")
        a.close()
        try:
            b.read_all(4)
        except ChannelEOFError as exc:
            _expect(getattr(exc, "partial", None) == 2, f"{b.name}: partial count wrong: {exc}")
        else:
            raise ConformanceError(f"{b.name}: a truncated read_all did not raise")
    finally:
        _close(a, b)


def _check_close_wakes_waiters(make: PairMaker) -> None:
    # A blocking wait in another thread ends with ChannelClosedError.
    a, b = make()
    try:
        b.set_blocking(False)
        started = threading.Event()
        outcome: list[BaseException | None] = []

        def waiter() -> None:
            started.set()
            try:
                b.readv_all([bytearray(10)])
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        t = _in_thread(waiter)
        started.wait()
        # The waiter may not be inside poll yet; closing must work either way.
        b.wait(Condition.IN, timeout=0.05)
        b.close()
        t.finish()
        _expect(
            len(outcome) == 1 and isinstance(outcome[0], ChannelClosedError),
            f"{b.name}: close during a blocking wait gave {outcome!r}",
        )
    finally:
        _close(a, b)

    # An async wait ends with ChannelClosedError too.
    async def run() -> None:
        a, b = make()
        try:
            task = asyncio.ensure_future(b.aread(10))
            await asyncio.sleep(0.01)
            b.close()
            try:
                await asyncio.wait_for(task, _TIMEOUT)
            except ChannelClosedError:
                return
            raise ConformanceError(f"{b.name}: close during an async wait did not raise")
        finally:
            _close(a, b)

    asyncio.run(run())


def _check_wake_read(make: PairMaker) -> None:
    async def run() -> None:
        a, b = make()
        try:
            b.set_blocking(False)
            wait = asyncio.ensure_future(b.wait_async(Condition.IN))
            await asyncio.sleep(0.01)
            waker = threading.Thread(target=b.wake_read)
            waker.start()
            got = await asyncio.wait_for(wait, _TIMEOUT)
            waker.join()
            _expect(got == Condition.NONE, f"{b.name}: woken wait returned {got!r}")
            # The channel still works after the wake.
            await a.awrite_all(b"ok")
            _expect(await b.aread_all(2) == b"ok", f"{b.name}: read after wake_read failed")
        finally:
            _close(a, b)

    asyncio.run(run())


def _check_watch(make: PairMaker) -> None:
    async def run() -> None:
        a, b = make()
        try:
            b.set_blocking(False)
            fired: asyncio.Future[Condition] = asyncio.get_running_loop().create_future()

            def on_ready(ch: Channel, cond: Condition) -> bool:
                if not fired.done():
                    fired.set_result(cond)
                return False

            watch = b.add_watch(Condition.IN, on_ready)
            await asyncio.sleep(0.01)
            _expect(not fired.done(), f"{b.name}: IN watch fired with no data")
            a.write_all(b"w")
            cond = await asyncio.wait_for(fired, _TIMEOUT)
            _expect(bool(cond & Condition.IN), f"{b.name}: watch fired with {cond!r}")
            _expect(not watch.active, f"{b.name}: watch still active after returning False")
            # Closing cancels a live watch.
            live = b.add_watch(Condition.IN, lambda ch, c: True)
            b.close()
            await asyncio.sleep(0)
            _expect(not live.active, f"{b.name}: close did not cancel a watch")
        finally:
            _close(a, b)

    asyncio.run(run())


def _expect_raises(exc: type[BaseException], call: Callable[[], object], what: str) -> None:
    try:
        call()
    except exc:
        return
    raise ConformanceError(what)


def _check_features_and_closed(make: PairMaker) -> None:
    a, b = make()
    try:
        if not a.has_feature(Feature.FD_PASS):
            refused = f"{a.name}: fd passing without FD_PASS was not refused"
            _expect_raises(UnsupportedFeatureError, lambda: a.writev([b"x"], fds=[0]), refused)
            _expect_raises(
                UnsupportedFeatureError, lambda: b.readv([bytearray(1)], fds=[]), refused
            )
        if not b.has_feature(Feature.READ_MSG_PEEK):
            _expect_raises(
                UnsupportedFeatureError,
                lambda: b.readv([bytearray(1)], flags=ReadFlag.MSG_PEEK),
                f"{b.name}: peek without READ_MSG_PEEK was not refused",
            )
        if not a.has_feature(Feature.SHUTDOWN):
            _expect_raises(
                UnsupportedFeatureError,
                lambda: a.shutdown(Shutdown.WRITE),
                f"{a.name}: shutdown without SHUTDOWN was not refused",
            )
        a.set_delay(False)  # hints never fail
        a.set_cork(False)
    finally:
        _close(a, b)
    for ch in (a, b):
        ch.close()  # idempotent
        _check_closed(ch)


def _check_closed(ch: Channel) -> None:
    what = f"{ch.name}: operation on a closed channel did not raise ChannelClosedError"
    _expect_raises(ChannelClosedError, lambda: ch.read(1), what)
    _expect_raises(ChannelClosedError, lambda: ch.write(b"x"), what)
    _expect_raises(ChannelClosedError, lambda: ch.wait(Condition.IN, 0), what)


def check_one_way_channel(make: PairMaker, *, eof: bool = True) -> None:
    """Check a channel pair in the ``a → b`` direction; *eof*: closing ``a`` ends ``b``."""
    _check_small_io(make)
    _check_transfers(make)
    if eof:
        _check_eof(make)
    _check_close_wakes_waiters(make)
    _check_wake_read(make)
    _check_watch(make)
    _check_features_and_closed(make)


def check_two_way_channel(make: PairMaker, *, eof: bool = True) -> None:
    """:func:`check_one_way_channel` both ways, plus one channel on two loops at once."""
    check_one_way_channel(make, eof=eof)

    def swapped() -> tuple[Channel, Channel]:
        a, b = make()
        return b, a

    check_one_way_channel(swapped, eof=eof)
    a, b = make()
    try:
        data_ab, data_ba = pattern(), pattern(CHUNK_COUNT, 1000)
        out_ab, out_ba = _blank(), _blank(CHUNK_COUNT, 1000)

        async def a_reads() -> None:
            await a.areadv_all(out_ba)

        async def a_writes() -> None:
            await a.awritev_all(data_ab)

        threads = [
            _run_loop_thread(a_reads),
            _run_loop_thread(a_writes),
            _in_thread(lambda: b.writev_all(data_ba)),
            _in_thread(lambda: b.readv_all(out_ab)),
        ]
        for t in threads:
            t.finish()
        _expect(out_ab == data_ab and out_ba == data_ba, f"{a.name}: cross-loop duplex lost data")
    finally:
        _close(a, b)


def check_half_closeable_channel(make: PairMaker) -> None:
    """``a.shutdown(WRITE)`` ends ``b``'s input while ``b → a`` keeps working."""
    a, b = make()
    try:
        a.write_all(b"last")
        a.shutdown(Shutdown.WRITE)
        _expect(b.read_all(4) == b"last", f"{b.name}: data before shutdown lost")
        _expect(b.read(1) == b"", f"{b.name}: no EOF after the peer shut down writing")
        b.write_all(b"reply")
        _expect(a.read_all(5) == b"reply", f"{a.name}: reverse direction broken by shutdown")
    finally:
        _close(a, b)


def check_fd_passing_channel(make: PairMaker) -> None:
    """QEMU's unix-fd-pass: 3 copies of one fd arrive as 3 distinct fds of the same file."""
    a, b = make()
    with tempfile.TemporaryFile() as f:
        fd = f.fileno()
        received: list[int] = []
        try:
            a.writev_all([b"Hello World\0"], fds=[fd, fd, fd])
            buf = bytearray(12)
            b.readv_all([buf], fds=received)
            _expect(buf == b"Hello World\0", f"{b.name}: data sent with fds was {bytes(buf)!r}")
            _expect(len(received) == 3, f"{b.name}: received {len(received)} fds, expected 3")
            _expect(
                len(set(received)) == 3 and fd not in received,
                f"{b.name}: received fds are not distinct new fds: {received}",
            )
            os.write(received[0], b"written through a received fd")
            f.seek(0)
            _expect(
                f.read() == b"written through a received fd",
                f"{b.name}: a received fd does not refer to the same open file",
            )
        finally:
            for r in received:
                os.close(r)
            _close(a, b)
