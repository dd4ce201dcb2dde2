"""Relay: two chardevs made each other's frontend (``--relay chardev=A,peer=B``).

Contract:

* **Bytes.**  What A delivers is written to B and what B delivers is written
  to A.  Each direction holds at most one delivery (``CHUNK`` bytes) that the
  other side has not taken yet; while it does, that direction stops reading
  (its ``can_read`` is 0) and waits for the other side's writable watch.  A slow
  side therefore pauses the other; nothing is buffered without bound.
* **Writes to a closed side** follow that chardev's ``closed-writes`` policy
  (``drop``, ``buffer`` or ``error``); under ``error`` the bytes are dropped and
  counted in :attr:`RelayStats.dropped` rather than stopping the relay.
* **Lifecycle.**  Each side's frontend-open state follows the other side's
  backend state: when A opens, B's frontend is set open, and when A closes, B's
  frontend is set closed (and the other way round).  A hub of viewers relayed
  to a VM's console thereby shows (``query-chardev`` ``frontend-open``)
  whether the console is really there.
* **Notices** (``notices=True``): when A closes, B is written the line
  ``[iochannel: A closed]``, and when A opens again ``[iochannel: A open]``,
  after any of A's output still held, so people watching B (a hub of viewers)
  see the device go and come back.  B's ``closed-writes`` policy applies as to
  any write.  Off by default: a program reading B would get bytes A never sent.
* :meth:`Relay.close` detaches from both chardevs without closing them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..chardev import Chardev, ChardevClosedError, ChardevEvent, Frontend

__all__ = ["CHUNK", "Relay", "RelayStats"]

log = logging.getLogger(__name__)

#: Most bytes one direction takes in at a time (and so holds while the other side is full).
CHUNK = 4096


@dataclasses.dataclass
class RelayStats:
    """Counters of one direction."""

    #: Bytes written to the receiving side.
    bytes: int = 0
    #: Bytes the receiving side refused because it was closed.
    dropped: int = 0


class _Direction:
    """Bytes from *src*'s frontend to *dst*'s frontend, one held chunk at most."""

    def __init__(self, name: str, src: Frontend, dst: Frontend) -> None:
        self.name = name
        self.src = src
        self.dst = dst
        self.stats = RelayStats()
        self._held = b""
        self._watch: Any = None

    def can_read(self) -> int:
        return 0 if self._held else CHUNK

    def read(self, data: bytes) -> None:
        self._held = data
        self._flush()

    def notice(self, text: str) -> None:
        """Send the line *text* after what is held (the bound grows by one line)."""
        self._held += f"\r\n[iochannel: {text}]\r\n".encode()
        if self._watch is None:
            self._flush()

    def _flush(self) -> None:
        while self._held:
            try:
                n = self.dst.write(self._held)
            except (ChardevClosedError, OSError) as exc:
                # The receiving side went away under the ``error`` policy: the
                # bytes have nowhere to go, and holding them would stall the sender.
                log.debug("relay %s: dropping %d bytes: %s", self.name, len(self._held), exc)
                self.stats.dropped += len(self._held)
                self._held = b""
                break
            if n is None:
                if self._watch is None:
                    self._watch = self.dst.add_watch(self._on_writable)
                if self._watch is not None:
                    return
                # No watch possible: the receiver is gone; drop as above.
                self.stats.dropped += len(self._held)
                self._held = b""
                break
            self.stats.bytes += n
            self._held = self._held[n:]

    def _on_writable(self) -> bool:
        self._watch = None
        self._flush()
        if not self._held:
            self.src.accept_input()  # reading stopped while the chunk was held
        return False

    @property
    def held(self) -> int:
        """Bytes taken from the source and not yet written (at most :data:`CHUNK`)."""
        return len(self._held)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._held = b""


class Relay:
    """*chardev* and *peer* as each other's frontend; see the module docstring."""

    def __init__(self, id: str, chardev: Chardev, peer: Chardev, *, notices: bool = False) -> None:
        if chardev is peer:
            raise ValueError(f"relay '{id}': a chardev cannot be relayed to itself")
        self.id = id
        self.chardev = chardev
        self.peer = peer
        self._fe_a = Frontend(chardev)
        try:
            self._fe_b = Frontend(peer)
        except BaseException:
            self._fe_a.deinit()
            raise
        #: A to B ("forward") and B to A ("back").
        self.forward = _Direction(f"{id} {chardev.id}->{peer.id}", self._fe_a, self._fe_b)
        self.back = _Direction(f"{id} {peer.id}->{chardev.id}", self._fe_b, self._fe_a)
        # set_open=False: the frontend-open states are driven by the other side's events.
        self._fe_a.set_handlers(
            self.forward.can_read,
            self.forward.read,
            lambda ev: self._event(ev, self._fe_b, self.forward if notices else None),
            set_open=False,
        )
        self._fe_b.set_handlers(
            self.back.can_read,
            self.back.read,
            lambda ev: self._event(ev, self._fe_a),
            set_open=False,
        )

    def _event(
        self, event: ChardevEvent, other: Frontend, notify: _Direction | None = None
    ) -> None:
        if event == ChardevEvent.OPENED:
            other.set_open(True)
            if notify is not None and self.chardev.stats.opens > 1:
                notify.notice(f"{self.chardev.id} open")
        elif event == ChardevEvent.CLOSED:
            other.set_open(False)
            if notify is not None:
                notify.notice(f"{self.chardev.id} closed")

    def query(self) -> dict[str, Any]:
        """The relay's state for the management API."""
        return {
            "id": self.id,
            "chardev": self.chardev.id,
            "peer": self.peer.id,
            "bytes-forward": self.forward.stats.bytes,
            "bytes-back": self.back.stats.bytes,
            "dropped-forward": self.forward.stats.dropped,
            "dropped-back": self.back.stats.dropped,
        }

    def close(self) -> None:
        """Detach from both chardevs (they stay open)."""
        self.forward.close()
        self.back.close()
        self._fe_a.deinit()
        self._fe_b.deinit()
