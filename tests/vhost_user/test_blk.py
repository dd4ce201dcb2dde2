"""vhost-user-blk requests driven by the Python front-end over the real server."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from iochannel.vhost_user import blk
from iochannel.vhost_user.frontend import DATA_BASE, DriverQueue, Frontend, Segment
from iochannel.vhost_user.protocol import Request, pack_config

from .conftest import IMAGE_SIZE, Export

HDR = DATA_BASE
BUF = DATA_BASE + 0x1000
STATUS = DATA_BASE + 0x200000


def submit(
    fe: Frontend,
    q: DriverQueue,
    rtype: int,
    sector: int = 0,
    out: bytes = b"",
    in_len: int = 0,
) -> tuple[int, bytes, int]:
    """Run one request; return (status, data read, used length)."""
    fe.write(HDR, struct.pack("<IIQ", rtype, 0, sector))
    segs = [Segment(HDR, 16)]
    if out:
        fe.write(BUF, out)
        segs.append(Segment(BUF, len(out)))
    if in_len:
        segs.append(Segment(BUF, in_len, True))
    fe.write(STATUS, b"\xff")
    segs.append(Segment(STATUS, 1, True))
    q.add_chain(segs)
    q.notify()
    ((_, used_len),) = q.wait_used()
    return fe.read(STATUS, 1)[0], fe.read(BUF, in_len), used_len


def test_read_host_written_data(export: Export) -> None:
    with open(export.image, "r+b") as f:
        f.seek(8 * 512)
        f.write(b"HOST-WRITTEN")
    with export.connect() as fe:
        fe.start(2)
        status, data, used = submit(fe, fe.queues[0], blk.T_IN, 8, in_len=512)
        assert (status, data[:12], used) == (blk.S_OK, b"HOST-WRITTEN", 513)


def test_write_then_host_reads(export: Export) -> None:
    with export.connect() as fe:
        fe.start(2)
        payload = b"GUEST".ljust(1024, b".")
        assert submit(fe, fe.queues[1], blk.T_OUT, 100, out=payload)[0] == blk.S_OK
        assert submit(fe, fe.queues[1], blk.T_FLUSH)[0] == blk.S_OK
    assert export.image.read_bytes()[100 * 512 : 100 * 512 + 1024] == payload


def test_buffers_spanning_memory_regions(export: Export) -> None:
    with export.connect() as fe:
        fe.start(1)
        q = fe.queues[0]
        fe.write(0x9F000, b"A" * 4096)
        fe.write(0xC0000, b"B" * 4096)
        fe.write(HDR, struct.pack("<IIQ", blk.T_OUT, 0, 0))
        # One descriptor across the 0xa0000 region end is not mappable in a
        # guest, but two adjacent ones are; the device sees them as one iovec.
        q.add_chain(
            [
                Segment(HDR, 16),
                Segment(0x9F000, 4096),
                Segment(0xC0000, 4096),
                Segment(STATUS, 1, True),
            ]
        )
        q.notify()
        q.wait_used()
        assert fe.read(STATUS, 1) == b"\0"
    data = export.image.read_bytes()[:8192]
    assert data == b"A" * 4096 + b"B" * 4096


def test_get_id_serial(export: Export) -> None:
    with export.connect() as fe:
        fe.start(1)
        status, data, used = submit(fe, fe.queues[0], blk.T_GET_ID, in_len=20)
        assert (status, data, used) == (blk.S_OK, b"vhost_user_blk".ljust(20, b"\0"), 21)


def test_config_space(export: Export) -> None:
    with export.connect() as fe:
        fe.start(1)
        cfg = fe.get_config(0, 60)
        assert struct.unpack_from("<Q", cfg)[0] == IMAGE_SIZE // 512
        assert struct.unpack_from("<I", cfg, 12)[0] == blk.SEG_MAX
        assert struct.unpack_from("<I", cfg, 20)[0] == 512
        assert struct.unpack_from("<H", cfg, 34)[0] == 2
        assert cfg[32] == 1  # write-back cache
        # The only writable field is wce.
        assert fe.ack(Request.SET_CONFIG, pack_config(32, 0, b"\0")) == 0
        assert fe.get_config(32, 1) == b"\0"
        assert fe.ack(Request.SET_CONFIG, pack_config(0, 0, b"\0" * 8)) != 0
        # Writes still work in write-through mode.
        assert submit(fe, fe.queues[0], blk.T_OUT, 0, out=b"x" * 512)[0] == blk.S_OK


def test_range_checks(export: Export) -> None:
    sectors = IMAGE_SIZE // 512
    with export.connect() as fe:
        fe.start(1)
        q = fe.queues[0]
        assert submit(fe, q, blk.T_IN, sectors - 1, in_len=512)[0] == blk.S_OK
        assert submit(fe, q, blk.T_IN, sectors - 1, in_len=1024)[0] == blk.S_IOERR
        assert submit(fe, q, blk.T_IN, sectors, in_len=512)[0] == blk.S_IOERR
        assert submit(fe, q, blk.T_IN, 2**60, in_len=512)[0] == blk.S_IOERR
        assert submit(fe, q, blk.T_IN, 0, in_len=100)[0] == blk.S_IOERR
        assert submit(fe, q, blk.T_OUT, sectors, out=b"x" * 512)[0] == blk.S_IOERR
        assert submit(fe, q, 99)[0] == blk.S_UNSUPP
        # BARRIER is masked off.
        assert submit(fe, q, blk.T_IN | blk.T_BARRIER, 0, in_len=512)[0] == blk.S_OK


def test_discard_and_write_zeroes(export: Export) -> None:
    with open(export.image, "r+b") as f:
        f.write(b"\xaa" * 8192)

    def dwz(fe: Frontend, rtype: int, sector: int, num: int, flags: int, segs: int = 1) -> int:
        payload = struct.pack("<QII", sector, num, flags) * segs
        return submit(fe, fe.queues[0], rtype, out=payload)[0]

    with export.connect() as fe:
        fe.start(1)
        assert dwz(fe, blk.T_WRITE_ZEROES, 0, 4, 0) == blk.S_OK
        assert dwz(fe, blk.T_WRITE_ZEROES, 4, 4, blk.DWZ_UNMAP) == blk.S_OK
        assert dwz(fe, blk.T_DISCARD, 8, 8, 0) == blk.S_OK
        # The qtest cases: two segments, huge count, beyond capacity, unknown flags.
        assert dwz(fe, blk.T_DISCARD, 0, 1, 0, segs=2) == blk.S_UNSUPP
        assert dwz(fe, blk.T_WRITE_ZEROES, 0, 0xFFFFFFFF, 0) == blk.S_IOERR
        assert dwz(fe, blk.T_DISCARD, IMAGE_SIZE // 512, 1, 0) == blk.S_IOERR
        assert dwz(fe, blk.T_DISCARD, 0, 1, ~blk.DWZ_UNMAP & 0xFFFFFFFF) == blk.S_UNSUPP
        assert dwz(fe, blk.T_DISCARD, 0, 1, blk.DWZ_UNMAP) == blk.S_UNSUPP
    assert export.image.read_bytes()[:4096] == bytes(4096)


def test_read_only_export(make_export: Callable[..., Export]) -> None:
    exp = make_export(writable=False, num_queues=1)
    with exp.connect() as fe:
        features = fe.negotiate()
        assert features & blk.F_RO
        assert not features & (blk.F_DISCARD | blk.F_WRITE_ZEROES)
        fe.add_memory()
        q = DriverQueue(fe, 0, 64)
        fe.queues.append(q)
        q.configure()
        fe.request(Request.SET_VRING_ENABLE, struct.pack("<II", 0, 1))
        assert submit(fe, q, blk.T_OUT, 0, out=b"x" * 512)[0] == blk.S_IOERR
        assert submit(fe, q, blk.T_WRITE_ZEROES, out=struct.pack("<QII", 0, 1, 0))[0] == blk.S_IOERR
        assert submit(fe, q, blk.T_IN, 0, in_len=512)[0] == blk.S_OK
        assert submit(fe, q, blk.T_FLUSH)[0] == blk.S_OK
    assert exp.image.read_bytes()[:512] == bytes(512)


def test_logical_block_size(make_export: Callable[..., Export]) -> None:
    exp = make_export(num_queues=1, logical_block_size=4096)
    with exp.connect() as fe:
        fe.start(1)
        assert struct.unpack_from("<I", fe.get_config(20, 4))[0] == 4096
        assert submit(fe, fe.queues[0], blk.T_IN, 8, in_len=4096)[0] == blk.S_OK
        assert submit(fe, fe.queues[0], blk.T_IN, 1, in_len=4096)[0] == blk.S_IOERR


def test_multi_queue_in_parallel(export: Export) -> None:
    with export.connect() as fe:
        fe.start(2)
        for q in fe.queues:
            for k in range(8):
                sector = 64 * q.index + k
                hdr, st = DATA_BASE + 0x10000 * (q.index * 8 + k), STATUS + 16 * k + q.index
                fe.write(hdr, struct.pack("<IIQ", blk.T_OUT, 0, sector))
                fe.write(hdr + 0x1000, bytes([q.index * 8 + k]) * 512)
                q.add_chain([Segment(hdr, 16), Segment(hdr + 0x1000, 512), Segment(st, 1, True)])
        for q in fe.queues:
            q.notify()
        for q in fe.queues:
            assert len(q.wait_used(8)) == 8
    data = export.image.read_bytes()
    for qi in range(2):
        for k in range(8):
            off = (64 * qi + k) * 512
            assert data[off : off + 512] == bytes([qi * 8 + k]) * 512


@pytest.mark.parametrize("indirect_len", [3 * 16])
def test_indirect_descriptors(export: Export, indirect_len: int) -> None:
    with open(export.image, "r+b") as f:
        f.write(b"INDIRECT".ljust(512, b"-"))
    with export.connect() as fe:
        fe.start(1)
        q = fe.queues[0]
        table = DATA_BASE + 0x300000
        fe.write(HDR, struct.pack("<IIQ", blk.T_IN, 0, 0))
        fe.write(table, struct.pack("<QIHH", HDR, 16, 1, 1))
        fe.write(table + 16, struct.pack("<QIHH", BUF, 512, 3, 2))
        fe.write(table + 32, struct.pack("<QIHH", STATUS, 1, 2, 0))
        q.write_desc(0, table, indirect_len, 4, 0)
        q.publish(0)
        q.notify()
        assert q.wait_used() == [(0, 513)]
        assert fe.read(BUF, 8) == b"INDIRECT"


def test_adjacent_buffers(export: Export) -> None:
    """Descriptors that follow each other in guest memory (merged internally),
    including a status byte right after the data."""
    with export.connect() as fe:
        fe.start(1)
        q = fe.queues[0]
        fe.write(HDR, struct.pack("<IIQ", blk.T_OUT, 0, 2))
        fe.write(HDR + 16, b"a" * 512 + b"b" * 512)
        q.add_chain(
            [
                Segment(HDR, 16),
                Segment(HDR + 16, 512),
                Segment(HDR + 528, 512),
                Segment(STATUS, 1, True),
            ]
        )
        q.notify()
        q.wait_used()
        assert fe.read(STATUS, 1) == b"\0"
        fe.write(HDR, struct.pack("<IIQ", blk.T_IN, 0, 2))
        fe.write(BUF + 1024, b"\xff")
        q.add_chain(
            [
                Segment(HDR, 16),
                Segment(BUF, 512, True),
                Segment(BUF + 512, 512, True),
                Segment(BUF + 1024, 1, True),
            ]
        )
        q.notify()
        assert q.wait_used()[0][1] == 1025
        assert fe.read(BUF, 1025) == b"a" * 512 + b"b" * 512 + b"\0"
    assert export.image.read_bytes()[1024:2048] == b"a" * 512 + b"b" * 512
