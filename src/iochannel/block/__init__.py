"""A small block layer: nodes keyed by ``node-name``, iothreads and vhost-user-blk exports.

``nodes`` defines what a node is and the built-in drivers;
``drivers`` opens a node of any driver (``file``, ``raw``, ``null-co``,
``python``, ``nbd``) from its options; ``storage`` is the graph of nodes
and exports the daemon manages.  The user-facing description is
``docs/storage.md``.
"""

from .nodes import STATUS_HOLE, STATUS_ZERO, BlockNode, FileNode, NullNode, RawNode, open_file
from .options import BlockError, Options

__all__ = [
    "STATUS_HOLE",
    "STATUS_ZERO",
    "BlockError",
    "BlockNode",
    "FileNode",
    "NullNode",
    "Options",
    "RawNode",
    "open_file",
]
