"""The ``pty`` backend: a pseudo-terminal whose slave side a program (or person) opens."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from .._transports.file import FileChannel
from .channel_backend import ChannelChardev
from .chardev import ClosedWrites, WhileClosed
from .events import ChardevEvent
from .options import ChardevLookup, Field, Schema, chardev_kwargs, escape, register_backend

__all__ = ["PtyChardev"]

log = logging.getLogger(__name__)

#: Seconds between checks for a reader while closed.
POLL_INTERVAL = 0.1


def _legacy(text: str) -> str | None:
    if text == "pty":
        return "pty"
    return f"pty,path={escape(text[4:])}" if text.startswith("pty:") else None


@register_backend(
    Schema(
        "pty",
        "a pseudo-terminal; path= adds a symlink to it",
        {"path": "str"},
        {"path": Field("str")},
        legacy=_legacy,
    )
)
class PtyChardev(ChannelChardev):
    """The ``pty`` backend: a pseudo-terminal whose slave side a program (or person) opens.

    The pty is created raw when the chardev opens; its slave path is announced as
    "char device redirected to /dev/pts/N (label ID)" on stderr and is
    ``pty_path`` (QMP ``chardev-add`` returns it).  ``path=``
    additionally makes a symlink to it, removed on close.

    The chardev starts closed.  Every 100 ms it checks whether a reader has the
    slave open (the master stops reporting HUP): it sends OPENED when one
    appears and CLOSED when it leaves (also noticed sooner, by the end of
    input).  Writes while closed default to ``buffer``: output produced before a
    reader attaches — a boot banner — reaches it when it does, instead of being
    dropped as QEMU drops it.
    """

    type_name: ClassVar[str] = "pty"
    default_closed_writes: ClassVar[ClosedWrites] = ClosedWrites(WhileClosed.BUFFER)

    def __init__(self, id: str, path: str | None = None, **kwargs: Any) -> None:
        super().__init__(id, **kwargs)
        self.link_path = path
        self.pty_path: str | None = None
        self._master: FileChannel | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._linked = False

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> PtyChardev:
        return cls(id, data.get("path"), **chardev_kwargs(data, registry.loop))

    def _open(self) -> bool:
        master, slave = FileChannel.open_pty(raw=True)
        self._master = master
        self.pty_path = slave
        self.filename = f"pty:{slave}"
        if self.link_path is not None:
            os.symlink(slave, self.link_path)
            self._linked = True
        print(f"char device redirected to {slave} (label {self.id})", file=sys.stderr)
        master.set_blocking(False)
        self._schedule_check()
        return False

    def _schedule_check(self) -> None:
        self._timer = self.loop.call_later(POLL_INTERVAL, self._check_reader)

    def _check_reader(self) -> None:
        """Follow the slave side: HUP means no reader (also noticed while input is paused)."""
        master = self._master
        if master is None:
            self._timer = None
            return
        poller = select.poll()
        poller.register(master.fileno(), select.POLLOUT)
        hup = any(ev & select.POLLHUP for _, ev in poller.poll(0))
        if hup and self.be_open:
            self._on_disconnect()
        elif not hup and not self.be_open:
            self._attach_channels(master, master)
            self.be_event(ChardevEvent.OPENED)
        self._schedule_check()

    def _on_disconnect(self) -> None:
        # The reader left: keep the master for the next one.
        if self._read_watch is not None:
            self._read_watch.cancel()
            self._read_watch = None
        self._in = self._out = None
        self.be_event(ChardevEvent.CLOSED)

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        master, self._master = self._master, None
        self._in = self._out = None
        self._release_channels()
        if master is not None:
            master.close()
        if self._linked and self.link_path is not None:
            self._linked = False
            try:
                if os.readlink(self.link_path) == self.pty_path:
                    os.unlink(self.link_path)
            except OSError as exc:
                log.info("chardev '%s': cannot remove %s: %s", self.id, self.link_path, exc)
