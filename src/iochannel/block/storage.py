"""The storage side of the daemon: block nodes, iothreads and vhost-user-blk exports.

:class:`Storage` is what qemu-storage-daemon's ``--blockdev``, ``--object
iothread`` and ``--export`` options and its QMP commands act on.  It is used
from one asyncio loop (the daemon's); each method checks its whole input
before changing anything, and refuses with a :class:`BlockError` worded as
qemu-storage-daemon 7.2 words it (where we add detail, after its text).

* Nodes are keyed by ``node-name``; an inline child (``file.driver=…``) gets
  an automatic name ``#blockN``.  A node used by an export or by another node
  cannot be deleted.
* An :class:`IOThread` is a named thread running its own asyncio loop.  An
  export with ``iothread=ID`` serves its vhost-user protocol on that loop; an
  iothread that an export uses cannot be deleted.  QEMU's polling and batch
  properties are accepted and have no effect: the loop waits in the kernel.
* Exports: ``type=vhost-user-blk`` only.  Deleting an export stops its
  front-end connection, removes the socket file and reports
  ``BLOCK_EXPORT_DELETED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..address import Address, FdAddress, UnixAddress
from ..vhost_user.blk import BlkDevice
from ..vhost_user.server import VhostUserServer
from .iothread import IOThread
from .nodes import BlockNode, open_node
from .options import BlockError, Options

__all__ = ["IOThread", "Storage"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,30}")


@dataclass
class _Export:
    id: str
    node: BlockNode
    server: VhostUserServer | None
    iothread: str | None
    done: asyncio.Future[None] | None
    path: str | None
    deleting: bool = False


class Storage:
    """Nodes, iothreads and exports; see the module docstring.

    With *dry*, requests are only checked: no file is opened, nothing runs
    (``--check`` and command-line validation).
    """

    def __init__(
        self, *, emit: Callable[[str, dict[str, Any]], None] | None = None, dry: bool = False
    ) -> None:
        self.nodes: dict[str, BlockNode] = {}
        self.iothreads: dict[str, IOThread | None] = {}
        self.exports: dict[str, _Export] = {}
        self._emit = emit or (lambda name, data: None)
        self._dry = dry
        self._auto = itertools.count()

    # ---- nodes -----------------------------------------------------------------------

    def blockdev_add(self, args: dict[str, Any], *, typed: bool) -> BlockNode:
        """``blockdev-add``; *typed* for QMP's JSON (else command-line strings)."""
        opts = Options(args, typed=typed)
        name = opts.optional_str("node-name")
        if name is None:
            opts.string("driver")  # a missing driver is reported first, as QEMU does
            raise BlockError("'node-name' must be specified for the root node")
        self._check_name(name)
        opened: list[BlockNode] = []
        try:
            node = self._open(name, opts, opened)
        except BaseException:
            for n in reversed(opened):
                n.close()
                self.nodes.pop(n.name, None)
            raise
        return node

    def _check_name(self, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise BlockError(f"Invalid node-name: '{name}'")
        if name in self.nodes:
            raise BlockError(f"Duplicate nodes with node-name='{name}'")

    def _open(self, name: str, opts: Options, opened: list[BlockNode]) -> BlockNode:
        def child(definition: dict[str, Any]) -> BlockNode:
            inner = Options(definition, typed=opts.typed, prefix="file.")
            given = inner.optional_str("node-name")
            if given is not None:
                self._check_name(given)
            return self._open(given or f"#block{next(self._auto)}", inner, opened)

        node = open_node(name, opts, self._node, child, dry=self._dry)
        self.nodes[name] = node
        opened.append(node)
        return node

    def _node(self, name: str) -> BlockNode:
        node = self.nodes.get(name)
        if node is None:
            raise BlockError(f"Cannot find device='{name}' nor node-name='{name}'")
        return node

    def blockdev_del(self, name: str) -> None:
        node = self.nodes.get(name)
        if node is None:
            raise BlockError(f"Failed to find node with node-name='{name}'")
        for exp in self.exports.values():
            if exp.node is node:
                raise BlockError(f"Node {name} is in use by export '{exp.id}'")
        for parent in self.nodes.values():
            if node in parent.children.values():
                raise BlockError(f"Block device {name} is in use by node '{parent.name}'")
        del self.nodes[name]
        node.close()
        # Inline children go with their parent.
        for child in node.children.values():
            if child.name.startswith("#"):
                self.blockdev_del(child.name)

    def query_named_block_nodes(self) -> list[dict[str, Any]]:
        """``query-named-block-nodes``: the members scripts read (a subset of QEMU's)."""
        out = []
        for node in self.nodes.values():
            size = node.size()
            out.append(
                {
                    "node-name": node.name,
                    "drv": node.driver,
                    "ro": node.read_only,
                    "file": node.filename(),
                    "encrypted": False,
                    "detect_zeroes": "off",
                    "image": {
                        "virtual-size": size,
                        "filename": node.filename(),
                        "format": node.driver,
                        "dirty-flag": False,
                    },
                }
            )
        return out

    # ---- iothreads -------------------------------------------------------------------

    def iothread_add(self, args: dict[str, Any], *, typed: bool) -> None:
        """``object-add qom-type=iothread`` (``qom-type`` already taken out)."""
        opts = Options(args, typed=typed)
        id = opts.string("id")
        for key in ("poll-max-ns", "poll-grow", "poll-shrink", "aio-max-batch"):
            opts.integer(key, 0)
        opts.integer("thread-pool-min", 0)
        opts.integer("thread-pool-max", 64)
        opts.done()
        if not _NAME.fullmatch(id):
            raise BlockError(f"Invalid object id: '{id}'")
        if id in self.iothreads:
            raise BlockError(
                f"attempt to add duplicate property '{id}' to object (type 'container')"
            )
        self.iothreads[id] = None if self._dry else IOThread(id)

    def has_iothread(self, id: str) -> bool:
        return id in self.iothreads

    def iothread_del(self, id: str) -> None:
        if id not in self.iothreads:
            raise BlockError(f"object '{id}' not found")
        users = [e.id for e in self.exports.values() if e.iothread == id]
        if users:
            raise BlockError(f"object '{id}' is in use by export '{users[0]}'")
        thread = self.iothreads.pop(id)
        if thread is not None:
            thread.stop()

    # ---- exports ---------------------------------------------------------------------

    def export_add(self, args: dict[str, Any], *, typed: bool) -> None:
        """``block-export-add`` (type vhost-user-blk)."""
        opts = Options(args, typed=typed)
        kind = opts.string("type")
        ident = opts.string("id")
        node_name = opts.string("node-name")
        writable = opts.boolean("writable", False)
        writethrough = opts.boolean("writethrough", False)
        iothread = opts.optional_str("iothread")
        opts.boolean("fixed-iothread", False)
        if kind not in ("vhost-user-blk", "nbd", "fuse", "vduse-blk"):
            raise BlockError(f"Parameter 'type' does not accept value '{kind}'")
        if kind != "vhost-user-blk":
            raise BlockError(f"Export type '{kind}' is not supported (only vhost-user-blk)")
        if "addr" not in opts.values:
            raise BlockError("Parameter 'addr' is missing")
        addr = self._addr(opts.group("addr"))
        num_queues = opts.integer("num-queues", 1, -(1 << 15), 1 << 16)
        lbs = opts.integer("logical-block-size", 512, 0, 1 << 32)
        serial = opts.string("serial", "vhost_user_blk")
        opts.done()
        if ident in self.exports:
            raise BlockError(f"Block export id '{ident}' is already in use")
        node = self.nodes.get(node_name)
        if node is None:
            raise BlockError(f"Cannot find device='' nor node-name='{node_name}'")
        if iothread is not None and iothread not in self.iothreads:
            raise BlockError(f'iothread "{iothread}" not found')
        if writable and node.read_only:
            raise BlockError("Cannot export read-only node as writable")
        if num_queues < 1:
            raise BlockError("num-queues must be greater than 0")
        if num_queues > 1024:
            raise BlockError("num-queues must be at most 1024")
        if lbs < 512 or lbs > 1 << 21 or lbs & (lbs - 1):
            raise BlockError(
                f"Property {ident}.logical-block-size doesn't take value '{lbs}', "
                "it's not a power of 2 from 512 to 2M"
            )
        if self._dry:
            self.exports[ident] = _Export(ident, node, None, iothread, None, None)
            return
        dev = BlkDevice(
            node,
            writable=writable,
            num_queues=num_queues,
            logical_block_size=lbs,
            serial=serial,
        )
        dev.wce = not writethrough
        try:
            server = VhostUserServer.listen(dev, addr, name=ident)
        except OSError as exc:
            raise BlockError(f"Failed to listen for export '{ident}': {exc.strerror}") from None
        thread = self.iothreads.get(iothread) if iothread is not None else None
        if thread is not None:
            future = asyncio.run_coroutine_threadsafe(server.serve(), thread.loop)
            done: asyncio.Future[None] = asyncio.wrap_future(future)
        else:
            done = asyncio.ensure_future(server.serve())
        path = addr.path if isinstance(addr, UnixAddress) else None
        self.exports[ident] = _Export(ident, node, server, iothread, done, path)

    @staticmethod
    def _addr(opts: Options) -> Address:
        kind = opts.string("type")
        if kind == "unix":
            return UnixAddress(opts.string("path"))
        if kind == "fd":
            text = opts.string("str")
            if not text.isdigit():
                raise BlockError(f"Parameter 'addr.str' expects a file descriptor, got '{text}'")
            return FdAddress(int(text))
        raise BlockError("Only socket address types 'unix' and 'fd' are supported")

    async def export_del(self, ident: str) -> None:
        exp = self.exports.get(ident)
        if exp is None or exp.deleting:
            raise BlockError(f"Export '{ident}' is not found")
        exp.deleting = True
        await self._stop_export(exp)

    async def _stop_export(self, exp: _Export) -> None:
        if exp.server is not None and exp.done is not None:
            exp.server.close()
            with contextlib.suppress(Exception):
                await exp.done
            if exp.path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(exp.path)
        del self.exports[exp.id]
        self._emit("BLOCK_EXPORT_DELETED", {"id": exp.id})

    def query_block_exports(self) -> list[dict[str, Any]]:
        return [
            {
                "id": e.id,
                "type": "vhost-user-blk",
                "node-name": e.node.name,
                "shutting-down": e.deleting,
            }
            for e in self.exports.values()
        ]

    # ---- the whole -------------------------------------------------------------------

    async def close(self) -> None:
        """Delete every export, then every node and iothread."""
        for exp in list(self.exports.values()):
            exp.deleting = True
            await self._stop_export(exp)
        for node in reversed(list(self.nodes.values())):
            node.close()
        self.nodes.clear()
        for thread in self.iothreads.values():
            if thread is not None:
                await asyncio.to_thread(thread.stop)
        self.iothreads.clear()
