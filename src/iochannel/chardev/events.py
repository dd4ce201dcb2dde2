"""Chardev events and the per-registration lifecycle guard.

Events (QEMU's numbering): BREAK, OPENED, MUX_IN, MUX_OUT, CLOSED.

The lifecycle rule, enforced here rather than left to each frontend:

* a frontend *registration* (one :meth:`Frontend.set_handlers` with handlers)
  starts closed and sees OPENED and CLOSED strictly alternating, CLOSED only
  after OPENED;
* attaching to a backend that is already open delivers exactly one OPENED;
* a backend that reports OPENED twice, or CLOSED while closed, is buggy: in
  strict mode (the test suite turns it on) that raises
  :class:`LifecycleError`, otherwise the duplicate is logged and absorbed so the
  frontend still sees a consistent sequence.

:class:`LifecycleView` is the sans-I/O state machine for one registration:
feed it backend events, it answers which ones to deliver.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Mapping
from typing import Final

from ..errors import LocalProtocolError

__all__ = [
    "LIFECYCLE",
    "ChardevEvent",
    "LifecycleError",
    "LifecycleView",
    "observe_changes",
    "set_strict",
]

log = logging.getLogger(__name__)


class ChardevEvent(enum.IntEnum):
    """A chardev event, numbered as QEMU's ``QEMUChrEvent``.

    ``OPENED``/``CLOSED`` alternate for each frontend registration (see
    ``LifecycleView``); ``BREAK`` is a serial break from the backend;
    ``MUX_IN``/``MUX_OUT`` tell a mux frontend it gained or lost the focus.
    """

    BREAK = 0
    OPENED = 1
    MUX_IN = 2
    MUX_OUT = 3
    CLOSED = 4


class LifecycleError(LocalProtocolError, AssertionError):
    """A backend broke the OPENED/CLOSED alternation (raised in strict mode).

    Also an :class:`AssertionError`: it is a failed invariant of this side, a bug
    in a backend or frontend, never the peer's doing.
    """


_strict = os.environ.get("IOCHANNEL_STRICT_LIFECYCLE", "") not in ("", "0")


def set_strict(on: bool) -> None:
    """Raise :class:`LifecycleError` on lifecycle violations instead of absorbing them."""
    global _strict
    _strict = on


_observers: list[Callable[[], None]] = []


def observe_changes(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` whenever a chardev opens or closes, a frontend opens or
    closes its end, or a hub's members change, on the thread where it happened;
    returns a function that stops it.

    Management code (QMP events) reacts to these instead of polling.
    """
    _observers.append(callback)

    def stop() -> None:
        try:
            _observers.remove(callback)
        except ValueError:
            pass

    return stop


def changed() -> None:
    """Tell the observers that some chardev's state changed."""
    for callback in tuple(_observers):
        callback()


#: The lifecycle of one frontend registration: (open?, event) → open? after
#: delivering it, or why the event is not delivered.  The only statement of the
#: rule: :class:`LifecycleView` follows it and the docs draw it.
LIFECYCLE: Final[Mapping[tuple[bool, ChardevEvent], bool | str]] = {
    (False, ChardevEvent.OPENED): True,
    (False, ChardevEvent.CLOSED): "CLOSED while not open",
    (True, ChardevEvent.OPENED): "OPENED while already open",
    (True, ChardevEvent.CLOSED): False,
    **{
        (state, event): state
        for state in (False, True)
        for event in (ChardevEvent.BREAK, ChardevEvent.MUX_IN, ChardevEvent.MUX_OUT)
    },
}


class LifecycleView:
    """What one frontend registration has been told: open or closed (:data:`LIFECYCLE`)."""

    __slots__ = ("label", "open")

    def __init__(self, label: str) -> None:
        self.label = label
        self.open = False

    def filter(self, event: ChardevEvent, *, duplicate_ok: bool = False) -> bool:
        """Whether to deliver *event*; updates the view.

        *duplicate_ok* marks events the core synthesises while syncing a view
        (attach, restore), where "already in that state" is expected.
        """
        after = LIFECYCLE[self.open, event]
        if isinstance(after, str):
            return self._violation(after, duplicate_ok)
        self.open = after
        return True

    def _violation(self, what: str, expected: bool) -> bool:
        if not expected:
            if _strict:
                raise LifecycleError(f"chardev '{self.label}': {what}")
            log.warning("chardev '%s': %s (suppressed)", self.label, what)
        return False
