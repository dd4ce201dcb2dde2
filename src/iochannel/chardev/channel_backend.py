"""ChannelChardev: a chardev whose input and output are iochannel channels.

The common machinery of every fd-backed backend (socket connections, files,
pipes, ptys, serial lines, stdio):

* input is read from the input channel on the chardev's loop only while the
  frontend accepts it (at most ``min(4096, can_read)`` bytes per delivery);
  at ``can_read() == 0`` the read watch is dropped until ``accept_input``;
* output goes to the output channel without blocking; a writable watch on it
  is the backpressure;
* fds that arrive with input (channels with ``FD_PASS``) are kept for
  :meth:`get_msgfds` until the next batch arrives, which closes an unread one;
  :meth:`set_msgfds` attaches fds to the next write;
* end of input or an I/O error calls :meth:`_on_disconnect` (by default:
  CLOSED), which connection-oriented subclasses override to re-arm a
  listener or start reconnecting.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from .._core.channel import Channel, close_fds
from .._core.flags import Condition, Feature
from .._core.watch import Watch
from ..errors import ChannelError, ChannelResetError
from .chardev import READ_CHUNK, Chardev, ChardevError, WatchCallback
from .events import ChardevEvent
from .ratelimit import log_peer

__all__ = ["ChannelChardev"]

log = logging.getLogger(__name__)


class ChannelChardev(Chardev):
    """A chardev over an input channel and an output channel (maybe the same one)."""

    def __init__(self, id: str, **kwargs: Any) -> None:
        super().__init__(id, **kwargs)
        self._in: Channel | None = None
        self._out: Channel | None = None
        self._read_watch: Watch | None = None
        self._msgfds: list[int] = []
        self._send_fds: list[int] = []
        self._buf = bytearray(READ_CHUNK)

    # ---- channels -------------------------------------------------------

    def _attach_channels(self, inp: Channel | None, out: Channel | None) -> None:
        """Start using *inp*/*out* (non-blocking from now on) and arm input."""
        self._in, self._out = inp, out
        for ch in {id(c): c for c in (inp, out) if c is not None}.values():
            ch.set_blocking(False)
        self._update_read_handler()

    def _release_channels(self) -> None:
        """Stop input and close the channels."""
        if self._read_watch is not None:
            self._read_watch.cancel()
            self._read_watch = None
        chans = {id(c): c for c in (self._in, self._out) if c is not None}
        self._in = self._out = None
        for ch in chans.values():
            ch.close()
        close_fds(self._msgfds)
        self._msgfds = []

    @property
    def input_channel(self) -> Channel | None:
        return self._in

    @property
    def output_channel(self) -> Channel | None:
        return self._out

    # ---- input ------------------------------------------------------------

    def _update_read_handler(self) -> None:
        inp = self._in
        if inp is None or inp.closed:
            return
        if self.be_can_read() > 0:
            if self._read_watch is None or not self._read_watch.active:
                self._read_watch = inp.add_watch(Condition.IN, self._on_readable, loop=self.loop)
        elif self._read_watch is not None:
            self._read_watch.cancel()
            self._read_watch = None

    def _on_readable(self, channel: Channel, cond: Condition) -> bool:
        want = min(self.be_can_read(), READ_CHUNK)
        if want <= 0:
            self._read_watch = None
            return False
        fds: list[int] | None = [] if channel.has_feature(Feature.FD_PASS) else None
        view = memoryview(self._buf)[:want]
        try:
            n = channel.readv((view,), fds=fds)
        except (OSError, ChannelError) as exc:  # layers fail with ChannelError
            log_peer(log, self.id, logging.INFO, "chardev '%s': read failed: %s", self.id, exc)
            self._read_watch = None
            self._on_disconnect()
            return False
        if n is None:
            return True
        if fds:
            close_fds(self._msgfds)  # an unread earlier batch is stale now
            self._msgfds = fds
        if n == 0:
            self._read_watch = None
            self._on_disconnect()
            return False
        self.be_write(view[:n])
        if self._in is not channel:  # the frontend disconnected us meanwhile
            return False
        if self.be_can_read() <= 0:
            self._read_watch = None
            return False
        return True

    def disconnect(self) -> None:
        """Drop the channels now, as if the peer had gone (CLOSED follows)."""
        if self._in is not None or self._out is not None:
            self._on_disconnect()

    def _on_disconnect(self) -> None:
        """End of input, an I/O error or :meth:`disconnect`; by default the backend closes."""
        self._release_channels()
        self.be_event(ChardevEvent.CLOSED)

    # ---- output -----------------------------------------------------------

    def _chr_write(self, data: memoryview) -> int | None:
        out = self._out
        if out is None or out.closed:
            return None
        fds, self._send_fds = self._send_fds, []
        try:
            n = out.writev((data,), fds=fds)
        except (OSError, ChannelError) as exc:
            log_peer(log, self.id, logging.INFO, "chardev '%s': write failed: %s", self.id, exc)
            # Let pending input be read before reporting the disconnect.
            if self._in is None or self._read_watch is None:
                self._on_disconnect()
            if isinstance(exc, OSError):
                raise
            # Chardev writes report a lost peer as OSError: a TLS or WebSocket failure too.
            raise ChannelResetError(errno.ECONNRESET, f"chardev '{self.id}': {exc}") from exc
        if n is None:
            self._send_fds = fds  # not sent: keep them for the retry
        return n

    def _add_write_watch(self, callback: WatchCallback) -> Any:
        out = self._out
        if out is None or out.closed:
            return None
        return out.add_watch(Condition.OUT, lambda _ch, _c: callback(), loop=self.loop)

    # ---- fds --------------------------------------------------------------

    def get_msgfds(self) -> list[int]:
        fds, self._msgfds = self._msgfds, []
        return fds

    def set_msgfds(self, fds: list[int]) -> None:
        """Send *fds* with the next write; the caller keeps ownership of them."""
        out = self._out
        if out is None or not out.has_feature(Feature.FD_PASS):
            raise ChardevError(f"chardev '{self.id}' cannot pass file descriptors now")
        self._send_fds = list(fds)

    def _close(self) -> None:
        self._release_channels()
