"""The vhost-user server: a UNIX-socket listener serving one front-end at a time.

Contract:

* :meth:`VhostUserServer.serve` runs on an asyncio loop and accepts
  front-ends until :meth:`VhostUserServer.close`.  While one is connected,
  another is accepted only to be refused (closed, with the reason logged); the
  listener keeps accepting, so it is "re-armed" as soon as a connection ends.
  A front-end that hung up but whose teardown is still running does not count:
  the newcomer waits for the teardown instead of being refused.
* Each connection reads protocol messages and their fds through a
  :class:`~iochannel.SocketChannel`, asking for exactly the bytes of the
  current header or payload so fds are never read along with the next message.
  Messages go through a :class:`~.protocol.MessageReader` to a
  :class:`~.handler.Handler`; replies are written back.
* A protocol error, a broken virtqueue, EOF or an I/O error ends the
  connection: the reason is logged, queues are stopped (which waits until the
  requests in flight complete), guest memory is unmapped and every fd is
  closed, in that order.  Nothing escapes to the caller.
* The protocol loop can be moved while a front-end is connected:
  :meth:`VhostUserServer.detach` (thread-safe) parks it between messages or in
  a read wait, ending the wait with :meth:`~iochannel.Channel.wake_read`;
  :meth:`VhostUserServer.attach` resumes it on another loop, possibly in
  another thread.  Bytes are either still in the socket or kept by the reader,
  so no message is lost.  Queue workers are threads of their own and keep
  running meanwhile.
* With ``queue_loops``, queue *i* is served on loop *i* instead of a worker
  thread (:class:`~.loops.LoopRings`); those loops must keep running while
  the server does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import select
import threading
from collections.abc import Sequence

from .._core.flags import Condition, ReadFlag, Shutdown
from .._transports.address import Address
from .._transports.socket import SocketChannel
from ..errors import ChannelError
from .device import VhostUserBackend
from .handler import Handler
from .loops import LoopRings
from .protocol import MessageReader, ProtocolError
from .worker import WorkerPool

__all__ = ["VhostUserServer"]

log = logging.getLogger(__name__)

#: How often :meth:`VhostUserServer.detach` repeats its wake-up, which is only
#: seen by a wait that is already pending.
_DETACH_POLL = 0.01


class _Connection:
    """One front-end: its channel, reader, request handler and workers."""

    def __init__(self, server: VhostUserServer, ch: SocketChannel) -> None:
        self.server = server
        self.ch = ch
        self.reader = MessageReader()
        self.pool: WorkerPool | LoopRings
        if server.queue_loops is None:
            self.pool = WorkerPool(server.backend, self._broken)
        else:
            self.pool = LoopRings(server.backend, server.queue_loops, self._broken)
        self.handler = Handler(server.backend, self.pool, name=server.name)
        self.finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.parked = threading.Event()
        self.detaching = False
        self._torn_down = False
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    def _broken(self, reason: str) -> None:
        """A worker found the device broken: end the connection (any thread)."""
        log.warning("%s: ending connection: %s", self.server.name, reason)
        # Shutting down only reading ends the protocol loop's read, and the peer
        # sees the disconnect when teardown closes the socket, after cleanup.
        try:
            self.ch.shutdown(Shutdown.READ)
        except (ChannelError, OSError):
            pass

    def peer_gone(self) -> bool:
        """True if the front-end hung up (its EOF may not be processed yet)."""
        if self.finished.done():
            return True
        poller = select.poll()
        poller.register(self.ch.fileno(), select.POLLRDHUP)
        return bool(poller.poll(0))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the protocol loop on *loop* (thread-safe)."""
        self.parked.clear()
        self.detaching = False

        def create() -> None:
            # Referenced until done: the loop keeps only a weak reference.
            self._task = loop.create_task(self.run())

        loop.call_soon_threadsafe(create)

    async def run(self) -> None:
        try:
            if not await self._loop():
                self.parked.set()
                return
        except ProtocolError as exc:
            log.warning("%s: protocol error, disconnecting: %s", self.server.name, exc)
        except (ChannelError, OSError) as exc:
            log.warning("%s: connection failed: %s", self.server.name, exc)
        except Exception:
            log.exception("%s: internal error, disconnecting", self.server.name)
        self.teardown()

    async def _loop(self) -> bool:
        """Serve messages; True when the connection ended, False when detached."""
        ch, reader, handler = self.ch, self.reader, self.handler
        while not self.detaching:
            msg = reader.next_message()
            if msg is not None:
                log.debug(
                    "%s: %s flags=%#x %s",
                    self.server.name,
                    msg.request.name,
                    msg.flags,
                    msg.payload,
                )
                reply = handler.handle(msg)
                if reply is not None:
                    await ch.awritev_all([reply])
                continue
            buf = bytearray(reader.wanted())
            fds: list[int] = []
            # Received fds are shared with the front-end: their O_NONBLOCK flag
            # is its business (QEMU reads its call eventfds non-blocking).
            n = ch.readv([buf], fds=fds, flags=ReadFlag.FD_PRESERVE_BLOCKING)
            if n is None:
                await ch.wait_async(Condition.IN)
            elif n == 0:
                reader.eof()
                log.info("%s: front-end disconnected", self.server.name)
                return True
            else:
                reader.feed(memoryview(buf)[:n], fds)
        return False

    def teardown(self) -> None:
        """Stop queues (draining requests), unmap memory, close fds; idempotent."""
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        try:
            self.handler.close()
        finally:
            self.pool.close()
            self.reader.close()
            # Free the slot first: a front-end that saw EOF may reconnect at once.
            self.server._connection_ended(self)
            self.ch.close()
            self.finished.set_result(None)


class VhostUserServer:
    """Serves *backend* to front-ends connecting to *listener*."""

    def __init__(
        self,
        backend: VhostUserBackend,
        listener: SocketChannel,
        *,
        name: str = "vhost-user",
        queue_loops: Sequence[asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        self.backend = backend
        self.name = name
        #: Where each queue is served (:class:`~.loops.LoopRings`); None: worker threads.
        self.queue_loops = queue_loops
        self._listener = listener
        self._conn: _Connection | None = None
        self._lock = threading.Lock()
        self._closing = False

    @classmethod
    def listen(
        cls,
        backend: VhostUserBackend,
        addr: Address,
        *,
        name: str = "vhost-user",
        queue_loops: Sequence[asyncio.AbstractEventLoop] | None = None,
    ) -> VhostUserServer:
        """Listen on *addr* (a :class:`~iochannel.UnixAddress` or listening fd)."""
        return cls(backend, SocketChannel.listen(addr), name=name, queue_loops=queue_loops)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def serve(self) -> None:
        """Accept and serve front-ends until :meth:`close`; see the module docstring."""
        loop = asyncio.get_running_loop()
        try:
            while not self._closing:
                try:
                    ch = await self._listener.aaccept()
                except ChannelError:
                    break  # closed
                except OSError as exc:
                    log.warning("%s: accept failed: %s", self.name, exc)
                    continue
                conn = self._conn
                if conn is not None and conn.peer_gone():
                    # A front-end that reconnects right after hanging up must
                    # not be refused because its old connection is still
                    # being torn down.
                    self._end(conn)
                    await asyncio.wrap_future(conn.finished)
                self._accept(ch, loop)
        finally:
            conn = self._conn
            if conn is not None:
                self._end(conn)
                await asyncio.wrap_future(conn.finished)

    def _accept(self, ch: SocketChannel, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            busy = self._conn is not None or self._closing
            if not busy:
                try:
                    ch.set_blocking(False)
                    self._conn = _Connection(self, ch)
                except BaseException:
                    ch.close()
                    raise
        if busy:
            log.warning(
                "%s: refusing a front-end: only one vhost-user client is allowed at a time",
                self.name,
            )
            ch.close()
            return
        log.info("%s: front-end connected", self.name)
        assert self._conn is not None
        self._conn.start(loop)

    def _connection_ended(self, conn: _Connection) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None

    def _end(self, conn: _Connection) -> None:
        if conn.parked.is_set():
            conn.teardown()  # detached: no loop will see the shutdown
        else:
            conn._broken("server closing")

    def close(self) -> None:
        """Stop accepting and disconnect the front-end (thread-safe, idempotent).

        :meth:`serve` returns once the connection is torn down.
        """
        with self._lock:
            self._closing = True
            conn = self._conn
        self._listener.close()
        if conn is not None:
            self._end(conn)

    def config_changed(self) -> bool:
        """Tell the connected front-end its config space changed (thread-safe).

        True if it was told; see :meth:`Handler.config_changed`.
        """
        conn = self._conn
        return conn is not None and conn.handler.config_changed()

    def detach(self) -> None:
        """Park the connection's protocol loop (thread-safe); see the module docstring."""
        conn = self._conn
        if conn is None:
            return
        conn.detaching = True
        while not conn.parked.wait(_DETACH_POLL) and not conn.finished.done():
            conn.ch.wake_read()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Resume a parked protocol loop on *loop* (thread-safe)."""
        conn = self._conn
        if conn is not None and conn.parked.is_set():
            conn.start(loop)
