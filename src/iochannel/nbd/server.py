"""The NBD server: block nodes served as named exports to any number of clients.

Contract:

* :class:`NbdServer` listens on any number of addresses (:meth:`~NbdServer.listen`
  for inet, unix and fd addresses, :meth:`~NbdServer.add_listener` for a
  listening channel) and serves the :class:`NbdExport` objects added with
  :meth:`~iochannel.nbd.server.NbdServer.add_export`.  :meth:`~NbdServer.serve` runs on an asyncio
  loop until :meth:`~NbdServer.close`.
* The protocol is :mod:`.protocol`'s :class:`~.protocol.ServerConnection`.
  With TLS credentials, every client must use STARTTLS before anything else
  (QEMU's rule); *authz* then checks the client certificate's name.
* At most *max_connections* clients are served at once (0: no limit); others
  wait in the listen backlog.  A client gets :data:`HANDSHAKE_TIMEOUT`
  seconds to choose an export.
* Each export's requests run on its loop (an iothread's, else the server's):
  once a client chose an export, its connection moves there.  Block status,
  reads of cached data (as QEMU does them in its AioContext) and writes the
  node takes into the page cache (:meth:`~iochannel.block.BlockNode.pwritev_nowait`) are done
  on that loop; other node I/O runs on a thread pool, so a slow disk holds up
  only its requests.  Read and WRITE payload buffers are reused.
* Per client, at most :data:`MAX_IN_FLIGHT` requests are in progress, and a
  request waits while :data:`MAX_BUFFERED` bytes of request and reply data
  are held; meanwhile the connection reads no requests.  A client that never
  reads its replies therefore stalls only itself.
* A protocol error, an I/O error on the connection or EOF ends that
  connection only (logged); node errors are answered to the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import cast

from .._core.channel import Buffer, Channel
from .._core.flags import Shutdown
from .._layers.tls import TLSChannel
from .._transports.address import Address
from .._transports.netlistener import NetListener
from .._transports.socket import SocketChannel
from ..block.nodes import STATUS_ZERO, BlockNode
from ..crypto import AuthzList, Credentials
from ..errors import ChannelError
from . import protocol as p

__all__ = ["HANDSHAKE_TIMEOUT", "MAX_BUFFERED", "MAX_IN_FLIGHT", "NbdExport", "NbdServer"]

log = logging.getLogger(__name__)

#: Seconds a client has from connecting to choosing an export (QEMU's default).
HANDSHAKE_TIMEOUT = 10.0
#: Requests one client may have in progress (QEMU allows 16).
MAX_IN_FLIGHT = 16
#: Request and reply data one client may hold before a new request waits (the
#: socket takes a few hundred KiB at a time: more would only queue).  One
#: request of up to 32 MiB is still admitted below this.
MAX_BUFFERED = 4 << 20
#: Bytes read from the client at once while it sends small requests.
_READ_SIZE = 64 * 1024
#: Node I/O threads of a server (QEMU's aio=threads pool has 64).
_WORKERS = 16
#: Reads at least this long get a reused buffer.
_POOLED = 64 * 1024
#: Send buffer asked for a unix socket client (Linux doubles it, up to wmem_max).
_SEND_BUFFER = 1 << 20


class _Buffers:
    """Read buffers kept for reuse: a fresh one costs a zeroing pass and cold cache lines."""

    def __init__(self) -> None:
        self._free: dict[int, list[bytearray]] = {}
        self._kept = 0

    @staticmethod
    def _size(n: int) -> int:
        return max(_POOLED, 1 << (n - 1).bit_length())

    def get(self, n: int) -> bytearray:
        free = self._free.get(self._size(n))
        if not free:
            return bytearray(self._size(n))
        self._kept -= self._size(n)
        return free.pop()

    def put(self, buf: bytearray) -> None:
        # About what one reply window holds: more would only sit idle.
        if self._kept + len(buf) <= MAX_BUFFERED + MAX_BUFFERED // 2:
            self._free.setdefault(len(buf), []).append(buf)
            self._kept += len(buf)


@dataclass(eq=False)
class NbdExport:
    """A block node served under *name*.

    *loop* is where its requests run (an iothread's loop; ``None``: the
    server's).  *multi_conn* allows NBD_FLAG_CAN_MULTI_CONN: one node behind
    every connection, so a flush on one covers writes of all.  With
    *writethrough*, every write is flushed before it is answered.
    """

    name: str
    node: BlockNode
    description: str = ""
    writable: bool = False
    writethrough: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    multi_conn: bool = True
    #: Connections using the export (read-only: kept by the server).
    connections: set[_Connection] = field(default_factory=set)

    def info(self) -> p.Export:
        """What the protocol core tells clients and checks requests by."""
        return p.Export(
            self.name,
            self.node.size(),
            self.description,
            read_only=not self.writable,
            can_trim=self.writable,
            can_write_zeroes=self.writable,
            can_fast_zero=self.writable,
            can_multi_conn=self.multi_conn,
        )


class _Catalog(Mapping[str, p.Export]):
    """The server's exports as the protocol core looks them up."""

    def __init__(self, server: NbdServer) -> None:
        self._server = server

    def __getitem__(self, name: str) -> p.Export:
        return self._server.exports[name].info()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._server.exports))

    def __len__(self) -> int:
        return len(self._server.exports)


class _Connection:
    """One client: handshake on the server's loop, then requests on the export's."""

    def __init__(self, server: NbdServer, raw: SocketChannel) -> None:
        self.server = server
        self.raw = raw
        self.ch: Channel = raw
        self.core = p.ServerConnection(_Catalog(server), tls=server.tls_creds is not None)
        self.export: NbdExport | None = None
        self.name = f"{server.name} client {raw.fileno()}"
        self._in_flight = 0
        self._buffered = 0
        self._space = asyncio.Event()
        self._output = asyncio.Event()
        self._failed: BaseException | None = None
        #: Events decoded with the export choice, served once transmission starts.
        self._early: list[p.Event] = []
        #: Data cost of the replies queued in the core and not yet taken by the writer.
        self._queued_cost = 0
        self._buffers = _Buffers()
        #: Read buffers of the replies queued in the core, reusable once those are sent.
        self._queued_buffers: list[bytearray] = []
        #: The reused buffer holding the WRITE payload just decoded.
        self._payload: bytearray | None = None
        self._done = False
        #: Set (on the server's loop) once the connection is torn down.
        self.finished = asyncio.Event()
        #: Requests the pool completed, waiting for the loop (see :meth:`_post`).
        self._completed: list[_Completion] = []
        self._completed_lock = threading.Lock()
        self._wake_pending = False

    def stop(self) -> None:
        """End the connection from any thread: its loop sees EOF and tears it down."""
        with contextlib.suppress(ChannelError, OSError):
            self.raw.shutdown(Shutdown.BOTH)

    async def run(self) -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                started = await self._handshake()
            if started:
                assert self.export is not None
                loop = self.export.loop
                if loop is None or loop is asyncio.get_running_loop():
                    await self._transmission()
                else:
                    future = asyncio.run_coroutine_threadsafe(self._transmission(), loop)
                    await asyncio.wrap_future(future)
        except TimeoutError:
            log.warning("%s: no export chosen within %g s", self.name, HANDSHAKE_TIMEOUT)
        except p.ProtocolError as exc:
            log.warning("%s: protocol error, disconnecting: %s", self.name, exc)
            with contextlib.suppress(ChannelError, OSError):
                await self._flush()
        except (ChannelError, OSError) as exc:
            log.info("%s: connection ended: %s", self.name, exc)
        except Exception:
            log.exception("%s: internal error, disconnecting", self.name)
        finally:
            if self.export is not None:
                self.export.connections.discard(self)
            self.ch.close()
            self.finished.set()

    async def _flush(self) -> None:
        data = self.core.data_to_send()
        if data:
            await self.ch.awritev_all(data)

    async def _read(self, size: int) -> memoryview | None:
        """Up to *size* bytes from the client; ``None`` at a clean end of stream."""
        buf = bytearray(size)
        n = await self.ch.areadv([buf])
        if n == 0:
            self.core.receive_eof()
            return None
        return memoryview(buf)[:n]

    async def _handshake(self) -> bool:
        """Negotiate until an export is chosen (True) or the session ends (False)."""
        core = self.core
        await self._flush()
        while True:
            data = await self._read(_READ_SIZE)
            if data is None:
                return False
            core.receive_data(data)
            events = core.events_received()
            for i, ev in enumerate(events):
                if isinstance(ev, p.StartTLS):
                    await self._flush()
                    await self._start_tls()
                elif isinstance(ev, p.TransmissionStarted):
                    await self._flush()
                    self.export = self.server.exports.get(ev.export.name)
                    if self.export is None:  # removed meanwhile
                        return False
                    self.export.connections.add(self)
                    self._early = events[i + 1 :]
                    return True
                elif isinstance(ev, p.Disconnect):
                    await self._flush()
                    return False
            await self._flush()

    async def _start_tls(self) -> None:
        creds = self.server.tls_creds
        assert creds is not None
        authz = self.server.tls_authz() if self.server.tls_authz is not None else None
        tls = TLSChannel.server(self.raw, creds, authz=authz)
        self.ch = tls
        await tls.ahandshake()
        self.core.tls_started()

    # ---- transmission ------------------------------------------------------------------

    async def _transmission(self) -> None:
        writer = asyncio.create_task(self._writer())
        try:
            await self._reader()
        finally:
            # Requests still running are answered before the connection closes.
            while self._in_flight:
                self._space.clear()
                await self._space.wait()
            self._done = True
            self._output.set()
            await writer

    async def _reader(self) -> None:
        core = self.core
        if await self._dispatch(self._early):
            return
        self._early = []
        while True:
            wanted = core.wanted
            if wanted >= _POOLED and not core.buffered:
                # A whole WRITE payload is due: read it into one reused buffer,
                # which the core passes on as the request's data (no copy).  The
                # next request's header comes along in its last read (one read
                # less per request: sequential 256 KiB writes about 8% faster).
                buf = self._buffers.get(wanted)
                view = memoryview(buf)[:wanted]
                head = bytearray(p.REQUEST_SIZE)
                got = 0
                while got < wanted:
                    n = await self.ch.areadv([view[got:], head])
                    if n == 0:
                        core.receive_eof()  # raises: the stream ended inside a request
                        return
                    got += n
                core.receive_data(view)
                if got > wanted:
                    core.receive_data(memoryview(head)[: got - wanted])
                self._payload = buf
            else:
                # Exactly what the next step needs: a header never brings the
                # start of its payload along, so payloads arrive whole (above).
                data = await self._read(wanted)
                if data is None:
                    return
                core.receive_data(data)
            if await self._dispatch(core.events_received()):
                return
            self._payload = None
            if core.pending_output:  # error replies the core answered itself
                self._output.set()

    async def _dispatch(self, events: Iterable[p.Event]) -> bool:
        """Start a task per request, waiting for room; True at the end of the session."""
        for ev in events:
            if isinstance(ev, p.Disconnect):
                return True
            if not isinstance(ev, p.Request):
                continue
            while self._in_flight >= MAX_IN_FLIGHT or self._buffered >= MAX_BUFFERED:
                self._output.set()  # error replies the core queued must go out too
                self._space.clear()
                await self._space.wait()
                if self._failed is not None:
                    raise self._failed
            self._start(ev)
        return False

    def _start(self, req: p.Request) -> None:
        """Run *req*'s node I/O; :meth:`_finished` answers it on this loop.

        Block status, reads of cached data and writes into the page cache
        are done here (QEMU does the first two in its loop; for the third,
        the thread hops cost a Python server more than the copy: sequential
        256 KiB writes about 45% faster); what would wait for the disk goes
        to the pool, so a slow disk holds up only its own requests.
        """
        assert self.export is not None
        cost = req.length if req.command in (p.Command.READ, p.Command.WRITE) else 0
        self._in_flight += 1
        self._buffered += cost
        buf = None
        if req.command == p.Command.READ and req.length >= _POOLED:
            buf = self._buffers.get(req.length)
        elif isinstance(req.data, memoryview) and req.data.obj is self._payload:
            buf, self._payload = self._payload, None  # reusable once written
        work = _work(self.export, req, self.core.structured, buf)
        if req.command in _TRIED_ON_LOOP:
            try:
                result = work(nowait=True)
            except Exception as exc:
                self._finished(req, cost, buf, None, exc)
                return
            if result is not _WAIT:
                self._finished(req, cost, buf, result, None)
                return
        # The pool thread hands the outcome back itself (_pooled, then _post).
        self.server.pool.submit(self._pooled, asyncio.get_running_loop(), work, req, cost, buf)

    def _pooled(
        self,
        loop: asyncio.AbstractEventLoop,
        work: Callable[..., _Result],
        req: p.Request,
        cost: int,
        buf: bytearray | None,
    ) -> None:
        """Run *work* on a pool thread and hand its outcome to the loop."""
        try:
            result = work()
        except Exception as exc:
            self._post(loop, (req, cost, buf, None, exc))
        else:
            self._post(loop, (req, cost, buf, result, None))

    def _post(self, loop: asyncio.AbstractEventLoop, item: _Completion) -> None:
        """Hand a completed request to the loop (any thread); one wake-up serves many."""
        with self._completed_lock:
            self._completed.append(item)
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to answer
            loop.call_soon_threadsafe(self._drain_completed)

    def _drain_completed(self) -> None:
        with self._completed_lock:
            items, self._completed = self._completed, []
            self._wake_pending = False
        for item in items:
            self._finished(*item)

    async def _writer(self) -> None:
        """Send what the core queued, until the session is done and all is sent."""
        core = self.core
        try:
            while True:
                await self._output.wait()
                self._output.clear()
                data = core.data_to_send()
                cost, self._queued_cost = self._queued_cost, 0
                # Their replies are all in data: reusable once it is sent.
                done, self._queued_buffers = self._queued_buffers, []
                if data:
                    await self.ch.awritev_all(data)
                del data
                for buf in done:
                    self._buffers.put(buf)
                self._buffered -= cost
                self._space.set()
                if self._done and not core.pending_output:
                    return
        except (ChannelError, OSError) as exc:
            self._failed = exc
            self._space.set()
            # End the reader's wait too: the client cannot be answered any more.
            with contextlib.suppress(ChannelError, OSError):
                self.raw.shutdown(Shutdown.READ)

    def _finished(
        self,
        req: p.Request,
        cost: int,
        buf: bytearray | None,
        result: _Result,
        error: Exception | None,
    ) -> None:
        try:
            if error is not None:
                raise error
            self._reply(req, result)
        except OSError as exc:
            log.debug("%s: %s failed: %s", self.name, req.command.name, exc)
            self.core.reply_error(req.cookie, p.nbd_errno(exc.errno), str(exc.strerror or exc))
        except Exception as exc:
            log.warning("%s: %s failed: %s", self.name, req.command.name, exc)
            self.core.reply_error(req.cookie, p.EIO, str(exc))
        finally:
            if buf is not None and req.command == p.Command.READ:
                self._queued_buffers.append(buf)  # reusable once the reply is sent
            elif buf is not None:
                self._buffers.put(buf)
            self._in_flight -= 1
            self._queued_cost += cost
            self._output.set()
            self._space.set()

    def _reply(self, req: p.Request, result: _Result) -> None:
        core = self.core
        if req.command == p.Command.READ:
            parts = cast(list[Buffer | int], result)
            core.reply_read(req.cookie, req.offset, parts, df=bool(req.flags & p.CommandFlag.DF))
        elif req.command == p.Command.BLOCK_STATUS:
            extents = cast(list[p.Extent], result)
            one = bool(req.flags & p.CommandFlag.REQ_ONE)
            core.reply_block_status(req.cookie, p.BASE_ALLOCATION_ID, extents, req.length, one)
        else:
            core.reply_ok(req.cookie)


class _Wait:
    """The type of :data:`_WAIT`."""


#: What ``run(nowait=True)`` gives when the I/O would wait: run it on the pool.
_WAIT = _Wait()
#: Commands whose node I/O is tried on the loop first.
_TRIED_ON_LOOP = frozenset((p.Command.READ, p.Command.WRITE, p.Command.BLOCK_STATUS))
#: What a request's node I/O gives: READ parts, BLOCK_STATUS extents, else nothing
#: (or, done with ``nowait``, :data:`_WAIT`).
_Result = list[Buffer | int] | list[p.Extent] | _Wait | None
#: A request the pool completed: its arguments to :meth:`_Connection._finished`.
_Completion = tuple[p.Request, int, bytearray | None, _Result, Exception | None]


def _work(
    export: NbdExport, req: p.Request, structured: bool, buf: bytearray | None
) -> Callable[..., _Result]:
    """The node I/O of *req*: ``run()`` on a pool thread, ``run(nowait=True)`` on the loop.

    A READ fills *buf* (at least its length) if given, else a new buffer.
    With ``nowait``, a READ of uncached data and a WRITE that would wait for
    the disk (or must be flushed) do nothing and give :data:`_WAIT`.
    """
    node = export.node
    flush_after = bool(req.flags & p.CommandFlag.FUA) or (
        export.writethrough and req.command in (p.Command.WRITE, p.Command.WRITE_ZEROES)
    )

    def run(nowait: bool = False) -> _Result:
        command, offset, length = req.command, req.offset, req.length
        if command == p.Command.READ:
            data = memoryview(buf if buf is not None else bytearray(length))[:length]
            return _read(node, offset, data, structured, nowait)
        if command == p.Command.WRITE:
            assert req.data is not None
            view = memoryview(req.data)
            if nowait:
                if flush_after or not node.pwritev_nowait([view], offset):
                    return _WAIT
                return None
            done = 0
            while done < length:
                n = node.pwritev([view[done:]], offset + done)
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                done += n
        elif command == p.Command.TRIM:
            node.discard(offset, length)
        elif command == p.Command.WRITE_ZEROES:
            unmap = not req.flags & p.CommandFlag.NO_HOLE
            if req.flags & p.CommandFlag.FAST_ZERO:
                if not node.zero_fast(offset, length, unmap):
                    raise OSError(errno.EOPNOTSUPP, "zeroing this range would not be fast")
            else:
                node.write_zeroes(offset, length, unmap)
        elif command == p.Command.FLUSH:
            node.flush()
        elif command == p.Command.BLOCK_STATUS:
            runs = node.block_status(offset, length)
            if not runs:
                raise OSError(errno.EIO, "no block status")
            return [p.Extent(n, f) for n, f in runs]
        if flush_after:
            node.flush()
        return None

    return run


def _read(
    node: BlockNode, offset: int, into: memoryview, sparse: bool, nowait: bool
) -> list[Buffer | int] | _Wait:
    """Data (slices of *into*) and hole lengths covering the range at *offset*.

    Zeroed ranges are holes when *sparse*.  With *nowait*, :data:`_WAIT` if
    the data is not cached (see :meth:`~iochannel.block.BlockNode.preadv_nowait`).
    """
    length = len(into)
    runs = node.block_status(offset, length) if sparse and length else []
    parts: list[Buffer | int] = []
    pos, end = offset, offset + length
    for n, flags in runs:
        if pos >= end:
            break
        n = min(n, end - pos)
        if flags & STATUS_ZERO:
            parts.append(n)
            pos += n
        else:
            break  # read data (and whatever follows) in one call below
    if pos < end:
        view = into[pos - offset :]
        if nowait:
            if not node.preadv_nowait([view], pos):
                return _WAIT
            parts.append(view)
            return parts
        done = 0
        while done < len(view):
            got = node.preadv([view[done:]], pos + done)
            if got <= 0:
                raise OSError(errno.EIO, f"read past the end of node '{node.name}'")
            done += got
        parts.append(view)
    return parts


class NbdServer:
    """Serves :class:`NbdExport` objects over NBD; see the module docstring."""

    def __init__(
        self,
        *,
        tls_creds: Credentials | None = None,
        tls_authz: Callable[[], AuthzList] | None = None,
        max_connections: int = 100,
        name: str = "nbd",
    ) -> None:
        self.name = name
        self.tls_creds = tls_creds
        self.tls_authz = tls_authz
        self.max_connections = max_connections
        self.exports: dict[str, NbdExport] = {}
        self.pool = concurrent.futures.ThreadPoolExecutor(_WORKERS, f"{name}-io")
        self._listener = NetListener(name=name)
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._slots = asyncio.Semaphore(max_connections or 1 << 30)
        self._closing = False
        self._accepting: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- listening and exports ------------------------------------------------------

    def listen(self, addr: Address) -> None:
        """Listen on *addr* (inet: every address it resolves to; unix; an fd)."""
        self._listener.open(addr, backlog=16)

    def add_listener(self, channel: SocketChannel) -> None:
        """Accept clients on an already listening *channel* (the server takes it)."""
        self._listener.add(channel)

    @property
    def local_addresses(self) -> list[Address]:
        return self._listener.local_addresses

    @property
    def multi_conn(self) -> bool:
        """Whether exports may offer multi-conn: not with a single client allowed."""
        return self.max_connections != 1

    def add_export(self, export: NbdExport) -> None:
        if export.name in self.exports:
            raise ValueError(f"NBD server already has export named '{export.name}'")
        if not self.multi_conn:
            export.multi_conn = False
        self.exports[export.name] = export

    async def remove_export(self, name: str) -> NbdExport:
        """Stop offering export *name*; disconnect its clients and wait until they are gone.

        Their requests in progress finish first, so the export's loop (an
        iothread) may be stopped afterwards.
        """
        export = self.exports.pop(name)
        conns = list(export.connections)
        for conn in conns:
            conn.stop()
        for conn in conns:
            await conn.finished.wait()
        return export

    @property
    def clients(self) -> int:
        return len(self._connections)

    # ---- serving ---------------------------------------------------------------------

    async def serve(self) -> None:
        """Accept and serve clients until :meth:`close`."""
        self._accepting = [
            asyncio.create_task(self._accept_loop(ch)) for ch in self._listener.channels
        ]
        try:
            await asyncio.gather(*self._accepting, return_exceptions=True)
        finally:
            for conn in list(self._connections):
                conn.stop()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept_loop(self, listener: SocketChannel) -> None:
        while not self._closing:
            await self._slots.acquire()
            try:
                raw = await listener.aaccept()
            except ChannelError:
                self._slots.release()
                return  # the listener was closed
            except OSError as exc:
                self._slots.release()
                log.warning("%s: accept failed: %s", self.name, exc)
                continue
            try:
                raw.set_blocking(False)
                if raw.socket.family == socket.AF_UNIX:
                    # Its 208 KiB default holds less than one 256 KiB reply, so each
                    # would take two sends and a wait (TCP sizes its own buffer):
                    # sequential 256 KiB reads about 25% faster.
                    raw.set_send_buffer(_SEND_BUFFER)
                conn = _Connection(self, raw)
            except BaseException:
                raw.close()
                self._slots.release()
                raise
            self._connections.add(conn)
            task = asyncio.create_task(conn.run())
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._ended, conn))

    def _ended(self, conn: _Connection, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._connections.discard(conn)
        self._slots.release()

    def close(self) -> None:
        """Stop accepting and disconnect every client (call on the serving loop).

        :meth:`serve` returns once every connection is torn down.  The pool
        threads end with it.
        """
        self._closing = True
        for task in self._accepting:
            task.cancel()
        self._listener.close()
        for conn in list(self._connections):
            conn.stop()

    def shutdown_pool(self) -> None:
        """Release the I/O threads (after :meth:`serve` returned)."""
        self.pool.shutdown(wait=True)
