"""The chardev core: frontends, the enforced lifecycle, write policies, hot-swap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from iochannel import SocketChannel, memory_pair
from iochannel.chardev import (
    ChardevBusyError,
    ChardevClosedError,
    ChardevError,
    ChardevEvent,
    ClosedWrites,
    Frontend,
    NullChardev,
    RingbufChardev,
    WhileClosed,
)

from .fehandler import FeHandler
from .pair import PairChardev


class Switch(NullChardev):
    """A null backend the test opens and closes by hand."""

    def _open(self) -> bool:
        return False


def test_null() -> None:
    chr = NullChardev("label-null")
    chr.open()
    fe = Frontend(chr)
    with pytest.raises(ChardevBusyError, match="already in use"):
        Frontend(chr)
    fe.deinit()
    fe = Frontend(chr)
    fe.set_open(True)
    fe.set_handlers(None, None, None)
    assert fe.write(b"buf\0") == 4
    fe.deinit(delete=True)
    assert chr.closed


def test_ringbuf() -> None:
    with pytest.raises(ChardevError, match="power of two"):
        RingbufChardev("r", size=5)
    chr = RingbufChardev("r", size=2)
    chr.open()
    fe = Frontend(chr)
    assert fe.write(b"buff") == 4
    assert chr.read(4) == "ff"
    assert chr.read(4) == ""
    chr.inject("aGk=", format="base64")
    assert chr.read(2, format="base64") == "aGk="
    with pytest.raises(ChardevError, match="greater than zero"):
        chr.read(0)
    with pytest.raises(ChardevError, match="invalid base64"):
        chr.inject("!!!", format="base64")
    with pytest.raises(ChardevError, match="data format"):
        chr.read(1, format="hex")
    fe.deinit(delete=True)


def test_ringbuf_wraps_and_keeps_the_newest() -> None:
    chr = RingbufChardev("r", size=8)
    chr.open()
    chr.write(b"0123456")
    assert chr.read_bytes(3) == b"012"
    chr.write(b"789abc")  # wraps around the end of the ring
    assert chr.read_bytes(100) == b"56789abc"
    chr.write(b"x" * 20 + b"LASTEIGHT"[:8])
    assert chr.read_bytes(100) == b"LASTEIGH"
    chr.close()


def test_attach_to_open_backend_gives_exactly_one_opened() -> None:
    chr = NullChardev("n")
    chr.open()
    h = FeHandler(Frontend(chr))
    h.register()
    assert h.events == [ChardevEvent.OPENED]
    # A backend re-announcing OPENED is absorbed; the frontend sees no duplicate.
    chr.be_event(ChardevEvent.OPENED)
    assert h.events == [ChardevEvent.OPENED] and not h.mismatch
    h.fe.deinit()
    chr.close()


def test_reregistering_starts_a_new_registration() -> None:
    chr = Switch("s")
    chr.open()
    h = FeHandler(Frontend(chr))
    h.register()
    assert h.events == []  # backend closed: nothing to report
    chr.be_event(ChardevEvent.OPENED)
    chr.be_event(ChardevEvent.CLOSED)
    chr.be_event(ChardevEvent.CLOSED)  # absorbed
    chr.be_event(ChardevEvent.OPENED)
    assert h.events == [ChardevEvent.OPENED, ChardevEvent.CLOSED, ChardevEvent.OPENED]
    assert not h.mismatch
    # A new registration (QEMU re-sends OPENED here) gets its own OPENED.
    h2 = FeHandler(h.fe)
    h2.register()
    assert h2.events == [ChardevEvent.OPENED]
    h.fe.deinit()
    chr.close()


def test_close_sends_closed_only_after_opened() -> None:
    chr = Switch("s")
    chr.open()
    h = FeHandler(Frontend(chr))
    h.register()
    chr.close()
    assert h.events == []
    chr2 = NullChardev("n")
    chr2.open()
    h2 = FeHandler(Frontend(chr2))
    h2.register()
    chr2.close()
    assert h2.events == [ChardevEvent.OPENED, ChardevEvent.CLOSED]
    h.fe.deinit()
    h2.fe.deinit()


def test_restored_state_makes_no_spurious_transitions() -> None:
    chr = NullChardev("n")
    chr.open()
    fe = Frontend(chr)
    seen: list[Any] = []
    fe.set_handlers(lambda: 1, lambda d: None, seen.append, restore_open=True)
    assert seen == []  # it already knew the backend was open
    assert fe.is_open
    fe.deinit()
    closed = Switch("s")
    closed.open()
    fe = Frontend(closed)
    fe.set_handlers(lambda: 1, lambda d: None, seen.append, restore_open=True)
    assert seen == [ChardevEvent.CLOSED]  # exactly the transition needed
    fe.deinit()
    chr.close()
    closed.close()


class Recorder(NullChardev):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.fe_open_calls: list[bool] = []

    def _set_fe_open(self, open: bool) -> None:
        self.fe_open_calls.append(open)


def test_frontend_open_state_reaches_the_backend_once() -> None:
    chr = Recorder("r")
    chr.open()
    fe = Frontend(chr)
    fe.set_handlers(lambda: 1, lambda d: None, lambda e: None, set_open=False)
    assert not fe.frontend_open and chr.fe_open_calls == []
    fe.set_open(True)
    fe.set_open(True)  # repeating the state does nothing
    assert fe.frontend_open and chr.fe_open_calls == [True]
    fe.deinit()
    assert chr.fe_open_calls == [True, False]
    chr.close()


@pytest.mark.parametrize(
    ("policy", "writes", "expect_pending", "expect_dropped"),
    [
        (ClosedWrites(WhileClosed.DROP), [b"abc"], b"", 3),
        (ClosedWrites(WhileClosed.BUFFER, limit=8), [b"abcd", b"efgh"], b"abcdefgh", 0),
        (ClosedWrites(WhileClosed.BUFFER, limit=8), [b"abcdef", b"ghij"], b"cdefghij", 2),
        (ClosedWrites(WhileClosed.BUFFER, limit=4), [b"abcdefgh"], b"efgh", 4),
    ],
    ids=["drop", "buffer", "buffer-drop-oldest", "buffer-one-big-write"],
)
def test_writes_while_closed(
    policy: ClosedWrites, writes: list[bytes], expect_pending: bytes, expect_dropped: int
) -> None:
    chr = RingbufChardev("r", size=64, closed_writes=policy)
    chr.be_open = False  # a ringbuf that has not opened yet
    for w in writes:
        assert chr.write(w) == len(w)
    assert chr.pending_bytes == len(expect_pending)
    assert chr.stats.dropped == expect_dropped
    chr.open()  # OPENED flushes the buffer first
    assert chr.read_bytes(64) == expect_pending
    chr.close()


def test_writes_while_closed_error_policies() -> None:
    chr = Switch("s", closed_writes=ClosedWrites(WhileClosed.ERROR))
    with pytest.raises(ChardevClosedError, match="not connected"):
        chr.write(b"x")
    full = Switch("f", closed_writes=ClosedWrites(WhileClosed.BUFFER, limit=4, overflow="error"))
    assert full.write(b"abcdef") == 4  # partial, like a full pipe
    with pytest.raises(ChardevClosedError, match="buffer"):
        full.write(b"g")
    with pytest.raises(ValueError, match="overflow"):
        ClosedWrites(WhileClosed.BUFFER, overflow="sometimes")


def test_hotswap_rollback_restores_the_view() -> None:
    old = NullChardev("old")
    old.open()
    new = Switch("new")
    new.open()
    fe = Frontend(old)
    seen: list[ChardevEvent] = []
    fe.set_handlers(lambda: 1, lambda d: None, seen.append, be_change=lambda: False)
    assert not fe._swap(new)
    assert fe.chardev is old
    assert seen == [ChardevEvent.OPENED, ChardevEvent.CLOSED, ChardevEvent.OPENED]
    assert fe.write(b"x") == 1
    fe.set_handlers(lambda: 1, lambda d: None, seen.append, be_change=lambda: True)
    assert fe._swap(new)
    assert fe.chardev is new and not fe.is_open
    fe.deinit()
    for c in (old, new):
        c.close()


def test_hotswap_needs_be_change() -> None:
    a, b = NullChardev("a"), NullChardev("b")
    fe = Frontend(a)
    fe.set_handlers(lambda: 1, lambda d: None, lambda e: None)
    with pytest.raises(ChardevError, match="does not support chardev hotswap"):
        fe._swap(b)
    fe.deinit()


def test_channel_backend_respects_can_read_and_accept_input() -> None:
    async def main() -> None:
        ours, peer = SocketChannel.pair()
        chr = PairChardev("p", ours)
        chr.open()
        h = FeHandler(Frontend(chr), capacity=10)
        h.register()
        await peer.awrite_all(b"0123456789abcdefghij")
        for _ in range(50):
            await asyncio.sleep(0.005)
        assert h.read_buf == b"0123456789"  # can_read hit 0: input paused
        h.take()
        h.fe.accept_input()
        for _ in range(50):
            await asyncio.sleep(0.005)
            if len(h.read_buf) == 10:
                break
        assert h.read_buf == b"abcdefghij"
        assert h.fe.write(b"out") == 3
        assert await peer.aread_all(3) == b"out"
        peer.close()
        h.take()
        h.fe.accept_input()  # a paused reader sees end of stream once it reads again
        for _ in range(100):
            await asyncio.sleep(0.005)
            if h.last_event == ChardevEvent.CLOSED:
                break
        assert h.events == [ChardevEvent.OPENED, ChardevEvent.CLOSED] and not h.mismatch
        h.fe.deinit(delete=True)

    asyncio.run(main())


def test_channel_backend_backpressure_is_a_watch() -> None:
    async def main() -> None:
        ours, peer = memory_pair(capacity=16)
        chr = PairChardev("p", ours)
        chr.open()
        fe = Frontend(chr)
        fe.set_handlers(lambda: 0, lambda d: None, lambda e: None)
        assert fe.write(b"x" * 20) == 16
        assert fe.write(b"y") is None  # full: would block
        woke = asyncio.Event()
        watch = fe.add_watch(lambda: bool(woke.set()))
        assert watch is not None
        assert await peer.aread_all(16) == b"x" * 16
        await asyncio.wait_for(woke.wait(), 5)
        wrote, got = await asyncio.gather(fe.awrite_all(b"z" * 40), peer.aread_all(40))
        assert (wrote, got) == (40, b"z" * 40)
        fe.deinit(delete=True)
        peer.close()

    asyncio.run(main())


def test_channel_backend_passes_fds() -> None:
    import os

    async def main() -> None:
        ours, peer = SocketChannel.pair()
        chr = PairChardev("p", ours)
        chr.open()
        fe = Frontend(chr)
        got = asyncio.Event()
        fe.set_handlers(lambda: 100, lambda d: got.set(), lambda e: None)
        r, w = os.pipe()
        peer.write_all(b"m", fds=[r])
        await asyncio.wait_for(got.wait(), 5)
        fds = fe.get_msgfds()
        assert len(fds) == 1 and fds[0] != r
        assert fe.get_msgfds() == []  # taken once
        fe.set_msgfds([w])
        fe.write(b"n")
        back: list[int] = []
        await peer.areadv_all([bytearray(1)], fds=back)
        assert len(back) == 1
        for fd in (*fds, *back, r, w):
            os.close(fd)
        fe.deinit(delete=True)
        peer.close()

    asyncio.run(main())


def test_waiting_writer_wakes_when_the_backend_closes() -> None:
    async def main() -> None:
        ours, peer = memory_pair(capacity=16)
        chr = PairChardev("p", ours)
        chr.open()
        fe = Frontend(chr)
        fe.set_handlers(lambda: 100, lambda d: None, lambda e: None)
        writer = asyncio.ensure_future(fe.awrite_all(b"x" * 100))
        await asyncio.sleep(0.01)
        assert not writer.done()  # blocked on a full channel
        peer.close()  # end of stream: the backend closes
        with pytest.raises(ChardevClosedError):
            await asyncio.wait_for(writer, 5)
        fe.deinit(delete=True)

    asyncio.run(main())
