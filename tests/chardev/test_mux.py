"""The mux chardev: test-char's /char/mux, escapes, timestamps, input buffering."""

from __future__ import annotations

from typing import Any

import pytest

from iochannel.chardev import (
    Chardev,
    ChardevBusyError,
    ChardevError,
    ChardevEvent,
    Frontend,
    MuxChardev,
    NullChardev,
    RingbufChardev,
)
from iochannel.chardev.mux import INPUT_BUFFER, MuxCommand, MuxKeys

from .fehandler import FeHandler

HELLO = b"hello\0"


def make_mux(id: str = "mux-label", **kwargs: Any) -> tuple[RingbufChardev, MuxChardev]:
    """``-chardev ringbuf,size=128,mux=on``: a base named ``<id>-base`` and the mux."""
    base = RingbufChardev(f"{id}-base", size=128)
    mux = MuxChardev(id, base, **kwargs)
    mux.open()
    return base, mux


def test_char_mux() -> None:
    # 1. Create, then remove the mux and then its base.
    base, mux = make_mux()
    assert base.busy
    mux.close()
    assert not base.busy
    base.close()

    # 2. Recreate; fe2 takes the focus from fe1.
    base, mux = make_mux()
    h1, h2 = FeHandler(Frontend(mux)), FeHandler(Frontend(mux))
    h1.register()
    h2.register()
    assert mux.focus is h2.fe
    assert h1.events[-1] == ChardevEvent.MUX_OUT

    # 3. Input reaches the focused frontend only.
    base.be_write(HELLO)
    assert (h1.read_buf, h2.take()) == (b"", HELLO)

    # 4. Base events reach both; events injected into the mux only the focused one.
    base.be_event(ChardevEvent.BREAK)
    assert h1.last_event == h2.last_event == ChardevEvent.BREAK
    h1.last_event = h2.last_event = None
    mux.be_event(ChardevEvent.BREAK)
    assert (h1.last_event, h2.last_event) == (None, ChardevEvent.BREAK)

    # 5. Escape b sends BREAK to the focused frontend.
    h2.last_event = None
    base.be_write(b"\1b")
    assert (h1.last_event, h2.last_event) == (None, ChardevEvent.BREAK)

    # 6. Escape c moves the focus to fe1.
    base.be_write(b"\1c")
    assert (h1.last_event, h2.last_event) == (ChardevEvent.MUX_IN, ChardevEvent.MUX_OUT)
    base.be_write(HELLO)
    assert (h1.take(), h2.read_buf) == (HELLO, b"")
    base.be_write(b"\1b")
    assert (h1.last_event, h2.last_event) == (ChardevEvent.BREAK, ChardevEvent.MUX_OUT)

    # 7. Both see the backend open, told exactly once.
    for h in (h1, h2):
        assert h.fe.backend_open and h.fe.is_open and not h.mismatch
        assert h.events.count(ChardevEvent.OPENED) == 1

    # 8. Clearing handlers makes no events; an event-only registration gets one OPENED.
    for h in (h2, h1):
        h.fe.set_handlers(None, None, None, set_open=False)
    e1, e2 = FeHandler(h1.fe), FeHandler(h2.fe)
    for e in (e1, e2):
        e.fe.set_handlers(None, None, e.event)
    assert (h1.openclose_count, h2.openclose_count) == (1, 1)
    assert (e1.openclose_count, e2.openclose_count) == (1, 1)

    # 9. The base closing and reopening reaches every frontend once each.
    base.be_event(ChardevEvent.CLOSED)
    base.be_event(ChardevEvent.OPENED)
    assert (e1.openclose_count, e2.openclose_count) == (3, 3)
    assert not (e1.mismatch or e2.mismatch)

    # 10. Re-register fe2 then fe1 (focus: fe1); without handlers fe1 takes nothing.
    # Each registration is a new lifecycle view, so each gets a fresh handler.
    r1, r2 = FeHandler(h1.fe), FeHandler(h2.fe)
    r2.register()
    r1.register()
    assert mux.focus is r1.fe
    r1.fe.set_handlers(None, None, None)
    base.be_write(HELLO)
    assert (r1.read_buf, r2.read_buf) == (b"", b"")
    base.be_write(b"\1c")
    base.be_write(HELLO)
    assert r2.take() == HELLO

    # 11. Help goes to the base.
    base.read_bytes(128)
    base.be_write(b"\1?")
    assert b"C-a c" in base.read_bytes(128)

    # 12. Busy while any frontend is attached.
    h1.fe.deinit()
    assert mux.busy
    h2.fe.deinit()
    assert not mux.busy
    mux.close()
    base.close()
    for h in (h1, h2, e1, e2, r1, r2):
        assert not h.mismatch


def test_no_duplicate_opened_at_startup() -> None:
    base = RingbufChardev("m-base", size=128)
    mux = MuxChardev("m", base)
    handlers = [FeHandler(Frontend(mux)) for _ in range(5)]  # more than QEMU's 4
    for h in handlers:
        h.register()
        assert h.events == [ChardevEvent.MUX_IN]  # closed until the mux opens
    mux.open()
    late = FeHandler(Frontend(mux))
    late.register()
    for h in [*handlers, late]:
        assert h.events.count(ChardevEvent.OPENED) == 1 and not h.mismatch
        h.fe.deinit()
    mux.close()
    assert not mux.be_open
    base.close()


def test_stacking_and_busy_bases_are_refused() -> None:
    base, mux = make_mux("m")
    with pytest.raises(ChardevError, match="can't be stacked"):
        MuxChardev("m2", mux)
    with pytest.raises(ChardevBusyError, match="already in use"):
        MuxChardev("m3", base)
    mux.close()
    base.close()


class FakeRegistry:
    def __init__(self, *chardevs: Any) -> None:
        self.loop = None
        self._by_id = {c.id: c for c in chardevs}

    def get(self, id: str) -> Any:
        return self._by_id.get(id)


def test_from_qapi() -> None:
    base = NullChardev("b")
    reg = FakeRegistry(base)
    with pytest.raises(ChardevError, match="mux: base chardev nope not found"):
        MuxChardev.from_qapi("m", {"chardev": "nope"}, reg)
    mux = MuxChardev.from_qapi("m", {"chardev": "b"}, reg)
    assert mux.base is base and base.owner is mux
    with pytest.raises(ChardevBusyError, match="already in use"):
        MuxChardev.from_qapi("m2", {"chardev": "b"}, reg)
    mux.close()
    base.close()


def test_input_is_buffered_per_frontend() -> None:
    base, mux = make_mux("m")
    h1 = FeHandler(Frontend(mux), capacity=4)
    h2 = FeHandler(Frontend(mux), capacity=4)
    h2.register()
    h1.register()  # focus: fe1
    assert mux._port_can_read() == 4 + INPUT_BUFFER
    base.be_write(b"0123456789")
    assert h1.take() == b"0123"
    assert mux._port_can_read() == INPUT_BUFFER - 6  # no direct delivery while buffered
    base.be_write(b"\1c")  # fe2 gets the focus; fe1 keeps its buffer
    base.be_write(b"ab")
    assert h2.take() == b"ab"
    base.be_write(b"\1c")
    h1.fe.accept_input()
    assert h1.take() == b"4567"
    h1.fe.accept_input()
    assert h1.take() == b"89"
    for h in (h1, h2):
        h.fe.deinit()
    mux.close()
    base.close()


def test_quit_callback_and_literal_escape() -> None:
    quits: list[MuxChardev] = []
    base, mux = make_mux("m", escape=0x02, on_quit=quits.append)
    h = FeHandler(Frontend(mux))
    h.register()
    base.be_write(b"a\2\2b\2xc\1")
    assert h.take() == b"a\2bc\1"
    assert quits == [mux]
    h.fe.deinit()
    mux.close()
    base.close()


def test_escape_decoder() -> None:
    keys = MuxKeys()
    assert list(keys.feed(b"ab\1")) == [b"ab"]
    assert list(keys.feed(b"cde\1")) == [MuxCommand.NEXT, b"de"]
    assert list(keys.feed(b"\1z\1q\1h")) == [b"\1", b"z", MuxCommand.HELP]  # q: dropped
    assert list(keys.feed(b"\1?\1t\1b\1x")) == [
        MuxCommand.HELP,
        MuxCommand.TIMESTAMPS,
        MuxCommand.BREAK,
        MuxCommand.QUIT,
    ]
    assert (MuxKeys(0x01).key_name(), MuxKeys(0x1D).key_name()) == ("C-a", "0x1d")
    with pytest.raises(ValueError, match="byte value"):
        MuxKeys(300)


def test_timestamps_prefix_each_line() -> None:
    now = [100.0]
    base, mux = make_mux("m", clock=lambda: now[0])
    fe = Frontend(mux)
    fe.set_handlers(lambda: 0, lambda d: None, lambda e: None)
    base.be_write(b"\1t")
    assert fe.write(b"mid-line\n") == 9  # stamping starts at the next line
    now[0] = 100.5
    assert fe.write(b"one\ntwo") == 7
    now[0] = 3723.25
    assert fe.write(b" more\nthree\n") == 12
    assert base.read_bytes(128) == (
        b"mid-line\n[00:00:00.000] one\n[00:00:00.000] two more\n[01:00:22.750] three\n"
    )
    base.be_write(b"\1t")
    assert fe.write(b"plain\n") == 6
    assert base.read_bytes(128) == b"plain\n"
    fe.deinit()
    mux.close()
    base.close()


class Trickle(Chardev):
    """Takes at most ``room`` bytes in total until given more."""

    room = 0
    taken = b""

    def _chr_write(self, data: memoryview) -> int | None:
        n = min(len(data), self.room)
        if not n:
            return None
        self.room -= n
        self.taken += bytes(data[:n])
        return n


def test_timestamps_survive_partial_writes() -> None:
    base = Trickle("t")
    mux = MuxChardev("m", base, clock=lambda: 1.0)
    mux.open()
    base.be_write(b"\1t")
    fe = Frontend(mux)
    data = b"\nab\ncd\n"
    sent = 0
    while sent < len(data):
        base.room = 5  # cuts stamps and lines at every possible place over the run
        sent += fe.write(data[sent:]) or 0
    assert base.taken == b"\n[00:00:00.000] ab\n[00:00:00.000] cd\n"
    fe.deinit()
    mux.close()
    base.close()
