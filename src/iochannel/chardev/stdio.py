"""The ``stdio`` backend: the process's standard input and output."""

from __future__ import annotations

import atexit
import os
import termios
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

from .._transports.file import FileChannel
from .channel_backend import ChannelChardev
from .chardev import ChardevError
from .options import ChardevLookup, Field, Schema, chardev_kwargs, register_backend
from .terminal import CFLAG, raw_mode

__all__ = ["StdioChardev"]

_in_use = threading.Lock()

# termios attribute list indexes


def _legacy(text: str) -> str | None:
    return "stdio" if text == "stdio" else None


@register_backend(
    Schema(
        "stdio",
        "the process's standard input and output",
        {"signal": "bool"},
        {"signal": Field("bool", True)},
        legacy=_legacy,
    )
)
class StdioChardev(ChannelChardev):
    """The ``stdio`` backend: the process's standard input and output.

    Only one per process ("cannot use stdio by multiple character devices").  When
    stdin is a terminal it is switched to raw mode — no line editing, no echo (see
    :meth:`StdioChardev.set_echo`), output post-processing kept — and ``signal``
    (on by default) keeps ISIG so ^C still interrupts the program.  The terminal
    settings and the blocking mode of fds 0 and 1 are restored on close and at
    interpreter exit.  The chardev is open from the start; end of stdin closes it.
    Writes while closed (after stdin ended) default to ``error``.
    """

    type_name: ClassVar[str] = "stdio"

    def __init__(self, id: str, signal: bool = True, **kwargs: Any) -> None:
        super().__init__(id, **kwargs)
        self.signal = signal
        self.filename = "stdio"
        self._saved_tty: list[Any] | None = None
        self._saved_blocking: tuple[bool, bool] | None = None
        self._owner = False

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> StdioChardev:
        return cls(id, signal=data["signal"], **chardev_kwargs(data, registry.loop))

    def _open(self) -> bool:
        if not _in_use.acquire(blocking=False):
            raise ChardevError("cannot use stdio by multiple character devices")
        self._owner = True
        self._saved_blocking = (os.get_blocking(0), os.get_blocking(1))
        if os.isatty(0):
            self._saved_tty = termios.tcgetattr(0)
            atexit.register(self._restore)
            self.set_echo(False)
        self._attach_channels(
            FileChannel.from_dup(0, name="stdin"), FileChannel.from_dup(1, name="stdout")
        )
        return True

    def set_echo(self, echo: bool) -> None:
        """Raw mode, with or without echo (a monitor turns echo on for its prompt)."""
        if self._saved_tty is None:
            return
        attrs = raw_mode(
            termios.tcgetattr(0), output_processing=True, echo=echo, signals=self.signal
        )
        attrs[CFLAG] = (attrs[CFLAG] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        termios.tcsetattr(0, termios.TCSANOW, attrs)

    def _restore(self) -> None:
        saved, self._saved_tty = self._saved_tty, None
        if saved is not None:
            atexit.unregister(self._restore)
            termios.tcsetattr(0, termios.TCSANOW, saved)
        blocking, self._saved_blocking = self._saved_blocking, None
        if blocking is not None:
            os.set_blocking(0, blocking[0])
            os.set_blocking(1, blocking[1])

    def _close(self) -> None:
        super()._close()
        if self._owner:
            self._owner = False
            self._restore()
            _in_use.release()
