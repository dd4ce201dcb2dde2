"""ChardevRegistry: chardev-add/remove/change, busy rules, query, ringbuf commands."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from iochannel.chardev import (
    ChardevBusyError,
    ChardevError,
    ChardevEvent,
    Frontend,
    NullChardev,
    RingbufChardev,
    WhileClosed,
)
from iochannel.chardev.options import ChardevOptionError
from iochannel.chardev.registry import ChardevRegistry

from .fehandler import FeHandler


def test_null() -> None:
    reg = ChardevRegistry()
    assert reg.get("label-null") is None
    chr = reg.add("null,id=label-null")
    assert reg.get("label-null") is chr and isinstance(chr, NullChardev)
    fe = Frontend(chr)
    with pytest.raises(ChardevBusyError, match="already in use"):
        Frontend(chr)
    with pytest.raises(ChardevBusyError, match="Chardev 'label-null' is busy"):
        reg.remove("label-null")
    fe.deinit()
    fe = Frontend(chr)
    fe.set_open(True)
    fe.set_handlers(None, None, None)
    assert fe.write(b"buf\0") == 4
    fe.deinit()
    reg.remove("label-null")
    assert chr.closed
    with pytest.raises(ChardevError, match="Chardev 'label-null' not found"):
        reg.remove("label-null")
    reg.close()


def test_invalid() -> None:
    reg = ChardevRegistry()
    with pytest.raises(ChardevOptionError, match="'invalid' is not a valid char driver"):
        reg.new("label-invalid", "invalid")
    with pytest.raises(ChardevOptionError, match="'invalid' is not a valid char driver name"):
        reg.add("invalid,id=x")
    assert len(reg) == 0


def test_duplicate_id() -> None:
    with ChardevRegistry() as reg:
        reg.add("null,id=dup")
        with pytest.raises(ChardevError, match="Chardev with id 'dup' already exists"):
            reg.add({"id": "dup", "backend": {"type": "ringbuf", "data": {}}})
        assert isinstance(reg.get("dup"), NullChardev)


def test_ringbuf() -> None:
    with ChardevRegistry() as reg:
        with pytest.raises(ChardevError, match="power of two"):
            reg.add("ringbuf,id=ringbuf-label,size=5")
        assert "ringbuf-label" not in reg
        chr = reg.add("ringbuf,id=ringbuf-label,size=2")
        fe = Frontend(chr)
        assert fe.write(b"buff") == 4
        assert reg.ringbuf_read("ringbuf-label", 4) == "ff"
        assert reg.ringbuf_read("ringbuf-label", 4) == ""
        reg.ringbuf_write("ringbuf-label", "aGk=", format="base64")
        assert reg.ringbuf_read("ringbuf-label", 2, format="base64") == "aGk="
        fe.deinit()
        mem = reg.add("memory,id=memory-label,size=2")
        assert isinstance(mem, RingbufChardev)
        reg.add("null,id=n")
        with pytest.raises(ChardevError, match="n is not a ringbuf device"):
            reg.ringbuf_read("n", 1)
        with pytest.raises(ChardevError, match="n is not a ringbuf device"):
            reg.ringbuf_write("n", "x")
        with pytest.raises(ChardevError, match="Device 'nope' not found"):
            reg.ringbuf_read("nope", 1)


def test_query_and_backends(tmp_path: Path) -> None:
    with ChardevRegistry() as reg:
        reg.add("null,id=n")
        chr = reg.add(f"file,id=f,path={tmp_path / 'out'}")
        fe = Frontend(chr)
        fe.set_open(True)
        assert reg.query() == [
            {"label": "n", "filename": "null", "frontend-open": False},
            {"label": "f", "filename": f"file:{tmp_path / 'out'}", "frontend-open": True},
        ]
        fe.deinit()
    names = ChardevRegistry.backends()
    for name in ("null", "ringbuf", "memory", "file", "pipe", "pty", "stdio", "serial", "udp"):
        assert name in names


def test_chardev_add_reply_and_legacy_reference() -> None:
    async def main() -> None:
        with ChardevRegistry() as reg:
            assert reg.chardev_add("null,id=n") == {}
            reply = reg.chardev_add({"id": "p", "backend": {"type": "pty", "data": {}}})
            assert reply == {"pty": reg.get("p").pty_path}  # type: ignore[union-attr]
            assert reg.new("serial0", "chardev:n") is reg.get("n")
            with pytest.raises(ChardevError, match="Chardev 'missing' not found"):
                reg.new("serial0", "chardev:missing")

    asyncio.run(main())


def test_common_keys_reach_the_chardev(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"old:")
    with ChardevRegistry() as reg:
        chr = reg.add(f"null,id=n,logfile={log},logappend=on,closed-writes=drop")
        assert chr.closed_writes.mode is WhileClosed.DROP
        assert chr.write(b"logged") == 6
        chr2 = reg.add("null,id=m,closed-writes=buffer,closed-writes-limit=1k")
        assert chr2.closed_writes.mode is WhileClosed.BUFFER and chr2.closed_writes.limit == 1024
    assert log.read_bytes() == b"old:logged"


def test_send_break() -> None:
    with ChardevRegistry() as reg:
        h = FeHandler(Frontend(reg.add("null,id=n")))
        h.register()
        with pytest.raises(ChardevError, match="Chardev 'unknown' not found"):
            reg.send_break("unknown")
        assert h.events == [ChardevEvent.OPENED]
        reg.send_break("n")
        assert h.events == [ChardevEvent.OPENED, ChardevEvent.BREAK]
        h.fe.deinit()


def test_change_without_frontend_replaces(tmp_path: Path) -> None:
    with ChardevRegistry() as reg:
        old = reg.add("null,id=c")
        new = reg.change("c", f"file,path={tmp_path / 'out'}")
        assert reg.get("c") is new and old.closed and not new.closed
        new.write(b"x")
        new2 = reg.change("c", {"type": "ringbuf", "data": {"size": 4}})
        assert isinstance(new2, RingbufChardev) and new.closed
    assert (tmp_path / "out").read_bytes() == b"x"


def test_change_failures_leave_the_old_chardev(tmp_path: Path) -> None:
    with ChardevRegistry() as reg:
        old = reg.add("null,id=c")
        with pytest.raises(ChardevError, match="Chardev 'nope' not found"):
            reg.change("nope", "null")
        with pytest.raises(ChardevError, match=r"directory .* does not exist"):
            reg.change("c", f"file,path={tmp_path / 'no' / 'such' / 'dir'}")
        with pytest.raises(ChardevOptionError, match="Invalid parameter 'bogus'"):
            reg.change("c", "null,bogus=1")
        assert reg.get("c") is old and not old.closed
        fe = Frontend(old)
        fe.set_handlers(lambda: 1, lambda d: None, lambda e: None)
        with pytest.raises(ChardevError, match="does not support chardev hotswap"):
            reg.change("c", "ringbuf")
        assert reg.get("c") is old and fe.chardev is old
        fe.set_handlers(lambda: 1, lambda d: None, lambda e: None, be_change=lambda: False)
        with pytest.raises(ChardevError, match="Chardev 'c' change failed"):
            reg.change("c", "ringbuf")
        assert reg.get("c") is old and fe.chardev is old and not old.closed
        fe.set_handlers(lambda: 1, lambda d: None, lambda e: None, be_change=lambda: True)
        new = reg.change("c", "ringbuf")
        assert fe.chardev is new and old.closed
        fe.deinit()


def test_mux_on_creates_base_and_mux() -> None:
    with ChardevRegistry() as reg:
        mux = reg.add("ringbuf,id=mux-label,size=128,mux=on")
        base = reg.get("mux-label-base")
        assert isinstance(base, RingbufChardev) and mux.type_name == "mux"
        with pytest.raises(ChardevBusyError, match="Chardev 'mux-label-base' is busy"):
            reg.remove("mux-label-base")
        with pytest.raises(ChardevError, match="cannot be hot-swapped"):
            reg.change("mux-label", "null")
        with pytest.raises(ChardevError, match="already exists"):
            reg.add("null,id=mux-label-base")
        reg.remove("mux-label")
        reg.remove("mux-label-base")
        reg.add("ringbuf,id=mux-label,size=128,mux=on")
        fe = Frontend(reg.get("mux-label"))
        fe.set_handlers(lambda: 1, lambda d: None, lambda e: None)
        with pytest.raises(ChardevBusyError, match="Chardev 'mux-label' is busy"):
            reg.remove("mux-label")
        fe.deinit()
        # close() takes the mux down before its base.


def test_hub_membership_by_mux_be_id() -> None:
    with ChardevRegistry() as reg:
        a = reg.add("ringbuf,id=a,size=128")
        hub = reg.add("hub,id=h,chardevs.0=a")
        b = reg.add("ringbuf,id=b,size=128,mux-be-id=h")
        assert a.owner is hub and b.owner is hub
        with pytest.raises(ChardevBusyError, match="Chardev 'b' is busy"):
            reg.remove("b")
        with pytest.raises(ChardevError, match="mux-be device can't be found by id 'a'"):
            reg.add("null,id=c,mux-be-id=a")
        assert "c" not in reg
        with pytest.raises(ChardevError, match="cannot be hot-swapped"):
            reg.change("h", "null")
        with pytest.raises(ChardevBusyError, match="used by a mux or a hub"):
            reg.change("a", "null")
        reg.remove("h")
        reg.remove("a")
        reg.remove("b")


def test_common_keys_reach_muxes_and_hubs(tmp_path: Path) -> None:
    log = tmp_path / "mux.log"
    with ChardevRegistry() as reg:
        reg.add("ringbuf,id=r,size=64")
        mux = reg.add(
            {"id": "m", "backend": {"type": "mux", "data": {"chardev": "r", "logfile": str(log)}}}
        )
        fe = Frontend(mux)
        fe.set_handlers(lambda: 1, lambda d: None, lambda e: None)
        assert fe.write(b"logged") == 6
        fe.deinit()
        assert log.read_bytes() == b"logged"
        reg.add("ringbuf,id=r2,size=64")
        hub = reg.add("hub,id=h,chardevs.0=r2,closed-writes=drop")
        assert hub.closed_writes.mode is WhileClosed.DROP
