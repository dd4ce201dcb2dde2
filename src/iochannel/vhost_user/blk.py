"""vhost-user-blk: a virtio block device backed by a block node.

Contract:

* :class:`BlkDevice` serves IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES
  requests on a :class:`~iochannel.block.BlockNode`, handing it guest memory
  as ``memoryview`` chunks (for a ``file`` node, ``os.preadv``/``os.pwritev``
  straight between the file and guest memory, no copy).  Each queue
  has its own worker thread; the GIL is released during the system calls.
* Every request is completed with a status byte, which goes to the last byte
  of the last device-writable buffer: OK, IOERR (bad range, write to a
  read-only export, short or malformed request, I/O error) or UNSUPP (unknown
  type, unsupported discard/write-zeroes form).  A request with no writable
  byte at all cannot carry a status; it is returned with length 0.
* The config space follows ``struct virtio_blk_config``; SET_CONFIG may only
  change the write-cache mode (``wce``).  The capacity is the node's size
  when the device was made or last :meth:`BlkDevice.refresh_capacity`;
  requests are checked against it.  A resize runs inside
  :meth:`BlkDevice.quiesced`, so no request straddles it.  With ``wce = 0`` (write-through)
  every write is followed by a flush of the node.
* The node belongs to its graph: the device never closes it.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
from collections.abc import Iterator

from ..block.nodes import BlockNode
from .device import DeviceError, VhostUserBackend
from .protocol import ProtocolFeature
from .virtqueue import DescriptorChain, Virtqueue

__all__ = ["BlkDevice"]

log = logging.getLogger(__name__)

SECTOR = 512

# Virtio-blk feature bits.
F_RO = 1 << 5
F_SEG_MAX = 1 << 2
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
F_TOPOLOGY = 1 << 10
F_CONFIG_WCE = 1 << 11
F_MQ = 1 << 12
F_DISCARD = 1 << 13
F_WRITE_ZEROES = 1 << 14

# Request types and status values.
T_IN = 0
T_OUT = 1
T_FLUSH = 4
T_GET_ID = 8
T_DISCARD = 11
T_WRITE_ZEROES = 13
T_BARRIER = 0x8000_0000
S_OK = 0
S_IOERR = 1
S_UNSUPP = 2

ID_BYTES = 20
DWZ_UNMAP = 1
#: Largest DISCARD / WRITE_ZEROES request, in sectors (as qemu-storage-daemon).
MAX_DWZ_SECTORS = 32768
#: Data segments per request: a 128-entry ring minus header and status.
SEG_MAX = 126
#: Largest data transfer accepted in one request.
MAX_TRANSFER = 1 << 30

_OUTHDR = struct.Struct("<IIQ")
_DWZ = struct.Struct("<QII")
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")
assert _CONFIG.size == 60


def _take(chunks: list[memoryview], n: int) -> tuple[bytes, list[memoryview]]:
    """Split the first *n* bytes (copied) from *chunks*; return them and the rest."""
    head = bytearray()
    rest: list[memoryview] = []
    for i, c in enumerate(chunks):
        need = n - len(head)
        if need <= 0:
            rest.extend(chunks[i:])
            break
        head += c[:need]
        if len(c) > need:
            rest.append(c[need:])
    return bytes(head), rest


def _split_status(chunks: list[memoryview]) -> tuple[list[memoryview], memoryview]:
    """Split the last byte of the writable buffers off as the status byte."""
    last = chunks[-1]
    data = chunks[:-1]
    if len(last) > 1:
        data.append(last[:-1])
    return data, last[-1:]


def _total(chunks: list[memoryview]) -> int:
    return sum(len(c) for c in chunks)


class BlkDevice(VhostUserBackend):
    """A vhost-user-blk device; see the module docstring."""

    def __init__(
        self,
        node: BlockNode,
        *,
        writable: bool,
        num_queues: int = 1,
        logical_block_size: int = SECTOR,
        serial: str = "vhost_user_blk",
    ) -> None:
        if num_queues < 1 or num_queues > 1024:
            raise ValueError(f"num-queues must be in 1..1024, not {num_queues}")
        lbs = logical_block_size
        if lbs < SECTOR or lbs > 1 << 21 or lbs & (lbs - 1):
            raise ValueError(f"logical-block-size must be a power of two ≥ 512, not {lbs}")
        self.node = node
        self.sectors = node.size() // SECTOR
        self.writable = writable
        self.num_queues = num_queues
        self.block_size = lbs
        self.serial = serial.encode()[:ID_BYTES]
        self.wce = True
        self._wce_lock = threading.Lock()
        # Requests in progress, and holds on new ones (:meth:`quiesced`).
        self._gate = threading.Condition()
        self._active = 0
        self._quiesced = 0

    # ---- negotiation ----

    def features(self) -> int:
        f = F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY | F_CONFIG_WCE | F_MQ
        if self.writable:
            f |= F_DISCARD | F_WRITE_ZEROES
        else:
            f |= F_RO
        return f

    def protocol_features(self) -> ProtocolFeature:
        # SLAVE_REQ: the channel that tells the front-end of a new capacity.
        return ProtocolFeature.CONFIG | ProtocolFeature.SLAVE_REQ

    def refresh_capacity(self) -> bool:
        """Take the node's current size as the capacity; True if it changed."""
        sectors = self.node.size() // SECTOR
        changed, self.sectors = sectors != self.sectors, sectors
        return changed

    def config(self) -> bytes:
        """The whole ``virtio_blk_config``."""
        return _CONFIG.pack(
            self.sectors,
            0,  # size_max (feature not offered)
            SEG_MAX,
            0, 0, 0,  # geometry (feature not offered)
            self.block_size,
            0, 0,  # physical_block_exp, alignment_offset
            1, 1,  # min_io_size, opt_io_size (in blocks)
            int(self.wce),
            0,
            self.num_queues,
            MAX_DWZ_SECTORS,
            1,  # max_discard_seg
            self.block_size // SECTOR,
            MAX_DWZ_SECTORS,
            1,  # max_write_zeroes_seg
            1,  # write_zeroes_may_unmap
        )  # fmt: skip

    def get_config(self, offset: int, size: int) -> bytes:
        cfg = self.config()
        if offset + size > len(cfg):
            raise DeviceError(f"config range {offset}+{size} beyond {len(cfg)} bytes")
        return cfg[offset : offset + size]

    def set_config(self, offset: int, data: bytes, flags: int) -> None:
        if offset != 32 or len(data) != 1 or flags != 0:
            raise DeviceError(f"only wce is writable (offset {offset}, size {len(data)})")
        with self._wce_lock:
            self.wce = bool(data[0])

    def queues_per_thread(self) -> list[int]:
        return [1 << i for i in range(self.num_queues)]

    # ---- requests ----

    def handle_queue(self, vq: Virtqueue, thread_id: int) -> None:
        done = False
        while (chain := vq.pop()) is not None:
            try:
                written = self.process(chain)
            except BaseException:
                vq.push(chain, 0)  # never leave a request in flight
                raise
            vq.push(chain, written)
            done = True
        if done:
            vq.notify()

    def process(self, chain: DescriptorChain) -> int:
        """Carry out one request; return the bytes written to its buffers."""
        if not chain.writable:
            log.warning("virtio-blk request %d has no status byte", chain.head)
            return 0
        data_in, status = _split_status(chain.writable)
        header, data_out = _take(chain.readable, _OUTHDR.size)
        if len(header) < _OUTHDR.size:
            status[0] = S_IOERR
            return 1
        rtype, _, sector = _OUTHDR.unpack(header)
        with self._gate:
            while self._quiesced:
                self._gate.wait()
            self._active += 1
        try:
            result, n = self._dispatch(rtype & ~T_BARRIER, sector, data_out, data_in)
        except OSError as exc:
            log.warning("virtio-blk I/O error: %s", exc)
            result, n = S_IOERR, 0
        finally:
            with self._gate:
                self._active -= 1
                if not self._active:
                    self._gate.notify_all()
        status[0] = result
        return n + 1

    @contextlib.contextmanager
    def quiesced(self) -> Iterator[None]:
        """Hold new requests and wait for those in progress (a resize runs meanwhile).

        Otherwise a write checked against the old capacity could land past the
        new end, and extend the image again, after a shrink.
        """
        with self._gate:
            self._quiesced += 1
            while self._active:
                self._gate.wait()
        try:
            yield
        finally:
            with self._gate:
                self._quiesced -= 1
                self._gate.notify_all()

    def _range_ok(self, sector: int, size: int) -> bool:
        nb = size // SECTOR
        return (
            size % SECTOR == 0
            and size <= MAX_TRANSFER
            and (sector * SECTOR) % self.block_size == 0
            and sector <= self.sectors
            and nb <= self.sectors - sector
        )

    def _dispatch(
        self, rtype: int, sector: int, data_out: list[memoryview], data_in: list[memoryview]
    ) -> tuple[int, int]:
        """Return (status, bytes written into data_in)."""
        if rtype == T_IN:
            size = _total(data_in)
            if not self._range_ok(sector, size):
                return S_IOERR, 0
            return S_OK, self._read(data_in, sector * SECTOR, size)
        if rtype == T_OUT:
            size = _total(data_out)
            if not self.writable or not self._range_ok(sector, size):
                return S_IOERR, 0
            self._write(data_out, sector * SECTOR, size)
            return S_OK, 0
        if rtype == T_FLUSH:
            if self.writable:
                self.node.flush()
            return S_OK, 0
        if rtype == T_GET_ID:
            n = min(_total(data_in), ID_BYTES)
            ident = self.serial.ljust(ID_BYTES, b"\0")
            pos = 0
            for c in data_in:
                k = min(len(c), n - pos)
                c[:k] = ident[pos : pos + k]
                pos += k
            return S_OK, n
        if rtype in (T_DISCARD, T_WRITE_ZEROES):
            if not self.writable:
                return S_IOERR, 0
            return self._discard_write_zeroes(rtype, data_out), 0
        return S_UNSUPP, 0

    def _read(self, bufs: list[memoryview], offset: int, size: int) -> int:
        done = 0
        while done < size:
            n = self.node.preadv(bufs, offset + done)
            if n == 0:  # image shrank under us: the rest reads as zeros
                for b in bufs:
                    b[:] = bytes(len(b))
                return size
            done += n
            bufs = _take(bufs, n)[1] if done < size else []
        return size

    def _write(self, bufs: list[memoryview], offset: int, size: int) -> None:
        done = 0
        while done < size:
            n = self.node.pwritev(bufs, offset + done)
            done += n
            bufs = _take(bufs, n)[1] if done < size else []
        with self._wce_lock:
            write_through = not self.wce
        if write_through:
            self.node.flush()

    def _discard_write_zeroes(self, rtype: int, data_out: list[memoryview]) -> int:
        if _total(data_out) != _DWZ.size:
            return S_UNSUPP  # exactly one segment is supported
        sector, num, flags = _DWZ.unpack(_take(data_out, _DWZ.size)[0])
        unmap = bool(flags & DWZ_UNMAP)
        if flags & ~DWZ_UNMAP or (rtype == T_DISCARD and unmap):
            return S_UNSUPP
        if num > MAX_DWZ_SECTORS or not self._range_ok(sector, num * SECTOR):
            return S_IOERR
        offset, length = sector * SECTOR, num * SECTOR
        if rtype == T_DISCARD:
            self.node.discard(offset, length)
        else:
            self.node.write_zeroes(offset, length, unmap)
        return S_OK
