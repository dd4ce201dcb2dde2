"""Block drivers written in Python: ``--blockdev driver=python,module=M,class=C,...``.

A driver is a class; the node imports ``module``, builds ``class(**options)``
with the remaining options (strings from the command line, JSON values from
QMP) and calls its coroutines:

* ``async size() -> int`` — the size in bytes (asked once, at open, and
  never again: after ``resize`` the node takes the new size as given);
* ``async read(offset, length) -> bytes`` — exactly *length* bytes;
* ``async write(offset, data) -> None``;
* optional: ``async flush()``, ``async discard(offset, length)``,
  ``async write_zeroes(offset, length)`` (default: a write of zeros),
  ``async resize(size)`` (``block_resize``; without it the command is
  refused), ``async close()`` (at ``blockdev-del`` and exit).

With ``file=NODE`` (a node name or inline node) the driver is a filter: it
gets the other node as ``file=``, a :class:`Child` with the same coroutines.

Every coroutine runs on the node's own thread and event loop
(``python-driver-NAME``), so a driver may await freely but must not block
that loop.  A request fails alone, and the guest sees an I/O error (the
virtio-blk status IOERR) with a log line, when the coroutine raises, returns
short or long data, or takes longer than ``timeout`` seconds (default 30;
it is then cancelled).  The export keeps serving.  A failed ``resize`` fails
its ``block_resize`` command, naming the reason, and the size stays.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import importlib
import logging
from collections.abc import Coroutine
from typing import Any

from .iothread import IOThread
from .nodes import BlockNode, Lookup, OpenChild
from .options import BlockError, Options

__all__ = ["Child", "PythonNode", "open_python"]

log = logging.getLogger(__name__)


class Child:
    """Another node, seen from a filter driver with the driver coroutines."""

    def __init__(self, node: BlockNode) -> None:
        self.node = node

    async def size(self) -> int:
        return self.node.size()

    async def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        n = await asyncio.to_thread(self.node.preadv, [memoryview(buf)], offset)
        return bytes(buf[:n])

    async def write(self, offset: int, data: bytes) -> None:
        await asyncio.to_thread(self.node.pwritev, [memoryview(data)], offset)

    async def flush(self) -> None:
        await asyncio.to_thread(self.node.flush)


class PythonNode(BlockNode):
    """A node whose I/O is a Python driver's coroutines; see the module docstring."""

    driver = "python"

    def __init__(self, name: str, read_only: bool, impl: Any, timeout: float) -> None:
        super().__init__(name, read_only)
        self.impl = impl
        self.timeout = timeout
        self.thread = IOThread(f"python-driver-{name}")
        try:
            self._size = int(self._run(impl.size()))
        except BaseException:
            self.thread.stop()
            raise

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run *coro* on the node's loop; failures become ``OSError(EIO)`` saying why."""
        future = asyncio.run_coroutine_threadsafe(coro, self.thread.loop)
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            reason = f"timed out after {self.timeout} s"
            log.warning("%s: driver request %s", self.name, reason)
        except OSError as exc:
            reason = str(exc)
            log.warning("%s: driver error: %s", self.name, exc)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("%s: driver failed", self.name)
        raise OSError(errno.EIO, f"python driver of node '{self.name}' failed: {reason}")

    def size(self) -> int:
        return self._size

    def preadv(self, bufs: list[memoryview], offset: int) -> int:
        length = sum(len(b) for b in bufs)
        length = max(0, min(length, self._size - offset))
        if length == 0:
            return 0
        data = self._run(self.impl.read(offset, length))
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) != length:
            got = len(data) if isinstance(data, (bytes, bytearray, memoryview)) else type(data)
            log.warning("%s: read returned %s, not %d bytes", self.name, got, length)
            raise OSError(errno.EIO, "python driver returned wrong data")
        pos = 0
        for b in bufs:
            k = min(len(b), length - pos)
            b[:k] = data[pos : pos + k]
            pos += k
        return length

    def pwritev(self, bufs: list[memoryview], offset: int) -> int:
        data = b"".join(bufs)
        if offset + len(data) > self._size:
            raise OSError(errno.ENOSPC, "write beyond the end of the node")
        self._run(self.impl.write(offset, data))
        return len(data)

    def flush(self) -> None:
        if hasattr(self.impl, "flush"):
            self._run(self.impl.flush())

    def discard(self, offset: int, length: int) -> None:
        if hasattr(self.impl, "discard"):
            self._run(self.impl.discard(offset, length))

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        if hasattr(self.impl, "write_zeroes"):
            self._run(self.impl.write_zeroes(offset, length))
        else:
            super().write_zeroes(offset, length, unmap)

    def truncate(self, size: int) -> None:
        if not hasattr(self.impl, "resize"):
            super().truncate(size)  # refuses, as QEMU for a driver without resize
        try:
            self._run(self.impl.resize(size))
        except OSError as exc:
            raise BlockError(f"Could not resize node '{self.name}': {exc.strerror}") from None
        self._size = size

    def filename(self) -> str:
        cls = type(self.impl)
        return f"python:{cls.__module__}.{cls.__qualname__}"

    def close(self) -> None:
        try:
            if hasattr(self.impl, "close"):
                self._run(self.impl.close())
        except OSError:
            pass  # already logged; the node goes anyway
        finally:
            self.thread.stop()


def open_python(
    name: str, read_only: bool, opts: Options, lookup: Lookup, open_child: OpenChild, dry: bool
) -> BlockNode:
    """The ``python`` driver: import, build and size the driver object."""
    module_name = opts.string("module")
    class_name = opts.string("class")
    timeout = opts.integer("timeout", 30, 1, 3600)
    child: BlockNode | None = None
    if opts.has("file"):
        ref = opts.child("file")
        child = open_child(ref) if isinstance(ref, dict) else lookup(ref)
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise BlockError(
            f"Parameter 'class': cannot load {module_name}.{class_name}: {exc}"
        ) from None
    if dry:
        node = BlockNode(name, read_only)
        node.driver = "python"
        return node
    kwargs: dict[str, Any] = dict(opts.values)
    opts.values.clear()
    if child is not None:
        kwargs["file"] = Child(child)
    try:
        impl = cls(**kwargs)
    except Exception as exc:
        raise BlockError(f"{module_name}.{class_name}: {exc}") from None
    try:
        node = PythonNode(name, read_only, impl, timeout)
    except OSError:
        raise BlockError(f"{module_name}.{class_name}: size() failed (see the log)") from None
    if child is not None:
        node.children["file"] = child
    return node
