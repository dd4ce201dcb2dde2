"""Indirect tables are read in bulk when they are laid out as Linux lays them
out; whatever the table holds, the chain (or the error) is exactly what the
entry-by-entry walk gives."""

from __future__ import annotations

import os
import random
import struct
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from iochannel.vhost_user.memory import GuestMemory
from iochannel.vhost_user.protocol import Region, VringAddr
from iochannel.vhost_user.virtqueue import DescriptorChain, Virtqueue, VirtqueueError

QVA = 0x7F00_0000_0000
#: Two adjacent regions, then unmapped addresses.
REGION = 0x10000
RINGS, TABLE = 0x1000, 0x2000
SIZE = 8

# Entries are (addr, length, flags, next); addresses often sit at region edges.
addrs = st.one_of(
    st.integers(0, 3 * REGION),
    st.sampled_from([0, REGION - 4096, REGION - 1, REGION, 2 * REGION - 4096, 2 * REGION]),
)
lengths = st.one_of(st.sampled_from([0, 1, 16, 512, 4096]), st.integers(0, 0x3000))


@st.composite
def tables(draw: st.DrawFn) -> list[tuple[int, int, int, int]]:
    """Plain tables (readable, then writable entries), some with fields changed."""
    n = draw(st.integers(1, 12))
    writable_from = draw(st.integers(0, n))
    entries = [
        (
            draw(addrs),
            draw(lengths),
            (1 if i < n - 1 else 0) | (2 if i >= writable_from else 0),
            i + 1 if i < n - 1 else draw(st.integers(0, 0xFFFF)),
        )
        for i in range(n)
    ]
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, n - 1))
        field = draw(st.integers(0, 3))
        value = draw(st.integers(0, 0xFFFF) if field else addrs)
        if field == 2:
            value = draw(st.one_of(st.integers(0, 7), st.just(0x101)))
        elif field == 3:  # also a next whose low byte is right
            value = draw(st.one_of(st.integers(0, 0xFFFF), st.just((i + 1) | 0x100)))
        e = list(entries[i])
        e[field] = value
        entries[i] = (e[0], e[1], e[2], e[3])
    return entries


def pop(mem: GuestMemory, table: list[tuple[int, int, int, int]]) -> object:
    """What popping a request made of *table* gives: the buffers' bytes, or the error."""
    vq = Virtqueue(0, mem)
    vq.num = SIZE
    vq.indirect = True
    vq.set_addr(VringAddr(0, 0, QVA + RINGS, QVA + RINGS + 0x400, QVA + RINGS + 0x200, 0))
    try:
        chain = vq.pop()
    except VirtqueueError as exc:
        return str(exc)
    finally:
        vq.close()
    assert chain is not None
    result = (
        b"".join(chain.readable),
        b"".join(chain.writable),
        [len(v) for v in chain.writable][-1:],
        chain.writable_len,
    )
    chain.release()
    return result


@settings(max_examples=300, deadline=None)
@given(tables())
def test_bulk_read_matches_walk(table: list[tuple[int, int, int, int]]) -> None:
    fd = os.memfd_create("ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 2 * REGION)
    os.pwrite(fd, random.Random(1).randbytes(2 * REGION), 0)
    os.pwrite(fd, b"".join(struct.pack("<QIHH", *e) for e in table), TABLE)
    os.pwrite(fd, struct.pack("<QIHH", TABLE, 16 * len(table), 4, 0), RINGS)
    os.pwrite(fd, struct.pack("<HHH", 0, 1, 0), RINGS + 0x200)  # avail: idx 1, head 0
    mem = GuestMemory()
    try:
        mem.set_table(
            [Region(0, REGION, QVA, 0), Region(REGION, REGION, QVA + REGION, REGION)],
            [fd, os.dup(fd)],
        )
        bulk = pop(mem, table)
        with mock.patch.object(Virtqueue, "_plain_table", return_value=False):
            walked = pop(mem, table)
    finally:
        mem.close()
    assert bulk == walked


def test_linux_layout_is_read_in_bulk() -> None:
    """The layout Linux uses takes the bulk path (what keeps large requests cheap)."""
    table = [(0x100, 16, 1, 1), (0x3000, 4096, 3, 2), (0x8000, 4096, 3, 3), (0x200, 1, 2, 0)]
    calls: list[bool] = []
    real = Virtqueue._plain_table

    def spy(self: Virtqueue, chain: DescriptorChain, data: bytes) -> bool:
        calls.append(real(self, chain, data))
        return calls[-1]

    fd = os.memfd_create("ram", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 2 * REGION)
    os.pwrite(fd, b"".join(struct.pack("<QIHH", *e) for e in table), TABLE)
    os.pwrite(fd, struct.pack("<QIHH", TABLE, 16 * len(table), 4, 0), RINGS)
    os.pwrite(fd, struct.pack("<HHH", 0, 1, 0), RINGS + 0x200)
    mem = GuestMemory()
    try:
        mem.set_table([Region(0, 2 * REGION, QVA, 0)], [fd])
        with mock.patch.object(Virtqueue, "_plain_table", spy):
            result = pop(mem, table)
    finally:
        mem.close()
    assert calls == [True]
    assert isinstance(result, tuple) and result[3] == 8193
