"""Guest memory: mapping, translation across regions, table changes."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterator

import pytest

from iochannel.vhost_user.memory import MAX_COPY, Bounce, FdSpan, GuestMemory, GuestMemoryError
from iochannel.vhost_user.protocol import Region, VringAddr
from iochannel.vhost_user.virtqueue import Virtqueue, VirtqueueError

SIZE = 0x40000


def make_memfd(flags: int) -> int:
    fd = os.memfd_create("ram", os.MFD_CLOEXEC | flags)
    os.ftruncate(fd, SIZE)
    os.pwrite(fd, bytes(range(256)) * (SIZE // 256), 0)
    return fd


@pytest.fixture
def memfd() -> Iterator[int]:
    """Sealable, as QEMU creates it: the back-end seals it and maps it."""
    fd = make_memfd(os.MFD_ALLOW_SEALING)
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


def test_a_sealable_memfd_is_sealed_then_mapped(mem: GuestMemory, memfd: int) -> None:
    assert fcntl.fcntl(memfd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
    with pytest.raises(OSError) as exc:
        os.ftruncate(memfd, 0)
    assert exc.value.errno == errno.EPERM
    assert not mem.copied and all(m.view is not None for m in mem.regions)


@pytest.fixture
def unsealed() -> Iterator[tuple[GuestMemory, int]]:
    """A memfd that cannot be sealed, in two regions: accessed by system calls."""
    fd = make_memfd(0)
    m = GuestMemory()
    regions = [
        Region(0x0, 0x10000, 0x7000_0000, 0x0),
        Region(0x10000, 0x10000, 0x7001_0000, 0x10000),
    ]
    m.set_table(regions, [os.dup(fd) for _ in regions])
    yield m, fd
    m.close()
    os.close(fd)


def test_unsealed_memory_is_copied_and_written_back(unsealed: tuple[GuestMemory, int]) -> None:
    mem, fd = unsealed
    assert mem.copied
    with pytest.raises(GuestMemoryError, match="not mapped"):
        mem.gpa(0, 1)  # copies need a Bounce
    bounce = Bounce()
    (data,) = mem.gpa(0x10, 4, bounce)
    assert bytes(data) == bytes([0x10, 0x11, 0x12, 0x13])
    out = mem.gpa(0xFFFE, 4, bounce, writable=True)  # spans both regions
    assert [len(c) for c in out] == [2, 2]
    out[0][:] = b"AB"
    out[1][:1] = b"C"
    assert os.pread(fd, 4, 0xFFFE) == bytes([0xFE, 0xFF, 0x00, 0x01])  # not yet
    bounce.flush()
    assert os.pread(fd, 4, 0xFFFE) == b"ABC\x01"
    assert bounce.size == 8
    ring = mem.qva(0x7001_0000 + 0x20, 8)
    assert isinstance(ring, FdSpan)
    ring.write(0, b"RING")
    assert bytes(ring.read()[:4]) == b"RING" == os.pread(fd, 4, 0x10020)


def test_unsealed_memory_that_shrinks_fails_instead_of_faulting(
    unsealed: tuple[GuestMemory, int],
) -> None:
    mem, fd = unsealed
    ring = mem.qva(0x7001_0000, 16)
    os.ftruncate(fd, 0x8000)
    with pytest.raises(GuestMemoryError, match="guest memory region shrank"):
        mem.gpa(0x10000, 4, Bounce())
    assert isinstance(ring, FdSpan)
    with pytest.raises(GuestMemoryError, match="guest memory region shrank"):
        ring.read()
    assert bytes(mem.gpa(0x10, 1, Bounce())[0]) == b"\x10"  # what is left still works


def test_copies_are_bounded(unsealed: tuple[GuestMemory, int]) -> None:
    mem, _ = unsealed
    bounce = Bounce()
    bounce.size = MAX_COPY - 4
    mem.gpa(0, 4, bounce)
    with pytest.raises(GuestMemoryError, match="exceed"):
        mem.gpa(0, 1, bounce)


def test_a_tmpfs_file_is_accessed_by_system_calls() -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    fd = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, SIZE)
        m = GuestMemory()
        m.add(Region(0, SIZE, 0, 0), os.dup(fd))
        assert m.copied
        os.ftruncate(fd, 0)
        with pytest.raises(GuestMemoryError, match="shrank"):
            m.gpa(0, 1, Bounce())
        m.close()
    finally:
        os.close(fd)


def test_hugetlbfs_without_seals_is_refused() -> None:
    try:
        fd = os.memfd_create("huge", os.MFD_CLOEXEC | os.MFD_HUGETLB)
    except OSError as exc:
        pytest.skip(f"no hugetlbfs memfd: {exc}")
    try:
        os.ftruncate(fd, 2 << 20)
        m = GuestMemory()
        with pytest.raises(GuestMemoryError, match="not sealed against shrinking"):
            m.add(Region(0, 2 << 20, 0, 0), os.dup(fd))
        m.close()
    finally:
        os.close(fd)


def test_a_read_only_fd_is_refused() -> None:
    fd = make_memfd(0)
    ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    m = GuestMemory()
    with pytest.raises(GuestMemoryError, match="cannot be written"):
        m.add(Region(0, SIZE, 0, 0), ro)
    m.close()


def test_a_request_completed_after_shrinking_still_counts() -> None:
    """push() reports guest memory it cannot write but never leaves the
    request in flight (a drain would wait for it forever)."""
    # Sealed against growing but not shrinking: not mapped, and writing past
    # the end after a shrink fails instead of extending the file.
    fd = make_memfd(os.MFD_ALLOW_SEALING)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    mem = GuestMemory()
    mem.add(Region(0, 0x20000, 0x7000_0000, 0), os.dup(fd))
    assert mem.copied
    vq = Virtqueue(0, mem)
    vq.num = 4
    # desc at 0x0, avail at 0x100, used at 0x200; one writable buffer at 0x11000.
    os.pwrite(fd, struct.pack("<QIHH", 0x11000, 16, 2, 0), 0)
    os.pwrite(fd, struct.pack("<HHH", 0, 1, 0), 0x100)
    os.pwrite(fd, bytes(6 + 8 * 4), 0x200)
    vq.set_addr(VringAddr(0, 0, 0x7000_0000, 0x7000_0200, 0x7000_0100, 0))
    chain = vq.pop()
    assert chain is not None and vq.in_flight == 1
    chain.writable[0][:] = b"X" * 16
    os.ftruncate(fd, 0x1000)
    with pytest.raises(VirtqueueError, match="queue 0: guest memory cannot be written"):
        vq.push(chain, 16)
    assert vq.in_flight == 0
    vq.drain()
    vq.close()
    mem.close()
    os.close(fd)
