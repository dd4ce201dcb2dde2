"""A small block layer: nodes keyed by ``node-name``, iothreads and vhost-user-blk exports.

See :mod:`.nodes` for the drivers and :mod:`.storage` for the graph; the
user-facing description is ``docs/storage.md``.
"""

from .nodes import BlockNode, FileNode, NullNode, RawNode, open_file, open_node
from .options import BlockError, Options

__all__ = [
    "BlockError",
    "BlockNode",
    "FileNode",
    "NullNode",
    "Options",
    "RawNode",
    "open_file",
    "open_node",
]
