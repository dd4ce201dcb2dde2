"""Flags and enumerations shared by every channel.

* :class:`Feature` — optional capabilities a channel advertises.  A channel
  advertises exactly what its implementation supports; asking for a feature it
  lacks (passing fds, peeking, seeking, shutting down) raises
  :class:`~iochannel.errors.UnsupportedFeatureError` before any I/O happens.
* :class:`ReadFlag` / :class:`WriteFlag` — per-call modifiers.
* :class:`Shutdown` — which half (or both) of a duplex channel to shut down.
* :class:`Condition` — readiness conditions used by watches and waits.  These
  reflect the *layer* being waited on: a TLS channel holding decrypted bytes is
  readable even when its socket is not.
"""

from __future__ import annotations

import enum
import select

__all__ = ["Condition", "Feature", "ReadFlag", "Shutdown", "WriteFlag"]


class Feature(enum.IntFlag):
    """Optional channel capabilities (QEMU's ``QIO_CHANNEL_FEATURE_*``)."""

    NONE = 0
    #: Passing file descriptors alongside data (AF_UNIX sockets).
    FD_PASS = enum.auto()
    #: :meth:`Channel.shutdown` of one or both directions.
    SHUTDOWN = enum.auto()
    #: The channel is a listening socket: :meth:`SocketChannel.accept` works.
    LISTEN = enum.auto()
    #: ``WriteFlag.ZERO_COPY`` (Linux ``MSG_ZEROCOPY``) plus :meth:`Channel.flush`.
    WRITE_ZERO_COPY = enum.auto()
    #: ``ReadFlag.MSG_PEEK`` reads that leave the data queued.
    READ_MSG_PEEK = enum.auto()
    #: :meth:`~iochannel.Channel.seek`, :meth:`~iochannel.Channel.pread` and
    #: :meth:`~iochannel.Channel.pwrite`.
    SEEKABLE = enum.auto()


class ReadFlag(enum.IntFlag):
    """Modifiers for one read call."""

    NONE = 0
    #: Return data without consuming it (needs ``Feature.READ_MSG_PEEK``).
    MSG_PEEK = enum.auto()
    #: Layers only (TLS): a peer closing without close_notify reads as EOF.
    RELAXED_EOF = enum.auto()
    #: Received fds keep their O_NONBLOCK state instead of being made blocking.
    FD_PRESERVE_BLOCKING = enum.auto()


class WriteFlag(enum.IntFlag):
    """Modifiers for one write call."""

    NONE = 0
    #: Send without copying (needs ``Feature.WRITE_ZERO_COPY``); the buffers
    #: must stay untouched until :meth:`Channel.flush` returns.
    ZERO_COPY = enum.auto()


class Shutdown(enum.IntFlag):
    """Directions for :meth:`Channel.shutdown`; a bitmask, ``BOTH = READ | WRITE``."""

    READ = 1
    WRITE = 2
    BOTH = 3


class Condition(enum.IntFlag):
    """Readiness conditions, with the same bit values as :func:`select.poll`."""

    NONE = 0
    IN = select.POLLIN
    OUT = select.POLLOUT
    ERR = select.POLLERR
    HUP = select.POLLHUP
