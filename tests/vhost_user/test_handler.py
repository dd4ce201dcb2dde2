"""The request handler state machine without sockets or threads: messages in, replies
and ring start/stop calls out."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest

from iochannel.vhost_user import Virtqueue
from iochannel.vhost_user.device import F_PROTOCOL_FEATURES, F_VERSION_1, VhostUserBackend
from iochannel.vhost_user.handler import Handler
from iochannel.vhost_user.protocol import (
    Flags,
    Message,
    ProtocolError,
    ProtocolFeature,
    Region,
    Request,
    VringAddr,
    decode,
    pack_region,
    pack_u64,
    pack_vring_addr,
    pack_vring_state,
)


class Null(VhostUserBackend):
    num_queues = 2

    def features(self) -> int:
        return 0

    def handle_queue(self, vq: Virtqueue, thread_id: int) -> None:
        raise AssertionError("no worker in these tests")


class Rings:
    """A RingControl that records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def start(self, vq: Virtqueue) -> None:
        self.calls.append(("start", vq.index))

    def stop(self, vq: Virtqueue) -> None:
        self.calls.append(("stop", vq.index))


@pytest.fixture
def handler() -> Iterator[tuple[Handler, Rings]]:
    rings = Rings()
    s = Handler(Null(), rings)
    yield s, rings
    s.close()


def msg(
    request: Request, payload: bytes = b"", fds: list[int] | None = None, ack: bool = False
) -> Message:
    flags = Flags.VERSION | (Flags.NEED_REPLY if ack else 0)
    return decode(request, flags, payload, fds or [])


def test_queue_start_stop_sequence(handler: tuple[Handler, Rings]) -> None:
    s, rings = handler
    proto = ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIGURE_MEM_SLOTS
    assert s.handle(msg(Request.SET_PROTOCOL_FEATURES, pack_u64(proto))) is None
    s.handle(msg(Request.SET_FEATURES, pack_u64(F_VERSION_1 | F_PROTOCOL_FEATURES)))
    memfd = os.memfd_create("ram", os.MFD_CLOEXEC)
    os.ftruncate(memfd, 0x10000)
    reply = s.handle(
        msg(Request.ADD_MEM_REG, pack_region(Region(0, 0x10000, 0x1000000, 0)), [memfd], ack=True)
    )
    assert reply == struct.pack("<IIIQ", Request.ADD_MEM_REG, 5, 8, 0)
    s.handle(msg(Request.SET_VRING_NUM, pack_vring_state(1, 16)))
    s.handle(msg(Request.SET_VRING_BASE, pack_vring_state(1, 7)))
    s.handle(
        msg(
            Request.SET_VRING_ADDR,
            pack_vring_addr(VringAddr(1, 0, 0x1000000, 0x1001000, 0x1000800, 0)),
        )
    )
    kick = os.eventfd(0)
    rings.calls.clear()
    s.handle(msg(Request.SET_VRING_KICK, pack_u64(1), [kick]))
    assert rings.calls == [("stop", 1)]  # not enabled yet: not started
    s.handle(msg(Request.SET_VRING_ENABLE, pack_vring_state(1, 1)))
    assert rings.calls[-1] == ("start", 1)
    rings.calls.clear()
    # A memory change pauses the running ring around the swap.
    memfd2 = os.memfd_create("ram2", os.MFD_CLOEXEC)
    os.ftruncate(memfd2, 0x1000)
    s.handle(
        msg(Request.ADD_MEM_REG, pack_region(Region(0x100000, 0x1000, 0x2000000, 0)), [memfd2])
    )
    assert rings.calls == [("stop", 1), ("start", 1)]
    reply = s.handle(msg(Request.GET_VRING_BASE, pack_vring_state(1, 0)))
    assert reply is not None and struct.unpack_from("<II", reply, 12) == (1, 7)
    assert s.queues[1].kick_fd is None and not s.queues[1].started


def test_failures_with_and_without_ack(handler: tuple[Handler, Rings]) -> None:
    s, _ = handler
    s.handle(msg(Request.SET_PROTOCOL_FEATURES, pack_u64(ProtocolFeature.REPLY_ACK)))
    bad_addr = pack_vring_addr(VringAddr(0, 0, 0x10, 0x20, 0x30, 0))
    reply = s.handle(msg(Request.SET_VRING_ADDR, bad_addr, ack=True))
    assert reply == struct.pack("<IIIQ", Request.SET_VRING_ADDR, 5, 8, 1)
    with pytest.raises(ProtocolError, match="SET_VRING_ADDR"):
        s.handle(msg(Request.SET_VRING_ADDR, bad_addr))


def test_feature_gates(handler: tuple[Handler, Rings]) -> None:
    s, _ = handler
    with pytest.raises(ProtocolError, match="CONFIGURE_MEM_SLOTS"):
        s.handle(msg(Request.GET_MAX_MEM_SLOTS))
    with pytest.raises(ProtocolError, match="CONFIG"):
        s.handle(msg(Request.GET_CONFIG, struct.pack("<III", 0, 0, 0)))
    with pytest.raises(ProtocolError, match="never offered"):
        s.handle(msg(Request.SET_PROTOCOL_FEATURES, pack_u64(ProtocolFeature.LOG_SHMFD)))


def test_without_protocol_features_rings_start_enabled(handler: tuple[Handler, Rings]) -> None:
    s, _ = handler
    s.handle(msg(Request.SET_FEATURES, pack_u64(F_VERSION_1)))
    assert all(vq.enabled for vq in s.queues)
