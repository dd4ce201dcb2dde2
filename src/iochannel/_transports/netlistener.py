"""NetListener: one network service over several listening sockets."""

from __future__ import annotations

import asyncio
import select
from collections.abc import AsyncIterator, Callable
from typing import final

from .._core.flags import Condition
from .._core.watch import Watch
from .address import Address, resolve
from .socket import SocketChannel

__all__ = ["ClientCallback", "NetListener"]

ClientCallback = Callable[["NetListener", SocketChannel], None]


@final
class NetListener:
    """One network service over several listening sockets.

    :meth:`NetListener.open` listens on every address a name resolves to
    (``localhost`` gives both 127.0.0.1 and ::1) and succeeds if at least one
    binds.  Clients come out one of three ways, all sharing the same sockets:

    * a callback, ``set_client_callback(cb)``, called on an asyncio loop as
      ``cb(listener, client)`` for each accepted client;
    * ``async for client in listener`` (or ``await listener.accept()``);
    * ``listener.wait_client()``, blocking.

    Accepted clients belong to whoever receives them.  :meth:`disconnect` (also
    ``close()`` and leaving a ``with`` block) stops accepting and closes every
    listening socket, which unlinks the unix paths it created.
    """

    def __init__(self, *, name: str = "listener") -> None:
        self.name = name
        self._channels: list[SocketChannel] = []
        self._watches: list[Watch] = []
        self._callback: ClientCallback | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[SocketChannel] | None = None

    # ---- sockets --------------------------------------------------------

    def open(self, addr: Address, backlog: int = 1) -> None:
        """Listen on every address *addr* resolves to; at least one must work."""
        first_error: OSError | None = None
        opened = 0
        for cand in resolve(addr):
            try:
                ch = SocketChannel.listen(cand, backlog)
            except OSError as exc:
                first_error = first_error or exc
                continue
            self.add(ch)
            opened += 1
        if not opened:
            assert first_error is not None
            raise first_error

    def add(self, channel: SocketChannel) -> None:
        """Serve clients of an already listening *channel* (the listener takes it)."""
        channel.name = f"{self.name} {channel.name}"
        channel.set_blocking(False)
        self._channels.append(channel)
        if self._callback is not None and self._loop is not None:
            self._watch(channel)

    @property
    def channels(self) -> tuple[SocketChannel, ...]:
        return tuple(self._channels)

    @property
    def local_addresses(self) -> list[Address]:
        return [ch.local_address for ch in self._channels]

    @property
    def is_connected(self) -> bool:
        return bool(self._channels)

    # ---- clients --------------------------------------------------------

    def set_client_callback(
        self, callback: ClientCallback | None, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Call ``callback(listener, client)`` on *loop* (default: running) per client.

        ``None`` stops accepting through the callback (clients then wait in
        the backlog).
        """
        for watch in self._watches:
            watch.cancel()
        self._watches.clear()
        self._callback = callback
        if callback is None:
            self._loop = None
            return
        self._loop = loop or asyncio.get_running_loop()
        for ch in self._channels:
            self._watch(ch)

    def _watch(self, channel: SocketChannel) -> None:
        assert self._loop is not None
        self._watches.append(channel.add_watch(Condition.IN, self._on_ready, loop=self._loop))

    def _on_ready(self, channel: object, cond: Condition) -> bool:
        assert isinstance(channel, SocketChannel)
        try:
            client = channel.accept()
        except OSError:
            return True  # e.g. ECONNABORTED: the client gave up; keep listening
        if client is not None:
            if self._callback is None:
                client.close()
            else:
                self._callback(self, client)
        return True

    async def accept(self) -> SocketChannel:
        """The next client, waiting on the running loop."""
        if self._queue is None:
            queue: asyncio.Queue[SocketChannel] = asyncio.Queue()
            self._queue = queue
            self.set_client_callback(lambda _listener, client: queue.put_nowait(client))
        return await self._queue.get()

    async def __aiter__(self) -> AsyncIterator[SocketChannel]:
        while self._channels:
            yield await self.accept()

    def wait_client(self, timeout: float | None = None) -> SocketChannel | None:
        """Block until a client connects and return it (``None`` on timeout)."""
        poller = select.poll()
        by_fd = {}
        for ch in self._channels:
            poller.register(ch.fileno(), select.POLLIN)
            by_fd[ch.fileno()] = ch
        ms = None if timeout is None else int(timeout * 1000)
        for fd, _ev in poller.poll(ms):
            client = by_fd[fd].accept()
            if client is not None:
                return client
        return None

    # ---- closing --------------------------------------------------------

    def disconnect(self) -> None:
        """Stop accepting and close every listening socket."""
        for watch in self._watches:
            watch.cancel()
        self._watches.clear()
        self._callback = None
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait().close()
            self._queue = None

    close = disconnect

    def __enter__(self) -> NetListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
