"""Character devices: QEMU's chardev layer with a connection lifecycle that is enforced.

A :class:`Chardev` is a backend (socket, file, pty, ring buffer …); a
:class:`Frontend` is the device side that reads, writes and receives events.
See :mod:`iochannel.chardev.chardev` for the backend contract and
:mod:`iochannel.chardev.events` for the OPENED/CLOSED rules.
"""

from .channel_backend import ChannelChardev
from .chardev import (
    Chardev,
    ChardevBusyError,
    ChardevClosedError,
    ChardevError,
    ClosedWrites,
    Stats,
    WhileClosed,
)
from .events import ChardevEvent, LifecycleError, set_strict
from .frontend import Frontend
from .null import NullChardev
from .ringbuf import RingbufChardev

__all__ = [
    "ChannelChardev",
    "Chardev",
    "ChardevBusyError",
    "ChardevClosedError",
    "ChardevError",
    "ChardevEvent",
    "ClosedWrites",
    "Frontend",
    "LifecycleError",
    "NullChardev",
    "RingbufChardev",
    "Stats",
    "WhileClosed",
    "set_strict",
]
