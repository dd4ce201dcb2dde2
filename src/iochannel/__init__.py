"""iochannel: QEMU's byte-stream stack for Python.

One channel API (:class:`Channel`) over sockets, files, pipes, commands and
memory — blocking, non-blocking and asyncio, from any thread — with TLS and
WebSocket layers, character devices and a vhost-user back-end built on it.
"""

from .address import (
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
from .buffer import BufferChannel
from .channel import Channel
from .command import CommandChannel
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
from .file import FileChannel
from .flags import Condition, Feature, ReadFlag, Shutdown, WriteFlag
from .fromfd import from_fd
from .memory import MemoryChannel, memory_pair
from .netlistener import NetListener
from .null import NullChannel
from .socket import MAX_FDS, SocketChannel
from .stapled import StapledChannel, pipe_pair
from .task import Task
from .tls import TLSChannel, TLSError
from .watch import Watch
from .websock import WebsockChannel, WebsockError

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
