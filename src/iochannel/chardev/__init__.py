"""Character devices: QEMU's chardev layer with a connection lifecycle that is enforced.

A :class:`Chardev` is a backend (socket, file, pty, ring buffer …); a
:class:`Frontend` is the device side that reads, writes and receives events.
See :mod:`iochannel.chardev.chardev` for the backend contract and
:mod:`iochannel.chardev.events` for the OPENED/CLOSED rules.
"""

from .backoff import Backoff
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
from .command import CommandChardev
from .events import LIFECYCLE, ChardevEvent, LifecycleError, set_strict
from .file import FileChardev
from .frontend import Frontend
from .hub import HubChardev, MemberPolicy, SlowConsumer
from .mux import MuxChardev
from .null import NullChardev
from .options import (
    ChardevLookup,
    ChardevOptionError,
    ChardevRef,
    Schema,
    parse_chardev,
    parse_legacy,
    register_backend,
    validate_spec,
)
from .pipe import PipeChardev
from .pty import PtyChardev
from .registry import ChardevRegistry
from .ringbuf import RingbufChardev
from .serial import SerialChardev
from .server import ChardevServer, SessionChardev, SessionSetup
from .socket import SocketChardev
from .stdio import StdioChardev
from .telnet import TelnetEvent, TelnetFilter
from .udp import UdpChardev

__all__ = [
    "LIFECYCLE",
    "Backoff",
    "ChannelChardev",
    "Chardev",
    "ChardevBusyError",
    "ChardevClosedError",
    "ChardevError",
    "ChardevEvent",
    "ChardevLookup",
    "ChardevOptionError",
    "ChardevRef",
    "ChardevRegistry",
    "ChardevServer",
    "ClosedWrites",
    "CommandChardev",
    "FileChardev",
    "Frontend",
    "HubChardev",
    "LifecycleError",
    "MemberPolicy",
    "MuxChardev",
    "NullChardev",
    "PipeChardev",
    "PtyChardev",
    "RingbufChardev",
    "Schema",
    "SerialChardev",
    "SessionChardev",
    "SessionSetup",
    "SlowConsumer",
    "SocketChardev",
    "Stats",
    "StdioChardev",
    "TelnetEvent",
    "TelnetFilter",
    "UdpChardev",
    "WhileClosed",
    "parse_chardev",
    "parse_legacy",
    "register_backend",
    "set_strict",
    "validate_spec",
]
