"""ViewerChardev: one WebSocket viewer of the console, as a hub member.

A viewer is a :class:`~iochannel.chardev.SessionChardev` over an established
WebSocket channel: open from birth, CLOSED once when the connection ends,
never reused.  What it adds:

* **Replay first.**  *replay* (the console's recent output) is written before
  the viewer opens, under a ``buffer`` closed-writes policy sized for it, so
  the chardev sends it ahead of any later output; if the socket does not take
  it all at once, a writable watch sends the rest even when the console stays
  quiet.
* **The page's messages** (:mod:`iochannel.web.protocol`) are decoded from
  the input: :class:`~iochannel.web.protocol.Input` goes to the hub's
  frontend, :class:`~iochannel.web.protocol.Resize` to ``on_resize(rows,
  cols)``.  Input still respects the frontend's ``can_read``: decoded bytes it
  cannot take yet wait (at most one message plus one read) and reading pauses
  until they are delivered.  Bytes that are not a valid message end the
  viewer.
* **Messages of the server's own** (:meth:`ViewerChardev.tell`, the device's
  state) go out whole, between two writes of output: output waits until a
  message is fully sent.
* **Roles.**  A :attr:`Role.READ_ONLY` viewer's input and resizes are refused
  here, on the server: counted in :attr:`ViewerChardev.refused`, logged once
  per viewer, and dropped; the viewer stays connected and keeps watching.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from .._core.channel import Buffer, Channel
from ..chardev import ChardevEvent, ClosedWrites, SessionChardev, WhileClosed
from ..chardev.chardev import Chardev
from .protocol import ClientDecoder, Input, Message, ViewerProtocolError

__all__ = ["ResizeCallback", "Role", "ViewerChardev"]

log = logging.getLogger(__name__)

ResizeCallback = Callable[[int, int], None]


class Role(enum.Enum):
    """What a viewer may do; the value is the role's name in URLs."""

    READ_WRITE = "rw"
    READ_ONLY = "ro"


class ViewerChardev(SessionChardev):
    """One viewer over *channel* (see the module docstring)."""

    type_name: ClassVar[str] = "web-viewer"

    def __init__(
        self,
        id: str,
        channel: Channel,
        role: Role,
        *,
        replay: bytes = b"",
        on_resize: ResizeCallback | None = None,
        on_end: Callable[[SessionChardev], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            id,
            channel,
            filename=f"websocket:{role.value}",
            on_end=on_end,
            closed_writes=ClosedWrites(WhileClosed.BUFFER, limit=len(replay)),
            **kwargs,
        )
        self.role = role
        #: Messages refused because the viewer is read-only.
        self.refused = 0
        self._on_resize = on_resize
        self._decoder = ClientDecoder()
        self._input = bytearray()
        self._told = bytearray()
        if replay:
            self.write(replay)

    def be_event(self, event: ChardevEvent) -> None:
        super().be_event(event)
        if event == ChardevEvent.OPENED and self.pending_bytes:
            self.add_watch(lambda: not self._flush_pending())

    # ---- the server's own messages ---------------------------------------

    def tell(self, message: bytes) -> None:
        """Send *message* ahead of later output, never split by it; dropped once closed."""
        with self.write_lock:
            if not self.be_open:
                return
            pending = bool(self._told)
            self._told += message
            if not pending and not self._send_told():
                self.add_watch(self._send_told_later)

    def _send_told(self) -> bool:
        """Send what is left of the told messages; True when all went out."""
        n = super()._chr_write(memoryview(self._told))
        if n:
            del self._told[:n]
        return not self._told

    def _send_told_later(self) -> bool:
        with self.write_lock:
            try:
                return self.be_open and not self._send_told()
            except OSError:
                return False  # the session ends; its end is handled there

    def _chr_write(self, data: memoryview) -> int | None:
        if self._told and not self._send_told():
            return None
        return super()._chr_write(data)

    # ---- input ------------------------------------------------------------

    def be_can_read(self) -> int:
        # Decoded input still waiting for the frontend holds back further reads.
        return 0 if self._input else super().be_can_read()

    def be_write(self, data: Buffer) -> None:
        try:
            messages = self._decoder.feed(data)
        except ViewerProtocolError as exc:
            log.warning("web viewer '%s': %s: disconnecting it", self.id, exc)
            self.disconnect()
            return
        for message in messages:
            self._take(message)
        self._deliver_input()

    def _take(self, message: Message) -> None:
        if self.role is not Role.READ_WRITE:
            if not self.refused:
                log.warning("web viewer '%s' is read-only: refusing its input", self.id)
            self.refused += 1
        elif isinstance(message, Input):
            self._input += message.data
        elif self._on_resize is not None:
            self._on_resize(message.rows, message.cols)

    def _deliver_input(self) -> None:
        while self._input and not self.closed:
            room = Chardev.be_can_read(self)
            if room <= 0:
                return
            piece = bytes(self._input[:room])
            del self._input[:room]
            Chardev.be_write(self, piece)

    def _update_read_handler(self) -> None:
        self._deliver_input()
        super()._update_read_handler()
