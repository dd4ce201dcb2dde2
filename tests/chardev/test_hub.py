"""The hub chardev: test-char's /char/hub, slow-consumer policies, hostile members."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iochannel import memory_pair
from iochannel.chardev import (
    Chardev,
    ChardevBusyError,
    ChardevError,
    ChardevEvent,
    Frontend,
    HubChardev,
    MemberPolicy,
    MuxChardev,
    RingbufChardev,
    SlowConsumer,
)
from iochannel.chardev.hub import Backlog, Progress

from .fehandler import FeHandler
from .pair import PairChardev
from .test_mux import FakeRegistry

DROP = SlowConsumer.DROP
DISCONNECT = SlowConsumer.DISCONNECT


class Sink(Chardev):
    """Records output; takes ``room`` bytes before it would block; opened and
    closed by hand; its writable watches fire on :meth:`grant`."""

    def __init__(self, id: str, room: int = 1 << 30) -> None:
        super().__init__(id)
        self.room = room
        self.got = bytearray()
        self.connections: list[bytearray] = []
        self.watches: list[Any] = []
        self.disconnects = 0

    def _chr_write(self, data: memoryview) -> int | None:
        n = min(len(data), self.room)
        if not n:
            return None
        self.room -= n
        self.got += data[:n]
        self.connections[-1] += data[:n]
        return n

    def be_event(self, event: ChardevEvent) -> None:
        if event == ChardevEvent.OPENED and not self.be_open:
            self.connections.append(bytearray())
        super().be_event(event)

    def _add_write_watch(self, callback: Any) -> Any:
        watch = _SinkWatch(self, callback)
        self.watches.append(watch)
        return watch

    def grant(self, n: int) -> None:
        self.room += n
        for watch in tuple(self.watches):
            if not watch.callback():
                watch.cancel()

    def disconnect(self) -> None:
        self.disconnects += 1
        self.be_event(ChardevEvent.CLOSED)


class _SinkWatch:
    def __init__(self, sink: Sink, callback: Any) -> None:
        self.sink, self.callback = sink, callback

    def cancel(self) -> None:
        if self in self.sink.watches:
            self.sink.watches.remove(self)


def waker(event: asyncio.Event) -> Any:
    """A one-shot watch callback that sets *event*."""

    def wake() -> bool:
        event.set()
        return False

    return wake


def close_all(*chardevs: Any) -> None:
    for c in chardevs:
        c.close()


# ---- test-char /char/hub ------------------------------------------------------


def test_hub_errors() -> None:
    chr0_base = RingbufChardev("chr0-base", size=128)
    chr0 = MuxChardev("chr0", chr0_base)
    reg = FakeRegistry(chr0, chr0_base)
    with pytest.raises(ChardevError, match=r"^hub: 'chardevs' list is not defined$"):
        HubChardev.from_qapi("hub0", {}, reg)
    with pytest.raises(ChardevError, match="can't be stacked, check chardev 'chr0'"):
        HubChardev.from_qapi("hub0", {"chardevs": ["chr0"]}, reg)
    with pytest.raises(ChardevBusyError, match=r"^chardev 'chr0-base' is already in use$"):
        HubChardev.from_qapi("hub0", {"chardevs": ["chr0-base"]}, reg)
    with pytest.raises(ChardevError, match=r"^hub: chardev can't be found by id 'nope'$"):
        HubChardev.from_qapi("hub0", {"chardevs": ["nope"]}, reg)
    with pytest.raises(ChardevError, match="policy mode"):
        HubChardev.from_qapi("hub0", {"chardevs": ["x"], "policies": {"x": {"mode": "?"}}}, reg)
    close_all(chr0, chr0_base)


def test_hub_takes_more_than_four_members_and_cannot_be_stacked() -> None:
    rings = [RingbufChardev(f"chr{i}", size=128) for i in range(10)]
    reg = FakeRegistry(*rings)
    hub = HubChardev.from_qapi("hub0", {"chardevs": [r.id for r in rings]}, reg)
    hub.open()
    with pytest.raises(ChardevError, match="can't be stacked"):
        HubChardev("hub1", [hub])
    fe = Frontend(hub)
    assert fe.write(b"x") == 1
    assert all(r.read_bytes(8) == b"x" for r in rings)
    fe.deinit()
    close_all(hub, *rings)


def test_hub_two_ringbufs() -> None:
    chr1, chr2 = RingbufChardev("chr1", size=128), RingbufChardev("chr2", size=128)
    hub = HubChardev.from_qapi("hub0", {"chardevs": ["chr1", "chr2"]}, FakeRegistry(chr1, chr2))
    hub.open()
    h = FeHandler(Frontend(hub))
    with pytest.raises(ChardevBusyError, match="already in use"):
        Frontend(hub)
    h.register()
    assert h.events == [ChardevEvent.OPENED] and h.fe.backend_open
    chr1.be_write(b"hello\0")
    assert h.take() == b"hello\0"
    chr2.be_write(b"olleh\0")
    assert h.take() == b"olleh\0"
    assert h.fe.write(b"heyhey") == 6
    assert chr1.read(128) == chr2.read(128) == "heyhey"
    assert chr1.busy and hub.busy
    with pytest.raises(ChardevBusyError, match="already in use"):
        Frontend(chr1)
    h.fe.deinit()
    hub.close()
    assert not chr1.busy and not chr2.busy
    close_all(chr1, chr2)
    assert h.events == [ChardevEvent.OPENED] and not h.mismatch


def test_hub_eagain() -> None:
    async def main() -> None:
        # Room for "thisis" and 32 writes of "thisisit": the pipe fills on a write boundary.
        ours, peer = memory_pair(capacity=6 + 8 * 32)
        chr1, chr2 = RingbufChardev("chr1", size=128), RingbufChardev("chr2", size=128)
        pipe = PairChardev("chr3", ours)
        hub = HubChardev("hub0", [chr1, chr2, pipe])
        hub.open()
        fe = Frontend(hub)
        fe.set_handlers(lambda: 0, lambda d: None, lambda e: None)

        assert fe.write(b"thisis") == 6
        assert fe.add_watch(lambda: False) is None  # nothing blocked
        while fe.write(b"thisisit") is not None:
            pass
        for _ in range(3):
            assert fe.write(b"thisisit") is None
        woke = asyncio.Event()
        watch = fe.add_watch(waker(woke))
        assert watch is not None  # the blocked member is watched

        piped = await peer.aread_all(6 + 8 * 32)
        await asyncio.wait_for(woke.wait(), 5)
        assert chr1.count == chr2.count == 128
        chr1.read_bytes(128)
        chr2.read_bytes(128)
        assert fe.write(b"thisisit") == 8  # the ringbufs already have it: not sent twice
        assert fe.write(b"streamisrestored") == 16
        assert chr1.read(128) == chr2.read(128) == "streamisrestored"
        assert await peer.aread_all(24) == b"thisisitstreamisrestored"
        assert piped == b"thisis" + b"thisisit" * 32
        fe.deinit()
        close_all(hub, chr1, chr2, pipe, peer)

    asyncio.run(main())


# ---- defects of QEMU's hub ---------------------------------------------------------


def test_hub_open_state_and_send_break() -> None:
    a, b = Sink("a"), Sink("b")
    hub = HubChardev("hub", [a, b])
    hub.open()
    assert hub.be_open  # members open at attach count: QEMU's hub never noticed
    h = FeHandler(Frontend(hub))
    h.register()  # attached after the members opened: still told
    hub.send_break()
    assert h.events == [ChardevEvent.OPENED, ChardevEvent.BREAK]
    a.be_event(ChardevEvent.CLOSED)
    assert h.events[-1] == ChardevEvent.BREAK  # b is still open
    b.be_event(ChardevEvent.CLOSED)
    a.be_event(ChardevEvent.OPENED)
    b.be_event(ChardevEvent.OPENED)
    assert h.events[2:] == [ChardevEvent.CLOSED, ChardevEvent.OPENED] and not h.mismatch
    h.fe.deinit()
    close_all(hub, a, b)


def test_members_are_added_and_removed_live() -> None:
    a, b = Sink("a"), Sink("b")
    hub = HubChardev("hub", [a])
    hub.open()
    h = FeHandler(Frontend(hub))
    h.register()
    assert h.fe.write(b"one") == 3
    hub.add_member(b)  # joins at the current position
    assert h.fe.write(b"two") == 3
    assert (bytes(a.got), bytes(b.got)) == (b"onetwo", b"two")
    with pytest.raises(ChardevBusyError, match="already in use"):
        hub.add_member(b)
    hub.remove_member(a)
    assert not a.busy and h.events == [ChardevEvent.OPENED]
    hub.remove_member(b)
    assert h.events == [ChardevEvent.OPENED, ChardevEvent.CLOSED] and not h.mismatch
    with pytest.raises(ChardevError, match="no member"):
        hub.member("a")
    h.fe.deinit()
    close_all(hub, a, b)


def test_mux_be_form() -> None:
    a = Sink("a")
    reg = FakeRegistry(a)
    hub = HubChardev.from_mux_be("mux0", {"policies": {"a": {"mode": "drop", "limit": 4}}}, reg)
    assert not hub.members
    hub.add_member(a)  # what ``mux-be-id=mux0`` on a backend does
    assert hub.member("a").policy == MemberPolicy(DROP, 4)
    close_all(hub, a)


# ---- slow-consumer policies --------------------------------------------------------


def test_block_paces_by_the_slowest_and_watches_it() -> None:
    fast, slow = Sink("fast"), Sink("slow", room=3)
    hub = HubChardev("hub", [fast, slow])
    hub.open()
    fe = Frontend(hub)
    assert fe.write(b"abcdef") == 3
    assert fe.write(b"def") is None
    assert fe.add_watch(lambda: False) is not None and len(slow.watches) == 1
    slow.grant(10)
    assert not slow.watches
    assert fe.write(b"def") == 3
    assert fast.got == slow.got == b"abcdef"
    assert hub.member("slow").stats.bytes == 6
    fe.deinit()
    close_all(hub, fast, slow)


def test_the_slowest_of_several_blocked_members_is_watched() -> None:
    fast, s1, s2 = Sink("fast"), Sink("s1", room=2), Sink("s2", room=5)
    hub = HubChardev("hub", [fast, s1, s2])
    hub.open()
    fe = Frontend(hub)
    assert fe.write(b"abcdefgh") == 2
    assert fe.add_watch(lambda: False) is None  # partial, but nothing would block
    assert fe.write(b"cdefgh") is None
    assert fe.add_watch(lambda: False) is not None
    assert (len(s1.watches), len(s2.watches)) == (1, 0)
    s1.grant(100)
    s2.grant(100)
    assert fe.write(b"cdefgh") == 6
    assert fast.got == s1.got == s2.got == b"abcdefgh"
    fe.deinit()
    close_all(hub, fast, s1, s2)


def test_drop_member_that_never_reads_does_not_stop_others() -> None:
    fast, stuck = Sink("fast"), Sink("stuck", room=5)
    hub = HubChardev("hub", [fast, stuck], policies={"stuck": MemberPolicy(DROP, limit=10)})
    hub.open()
    fe = Frontend(hub)
    data = bytes(range(100))
    assert fe.write(data) == 100
    assert fe.write(data) == 100
    assert fast.got == data * 2
    stats = hub.member("stuck").stats
    assert (stats.bytes, stats.queued, stats.dropped) == (5, 10, 185)
    stuck.grant(100)  # the queue keeps the newest bytes
    assert stuck.got == data[:5] + data[-10:]
    assert hub.member("stuck").stats.queued == 0
    fe.deinit()
    close_all(hub, fast, stuck)


def test_disconnect_member_after_its_bound() -> None:
    fast, stuck = Sink("fast"), Sink("stuck", room=0)
    policy = MemberPolicy(DISCONNECT, limit=16)
    hub = HubChardev("hub", [fast, stuck], policies={"stuck": policy})
    hub.open()
    fe = Frontend(hub)
    assert fe.write(b"x" * 16) == 16
    assert stuck.be_open
    assert fe.write(b"y") == 1
    assert not stuck.be_open and stuck.disconnects == 1
    assert hub.member("stuck").stats.disconnects == 1
    assert fe.write(b"z" * 100) == 100  # the rest go on
    stuck.room = 1000
    stuck.be_event(ChardevEvent.OPENED)  # it reconnects: joins at the current position
    assert fe.write(b"new") == 3
    assert bytes(stuck.connections[-1]) == b"new"
    assert fast.got == b"x" * 16 + b"y" + b"z" * 100 + b"new"
    fe.deinit()
    close_all(hub, fast, stuck)


def test_reopened_member_skips_what_was_written_while_closed() -> None:
    a, b = Sink("a"), Sink("b")
    hub = HubChardev("hub", [a, b])
    hub.open()
    fe = Frontend(hub)
    fe.write(b"1")
    b.be_event(ChardevEvent.CLOSED)
    fe.write(b"2")
    b.be_event(ChardevEvent.OPENED)
    fe.write(b"3")
    assert (bytes(a.got), [bytes(s) for s in b.connections]) == (b"123", [b"1", b"3"])
    fe.deinit()
    close_all(hub, a, b)


def test_blocked_member_closing_wakes_the_writer() -> None:
    async def main() -> None:
        fast, slow = Sink("fast"), Sink("slow", room=0)
        hub = HubChardev("hub", [fast, slow])
        hub.open()
        fe = Frontend(hub)
        assert fe.write(b"abc") is None
        woke = asyncio.Event()
        assert fe.add_watch(waker(woke)) is not None
        slow.be_event(ChardevEvent.CLOSED)
        await asyncio.wait_for(woke.wait(), 5)
        assert fe.write(b"abc") == 3 and fast.got == b"abc"  # not sent twice
        fe.deinit()
        close_all(hub, fast, slow)

    asyncio.run(main())


def test_failing_member_is_left_out() -> None:
    class Broken(Sink):
        def _chr_write(self, data: memoryview) -> int | None:
            raise BrokenPipeError("peer went away")

    good, bad = Sink("good"), Broken("bad")
    hub = HubChardev("hub", [good, bad])
    hub.open()
    fe = Frontend(hub)
    assert fe.write(b"abc") == 3 and good.got == b"abc"
    fe.deinit()
    close_all(hub, good, bad)


# ---- sans-I/O pieces -----------------------------------------------------------------


def test_progress_and_backlog() -> None:
    p = Progress()
    p.join(0)
    p.join(1)
    assert p.settle(8, {0: 8, 1: 3}) == 3 and (p.ahead(0), p.ahead(1)) == (5, 0)
    assert p.settle(5, {0: 5, 1: 5}) == 5 and p.position == 8
    b = Backlog(4)
    assert b.push(memoryview(b"abc")) == 0
    assert b.push(memoryview(b"defgh")) == 4 and len(b) == 4
    assert b.send(lambda v: 3) == 3 and len(b) == 1
    assert b.send(lambda v: None) == 0


# ---- hostile: members stalling, closing and reopening mid-stream ----------------------

STREAM = bytes(i * 7 % 251 for i in range(4000))

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 300)),
        st.tuples(st.just("grant"), st.integers(0, 3), st.integers(0, 400)),
        st.tuples(st.just("toggle"), st.integers(0, 3)),
    ),
    max_size=80,
)


def is_subsequence(part: bytes, whole: bytes) -> bool:
    it = iter(whole)
    return all(b in it for b in part)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_no_byte_twice_none_skipped(script: list[tuple[Any, ...]]) -> None:
    """Block members see contiguous slices of the stream from where they joined."""
    sinks = [Sink(f"s{i}", room=0) for i in range(4)]
    policies = {"s3": MemberPolicy(DROP, limit=64)}
    hub = HubChardev("hub", sinks, policies=policies)
    hub.open()
    fe = Frontend(hub)
    pos = 0
    starts: list[list[int]] = [[0] for _ in sinks]

    def write(n: int) -> None:
        nonlocal pos
        pos += fe.write(STREAM[pos : pos + n]) or 0

    for op in script:
        if op[0] == "write":
            write(op[1])
        elif op[0] == "grant":
            sinks[op[1]].grant(op[2])
        else:
            s = sinks[op[1]]
            if s.be_open:
                s.be_event(ChardevEvent.CLOSED)
            else:
                starts[op[1]].append(pos)
                s.be_event(ChardevEvent.OPENED)
    for s in sinks:
        s.grant(1 << 20)
    while pos < len(STREAM):
        write(len(STREAM))
    for i, s in enumerate(sinks[:3]):
        assert len(starts[i]) == len(s.connections)
        for start, got in zip(starts[i], s.connections, strict=True):
            assert bytes(got) == STREAM[start : start + len(got)]
        if s.be_open:
            assert starts[i][-1] + len(s.connections[-1]) == len(STREAM)
    # The drop member may miss bytes, never get one twice or out of order.
    for start, got in zip(starts[3], sinks[3].connections, strict=True):
        assert is_subsequence(bytes(got), STREAM[start:])
    assert hub.member("s3").stats.queued == 0
    fe.deinit()
    close_all(hub, *sinks)


def test_real_channels_slow_reader_and_stuck_viewer() -> None:
    """Two lossless members read at their own pace; a viewer never reads (drop)."""

    async def main() -> None:
        pairs = [memory_pair(capacity=1024) for _ in range(3)]
        members = [PairChardev(f"m{i}", ours) for i, (ours, _) in enumerate(pairs)]
        hub = HubChardev("hub", members, policies={"m2": MemberPolicy(DROP, limit=4096)})
        hub.open()
        fe = Frontend(hub)
        fe.set_handlers(lambda: 0, lambda d: None, lambda e: None)
        data = bytes(i * 13 % 256 for i in range(200_000))

        async def slow_read(peer: Any) -> bytes:
            got = bytearray()
            while len(got) < len(data):
                got += await peer.aread(300)
                await asyncio.sleep(0)
            return bytes(got)

        wrote, got0, got1 = await asyncio.gather(
            fe.awrite_all(data), pairs[0][1].aread_all(len(data)), slow_read(pairs[1][1])
        )
        assert wrote == len(data) and got0 == got1 == data
        stats = hub.member("m2").stats
        assert stats.bytes == 1024 and stats.dropped == len(data) - 1024 - 4096
        fe.deinit()
        close_all(hub, *members, *(peer for _, peer in pairs))

    asyncio.run(main())
