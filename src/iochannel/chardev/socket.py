"""The ``socket`` backend: QEMU's stream socket chardev, server or client.

Addresses are inet (``host``/``port``/``to``/``ipv4``/``ipv6``), unix
(``path``/``abstract``/``tight``), vsock or an already open socket (``fd``:
listening for a server, connected for a client).  Keys and defaults are
QEMU's; :meth:`SocketChardev.from_qapi` takes QMP's ``ChardevSocket``.

Server (``server=True``)
    Listens with a backlog of ``connections`` and serves one client at a
    time: while it is connected the listener is not watched, so a second
    client waits in the kernel backlog and is served when the first leaves.
    ``wait=True`` makes :meth:`open` block until the first client arrives.
    The extension ``connections=N`` serves up to N clients at once: output
    goes to every client through a :class:`~iochannel.chardev.hub.Fanout`,
    each client under the slow-consumer policy a hub gives this chardev
    (``block`` otherwise), input comes from any; OPENED comes with the first
    client, CLOSED when the last one leaves.  Both are a
    :class:`~iochannel.chardev.server.ChardevServer` whose sessions this
    chardev fronts.

Client
    Without ``reconnect_ms`` the connection is made in :meth:`open` and a
    failure raises.  With it, connecting happens in a thread and OPENED comes
    later; a failed or lost connection is retried every ``reconnect_ms``, as
    QEMU does.  The extension ``reconnect_max_ms`` makes the delays grow
    instead, exponentially and jittered, up to that maximum (a
    :class:`~iochannel.chardev.backoff.Backoff`); a connection that was up
    for at least ``reconnect_ms`` restarts them from ``reconnect_ms``.
    Errors are logged once until a connection works; connecting and losing
    the connection are logged (INFO).

Connection order (both sides): non-blocking mode, nodelay, TLS handshake
(``tls_creds``, ``tls_authz``), WebSocket handshake (servers only), telnet or
tn3270 negotiation, then CONNECTED and OPENED.  A failure at any step drops
the connection.

Disconnection (peer EOF, an I/O error, :meth:`disconnect`) closes fds
received and not taken, re-arms the listener, sets :attr:`filename` to
``disconnected:<address>``, sends CLOSED (only if OPENED was sent) and starts
the reconnect timer.

Writes while disconnected follow the ``closed_writes`` policy; the default is
``error`` (:class:`~iochannel.chardev.ChardevClosedError`), as QEMU answers
EIO.  File descriptors pass on unix sockets (:meth:`set_msgfds`,
:meth:`get_msgfds`).  Telnet input is filtered by
:class:`~iochannel.chardev.telnet.TelnetFilter`; ``IAC BREAK`` arrives as a
BREAK event.

:meth:`wait_connected` blocks until a connection is up, as QEMU's does: it
is refused with telnet, tn3270, WebSocket or TLS, whose handshakes need the
loop.  :meth:`await_connected` is its asyncio form and has no such limit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from .._core.channel import Channel, close_fds
from .._core.flags import Feature
from .._core.watch import in_loop_thread
from .._transports.address import (
    Address,
    AddressError,
    FdAddress,
    InetAddress,
    UnixAddress,
    VsockAddress,
)
from .._transports.netlistener import NetListener
from .._transports.socket import SocketChannel
from ..crypto.authz import AuthzList, Policy
from ..crypto.creds import Credentials, CredentialsError, Endpoint, find_credentials
from ..errors import ChannelTimeoutError
from .backoff import Backoff
from .chardev import ChardevError
from .events import ChardevEvent
from .hub import FanoutChardev, Member
from .options import (
    REQUIRED,
    ChardevLookup,
    ChardevOptionError,
    Field,
    Names,
    Schema,
    chardev_kwargs,
    escape,
    host_port,
    missing_directory,
    qapi_address,
    register_backend,
)
from .ratelimit import log_peer
from .server import (
    HANDSHAKE_TIMEOUT,
    ChardevServer,
    Establishing,
    SessionChardev,
    SessionSetup,
    connection_name,
    establish,
)

__all__ = ["SocketChardev"]

log = logging.getLogger(__name__)

# ---- options ----------------------------------------------------------------------------

# QAPI's name of each address kind.
_ADDRESS_KINDS: dict[type, str] = {
    InetAddress: "inet",
    UnixAddress: "unix",
    VsockAddress: "vsock",
    FdAddress: "fd",
}
# Keys that only some address kinds take, by the key that names the kind.
_ADDRESS_KEYS = {
    "path": frozenset({"path", "abstract", "tight"}),
    "host": frozenset({"host", "port", "to", "ipv4", "ipv6"}),
    "fd": frozenset({"fd"}),
}
_ANY_ADDRESS_KEY = frozenset().union(*_ADDRESS_KEYS.values())
# Keys that pass unchanged from the command line into the spec.
_SAME = (
    "telnet",
    "tn3270",
    "websocket",
    "reconnect",
    "reconnect-ms",
    "reconnect-max-ms",
    "tls-creds",
    "tls-authz",
    "connections",
    "handshake-timeout-ms",
)


def _from_cli(o: Mapping[str, Any]) -> dict[str, Any]:
    given = [k for k in ("path", "host", "fd") if k in o]
    if len(given) != 1:
        raise ChardevOptionError("Exactly one of 'path', 'host' or 'fd' is required")
    wrong = sorted(_ANY_ADDRESS_KEY.intersection(o) - _ADDRESS_KEYS[given[0]])
    if wrong:
        raise ChardevOptionError(f"Parameter '{wrong[0]}' cannot be used with '{given[0]}'")
    if "path" in o:
        addr: dict[str, Any] = {
            "type": "unix",
            "data": {k: o[k] for k in _ADDRESS_KEYS["path"] if k in o},
        }
    elif "host" in o:
        if "port" not in o:
            raise ChardevOptionError("Parameter 'port' is missing")
        inet = {k: o[k] for k in ("host", "port", "to", "ipv4", "ipv6") if k in o}
        addr = {"type": "inet", "data": inet}
    else:
        addr = {"type": "fd", "data": {"str": o["fd"]}}
    if "delay" in o and "nodelay" in o:
        raise ChardevOptionError("'delay' and 'nodelay' are mutually exclusive")
    server = o.get("server", False)
    data: dict[str, Any] = {
        "addr": addr,
        "server": server,
        # The command line's defaults: a server waits for its first client.
        "wait": o.get("wait", server),
        "nodelay": o.get("nodelay", not o.get("delay", True)),
    }
    data.update({k: o[k] for k in _SAME if k in o})
    return data


def _check(data: dict[str, Any], name: Names) -> None:
    """QEMU's rules across a socket's options, for specs and the constructor alike."""
    if "reconnect" in data:
        if data["reconnect-ms"]:
            raise ChardevOptionError(
                f"'{name('reconnect')}' and '{name('reconnect-ms')}' are mutually exclusive",
                field=name("reconnect"),
            )
        log.warning("chardev socket option 'reconnect' is deprecated: use 'reconnect-ms'")
        data["reconnect-ms"] = data.pop("reconnect") * 1000
    addr, server, reconnect = data["addr"]["type"], data["server"], data["reconnect-ms"]
    for key, least in (("connections", 1), ("reconnect-ms", 0), ("handshake-timeout-ms", 0)):
        if data.get(key, least) < least:
            raise ChardevOptionError(
                f"Parameter '{name(key)}' must be at least {least}, not {data[key]}",
                field=name(key),
            )
    if data.get("telnet") and data.get("tn3270"):
        raise ChardevOptionError(
            f"'{name('telnet')}' and '{name('tn3270')}' are mutually exclusive",
            field=name("tn3270"),
        )
    if "tls-creds" in data and (addr in ("unix", "vsock") or (addr == "fd" and not server)):
        raise ChardevOptionError(
            f"'{name('tls-creds')}' option is incompatible with '{addr}' addresses",
            field=name("tls-creds"),
        )
    if "tls-authz" in data and "tls-creds" not in data:
        raise ChardevOptionError(
            f"'{name('tls-authz')}' option requires '{name('tls-creds')}' option",
            field=name("tls-authz"),
        )
    top = data.get("reconnect-max-ms")
    if top is not None and not reconnect:
        raise ChardevOptionError(
            f"'{name('reconnect-max-ms')}' option requires '{name('reconnect-ms')}' option",
            field=name("reconnect-max-ms"),
        )
    if top is not None and top < reconnect:
        raise ChardevOptionError(
            f"'{name('reconnect-max-ms')}' ({top}) must not be below "
            f"'{name('reconnect-ms')}' ({reconnect})",
            field=name("reconnect-max-ms"),
        )
    if server:
        if reconnect:
            raise ChardevOptionError(
                f"'{name('reconnect-ms')}' option is incompatible with socket "
                "in server listen mode",
                field=name("reconnect-ms"),
            )
        return
    if data["wait"]:
        raise ChardevOptionError(
            f"'{name('wait')}' option is incompatible with socket in client connect mode",
            field=name("wait"),
        )
    if data.get("websocket"):
        raise ChardevOptionError("Websocket client is not implemented")
    if data.get("connections", 1) != 1:
        raise ChardevOptionError(
            f"'{name('connections')}' option is incompatible with socket in client connect mode",
            field=name("connections"),
        )
    if reconnect and addr == "fd":
        raise ChardevOptionError(
            f"'{name('reconnect-ms')}' cannot be used with an 'fd' address (it connects once)",
            field=name("reconnect-ms"),
        )


def _legacy(text: str) -> str | None:
    for prefix in ("tcp:", "telnet:", "tn3270:", "websocket:"):
        if text.startswith(prefix):
            host, port, end = host_port(text[len(prefix) :])
            rest = text[len(prefix) + end :]
            flag = "" if prefix == "tcp:" else f",{prefix[:-1]}=on"
            return f"socket,host={escape(host)},port={escape(port)}{rest}{flag}"
    if text.startswith("unix:"):
        return f"socket,path={text[5:]}"
    return None


def _missing_directory(id: str, addr: Address) -> ChardevError | None:
    """The error for a unix socket to create in a directory that does not exist, if it is that."""
    if not isinstance(addr, UnixAddress) or addr.abstract:
        return None
    return missing_directory(id, "path", addr.path, "socket")


def _preflight(id: str, data: Mapping[str, Any]) -> None:
    error = _missing_directory(id, qapi_address(data["addr"])) if data["server"] else None
    if error is not None:
        raise error


_SCHEMA = Schema(
    "socket",
    "a stream socket, server or client (unix, inet, vsock or an open fd)",
    {
        "host": "str",
        "port": "port",
        "to": "num",
        "ipv4": "bool",
        "ipv6": "bool",
        "path": "str",
        "abstract": "bool",
        "tight": "bool",
        "fd": "str",
        "server": "bool",
        "wait": "bool",
        "nodelay": "bool",
        "delay": "bool",
        "telnet": "bool",
        "tn3270": "bool",
        "websocket": "bool",
        "reconnect": "num",
        "reconnect-ms": "num",
        "reconnect-max-ms": "num",
        "tls-creds": "str",
        "tls-authz": "str",
        "connections": "num",
        "handshake-timeout-ms": "num",
    },
    {
        "addr": Field("addr", REQUIRED),
        "tls-creds": Field("str"),
        "tls-authz": Field("str"),
        # QMP's defaults; the command line's differ (see _from_cli).
        "server": Field("bool", True),
        "wait": Field("bool", False),
        "nodelay": Field("bool", False),
        "telnet": Field("bool", False),
        "tn3270": Field("bool", False),
        "websocket": Field("bool", False),
        "reconnect": Field("int"),
        "reconnect-ms": Field("int", 0),
        "reconnect-max-ms": Field("int"),
        "connections": Field("int", 1),
        "handshake-timeout-ms": Field("int"),
    },
    cli_names={"addr.data.str": "fd"},
    from_cli=_from_cli,
    check=_check,
    legacy=_legacy,
    preflight=_preflight,
)


@register_backend(_SCHEMA)
class SocketChardev(FanoutChardev):
    """A socket chardev; see the module docstring.

    *objects* maps object ids to objects: ``tls_creds`` and ``tls_authz``
    name entries there (credentials are looked up now, the authz list at
    each connection, and a missing one denies the client, as in QEMU).
    """

    type_name: ClassVar[str] = "socket"

    def __init__(
        self,
        id: str,
        addr: Address,
        *,
        server: bool = False,
        wait: bool = False,
        nodelay: bool = False,
        telnet: bool = False,
        tn3270: bool = False,
        websocket: bool = False,
        reconnect_ms: int = 0,
        reconnect_max_ms: int | None = None,
        tls_creds: str | None = None,
        tls_authz: str | None = None,
        connections: int = 1,
        handshake_timeout_ms: int = int(HANDSHAKE_TIMEOUT * 1000),
        objects: Mapping[str, object] | None = None,
        backoff: Backoff | None = None,
        **kwargs: Any,
    ) -> None:
        options = {
            "addr": {"type": _ADDRESS_KINDS[type(addr)]},
            "server": server,
            "wait": wait,
            "telnet": telnet,
            "tn3270": tn3270,
            "websocket": websocket,
            "reconnect-ms": reconnect_ms,
            "connections": connections,
            "handshake-timeout-ms": handshake_timeout_ms,
        }
        optional = {
            "reconnect-max-ms": reconnect_max_ms,
            "tls-creds": tls_creds,
            "tls-authz": tls_authz,
        }
        options.update({k: v for k, v in optional.items() if v is not None})
        _check(options, str)
        objects = objects or {}
        creds = _credentials(objects, tls_creds, server)
        super().__init__(id, **kwargs)
        self.addr = addr
        self.is_server = server
        self.wait = wait
        self.connections = connections
        self.reconnect_ms = reconnect_ms
        self._objects: Mapping[str, object] = objects
        self._authz_id = tls_authz
        self.setup = SessionSetup(
            nodelay=nodelay,
            tls_creds=creds,
            tls_authz=self._authz if tls_authz else None,
            tls_hostname=addr.host if isinstance(addr, InetAddress) else None,
            websocket=websocket,
            telnet=telnet,
            tn3270=tn3270,
            handshake_timeout=handshake_timeout_ms / 1000 if handshake_timeout_ms else None,
        )
        self._backoff = backoff
        if reconnect_ms and backoff is None:
            # QEMU's fixed interval unless a maximum asks for growth; a connection
            # that was up for reconnect-ms lived, so the next loss retries at once.
            first = reconnect_ms / 1000
            top = reconnect_max_ms / 1000 if reconnect_max_ms else None
            self._backoff = Backoff(first, top, settle=first)
        self._server: ChardevServer | None = None
        self._sessions: dict[SessionChardev, Member] = {}
        self._msgfds: list[int] = []
        # Client side: one connection attempt at a time, by thread or handshake.
        self._lock = threading.Lock()
        self._connect_thread: threading.Thread | None = None
        self._connect_outcome: SocketChannel | BaseException | None = None
        self._establishing: Establishing | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._failing = False
        self._since = 0.0
        self._waiters: list[asyncio.Future[None]] = []
        self.filename = self._disconnected_name()

    # ---- construction from QMP ---------------------------------------------

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> SocketChardev:
        """A chardev from QMP's ``ChardevSocket``, validated (defaults filled in).

        ``registry.objects`` provides the TLS objects, ``registry.loop`` the
        loop (``None``: the running one).
        """
        timeout = data.get("handshake-timeout-ms")
        return cls(
            id,
            qapi_address(data["addr"]),
            server=data["server"],
            wait=data["wait"],
            nodelay=data["nodelay"],
            telnet=data["telnet"],
            tn3270=data["tn3270"],
            websocket=data["websocket"],
            reconnect_ms=data["reconnect-ms"],
            reconnect_max_ms=data.get("reconnect-max-ms"),
            tls_creds=data.get("tls-creds"),
            tls_authz=data.get("tls-authz"),
            connections=data["connections"],
            handshake_timeout_ms=int(HANDSHAKE_TIMEOUT * 1000) if timeout is None else timeout,
            objects=registry.objects,
            **chardev_kwargs(data, registry.loop),
        )

    # ---- names --------------------------------------------------------------

    def _disconnected_name(self) -> str:
        addr, listen = self.addr, ",server=on" if self.is_server else ""
        if isinstance(addr, InetAddress):
            return f"disconnected:{self.setup.protocol}:{addr.host}:{addr.port}{listen}"
        if isinstance(addr, UnixAddress):
            return f"disconnected:unix:{addr.path}{listen}"
        if isinstance(addr, FdAddress):
            return f"disconnected:fd:{addr.fd}{listen}"
        return f"disconnected:vsock:{addr.cid}:{addr.port}"

    @property
    def listen_addresses(self) -> list[Address]:
        """Where a server listens (the real ports, also for ``fd``); empty for a client."""
        return self._server.listener.local_addresses if self._server is not None else []

    @property
    def sessions(self) -> tuple[SessionChardev, ...]:
        """The connections being served now."""
        return tuple(self._sessions)

    @property
    def connected(self) -> bool:
        return bool(self._sessions)

    # ---- opening and closing --------------------------------------------------

    def _open(self) -> bool:
        if self.is_server:
            try:
                self._listen()
            except FileNotFoundError:
                error = _missing_directory(self.id, self.addr)
                if error is None:
                    raise
                raise error from None
            if self.wait:
                log.info("chardev '%s': waiting for a connection on %s", self.id, self.filename)
                assert self._server is not None
                while not self._server.busy:
                    self._server.accept_blocking()
        elif self.reconnect_ms:
            self._start_connect_thread()
        else:
            self._connect_now()
        return False  # OPENED comes with the first session

    def _listen(self) -> None:
        listener = NetListener(name=f"chardev '{self.id}'")
        if isinstance(self.addr, FdAddress):
            listener.add(SocketChannel.listen(self.addr, self.connections))
        else:
            listener.open(self.addr, self.connections)
        bound = listener.local_addresses[0]
        if isinstance(self.addr, InetAddress) and isinstance(bound, InetAddress):
            # QEMU shows the address really bound (port 0 picks one).
            self.addr = InetAddress(
                bound.host,
                bound.port,
                numeric=True,
                ipv4=self.addr.ipv4,
                ipv6=self.addr.ipv6,
                keep_alive=self.addr.keep_alive,
            )
        elif isinstance(self.addr, UnixAddress) and isinstance(bound, UnixAddress):
            self.addr = UnixAddress(bound.path, self.addr.abstract, self.addr.tight)
        self.filename = self._disconnected_name()
        server = ChardevServer(
            self.id,
            listener,
            self._add_session,
            setup=self.setup,
            max_sessions=self.connections,
            loop=self.loop,
            attended=lambda: self.busy,
        )
        self._server = server
        server.start()

    def _close(self) -> None:
        self._cancel_timer()
        with self._lock:
            # Not joined: a connect can hang for minutes.  The thread sees it
            # is no longer current and closes what it connected.
            self._connect_thread = None
            outcome, self._connect_outcome = self._connect_outcome, None
        if isinstance(outcome, Channel):
            outcome.close()
        est, self._establishing = self._establishing, None
        if est is not None:
            est.cancel()
        if self._server is not None:
            self._server.close()  # ends its sessions too
        for session in tuple(self._sessions):
            session.close()
        close_fds(self._msgfds)
        self._msgfds = []
        self._fail_waiters(ChardevError(f"chardev '{self.id}' was closed"))

    # ---- sessions -------------------------------------------------------------

    def _add_session(self, session: SessionChardev) -> None:
        member = self.fanout.add(session)
        self._sessions[session] = member
        member.port.set_handlers(
            self.be_can_read,
            lambda data: self._session_input(session, data),
            lambda event: self._session_event(session, event),
        )

    def _session_input(self, session: SessionChardev, data: bytes) -> None:
        fds = session.get_msgfds()
        if fds:
            close_fds(self._msgfds)  # an unread earlier batch is stale now
            self._msgfds = fds
        self.be_write(data)

    def _session_event(self, session: SessionChardev, event: ChardevEvent) -> None:
        if event == ChardevEvent.OPENED:
            self.fanout.join(self._sessions[session])
            self.filename = session.filename
            if not self.be_open:
                self._since = time.monotonic()
                self._failing = False
                self.be_event(ChardevEvent.OPENED)
                self._wake_waiters()
        elif event == ChardevEvent.CLOSED:
            member = self._sessions.pop(session, None)
            if member is not None:
                self.fanout.remove(member)
            self._hang_up_write_watches()
            if not self._sessions:
                self._disconnected()
        else:
            self.be_event(event)

    def _disconnected(self) -> None:
        close_fds(self._msgfds)
        self._msgfds = []
        peer, self.filename = self.filename, self._disconnected_name()
        if self.be_open:
            if not self.is_server:
                log_peer(log, self.id, logging.INFO, "chardev '%s': %s went away", self.id, peer)
            self.be_event(ChardevEvent.CLOSED)
            if self._backoff is not None:
                self._backoff.connected(time.monotonic() - self._since)
        if not self.is_server and self.reconnect_ms and not self.closed and not self._sessions:
            self._schedule_reconnect()  # unless a CLOSED handler added a client

    def _update_read_handler(self) -> None:
        for member in tuple(self._sessions.values()):
            member.port.accept_input()

    def add_client(self, raw: SocketChannel) -> None:
        """Serve an already connected socket, as QMP's ``add_client`` (the chardev takes it).

        Refused while every connection slot is in use (QEMU: while connected).
        """
        server = self._server
        full = server.busy >= server.max_sessions if server else self._busy_connecting()
        if full or (server is None and self._sessions):
            raise ChardevError(f"chardev '{self.id}' is already connected")
        self._cancel_timer()
        if server is not None:
            server.adopt(raw)
        else:
            self._start_client(raw)

    def disconnect(self) -> None:
        """Drop every current connection (a server then serves the next client)."""
        for session in tuple(self._sessions):
            session.disconnect()

    # ---- fds ----------------------------------------------------------------------

    def get_msgfds(self) -> list[int]:
        fds, self._msgfds = self._msgfds, []
        return fds

    def set_msgfds(self, fds: list[int]) -> None:
        """Send *fds* with the next write (unix sockets only); the caller keeps them."""
        if not self._sessions:
            raise ChardevError(f"chardev '{self.id}' cannot pass file descriptors: not connected")
        for session in self._sessions:
            session.set_msgfds(fds)

    # ---- client connections ---------------------------------------------------------

    def _connect_raw(self) -> SocketChannel:
        addr = self.addr
        if isinstance(addr, FdAddress):
            raw = SocketChannel.from_fd(addr.fd)
            if raw.has_feature(Feature.LISTEN):
                raw.close()
                raise ChardevError(
                    f"fd {addr.fd} is a listening socket: a client needs a connected one"
                )
            return raw
        return SocketChannel.connect(addr)

    def _connect_now(self) -> None:
        """Connect synchronously; raises if that fails."""
        self._start_client(self._connect_raw())

    def _start_client(self, raw: SocketChannel) -> None:
        name = connection_name(raw, self.setup.protocol, server=False)

        def done(outcome: Channel | BaseException) -> None:
            self._establishing = None
            if isinstance(outcome, BaseException):
                self._connect_failed(outcome)
                return
            session = SessionChardev(
                f"{self.id[:100]}.client",
                outcome,
                telnet=self.setup.telnet_filter(),
                filename=name,
                loop=self.loop,
            )
            session.open()
            self._add_session(session)
            log_peer(log, self.id, logging.INFO, "chardev '%s': connected to %s", self.id, name)

        est = establish(raw, self.setup, server=False, loop=self.loop, done=done)
        if est.pending:
            self._establishing = est

    def _start_connect_thread(self) -> None:
        loop = self.loop  # here, not in the thread, which has no running loop to find
        with self._lock:
            if self._connect_thread is not None or self.closed:
                return
            thread = threading.Thread(
                target=self._connect_worker,
                args=(loop,),
                name=f"chardev-{self.id}-connect",
                daemon=True,
            )
            self._connect_thread = thread
        thread.start()

    def _connect_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        outcome: SocketChannel | BaseException
        try:
            outcome = self._connect_raw()
        except (OSError, ChardevError, AddressError) as exc:
            outcome = exc
        with self._lock:
            if self._connect_thread is not threading.current_thread():
                if isinstance(outcome, Channel):
                    outcome.close()  # closed or taken over meanwhile
                return
            self._connect_outcome = outcome
        try:
            loop.call_soon_threadsafe(self._connect_done, threading.current_thread())
        except RuntimeError:
            if not loop.is_closed():
                raise
            # The loop is gone for good: close() takes the outcome.

    def _connect_done(self, thread: threading.Thread) -> None:
        """Take the outcome of connect *thread* (once: later calls find it handled)."""
        with self._lock:
            if self._connect_thread is not thread:
                return  # taken by wait_connected already, or the chardev was closed
            self._connect_thread = None
            outcome, self._connect_outcome = self._connect_outcome, None
        thread.join()
        if outcome is None:
            return
        if isinstance(outcome, BaseException):
            self._connect_failed(outcome)
        else:
            self._start_client(outcome)

    def _connect_failed(self, exc: BaseException) -> None:
        if not self._failing:
            warning = "chardev '%s': connection failed: %s"
            log_peer(log, self.id, logging.WARNING, warning, self.id, exc)
            self._failing = True
        else:
            log.debug("chardev '%s': connection failed again: %s", self.id, exc)
        if self.reconnect_ms and not self.closed:
            self._schedule_reconnect()
        else:
            self._fail_waiters(exc)

    def _schedule_reconnect(self) -> None:
        if self._timer is not None or self._busy_connecting():
            return  # never armed twice
        assert self._backoff is not None
        delay = self._backoff.next_delay()
        self._timer = self.loop.call_later(delay, self._reconnect)

    def _busy_connecting(self) -> bool:
        return self._connect_thread is not None or self._establishing is not None

    def _reconnect(self) -> None:
        self._timer = None
        if self.closed or self._sessions or self._busy_connecting():
            return
        self._start_connect_thread()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    # ---- waiting for a connection ------------------------------------------------------

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until connected (QEMU's ``wait_connected``).

        A server accepts, a client connects, synchronously; a client with
        ``reconnect_ms`` retries at that interval, one without raises.  Called
        from another thread while the loop runs, it waits for the loop to do
        it.  Refused with telnet, tn3270, WebSocket or TLS.
        """
        for key, used in (
            ("telnet", self.setup.telnet),
            ("tn3270", self.setup.tn3270),
            ("websocket", self.setup.websocket),
            ("tls-creds", self.setup.tls_creds is not None),
        ):
            if used:
                raise ChardevError(
                    f"'{key}' option is incompatible with waiting for connection completion"
                )
        self._check_usable()
        if not self.opened:
            self.open()
        loop = self.loop
        if loop.is_running() and not in_loop_thread(loop):
            fut = asyncio.run_coroutine_threadsafe(self.await_connected(), loop)
            fut.result(timeout)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._sessions:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                raise ChannelTimeoutError(
                    f"chardev '{self.id}': no connection within {timeout:g} s"
                )
            if self._server is not None:
                self._server.accept_blocking(left)
            else:
                self._client_connect_blocking(left)

    def _client_connect_blocking(self, timeout: float | None) -> None:
        self._cancel_timer()
        with self._lock:
            thread = self._connect_thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return  # the caller's deadline passed
            self._connect_done(thread)  # the attempt in flight decides first
            self._cancel_timer()
            if self._sessions:
                return
        try:
            self._connect_now()
        except (OSError, ChardevError, AddressError):
            if not self.reconnect_ms:
                raise
            pause = self.reconnect_ms / 1000
            time.sleep(pause if timeout is None else min(pause, timeout))

    async def await_connected(self) -> None:
        """Wait on the loop until connected; a client without reconnect tries once."""
        if self._sessions:
            return
        self._check_usable()
        if not self.opened:
            self.open()
            if self._sessions:
                return
        fut: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append(fut)
        if not self.is_server and not self.reconnect_ms and not self._busy_connecting():
            self._start_connect_thread()
        await fut

    def _check_usable(self) -> None:
        if self.closed:
            raise ChardevError(f"chardev '{self.id}' is closed")

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _fail_waiters(self, exc: BaseException) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)

    # ---- TLS objects --------------------------------------------------------------------

    def _authz(self) -> AuthzList:
        obj = self._objects.get(self._authz_id or "")
        if isinstance(obj, AuthzList):
            return obj
        log.warning("chardev '%s': no authz object '%s': denying", self.id, self._authz_id)
        return AuthzList(policy=Policy.DENY, name=self._authz_id or "authz")


def _credentials(
    objects: Mapping[str, object], name: str | None, server: bool
) -> Credentials | None:
    if not name:
        return None
    try:
        return find_credentials(objects, name, Endpoint.SERVER if server else Endpoint.CLIENT)
    except CredentialsError as exc:
        raise ChardevError(str(exc)) from None
