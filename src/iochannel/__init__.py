"""iochannel: QEMU's byte-stream stack for Python.

One channel API (:class:`Channel`) over sockets, files, pipes, commands and
memory — blocking, non-blocking and asyncio, from any thread — with TLS and
WebSocket layers, character devices and a vhost-user back-end built on it.
"""

from ._core.channel import Channel
from ._core.flags import Condition, Feature, ReadFlag, Shutdown, WriteFlag
from ._core.task import Task
from ._core.watch import Watch
from ._layers.tls import TLSChannel, TLSError
from ._layers.websock import WebsockChannel, WebsockError
from ._transports.address import (
    Address,
    AddressError,
    FdAddress,
    InetAddress,
    UnixAddress,
    VsockAddress,
    format_address,
    parse_address,
    resolve,
)
from ._transports.buffer import BufferChannel
from ._transports.command import CommandChannel
from ._transports.file import FileChannel
from ._transports.fromfd import from_fd
from ._transports.memory import MemoryChannel, memory_pair
from ._transports.netlistener import NetListener
from ._transports.null import NullChannel
from ._transports.socket import MAX_FDS, SocketChannel
from ._transports.stapled import StapledChannel, pipe_pair
from .errors import (
    ChannelAbortedError,
    ChannelBrokenError,
    ChannelBrokenPipeError,
    ChannelBusyError,
    ChannelClosedError,
    ChannelEOFError,
    ChannelError,
    ChannelProtocolError,
    ChannelRefusedError,
    ChannelResetError,
    ChannelTimeoutError,
    ConfigurationError,
    IncompleteReadError,
    LocalProtocolError,
    RemoteProtocolError,
    UnsupportedFeatureError,
)

__all__ = [
    "MAX_FDS",
    "Address",
    "AddressError",
    "BufferChannel",
    "Channel",
    "ChannelAbortedError",
    "ChannelBrokenError",
    "ChannelBrokenPipeError",
    "ChannelBusyError",
    "ChannelClosedError",
    "ChannelEOFError",
    "ChannelError",
    "ChannelProtocolError",
    "ChannelRefusedError",
    "ChannelResetError",
    "ChannelTimeoutError",
    "CommandChannel",
    "Condition",
    "ConfigurationError",
    "FdAddress",
    "Feature",
    "FileChannel",
    "IncompleteReadError",
    "InetAddress",
    "LocalProtocolError",
    "MemoryChannel",
    "NetListener",
    "NullChannel",
    "ReadFlag",
    "RemoteProtocolError",
    "Shutdown",
    "SocketChannel",
    "StapledChannel",
    "TLSChannel",
    "TLSError",
    "Task",
    "UnixAddress",
    "UnsupportedFeatureError",
    "VsockAddress",
    "Watch",
    "WebsockChannel",
    "WebsockError",
    "WriteFlag",
    "format_address",
    "from_fd",
    "memory_pair",
    "parse_address",
    "pipe_pair",
    "resolve",
]
