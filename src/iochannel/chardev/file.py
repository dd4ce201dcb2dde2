"""The ``file`` backend: output to a file, optional input from another.

Output is opened at start, truncated unless ``append`` is on; with
``timestamp`` on (an extension), every line written gets the local wall-clock
time ``[YYYY-MM-DD HH:MM:SS.mmm] `` in front, for console logs.  The optional
input (``input-path``; a regular file or a fifo) is read as the frontend
accepts it, and its end closes the chardev (CLOSED).  A regular file is
always readable and cannot be watched by the event loop, so its input is
pumped by loop callbacks instead of a read watch.  The chardev is open from
the start.  Writes while closed — only after the input ended — default to
``error``: the file still holds everything written before.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..channel import Channel
from ..file import FileChannel
from ..flags import Condition
from .channel_backend import ChannelChardev
from .timestamps import LineStamper

if TYPE_CHECKING:
    from .registry import ChardevRegistry

__all__ = ["FileChardev"]


class FileChardev(ChannelChardev):
    type_name: ClassVar[str] = "file"

    def __init__(
        self,
        id: str,
        out: str,
        *,
        in_: str | None = None,
        append: bool = False,
        timestamp: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(id, **kwargs)
        self.stamper = LineStamper(wall=True, enabled=True) if timestamp else None
        self.out_path = out
        self.in_path = in_
        self.append = append
        self.filename = f"file:{out}"
        self._regular_input = False
        self._pump: asyncio.Handle | None = None

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevRegistry) -> FileChardev:
        return cls(
            id,
            data["out"],
            in_=data.get("in"),
            append=data["append"],
            timestamp=data.get("timestamp", False),
            **registry.chardev_kwargs(data),
        )

    def _open(self) -> bool:
        out = FileChannel.open(self.out_path, "a" if self.append else "w")
        inp = None
        if self.in_path is not None:
            try:
                # Non-blocking, so a fifo without a writer does not stall the open.
                inp = FileChannel.open(self.in_path, os.O_RDONLY | os.O_NONBLOCK)
            except BaseException:
                out.close()
                raise
            self._regular_input = stat.S_ISREG(os.fstat(inp.fileno()).st_mode)
        self._attach_channels(inp, out)
        return True

    def _update_read_handler(self) -> None:
        if not self._regular_input:
            super()._update_read_handler()
            return
        inp = self._in
        if inp is not None and not inp.closed and self._pump is None and self.be_can_read() > 0:
            self._pump = self.loop.call_soon(self._pump_input, inp)

    def _pump_input(self, inp: Channel) -> None:
        self._pump = None
        if self._in is inp and self._on_readable(inp, Condition.IN):
            self._update_read_handler()

    def _chr_write(self, data: memoryview) -> int | None:
        if self.stamper is None:
            return super()._chr_write(data)
        return self.stamper.write(data, super()._chr_write)

    def _close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        super()._close()
