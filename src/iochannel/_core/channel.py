"""The abstract byte channel: one API for sockets, files, pipes, commands, memory and layers.

Contract (every implementation keeps it; implementations document only what
they add):

* ``readv(buffers)`` fills the buffers in order and returns the byte count.  A
  blocking channel returns at least one byte, or ``0`` only at end of stream.  A
  non-blocking channel returns ``None`` when it would block (as
  :class:`io.RawIOBase` does); ``None`` is never an error.
* ``writev(buffers)`` may write partially and returns the count, or ``None``
  when a non-blocking channel would block.  After ``None``, call it again with
  the same bytes: a layer (TLS, WebSocket) may already hold them encoded and
  finishes sending them first (``writev_all`` does this).
* File descriptors: ``readv(..., fds=list)`` appends received fds to *list* only
  when the call succeeds; the caller owns them, they are close-on-exec and made
  blocking unless ``ReadFlag.FD_PRESERVE_BLOCKING`` (as QEMU does).  O_NONBLOCK
  belongs to the open file, which the sender shares: a peer that keeps using
  its copy of the fd (an eventfd QEMU polls) needs ``FD_PRESERVE_BLOCKING``.
  ``writev(..., fds=...)`` sends the fds with the first byte written.  Both
  need ``Feature.FD_PASS``.
* ``*_all`` forms loop until every byte moved, waiting when the channel would
  block.  ``readv_all_eof`` returns ``False`` for a clean end of stream before
  the first byte and raises :class:`IncompleteReadError` after a partial read;
  ``readv_all`` raises :class:`ChannelEOFError` in the first case too.  On any
  error the fds received so far are closed.
* ``a*`` coroutines are the same operations for asyncio.  They wait on the loop
  running the calling coroutine, looked up at each wait: reading on loop A in
  one thread while writing on loop B in another needs no attach/detach call.
  They switch the channel to non-blocking mode on first use.
* ``wait(cond)`` blocks until the condition holds, ``await wait_async(cond)``
  is its asyncio form, ``add_watch`` a persistent callback on a loop.
  ``wake_read()`` (thread-safe) ends a pending read wait early: the wait
  returns ``Condition.NONE``.  ``close()`` is idempotent and ends every pending
  wait with :class:`ChannelClosedError` and cancels every watch.
* ``set_delay`` and ``set_cork`` are hints that never fail; ``shutdown``,
  ``seek``/``pread``/``pwrite`` and ``flush`` need their :class:`Feature`.
* Errors come from :mod:`iochannel.errors`.  An :class:`OSError` of the
  transport in any of the calls above is raised as a
  :class:`~iochannel.errors.ChannelBrokenError` naming the channel (``EBADF``
  as :class:`ChannelClosedError`), chained from the original and also an
  instance of its builtin class (``ConnectionResetError`` …).

Implementations override the ``_``-prefixed hooks, and only those:
``_readv``, ``_writev``, ``_close`` and ``_set_blocking`` are mandatory;
``_wait_fds`` and ``_pending`` describe readiness; the rest are optional.
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from ..errors import (
    ChannelClosedError,
    ChannelEOFError,
    ChannelError,
    IncompleteReadError,
    UnsupportedFeatureError,
    os_error,
)
from .flags import Condition, Feature, ReadFlag, Shutdown, WriteFlag
from .watch import Continuation, FdSpec, Waits, Watch, add_watch

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

if TYPE_CHECKING:
    from typing import Self

__all__ = ["Buffer", "Channel", "WatchCallback"]

T = TypeVar("T")

#: ``callback(channel, condition) -> keep`` — return ``False`` to remove the watch.
WatchCallback = Callable[["Channel", Condition], bool]

_IN = Condition.IN
_OUT = Condition.OUT
_FD_PASS = int(Feature.FD_PASS)
_READ_MSG_PEEK = int(Feature.READ_MSG_PEEK)
_WRITE_ZERO_COPY = int(Feature.WRITE_ZERO_COPY)
_MSG_PEEK = int(ReadFlag.MSG_PEEK)
_ZERO_COPY = int(WriteFlag.ZERO_COPY)

# Linux caps one readv/writev/sendmsg at IOV_MAX buffers.
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def close_fds(fds: Sequence[int]) -> None:
    """Close every fd in *fds*, ignoring ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _views(buffers: Sequence[Buffer]) -> list[memoryview]:
    views = []
    for b in buffers:
        v = memoryview(b)
        if v.format != "B" or v.ndim != 1:
            v = v.cast("B")
        if len(v):
            views.append(v)
    return views


class _Cursor:
    """Position inside a list of memoryviews, advanced after partial transfers."""

    __slots__ = ("index", "views")

    def __init__(self, views: list[memoryview]) -> None:
        self.views = views
        self.index = 0

    def remaining(self) -> list[memoryview]:
        return self.views[self.index : self.index + IOV_MAX]

    def advance(self, n: int) -> None:
        views = self.views
        i = self.index
        while n:
            size = len(views[i])
            if n < size:
                views[i] = views[i][n:]
                break
            n -= size
            i += 1
        self.index = i

    @property
    def done(self) -> bool:
        return self.index >= len(self.views)


class Channel:
    """Abstract base class of every channel; see the module docstring for the contract."""

    __slots__ = (
        "__weakref__",
        "_blocking",
        "_closed",
        "_features",
        "_name",
        "_waits",
    )

    def __init__(self, features: Feature = Feature.NONE, name: str = "") -> None:
        # Plain ints on hot paths: enum.Flag arithmetic costs about a microsecond.
        self._features = int(features)
        self._name = name or type(self).__name__
        self._closed = False
        self._blocking = True
        self._waits: Waits | None = None

    # ---- identity and features ----------------------------------------

    @property
    def name(self) -> str:
        """A label for logs and error messages."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def features(self) -> Feature:
        """The optional features this channel supports."""
        return Feature(self._features)

    def has_feature(self, feature: Feature) -> bool:
        return self._features & feature == feature

    def _set_feature(self, feature: Feature, on: bool = True) -> None:
        if on:
            self._features |= feature
        else:
            self._features &= ~feature

    def _require(self, feature: int, what: str) -> None:
        if self._features & feature != feature:
            raise UnsupportedFeatureError(f"{self._name}: channel does not support {what}")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def blocking(self) -> bool:
        return self._blocking

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("blocking" if self._blocking else "non-blocking")
        return f"<{type(self).__name__} {self._name!r} {state}>"

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosedError(f"{self._name}: channel is closed")

    def _os_call(self, hook: Callable[..., T], *args: object) -> T:
        """Call *hook*: the one place an OS error of a transport becomes a channel error.

        Errors that already are channel errors (a layer's master reported
        them, naming itself) pass unchanged.
        """
        try:
            return hook(*args)
        except ChannelError:
            raise
        except OSError as exc:
            raise os_error(self._name, exc) from exc

    # ---- implementation hooks -----------------------------------------

    def _readv(
        self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int | None:
        raise NotImplementedError

    def _writev(
        self, buffers: Sequence[Buffer], fds: Sequence[int], flags: WriteFlag
    ) -> int | None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _set_blocking(self, blocking: bool) -> None:
        raise NotImplementedError

    def _wait_fds(self, cond: Condition) -> FdSpec:
        """``(fd, poll events)`` pairs to wait on for *cond*; none by default."""
        return ()

    def _pending(self, cond: Condition) -> Condition:
        """The part of *cond* that holds without waiting.

        A layer may do non-blocking work here (a handshake step, flushing
        queued bytes) when its master is non-blocking.
        """
        return Condition.NONE

    def _io_owner(self) -> object:
        """The channel owning the fds of :meth:`_wait_fds` (layers delegate)."""
        return self

    def _shutdown(self, how: Shutdown) -> None:
        raise NotImplementedError

    def _seek(self, offset: int, whence: int) -> int:
        raise NotImplementedError

    def _preadv(self, buffers: Sequence[Buffer], offset: int) -> int:
        raise NotImplementedError

    def _pwritev(self, buffers: Sequence[Buffer], offset: int) -> int:
        raise NotImplementedError

    def _set_delay(self, enabled: bool) -> None:
        pass

    def _set_cork(self, enabled: bool) -> None:
        pass

    def _flush(self) -> int:
        return 0

    # ---- single calls --------------------------------------------------

    def readv(
        self,
        buffers: Sequence[Buffer],
        *,
        flags: ReadFlag = ReadFlag.NONE,
        fds: list[int] | None = None,
    ) -> int | None:
        """Read into *buffers* in order: a count, ``0`` at EOF, ``None`` if it would block."""
        # Checked only where a check can fail: an fd-passing message costs half the
        # instructions without the check's calls.
        if self._closed or flags or (fds is not None and not self._features & _FD_PASS):
            self._check_read(flags, fds)
        # _os_call inlined: a try costs nothing until it catches (3.11+), a call does.
        try:
            return self._readv(buffers, flags, fds)
        except ChannelError:
            raise
        except OSError as exc:
            raise os_error(self._name, exc) from exc

    def _check_read(self, flags: int, fds: list[int] | None) -> None:
        """Raise if this channel cannot do a read with *flags* and *fds* now."""
        self._check_open()
        if fds is not None:
            self._require(_FD_PASS, "file descriptor passing")
        if flags & _MSG_PEEK:
            self._require(_READ_MSG_PEEK, "peek reads (MSG_PEEK)")

    def writev(
        self,
        buffers: Sequence[Buffer],
        *,
        fds: Sequence[int] = (),
        flags: WriteFlag = WriteFlag.NONE,
    ) -> int | None:
        """Write from *buffers*: a count (maybe partial) or ``None`` if it would block."""
        # As in readv.
        if self._closed or flags or (fds and not self._features & _FD_PASS):
            self._check_write(fds, flags)
        try:
            return self._writev(buffers, fds, flags)
        except ChannelError:
            raise
        except OSError as exc:
            raise os_error(self._name, exc) from exc

    def _check_write(self, fds: Sequence[int], flags: int) -> None:
        """Raise if this channel cannot do a write with *fds* and *flags* now."""
        self._check_open()
        if fds:
            self._require(_FD_PASS, "file descriptor passing")
        if flags & _ZERO_COPY:
            if fds:
                raise UnsupportedFeatureError(
                    f"{self._name}: zero-copy writes cannot carry file descriptors"
                )
            self._require(_WRITE_ZERO_COPY, "zero-copy writes")

    def read(self, size: int) -> bytes | None:
        """Read up to *size* bytes: ``b""`` at EOF, ``None`` if it would block."""
        buf = bytearray(size)
        n = self.readv((buf,))
        if n is None:
            return None
        del buf[n:]
        return bytes(buf)

    def readinto(self, buffer: Buffer) -> int | None:
        return self.readv((buffer,))

    def write(self, data: Buffer) -> int | None:
        return self.writev((data,))

    # ---- exact transfers (one set of calls for sync and async) ---------
    #
    # Each is a call that returns ``None`` while the channel would block, its
    # result once done, or a Continuation holding the progress made (see
    # :mod:`iochannel._core.watch`): ``_run`` makes it with blocking waits in
    # between, ``_arun`` with waits on the running loop.

    def _read_exact(
        self, buffers: Sequence[Buffer], fds: list[int] | None, flags: ReadFlag
    ) -> bool | Continuation | None:
        """One attempt at filling *buffers* (see :meth:`readv_all_eof`)."""
        got = 0
        if fds is None and len(buffers) == 1:
            # One buffer that fills in one call needs no cursor: a quarter fewer
            # instructions per round trip of a 64-byte asyncio ping-pong.
            got = self.readv(buffers, flags=flags)  # type: ignore[assignment]
            if got is None:
                return None
            if got == memoryview(buffers[0]).nbytes:
                return True
            if got == 0:
                return False
        result: bool | Continuation | None = _ReadRest(self, buffers, fds, flags, got).first()
        return result

    def _write_exact(
        self, buffers: Sequence[Buffer], fds: Sequence[int], flags: WriteFlag
    ) -> bool | Continuation | None:
        """One attempt at writing all of *buffers* (see :meth:`writev_all`)."""
        sent = 0
        if not fds and len(buffers) == 1:
            # As in _read_exact: one buffer usually goes out in one call.
            sent = self.writev(buffers, flags=flags)  # type: ignore[assignment]
            if sent is None:
                return None
            if sent == memoryview(buffers[0]).nbytes:
                return True
        result: bool | Continuation | None = _WriteRest(self, buffers, fds, flags, sent).first()
        return result

    def _run(self, call: Callable[[], T | Continuation | None], cond: Condition) -> T:
        """Make *call* until it is done, blocking for *cond* while it would block."""
        try:
            while True:
                result = call()
                if result is None:
                    self.wait(cond)
                elif isinstance(result, Continuation):
                    call = result
                    self.wait(cond)
                else:
                    return result
        except BaseException:
            if isinstance(call, Continuation):
                call.close()
            raise

    async def _arun(
        self,
        call: Callable[[], T | Continuation | None],
        cond: Condition,
        message: bool = False,
    ) -> T:
        """Make *call* until it is done, waiting on the running loop for *cond* in between.

        The asyncio twin of :meth:`_run`.  The calls are made here, in the
        awaiting task, never from a loop callback: a cancellation can only
        land on the wait, when no call is in progress (see :mod:`iochannel._core.watch`).
        *message* marks an exact read: the caller knows where a message ends.
        """
        if self._blocking:
            self._async_mode()
        waits = self._waits or self._get_waits()
        try:
            # An exact read whose last one found nothing at its first call waits
            # before its first call, until the loop sees the bytes keep coming (see
            # iochannel._core.watch): a request/response reader skips a call bound to fail
            # (64-byte asyncio ping-pong: a tenth fewer instructions, 8% faster).
            if message and waits.would_block[cond]:
                await waits.wait_async(self, cond)
            result = call()
            if message and result is None:
                waits.would_block[cond] = True
            while result is None or isinstance(result, Continuation):
                if result is not None:
                    call = result
                await waits.wait_async(self, cond)
                result = call()
        except BaseException:
            if isinstance(call, Continuation):
                call.close()
            raise
        return result

    def readv_all_eof(
        self,
        buffers: Sequence[Buffer],
        *,
        fds: list[int] | None = None,
        flags: ReadFlag = ReadFlag.NONE,
    ) -> bool:
        """Fill *buffers* exactly: ``True``, or ``False`` on EOF before any byte.

        Raises :class:`IncompleteReadError` if the stream ends part-way.
        """
        return self._run(partial(self._read_exact, buffers, fds, flags), Condition.IN)

    def readv_all(
        self,
        buffers: Sequence[Buffer],
        *,
        fds: list[int] | None = None,
        flags: ReadFlag = ReadFlag.NONE,
    ) -> None:
        """Fill *buffers* exactly; any end of stream raises :class:`ChannelEOFError`."""
        if not self.readv_all_eof(buffers, fds=fds, flags=flags):
            raise ChannelEOFError(f"{self._name}: end of stream before any data was read")

    def read_all(self, size: int) -> bytes:
        """Read exactly *size* bytes (see :meth:`readv_all`)."""
        buf = bytearray(size)
        self.readv_all((buf,))
        return bytes(buf)

    def writev_all(
        self,
        buffers: Sequence[Buffer],
        *,
        fds: Sequence[int] = (),
        flags: WriteFlag = WriteFlag.NONE,
    ) -> None:
        """Write every byte of *buffers*; *fds* go with the first byte sent."""
        self._run(partial(self._write_exact, buffers, fds, flags), Condition.OUT)

    def write_all(self, data: Buffer, *, fds: Sequence[int] = ()) -> None:
        """Write every byte of *data* (with *fds*, see :meth:`writev_all`)."""
        self.writev_all((data,), fds=fds)

    # ---- asyncio -------------------------------------------------------
    #
    # Each is its blocking twin made through _arun.

    def _async_mode(self) -> None:
        if self._blocking:
            self.set_blocking(False)

    async def areadv(
        self,
        buffers: Sequence[Buffer],
        *,
        flags: ReadFlag = ReadFlag.NONE,
        fds: list[int] | None = None,
    ) -> int:
        """:meth:`readv` that waits instead of returning ``None``."""
        n: int = await self._arun(partial(self.readv, buffers, flags=flags, fds=fds), _IN)
        return n

    async def areadinto(self, buffer: Buffer) -> int:
        return await self.areadv((buffer,))

    async def aread(self, size: int) -> bytes:
        """Read up to *size* bytes, at least one; ``b""`` at EOF."""
        buf = bytearray(size)
        n = await self.areadv((buf,))
        del buf[n:]
        return bytes(buf)

    async def awritev(
        self,
        buffers: Sequence[Buffer],
        *,
        fds: Sequence[int] = (),
        flags: WriteFlag = WriteFlag.NONE,
    ) -> int:
        """:meth:`writev` that waits instead of returning ``None``."""
        n: int = await self._arun(partial(self.writev, buffers, fds=fds, flags=flags), _OUT)
        return n

    async def awrite(self, data: Buffer) -> int:
        return await self.awritev((data,))

    async def areadv_all_eof(
        self,
        buffers: Sequence[Buffer],
        *,
        fds: list[int] | None = None,
        flags: ReadFlag = ReadFlag.NONE,
    ) -> bool:
        return await self._arun(partial(self._read_exact, buffers, fds, flags), _IN, True)

    async def areadv_all(
        self,
        buffers: Sequence[Buffer],
        *,
        fds: list[int] | None = None,
        flags: ReadFlag = ReadFlag.NONE,
    ) -> None:
        if not await self._arun(partial(self._read_exact, buffers, fds, flags), _IN, True):
            raise ChannelEOFError(f"{self._name}: end of stream before any data was read")

    async def aread_all(self, size: int) -> bytes:
        buf = bytearray(size)
        await self.areadv_all((buf,))
        return bytes(buf)

    async def awritev_all(
        self,
        buffers: Sequence[Buffer],
        *,
        fds: Sequence[int] = (),
        flags: WriteFlag = WriteFlag.NONE,
    ) -> None:
        await self._arun(partial(self._write_exact, buffers, fds, flags), _OUT)

    async def awrite_all(self, data: Buffer, *, fds: Sequence[int] = ()) -> None:
        await self._arun(partial(self._write_exact, (data,), fds, WriteFlag.NONE), _OUT)

    # ---- waiting -------------------------------------------------------

    def _get_waits(self) -> Waits:
        waits = self._waits
        if waits is None:
            waits = self._waits = Waits()
            if self._closed:
                waits.closed = True
        return waits

    def wait(self, cond: Condition, timeout: float | None = None) -> Condition:
        """Block until *cond* holds; return what holds (``NONE`` if woken or timed out)."""
        self._check_open()
        ready = self._pending(cond)
        if ready:
            return ready
        return self._get_waits().wait_blocking(self, cond, timeout)

    async def wait_async(self, cond: Condition) -> Condition:
        """Wait for *cond* on the running loop; ``NONE`` if woken by :meth:`wake_read`."""
        self._check_open()
        return Condition(await self._get_waits().wait_async(self, cond))

    def wake_read(self) -> None:
        """End a pending read wait early (thread-safe); it returns ``Condition.NONE``.

        If no read wait is pending, the next one returns ``NONE`` at once, so a
        wake sent just before a wait starts is not lost.
        """
        self._get_waits().wake(int(Condition.IN))

    def add_watch(
        self,
        cond: Condition,
        callback: WatchCallback,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Watch:
        """Call ``callback(channel, ready)`` on *loop* (default: running) while *cond* holds.

        The watch stays until the callback returns ``False``, :meth:`Watch.cancel`
        is called or the channel is closed.
        """
        self._check_open()
        return add_watch(self, self._get_waits(), cond, callback, loop)

    def _waits_remove_watch(self, watch: Watch) -> None:
        waits = self._waits
        if waits is not None:
            with waits.lock:
                try:
                    waits.watches.remove(watch)
                except ValueError:
                    pass

    # ---- controls ------------------------------------------------------

    def set_blocking(self, blocking: bool) -> None:
        """Switch between blocking and non-blocking (``None``-returning) I/O."""
        self._check_open()
        self._set_blocking(blocking)
        self._blocking = blocking

    def set_delay(self, enabled: bool) -> None:
        """Hint: allow (``True``) or disable (``False``, TCP_NODELAY) send coalescing."""
        if not self._closed:
            try:
                self._set_delay(enabled)
            except OSError:
                pass

    def set_cork(self, enabled: bool) -> None:
        """Hint: hold back partial frames until uncorked (TCP_CORK)."""
        if not self._closed:
            try:
                self._set_cork(enabled)
            except OSError:
                pass

    def shutdown(self, how: Shutdown = Shutdown.BOTH) -> None:
        """Shut down reading, writing or both; needs ``Feature.SHUTDOWN``."""
        self._check_open()
        self._require(Feature.SHUTDOWN, "shutdown")
        self._os_call(self._shutdown, how)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the file position; returns the new position.  Needs ``SEEKABLE``."""
        self._check_open()
        self._require(Feature.SEEKABLE, "random access (seek)")
        return self._os_call(self._seek, offset, whence)

    def preadv(self, buffers: Sequence[Buffer], offset: int) -> int:
        self._check_open()
        self._require(Feature.SEEKABLE, "positioned reads (preadv)")
        return self._os_call(self._preadv, buffers, offset)

    def pwritev(self, buffers: Sequence[Buffer], offset: int) -> int:
        self._check_open()
        self._require(Feature.SEEKABLE, "positioned writes (pwritev)")
        return self._os_call(self._pwritev, buffers, offset)

    def pread(self, size: int, offset: int) -> bytes:
        buf = bytearray(size)
        del buf[self.preadv((buf,), offset) :]
        return bytes(buf)

    def pwrite(self, data: Buffer, offset: int) -> int:
        return self.pwritev((data,), offset)

    def flush(self) -> int:
        """Wait for zero-copy writes to complete.

        Returns 0, or 1 if the kernel fell back to copying every send; a channel
        without ``WRITE_ZERO_COPY`` has nothing to flush and returns 0.
        """
        self._check_open()
        if not self._features & _WRITE_ZERO_COPY:
            return 0
        return self._os_call(self._flush)

    # ---- closing -------------------------------------------------------

    def close(self) -> None:
        """Close the channel; idempotent.  Pending waits fail, watches are cancelled."""
        if self._closed:
            return
        self._closed = True
        waits = self._waits
        if waits is not None:
            for watch in waits.close(self._name):
                watch.cancel()
        self._close()

    async def aclose(self) -> None:
        """Close without blocking the loop (channels that wait on close override this)."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed channel {self!r}", ResourceWarning, stacklevel=2)
            try:
                self.close()
            except Exception:
                pass


class _ReadRest(Continuation):
    """A ``readv_all`` past its first call: fills the rest of the buffers."""

    __slots__ = ("channel", "cursor", "expected", "fds", "flags", "got", "received", "want_fds")

    def __init__(
        self,
        channel: Channel,
        buffers: Sequence[Buffer],
        fds: list[int] | None,
        flags: ReadFlag,
        got: int,
    ) -> None:
        self.channel = channel
        self.cursor = _Cursor(_views(buffers))
        self.expected = sum(len(v) for v in self.cursor.views)
        self.cursor.advance(got)
        self.got = got
        self.fds = fds
        self.flags = flags
        self.received: list[int] = []
        self.want_fds = fds is not None

    def __call__(self) -> bool | None:
        ch, cursor, received = self.channel, self.cursor, self.received
        try:
            while not cursor.done:
                before = len(received)
                n = ch.readv(
                    cursor.remaining(), flags=self.flags, fds=received if self.want_fds else None
                )
                if n is None:
                    return None
                # fds ride with the first bytes only; the kernel drops later ones.
                self.want_fds = self.want_fds and not received
                if n == 0:
                    if len(received) > before:
                        continue  # fds without data are not end of stream
                    if not self.got and not received:
                        return False
                    raise IncompleteReadError(self.got, self.expected, ch.name)
                self.want_fds = False
                self.got += n
                cursor.advance(n)
        except BaseException:
            self.close()
            raise
        if self.fds is not None:
            self.fds.extend(received)
            received.clear()
        return True

    def close(self) -> None:
        close_fds(self.received)
        self.received.clear()


class _WriteRest(Continuation):
    """A ``writev_all`` past its first call: writes the rest of the buffers."""

    __slots__ = ("channel", "cursor", "fds", "flags")

    def __init__(
        self,
        channel: Channel,
        buffers: Sequence[Buffer],
        fds: Sequence[int],
        flags: WriteFlag,
        sent: int,
    ) -> None:
        self.channel = channel
        self.cursor = _Cursor(_views(buffers))
        self.cursor.advance(sent)
        if fds and self.cursor.done:
            raise ValueError(
                f"{channel.name}: file descriptors need at least one byte to travel with"
            )
        self.fds = fds
        self.flags = flags

    def __call__(self) -> bool | None:
        ch, cursor = self.channel, self.cursor
        while not cursor.done:
            n = ch.writev(cursor.remaining(), fds=self.fds, flags=self.flags)
            if n is None:
                return None
            if n:
                self.fds = ()
            cursor.advance(n)
        return True
