"""NBD client: :class:`NbdClient` (blocking) and :class:`AsyncNbdClient` (asyncio).

Reading and writing an export takes a few lines::

    from iochannel.nbd.client import NbdClient

    with NbdClient.connect("unix:/run/nbd.sock", "disk0") as nbd:
        nbd.write(b"hello", 0)
        assert nbd.read(0, 5) == b"hello"
        print(nbd.size, nbd.block_status(0, nbd.size))

Both shells run the same :class:`~iochannel.nbd.protocol.ClientConnection`
over any :class:`~iochannel.Channel` they connect to (an
:data:`~iochannel.Address` or its text: ``unix:PATH``, ``HOST:PORT``):
the fixed-newstyle handshake, STARTTLS when given credentials (x509 or PSK,
:mod:`iochannel.crypto`), structured replies and the ``base:allocation``
meta context when the server has them, then ``NBD_OPT_GO``.  Requests:
``read``, ``write`` (``fua``), ``flush``, ``trim``, ``write_zeroes``
(``no_hole``, ``fast``), ``block_status`` and, at close, ``NBD_CMD_DISC``.
A read or write longer than the server's maximum block size is split.
``list_exports`` asks for the export list.

Errors::

    NbdError (a ChannelError)
     ├── ProtocolError            the server broke the protocol; the client is unusable
     │    └── OptionRefused       the server refused the export, TLS, …
     ├── NbdRequestError          also OSError: the server failed one request
     │                            (errno EIO, ENOSPC, EINVAL, EPERM … as the server said)
     └── NbdConnectionError       also OSError (EIO): the connection was lost,
                                  or could not be made in time

TLS failures raise :class:`~iochannel.TLSError`.

:class:`AsyncNbdClient` keeps any number of requests in flight on one
connection, matching replies to requests by cookie; :class:`NbdClient` runs
one on a loop thread of its own and waits for each call (calls from several
threads are in flight together).  Both can reconnect: with
*reconnect_delay*, requests in flight when the connection is lost, and
those issued meanwhile, wait up to that many seconds for a new connection
and are sent again; past it they fail with ``EIO`` (as QEMU's
``reconnect-delay``), and each later request tries one reconnection first.
*open_timeout* retries the first connection for that long.  A protocol error
is final: every pending request fails with it.  Each connection attempt
(connecting, TLS, negotiating) ends after *timeout* seconds
(:data:`HANDSHAKE_TIMEOUT` by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from .._core.channel import Buffer, Channel
from .._layers.tls import TLSChannel
from .._transports.address import Address, InetAddress, UnixAddress, parse_address
from .._transports.socket import SocketChannel
from ..block.iothread import IOThread
from ..crypto import Credentials
from ..errors import ChannelBrokenError, ChannelError
from .protocol import (
    BASE_ALLOCATION,
    ClientConnection,
    Command,
    CommandFlag,
    Disconnect,
    Export,
    ExportList,
    ExportReady,
    NbdError,
    OptionRefused,
    ProtocolError,
    Reply,
    StartTLS,
    TransmissionFlag,
    host_errno,
)

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "Allocation",
    "AsyncNbdClient",
    "NbdClient",
    "NbdConnectionError",
    "NbdError",
    "NbdRequestError",
    "OptionRefused",
    "ProtocolError",
]

# Reads of the socket: many small replies at once; a larger payload is read whole.
_READ_SIZE = 64 * 1024
# Buffers per writev (each request is one or two).
_MAX_IOV = 64
# Pause between reconnection attempts, growing to the maximum.
_RETRY_FIRST, _RETRY_MAX = 0.05, 1.0
#: Seconds one connection attempt (connecting, TLS, negotiating) takes at most by default.
HANDSHAKE_TIMEOUT = 10.0

T = TypeVar("T")


class NbdRequestError(NbdError, OSError):
    """The server failed a request: ``errno`` is its error, ``strerror`` its message."""


class NbdConnectionError(NbdError, ChannelBrokenError):
    """The connection to the server was lost (or could not be made); ``errno`` is EIO."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)

    def __str__(self) -> str:
        return str(self.strerror)  # always EIO: "[Errno 5]" would say nothing


@dataclass(frozen=True, slots=True)
class Allocation:
    """A range of the export and its ``base:allocation`` state."""

    offset: int
    length: int
    flags: int
    #: Flag bits: the range is unallocated; it reads as zeros.
    HOLE = 1
    ZERO = 2

    @property
    def hole(self) -> bool:
        return bool(self.flags & self.HOLE)

    @property
    def zero(self) -> bool:
        return bool(self.flags & self.ZERO)


@dataclass(frozen=True)
class _Target:
    """Where and how to connect: kept for reconnecting."""

    address: Address
    export: str
    tls: Credentials | None
    tls_hostname: str | None

    @classmethod
    def make(
        cls,
        address: str | Address,
        export: str,
        tls: Credentials | None,
        tls_hostname: str | None,
    ) -> _Target:
        addr = parse_address(address) if isinstance(address, str) else address
        if tls is not None and tls_hostname is None and isinstance(addr, InetAddress):
            tls_hostname = addr.host
        return cls(addr, export, tls, tls_hostname)

    def uri(self) -> str:
        """The NBD URI of the export (``nbd+unix:///E?socket=P``, ``nbds://H:P/E``)."""
        scheme = "nbds" if self.tls is not None else "nbd"
        addr = self.address
        if isinstance(addr, UnixAddress):
            return f"{scheme}+unix:///{self.export}?socket={addr.path}"
        if isinstance(addr, InetAddress):
            host = f"[{addr.host}]" if ":" in addr.host else addr.host
            return f"{scheme}://{host}:{addr.port}/{self.export}"
        return f"{scheme}:///{self.export}"

    def session(self, list_exports: bool = False) -> ClientConnection:
        return ClientConnection(
            self.export,
            meta_contexts=(BASE_ALLOCATION,),
            tls=self.tls is not None,
            list_exports=list_exports,
        )

    def start_tls(self, channel: Channel) -> TLSChannel:
        assert self.tls is not None
        return TLSChannel.client(channel, self.tls, self.tls_hostname)


# ---- the handshake, written once for both shells ---------------------------------------
#
# A generator drives the core and yields the I/O it needs; each shell does that
# I/O its own way (blocking or awaited) and sends back the bytes read.


@dataclass(frozen=True, slots=True)
class _Send:
    buffers: list[Buffer]


@dataclass(frozen=True, slots=True)
class _Recv:
    size: int


@dataclass(frozen=True, slots=True)
class _TLS:
    pass


_Io = _Send | _Recv | _TLS


def _negotiate(
    core: ClientConnection,
) -> Generator[_Io, memoryview | None, ExportReady | ExportList]:
    """Run the handshake to :class:`ExportReady` (or, listing, the ABORT's answer)."""
    listing: ExportList | None = None
    while True:
        out = core.data_to_send()
        if out:
            yield _Send(out)
        for event in core.events_received():
            if isinstance(event, StartTLS):
                yield _TLS()
                core.tls_started()  # queues the next option
            elif isinstance(event, ExportReady):
                return event
            elif isinstance(event, ExportList):
                listing = event
            elif isinstance(event, Disconnect) and listing is not None:
                return listing
        if core.pending_output:
            continue
        data = yield _Recv(core.wanted)
        if not data:
            if listing is not None:
                return listing  # the server closed instead of answering ABORT
            raise NbdConnectionError("the server closed the connection during the handshake")
        core.receive_data(data)


# ---- what both shells share ---------------------------------------------------------------


class _ClientBase:
    """The export's description, request planning and reply decoding."""

    def __init__(self, target: _Target, ready: ExportReady) -> None:
        self._target = target
        self._ready = ready

    @property
    def info(self) -> Export:
        """What the server said about the export (size, capabilities, block sizes)."""
        return self._ready.export

    @property
    def export(self) -> str:
        return self._target.export

    @property
    def uri(self) -> str:
        return self._target.uri()

    @property
    def size(self) -> int:
        return self._ready.export.size

    @property
    def description(self) -> str:
        return self._ready.export.description

    @property
    def read_only(self) -> bool:
        return self._ready.export.read_only

    @property
    def can_flush(self) -> bool:
        return self._ready.export.can_flush

    @property
    def can_fua(self) -> bool:
        return bool(self._ready.flags & TransmissionFlag.SEND_FUA)

    @property
    def can_trim(self) -> bool:
        return self._ready.export.can_trim

    @property
    def can_write_zeroes(self) -> bool:
        return self._ready.export.can_write_zeroes

    @property
    def can_fast_zero(self) -> bool:
        return self._ready.export.can_fast_zero

    @property
    def can_multi_conn(self) -> bool:
        return self._ready.export.can_multi_conn

    @property
    def can_block_status(self) -> bool:
        return BASE_ALLOCATION in self._ready.meta_contexts

    @staticmethod
    def _check_range(offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise ValueError(f"offset {offset} and length {length} must not be negative")

    def _pieces(self, offset: int, length: int) -> list[tuple[int, int]]:
        """*length* bytes at *offset* in requests the server takes (its maximum block)."""
        self._check_range(offset, length)
        step = self._ready.export.max_block
        return [(o, min(step, offset + length - o)) for o in range(offset, offset + length, step)]

    def _fua(self, fua: bool) -> tuple[int, bool]:
        """The FUA flag to send, and whether a flush must follow instead (no server FUA)."""
        if not fua:
            return 0, False
        return (CommandFlag.FUA, False) if self.can_fua else (0, self.can_flush)

    @staticmethod
    def _zero_flags(no_hole: bool, fast: bool, fua_flag: int) -> int:
        return (
            fua_flag
            | (CommandFlag.NO_HOLE if no_hole else 0)
            | (CommandFlag.FAST_ZERO if fast else 0)
        )

    @staticmethod
    def _check(reply: Reply, what: str) -> Reply:
        if reply.error:
            code = host_errno(reply.error)
            text = reply.message or os.strerror(code)
            raise NbdRequestError(code, f"NBD {what}: {text}")
        return reply

    def _allocations(self, offset: int, length: int, reply: Reply) -> list[Allocation]:
        """The reply's base:allocation extents as ranges, clipped to the request."""
        ident = self._ready.meta_contexts[BASE_ALLOCATION]
        out: list[Allocation] = []
        pos, end = offset, offset + length
        for extent in reply.extents.get(ident, []):
            if pos >= end:
                break
            n = min(extent.length, end - pos)
            out.append(Allocation(pos, n, extent.flags & (Allocation.HOLE | Allocation.ZERO)))
            pos += n
        if not out:
            raise ProtocolError("BLOCK_STATUS reply", "no base:allocation extent")
        return out

    def _status_length(self, offset: int, length: int) -> int:
        """The length of one BLOCK_STATUS request (a u32)."""
        self._check_range(offset, length)
        return min(length, 0xFFFF_FFFF)


def _scatter(data: Buffer, buffers: Sequence[Buffer]) -> None:
    """Copy *data* into *buffers*, in order."""
    view = memoryview(data)
    pos = 0
    for b in buffers:
        target = memoryview(b).cast("B")
        n = min(len(target), len(view) - pos)
        target[:n] = view[pos : pos + n]
        pos += n


def _lost(
    exc: BaseException | None, what: str = "the connection to the NBD server was lost"
) -> NbdConnectionError:
    if exc is None:
        detail = None
    elif isinstance(exc, OSError) and exc.strerror and not isinstance(exc, NbdError):
        detail = exc.strerror  # the OS's words without "[Errno N]"
    else:
        detail = str(exc) or type(exc).__name__
    error = NbdConnectionError(what if detail is None else f"{what}: {detail}")
    error.__cause__ = exc
    return error


# ---- the blocking shell ---------------------------------------------------------------------


class NbdClient(_ClientBase):
    """A blocking NBD client; see the module docstring.  Use :meth:`connect`.

    It runs an :class:`AsyncNbdClient` on a loop thread of its own and waits
    for each call, so both clients share one implementation of requests,
    timeouts and reconnection.
    """

    def __init__(self, client: AsyncNbdClient, thread: IOThread) -> None:
        super().__init__(client._target, client._ready)
        self._client = client
        self._thread = thread
        self._closing = threading.Lock()

    @classmethod
    def connect(
        cls,
        address: str | Address,
        export: str = "",
        *,
        tls: Credentials | None = None,
        tls_hostname: str | None = None,
        timeout: float | None = HANDSHAKE_TIMEOUT,
        reconnect_delay: float = 0,
        open_timeout: float = 0,
    ) -> NbdClient:
        """Connect to *address* and open *export*.

        *tls* credentials (``endpoint=client``) make the client start TLS;
        *tls_hostname* is the name the server's certificate must carry
        (default: the host connected to; needed over a unix socket).
        *timeout* bounds each connection attempt (connecting and negotiating),
        in seconds (``None``: no limit); past it, or when the server cannot be
        reached, :class:`NbdConnectionError`.  *reconnect_delay* and
        *open_timeout* are :class:`AsyncNbdClient`'s.
        """
        thread = IOThread("nbd-client")
        try:
            client = _wait(
                thread,
                AsyncNbdClient.connect(
                    address,
                    export,
                    tls=tls,
                    tls_hostname=tls_hostname,
                    timeout=timeout,
                    reconnect_delay=reconnect_delay,
                    open_timeout=open_timeout,
                ),
            )
        except BaseException:
            thread.stop()
            raise
        return cls(client, thread)

    @staticmethod
    def list_exports(
        address: str | Address,
        *,
        tls: Credentials | None = None,
        tls_hostname: str | None = None,
        timeout: float | None = HANDSHAKE_TIMEOUT,
    ) -> list[tuple[str, str]]:
        """The server's exports, as (name, description) pairs (``NBD_OPT_LIST``)."""
        thread = IOThread("nbd-client")
        try:
            listing = AsyncNbdClient.list_exports(
                address, tls=tls, tls_hostname=tls_hostname, timeout=timeout
            )
            return _wait(thread, listing)
        finally:
            thread.stop()

    @property
    def connected(self) -> bool:
        return self._client.connected

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        if self._client.closed:
            call.close()
            raise NbdError("the NBD client is closed")
        return _wait(self._thread, call)

    def read(self, offset: int, length: int) -> bytes:
        """*length* bytes at *offset* (holes read as zeros)."""
        return self._run(self._client.read(offset, length))

    def readinto(self, buffers: Sequence[Buffer], offset: int) -> None:
        """Fill *buffers* (in order) with the bytes at *offset*."""
        self._run(self._client.readinto(buffers, offset))

    def write(self, data: Buffer, offset: int, *, fua: bool = False) -> None:
        """Write *data* at *offset*; *fua*: on stable storage when this returns."""
        self._run(self._client.write(data, offset, fua=fua))

    def writev(self, buffers: Sequence[Buffer], offset: int, *, fua: bool = False) -> None:
        self._run(self._client.writev(buffers, offset, fua=fua))

    def flush(self) -> None:
        self._run(self._client.flush())

    def trim(self, offset: int, length: int, *, fua: bool = False) -> None:
        """Tell the server the range is unused (it may then read as anything)."""
        self._run(self._client.trim(offset, length, fua=fua))

    def write_zeroes(
        self, offset: int, length: int, *, no_hole: bool = False, fast: bool = False,
        fua: bool = False,
    ) -> None:  # fmt: skip
        """Zero a range; *no_hole* keeps it allocated, *fast* fails unless it is cheap."""
        self._run(self._client.write_zeroes(offset, length, no_hole=no_hole, fast=fast, fua=fua))

    def block_status(self, offset: int, length: int) -> list[Allocation]:
        """The allocation of the range, as consecutive :class:`Allocation` ranges.

        Without ``base:allocation`` on the server, the whole range is data.
        """
        return self._run(self._client.block_status(offset, length))

    def close(self) -> None:
        """Send ``NBD_CMD_DISC`` (when the connection is sound) and close."""
        with self._closing:
            if self._client.closed:
                return
            try:
                _wait(self._thread, self._client.aclose())
            finally:
                self._thread.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait(thread: IOThread, call: Coroutine[Any, Any, T]) -> T:
    """Run *call* on *thread*'s loop and wait for its outcome."""
    return asyncio.run_coroutine_threadsafe(call, thread.loop).result()


def _broken_again(cause: BaseException) -> NbdError:
    if isinstance(cause, NbdConnectionError):
        error: NbdError = NbdConnectionError(str(cause))
    else:
        error = NbdError(f"the NBD connection is unusable after an earlier error: {cause}")
    error.__cause__ = cause
    return error


@contextlib.contextmanager
def _connecting(target: _Target) -> Iterator[None]:
    """Failing to reach the server or to finish negotiating is an NbdConnectionError."""
    try:
        yield
    except NbdError:
        raise
    except OSError as exc:
        raise _lost(exc, f"cannot connect to the NBD server at {target.uri()}") from exc


# ---- the asyncio shell ---------------------------------------------------------------------


class _Session:
    """One connection of an :class:`AsyncNbdClient`: a reader and a writer task."""

    def __init__(self, channel: Channel, core: ClientConnection, ready: ExportReady) -> None:
        self.channel = channel
        self.core = core
        self.ready = ready
        self.waiting: dict[int, asyncio.Future[Reply]] = {}
        #: Why the session ended: a ProtocolError (final) or NbdConnectionError; when.
        self.ended: NbdError | None = None
        self.ended_at = 0.0
        self._out: list[Buffer] = []
        self._wake = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read_loop())
        self._writer = asyncio.ensure_future(self._write_loop())

    def submit(
        self, command: Command, offset: int, length: int, flags: int, data: Buffer | None
    ) -> asyncio.Future[Reply]:
        if self.ended is not None:
            raise self.ended
        cookie = self.core.request(command, offset, length, flags, data)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.waiting[cookie] = future
        self._out += self.core.data_to_send()
        self._wake.set()
        return future

    async def _write_loop(self) -> None:
        # One task writes, so a cancelled caller never leaves half a request behind.
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._out:
                    batch, self._out = self._out[:_MAX_IOV], self._out[_MAX_IOV:]
                    await self.channel.awritev_all(batch)
        except (OSError, ChannelError) as exc:
            self._end(_lost(exc))

    async def _read_loop(self) -> None:
        core = self.core
        try:
            while True:
                wanted = core.wanted
                if wanted > _READ_SIZE:
                    # A data payload: read whole, so the core takes it without a copy.
                    buf = bytearray(wanted)
                    n = wanted if await self.channel.areadv_all_eof((buf,)) else 0
                else:
                    buf = bytearray(_READ_SIZE)
                    n = await self.channel.areadinto(buf)
                if n == 0:
                    raise _lost(None, "the NBD server closed the connection")
                core.receive_data(memoryview(buf)[:n])
                for event in core.events_received():
                    if isinstance(event, Reply):
                        future = self.waiting.pop(event.cookie, None)
                        if future is not None and not future.done():
                            future.set_result(event)
        except NbdError as exc:
            self._end(exc)
        except (OSError, ChannelError) as exc:
            self._end(_lost(exc))

    def _end(self, exc: NbdError) -> None:
        if self.ended is None:
            self.ended, self.ended_at = exc, time.monotonic()
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(self.ended)
        self.waiting.clear()
        for task in (self._reader, self._writer):
            if task is not asyncio.current_task():
                task.cancel()
        self.channel.close()

    async def aclose(self, goodbye: bool) -> None:
        if goodbye and self.ended is None:
            try:
                self.core.disconnect()
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
                await self.channel.awritev_all([*self._out, *self.core.data_to_send()])
            except (OSError, ChannelError, NbdError):
                pass  # the server is gone already
        self._end(NbdError("the NBD client was closed"))
        await asyncio.gather(self._reader, self._writer, return_exceptions=True)


async def _async_handshake(
    target: _Target, list_exports: bool, timeout: float | None
) -> tuple[Channel, ClientConnection, ExportReady | ExportList]:
    with _connecting(target):
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                return await _async_negotiate(target, list_exports)
        except TimeoutError:
            if not limit.expired():
                raise  # the system's (ETIMEDOUT)
            raise TimeoutError(f"the NBD server did not answer in time ({timeout} s)") from None


async def _async_negotiate(
    target: _Target, list_exports: bool
) -> tuple[Channel, ClientConnection, ExportReady | ExportList]:
    core = target.session(list_exports)
    channel: Channel = await SocketChannel.connect_async(target.address)
    try:
        steps = _negotiate(core)
        result: memoryview | None = None
        while True:
            try:
                io = steps.send(result)
            except StopIteration as stop:
                return channel, core, stop.value
            result = None
            if isinstance(io, _Send):
                await channel.awritev_all(io.buffers)
            elif isinstance(io, _Recv):
                buf = bytearray(max(io.size, _READ_SIZE))
                result = memoryview(buf)[: await channel.areadinto(buf)]
            else:
                tls = target.start_tls(channel)
                channel = tls
                await tls.ahandshake()
    except BaseException:
        await channel.aclose()
        raise


class AsyncNbdClient(_ClientBase):
    """The asyncio NBD client; see the module docstring.  Use :meth:`connect`."""

    def __init__(
        self, target: _Target, session: _Session, reconnect_delay: float, timeout: float | None
    ) -> None:
        super().__init__(target, session.ready)
        self._session = session
        self.reconnect_delay = reconnect_delay
        self.timeout = timeout
        self._reconnecting = asyncio.Lock()
        self._closed = False

    @classmethod
    async def connect(
        cls,
        address: str | Address,
        export: str = "",
        *,
        tls: Credentials | None = None,
        tls_hostname: str | None = None,
        timeout: float | None = HANDSHAKE_TIMEOUT,
        reconnect_delay: float = 0,
        open_timeout: float = 0,
    ) -> AsyncNbdClient:
        """:meth:`NbdClient.connect` on the running loop, with the reconnection options.

        *timeout* bounds each connection attempt, reconnections included.
        """
        target = _Target.make(address, export, tls, tls_hostname)
        session = await _establish(target, time.monotonic() + open_timeout, timeout)
        return cls(target, session, reconnect_delay, timeout)

    @staticmethod
    async def list_exports(
        address: str | Address,
        *,
        tls: Credentials | None = None,
        tls_hostname: str | None = None,
        timeout: float | None = HANDSHAKE_TIMEOUT,
    ) -> list[tuple[str, str]]:
        """:meth:`NbdClient.list_exports` on the running loop."""
        target = _Target.make(address, "", tls, tls_hostname)
        channel, _, listing = await _async_handshake(target, True, timeout)
        await channel.aclose()
        assert isinstance(listing, ExportList)
        return list(listing.exports)

    @property
    def connected(self) -> bool:
        return self._session.ended is None

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    async def _current(self, deadline: float | None) -> _Session:
        """The live session, reconnecting if it was lost.

        Attempts go on until *deadline*, by default *reconnect_delay* after
        the loss (one attempt once it has passed).
        """
        while True:
            if self._closed:
                raise NbdError("the NBD client is closed")
            session = self._session
            if session.ended is None:
                return session
            if not isinstance(session.ended, NbdConnectionError):
                raise _broken_again(session.ended)
            async with self._reconnecting:
                if self._session is not session:
                    continue  # another task reconnected meanwhile: look again
                if deadline is None:
                    deadline = session.ended_at + self.reconnect_delay
                new = await _establish(self._target, deadline, self.timeout, lambda: self._closed)
                if self._closed or new.ready.export.size != self.size:
                    await new.aclose(True)
                    if self._closed:
                        raise NbdError("the NBD client was closed while reconnecting")
                    raise NbdConnectionError(
                        f"the export's size changed from {self.size} to "
                        f"{new.ready.export.size} across a reconnection"
                    )
                self._session = new
                return new

    async def _call(
        self, command: Command, offset: int = 0, length: int = 0, flags: int = 0,
        data: Buffer | None = None,
    ) -> Reply:  # fmt: skip
        # A request is sent again after each loss until reconnect_delay has
        # passed since the first: a server that keeps dropping it cannot hold
        # it forever.
        deadline: float | None = None
        while True:
            session = await self._current(deadline)
            try:
                reply = await session.submit(command, offset, length, flags, data)
            except NbdConnectionError as exc:
                if deadline is None:
                    deadline = session.ended_at + self.reconnect_delay
                if self._closed or time.monotonic() >= deadline:
                    raise NbdConnectionError(str(exc)) from exc  # one per request
                continue  # sent again on the new connection
            return self._check(reply, command.name)

    async def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        await self.readinto([buf], offset)
        return bytes(buf)

    async def readinto(self, buffers: Sequence[Buffer], offset: int) -> None:
        total = sum(memoryview(b).nbytes for b in buffers)
        pieces = self._pieces(offset, total)
        replies = await asyncio.gather(*(self._call(Command.READ, o, n) for o, n in pieces))
        if len(replies) == 1 and len(buffers) == 1:
            data = replies[0].data
            assert data is not None
            _scatter(data, buffers)
            return
        whole = bytearray(total)
        for (o, n), reply in zip(pieces, replies, strict=True):
            assert reply.data is not None
            whole[o - offset : o - offset + n] = memoryview(reply.data)
        _scatter(whole, buffers)

    async def write(self, data: Buffer, offset: int, *, fua: bool = False) -> None:
        await self.writev([data], offset, fua=fua)

    async def writev(self, buffers: Sequence[Buffer], offset: int, *, fua: bool = False) -> None:
        data = memoryview(b"".join(buffers) if len(buffers) != 1 else buffers[0]).cast("B")
        flag, then_flush = self._fua(fua)
        await self._all(Command.WRITE, offset, len(data), flag, data)
        if then_flush:
            await self.flush()

    async def _all(
        self, command: Command, offset: int, length: int, flags: int,
        data: memoryview | None = None,
    ) -> None:  # fmt: skip
        calls = [
            self._call(
                command, o, n, flags, None if data is None else data[o - offset : o - offset + n]
            )
            for o, n in self._pieces(offset, length)
        ]
        await asyncio.gather(*calls)

    async def flush(self) -> None:
        await self._call(Command.FLUSH)

    async def trim(self, offset: int, length: int, *, fua: bool = False) -> None:
        flag, then_flush = self._fua(fua)
        await self._all(Command.TRIM, offset, length, flag)
        if then_flush:
            await self.flush()

    async def write_zeroes(
        self, offset: int, length: int, *, no_hole: bool = False, fast: bool = False,
        fua: bool = False,
    ) -> None:  # fmt: skip
        flag, then_flush = self._fua(fua)
        await self._all(Command.WRITE_ZEROES, offset, length, self._zero_flags(no_hole, fast, flag))
        if then_flush:
            await self.flush()

    async def block_status(self, offset: int, length: int) -> list[Allocation]:
        if not self.can_block_status:
            return [Allocation(offset, length, 0)] if length else []
        out: list[Allocation] = []
        end = offset + length
        while offset < end:
            n = self._status_length(offset, end - offset)
            reply = await self._call(Command.BLOCK_STATUS, offset, n)
            got = self._allocations(offset, n, reply)
            out += got
            offset = got[-1].offset + got[-1].length
        return out

    async def aclose(self) -> None:
        """Send ``NBD_CMD_DISC`` (when connected) and close; pending requests fail."""
        if self._closed:
            return
        self._closed = True
        await self._session.aclose(True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _establish(
    target: _Target,
    deadline: float,
    timeout: float | None,
    closed: Callable[[], bool] = lambda: False,
) -> _Session:
    """Connect and negotiate, retrying until *deadline* (one attempt if it has passed).

    Retrying stops early once *closed()* says the client was closed.
    """
    pause = _RETRY_FIRST
    while True:
        try:
            channel, core, ready = await _async_handshake(target, False, timeout)
        except NbdConnectionError:
            left = deadline - time.monotonic()
            if closed():
                raise NbdError("the NBD client was closed while reconnecting") from None
            if left <= 0:
                raise
            await asyncio.sleep(min(pause, left))  # the last attempt falls on the deadline
            pause = min(pause * 2, _RETRY_MAX)
            continue
        assert isinstance(ready, ExportReady)
        return _Session(channel, core, ready)
