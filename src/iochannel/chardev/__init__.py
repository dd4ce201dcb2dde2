"""Character devices: QEMU's chardev layer with a connection lifecycle that is enforced.

A :class:`Chardev` is a backend (socket, file, pty, ring buffer …); a
:class:`Frontend` is the device side that reads, writes and receives events.
See ``iochannel.chardev.chardev`` for the backend contract and
``iochannel.chardev.events`` for the OPENED/CLOSED rules.
"""

from .backoff import Backoff
from .channel_backend import ChannelChardev
from .chardev import (
    AttachedFrontend,
    Chardev,
    ChardevBusyError,
    ChardevClosedError,
    ChardevError,
    ClosedWrites,
    Stats,
    WhileClosed,
    WriteWatch,
)
from .command import CommandChardev
from .events import LIFECYCLE, ChardevEvent, LifecycleError, set_strict
from .file import FileChardev
from .frontend import Frontend
from .hub import (
    Fanout,
    FanoutChardev,
    HubChardev,
    Member,
    MemberPolicy,
    MemberStats,
    SlowConsumer,
)
from .mux import MuxChardev
from .null import NullChardev
from .options import (
    REQUIRED,
    ChardevLookup,
    ChardevOptionError,
    ChardevRef,
    Field,
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
    "REQUIRED",
    "AttachedFrontend",
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
    "Fanout",
    "FanoutChardev",
    "Field",
    "FileChardev",
    "Frontend",
    "HubChardev",
    "LifecycleError",
    "Member",
    "MemberPolicy",
    "MemberStats",
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
    "WriteWatch",
    "parse_chardev",
    "parse_legacy",
    "register_backend",
    "set_strict",
    "validate_spec",
]
