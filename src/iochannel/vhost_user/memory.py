"""Guest memory shared by the front-end.

Contract:

* :class:`GuestMemory` maps the fds of SET_MEM_TABLE / ADD_MEM_REG with
  ``mmap`` (``MAP_SHARED``) and closes each fd once mapped.
* :meth:`GuestMemory.gpa` translates a guest-physical range into a list of
  ``memoryview`` chunks, split where the range crosses from one region into
  the next; :meth:`GuestMemory.qva` translates a front-end virtual range (ring
  addresses of SET_VRING_ADDR), which must lie in one region.  Both raise
  :class:`MemoryError_` when any byte of the range is unmapped, so callers never
  touch memory outside what the front-end shared.
* The region table is an immutable tuple replaced as a whole, so I/O threads
  that translate concurrently with ADD/REM_MEM_REG see either the old or the new
  table, never a torn one.  A removed mapping whose memory is still exported
  (a memoryview held by an in-flight request) is unmapped at :meth:`close`.
"""

from __future__ import annotations

import bisect
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .protocol import ProtocolError, Region, check_no_overlap

__all__ = ["GuestMemory", "GuestMemoryError", "MappedRegion"]

#: Maximum number of regions (ADD_MEM_REG slots) offered to the front-end.
MAX_MEM_SLOTS = 32


class GuestMemoryError(Exception):
    """A guest address does not translate to shared memory."""


@dataclass(frozen=True, slots=True)
class MappedRegion:
    """A mapped region: ``view`` covers guest-physical ``[gpa, end)``."""

    region: Region
    mm: mmap.mmap
    view: memoryview
    gpa: int
    end: int


def _map(region: Region, fd: int) -> MappedRegion:
    """Map *region* from *fd* and close *fd*.

    The whole prefix up to ``mmap_offset + size`` is mapped from offset 0, as
    hugetlbfs needs huge-page-aligned offsets and ``mmap_offset`` need not be.
    """
    try:
        length = region.mmap_offset + region.size
        try:
            file_size = os.fstat(fd).st_size
        except OSError as exc:
            raise GuestMemoryError(f"memory fd cannot be used: {exc}") from exc
        if length > file_size:
            raise GuestMemoryError(
                f"mmap_offset + memory_size = {length:#x}, but the fd has {file_size:#x} bytes"
            )
        try:
            mm = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError, OverflowError) as exc:
            raise GuestMemoryError(f"mmap failed: {exc}") from exc
    finally:
        os.close(fd)
    view = memoryview(mm)[region.mmap_offset : length]
    return MappedRegion(region, mm, view, region.gpa, region.gpa + region.size)


def _unmap(mapped: MappedRegion) -> bool:
    """Unmap; False if memory is still exported and the unmap must wait."""
    mapped.view.release()
    try:
        mapped.mm.close()
    except BufferError:
        return False
    return True


class GuestMemory:
    """The guest's RAM as a set of regions; see the module docstring."""

    def __init__(self) -> None:
        # (regions sorted by gpa, their start addresses): replaced as one object
        self._table: tuple[tuple[MappedRegion, ...], tuple[int, ...]] = ((), ())
        self._zombies: list[MappedRegion] = []

    @property
    def regions(self) -> tuple[MappedRegion, ...]:
        return self._table[0]

    def _publish(self, regions: Sequence[MappedRegion]) -> None:
        ordered = tuple(sorted(regions, key=lambda m: m.gpa))
        self._table = (ordered, tuple(m.gpa for m in ordered))

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

    def _map_all(self, regions: Sequence[Region], fds: list[int]) -> list[MappedRegion]:
        mapped: list[MappedRegion] = []
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

    def _retire(self, regions: Sequence[MappedRegion]) -> None:
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
            try:
                m.mm.close()
            except BufferError:
                pass

    def _find(
        self, table: tuple[MappedRegion, ...], starts: tuple[int, ...], gpa: int
    ) -> MappedRegion:
        i = bisect.bisect_right(starts, gpa) - 1
        if i < 0 or gpa >= table[i].end:
            raise GuestMemoryError(f"guest address {gpa:#x} is not mapped")
        return table[i]

    def region_at(self, gpa: int) -> MappedRegion:
        """The region containing guest-physical address *gpa*."""
        table, starts = self._table
        return self._find(table, starts, gpa)

    def gpa(self, addr: int, length: int) -> list[memoryview]:
        """Chunks covering guest-physical ``[addr, addr+length)``."""
        table, starts = self._table
        chunks: list[memoryview] = []
        while length > 0:
            m = self._find(table, starts, addr)
            off = addr - m.gpa
            n = min(length, m.region.size - off)
            chunks.append(m.view[off : off + n])
            addr += n
            length -= n
        return chunks

    def qva(self, addr: int, length: int) -> memoryview:
        """The front-end virtual range ``[addr, addr+length)``, in one region."""
        table = self._table[0]
        for m in table:
            r = m.region
            if r.uaddr <= addr and addr + length <= r.uaddr + r.size:
                off = addr - r.uaddr
                return m.view[off : off + length]
        raise GuestMemoryError(f"front-end address {addr:#x}+{length:#x} is not mapped")
