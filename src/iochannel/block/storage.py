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
* Exports: ``type=vhost-user-blk`` and ``type=nbd`` (on the NBD server of
  ``--nbd-server``/``nbd-server-start``, :attr:`Storage.nbd`).  Deleting an
  export stops its connections, removes a vhost-user socket file and reports
  ``BLOCK_EXPORT_DELETED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._transports.address import Address, FdAddress, UnixAddress
from ..nbd.service import NbdService
from ..vhost_user.blk import BlkDevice
from ..vhost_user.server import VhostUserServer
from .drivers import open_node
from .iothread import IOThread
from .nodes import BlockNode, RawNode
from .options import BlockError, Options

__all__ = ["EXPORT_TYPES", "IOThread", "Storage"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,30}")
#: The export types served (QEMU's others, ``fuse`` and ``vduse-blk``, are refused).
EXPORT_TYPES = ("vhost-user-blk", "nbd")
#: QEMU's BDRV_MAX_LENGTH: the largest image size.
MAX_LENGTH = 9223372035781033984
#: An iothread's properties and their defaults, in qom-list's order.
IOTHREAD_PROPERTIES = {
    "thread-pool-min": 0,
    "aio-max-batch": 0,
    "thread-pool-max": 64,
    "poll-max-ns": 32768,
    "poll-grow": 0,
    "poll-shrink": 0,
}


@dataclass
class _Export:
    id: str
    node: BlockNode
    server: VhostUserServer | None
    #: Every iothread it runs on: the protocol's and the virtqueues'.
    iothreads: set[str]
    done: asyncio.Future[None] | None
    path: str | None
    deleting: bool = False
    kind: str = "vhost-user-blk"
    #: An NBD export's name.
    nbd_name: str = ""


class Storage:
    """Nodes, iothreads and exports; see the module docstring.

    With *dry*, requests are only checked: no file is opened, nothing runs
    (``--check`` and command-line validation).
    """

    def __init__(
        self,
        *,
        emit: Callable[[str, dict[str, Any]], None] | None = None,
        dry: bool = False,
        objects: Mapping[str, object] | None = None,
    ) -> None:
        self.nodes: dict[str, BlockNode] = {}
        #: The ``--object`` objects by id (TLS credentials, authorization lists).
        self.objects: Mapping[str, object] = {} if objects is None else objects
        self.iothreads: dict[str, IOThread | None] = {}
        #: Each iothread's properties as given (:data:`IOTHREAD_PROPERTIES`), for qom-get.
        self.iothread_props: dict[str, dict[str, int]] = {}
        self.exports: dict[str, _Export] = {}
        self._emit = emit or (lambda name, data: None)
        self._dry = dry
        self._auto = itertools.count()
        #: Nodes a block_resize is changing (it runs off the loop).
        self._resizing: set[BlockNode] = set()
        self.nbd = NbdService(self.objects, dry=dry)

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

        node = open_node(name, opts, self._node, child, dry=self._dry, objects=self.objects)
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
        if node in self._resizing:
            raise BlockError(f"Node {name} is in use by a block_resize still running")
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

    async def block_resize(self, device: str | None, node_name: str | None, size: int) -> None:
        """``block_resize``: checks and texts as qemu-storage-daemon 7.2's.

        The node's driver resizes it on a worker thread, so a slow one holds up
        only this command.  Then every export whose capacity changed tells its
        front-end (vhost-user-blk: a config-change message).
        """
        # qemu-storage-daemon has no devices (BlockBackends): only node-name finds one.
        node = self.nodes.get(node_name) if node_name is not None else None
        if node is None:
            raise BlockError(
                f"Cannot find device='{device or ''}' nor node-name='{node_name or ''}'"
            )
        if size < 0:
            raise BlockError("Parameter 'size' expects a >0 size")
        chain = self._resize_chain(node)
        if size > MAX_LENGTH:
            raise BlockError(f"offset({size}) exceeds maximum({MAX_LENGTH})")
        if node.read_only:
            raise BlockError("Image is read-only")
        busy = self._resizing.intersection(chain)
        if busy:
            raise BlockError(f"Node {busy.pop().name} is in use by a block_resize still running")
        users = self._users(chain)
        exports = [
            (e.server, e.server.backend)
            for e in self.exports.values()
            if e.node in users and e.server is not None and isinstance(e.server.backend, BlkDevice)
        ]
        self._resizing.update(chain)
        try:
            await asyncio.to_thread(_resize_quiesced, node, size, exports)
        finally:
            self._resizing.difference_update(chain)

    def _users(self, chain: list[BlockNode]) -> set[BlockNode]:
        """*chain* and every node above it: the nodes whose size a resize may change."""
        users = set(chain)
        grew = True
        while grew:
            above = {n for n in self.nodes.values() if users.intersection(n.children.values())}
            grew = not above <= users
            users |= above
        return users

    def _resize_chain(self, node: BlockNode) -> list[BlockNode]:
        """The nodes a resize of *node* resizes; refused if another user forbids it."""
        chain = [node]
        user = "an unnamed block device (uses node '{0}' as 'root' child)"
        while True:
            cur = chain[-1]
            blocker = self._resize_blocker(cur, chain)
            if blocker is not None:
                raise BlockError(
                    f"Permission conflict on node '{cur.name}': permissions 'resize' are both "
                    f"required by {user.format(cur.name)} and unshared by {blocker}."
                )
            if not isinstance(cur, RawNode):
                return chain
            user = f"node '{cur.name}' (uses node '{{0}}' as 'file' child)"
            chain.append(cur.child)

    def _resize_blocker(self, node: BlockNode, chain: list[BlockNode]) -> str | None:
        """Who, outside *chain*, forbids resizing *node* (QEMU's unshared RESIZE), named
        as QEMU names it: an NBD export (its clients cannot learn of a new size), a
        ``raw`` window, or a parent whose own users forbid it."""
        for exp in self.exports.values():
            if exp.node is node and exp.kind == "nbd":
                return f"an unnamed block device (uses node '{node.name}' as 'root' child)"
        for other in self.nodes.values():
            for role, child in other.children.items():
                if (
                    child is node
                    and other not in chain
                    and (not other.shares_resize or self._resize_blocker(other, chain))
                ):
                    return f"node '{other.name}' (uses node '{node.name}' as '{role}' child)"
        return None

    # ---- iothreads -------------------------------------------------------------------

    def iothread_add(self, args: dict[str, Any], *, typed: bool) -> None:
        """``object-add qom-type=iothread`` (``qom-type`` already taken out)."""
        opts = Options(args, typed=typed)
        id = opts.string("id")
        props = {key: opts.integer(key, default) for key, default in IOTHREAD_PROPERTIES.items()}
        opts.done()
        if not _NAME.fullmatch(id):
            raise BlockError(f"Invalid object id: '{id}'")
        if id in self.iothreads:
            raise BlockError(
                f"attempt to add duplicate property '{id}' to object (type 'container')"
            )
        self.iothreads[id] = None if self._dry else IOThread(id)
        self.iothread_props[id] = props

    def has_iothread(self, id: str) -> bool:
        return id in self.iothreads

    def iothread_del(self, id: str) -> None:
        if id not in self.iothreads:
            raise BlockError(f"object '{id}' not found")
        users = [e.id for e in self.exports.values() if id in e.iothreads]
        if users:
            raise BlockError(f"object '{id}' is in use by export '{users[0]}'")
        thread = self.iothreads.pop(id)
        del self.iothread_props[id]
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
        if kind not in (*EXPORT_TYPES, "fuse", "vduse-blk"):
            raise opts.bad_value("type", kind, EXPORT_TYPES)
        if kind == "nbd":
            self._export_add_nbd(opts, ident, node_name, writable, writethrough, iothread)
            return
        if kind != "vhost-user-blk":
            raise BlockError(f"Export type '{kind}' is not supported (only vhost-user-blk, nbd)")
        if "addr" not in opts.values:
            raise BlockError("Parameter 'addr' is missing")
        addr = self._addr(opts.group("addr"))
        num_queues = opts.integer("num-queues", 1, -(1 << 15), 1 << 16)
        lbs = opts.integer("logical-block-size", 512, 0, 1 << 32)
        serial = opts.string("serial", "vhost_user_blk")
        mapping = self._vq_mapping(opts)
        opts.done()
        node = self._export_node(ident, node_name, iothread, writable)
        if num_queues < 1:
            raise BlockError("num-queues must be greater than 0")
        if num_queues > 1024:
            raise BlockError("num-queues must be at most 1024")
        if lbs < 512 or lbs > 1 << 21 or lbs & (lbs - 1):
            raise BlockError(
                f"Property {ident}.logical-block-size doesn't take value '{lbs}', "
                "it's not a power of 2 from 512 to 2M"
            )
        queue_threads = _assign_queues(mapping, num_queues) if mapping else []
        used = {*queue_threads, *([iothread] if iothread else [])}
        if self._dry:
            self.exports[ident] = _Export(ident, node, None, used, None, None)
            return
        dev = BlkDevice(
            node,
            writable=writable,
            num_queues=num_queues,
            logical_block_size=lbs,
            serial=serial,
        )
        dev.wce = not writethrough
        loops = [self._thread(id).loop for id in queue_threads] or None
        try:
            server = VhostUserServer.listen(dev, addr, name=ident, queue_loops=loops)
        except OSError as exc:
            raise BlockError(f"Failed to listen for export '{ident}': {exc.strerror}") from None
        thread = self.iothreads.get(iothread) if iothread is not None else None
        if thread is not None:
            future = asyncio.run_coroutine_threadsafe(server.serve(), thread.loop)
            done: asyncio.Future[None] = asyncio.wrap_future(future)
        else:
            done = asyncio.ensure_future(server.serve())
        path = addr.path if isinstance(addr, UnixAddress) else None
        self.exports[ident] = _Export(ident, node, server, used, done, path)

    def _thread(self, id: str) -> IOThread:
        thread = self.iothreads[id]
        assert thread is not None  # only a dry run has none
        return thread

    def _vq_mapping(self, opts: Options) -> list[tuple[str, list[int] | None]]:
        """``iothread-vq-mapping`` as QEMU's virtio-blk spells it: ``[(iothread, vqs)]``."""
        items = opts.items("iothread-vq-mapping")
        if items is None:
            return []
        if not items:
            raise BlockError("Parameter 'iothread-vq-mapping' expects at least one item")
        mapping: list[tuple[str, list[int] | None]] = []
        for i, item in enumerate(items):
            prefix = f"iothread-vq-mapping.{i}."
            if not isinstance(item, dict):
                raise BlockError(f"Parameter '{prefix[:-1]}' expects an object")
            entry = Options(item, typed=opts.typed, prefix=prefix)
            name = entry.string("iothread")
            vqs = entry.items("vqs")
            entry.done()
            if name not in self.iothreads:
                raise BlockError(f'IOThread "{name}" object does not exist')
            if any(name == other for other, _ in mapping):
                raise BlockError(f'duplicate IOThread name "{name}" in iothread-vq-mapping')
            if vqs is not None:
                each = Options({str(j): v for j, v in enumerate(vqs)}, typed=opts.typed,
                               prefix=f"{prefix}vqs.")  # fmt: skip
                vqs = [each.integer(str(j), 0, 0, 0xFFFF) for j in range(len(vqs))]
            if mapping and (vqs is None) != (mapping[0][1] is None):
                raise BlockError(
                    "either all items in iothread-vq-mapping must have vqs or none of them "
                    "must have it"
                )
            mapping.append((name, vqs))
        return mapping

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

    def _export_add_nbd(
        self,
        opts: Options,
        ident: str,
        node_name: str,
        writable: bool,
        writethrough: bool,
        iothread: str | None,
    ) -> None:
        """``block-export-add type=nbd``: checks in qemu-storage-daemon 7.2's order."""
        name = opts.string("name", node_name)
        description = opts.string("description", "")
        if opts.items("bitmaps"):
            raise BlockError("Parameter 'bitmaps' is not supported: there are no dirty bitmaps")
        if opts.boolean("allocation-depth", False):
            raise BlockError("Parameter 'allocation-depth' is not supported")
        opts.done()
        node = self._export_node(ident, node_name, iothread, writable)
        self.nbd.check_export(name)
        thread = self.iothreads.get(iothread) if iothread is not None else None
        self.nbd.add_export(
            name,
            node,
            description=description,
            writable=writable,
            writethrough=writethrough,
            loop=thread.loop if thread is not None else None,
        )
        used = {iothread} if iothread else set()
        self.exports[ident] = _Export(
            ident, node, None, used, None, None, kind="nbd", nbd_name=name
        )

    def nbd_server_start(self, args: dict[str, Any], *, typed: bool, legacy: bool) -> None:
        """``nbd-server-start`` (*legacy*: QMP's nested address) or ``--nbd-server``."""
        self.nbd.start(args, typed=typed, legacy=legacy)

    async def nbd_server_stop(self) -> None:
        """``nbd-server-stop``: delete every NBD export (with events), then stop."""
        if not self.nbd.running:
            raise BlockError("NBD server not running")
        for exp in [e for e in self.exports.values() if e.kind == "nbd"]:
            exp.deleting = True
            await self._stop_export(exp)
        await self.nbd.stop()

    def _export_node(
        self, ident: str, node_name: str, iothread: str | None, writable: bool
    ) -> BlockNode:
        """The checks every export type makes, in qemu-storage-daemon's order; the node."""
        if ident in self.exports:
            raise BlockError(f"Block export id '{ident}' is already in use")
        node = self.nodes.get(node_name)
        if node is None:
            raise BlockError(f"Cannot find device='' nor node-name='{node_name}'")
        if iothread is not None and iothread not in self.iothreads:
            raise BlockError(f'iothread "{iothread}" not found')
        if writable and node.read_only:
            raise BlockError("Cannot export read-only node as writable")
        return node

    async def export_del(self, ident: str, mode: str = "safe") -> None:
        exp = self.exports.get(ident)
        if exp is None or exp.deleting:
            raise BlockError(f"Export '{ident}' is not found")
        if mode not in ("safe", "hard"):
            raise BlockError(f"Parameter 'mode' does not accept value '{mode}'")
        if mode == "safe" and exp.kind == "nbd" and self.nbd.clients(exp.nbd_name):
            raise BlockError(f"export '{ident}' still in use")
        exp.deleting = True
        await self._stop_export(exp)

    async def _stop_export(self, exp: _Export) -> None:
        if exp.kind == "nbd":
            await self.nbd.remove_export(exp.nbd_name)
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
                "type": e.kind,
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
        if self.nbd.running:
            await self.nbd.stop()
        for node in reversed(list(self.nodes.values())):
            node.close()
        self.nodes.clear()
        for thread in self.iothreads.values():
            if thread is not None:
                await asyncio.to_thread(thread.stop)
        self.iothreads.clear()
        self.iothread_props.clear()


def _assign_queues(mapping: list[tuple[str, list[int] | None]], num_queues: int) -> list[str]:
    """The iothread of each queue: as listed in ``vqs``, else round-robin (as QEMU)."""
    if mapping[0][1] is None:
        return [mapping[i % len(mapping)][0] for i in range(num_queues)]
    owner: dict[int, str] = {}
    for name, vqs in mapping:
        for vq in vqs or ():
            if vq >= num_queues:
                raise BlockError(
                    f'vq index {vq} for IOThread "{name}" must be less than num_queues '
                    f"{num_queues} in iothread-vq-mapping"
                )
            if vq in owner:
                raise BlockError(
                    f'cannot assign vq {vq} to IOThread "{name}" because it is already assigned'
                )
            owner[vq] = name
    for vq in range(num_queues):
        if vq not in owner:
            raise BlockError(f"missing vq {vq} IOThread assignment in iothread-vq-mapping")
    return [owner[vq] for vq in range(num_queues)]


def _resize_quiesced(
    node: BlockNode, size: int, exports: list[tuple[VhostUserServer, BlkDevice]]
) -> None:
    """Resize *node* with the exports' requests held, then give them the new capacity."""
    with contextlib.ExitStack() as held:
        for _, dev in exports:
            held.enter_context(dev.quiesced())
        try:
            node.truncate(size)
        finally:
            for server, dev in exports:
                if dev.refresh_capacity():
                    server.config_changed()
