"""The ``command`` backend: a program's terminal (or pipes) as a chardev, socat's EXEC.

Not in QEMU.  ``-chardev command,id=ID,cmd=CMDLINE`` runs *CMDLINE* (split as
a POSIX shell would split it, but not run by a shell) and connects the chardev
to it:

* ``pty=on`` (the default): the program runs in a new session on a
  pseudo-terminal that is its controlling terminal, so shells, job control and
  full-screen programs work; :meth:`CommandChardev.resize` sets the window
  size (the program gets SIGWINCH) and the size is kept for a restarted child.
  ``pty=off``: the program's stdin and stdout are pipes (stderr is inherited).
* The chardev is OPENED when the program starts and CLOSED when its output
  ends (it exited, or closed its terminal).  The child is then reaped without
  blocking the loop.
* ``restart=on`` starts the program again after a delay from
  :class:`~iochannel.chardev.Backoff` (``restart-ms``, default 1 s, doubling
  up to ``restart-max-ms``, default 30 s); a run that outlived its delay resets
  the schedule.  Without it the chardev stays closed.
* ``cwd=DIR`` runs the program there.
* Closing the chardev hangs the program up (SIGHUP to its process group on a
  pty, SIGTERM otherwise) and kills it if it is still there after
  :data:`STOP_GRACE` seconds, so no child outlives the chardev.

QMP spells the data ``{"argv": [...], "pty": true, "restart": false,
"restart-ms": 1000, "restart-max-ms": 30000, "cwd": "DIR"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from .._transports import command as _command
from .backoff import Backoff
from .channel_backend import ChannelChardev
from .chardev import ChardevError
from .events import ChardevEvent
from .options import (
    REQUIRED,
    ChardevLookup,
    ChardevOptionError,
    Field,
    Names,
    Schema,
    chardev_kwargs,
    register_backend,
)

__all__ = ["STOP_GRACE", "CommandChardev"]

log = logging.getLogger(__name__)

#: Seconds a program may take to exit after its hang-up before it is killed.
STOP_GRACE = 2.0


def _from_cli(o: Mapping[str, Any]) -> dict[str, Any]:
    if "cmd" not in o:
        raise ChardevOptionError("Parameter 'cmd' is missing")
    try:
        argv = shlex.split(o["cmd"])
    except ValueError as exc:
        raise ChardevOptionError(f"Parameter 'cmd' cannot be split: {exc}") from None
    return {**{k: v for k, v in o.items() if k != "cmd"}, "argv": argv}


def _check(data: dict[str, Any], name: Names) -> None:
    if not data["argv"]:
        raise ChardevOptionError(f"Parameter '{name('argv')}' must name a program")
    if data["restart-max-ms"] < data["restart-ms"]:
        raise ChardevOptionError(
            f"Parameter '{name('restart-max-ms')}' must not be below '{name('restart-ms')}'"
        )


@register_backend(
    Schema(
        "command",
        "a program on a pty or pipes (not in QEMU)",
        {
            "cmd": "str",
            "pty": "bool",
            "restart": "bool",
            "restart-ms": "num",
            "restart-max-ms": "num",
            "cwd": "str",
        },
        {
            "argv": Field("strlist", REQUIRED),
            "pty": Field("bool", True),
            "restart": Field("bool", False),
            "restart-ms": Field("int", 1000, minimum=1),
            "restart-max-ms": Field("int", 30000, minimum=1),
            "cwd": Field("str"),
        },
        cli_names={"argv": "cmd"},
        from_cli=_from_cli,
        check=_check,
    )
)
class CommandChardev(ChannelChardev):
    """A program on a pty or pipes; see the module docstring."""

    type_name: ClassVar[str] = "command"

    def __init__(
        self,
        id: str,
        argv: Sequence[str],
        *,
        pty: bool = True,
        restart: bool = False,
        restart_ms: int = 1000,
        restart_max_ms: int = 30000,
        cwd: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not argv:
            raise ChardevError(f"chardev '{id}': the command line is empty")
        super().__init__(id, **kwargs)
        self.argv = list(argv)
        self.pty = pty
        self.cwd = cwd
        self.backoff = Backoff(restart_ms / 1000, restart_max_ms / 1000) if restart else None
        self.filename = "command:" + shlex.join(self.argv)
        #: Programs started so far (a restart counts one more).
        self.starts = 0
        self._child: _command.CommandChannel | None = None
        self._started_at = 0.0
        self._size: tuple[int, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Programs whose output ended, being reaped (a close kills and reaps them at once).
        self._reaping: dict[asyncio.Task[None], _command.CommandChannel] = {}

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> CommandChardev:
        return cls(
            id,
            data["argv"],
            pty=data["pty"],
            restart=data["restart"],
            restart_ms=data["restart-ms"],
            restart_max_ms=data["restart-max-ms"],
            cwd=data.get("cwd"),
            **chardev_kwargs(data, registry.loop),
        )

    # ---- the child ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The running program's pid, ``None`` between runs."""
        return self._child.pid if self._child is not None else None

    def _open(self) -> bool:
        self._spawn()
        return True

    def _spawn(self) -> None:
        try:
            child = _command.CommandChannel.spawn(
                self.argv, "rw", pty=self.pty, cwd=self.cwd, name=f"chardev '{self.id}'"
            )
        except OSError as exc:
            if self.starts == 0:
                raise ChardevError(
                    f"chardev '{self.id}': cannot run {self.argv[0]}: {exc}"
                ) from exc
            log.warning("chardev '%s': cannot run %s: %s", self.id, self.argv[0], exc)
            self._schedule_restart()
            return
        self._child = child
        self.starts += 1
        self._started_at = time.monotonic()
        if self._size is not None:
            child.resize(*self._size)
        self._attach_channels(child, child)

    def _respawn(self) -> None:
        self._timer = None
        self._spawn()
        if self._child is not None:
            self.be_event(ChardevEvent.OPENED)

    def _schedule_restart(self) -> None:
        if self.backoff is None or self.closed:
            return
        delay = self.backoff.next_delay()
        log.info("chardev '%s': restarting %s in %.1f s", self.id, self.argv[0], delay)
        self._timer = self.loop.call_later(delay, self._respawn)

    def _on_disconnect(self) -> None:
        # The program's output ended: reap it off the loop, then maybe restart.
        child, self._child = self._child, None
        if self._read_watch is not None:
            self._read_watch.cancel()
            self._read_watch = None
        self._in = self._out = None
        self.be_event(ChardevEvent.CLOSED)
        if child is None:
            return
        if self.backoff is not None:
            self.backoff.connected(time.monotonic() - self._started_at)
        task = self.loop.create_task(self._reap(child))
        self._reaping[task] = child
        task.add_done_callback(lambda t: self._reaping.pop(t, None))

    async def _reap(self, child: _command.CommandChannel) -> None:
        await child.aclose()
        log.info("chardev '%s': %s exited with %s", self.id, self.argv[0], child.returncode)
        self._schedule_restart()

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal size (kept for later runs); needs ``pty=on``."""
        if not self.pty:
            raise ChardevError(f"chardev '{self.id}': not running on a pty, cannot resize")
        self._size = (rows, cols)
        if self._child is not None and not self._child.closed:
            self._child.resize(rows, cols)

    def ioctl(self, command: str, argument: object = None) -> object:
        """``resize`` with ``(rows, cols)``: see :meth:`resize`."""
        if command == "resize" and isinstance(argument, tuple) and len(argument) == 2:
            self.resize(int(argument[0]), int(argument[1]))
            return None
        return super().ioctl(command, argument)

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        exited = list(self._reaping.items())
        self._reaping.clear()
        for task, _ in exited:
            task.cancel()
        child, self._child = self._child, None
        self._in = self._out = None
        self._release_channels()
        for program in [c for _, c in exited] + ([child] if child is not None else []):
            _stop(program, self.pty)


def _stop(child: _command.CommandChannel, pty: bool) -> None:
    """Hang the program up and reap it; kill it if it ignores the hang-up."""
    pid = child.pid
    if child.returncode is None:
        # An interactive shell ignores SIGTERM but not SIGHUP, which also
        # reaches the jobs it started on the terminal.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pty:
                os.killpg(pid, signal.SIGHUP)
            else:
                os.kill(pid, signal.SIGTERM)
        try:
            child.wait_exit(STOP_GRACE)
        except subprocess.TimeoutExpired:
            log.warning("command %d ignored its hang-up: killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    child.close()
