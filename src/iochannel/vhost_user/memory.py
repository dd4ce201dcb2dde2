"""Guest memory shared by the front-end.

Contract:

* :class:`GuestMemory` takes the fds of SET_MEM_TABLE / ADD_MEM_REG.  A file
  mapped ``MAP_SHARED`` faults the whole process (SIGBUS) on access once its
  owner truncates it, so only fds sealed against shrinking are mapped: memfds
  carrying ``F_SEAL_SHRINK`` (QEMU's memory-backend-memfd seals so by default),
  or memfds that allow sealing, which get ``F_SEAL_SHRINK`` added here.  Their
  fd is closed once mapped.
* Any other fd (memory-backend-file on tmpfs, a regular file, a memfd without
  ``MFD_ALLOW_SEALING``) is kept open and accessed with ``preadv``/``pwritev``,
  where memory that shrank reads short instead of faulting.  Such an fd that
  cannot be written that way (hugetlbfs has no ``write``) is refused.
* :meth:`GuestMemory.gpa` translates a guest-physical range into a list of
  ``memoryview`` chunks, split where the range crosses from one region into
  the next; :meth:`GuestMemory.qva` translates a front-end virtual range (ring
  addresses of SET_VRING_ADDR), which must lie in one region.  Both raise
  :class:`GuestMemoryError` when any byte of the range is unmapped, so callers
  never touch memory outside what the front-end shared.  Chunks of unmapped
  regions are copies made through a :class:`Bounce`, which writes the
  device-writable ones back when the request completes; ``qva`` returns an
  :class:`FdSpan` for them.
* The region table is an immutable tuple replaced as a whole, so I/O threads
  that translate concurrently with ADD/REM_MEM_REG see either the old or the new
  table, never a torn one.  A removed mapping whose memory is still exported
  (a memoryview held by an in-flight request) is unmapped at :meth:`close`.
"""

from __future__ import annotations

import bisect
import fcntl
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import RemoteProtocolError
from .protocol import ProtocolError, Region, check_no_overlap

__all__ = ["MAX_COPY", "Bounce", "FdSpan", "GuestMemory", "GuestMemoryError", "GuestRegion"]

#: Maximum number of regions (ADD_MEM_REG slots) offered to the front-end.
MAX_MEM_SLOTS = 32
#: Most bytes one request may copy from regions that are not mapped.
MAX_COPY = 32 << 20


class GuestMemoryError(RemoteProtocolError):
    """A guest address does not translate to shared memory."""


@dataclass(frozen=True, slots=True)
class GuestRegion:
    """A region covering guest-physical ``[gpa, end)``.

    Mapped: ``view`` is the memory and ``fd`` is -1.  Not mapped: ``view`` is
    None and the memory is at ``region.mmap_offset`` in ``fd``.
    """

    region: Region
    mm: mmap.mmap | None
    view: memoryview | None
    fd: int
    gpa: int
    end: int


def _read(fd: int, offset: int, length: int) -> bytearray:
    buf = bytearray(length)
    view = memoryview(buf)
    done = 0
    try:
        while done < length:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                raise GuestMemoryError(
                    f"guest memory region shrank: the memory fd ends before offset "
                    f"{offset + done:#x}"
                )
            done += n
    except OSError as exc:
        raise GuestMemoryError(f"guest memory cannot be read: {exc}") from exc
    finally:
        view.release()
    return buf


def _write(fd: int, offset: int, data: memoryview) -> None:
    done = 0
    try:
        while done < len(data):
            done += os.pwritev(fd, [data[done:]], offset + done)
    except OSError as exc:
        raise GuestMemoryError(f"guest memory cannot be written: {exc}") from exc


@dataclass(frozen=True, slots=True)
class FdSpan:
    """Guest memory that is not mapped: *length* bytes at *offset* of *fd*."""

    fd: int
    offset: int
    length: int

    def read(self) -> memoryview:
        """A copy of the whole span."""
        return memoryview(_read(self.fd, self.offset, self.length))

    def write(self, pos: int, data: bytes) -> None:
        """Store *data* at *pos* in the span."""
        if pos + len(data) > self.length:
            raise GuestMemoryError(f"write of {len(data)} bytes at {pos:#x} leaves the span")
        _write(self.fd, self.offset + pos, memoryview(data))


class Bounce:
    """The copies one request made of memory that is not mapped.

    At most ``MAX_COPY`` (32 MiB), so a request cannot make the back-end
    allocate without bound; :meth:`flush` writes the device-writable copies
    back to guest memory.
    """

    __slots__ = ("_writeback", "size")

    def __init__(self) -> None:
        self.size = 0
        self._writeback: list[tuple[int, int, memoryview]] = []

    def copy(self, fd: int, offset: int, length: int, writable: bool) -> memoryview:
        self.size += length
        if self.size > MAX_COPY:
            raise GuestMemoryError(
                f"request buffers exceed {MAX_COPY} bytes of guest memory that is not mapped"
            )
        # Writable copies start as the guest's bytes too, so writing back
        # what the device left untouched changes nothing.
        view = memoryview(_read(fd, offset, length))
        if writable:
            self._writeback.append((fd, offset, view))
        return view

    def flush(self) -> None:
        """Write the device-writable copies back; once."""
        writeback, self._writeback = self._writeback, []
        for fd, offset, view in writeback:
            _write(fd, offset, view)


def _sealed(fd: int) -> bool:
    """True if the file behind *fd* cannot shrink, adding the seal if allowed."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if not seals & (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return False  # not a memfd, or not writable: no seals for us
    return bool(seals & fcntl.F_SEAL_SHRINK)


def _map(region: Region, fd: int) -> GuestRegion:
    """Map *region* from *fd* and close *fd*, or keep *fd* to access it by calls.

    The whole prefix up to ``mmap_offset + size`` is mapped from offset 0, as
    hugetlbfs needs huge-page-aligned offsets and ``mmap_offset`` need not be.
    """
    end = region.gpa + region.size
    try:
        # Sealed first: the size checked below can then no longer shrink.
        sealed = _sealed(fd)
        length = region.mmap_offset + region.size
        try:
            file_size = os.fstat(fd).st_size
        except OSError as exc:
            raise GuestMemoryError(f"memory fd cannot be used: {exc}") from exc
        if length > file_size:
            raise GuestMemoryError(
                f"mmap_offset + memory_size = {length:#x}, but the fd has {file_size:#x} bytes"
            )
        if not sealed:
            try:
                os.pwrite(fd, b"", region.mmap_offset)
            except OSError as exc:
                raise GuestMemoryError(
                    "memory fd is not sealed against shrinking (F_SEAL_SHRINK) and cannot be "
                    f"written with pwrite ({exc.strerror}): share guest RAM as a memfd "
                    "(memory-backend-memfd)"
                ) from exc
            kept = GuestRegion(region, None, None, fd, region.gpa, end)
            fd = -1  # stays open: the region is read and written through it
            return kept
        try:
            mm = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError, OverflowError) as exc:
            raise GuestMemoryError(f"mmap failed: {exc}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
    view = memoryview(mm)[region.mmap_offset : length]
    return GuestRegion(region, mm, view, -1, region.gpa, end)


def _unmap(r: GuestRegion) -> bool:
    """Unmap; False if memory is still exported and the unmap must wait."""
    if r.mm is None:
        os.close(r.fd)
        return True
    assert r.view is not None
    r.view.release()
    try:
        r.mm.close()
    except BufferError:
        return False
    return True


class GuestMemory:
    """The guest's RAM as a set of regions; see the module docstring."""

    def __init__(self) -> None:
        # (regions sorted by gpa, their start addresses): replaced as one object
        self._table: tuple[tuple[GuestRegion, ...], tuple[int, ...]] = ((), ())
        self._zombies: list[GuestRegion] = []
        #: True while some region is not mapped: requests then need a :class:`Bounce`.
        self.copied = False

    @property
    def regions(self) -> tuple[GuestRegion, ...]:
        return self._table[0]

    def _publish(self, regions: Sequence[GuestRegion]) -> None:
        ordered = tuple(sorted(regions, key=lambda m: m.gpa))
        self._table = (ordered, tuple(m.gpa for m in ordered))
        self.copied = any(m.view is None for m in ordered)

    def set_table(self, regions: Sequence[Region], fds: list[int]) -> None:
        """Replace every region (SET_MEM_TABLE); takes ownership of *fds*."""
        mapped = self._map_all(regions, fds)
        old = self.regions
        self._publish(mapped)
        self._retire(old)

    def add(self, region: Region, fd: int) -> None:
        """Add one region (ADD_MEM_REG); takes ownership of *fd*."""
        if len(self.regions) >= MAX_MEM_SLOTS:
            os.close(fd)
            raise GuestMemoryError(f"all {MAX_MEM_SLOTS} memory slots are used")
        try:
            check_no_overlap([*(m.region for m in self.regions), region], "ADD_MEM_REG")
        except ProtocolError as exc:
            os.close(fd)
            raise GuestMemoryError(str(exc)) from None
        self._publish([*self.regions, _map(region, fd)])

    def remove(self, region: Region) -> None:
        """Remove the region matching gpa, size and uaddr (REM_MEM_REG)."""
        for m in self.regions:
            r = m.region
            if (r.gpa, r.size, r.uaddr) == (region.gpa, region.size, region.uaddr):
                self._publish([x for x in self.regions if x is not m])
                self._retire((m,))
                return
        raise GuestMemoryError(f"no region at {region.gpa:#x} to remove")

    def _map_all(self, regions: Sequence[Region], fds: list[int]) -> list[GuestRegion]:
        mapped: list[GuestRegion] = []
        try:
            while fds:
                mapped.append(_map(regions[len(mapped)], fds.pop(0)))
        except BaseException:
            for fd in fds:
                os.close(fd)
            fds.clear()
            self._retire(mapped)
            raise
        return mapped

    def _retire(self, regions: Sequence[GuestRegion]) -> None:
        for m in regions:
            if not _unmap(m):
                self._zombies.append(m)

    def close(self) -> None:
        """Unmap everything.  Call only when no request holds guest memory."""
        old = self.regions
        self._publish(())
        self._retire(old)
        # A mapping still exported here is referenced by a leaked view; the
        # kernel unmaps it when the last view is garbage-collected.
        zombies, self._zombies = self._zombies, []
        for m in zombies:
            assert m.mm is not None  # only mappings become zombies
            try:
                m.mm.close()
            except BufferError:
                pass

    def _find(
        self, table: tuple[GuestRegion, ...], starts: tuple[int, ...], gpa: int
    ) -> GuestRegion:
        i = bisect.bisect_right(starts, gpa) - 1
        if i < 0 or gpa >= table[i].end:
            raise GuestMemoryError(f"guest address {gpa:#x} is not mapped")
        return table[i]

    def region_at(self, gpa: int) -> GuestRegion:
        """The region containing guest-physical address *gpa*."""
        table, starts = self._table
        return self._find(table, starts, gpa)

    def gpa(
        self, addr: int, length: int, bounce: Bounce | None = None, writable: bool = False
    ) -> list[memoryview]:
        """Chunks covering guest-physical ``[addr, addr+length)``.

        Chunks in regions that are not mapped are copies made by *bounce*
        (written back by it if *writable*); without one they are refused.
        """
        table, starts = self._table
        chunks: list[memoryview] = []
        while length > 0:
            m = self._find(table, starts, addr)
            off = addr - m.gpa
            n = min(length, m.region.size - off)
            if m.view is not None:
                chunks.append(m.view[off : off + n])
            elif bounce is None:
                raise GuestMemoryError(f"guest address {addr:#x} is not mapped in this process")
            else:
                chunks.append(bounce.copy(m.fd, m.region.mmap_offset + off, n, writable))
            addr += n
            length -= n
        return chunks

    def qva(self, addr: int, length: int) -> memoryview | FdSpan:
        """The front-end virtual range ``[addr, addr+length)``, in one region."""
        table = self._table[0]
        for m in table:
            r = m.region
            if r.uaddr <= addr and addr + length <= r.uaddr + r.size:
                off = addr - r.uaddr
                if m.view is None:
                    return FdSpan(m.fd, r.mmap_offset + off, length)
                return m.view[off : off + length]
        raise GuestMemoryError(f"front-end address {addr:#x}+{length:#x} is not mapped")
