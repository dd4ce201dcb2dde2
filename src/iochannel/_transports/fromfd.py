"""from_fd: the right channel for an inherited or received fd.

A socket becomes a :class:`SocketChannel`, anything else a :class:`FileChannel`;
the channel takes ownership of the fd.
"""

from __future__ import annotations

import os
import stat

from .._core.channel import Channel
from .file import FileChannel
from .socket import SocketChannel

__all__ = ["from_fd"]


def from_fd(fd: int, *, name: str = "") -> Channel:
    """Wrap *fd* in a :class:`SocketChannel` or :class:`FileChannel`."""
    if stat.S_ISSOCK(os.fstat(fd).st_mode):
        return SocketChannel.from_fd(fd, name=name)
    return FileChannel(fd, name=name)
