"""Writing another device on the same server: an echo device that completes
requests asynchronously, from its own thread."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from iochannel import UnixAddress
from iochannel.vhost_user import DescriptorChain, DeviceError, VhostUserBackend, Virtqueue
from iochannel.vhost_user.frontend import DATA_BASE, Frontend, Segment
from iochannel.vhost_user.protocol import ProtocolFeature, Request
from iochannel.vhost_user.server import VhostUserServer


class EchoDevice(VhostUserBackend):
    """Copies each request's readable bytes into its writable buffers."""

    num_queues = 1

    def __init__(self) -> None:
        self.pending: list[tuple[Virtqueue, DescriptorChain]] = []
        self.popped = threading.Event()
        self.acked = 0

    def features(self) -> int:
        return 0

    def acked_features(self, features: int) -> None:
        self.acked = features

    def get_config(self, offset: int, size: int) -> bytes:
        if offset + size > 4:
            raise DeviceError("beyond config")
        return b"ECHO"[offset : offset + size]

    def handle_queue(self, vq: Virtqueue, thread_id: int) -> None:
        while (chain := vq.pop()) is not None:
            self.pending.append((vq, chain))
            self.popped.set()

    def complete(self) -> None:
        for vq, chain in self.pending:
            data = b"".join(bytes(b) for b in chain.readable)
            pos = 0
            for buf in chain.writable:
                n = min(len(buf), len(data) - pos)
                buf[:n] = data[pos : pos + n]
                pos += n
            vq.push(chain, pos)
            vq.notify()
        self.pending.clear()


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[tuple[EchoDevice, str]]:
    dev = EchoDevice()
    path = str(tmp_path / "echo.sock")
    server = VhostUserServer.listen(dev, UnixAddress(path))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),))
    thread.start()
    try:
        yield dev, path
    finally:
        server.close()
        thread.join()
        loop.close()


def test_echo_device(echo: tuple[EchoDevice, str]) -> None:
    dev, path = echo
    with Frontend(path) as fe:
        fe.start(1)
        assert fe.protocol & ProtocolFeature.CONFIG
        assert fe.get_config(0, 4) == b"ECHO"
        q = fe.queues[0]
        fe.write(DATA_BASE, b"hello, device")
        q.add_chain([Segment(DATA_BASE, 13), Segment(DATA_BASE + 0x1000, 64, True)])
        q.notify()
        dev.popped.wait()
        dev.complete()
        assert q.wait_used() == [(0, 13)]
        assert fe.read(DATA_BASE + 0x1000, 13) == b"hello, device"


def test_get_vring_base_waits_for_requests_in_flight(echo: tuple[EchoDevice, str]) -> None:
    dev, path = echo
    with Frontend(path) as fe:
        fe.start(1)
        q = fe.queues[0]
        fe.write(DATA_BASE, b"x")
        q.add_chain([Segment(DATA_BASE, 1), Segment(DATA_BASE + 0x1000, 1, True)])
        q.notify()
        dev.popped.wait()
        seen: list[int] = []

        def stop() -> None:
            fe.request(Request.SET_VRING_ENABLE, struct.pack("<II", 0, 0))
            body = fe.call(Request.GET_VRING_BASE, struct.pack("<II", 0, 0))
            # When the reply comes, the request must already be completed.
            seen.extend([struct.unpack("<II", body)[1], q.used_idx()])

        thread = threading.Thread(target=stop)
        thread.start()
        threading.Event().wait(0.2)  # give GET_VRING_BASE a chance to overtake
        dev.complete()
        thread.join()
        assert seen == [1, 1]
