"""Hostile front-ends: every case ends in an error reply or a clean disconnect.

The server runs in this process, so the autouse leak check also proves that
fds received with rejected messages were closed.  After each case a fresh
front-end must still be served.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Iterator

import pytest

from iochannel.vhost_user import blk
from iochannel.vhost_user.frontend import DATA_BASE, DriverQueue, Frontend, Segment
from iochannel.vhost_user.protocol import (
    HEADER,
    Flags,
    Region,
    Request,
    VringAddr,
    encode_request,
    pack_config,
    pack_mem_table,
    pack_region,
    pack_u64,
    pack_vring_addr,
    pack_vring_state,
)

from .conftest import Export


@pytest.fixture
def eventfds() -> Iterator[Callable[[int], list[int]]]:
    """Make n eventfds, closed after the test (the server gets duplicates)."""
    made: list[int] = []

    def make(n: int) -> list[int]:
        fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(n)]
        made.extend(fds)
        return fds

    yield make
    for fd in made:
        os.close(fd)


def still_serving(export: Export) -> None:
    with export.connect() as fe:
        fe.negotiate()
        assert fe.call_u64(Request.GET_QUEUE_NUM) == 2


def expect_disconnect(export: Export, fe: Frontend) -> None:
    assert fe.disconnected()
    fe.close()
    still_serving(export)


def negotiated(export: Export) -> Frontend:
    fe = export.connect()
    fe.negotiate()
    return fe


# ---- framing ----


def test_payload_too_large(export: Export) -> None:
    fe = export.connect()
    fe.send(HEADER.pack(Request.GET_FEATURES, 1, 4097))
    expect_disconnect(export, fe)


def test_short_header_then_eof(export: Export) -> None:
    with export.connect() as fe:
        fe.send(b"\x01\x00\x00")
        fe.sock.shutdown(socket.SHUT_WR)
        assert fe.disconnected()
    still_serving(export)


def test_truncated_payload(export: Export, eventfds: Callable[[int], list[int]]) -> None:
    with export.connect() as fe:
        fe.send(HEADER.pack(Request.SET_VRING_CALL, 1, 8) + b"\0\0\0", eventfds(1))
        fe.sock.shutdown(socket.SHUT_WR)
        assert fe.disconnected()
    still_serving(export)


@pytest.mark.parametrize("flags", [0, 2, 3, 0x5, 0x1 | 0x4])
def test_bad_header_flags(export: Export, flags: int) -> None:
    fe = export.connect()
    fe.send(encode_request(Request.GET_FEATURES, b"", flags))
    expect_disconnect(export, fe)


@pytest.mark.parametrize("request_no", [0, 41, 99, 0xFFFFFFFF, Request.SET_LOG_BASE])
def test_none_and_unknown_requests(export: Export, request_no: int) -> None:
    fe = export.connect()
    fe.send(encode_request(request_no))
    expect_disconnect(export, fe)


@pytest.mark.parametrize(
    ("req", "size"),
    [
        (Request.GET_FEATURES, 8),
        (Request.SET_FEATURES, 4),
        (Request.SET_VRING_NUM, 16),
        (Request.SET_VRING_ADDR, 32),
        (Request.ADD_MEM_REG, 32),
    ],
)
def test_wrong_payload_size(export: Export, req: Request, size: int) -> None:
    fe = negotiated(export)
    fe.send(encode_request(req, bytes(size)))
    expect_disconnect(export, fe)


# ---- fds ----


@pytest.mark.parametrize("n", [9, 16])
def test_too_many_fds(export: Export, eventfds: Callable[[int], list[int]], n: int) -> None:
    fe = export.connect()
    fe.send(encode_request(Request.SET_VRING_CALL, pack_u64(0)), eventfds(n))
    expect_disconnect(export, fe)


@pytest.mark.parametrize(
    ("req", "payload"),
    [
        (Request.GET_FEATURES, b""),
        (Request.SET_OWNER, b""),
        (Request.SET_VRING_NUM, pack_vring_state(0, 128)),
        (Request.SET_VRING_CALL, pack_u64(0x100)),  # NOFD with an fd
    ],
)
def test_stray_fds(
    export: Export, eventfds: Callable[[int], list[int]], req: Request, payload: bytes
) -> None:
    fe = export.connect()
    fe.send(encode_request(req, payload), eventfds(1))
    expect_disconnect(export, fe)


def test_missing_fd(export: Export) -> None:
    fe = export.connect()
    fe.send(encode_request(Request.SET_VRING_KICK, pack_u64(0)))
    expect_disconnect(export, fe)


# ---- memory table ----


def _table(n: int, size: int = 0x1000, gpa_step: int = 0x1000) -> bytes:
    return pack_mem_table([Region(i * gpa_step, size, 0x1000 * i, 0) for i in range(n)])


@pytest.mark.parametrize(
    ("payload", "nfds"),
    [
        (struct.pack("<II", 0, 0), 0),  # no regions
        (_table(9), 8),  # too many regions
        (_table(2), 1),  # fd count mismatch
        (_table(1)[:-8], 1),  # size does not match the count
        (_table(1, size=0), 1),  # empty region
        (pack_mem_table([Region(2**64 - 0x1000, 0x2000, 0, 0)]), 1),  # gpa overflow
        (pack_mem_table([Region(0, 0x2000, 2**64 - 0x1000, 0)]), 1),  # uaddr overflow
        (_table(2, size=0x2000), 2),  # overlapping
    ],
)
def test_bad_mem_table(
    export: Export, eventfds: Callable[[int], list[int]], payload: bytes, nfds: int
) -> None:
    fe = negotiated(export)
    fe.send(encode_request(Request.SET_MEM_TABLE, payload), eventfds(nfds))
    expect_disconnect(export, fe)


def test_region_beyond_fd(export: Export) -> None:
    fe = negotiated(export)
    fd = os.memfd_create("small", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 0x1000)
        region = Region(0, 0x10000, 0x10000, 0)
        assert fe.ack(Request.ADD_MEM_REG, pack_region(region), [fd]) != 0
        assert fe.call_u64(Request.GET_QUEUE_NUM) == 2  # connection still usable
    finally:
        os.close(fd)
        fe.close()


def test_mem_reg_without_negotiation(export: Export) -> None:
    fe = export.connect()
    fd = os.dup(fe.memfd)
    try:
        fe.send(encode_request(Request.ADD_MEM_REG, pack_region(fe.regions[0])), [fd])
    finally:
        os.close(fd)
    expect_disconnect(export, fe)


# ---- vring setup ----


def _vring_cases() -> list[tuple[Request, bytes, bool]]:
    addr = pack_vring_addr(VringAddr(255, 0, 0, 0, 0, 0))
    return [
        (Request.SET_VRING_KICK, pack_u64(255), True),
        (Request.SET_VRING_CALL, pack_u64(255), True),
        (Request.SET_VRING_ERR, pack_u64(255), True),
        (Request.SET_VRING_NUM, pack_vring_state(255, 128), False),
        (Request.SET_VRING_ADDR, addr, False),
        (Request.SET_VRING_BASE, pack_vring_state(255, 0), False),
        (Request.SET_VRING_ENABLE, pack_vring_state(255, 1), False),
        (Request.GET_VRING_BASE, pack_vring_state(255, 0), False),
    ]


@pytest.mark.parametrize(("req", "payload", "fd"), _vring_cases())
def test_queue_index_out_of_range(
    export: Export,
    eventfds: Callable[[int], list[int]],
    req: Request,
    payload: bytes,
    fd: bool,
) -> None:
    fe = negotiated(export)
    fe.send(encode_request(req, payload), eventfds(1) if fd else [])
    expect_disconnect(export, fe)


@pytest.mark.parametrize("num", [0, 3, 2048, 1 << 31])
def test_bad_vring_size(export: Export, num: int) -> None:
    fe = negotiated(export)
    fe.request(Request.SET_VRING_NUM, pack_vring_state(0, num))
    expect_disconnect(export, fe)


def test_bad_vring_enable_value(export: Export) -> None:
    fe = negotiated(export)
    fe.request(Request.SET_VRING_ENABLE, pack_vring_state(0, 2))
    expect_disconnect(export, fe)


@pytest.mark.parametrize("need_reply", [True, False])
def test_vring_addr_outside_memory(export: Export, need_reply: bool) -> None:
    fe = negotiated(export)
    fe.add_memory()
    bad = pack_vring_addr(VringAddr(0, 0, 0x10, 0x20, 0x30, 0))
    if need_reply:
        assert fe.ack(Request.SET_VRING_ADDR, bad) != 0
        fe.close()
        still_serving(export)
    else:
        fe.request(Request.SET_VRING_ADDR, bad)
        expect_disconnect(export, fe)


def test_features_never_offered(export: Export) -> None:
    fe = export.connect()
    fe.request(Request.SET_FEATURES, pack_u64(1 << 63))
    expect_disconnect(export, fe)


def test_get_config_bounds(export: Export) -> None:
    fe = negotiated(export)
    # Beyond the config space but within the protocol limit: an empty reply.
    fe.request(Request.GET_CONFIG, pack_config(0, 0, bytes(100)))
    assert fe.read_reply() == (Request.GET_CONFIG, 0x5, b"")
    fe.request(Request.GET_CONFIG, pack_config(0, 0, bytes(0)))
    assert fe.read_reply() == (Request.GET_CONFIG, 0x5, b"")
    # Beyond the protocol's 256 bytes: the connection ends.
    fe.send(encode_request(Request.GET_CONFIG, pack_config(0, 0, bytes(300))))
    expect_disconnect(export, fe)


# ---- NEED_REPLY ----


def _reply_cases(fe: Frontend, fds: list[int]) -> list[tuple[Request, bytes, list[int], int]]:
    """(request, payload, fds, expected reply size) in a valid order."""
    q = DriverQueue(fe, 0, 64)
    fe.queues.append(q)
    memfd = [os.dup(fe.memfd)]
    return [
        (Request.GET_FEATURES, b"", [], 8),
        (Request.GET_PROTOCOL_FEATURES, b"", [], 8),
        (Request.SET_OWNER, b"", [], 8),
        (Request.GET_QUEUE_NUM, b"", [], 8),
        (Request.GET_MAX_MEM_SLOTS, b"", [], 8),
        (Request.ADD_MEM_REG, pack_region(fe.regions[1]), memfd, 8),
        (Request.SET_VRING_NUM, pack_vring_state(0, 64), [], 8),
        (Request.SET_VRING_BASE, pack_vring_state(0, 0), [], 8),
        (Request.SET_VRING_ADDR, pack_vring_addr(q.addr()), [], 8),
        (Request.SET_VRING_CALL, pack_u64(0), [os.dup(q.callfd)], 8),
        (Request.SET_VRING_ERR, pack_u64(0), [os.dup(q.errfd)], 8),
        (Request.SET_VRING_KICK, pack_u64(0), [os.dup(q.kick)], 8),
        (Request.SET_VRING_ENABLE, pack_vring_state(0, 1), [], 8),
        (Request.GET_CONFIG, pack_config(0, 0, bytes(8)), [], 20),
        (Request.SET_CONFIG, pack_config(32, 0, b"\1"), [], 8),
        (Request.SET_VRING_ENABLE, pack_vring_state(0, 0), [], 8),
        (Request.GET_VRING_BASE, pack_vring_state(0, 0), [], 8),
        (Request.REM_MEM_REG, pack_region(fe.regions[1]), [], 8),
        (Request.RESET_OWNER, b"", [], 8),
    ]


def test_need_reply_on_every_request(export: Export) -> None:
    """Each request gets exactly one reply, with flags 0x5, and acks are 0."""
    with export.connect() as fe:
        fe.negotiate()
        held: list[int] = []
        try:
            for request, payload, fds, size in _reply_cases(fe, held):
                held.extend(fds)
                fe.request(request, payload, fds, need_reply=True)
                req, flags, body = fe.read_reply()
                assert (req, flags, len(body)) == (request, 0x5, size), request.name
                if size == 8 and request not in (
                    Request.GET_FEATURES,
                    Request.GET_PROTOCOL_FEATURES,
                    Request.GET_QUEUE_NUM,
                    Request.GET_MAX_MEM_SLOTS,
                    Request.GET_VRING_BASE,
                ):
                    assert body == pack_u64(0), request.name
        finally:
            for fd in held:
                os.close(fd)
        # Nothing unsolicited follows: the next reply answers the next request.
        assert fe.call_u64(Request.GET_QUEUE_NUM) == 2


def test_need_reply_ignored_without_reply_ack(export: Export) -> None:
    with export.connect() as fe:
        fe.request(Request.SET_OWNER, need_reply=True)
        assert fe.call_u64(Request.GET_FEATURES) != 0


# ---- rings ----


def _started(export: Export) -> Frontend:
    fe = export.connect()
    fe.start(1)
    return fe


def _status_seg() -> Segment:
    return Segment(DATA_BASE + 0x2000, 1, True)


def test_avail_index_jump(export: Export) -> None:
    fe = _started(export)
    q = fe.queues[0]
    q.publish(0, count=q.size + 1)
    q.notify()
    expect_disconnect(export, fe)


def test_head_out_of_range(export: Export) -> None:
    fe = _started(export)
    q = fe.queues[0]
    q.publish(q.size)
    q.notify()
    expect_disconnect(export, fe)


def _one_desc_chain(export: Export, descs: list[tuple[int, int, int, int]]) -> None:
    fe = _started(export)
    q = fe.queues[0]
    for i, (gpa, length, flags, nxt) in enumerate(descs):
        q.write_desc(i, gpa, length, flags, nxt)
    q.publish(0)
    q.notify()
    expect_disconnect(export, fe)


def test_next_out_of_range(export: Export) -> None:
    _one_desc_chain(export, [(DATA_BASE, 16, 1, 200)])


def test_descriptor_loop(export: Export) -> None:
    _one_desc_chain(export, [(DATA_BASE, 16, 1, 1), (DATA_BASE, 16, 1, 0)])


def test_zero_length_descriptor(export: Export) -> None:
    _one_desc_chain(export, [(DATA_BASE, 0, 0, 0)])


def test_readable_after_writable(export: Export) -> None:
    _one_desc_chain(export, [(DATA_BASE, 16, 3, 1), (DATA_BASE, 16, 0, 0)])


def test_descriptor_outside_memory(export: Export) -> None:
    _one_desc_chain(export, [(0xA0000, 16, 0, 0)])


@pytest.mark.parametrize("length", [0, 24, 16 * 1024 + 16])
def test_bad_indirect_length(export: Export, length: int) -> None:
    _one_desc_chain(export, [(DATA_BASE, length, 4, 0)])


def test_nested_indirect(export: Export) -> None:
    fe = _started(export)
    fe.write(DATA_BASE + 0x3000, struct.pack("<QIHH", DATA_BASE + 0x3000, 16, 4, 0))
    q = fe.queues[0]
    q.write_desc(0, DATA_BASE + 0x3000, 16, 4, 0)
    q.publish(0)
    q.notify()
    expect_disconnect(export, fe)


def test_indirect_table_across_regions(export: Export) -> None:
    """An indirect table straddling two adjacent regions is read correctly.

    7.2 libvhost-user mis-copies such a table (a byte count used as an
    element count).
    """
    with open(export.image, "r+b") as f:
        f.write(b"STRADDLE")
    split = 0x800000
    with Frontend(export.socket, split=split, seals=export.seals) as fe:
        fe.start(1)
        q = fe.queues[0]
        table = split - 16
        hdr, buf, st = DATA_BASE, DATA_BASE + 0x1000, DATA_BASE + 0x2000
        fe.write(hdr, struct.pack("<IIQ", blk.T_IN, 0, 0))
        fe.write(table, struct.pack("<QIHH", hdr, 16, 1, 1))
        fe.write(split, struct.pack("<QIHH", buf, 512, 3, 2) + struct.pack("<QIHH", st, 1, 2, 0))
        q.write_desc(0, table, 48, 4, 0)
        q.publish(0)
        q.notify()
        assert q.wait_used() == [(0, 513)]
        assert fe.read(buf, 8) == b"STRADDLE"


def test_indirect_table_in_hole(export: Export) -> None:
    _one_desc_chain(export, [(0xA0000 - 16, 48, 4, 0)])


def test_request_without_status_or_header(export: Export) -> None:
    with _started(export) as fe:
        q = fe.queues[0]
        # No device-writable buffer: returned with length 0, connection stays.
        q.add_chain([Segment(DATA_BASE, 16)])
        q.notify()
        assert q.wait_used() == [(0, 0)]
        # Header shorter than 16 bytes: IOERR.
        fe.write(DATA_BASE + 0x2000, b"\xff")
        q.add_chain([Segment(DATA_BASE, 8), _status_seg()])
        q.notify()
        assert q.wait_used()[0][1] == 1
        assert fe.read(DATA_BASE + 0x2000, 1)[0] == blk.S_IOERR


# ---- connections ----


def test_second_front_end_refused(export: Export) -> None:
    with export.connect() as first:
        first.negotiate()
        with export.connect() as second:
            assert second.disconnected()
        assert first.call_u64(Request.GET_QUEUE_NUM) == 2


def test_disconnect_with_io_in_flight_then_reconnect(export: Export) -> None:
    fe = _started(export)
    q = fe.queues[0]
    for k in range(32):
        hdr = DATA_BASE + 0x10000 * k
        fe.write(hdr, struct.pack("<IIQ", blk.T_IN, 0, 0))
        q.add_chain([Segment(hdr, 16), Segment(hdr + 0x1000, 0x8000, True), _status_seg()])
    q.notify()
    fe.close()
    with export.connect() as fe2:
        fe2.start(2)
        assert fe2.stop() == [0, 0]


def test_reply_flags(export: Export) -> None:
    with export.connect() as fe:
        fe.request(Request.GET_FEATURES, need_reply=True)
        req, flags, body = fe.read_reply()
        assert (req, flags, len(body)) == (Request.GET_FEATURES, Flags.VERSION | Flags.REPLY, 8)
