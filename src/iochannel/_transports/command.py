"""CommandChannel: a child process's stdin/stdout (or a pty) as one duplex channel.

``spawn(argv, "r")`` pipes the child's stdout (stdin is /dev/null), ``"w"`` its
stdin (stdout is /dev/null), ``"rw"`` both; stderr is inherited.  With
``pty=True`` the child runs in a new session on a pseudo-terminal that is its
controlling terminal (stdin, stdout and stderr), so shells and job control
work, and :meth:`CommandChannel.resize` sets its window size.

``close()`` closes the pipes first (a well-behaved child sees end of input)
and then waits for the child to exit; :meth:`aclose` waits without blocking
the loop.  A channel that is garbage-collected while its child still runs
terminates it (SIGTERM, then SIGKILL if it refuses) rather than leaving a
zombie.  :attr:`returncode` is the exit status once the child has been reaped.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pty as _pty
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Mapping, Sequence
from typing import final

from .._core.channel import Buffer, Channel
from .._core.flags import Condition, Feature, ReadFlag, WriteFlag
from ..errors import ConfigurationError, UnsupportedFeatureError
from .file import FileChannel
from .null import NullChannel
from .stapled import StapledChannel

__all__ = ["CommandChannel"]

log = logging.getLogger(__name__)

_IN = int(Condition.IN)
_OUT = int(Condition.OUT)


def _make_controlling_tty() -> None:
    # Runs in the child after setsid(): one ioctl, safe after fork.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@final
class CommandChannel(StapledChannel):
    """A child process as a channel: a :class:`StapledChannel` of its pipes or pty, and the child.

    With pipes, ``shutdown(Shutdown.WRITE)`` closes the child's stdin, so it
    sees end of input while its output can still be read.  A pty has one fd
    for both directions: it has no shutdown (send the terminal's end-of-file
    character, ``b"\\x04"``, instead).
    """

    __slots__ = ("_mode", "_proc", "_pty")

    def __init__(
        self, proc: subprocess.Popen[bytes], reader: Channel, writer: Channel, mode: str, name: str
    ) -> None:
        super().__init__(reader, writer, name=name)
        self._proc = proc
        self._mode = mode
        self._pty = reader if isinstance(reader, FileChannel) and reader is writer else None
        if self._pty is not None:
            self._set_feature(Feature.SHUTDOWN, False)

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        mode: str = "rw",
        *,
        pty: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str = "",
    ) -> CommandChannel:
        """Start *argv*; raises :class:`OSError` naming the program if it cannot run."""
        if mode not in ("r", "w", "rw"):
            raise ConfigurationError(f"invalid mode {mode!r}: use 'r', 'w' or 'rw'", field="mode")
        if not argv:
            raise ConfigurationError("argv must name a program", field="argv")
        name = name or f"command {argv[0]}"
        if pty:
            master, slave = _pty.openpty()
            os.set_inheritable(master, False)
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=_make_controlling_tty,
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            tty = FileChannel(master, name=f"{name} (pty)")
            return cls(proc, tty, tty, "rw", name)
        parent: list[int] = []
        child: dict[str, int] = {}
        try:
            if "r" in mode:
                r, w = os.pipe()
                parent.append(r)
                child["stdout"] = w
            if "w" in mode:
                r, w = os.pipe()
                parent.append(w)
                child["stdin"] = r
            proc = subprocess.Popen(
                list(argv),
                stdin=child.get("stdin", subprocess.DEVNULL),
                stdout=child.get("stdout", subprocess.DEVNULL),
                env=env,
                cwd=cwd,
            )
        except BaseException:
            for fd in parent:
                os.close(fd)
            raise
        finally:
            for fd in child.values():
                os.close(fd)
        # A direction the child does not have is a closed channel: reads see end of
        # stream, as from /dev/null; writes are refused by _writev below.
        reader = FileChannel(parent[0], name=f"{name} (stdout)") if "r" in mode else _unconnected()
        writer = FileChannel(parent[-1], name=f"{name} (stdin)") if "w" in mode else _unconnected()
        return cls(proc, reader, writer, mode, name)

    # ---- the child ------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status (negative: killed by that signal), ``None`` while running."""
        return self._proc.poll()

    def wait_exit(self, timeout: float | None = None) -> int:
        """Wait for the child to exit; raises :class:`subprocess.TimeoutExpired`."""
        return self._proc.wait(timeout)

    def terminate(self) -> None:
        """Send SIGTERM to the child."""
        if self._proc.poll() is None:
            self._proc.terminate()

    def resize(self, rows: int, cols: int) -> None:
        """Set the pty window size (the child gets SIGWINCH)."""
        if self._pty is None:
            raise ValueError(f"{self.name}: not running on a pty")
        self._check_open()
        winsize = struct.pack("HHHH", rows, cols, 0, 0)
        fcntl.ioctl(self._pty.fileno(), termios.TIOCSWINSZ, winsize)

    # ---- hooks ----------------------------------------------------------

    def _connected(self, mode: str, stream: str, doing: str) -> None:
        if mode not in self._mode:
            other = "w" if mode == "r" else "r"
            raise UnsupportedFeatureError(
                f"{self.name}: the command's {stream} is not connected (mode '{other}'): "
                f"{doing} needs mode '{mode}' or 'rw'"
            )

    def _readv(
        self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int | None:
        self._connected("r", "output", "reading")
        return super()._readv(buffers, flags, fds)

    def _writev(
        self, buffers: Sequence[Buffer], fds: Sequence[int], flags: WriteFlag
    ) -> int | None:
        self._connected("w", "input", "writing")
        return super()._writev(buffers, fds, flags)

    # ---- closing --------------------------------------------------------
    # The pipes close first, so a well-behaved child sees end of input; then
    # the child is reaped.

    def close(self) -> None:
        super().close()
        self._proc.wait()

    async def aclose(self) -> None:
        """Close the pipes and wait for the child without blocking the loop."""
        super().close()
        if self._proc.poll() is None:
            await _wait_pid_async(self._proc)

    def _abort(self) -> None:
        """Reap the child, terminating (then killing) one that will not exit."""
        proc = self._proc
        # SIGKILL cannot be refused, but a loaded machine may take a while to
        # run the exit: wait longer for it, so that no zombie is left behind.
        for sig, grace in ((None, 0.01), (signal.SIGTERM, 0.01), (signal.SIGKILL, 2.0)):
            if sig is not None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return
                time.sleep(0.001)
        log.warning("%s: process %d refused to die", self.name, proc.pid)

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        StapledChannel.close(self)
        self._abort()


def _unconnected() -> Channel:
    channel = NullChannel()
    channel.close()
    return channel


async def _wait_pid_async(proc: subprocess.Popen[bytes]) -> None:
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        await loop.run_in_executor(None, proc.wait)
        return
    try:
        done: asyncio.Future[None] = loop.create_future()

        def exited() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(pidfd, exited)
        try:
            await done
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)
    proc.wait()
