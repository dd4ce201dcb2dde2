"""The sans-I/O codec: framing, strict validation, fd ownership."""

from __future__ import annotations

import os
import struct

import pytest

from iochannel.vhost_user.protocol import (
    MAX_PAYLOAD,
    ConfigPayload,
    InflightPayload,
    MessageReader,
    ProtocolError,
    Region,
    Request,
    VringAddr,
    encode_reply,
    encode_request,
    pack_config,
    pack_mem_table,
    pack_region,
    pack_u64,
    pack_vring_addr,
    pack_vring_state,
)


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def decode_one(data: bytes, fds: list[int] | None = None) -> object:
    reader = MessageReader()
    reader.feed(data, fds or [])
    msg = reader.next_message()
    assert msg is not None
    msg.close_fds()
    return msg.payload


def test_byte_by_byte_framing() -> None:
    data = encode_request(Request.SET_FEATURES, pack_u64(1 << 32)) + encode_request(
        Request.GET_FEATURES
    )
    reader = MessageReader()
    got = []
    for b in data:
        assert reader.wanted() >= 1
        reader.feed(bytes([b]))
        while (msg := reader.next_message()) is not None:
            got.append((msg.request, msg.payload))
    assert got == [(Request.SET_FEATURES, 1 << 32), (Request.GET_FEATURES, None)]
    assert not reader.pending


def test_wanted_stops_at_message_boundaries() -> None:
    reader = MessageReader()
    assert reader.wanted() == 12
    reader.feed(encode_request(Request.SET_VRING_NUM, pack_vring_state(1, 64))[:12])
    assert reader.next_message() is None
    assert reader.wanted() == 8


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (pack_vring_state(3, 256), (3, 256)),
        (pack_vring_addr(VringAddr(1, 0, 2, 3, 4, 5)), VringAddr(1, 0, 2, 3, 4, 5)),
        (pack_config(32, 0, b"\1"), ConfigPayload(32, 1, 0, b"\1")),
    ],
)
def test_payloads(data: bytes, expected: object) -> None:
    request = {8: Request.SET_VRING_NUM, 40: Request.SET_VRING_ADDR}.get(
        len(data), Request.SET_CONFIG
    )
    assert decode_one(encode_request(request, data)) == expected


def test_inflight_payload_and_regions() -> None:
    inflight = struct.pack("<QQHH4x", 4096, 0, 2, 128)
    msg = encode_request(Request.GET_INFLIGHT_FD, inflight)
    assert decode_one(msg) == InflightPayload(4096, 0, 2, 128)
    fd = os.eventfd(0)
    region = Region(0x1000, 0x2000, 0x7000, 0)
    assert decode_one(encode_request(Request.ADD_MEM_REG, pack_region(region)), [fd]) == region
    assert not fd_open(fd)


def test_memory_table() -> None:
    regions = [Region(0, 0xA0000, 0x10000, 0), Region(0xC0000, 0x100000, 0xD0000, 0xC0000)]
    fds = [os.eventfd(0), os.eventfd(0)]
    assert (
        decode_one(encode_request(Request.SET_MEM_TABLE, pack_mem_table(regions)), fds) == regions
    )


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        (encode_request(Request.GET_FEATURES, flags=2), "header.flags"),
        (encode_request(Request.GET_FEATURES, flags=5), "header.flags"),
        (struct.pack("<III", 1, 1, MAX_PAYLOAD + 1), "header.size"),
        (encode_request(0), "header.request"),
        (encode_request(1000), "header.request"),
        (encode_request(Request.SET_FEATURES, b"1234"), "header.size"),
        (encode_request(Request.SET_VRING_KICK, pack_u64(0x200)), "SET_VRING_KICK.u64"),
        (encode_request(Request.SET_CONFIG, pack_config(0, 0, bytes(300))), "CONFIG.size"),
        (encode_request(Request.SET_CONFIG, pack_config(0, 0, b"ab")[:-1]), "header.size"),
        (encode_request(Request.SET_MEM_TABLE, struct.pack("<II", 0, 0)), "SET_MEM_TABLE.nregions"),
    ],
)
def test_rejected(data: bytes, fields: str) -> None:
    reader = MessageReader()
    fd = os.eventfd(0)
    reader.feed(data, [fd])
    with pytest.raises(ProtocolError) as info:
        reader.next_message()
    assert info.value.field == fields
    assert not fd_open(fd)  # the reader closed the fd it owned
    assert reader.broken
    with pytest.raises(ProtocolError):
        reader.next_message()


def test_fd_rules() -> None:
    for request, payload, count in [
        (Request.GET_FEATURES, b"", 1),
        (Request.SET_VRING_CALL, pack_u64(0), 0),
        (Request.SET_VRING_CALL, pack_u64(0), 2),
        (Request.SET_VRING_CALL, pack_u64(0x100), 1),
        (Request.ADD_MEM_REG, pack_region(Region(0, 1, 0, 0)), 0),
    ]:
        fds = [os.eventfd(0) for _ in range(count)]
        reader = MessageReader()
        reader.feed(encode_request(request, payload), fds)
        with pytest.raises(ProtocolError) as info:
            reader.next_message()
        assert info.value.field == "fds"
        assert not any(fd_open(fd) for fd in fds)


def test_too_many_fds_across_partial_reads() -> None:
    reader = MessageReader()
    fds = [os.eventfd(0) for _ in range(9)]
    reader.feed(b"\x0d", fds[:5])
    with pytest.raises(ProtocolError):
        reader.feed(b"\0", fds[5:])
    assert not any(fd_open(fd) for fd in fds)


def test_rem_mem_reg_fd_is_closed() -> None:
    fd = os.eventfd(0)
    reader = MessageReader()
    reader.feed(encode_request(Request.REM_MEM_REG, pack_region(Region(0, 1, 0, 0))), [fd])
    msg = reader.next_message()
    assert msg is not None and msg.fds == []
    assert not fd_open(fd)


def test_region_checks() -> None:
    overflow = pack_mem_table([Region(2**64 - 1, 2, 0, 0)])
    overlap = pack_mem_table([Region(0, 0x2000, 0, 0), Region(0x1000, 0x1000, 0x8000, 0)])
    empty = pack_mem_table([Region(0, 0, 0, 0)])
    for payload, field in [
        (overflow, "SET_MEM_TABLE.regions[0].guest_phys_addr"),
        (overlap, "SET_MEM_TABLE.gpa"),
        (empty, "SET_MEM_TABLE.regions[0].memory_size"),
    ]:
        reader = MessageReader()
        reader.feed(
            encode_request(Request.SET_MEM_TABLE, payload),
            [os.eventfd(0) for _ in range(payload[0])],
        )
        with pytest.raises(ProtocolError) as info:
            reader.next_message()
        assert info.value.field == field


def test_eof_inside_message() -> None:
    reader = MessageReader()
    reader.eof()  # clean
    reader.feed(b"\1\0")
    with pytest.raises(ProtocolError, match="end of stream"):
        reader.eof()


def test_reply_flags() -> None:
    assert encode_reply(Request.GET_FEATURES, pack_u64(7)) == struct.pack("<IIIQ", 1, 5, 8, 7)
