"""Guest memory: mapping, translation across regions, table changes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from iochannel.vhost_user.memory import GuestMemory, GuestMemoryError
from iochannel.vhost_user.protocol import Region

SIZE = 0x40000


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("ram", os.MFD_CLOEXEC)
    os.ftruncate(fd, SIZE)
    os.pwrite(fd, bytes(range(256)) * (SIZE // 256), 0)
    yield fd
    os.close(fd)


@pytest.fixture
def mem(memfd: int) -> Iterator[GuestMemory]:
    m = GuestMemory()
    # Two adjacent regions (GPA 0x0-0x10000 and 0x10000-0x20000) and one after
    # a hole, at unaligned file offsets like hugetlbfs-free QEMU sends.
    regions = [
        Region(0x0, 0x10000, 0x7000_0000, 0x0),
        Region(0x10000, 0x10000, 0x7001_0000, 0x10000),
        Region(0x30000, 0x800, 0x7003_0000, 0x30800),
    ]
    m.set_table(regions, [os.dup(memfd) for _ in regions])
    yield m
    m.close()


def test_translation_spans_regions(mem: GuestMemory) -> None:
    chunks = mem.gpa(0xFFF0, 0x20)
    assert [len(c) for c in chunks] == [0x10, 0x10]
    assert b"".join(bytes(c) for c in chunks) == bytes((0xF0 + i) % 256 for i in range(0x20))
    assert bytes(mem.gpa(0x30000, 4)[0]) == bytes([0x00, 0x01, 0x02, 0x03])


@pytest.mark.parametrize(("addr", "length"), [(0x1FFF0, 0x20), (0x20000, 1), (0x307FF, 2)])
def test_unmapped_ranges(mem: GuestMemory, addr: int, length: int) -> None:
    with pytest.raises(GuestMemoryError):
        mem.gpa(addr, length)


def test_front_end_addresses(mem: GuestMemory) -> None:
    assert bytes(mem.qva(0x7001_0000 + 5, 3)) == bytes([5, 6, 7])
    with pytest.raises(GuestMemoryError):
        mem.qva(0x7000_FFFF, 2)  # crosses into the next region


def test_writes_are_shared(mem: GuestMemory, memfd: int) -> None:
    mem.gpa(0x10000, 4)[0][:] = b"DATA"
    assert os.pread(memfd, 4, 0x10000) == b"DATA"


def test_add_remove(mem: GuestMemory, memfd: int) -> None:
    with pytest.raises(GuestMemoryError, match="overlap"):
        mem.add(Region(0x8000, 0x1000, 0x9000_0000, 0), os.dup(memfd))
    mem.add(Region(0x100000, 0x1000, 0x9000_0000, 0x1000), os.dup(memfd))
    assert bytes(mem.gpa(0x100000, 1)[0]) == b"\x00"
    mem.remove(Region(0x100000, 0x1000, 0x9000_0000, 0))
    with pytest.raises(GuestMemoryError):
        mem.gpa(0x100000, 1)
    with pytest.raises(GuestMemoryError, match="no region"):
        mem.remove(Region(0x100000, 0x1000, 0x9000_0000, 0))


def test_region_beyond_file(memfd: int) -> None:
    m = GuestMemory()
    with pytest.raises(GuestMemoryError, match="fd has"):
        m.add(Region(0, SIZE, 0, 0x1000), os.dup(memfd))
    m.close()


def test_held_view_delays_unmap(mem: GuestMemory) -> None:
    view = mem.gpa(0, 16)[0]
    mem.close()  # the region is kept until the view goes
    assert bytes(view[:2]) == b"\x00\x01"
    view.release()
