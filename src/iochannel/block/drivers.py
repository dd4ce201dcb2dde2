"""Opening a node: ``driver=`` and its options to the node that serves them.

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
* ``nbd`` — an export of an NBD server (:mod:`iochannel.nbd.node`);
* every driver: ``node-name``, ``read-only``, ``auto-read-only``,
  ``force-share``, ``discard``, ``detect-zeroes``.

Image formats (``qcow2``, ``vmdk`` …) are refused: QEMU owns them.  Serve
such an image with ``qemu-nbd`` and open it with ``nbd``.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..nbd.node import open_nbd
from .nodes import BlockNode, Lookup, NullNode, OpenChild, RawNode, open_file_node
from .options import BlockError, Options
from .python import open_python

__all__ = ["DRIVERS", "QEMU_FORMATS", "open_node"]

#: The drivers :func:`open_node` opens.
DRIVERS = ("file", "host_device", "raw", "null-co", "null-aio", "python", "nbd")
#: Formats QEMU's block layer implements and this one does not.
QEMU_FORMATS = frozenset(
    ("qcow2", "qcow", "qed", "vmdk", "vdi", "vhdx", "vpc", "parallels", "luks", "cloop", "dmg")
)


def open_node(
    name: str,
    opts: Options,
    lookup: Lookup,
    open_child: OpenChild,
    *,
    dry: bool = False,
    objects: Mapping[str, object] | None = None,
) -> BlockNode:
    """Open the node *opts* describes (``driver`` and its options; see the module docstring).

    With *dry*, only the options are checked: nothing is opened.  *objects*
    are the ``--object`` objects by id (``tls-creds`` of ``nbd``).
    """
    driver = opts.string("driver")
    read_only = opts.boolean("read-only", False)
    opts.boolean("auto-read-only", False)
    opts.boolean("force-share", False)
    opts.choice("discard", "ignore", ("ignore", "off", "unmap", "on"))
    opts.choice("detect-zeroes", "off", ("off", "on", "unmap"))
    if driver in ("file", "host_device"):
        return open_file_node(name, read_only, opts, driver == "host_device", dry)
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
        return open_python(name, read_only, opts, lookup, open_child, dry)
    if driver == "nbd":
        return open_nbd(name, read_only, opts, objects or {}, dry)
    if driver in QEMU_FORMATS:
        raise BlockError(
            f"Driver '{driver}' is not supported: image formats are QEMU's; serve it with "
            "qemu-nbd and use driver=nbd (or convert it to raw with qemu-img convert -O raw)"
        )
    raise opts.bad_value("driver", driver, DRIVERS)
