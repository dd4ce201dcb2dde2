"""The ``file`` backend: output to a file, optional input from another."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Mapping
from typing import Any, ClassVar

from .._core.channel import Channel
from .._core.flags import Condition
from .._transports.file import FileChannel
from .channel_backend import ChannelChardev
from .chardev import ChardevError
from .options import (
    REQUIRED,
    ChardevLookup,
    Field,
    Schema,
    chardev_kwargs,
    escape,
    missing_directory,
    register_backend,
)
from .ratelimit import log_peer
from .timestamps import LineStamper

__all__ = ["FileChardev"]

log = logging.getLogger(__name__)


def _legacy(text: str) -> str | None:
    return f"file,path={escape(text[5:])}" if text.startswith("file:") else None


def _preflight(id: str, data: Mapping[str, Any]) -> None:
    error = missing_directory(id, "path", data["out"], "file")
    if error is None and "in" in data and not os.path.exists(data["in"]):
        error = ChardevError(f"chardev '{id}': 'input-path': {data['in']} does not exist")
    if error is not None:
        raise error


@register_backend(
    Schema(
        "file",
        "output to a file, optional input from another",
        {"path": "str", "input-path": "str", "append": "bool", "timestamp": "bool"},
        {
            "in": Field("str"),
            "out": Field("str", REQUIRED),
            "append": Field("bool", False),
            # Extension: a wall-clock stamp before each line.
            "timestamp": Field("bool", False),
        },
        cli_names={"out": "path", "in": "input-path"},
        legacy=_legacy,
        preflight=_preflight,
    )
)
class FileChardev(ChannelChardev):
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

    A write the file refuses (``ENOSPC`` on a full disk, a quota, an I/O error)
    does not close the chardev: the bytes are counted as lost
    (:attr:`~iochannel.chardev.Stats.dropped`, not ``bytes_out``), the error is
    logged (rate-limited) and kept in :attr:`~iochannel.chardev.Chardev.error`,
    and every later write tries the file again; the first one that succeeds
    clears the error and logs how many bytes were lost.
    """

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
        #: Bytes lost since the file last took a write.
        self._lost = 0

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> FileChardev:
        return cls(
            id,
            data["out"],
            in_=data.get("in"),
            append=data["append"],
            timestamp=data.get("timestamp", False),
            **chardev_kwargs(data, registry.loop),
        )

    def _open(self) -> bool:
        try:
            out = FileChannel.open(self.out_path, "a" if self.append else "w")
        except FileNotFoundError:
            error = missing_directory(self.id, "path", self.out_path, "file")
            if error is None:
                raise
            raise error from None
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
        try:
            if self.stamper is None:
                n = self._write_out(data)
            else:
                n = self.stamper.write(data, self._write_out)
        except OSError as exc:
            self._lose(len(data), exc)
            return len(data)
        if n and self.error is not None:
            log.warning(
                "chardev '%s': writing to %s again; %d bytes were lost",
                self.id,
                self.out_path,
                self._lost,
            )
            self.error, self._lost = None, 0
        return n

    def _write_out(self, data: memoryview) -> int | None:
        out = self._out
        if out is None or out.closed:
            return None
        return out.write(data)

    def _lose(self, size: int, exc: OSError) -> None:
        # Taken and lost rather than refused: a full disk must not stall or
        # close what writes here (a hub of viewers, a guest's console).
        self.stats.dropped += size
        self.stats.bytes_out -= size  # Chardev.write counts what it is told was taken
        self._lost += size
        self.error = f"write failed: {exc.strerror or exc}"
        log_peer(
            log,
            self.id,
            logging.WARNING,
            "chardev '%s': cannot write to %s: %s; %d bytes lost so far, later writes retry",
            self.id,
            self.out_path,
            exc.strerror or exc,
            self._lost,
        )

    def _close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        super()._close()
