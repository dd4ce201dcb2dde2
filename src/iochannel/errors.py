"""The one error tree of iochannel.

Every exception class of the package derives from :class:`ChannelError`; the
mix-ins let code that only knows the builtins keep catching what it caught
before::

    ChannelError
     ├── ChannelClosedError          the channel was closed (possibly while waiting)
     ├── ChannelBrokenError          also OSError (errno kept): the peer or transport failed
     │    ├── ChannelBrokenPipeError      also BrokenPipeError
     │    ├── ChannelResetError           also ConnectionResetError
     │    ├── ChannelAbortedError         also ConnectionAbortedError
     │    └── ChannelRefusedError         also ConnectionRefusedError
     ├── ChannelTimeoutError         also TimeoutError: a deadline iochannel was given ran out
     ├── ChannelEOFError             also EOFError: end of stream before any byte
     │    └── IncompleteReadError    end of stream part-way through an exact read
     ├── ChannelBusyError            also RuntimeError: a second task on a one-task resource
     ├── UnsupportedFeatureError     also ValueError: the call needs a missing Feature
     ├── ConfigurationError          also ValueError: a bad option or argument; ``.field``
     └── ChannelProtocolError        a protocol was broken; ``.field`` and ``.reply``
          ├── LocalProtocolError     by us or our caller (a bug on this side)
          └── RemoteProtocolError    by the peer

Modules add their own classes under these (the documentation's "Errors"
section lists them all).  Operating-system errors never escape a channel's
I/O calls (read, write, shutdown, seek, positioned I/O, flush) as bare
:class:`OSError`: :class:`~iochannel.Channel` passes them through
``os_error``, which makes them a :class:`ChannelBrokenError` (or a
:class:`ChannelClosedError` for ``EBADF``) naming the channel, raised ``from``
the original.
"""

from __future__ import annotations

import errno

__all__ = [
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
    "ConfigurationError",
    "IncompleteReadError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "UnsupportedFeatureError",
    "os_error",
]


class ChannelError(Exception):
    """The root of every error iochannel raises on purpose."""


class ChannelClosedError(ChannelError):
    """The channel is closed, or was closed while an operation waited on it."""


class ChannelBrokenError(ChannelError, OSError):
    """The peer or the transport failed; ``errno`` and ``strerror`` are the operating system's.

    Made by ``os_error`` from the original :class:`OSError`
    (``__cause__``), with ``channel`` the name of the channel that failed; a
    layer that detects the failure itself names the channel in the message.
    Either way the message names it.  The channel cannot be used for I/O any
    more; close it.
    """

    channel: str = ""

    def __str__(self) -> str:
        if not self.channel or self.errno is None:
            return super().__str__()
        return f"[Errno {self.errno}] {self.channel}: {self.strerror}"


class ChannelBrokenPipeError(ChannelBrokenError, BrokenPipeError):
    """The peer stopped reading (``EPIPE``), or the write side is shut down."""


class ChannelResetError(ChannelBrokenError, ConnectionResetError):
    """The peer reset the connection (``ECONNRESET``)."""


class ChannelAbortedError(ChannelBrokenError, ConnectionAbortedError):
    """The connection was aborted on this host (``ECONNABORTED``)."""


class ChannelRefusedError(ChannelBrokenError, ConnectionRefusedError):
    """A connection completing in the background was refused (``ECONNREFUSED``)."""


class ChannelTimeoutError(ChannelError, TimeoutError):
    """An operation given a deadline (a *timeout* argument or option) did not finish in time.

    Only these timeouts are :class:`TimeoutError`: a transport that gives up on
    its peer (``ETIMEDOUT``) is a :class:`ChannelBrokenError`.
    """


class ChannelEOFError(ChannelError, EOFError):
    """The peer ended the stream before the first byte of an exact read."""


class IncompleteReadError(ChannelEOFError):
    """The stream ended after *partial* of *expected* bytes of an exact read."""

    def __init__(self, partial: int, expected: int, name: str = "") -> None:
        where = f" on {name}" if name else ""
        super().__init__(
            f"Unexpected end-of-file{where} before all data were read "
            f"({partial} of {expected} bytes)"
        )
        self.partial = partial
        self.expected = expected


class ChannelBusyError(ChannelError, RuntimeError):
    """Another task already uses a resource that allows one at a time."""


class UnsupportedFeatureError(ChannelError, ValueError):
    """An operation needs a :class:`~iochannel.Feature` (or mode) the channel does not have."""


class ConfigurationError(ChannelError, ValueError):
    """A bad option or argument; ``field`` names it (``None`` when no one field is at fault)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ChannelProtocolError(ChannelError):
    """A protocol was broken; raise one of the two subclasses.

    ``field`` names the field at fault (``None`` if the message says it), and
    ``reply`` is what the protocol answers with, where it has such an answer:
    a WebSocket close code, an HTTP status, a QMP error class, a vhost-user
    NAK value.
    """

    def __init__(
        self, message: str, *, field: str | None = None, reply: int | str | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.reply = reply


class LocalProtocolError(ChannelProtocolError):
    """This side (iochannel or its caller) misused the protocol: a bug here, not in the peer."""


class RemoteProtocolError(ChannelProtocolError):
    """The peer broke the protocol; ``reply`` is the answer to send it, if any."""


# Checked in order: the errno-specific builtins, like OSError's own mapping.
_BROKEN_TYPES: tuple[tuple[type[OSError], type[ChannelBrokenError]], ...] = (
    (BrokenPipeError, ChannelBrokenPipeError),
    (ConnectionResetError, ChannelResetError),
    (ConnectionAbortedError, ChannelAbortedError),
    (ConnectionRefusedError, ChannelRefusedError),
)


def os_error(name: str, exc: OSError) -> ChannelError:
    """The channel error for *exc*, raised by an operation on the channel *name*.

    ``EBADF`` means the fd was closed under the operation: the channel is
    closed.  Anything else is a broken channel, of the class that also derives
    from *exc*'s builtin class, with *exc*'s ``errno``.  The caller raises the
    result ``from exc``.
    """
    if exc.errno == errno.EBADF:
        return ChannelClosedError(f"{name}: channel is closed")
    cls = next((c for t, c in _BROKEN_TYPES if isinstance(exc, t)), ChannelBrokenError)
    if exc.errno is None:
        err = cls(f"{name}: {exc or type(exc).__name__}")
    else:
        err = cls(exc.errno, exc.strerror)
    err.channel = name
    return err
