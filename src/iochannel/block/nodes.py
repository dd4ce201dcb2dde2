"""Block nodes: what a node is, and the built-in drivers (file, host_device, raw, null).

A node serves byte ranges.  Its I/O methods are synchronous and thread-safe:
they run on the export's queue threads, and for ``file`` they are one
``os.preadv``/``os.pwritev`` straight into the caller's buffers (guest memory),
with the GIL released during the system call.

Nodes are opened by :func:`iochannel.block.drivers.open_node`, which reads
the options and picks the driver.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable
from time import monotonic
from typing import Any

from .options import BlockError, Options

__all__ = ["BlockNode", "FileNode", "NullNode", "RawNode", "open_file", "open_file_node"]

_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

#: Open-file-description locks (Linux): one per open, shared or exclusive.
_F_OFD_SETLK = 37
#: A write into the page cache takes at most this long plus its length at this rate
#: (memory copies run at several GB/s); a longer one waited for the disk.
_CACHED_WRITE_TIME = 0.005
_CACHED_WRITE_RATE = 1e9
#: Seconds writes go to a thread after a slow one (doubling up to the maximum).
_SLOW_WRITE_PAUSE = 1.0
_SLOW_WRITE_PAUSE_MAX = 64.0
#: :meth:`BlockNode.block_status` flags (NBD's base:allocation bits): not allocated …
STATUS_HOLE = 1
#: … and reads as zeros.
STATUS_ZERO = 2


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a range so it reads as zeros; False if the file system can't."""
    flags = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if _libc.fallocate(fd, flags, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENODEV):
        return False
    raise OSError(err, os.strerror(err))


class BlockNode:
    """A node of the graph; subclasses implement the I/O methods."""

    driver = ""

    def __init__(self, name: str, read_only: bool) -> None:
        self.name = name
        self.read_only = read_only
        #: Child nodes by role (``file``).
        self.children: dict[str, BlockNode] = {}

    @property
    def shares_resize(self) -> bool:
        """Whether others may resize this node's children (QEMU's shared RESIZE permission)."""
        return True

    def size(self) -> int:
        raise NotImplementedError

    def preadv(self, bufs: list[memoryview], offset: int) -> int:
        """Read into *bufs* at *offset*; the bytes read (0 only past the end)."""
        raise NotImplementedError

    def pwritev(self, bufs: list[memoryview], offset: int) -> int:
        """Write *bufs* at *offset*; the bytes written."""
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def discard(self, offset: int, length: int) -> None:
        """A hint that the range is unused; may keep the data."""

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        done = 0
        zeros = memoryview(bytes(min(length, 1 << 20)))
        while done < length:
            done += self.pwritev([zeros[: length - done]], offset + done)

    def truncate(self, size: int) -> None:
        """Make the node *size* bytes long (``block_resize``).

        Raises :class:`~iochannel.block.BlockError` if it can't.

        Runs on a thread of its own: a slow driver holds up only the command.
        """
        raise BlockError("Image format driver does not support resize")

    def zero_fast(self, offset: int, length: int, unmap: bool) -> bool:
        """Zero the range only if that is cheaper than writing zeros; whether it did."""
        return False

    def preadv_nowait(self, bufs: list[memoryview], offset: int) -> bool:
        """Fill *bufs* only if no waiting is needed (the data is cached); whether it did.

        An event loop calls it to skip a thread hop; False sends the read to
        :meth:`preadv` on a thread.
        """
        return False

    def pwritev_nowait(self, bufs: list[memoryview], offset: int) -> bool:
        """Write *bufs* only if that needs no waiting for the device; whether it wrote them all.

        The twin of :meth:`preadv_nowait`: False sends the write to
        :meth:`pwritev` on a thread (a partial write is then written again).
        """
        return False

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Allocation from *offset*: ``(length, flags)`` runs covering at most *length* bytes.

        Flags are :data:`~iochannel.block.STATUS_HOLE` and
        :data:`~iochannel.block.STATUS_ZERO`.  A driver that
        cannot tell reports data.
        """
        return [(length, 0)]

    def filename(self) -> str:
        """What query-named-block-nodes shows as the image's file name."""
        return ""

    def close(self) -> None:
        pass


class FileNode(BlockNode):
    """``file`` and ``host_device``: an open fd."""

    driver = "file"

    def __init__(self, name: str, read_only: bool, path: str, fd: int, no_flush: bool) -> None:
        super().__init__(name, read_only)
        self.path = path
        self.fd = fd
        self.no_flush = no_flush
        self._nowait = hasattr(os, "RWF_NOWAIT")
        self._direct = fd >= 0 and bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        #: When writes may be tried in the page cache again, and the pause after the next slow one.
        self._cached_writes_after = 0.0
        self._slow_write_pause = _SLOW_WRITE_PAUSE
        #: A range known to be data, [start, end): see block_status.
        self._data = (0, 0)

    def size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)  # also right for block devices

    def preadv(self, bufs: list[memoryview], offset: int) -> int:
        return os.preadv(self.fd, bufs, offset)

    def pwritev(self, bufs: list[memoryview], offset: int) -> int:
        return os.pwritev(self.fd, bufs, offset)

    def flush(self) -> None:
        if not self.no_flush:
            os.fdatasync(self.fd)

    def _punch(self, offset: int, length: int) -> bool:
        self._data = (0, 0)  # the range may be a hole now
        return _punch_hole(self.fd, offset, length)

    def discard(self, offset: int, length: int) -> None:
        self._punch(offset, length)

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        if not (unmap and self._punch(offset, length)):
            super().write_zeroes(offset, length, unmap)

    def truncate(self, size: int) -> None:
        mode = os.fstat(self.fd).st_mode
        if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
            # A device keeps its size; shrinking just leaves the end unused, as in QEMU.
            if size > self.size():
                raise BlockError("Cannot grow device files")
            return
        self._data = (0, 0)  # shrunk and grown again, the end is a hole
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise BlockError(f"Could not resize file: {exc.strerror}") from None

    def zero_fast(self, offset: int, length: int, unmap: bool) -> bool:
        return unmap and self._punch(offset, length)

    def preadv_nowait(self, bufs: list[memoryview], offset: int) -> bool:
        if not self._nowait:
            return False
        want = sum(len(b) for b in bufs)
        try:
            return os.preadv(self.fd, bufs, offset, os.RWF_NOWAIT) == want
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self._nowait = False  # not on this file system: the thread does every read
            return False

    def pwritev_nowait(self, bufs: list[memoryview], offset: int) -> bool:
        # Without O_DIRECT a write only copies into the page cache, unless the kernel
        # throttles the writer because dirty pages outran the disk (no file system
        # here says so in advance: ext4 and tmpfs refuse RWF_NOWAIT writes).  A write
        # that took that long sends the next ones to the thread for a pause, which
        # doubles while retries stay slow.
        if self._direct or monotonic() < self._cached_writes_after:
            return False
        want = sum(len(b) for b in bufs)
        start = monotonic()
        done = os.pwritev(self.fd, bufs, offset)
        took = monotonic() - start
        if took > _CACHED_WRITE_TIME + want / _CACHED_WRITE_RATE:
            self._cached_writes_after = start + took + self._slow_write_pause
            self._slow_write_pause = min(2 * self._slow_write_pause, _SLOW_WRITE_PAUSE_MAX)
        else:
            self._slow_write_pause = _SLOW_WRITE_PAUSE
        return done == want

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        # The holes the file system knows of (SEEK_DATA/SEEK_HOLE), a few runs per call.
        # The last data run found is kept, as QEMU keeps it: on tmpfs each SEEK_HOLE
        # walks the file's pages (sequential 256 KiB NBD reads of a 1 GiB file were
        # over 20 times slower).  Writes only turn holes into data, so it stays true until
        # this node punches a hole; a hole made by another process shows as data,
        # which reads right.
        end = offset + length
        runs: list[tuple[int, int]] = []
        pos = offset
        start, stop = self._data
        if start <= offset < stop:
            pos = min(end, stop)
            runs.append((pos - offset, 0))
        while pos < end and len(runs) < 64:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
                hole = end if data > pos else os.lseek(self.fd, pos, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # a hole up to the end of the file
                    data = end
                elif runs:
                    break
                else:  # no SEEK_DATA here (a device, an old file system): all data
                    return [(length, 0)]
            if data > pos:
                n = min(data, end) - pos
                runs.append((n, STATUS_HOLE | STATUS_ZERO))
            else:
                n = min(hole, end) - pos
                runs.append((n, 0))
                self._data = (pos, hole)
            pos += n
        return runs

    def filename(self) -> str:
        return self.path

    def close(self) -> None:
        if self.fd >= 0:  # a checked-only node has none
            os.close(self.fd)


class RawNode(BlockNode):
    """``raw``: the bytes of its ``file`` child, optionally a window of them."""

    driver = "raw"

    def __init__(
        self, name: str, read_only: bool, child: BlockNode, offset: int, size: int | None
    ) -> None:
        super().__init__(name, read_only)
        self.children["file"] = child
        self.child = child
        self.offset = offset
        self.window = size

    @property
    def shares_resize(self) -> bool:
        # A window into the child would no longer match it (QEMU's raw_child_perm).
        return self.offset == 0 and self.window is None

    def size(self) -> int:
        if self.window is not None:
            return self.window
        return max(0, self.child.size() - self.offset)

    def _clip(self, bufs: list[memoryview], offset: int) -> list[memoryview]:
        if self.window is None:
            return bufs
        room = max(0, self.window - offset)
        out: list[memoryview] = []
        for b in bufs:
            if room <= 0:
                break
            out.append(b[:room])
            room -= len(out[-1])
        return out

    def preadv(self, bufs: list[memoryview], offset: int) -> int:
        bufs = self._clip(bufs, offset)
        return self.child.preadv(bufs, self.offset + offset) if bufs else 0

    def pwritev(self, bufs: list[memoryview], offset: int) -> int:
        bufs = self._clip(bufs, offset)
        if not bufs:
            raise OSError(errno.ENOSPC, "write beyond the end of the node")
        return self.child.pwritev(bufs, self.offset + offset)

    def flush(self) -> None:
        self.child.flush()

    def discard(self, offset: int, length: int) -> None:
        self.child.discard(self.offset + offset, length)

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        self.child.write_zeroes(self.offset + offset, length, unmap)

    def truncate(self, size: int) -> None:
        if self.window is not None:
            raise BlockError("Cannot resize fixed-size raw disks")
        self.child.truncate(self.offset + size)

    def zero_fast(self, offset: int, length: int, unmap: bool) -> bool:
        return self.child.zero_fast(self.offset + offset, length, unmap)

    def _inside(self, bufs: list[memoryview], offset: int) -> list[memoryview] | None:
        """*bufs* if they end inside the window, else None (preadv/pwritev report that)."""
        clipped = self._clip(bufs, offset)
        return clipped if sum(map(len, clipped)) == sum(map(len, bufs)) else None

    def preadv_nowait(self, bufs: list[memoryview], offset: int) -> bool:
        inside = self._inside(bufs, offset)
        return inside is not None and self.child.preadv_nowait(inside, self.offset + offset)

    def pwritev_nowait(self, bufs: list[memoryview], offset: int) -> bool:
        inside = self._inside(bufs, offset)
        return inside is not None and self.child.pwritev_nowait(inside, self.offset + offset)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        if self.window is not None:
            length = max(0, min(length, self.window - offset))
        return self.child.block_status(self.offset + offset, length) if length else []

    def filename(self) -> str:
        return self.child.filename()


class NullNode(BlockNode):
    """``null-co``/``null-aio``: writes vanish, reads zero or leave the buffer as is."""

    driver = "null-co"

    def __init__(self, name: str, read_only: bool, size: int, read_zeroes: bool) -> None:
        super().__init__(name, read_only)
        self._size = size
        self.read_zeroes = read_zeroes

    def size(self) -> int:
        return self._size

    def preadv(self, bufs: list[memoryview], offset: int) -> int:
        n = 0
        for b in bufs:
            if self.read_zeroes:
                b[:] = bytes(len(b))
            n += len(b)
        return n

    def pwritev(self, bufs: list[memoryview], offset: int) -> int:
        return sum(len(b) for b in bufs)

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        pass

    def zero_fast(self, offset: int, length: int, unmap: bool) -> bool:
        return True

    def preadv_nowait(self, bufs: list[memoryview], offset: int) -> bool:
        self.preadv(bufs, offset)
        return True

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        return [(length, STATUS_HOLE | (STATUS_ZERO if self.read_zeroes else 0))]

    def filename(self) -> str:
        return f"{self.driver}://"


#: Looks a node up by name; raises :class:`BlockError` if there is none.
Lookup = Callable[[str], BlockNode]
#: Opens an inline child definition.
OpenChild = Callable[[dict[str, Any]], BlockNode]


def _lock(fd: int, path: str, shared: bool) -> None:
    kind = fcntl.F_RDLCK if shared else fcntl.F_WRLCK
    lock = struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0)
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, lock)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            what = "shared" if shared else "write"
            raise BlockError(
                f"Failed to get \"{what}\" lock on '{path}': another process uses the image"
            ) from None
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise


def _check_kind(path: str, mode: int, device: bool) -> None:
    if device and not (stat.S_ISBLK(mode) or stat.S_ISCHR(mode)):
        raise BlockError(
            f"'host_device' driver requires '{path}' to be either a character or block device"
        )
    if not device and stat.S_ISBLK(mode):
        raise BlockError(f"'{path}' is a block device: use driver 'host_device'")


def open_file_node(name: str, read_only: bool, opts: Options, device: bool, dry: bool) -> BlockNode:
    """A ``file`` or (*device*) ``host_device`` node; *dry* checks the options and the file only."""
    path = opts.string("filename")
    cache = opts.group("cache")
    direct = cache.boolean("direct", False)
    no_flush = cache.boolean("no-flush", False)
    cache.done()
    opts.choice("aio", "threads", ("threads", "native", "io_uring"))
    opts.integer("aio-max-batch", 0)
    locking = opts.choice("locking", "auto", ("auto", "on", "off"))
    opts.boolean("drop-cache", True)
    opts.done()
    driver = "host_device" if device else "file"
    if dry:
        # --check reports what start-up would: a missing image or the wrong kind of file.
        try:
            _check_kind(path, os.stat(path).st_mode, device)
        except OSError as exc:
            raise BlockError(f"Could not open '{path}': {exc.strerror}") from None
        node: BlockNode = FileNode(name, read_only, path, -1, no_flush)
        node.driver = driver
        return node
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    if direct:
        flags |= os.O_DIRECT
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise BlockError(f"Could not open '{path}': {exc.strerror}") from None
    try:
        _check_kind(path, os.fstat(fd).st_mode, device)
        if locking != "off":
            _lock(fd, path, shared=read_only)
        node = FileNode(name, read_only, path, fd, no_flush)
    except BaseException:
        os.close(fd)
        raise
    node.driver = driver
    return node


def open_file(path: str, *, read_only: bool = False) -> BlockNode:
    """A ``file`` node on *path* outside any graph (the caller closes it)."""
    return open_file_node(path, read_only, Options({"filename": path}, typed=True), False, False)
