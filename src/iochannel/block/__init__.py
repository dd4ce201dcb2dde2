"""A small block layer: nodes keyed by ``node-name``, iothreads and vhost-user-blk exports.

:mod:`.nodes` defines what a node is and the built-in drivers;
:mod:`.drivers` opens a node of any driver (``file``, ``raw``, ``null-co``,
``python``, ``nbd``) from its options; :mod:`.storage` is the graph of nodes
and exports the daemon manages.  The user-facing description is
``docs/storage.md``.
"""

from .nodes import BlockNode, FileNode, NullNode, RawNode, open_file
from .options import BlockError, Options

__all__ = [
    "BlockError",
    "BlockNode",
    "FileNode",
    "NullNode",
    "Options",
    "RawNode",
    "open_file",
]
