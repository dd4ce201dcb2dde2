"""Block nodes and their drivers.

A node serves byte ranges.  Its I/O methods are synchronous and thread-safe:
they run on the export's queue threads, and for ``file`` they are one
``os.preadv``/``os.pwritev`` straight into the caller's buffers (guest memory),
with the GIL released during the system call.

Drivers (options as qemu-storage-daemon's, read by :func:`open_node`):

* ``file`` — a regular file: ``filename``, ``cache.direct`` (``O_DIRECT``),
  ``cache.no-flush``, ``aio`` (``threads``; ``native``/``io_uring`` are
  accepted and served the same way), ``aio-max-batch``, ``locking``
  (``auto``/``on``: an OFD lock, shared for read-only nodes, so a second
  writer fails to open; ``off``), ``drop-cache``;
* ``host_device`` — the same for a block or character device only;
* ``raw`` — ``file`` (a node name or an inline node), an optional window
  ``offset``/``size``;
* ``null-co``/``null-aio`` — ``size`` (1 GiB), ``read-zeroes`` (off: reads
  leave the buffer untouched), ``latency-ns`` (accepted);
* ``python`` — a driver written in Python (:mod:`.python`);
* every driver: ``node-name``, ``read-only``, ``auto-read-only``,
  ``force-share``, ``discard``, ``detect-zeroes``.

Image formats (``qcow2``, ``vmdk`` …) are refused: QEMU owns them.
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
from typing import Any

from .options import BlockError, Options

__all__ = ["BlockNode", "FileNode", "NullNode", "RawNode", "open_file", "open_node"]

_FALLOC_FL_KEEP_SIZE = 1
_FALLOC_FL_PUNCH_HOLE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

#: Formats QEMU's block layer implements and this one does not.
QEMU_FORMATS = frozenset(
    ("qcow2", "qcow", "qed", "vmdk", "vdi", "vhdx", "vpc", "parallels", "luks", "cloop", "dmg")
)
#: Open-file-description locks (Linux): one per open, shared or exclusive.
_F_OFD_SETLK = 37


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

    def size(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_END)  # also right for block devices

    def preadv(self, bufs: list[memoryview], offset: int) -> int:
        return os.preadv(self.fd, bufs, offset)

    def pwritev(self, bufs: list[memoryview], offset: int) -> int:
        return os.pwritev(self.fd, bufs, offset)

    def flush(self) -> None:
        if not self.no_flush:
            os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        _punch_hole(self.fd, offset, length)

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        if not (unmap and _punch_hole(self.fd, offset, length)):
            super().write_zeroes(offset, length, unmap)

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


def _open_file(name: str, read_only: bool, opts: Options, device: bool, dry: bool) -> BlockNode:
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
        mode = os.fstat(fd).st_mode
        if device and not (stat.S_ISBLK(mode) or stat.S_ISCHR(mode)):
            raise BlockError(
                f"'host_device' driver requires '{path}' to be either a character or block device"
            )
        if not device and stat.S_ISBLK(mode):
            raise BlockError(f"'{path}' is a block device: use driver 'host_device'")
        if locking != "off":
            _lock(fd, path, shared=read_only)
        node = FileNode(name, read_only, path, fd, no_flush)
    except BaseException:
        os.close(fd)
        raise
    node.driver = driver
    return node


def open_node(
    name: str, opts: Options, lookup: Lookup, open_child: OpenChild, *, dry: bool = False
) -> BlockNode:
    """Open the node *opts* describes (``driver`` and its options; see the module docstring).

    With *dry*, only the options are checked: nothing is opened.
    """
    driver = opts.string("driver")
    read_only = opts.boolean("read-only", False)
    opts.boolean("auto-read-only", False)
    opts.boolean("force-share", False)
    opts.choice("discard", "ignore", ("ignore", "off", "unmap", "on"))
    opts.choice("detect-zeroes", "off", ("off", "on", "unmap"))
    if driver in ("file", "host_device"):
        return _open_file(name, read_only, opts, driver == "host_device", dry)
    if driver == "raw":
        ref = opts.child("file")
        offset = opts.integer("offset", 0)
        window = opts.integer("size", -1) if opts.has("size") else None
        opts.done()
        child = open_child(ref) if isinstance(ref, dict) else lookup(ref)
        if child.read_only and not read_only:
            raise BlockError(f"Node '{child.name}' is read-only: add read-only=on")
        if not dry and window is not None and offset + window > child.size():
            raise BlockError(
                f"The sum of offset ({offset}) and size ({window}) has to be smaller or equal "
                f"to the  actual size of the containing file ({child.size()})"
            )
        if not dry and window is None and offset > child.size():
            raise BlockError(f"Offset ({offset}) is beyond the end of the file ({child.size()})")
        return RawNode(name, read_only, child, offset, window)
    if driver in ("null-co", "null-aio"):
        size = opts.integer("size", 1 << 30)
        read_zeroes = opts.boolean("read-zeroes", False)
        opts.integer("latency-ns", 0)
        opts.done()
        node = NullNode(name, read_only, size, read_zeroes)
        node.driver = driver
        return node
    if driver == "python":
        from .python import open_python  # the driver imports this module

        return open_python(name, read_only, opts, lookup, open_child, dry)
    if driver in QEMU_FORMATS:
        raise BlockError(
            f"Driver '{driver}' is not supported: image formats are QEMU's; serve this image "
            "with qemu-storage-daemon (or convert it to raw with qemu-img convert -O raw)"
        )
    raise BlockError(f"Parameter 'driver' does not accept value '{driver}'")


def open_file(path: str, *, read_only: bool = False) -> BlockNode:
    """A ``file`` node on *path* outside any graph (the caller closes it)."""
    opts = Options({"driver": "file", "filename": path, "read-only": read_only}, typed=True)
    return open_node(path, opts, _no_lookup, _no_lookup)


def _no_lookup(ref: Any) -> BlockNode:
    raise BlockError("a file node has no children")
