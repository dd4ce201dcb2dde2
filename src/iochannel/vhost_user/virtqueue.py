"""Split virtqueues in guest memory.

Contract:

* A :class:`Virtqueue` is configured by the control thread (size, base, ring
  addresses, kick/call fds) while no worker uses it and no request is in
  flight, and is then driven by one worker thread through
  :meth:`Virtqueue.pop`.  :meth:`Virtqueue.push` and :meth:`Virtqueue.notify`
  may also be called from other threads (asynchronous completion).  Only the
  call fd may be swapped while the worker runs; that swap is locked.
* ``in_flight`` counts popped requests not yet pushed; :meth:`Virtqueue.drain`
  waits until it is 0, which the server does before it answers GET_VRING_BASE
  or unmaps guest memory.
* :meth:`Virtqueue.pop` validates everything the driver wrote before using it:
  how far ``avail.idx`` moved, head and ``next`` indexes, chain length (loops),
  zero-length buffers, a readable buffer after a writable one, indirect table
  size and nesting, and that every buffer lies in guest memory.  A violation
  raises :class:`VirtqueueError`; the queue is then unusable and the
  connection should be ended (the driver is buggy or hostile).
* Buffers are ``memoryview`` chunks of guest memory (zero-copy); a buffer that
  crosses a memory-region boundary becomes several chunks, and buffers that
  follow each other in guest memory may be merged into one chunk.  In regions
  that are not mapped (see :mod:`.memory`) buffers are copies, bounded per
  request, which :meth:`Virtqueue.push` writes back, and rings there are read
  into a copy at each :meth:`Virtqueue.pop`.  Guest memory that cannot be read
  or written raises :class:`VirtqueueError`, from ``push`` too, which still
  counts the request as completed.

Memory ordering: rings are read and written with single ``struct`` calls on
the shared mapping.  The used element is stored before ``used.idx``, and
``avail.idx`` is loaded before the ring entries it covers; x86-64 keeps both
orders (TSO) and CPython does not reorder across these calls.  Because there is
no store-load fence, EVENT_IDX and the NO_INTERRUPT hint are not used:
:meth:`notify` always signals, and spurious interrupts are harmless.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import threading
from dataclasses import dataclass, field

from ..errors import RemoteProtocolError
from .memory import Bounce, FdSpan, GuestMemory, GuestMemoryError
from .protocol import VringAddr

__all__ = ["MAX_QUEUE_SIZE", "DescriptorChain", "Virtqueue", "VirtqueueError"]

#: Largest ring accepted (VIRTQUEUE_MAX_SIZE).
MAX_QUEUE_SIZE = 1024

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4

#: Flag low bytes of an indirect table as Linux fills it: NEXT on all but the
#: last entry, readable entries before writable ones (other bits are ignored
#: by the walk as well).
_PLAIN_FLAGS = re.compile(rb"\x01*(?:\x00|\x03*\x02)")
#: ``next`` of the entries of such a table (1, 2, ...), low and high bytes.
_IN_ORDER_LO = bytes(i & 0xFF for i in range(1, MAX_QUEUE_SIZE + 1))
_IN_ORDER_HI = bytes(i >> 8 for i in range(1, MAX_QUEUE_SIZE + 1))


@functools.cache
def _table_fields(n: int) -> tuple[struct.Struct, struct.Struct]:
    """Structs reading only the addresses, and only the lengths, of *n* descriptors."""
    return struct.Struct("<" + "Q8x" * n), struct.Struct("<" + "8xI4x" * n)


class VirtqueueError(RemoteProtocolError):
    """The driver put something invalid in the ring, or its memory went away."""


def _view(ring: memoryview | FdSpan) -> memoryview:
    return ring if isinstance(ring, memoryview) else ring.read()


def _store(ring: memoryview | FdSpan, pos: int, data: bytes) -> None:
    if isinstance(ring, memoryview):
        ring[pos : pos + len(data)] = data
    else:
        ring.write(pos, data)


@dataclass(slots=True)
class DescriptorChain:
    """One request popped from the avail ring.

    ``readable`` are the driver-written buffers, ``writable`` those the device
    fills; ``writable_len`` is their total size.  ``bounce`` holds the copies
    of buffers in memory that is not mapped.
    """

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)
    writable_len: int = 0
    bounce: Bounce | None = None

    def release(self) -> None:
        """Drop the guest-memory views so the memory can be unmapped."""
        for v in self.readable:
            v.release()
        for v in self.writable:
            v.release()
        self.readable.clear()
        self.writable.clear()


class Virtqueue:
    """A split virtqueue; see the module docstring."""

    def __init__(self, index: int, memory: GuestMemory) -> None:
        self.index = index
        self.memory = memory
        self.num = MAX_QUEUE_SIZE
        self.last_avail = 0
        self.used_idx = 0
        self.addr: VringAddr | None = None
        self.kick_fd: int | None = None
        self.err_fd: int | None = None
        self._call_fd: int | None = None
        self._call_lock = threading.Lock()
        #: Set once a kick fd was received and until GET_VRING_BASE.
        self.started = False
        self.enabled = False
        self.indirect = False
        #: desc, avail and used as translated; any may be an :class:`FdSpan`.
        self._rings: tuple[memoryview | FdSpan, memoryview | FdSpan, memoryview | FdSpan] | None
        self._rings = None
        # The same rings when all three are mapped: the fast path.
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used: memoryview | None = None
        # Guards the used ring and the count of popped-but-not-pushed requests.
        self._idle = threading.Condition()
        self.in_flight = 0

    # ---- configuration (control thread, worker stopped) ----

    @property
    def ready(self) -> bool:
        """True when a worker should process this queue."""
        return self.started and self.enabled and self._rings is not None

    def set_addr(self, addr: VringAddr) -> None:
        """Set the ring addresses and load ``used_idx`` from ``used.idx``.

        ``used.idx`` is not 0 after a back-end restart; the front-end only
        restores the avail side with SET_VRING_BASE.
        """
        self.addr = addr
        self.map_rings()
        assert self._rings is not None
        try:
            self.used_idx = _U16.unpack_from(_view(self._rings[2]), 2)[0]
        except GuestMemoryError as exc:
            raise VirtqueueError(f"queue {self.index}: {exc}") from exc

    def map_rings(self) -> None:
        """(Re)translate the ring addresses, e.g. after the memory table changed."""
        self.unmap_rings()
        a = self.addr
        if a is None:
            return
        n = self.num
        qva = self.memory.qva
        try:
            rings = (qva(a.desc, 16 * n), qva(a.avail, 6 + 2 * n), qva(a.used, 6 + 8 * n))
        except GuestMemoryError as exc:
            raise VirtqueueError(f"queue {self.index}: {exc}") from exc
        self._rings = rings
        desc, avail, used = rings
        if (
            isinstance(desc, memoryview)
            and isinstance(avail, memoryview)
            and isinstance(used, memoryview)
        ):
            self._desc, self._avail, self._used = desc, avail, used

    def unmap_rings(self) -> None:
        for v in self._rings or ():
            if isinstance(v, memoryview):
                v.release()
        self._rings = None
        self._desc = self._avail = self._used = None

    def set_call_fd(self, fd: int | None) -> None:
        """Swap the call fd (allowed while the worker runs); closes the old one."""
        with self._call_lock:
            old, self._call_fd = self._call_fd, fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        """Release ring views and close every fd; the queue returns to its initial state."""
        self.unmap_rings()
        self.set_call_fd(None)
        for name in ("kick_fd", "err_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        self.started = False

    # ---- data path (worker thread) ----

    def pop(self) -> DescriptorChain | None:
        """Take the next available request, or None if the ring is empty."""
        avail, desc = self._avail, self._desc
        if avail is None or desc is None:
            if self._rings is None:
                return None
            try:
                # avail (with its idx) first: the descriptors it covers are
                # complete by the time the driver moved the idx.
                avail = _view(self._rings[1])
                desc = _view(self._rings[0])
            except GuestMemoryError as exc:
                raise VirtqueueError(f"queue {self.index}: {exc}") from exc
        avail_idx = _U16.unpack_from(avail, 2)[0]
        pending = (avail_idx - self.last_avail) & 0xFFFF
        if pending == 0:
            return None
        if pending > self.num:
            raise VirtqueueError(
                f"queue {self.index}: avail.idx moved from {self.last_avail} to {avail_idx}"
            )
        head = _U16.unpack_from(avail, 4 + 2 * (self.last_avail % self.num))[0]
        if head >= self.num:
            raise VirtqueueError(f"queue {self.index}: head {head} >= size {self.num}")
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        chain = DescriptorChain(head)
        try:
            self._walk(chain, desc)
        except (VirtqueueError, GuestMemoryError) as exc:
            chain.release()
            raise VirtqueueError(f"queue {self.index}, head {head}: {exc}") from exc
        with self._idle:
            self.in_flight += 1
        return chain

    def _walk(self, chain: DescriptorChain, desc: memoryview) -> None:
        # This loop runs once per guest page of every request (a 1 MiB read is
        # ~256 descriptors), so hot names are locals, the region of the
        # previous buffer is cached, indirect tables are unpacked in one call,
        # and a buffer that continues the previous one in guest memory extends
        # its view instead of adding one (fewer iovecs for preadv/pwritev).
        memory = self.memory
        readable, writable = chain.readable, chain.writable
        bounce = chain.bounce = Bounce() if memory.copied else None
        lo = hi = 0
        view: memoryview | None = None
        run_start = run_end = -1
        run_out: list[memoryview] | None = None
        entries: list[tuple[int, int, int, int]] | None = None
        size = self.num
        i = chain.head
        seen = 0
        while True:
            if entries is None:
                addr, length, flags, nxt = _DESC.unpack_from(desc, 16 * i)
            else:
                addr, length, flags, nxt = entries[i]
            if flags & DESC_F_INDIRECT:
                if entries is not None:
                    raise VirtqueueError("nested indirect descriptor")
                if not self.indirect:
                    raise VirtqueueError("indirect descriptor without INDIRECT_DESC")
                if flags & DESC_F_NEXT:
                    raise VirtqueueError("indirect descriptor with NEXT")
                if length == 0 or length % 16 or length > 16 * MAX_QUEUE_SIZE:
                    raise VirtqueueError(f"indirect table length {length}")
                # Copied so that a table straddling two regions reads correctly.
                table = b"".join(memory.gpa(addr, length, bounce))
                if not (readable or writable) and self._plain_table(chain, table):
                    return
                entries = list(_DESC.iter_unpack(table))
                size = len(entries)
                i = 0
                seen = 0
                continue
            if length == 0:
                raise VirtqueueError(f"descriptor {i} has length 0")
            seen += 1
            if seen > size:
                raise VirtqueueError("descriptor chain loops")
            if flags & DESC_F_WRITE:
                out = writable
                chain.writable_len += length
            elif writable:
                raise VirtqueueError(f"readable descriptor {i} after a writable one")
            else:
                out = readable
            end = addr + length
            if lo <= addr and end <= hi:
                assert view is not None
                if addr == run_end and out is run_out:
                    out[-1] = view[run_start - lo : end - lo]
                else:
                    out.append(view[addr - lo : end - lo])
                    run_start = addr
            else:
                out += memory.gpa(addr, length, bounce, out is writable)
                m = memory.region_at(end - 1)
                view = m.view
                # Copies are not contiguous: an empty window never extends one.
                lo, hi = (m.gpa, m.end) if view is not None else (0, 0)
                run_start = max(addr, lo)
            run_end, run_out = end, out
            if not flags & DESC_F_NEXT:
                return
            if nxt >= size:
                raise VirtqueueError(f"next {nxt} >= table size {size}")
            i = nxt

    def _plain_table(self, chain: DescriptorChain, table: bytes) -> bool:
        """Fill *chain* from the indirect *table* with C-level calls only.

        Taken only if every entry is valid as :meth:`_walk` checks it: chained
        in order, none empty, readable ones first, all inside one mapped
        region.  Anything else returns False and is walked (and diagnosed) one
        entry at a time.  Buffers are not merged: Linux already merges
        contiguous pages into one descriptor.  Cuts about a third off popping a
        large request.
        """
        n = len(table) // 16
        flags = table[12::16]
        if (
            not _PLAIN_FLAGS.fullmatch(flags)
            or table[14:-16:16] != _IN_ORDER_LO[: n - 1]
            or table[15:-16:16] != _IN_ORDER_HI[: n - 1]
        ):
            return False
        addr_struct, len_struct = _table_fields(n)
        addrs, lens = addr_struct.unpack(table), len_struct.unpack(table)
        try:
            m = self.memory.region_at(addrs[0])
        except GuestMemoryError:
            return False
        view, lo = m.view, m.gpa
        # max + max over-estimates the last end: a table near the region's end
        # takes the exact walk.
        if view is None or 0 in lens or min(addrs) < lo or max(addrs) + max(lens) > m.end:
            return False
        views = [view[a - lo : a - lo + k] for a, k in zip(addrs, lens, strict=True)]
        first_w = n - len(flags.lstrip(b"\x01")) if flags[-1] else n
        chain.readable += views[:first_w]
        chain.writable += views[first_w:]
        chain.writable_len = sum(lens[first_w:])
        return True

    def push(self, chain: DescriptorChain, written: int) -> None:
        """Return *chain* to the driver with *written* bytes filled in.

        May be called from any thread (a device can complete requests
        asynchronously); pushes to one queue are serialised.
        """
        failed: GuestMemoryError | None = None
        try:
            if chain.bounce is not None:
                chain.bounce.flush()
        except GuestMemoryError as exc:
            failed = exc
        chain.release()
        with self._idle:
            try:
                # A request whose data did not reach the guest is not returned:
                # the connection ends anyway.
                used = self._used
                if failed is None and used is not None:
                    slot = 4 + 8 * (self.used_idx % self.num)
                    _USED_ELEM.pack_into(used, slot, chain.head, written)
                    self.used_idx = (self.used_idx + 1) & 0xFFFF
                    _U16.pack_into(used, 2, self.used_idx)
                elif failed is None and self._rings is not None:
                    self._push_copied(self._rings[2], chain.head, written)
            except GuestMemoryError as exc:
                failed = exc
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self._idle.notify_all()
        if failed is not None:
            raise VirtqueueError(f"queue {self.index}: {failed}") from failed

    def _push_copied(self, used: memoryview | FdSpan, head: int, written: int) -> None:
        slot = 4 + 8 * (self.used_idx % self.num)
        _store(used, slot, _USED_ELEM.pack(head, written))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        _store(used, 2, _U16.pack(self.used_idx))

    def drain(self) -> None:
        """Wait until every popped request has been pushed."""
        with self._idle:
            while self.in_flight:
                self._idle.wait()

    def notify(self) -> None:
        """Signal the call fd (always; see the module docstring)."""
        with self._call_lock:
            if self._call_fd is not None:
                os.eventfd_write(self._call_fd, 1)
