"""Relay: bytes both ways with bounded buffering, and lifecycle carried across."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from iochannel import MemoryChannel, SocketChannel, UnixAddress, memory_pair
from iochannel.chardev import ChardevRegistry
from iochannel.daemon.relay import CHUNK, Relay

from ..chardev.pair import PairChardev
from ..chardev.test_socket import run, settle, until


def pump(src: MemoryChannel, data: bytes) -> int:
    """Write what fits without blocking; returns the count."""
    return src.write(data) or 0


def drain(dst: MemoryChannel) -> bytes:
    out = bytearray()
    while (chunk := dst.read(65536)) is not None and chunk:
        out += chunk
    return bytes(out)


def test_flow_control_both_ways_with_a_clogged_side() -> None:
    async def main() -> None:
        a_end, a_peer = memory_pair(capacity=8192)
        b_end, b_peer = memory_pair(capacity=8192)
        for ch in (a_peer, b_peer):
            ch.set_blocking(False)
        a, b = PairChardev("a", a_end), PairChardev("b", b_end)
        a.open()
        b.open()
        relay = Relay("r", a, b)
        data = os.urandom(1 << 20)
        back = os.urandom(1 << 19)
        sent = sent_back = 0
        # Nobody reads B's peer: A's side fills and stops; the relay holds one chunk at most.
        for _ in range(200):
            sent += pump(a_peer, data[sent:])
            await asyncio.sleep(0.001)
            assert relay.forward.held <= CHUNK
        assert sent < 3 * 8192 + CHUNK, "the relay read more than its bound while clogged"
        stuck_at = sent
        await settle()
        assert pump(a_peer, data[sent:]) == 0  # everything in between is full: paced
        # The other direction flows meanwhile.
        got_back = bytearray()
        while len(got_back) < len(back):
            sent_back += pump(b_peer, back[sent_back:])
            await asyncio.sleep(0)
            got_back += drain(a_peer)
        assert bytes(got_back) == back
        assert stuck_at == sent
        # Unclog: everything arrives, in order.
        got = bytearray()
        while len(got) < len(data):
            sent += pump(a_peer, data[sent:])
            await asyncio.sleep(0)
            got += drain(b_peer)
        assert bytes(got) == data
        q = relay.query()
        assert q["bytes-forward"] == len(data) and q["bytes-back"] == len(back)
        assert q["dropped-forward"] == q["dropped-back"] == 0
        relay.close()
        for chr in (a, b):
            chr.close()
        a_peer.close()
        b_peer.close()

    run(main)


def test_lifecycle_is_carried_across(tmp_path: Path) -> None:
    async def main() -> None:
        reg = ChardevRegistry()
        path = str(tmp_path / "vm.sock")
        vm = reg.add(f"socket,id=vm,path={path},server=on,wait=off")
        viewers = reg.add(
            "socket,id=viewers,path=" + str(tmp_path / "v.sock") + ",server=on,wait=off"
        )
        relay = Relay("r", vm, viewers)

        def fe_open() -> dict[str, bool]:
            return {q["label"]: q["frontend-open"] for q in reg.query()}

        assert fe_open() == {"vm": False, "viewers": False}
        client = SocketChannel.connect(UnixAddress(path))
        await until(lambda: fe_open()["viewers"], "the viewers' frontend to open")
        assert not fe_open()["vm"]
        viewer = SocketChannel.connect(UnixAddress(str(tmp_path / "v.sock")))
        await until(lambda: fe_open()["vm"], "the vm's frontend to open")
        await client.awrite_all(b"boot\r\n")
        assert await viewer.aread_all(6) == b"boot\r\n"
        await viewer.awrite_all(b"ls\r")
        assert await client.aread_all(3) == b"ls\r"
        client.close()
        await until(lambda: not fe_open()["viewers"], "the viewers' frontend to close")
        assert fe_open()["vm"]
        client = SocketChannel.connect(UnixAddress(path))
        await until(lambda: fe_open()["viewers"], "the viewers' frontend to reopen")
        viewer.close()
        await until(lambda: not fe_open()["vm"], "the vm's frontend to close")
        relay.close()
        client.close()
        reg.close()

    run(main)


@pytest.mark.parametrize("notices", [False, True])
def test_notices_tell_the_peer_when_the_chardev_goes_and_comes(
    tmp_path: Path, notices: bool
) -> None:
    async def main() -> None:
        reg = ChardevRegistry()
        path, view = str(tmp_path / "vm.sock"), str(tmp_path / "v.sock")
        vm = reg.add(f"socket,id=vm,path={path},server=on,wait=off")
        viewers = reg.add(f"socket,id=viewers,path={view},server=on,wait=off")
        relay = Relay("r", vm, viewers, notices=notices)
        viewer = SocketChannel.connect(UnixAddress(view))
        await until(lambda: viewers.be_open, "the viewer")
        client = SocketChannel.connect(UnixAddress(path))
        await client.awrite_all(b"bye")
        client.close()
        await until(lambda: vm.stats.closes == 1, "the vm to go")
        client = SocketChannel.connect(UnixAddress(path))
        await client.awrite_all(b"hi")
        closed, opened = b"\r\n[iochannel: vm closed]\r\n", b"\r\n[iochannel: vm open]\r\n"
        expected = b"bye" + closed + opened + b"hi" if notices else b"byehi"
        assert await viewer.aread_all(len(expected)) == expected
        relay.close()
        for ch in (client, viewer):
            ch.close()
        reg.close()

    run(main)


def test_writes_to_a_closed_side_are_dropped_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        reg = ChardevRegistry()
        end, device = memory_pair(capacity=4096)
        dev = PairChardev("dev", end)
        dev.open()
        path = str(tmp_path / "v.sock")
        viewers = reg.add(f"socket,id=viewers,path={path},server=on,wait=off")
        relay = Relay("r", dev, viewers)
        await device.awrite_all(b"nobody is watching")
        await until(lambda: relay.forward.stats.dropped == 18, "the drop to be counted")
        viewer = SocketChannel.connect(UnixAddress(path))
        await until(lambda: viewers.be_open, "the viewer")
        await device.awrite_all(b"hello")
        assert await viewer.aread_all(5) == b"hello"
        relay.close()
        viewer.close()
        dev.close()
        device.close()
        reg.close()

    run(main)


def test_detaching_leaves_both_chardevs_free() -> None:
    async def main() -> None:
        reg = ChardevRegistry()
        a, b = reg.add("ringbuf,id=a"), reg.add("null,id=b")
        relay = Relay("r", a, b)
        assert a.busy and b.busy
        relay.close()
        reg.remove("a")
        reg.remove("b")
        assert len(reg) == 0

    run(main)
