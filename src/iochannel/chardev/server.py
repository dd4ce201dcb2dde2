"""Connection-oriented chardevs: one chardev object per session.

A :class:`SessionChardev` *is* one established connection.  It is open from
birth (attaching a frontend delivers one OPENED), delivers CLOSED exactly
once when the connection ends, and is then closed for good: it never
reconnects, so a frontend holding it never has to ask which connection a
byte or an event belongs to.

A :class:`ChardevServer` accepts connections on a
:class:`~iochannel.NetListener`, runs each through :func:`establish` and hands
the resulting session to its ``connect(session)`` callback, on the server's
loop.  At most ``max_sessions`` connections are served or being set up at
once; while that many are, the server stops accepting and later clients wait
in the kernel's listen backlog, exactly as QEMU's one-client socket does.
When a session ends its ``disconnect(session)`` callback runs and accepting
resumes.

Setting up a connection follows QEMU's order: non-blocking mode, nodelay, TLS
handshake (with the authorization check), WebSocket handshake, telnet
negotiation.  A failure at any step closes the connection; the server goes on
accepting.  Without TLS, WebSocket or telnet nothing needs waiting and the
session starts at once.  The handshakes together must finish within
``SessionSetup.handshake_timeout`` seconds (:data:`HANDSHAKE_TIMEOUT` by
default): a peer that stalls or trickles bytes loses its connection and frees
its slot, so it cannot keep other clients out.

The socket chardev (:mod:`iochannel.chardev.socket`) is built on these:
its one-client and ``connections=N`` behaviours are a :class:`ChardevServer`
with ``max_sessions`` 1 or N whose sessions it fronts.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from .._core.channel import Buffer, Channel, close_fds
from .._layers.tls import TLSChannel
from .._layers.websock import WebsockChannel
from .._transports.address import Address, InetAddress, UnixAddress, VsockAddress
from .._transports.netlistener import NetListener
from .._transports.socket import SocketChannel
from ..crypto.authz import AuthzList
from ..crypto.creds import Credentials
from ..errors import ChannelBrokenPipeError, ChannelError
from .channel_backend import ChannelChardev
from .chardev import Chardev, ChardevError
from .events import ChardevEvent
from .ratelimit import log_peer
from .telnet import TelnetEvent, TelnetFilter

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "ChardevServer",
    "Establishing",
    "SessionChardev",
    "SessionSetup",
    "establish",
]

log = logging.getLogger(__name__)

#: Seconds a connection has by default to finish its TLS, WebSocket and telnet handshakes.
HANDSHAKE_TIMEOUT = 10.0
#: Input bytes a session reads ahead of its frontend (see :class:`SessionChardev`).
READ_AHEAD = 65536


@dataclasses.dataclass(frozen=True)
class SessionSetup:
    """How a fresh connection becomes a session (see the module docstring)."""

    nodelay: bool = False
    tls_creds: Credentials | None = None
    #: Server side: checks the client certificate's DN; looked up per connection
    #: so an authz object replaced at run time takes effect.
    tls_authz: Callable[[], AuthzList] | None = None
    #: Client side: the name the server certificate must carry.
    tls_hostname: str | None = None
    websocket: bool = False
    telnet: bool = False
    tn3270: bool = False
    #: Seconds for all handshakes together; ``None``: no deadline.
    handshake_timeout: float | None = HANDSHAKE_TIMEOUT

    @property
    def needs_handshake(self) -> bool:
        """Whether setting up waits for the peer (so it cannot be done synchronously)."""
        return self.tls_creds is not None or self.websocket or self.telnet or self.tn3270

    @property
    def protocol(self) -> str:
        """The name QEMU shows in filenames."""
        if self.websocket:
            return "websocket"
        if self.tn3270:
            return "tn3270"
        return "telnet" if self.telnet else "tcp"

    def telnet_filter(self) -> TelnetFilter | None:
        if self.telnet or self.tn3270:
            return TelnetFilter(tn3270=self.tn3270)
        return None


class Establishing:
    """One connection on its way to a session; :meth:`cancel` abandons it.

    Made by :func:`establish`.  ``done`` receives the ready channel, or the
    exception that ended the setup (the connection is closed then); it is
    never called after :meth:`cancel`.
    """

    def __init__(
        self,
        raw: SocketChannel,
        setup: SessionSetup,
        server: bool,
        done: Callable[[Channel | BaseException], None],
    ) -> None:
        self.raw = raw
        self.channel: Channel = raw
        self.setup = setup
        self.server = server
        self._done: Callable[[Channel | BaseException], None] | None = done
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> bool:
        """Whether the setup still waits for handshakes on the loop."""
        return self._task is not None and not self._task.done()

    def _prepare(self) -> None:
        self.raw.set_blocking(False)
        if self.setup.nodelay:
            self.raw.set_delay(False)

    async def _handshakes(self) -> None:
        setup = self.setup
        if setup.tls_creds is not None:
            if self.server:
                authz = setup.tls_authz() if setup.tls_authz is not None else None
                tls = TLSChannel.server(self.channel, setup.tls_creds, authz=authz)
            else:
                tls = TLSChannel.client(self.channel, setup.tls_creds, setup.tls_hostname)
            self.channel = tls
            await tls.ahandshake()
        if setup.websocket:
            ws = WebsockChannel.server(self.channel)
            self.channel = ws
            await ws.ahandshake()
        telnet = setup.telnet_filter()
        if telnet is not None:
            await self.channel.awrite_all(telnet.greeting())

    async def _handshakes_in_time(self) -> None:
        limit = self.setup.handshake_timeout
        try:
            async with asyncio.timeout(limit) as deadline:
                await self._handshakes()
        except TimeoutError:
            if deadline.expired():
                raise ChardevError(
                    f"handshake not finished within {limit:g} s (handshake-timeout-ms)"
                ) from None
            raise

    async def _run(self) -> None:
        try:
            await self._handshakes_in_time()
        except asyncio.CancelledError:
            self.channel.close()
            raise
        except Exception as exc:
            # Whatever ends one connection's setup must free its slot, never the server.
            if not isinstance(exc, (OSError, ChannelError, ChardevError)):
                log.exception("connection setup failed unexpectedly")
            self.channel.close()
            self._finish(exc)
        else:
            self._finish(self.channel)

    def _finish(self, outcome: Channel | BaseException) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(outcome)
        elif isinstance(outcome, Channel):
            outcome.close()

    def cancel(self) -> None:
        """Abandon the setup and close the connection (``done`` is not called)."""
        self._done = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        self.channel.close()


def establish(
    raw: SocketChannel,
    setup: SessionSetup,
    *,
    server: bool,
    loop: asyncio.AbstractEventLoop,
    done: Callable[[Channel | BaseException], None],
) -> Establishing:
    """Set *raw* up as *setup* says, then call ``done(channel or error)``.

    Without handshakes ``done`` runs before this returns; otherwise from a task
    on *loop*.
    """
    est = Establishing(raw, setup, server, done)
    try:
        est._prepare()
    except OSError as exc:
        raw.close()
        est._finish(exc)
        return est
    if setup.needs_handshake:
        est._task = loop.create_task(est._run())
    else:
        est._finish(raw)
    return est


def connection_name(raw: SocketChannel, protocol: str, server: bool) -> str:
    """QEMU's filename for a connected socket chardev."""
    listen = ",server=on" if server else ""
    try:
        local, peer = raw.local_address, raw.remote_address
    except OSError:
        return f"{protocol}:?{listen}"
    if isinstance(local, InetAddress) and isinstance(peer, InetAddress):
        return f"{protocol}:{_hostport(local)}{listen} <-> {_hostport(peer)}"
    if isinstance(local, UnixAddress) and isinstance(peer, UnixAddress):
        # A client's own end is unnamed: show the path it connected to.
        return f"unix:{local.path if server else peer.path}{listen}"
    if isinstance(local, VsockAddress) and isinstance(peer, VsockAddress):
        return f"vsock:{local.cid}:{local.port}{listen} <-> {peer.cid}:{peer.port}"
    return f"{protocol}:?{listen}"


def _hostport(addr: Address) -> str:
    assert isinstance(addr, InetAddress)
    host = f"[{addr.host}]" if ":" in addr.host else addr.host
    return f"{host}:{addr.port}"


class SessionChardev(ChannelChardev):
    """One established connection as a chardev (see the module docstring).

    *channel* is the session's channel (a socket, or TLS/WebSocket over one);
    *telnet* filters its input.  When the session ends (the peer left,
    :meth:`disconnect` was called or the session was closed), the connection
    is released, ``on_release(session)`` runs, frontends get CLOSED, then
    ``on_end(session)`` runs; each callback once.

    The connection is read whether or not the frontend takes input: up to
    ``READ_AHEAD`` (64 KiB) bytes wait here for it (with the fds that came with
    them), so a peer that hangs up is noticed, and the channel's protocol
    duties (WebSocket pongs and close replies) are done, even when nothing
    reads.  A peer that leaves while its input waits has its connection
    closed at once; a frontend still gets that input, then CLOSED (until then
    the session keeps its slot).  ``attended()`` says whether any frontend
    may come to read: when it is false, the input is dropped and the session
    ends at once, as QEMU drops it on a hang-up.
    """

    type_name: ClassVar[str] = "socket"

    def __init__(
        self,
        id: str,
        channel: Channel,
        *,
        telnet: TelnetFilter | None = None,
        filename: str = "socket",
        on_release: Callable[[SessionChardev], None] | None = None,
        on_end: Callable[[SessionChardev], None] | None = None,
        attended: Callable[[], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(id, **kwargs)
        self._channel: Channel | None = channel
        self._attended = attended
        self._telnet = telnet
        self._on_release = on_release
        self._on_end = on_end
        self.filename = filename
        #: Input read ahead of the frontend, in order: bytes with their fds, and BREAKs.
        self._held: collections.deque[tuple[bytes, list[int]] | TelnetEvent] = collections.deque()
        self._held_size = 0
        self._hung_up = False

    def _open(self) -> bool:
        channel, self._channel = self._channel, None
        if channel is None or channel.closed:
            return False
        self._attach_channels(channel, channel)
        return True

    def close(self) -> None:
        if self.closed:
            return
        channel, self._channel = self._channel, None
        if channel is not None:  # never opened
            channel.close()
        for item in self._held:
            if not isinstance(item, TelnetEvent):
                close_fds(item[1])
        self._held.clear()
        self._held_size = 0
        super().close()
        end, self._on_end = self._on_end, None
        if end is not None:
            end(self)

    def _close(self) -> None:
        super()._close()
        release, self._on_release = self._on_release, None
        if release is not None:
            release(self)

    def _on_disconnect(self) -> None:
        if self._held and (self._attended is None or self._attended()):
            # Gone, but its input waits for a frontend: free the fd now, end
            # (and free the slot) once the input is delivered.
            self._hung_up = True
            self._release_channels()
            return
        self.close()  # a session does not outlive its connection

    def _chr_write(self, data: memoryview) -> int | None:
        if self._hung_up:
            raise ChannelBrokenPipeError(errno.EPIPE, f"chardev '{self.id}': the peer has left")
        return super()._chr_write(data)

    def disconnect(self) -> None:
        """Drop the connection: CLOSED, then the session ends."""
        self.close()

    # ---- input ------------------------------------------------------------

    def be_can_read(self) -> int:
        """Room left for reading ahead of the frontend."""
        return max(0, READ_AHEAD - self._held_size)

    def be_write(self, data: Buffer) -> None:
        """Input read from the connection: held, then given to the frontend as it takes it."""
        fds, self._msgfds = self._msgfds, []  # those that came with *data*
        telnet = self._telnet
        items = telnet.feed(data) if telnet is not None else [bytes(data)]
        for item in items:
            if isinstance(item, TelnetEvent):
                self._held.append(item)
            elif item:
                self._held.append((bytes(item), fds))
                self._held_size += len(item)
                fds = []
        close_fds(fds)  # came with bytes the telnet filter dropped
        self._deliver()

    def _deliver(self) -> None:
        held = self._held
        while held and not self.closed:
            item = held[0]
            if isinstance(item, TelnetEvent):
                held.popleft()
                self.be_event(ChardevEvent.BREAK)
                continue
            room = Chardev.be_can_read(self)
            if room <= 0:
                return
            data, fds = item
            if len(data) > room:
                held[0] = (data[room:], [])
                data = data[:room]
            else:
                held.popleft()
            self._held_size -= len(data)
            if fds:
                close_fds(self._msgfds)  # an unread earlier batch is stale now
                self._msgfds = fds
            Chardev.be_write(self, data)
        if self._hung_up and not held:
            self.close()

    def _update_read_handler(self) -> None:
        self._deliver()
        super()._update_read_handler()


SessionCallback = Callable[[SessionChardev], None]


class ChardevServer:
    """Accepts connections and hands each session to ``connect`` (see the module docstring).

    *listener* is taken over (closed by :meth:`close`).  Sessions are named
    ``<id>.<n>`` and run on *loop*; *session_kwargs* go to each
    :class:`SessionChardev` (``closed_writes`` …).
    """

    def __init__(
        self,
        id: str,
        listener: NetListener,
        connect: SessionCallback,
        *,
        disconnect: SessionCallback | None = None,
        setup: SessionSetup = SessionSetup(),
        max_sessions: int = 1,
        loop: asyncio.AbstractEventLoop,
        **session_kwargs: Any,
    ) -> None:
        if max_sessions < 1:
            raise ChardevError(f"a server needs at least one session slot, not {max_sessions}")
        self.id = id
        self.listener = listener
        self.setup = setup
        self.max_sessions = max_sessions
        self.loop = loop
        self._connect = connect
        self._disconnect = disconnect
        self._session_kwargs = session_kwargs
        self._sessions: list[SessionChardev] = []
        self._pending: list[Establishing] = []
        self._accepting = False
        self._started = False
        self._closed = False
        self._count = 0

    @property
    def sessions(self) -> tuple[SessionChardev, ...]:
        return tuple(self._sessions)

    @property
    def busy(self) -> int:
        """Connections served or being set up."""
        return len(self._sessions) + len(self._pending)

    # ---- accepting ------------------------------------------------------

    def start(self) -> None:
        """Accept clients on the loop from now on."""
        self._started = True
        self._rearm()

    def _rearm(self) -> None:
        want = self._started and not self._closed and self.busy < self.max_sessions
        if want != self._accepting:
            self._accepting = want
            self.listener.set_client_callback(self._on_client if want else None, loop=self.loop)

    def _on_client(self, _listener: NetListener, raw: SocketChannel) -> None:
        if self._closed or self.busy >= self.max_sessions:
            raw.close()  # accepted by a racing callback: cannot serve it
            return
        self.adopt(raw)

    def adopt(self, raw: SocketChannel) -> None:
        """Serve an already connected socket as if it had been accepted (``add_client``)."""
        name = connection_name(raw, self.setup.protocol, server=True)
        holder: list[Establishing] = []

        def done(outcome: Channel | BaseException) -> None:
            if holder:
                self._pending.remove(holder[0])
            if isinstance(outcome, BaseException):
                log_peer(
                    log,
                    self.id,
                    logging.WARNING,
                    "chardev '%s': connection from %s failed: %s",
                    self.id,
                    name,
                    outcome,
                )
                self._rearm()
            else:
                self._start_session(outcome, name)

        est = establish(raw, self.setup, server=True, loop=self.loop, done=done)
        if est.pending:
            holder.append(est)
            self._pending.append(est)
        self._rearm()

    def accept_blocking(self, timeout: float | None = None) -> SessionChardev | None:
        """Wait (blocking) for a client and adopt it; its session, if it started already.

        ``None`` on timeout, or when the session waits for handshakes on the loop.
        """
        if self.busy >= self.max_sessions:
            raise ChardevError(f"chardev '{self.id}': all {self.max_sessions} sessions are busy")
        raw = self.listener.wait_client(timeout)
        if raw is None:
            return None
        before = len(self._sessions)
        self.adopt(raw)
        return self._sessions[-1] if len(self._sessions) > before else None

    # ---- sessions -------------------------------------------------------

    def _start_session(self, channel: Channel, name: str) -> None:
        self._count += 1
        session = SessionChardev(
            f"{self.id[:100]}.{self._count}",
            channel,
            telnet=self.setup.telnet_filter(),
            filename=name,
            on_release=self._session_released,
            on_end=self._disconnect,
            loop=self.loop,
            **self._session_kwargs,
        )
        self._sessions.append(session)
        session.open()
        self._connect(session)

    def _session_released(self, session: SessionChardev) -> None:
        # Before the session's CLOSED, as QEMU re-arms its listener before
        # reporting: a CLOSED handler may already hand over a new client.
        if session in self._sessions:
            self._sessions.remove(session)
        self._rearm()

    def close(self) -> None:
        """Stop accepting, abandon setups, end every session, close the listener."""
        if self._closed:
            return
        self._closed = True
        self._rearm()
        for est in self._pending:
            est.cancel()
        self._pending.clear()
        for session in tuple(self._sessions):
            session.close()
        self.listener.disconnect()
