"""Exceptions raised by channels.

Operating-system failures surface as the usual :class:`OSError` subclasses
(``ConnectionResetError``, ``BrokenPipeError`` …).  The classes below cover what
the channel layer itself decides::

    ChannelError
     ├── ChannelClosedError        the channel was closed (possibly while waiting)
     ├── UnsupportedFeatureError   also ValueError: the call needs a missing Feature
     ├── ChannelEOFError           also EOFError: end of stream before any byte
     │    └── IncompleteReadError  end of stream part-way through an exact read
     └── TaskError                 raised when awaiting a failed :class:`Task`
"""

from __future__ import annotations

__all__ = [
    "ChannelClosedError",
    "ChannelEOFError",
    "ChannelError",
    "IncompleteReadError",
    "UnsupportedFeatureError",
]


class ChannelError(Exception):
    """Base class for errors raised by the channel layer."""


class ChannelClosedError(ChannelError):
    """The channel is closed, or was closed while an operation waited on it."""


class UnsupportedFeatureError(ChannelError, ValueError):
    """An operation needs a :class:`~iochannel.Feature` the channel does not have."""


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
