"""FileChannel: any non-socket fd — regular files, pipes, fifos, ptys, character devices.

Regular files (anything ``lseek`` works on) are ``SEEKABLE`` and support
``pread``/``pwrite``; pipes, fifos and ttys are not.  Files have no shutdown
and carry no fds.  A pty master whose other side closed reads as end of
stream (Linux reports EIO there).  :meth:`FileChannel.open` honours the umask
like ``open(2)``; nothing is fsynced on close.
"""

from __future__ import annotations

import errno
import os
import pty
import tty
from collections.abc import Sequence
from typing import final

from .._core.channel import Buffer, Channel
from .._core.flags import Condition, Feature, ReadFlag, WriteFlag
from .._core.watch import FdSpec, forget_fd
from ..errors import ConfigurationError

__all__ = ["FileChannel"]

_MODES = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "r+": os.O_RDWR,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a+": os.O_RDWR | os.O_CREAT | os.O_APPEND,
}
_IN = int(Condition.IN)
_OUT = int(Condition.OUT)


@final
class FileChannel(Channel):
    """A channel over a file descriptor that is not a socket (see module docstring)."""

    __slots__ = ("_fd", "_is_pty")

    def __init__(self, fd: int, *, name: str = "") -> None:
        """Wrap *fd*, taking ownership of it."""
        try:
            os.lseek(fd, 0, os.SEEK_CUR)
            seekable = True
        except OSError:
            seekable = False
        super().__init__(Feature.SEEKABLE if seekable else Feature.NONE, name or f"fd {fd}")
        self._fd = fd
        self._blocking = os.get_blocking(fd)
        self._is_pty = False

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], mode: str | int = "r", perms: int = 0o666
    ) -> FileChannel:
        """Open *path*: *mode* is ``"r"``, ``"w"``, ``"a"``, ``"r+"``, … or ``os.O_*`` flags."""
        if isinstance(mode, str):
            try:
                flags = _MODES[mode]
            except KeyError:
                raise ConfigurationError(
                    f"invalid mode {mode!r}: use one of {', '.join(_MODES)} or os.O_* flags",
                    field="mode",
                ) from None
        else:
            flags = mode
        fd = os.open(path, flags | os.O_CLOEXEC, perms)
        return cls(fd, name=os.fspath(path))

    @classmethod
    def from_dup(cls, fd: int, *, name: str = "") -> FileChannel:
        """Wrap a duplicate of *fd*; the caller keeps its own fd."""
        try:
            new = os.dup(fd)
        except OSError as exc:
            raise OSError(exc.errno, f"Could not dup FD {fd}: {exc.strerror}") from exc
        return cls(new, name=name)

    @classmethod
    def pipe(cls) -> tuple[FileChannel, FileChannel]:
        """A ``(read end, write end)`` pair over ``pipe(2)``."""
        r, w = os.pipe()
        return cls(r, name="pipe[read]"), cls(w, name="pipe[write]")

    @classmethod
    def open_pty(cls, raw: bool = True) -> tuple[FileChannel, str]:
        """A new pty: ``(master channel, slave path)``; the slave is left closed."""
        master, slave = pty.openpty()
        try:
            if raw:
                tty.setraw(slave)
            path = os.ttyname(slave)
        finally:
            os.close(slave)
        os.set_inheritable(master, False)
        ch = cls(master, name=f"pty {path}")
        ch._is_pty = True
        return ch, path

    def fileno(self) -> int:
        return self._fd

    def _readv(
        self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int | None:
        return fd_readv(self._fd, buffers, self._is_pty)

    def _writev(
        self, buffers: Sequence[Buffer], fds: Sequence[int], flags: WriteFlag
    ) -> int | None:
        return fd_writev(self._fd, buffers)

    def _preadv(self, buffers: Sequence[Buffer], offset: int) -> int:
        return os.preadv(self._fd, buffers, offset)

    def _pwritev(self, buffers: Sequence[Buffer], offset: int) -> int:
        return os.pwritev(self._fd, buffers, offset)

    def _seek(self, offset: int, whence: int) -> int:
        return os.lseek(self._fd, offset, whence)

    def _wait_fds(self, cond: Condition) -> FdSpec:
        return ((self._fd, int(cond) & (_IN | _OUT)),)

    def _set_blocking(self, blocking: bool) -> None:
        os.set_blocking(self._fd, blocking)

    def _close(self) -> None:
        forget_fd(self._fd)
        os.close(self._fd)


def fd_readv(fd: int, buffers: Sequence[Buffer], is_pty: bool = False) -> int | None:
    """``readv(2)`` on a non-socket fd with the channel contract's return values."""
    try:
        return os.readv(fd, buffers)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno == errno.EIO and (is_pty or os.isatty(fd)):
            return 0  # a pty master after the slave side closed
        raise


def fd_writev(fd: int, buffers: Sequence[Buffer]) -> int | None:
    """``writev(2)`` on a non-socket fd; ``None`` when it would block."""
    try:
        return os.writev(fd, buffers)
    except BlockingIOError:
        return None
