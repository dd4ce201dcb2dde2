"""block_resize: drivers resize, and a vhost-user-blk front-end learns the new capacity."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from iochannel.block import BlockError
from iochannel.block.storage import Storage
from iochannel.vhost_user import blk
from iochannel.vhost_user.frontend import Frontend, Segment
from iochannel.vhost_user.protocol import BackendRequest, ProtocolFeature, Request
from tests.vhost_user.test_blk import BUF, HDR, STATUS, submit

T = TypeVar("T")
MiB = 1 << 20
BAD = {"driver": "python", "module": "tests.block.drivers_for_tests"}


class Daemon:
    """A :class:`Storage` on a loop of its own, as the daemon runs it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever)
        self.thread.start()
        self.storage = Storage()

    def run(self, call: Callable[[], Coroutine[Any, Any, T] | T]) -> T:
        async def on_loop() -> T:
            result = call()
            if asyncio.iscoroutine(result):
                return await result  # type: ignore[no-any-return]
            return result  # type: ignore[return-value]

        return asyncio.run_coroutine_threadsafe(on_loop(), self.loop).result(30)

    def resize(self, node: str, size: int) -> None:
        self.run(lambda: self.storage.block_resize(None, node, size))

    def close(self) -> None:
        self.run(self.storage.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    try:
        yield d
    finally:
        d.close()


def _export(d: Daemon, tmp_path: Path, node: str, **extra: Any) -> str:
    sock = str(tmp_path / f"{node}.sock")
    args = {
        "type": "vhost-user-blk",
        "id": f"e-{node}",
        "node-name": node,
        "addr": {"type": "unix", "path": sock},
        "writable": True,
        **extra,
    }
    d.run(lambda: d.storage.export_add(args, typed=True))
    return sock


def _capacity(fe: Frontend) -> int:
    return int(struct.unpack("<Q", fe.get_config(0, 8))[0])


def _file_node(d: Daemon, tmp_path: Path, size: int) -> Path:
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(size)
    args = {"driver": "file", "node-name": "f0", "filename": str(image)}
    d.run(lambda: d.storage.blockdev_add(args, typed=True))
    return image


def test_front_end_is_told_and_reads_the_new_capacity(daemon: Daemon, tmp_path: Path) -> None:
    image = _file_node(daemon, tmp_path, MiB)
    raw = {"driver": "raw", "node-name": "r0", "file": "f0"}
    daemon.run(lambda: daemon.storage.blockdev_add(raw, typed=True))
    # The export is on the raw node: resizing its child is seen through it.
    sock = _export(daemon, tmp_path, "r0")
    with Frontend(sock) as fe:
        fe.start(1)
        assert fe.protocol & ProtocolFeature.SLAVE_REQ
        channel = fe.open_backend_channel()
        q = fe.queues[0]
        assert _capacity(fe) == MiB // 512
        assert submit(fe, q, blk.T_IN, MiB // 512, in_len=512)[0] == blk.S_IOERR
        daemon.resize("f0", 2 * MiB)
        assert image.stat().st_size == 2 * MiB
        assert fe.read_backend_request() == (BackendRequest.CONFIG_CHANGE_MSG, 1, b"")
        assert _capacity(fe) == 2 * MiB // 512
        assert submit(fe, q, blk.T_IN, MiB // 512, in_len=512)[:2] == (blk.S_OK, bytes(512))
        # Shrinking too; an unchanged size sends nothing.
        daemon.resize("r0", MiB // 2)
        assert fe.read_backend_request()[0] == BackendRequest.CONFIG_CHANGE_MSG
        daemon.resize("r0", MiB // 2)
        channel.settimeout(0.2)
        with pytest.raises(TimeoutError):
            channel.recv(1)
        assert _capacity(fe) == MiB // 1024
        assert submit(fe, q, blk.T_OUT, MiB // 1024, out=b"x" * 512)[0] == blk.S_IOERR


def test_front_end_without_backend_channel_still_reads_the_capacity(
    daemon: Daemon, tmp_path: Path
) -> None:
    _file_node(daemon, tmp_path, MiB)
    sock = _export(daemon, tmp_path, "f0")
    with Frontend(sock) as fe:
        fe.start(1)
        daemon.resize("f0", 3 * MiB)
        assert _capacity(fe) == 3 * MiB // 512


def test_python_drivers(daemon: Daemon) -> None:
    ram = {
        "driver": "python",
        "node-name": "ram",
        "module": "iochannel.block.examples",
        "class": "RamDisk",
        "size": 4096,
    }
    node = daemon.run(lambda: daemon.storage.blockdev_add(ram, typed=True))
    node.pwritev([memoryview(b"abc")], 0)
    daemon.resize("ram", 8192)
    assert node.size() == 8192
    daemon.resize("ram", 2)
    buf = bytearray(2)
    assert node.preadv([memoryview(buf)], 0) == 2 and buf == b"ab"
    # A driver without resize cannot be resized.
    filt = {**ram, "node-name": "filt", "class": "ErrorInjector", "file": "ram"}
    del filt["size"]
    daemon.run(lambda: daemon.storage.blockdev_add(filt, typed=True))
    with pytest.raises(BlockError, match=r"^Image format driver does not support resize$"):
        daemon.resize("filt", 4096)


def test_python_driver_resize_that_raises_or_hangs_fails_alone(daemon: Daemon) -> None:
    bad = {**BAD, "node-name": "b", "class": "BadResize", "timeout": 1}
    node = daemon.run(lambda: daemon.storage.blockdev_add(bad, typed=True))
    with pytest.raises(BlockError, match=r"Could not resize node 'b': .*ValueError: cannot shrink"):
        daemon.resize("b", 4096)
    with pytest.raises(BlockError, match=r"Could not resize node 'b': .*timed out after 1 s"):
        daemon.resize("b", 8192)
    assert node.size() == 1 << 20
    daemon.resize("b", 1 << 21)
    assert node.size() == 1 << 21


def test_resize_runs_off_the_loop_and_holds_its_node(daemon: Daemon) -> None:
    bad = {**BAD, "node-name": "b", "class": "BadResize", "timeout": 2}
    daemon.run(lambda: daemon.storage.blockdev_add(bad, typed=True))
    hanging = asyncio.run_coroutine_threadsafe(
        daemon.storage.block_resize(None, "b", 8192), daemon.loop
    )
    try:
        # Calls on the loop run in order: the resize has started.  The loop
        # still answers, and the node is busy meanwhile.
        nodes = daemon.run(daemon.storage.query_named_block_nodes)
        assert nodes[0]["node-name"] == "b"
        with pytest.raises(BlockError, match="in use by a block_resize still running"):
            daemon.run(lambda: daemon.storage.blockdev_del("b"))
        with pytest.raises(BlockError, match="in use by a block_resize still running"):
            daemon.resize("b", 1 << 21)
    finally:
        with pytest.raises(BlockError, match="timed out"):
            hanging.result(10)
    daemon.resize("b", 1 << 21)


def test_backend_channel_that_is_not_a_socket_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    _file_node(daemon, tmp_path, MiB)
    sock = _export(daemon, tmp_path, "f0")
    with Frontend(sock) as fe:
        fe.start(1)
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            assert fe.ack(Request.SET_SLAVE_REQ_FD, b"", [fd]) == 1
        finally:
            os.close(fd)
        # A second channel replaces the first, which the back-end closes.
        first = fe.open_backend_channel()
        fe.backend_channel = None
        with first:
            fe.open_backend_channel()
            first.settimeout(5)
            assert first.recv(1) == b""
        daemon.resize("f0", 2 * MiB)
        assert fe.read_backend_request()[0] == BackendRequest.CONFIG_CHANGE_MSG


def test_resize_waits_for_requests_in_progress(daemon: Daemon, tmp_path: Path) -> None:
    ex = {"driver": "python", "module": "iochannel.block.examples"}
    ram = {**ex, "node-name": "ram", "class": "RamDisk", "size": MiB}
    daemon.run(lambda: daemon.storage.blockdev_add(ram, typed=True))
    slow = {**ex, "node-name": "slow", "class": "ErrorInjector", "file": "ram", "latency-ms": 300}
    daemon.run(lambda: daemon.storage.blockdev_add(slow, typed=True))
    sock = _export(daemon, tmp_path, "slow")
    with Frontend(sock) as fe:
        fe.start(1)
        q = fe.queues[0]
        fe.write(HDR, struct.pack("<IIQ", blk.T_OUT, 0, MiB // 512 - 1))
        fe.write(BUF, b"t" * 512)
        fe.write(STATUS, b"\xff")
        q.add_chain([Segment(HDR, 16), Segment(BUF, 512), Segment(STATUS, 1, True)])
        q.notify()
        time.sleep(0.1)  # the write is in the driver now
        daemon.resize("ram", 4096)  # waits for it: it must not land past the new end
        q.wait_used()
        assert fe.read(STATUS, 1) == bytes([blk.S_OK])
    impl = daemon.storage.nodes["ram"].impl  # type: ignore[attr-defined]
    assert len(impl.data) == 4096
