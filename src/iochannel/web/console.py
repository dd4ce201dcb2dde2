"""WebConsole: a hub's console in the browser, over HTTP and WebSocket.

Contract:

* **One port** (plain, or TLS with *tls_creds*) serves one request per
  connection, read by :class:`~iochannel.web.head.HeadChannel` and parsed by
  :mod:`iochannel.web.http` (hostile heads get 400/405/431):

  =====================  ==================================================
  ``GET /?token=T``      the console page for T's role (403 for a bad T)
  ``GET /static/NAME``   the page's assets, shipped in the package
  ``GET /ws?token=T``    the WebSocket: a viewer with T's role (403 for a
                         bad T or a foreign ``Origin``; the upgrade itself
                         is checked by :class:`~iochannel.WebsockChannel`)
  anything else          404
  =====================  ==================================================

  ``HEAD`` works where ``GET`` does.  The token may also come as
  ``Authorization: Bearer T``.  Tokens are compared in constant time.
* **Origins.**  A WebSocket request from a page of another site is refused
  (403) before the upgrade, whatever its token: its ``Origin`` must be the
  console's own (the scheme served and the request's ``Host``) or one of
  *allowed_origins*; a request without ``Origin`` (not a browser) passes
  (:func:`~iochannel.web.http.check_origin`).  Every answer carries a
  Content-Security-Policy and ``X-Frame-Options: DENY``.
* **Roles.**  One token per role (:class:`~iochannel.web.viewer.Role`):
  read-write viewers type and resize, read-only viewers only watch — their
  input is refused by the server (:mod:`iochannel.web.viewer`).  Tokens not
  given are generated (``secrets.token_urlsafe``); :attr:`WebConsole.urls`
  gives each role's page URL, token included.
* **Viewers** are hub members, one :class:`~iochannel.web.viewer.ViewerChardev`
  per connection, with the ``drop`` policy bounded at :data:`VIEWER_QUEUE`
  bytes: a browser that stops reading loses its oldest output, never slows
  the console or other viewers.
* **Replay.**  A :class:`~iochannel.web.replay.ReplayChardev` member keeps the
  last :data:`REPLAY_SIZE` bytes of output; a viewer gets them first.  The
  snapshot and the viewer's joining happen under the hub's write lock, so a
  viewer gets every byte exactly once whatever thread writes to the hub.
* **Device state.**  Each viewer is told whether the device is there — some
  frontend of the hub is open (a relay's end follows the relayed chardev,
  so a shell that exited is gone until it restarts) — after its replay and
  whenever that changes (:func:`~iochannel.web.protocol.encode_status`); the
  page shows it.
* **Bounds.**  At most :data:`MAX_SETUPS` connections are between accept and
  becoming a viewer (or getting their page); beyond that accepting pauses and
  clients wait in the listen backlog.  Each must finish within
  :data:`SETUP_TIMEOUT` seconds.  Viewers are not limited in number.
* ``close()`` (synchronous, idempotent) stops listening, abandons setups and
  ends every viewer; the hub itself is left open, with the replay member
  removed.

Everything runs on *loop* (by default the loop running :meth:`start`).
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import logging
import mimetypes
import secrets
from collections.abc import Callable, Iterable
from typing import final

from .._core.channel import Channel
from .._layers.tls import TLSChannel
from .._layers.websock import WebsockChannel
from .._transports.address import InetAddress
from .._transports.netlistener import NetListener
from .._transports.socket import SocketChannel
from ..chardev import HubChardev, MemberPolicy, SessionChardev, SlowConsumer
from ..chardev.events import observe_changes
from ..crypto.creds import Credentials
from ..errors import ChannelError, ConfigurationError
from .head import HeadChannel
from .http import HttpError, Request, check_origin, parse_origin, response
from .protocol import encode_status
from .replay import ReplayChardev
from .viewer import Role, ViewerChardev

__all__ = ["MAX_SETUPS", "REPLAY_SIZE", "SETUP_TIMEOUT", "VIEWER_QUEUE", "WebConsole"]

log = logging.getLogger(__name__)

#: Bytes of recent output a joining viewer gets first.
REPLAY_SIZE = 64 * 1024
#: Bytes queued for a slow viewer before its oldest output is dropped.
VIEWER_QUEUE = 256 * 1024
#: Connections being set up at once, at most.
MAX_SETUPS = 256
#: Seconds a connection has to send its request and finish its handshakes.
SETUP_TIMEOUT = 10.0
WS_PATH = "/ws"
_PAGE = "index.html"
_ROLE_MARK = b"@ROLE@"
_BACKLOG = 128


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """The shipped files by URL path: body and content type."""
    root = importlib.resources.files(__name__.rpartition(".")[0]).joinpath("static")
    assets: dict[str, tuple[bytes, str]] = {}
    pending = [(root, "/static")]
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            path = f"{prefix}/{entry.name}"
            if entry.is_dir():
                pending.append((entry, path))
            else:
                kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                if kind.startswith("text/") or kind.endswith("javascript"):
                    kind += "; charset=utf-8"
                assets[path] = (entry.read_bytes(), kind)
    return assets


@final
class WebConsole:
    """Serves *hub*'s console on *host*:*port* (see the module docstring)."""

    def __init__(
        self,
        hub: HubChardev,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rw_token: str | None = None,
        ro_token: str | None = None,
        tls_creds: object | None = None,
        on_resize: Callable[[int, int], None] | None = None,
        allowed_origins: Iterable[str] = (),
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if tls_creds is not None and not isinstance(tls_creds, Credentials):
            raise TypeError(f"tls_creds must be TLS credentials, not {type(tls_creds).__name__}")
        try:
            origins = frozenset(parse_origin(o) for o in allowed_origins)
        except ValueError as exc:
            raise ConfigurationError(f"allowed-origins: {exc}", field="allowed-origins") from None
        tokens = {
            Role.READ_WRITE: rw_token or secrets.token_urlsafe(24),
            Role.READ_ONLY: ro_token or secrets.token_urlsafe(24),
        }
        if tokens[Role.READ_WRITE] == tokens[Role.READ_ONLY]:
            raise ConfigurationError(
                "the read-write and read-only tokens must differ", field="ro-token"
            )
        self.hub = hub
        self._host = host
        self._port = port
        self._tokens = tokens
        self._creds: Credentials | None = tls_creds
        self._on_resize = on_resize
        self._origins = origins
        self._loop = loop
        self._assets = _load_assets()
        self._page = self._assets.pop(f"/static/{_PAGE}")[0]
        self._replay = ReplayChardev(f"{hub.id[:100]}.web-replay", REPLAY_SIZE, loop=loop)
        self._listener: NetListener | None = None
        # Each setup's socket, closed by close() too: a task cancelled before
        # it ran never gets to close it.
        self._setups: dict[asyncio.Task[None], SocketChannel] = {}
        self._viewers: dict[str, ViewerChardev] = {}
        self._count = 0
        self._accepting = False
        self._closed = False
        self._device_open = False
        self._stop_observing: Callable[[], None] | None = None
        self._check_pending = False

    # ---- running ------------------------------------------------------------------

    async def start(self) -> None:
        """Listen and serve on the loop."""
        if self._listener is not None or self._closed:
            raise RuntimeError("a web console starts once")
        self._loop = self._loop or asyncio.get_running_loop()
        listener = NetListener(name=f"web console of '{self.hub.id}'")
        listener.open(InetAddress(self._host, str(self._port), numeric=True), _BACKLOG)
        self._listener = listener
        self.hub.add_member(self._replay, MemberPolicy(SlowConsumer.DROP, REPLAY_SIZE))
        self._device_open = self._device_is_open()
        self._stop_observing = observe_changes(self._changed)
        self._rearm()

    @property
    def address(self) -> InetAddress:
        """Where the console listens (the port chosen when *port* was 0)."""
        if self._listener is None:
            raise RuntimeError("the web console is not started")
        addr = self._listener.local_addresses[0]
        assert isinstance(addr, InetAddress)
        return addr

    @property
    def urls(self) -> dict[str, str]:
        """The page's URL per role name (``rw``, ``ro``), token included."""
        addr = self.address
        host = f"[{addr.host}]" if ":" in addr.host else addr.host
        return {
            role.value: f"{self._scheme}://{host}:{addr.port}/?token={token}"
            for role, token in self._tokens.items()
        }

    @property
    def _scheme(self) -> str:
        return "https" if self._creds is not None else "http"

    @property
    def viewers(self) -> tuple[ViewerChardev, ...]:
        return tuple(self._viewers.values())

    def close(self) -> None:
        """Stop listening, abandon setups, end every viewer; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._stop_observing is not None:
            self._stop_observing()
            self._stop_observing = None
        self._rearm()
        if self._listener is not None:
            self._listener.disconnect()
        for task, raw in self._setups.items():
            task.cancel()
            raw.close()
        self._setups.clear()
        for viewer in tuple(self._viewers.values()):
            viewer.close()
        if self._replay.owner is self.hub:
            self.hub.remove_member(self._replay)
        self._replay.close()

    # ---- accepting ------------------------------------------------------------------

    def _rearm(self) -> None:
        want = not self._closed and len(self._setups) < MAX_SETUPS
        if want != self._accepting and self._listener is not None:
            self._accepting = want
            self._listener.set_client_callback(self._on_client if want else None, loop=self._loop)

    def _on_client(self, _listener: NetListener, raw: SocketChannel) -> None:
        assert self._loop is not None
        task = self._loop.create_task(self._serve(raw))
        self._setups[task] = raw
        task.add_done_callback(self._setup_done)
        self._rearm()

    def _setup_done(self, task: asyncio.Task[None]) -> None:
        self._setups.pop(task, None)
        self._rearm()

    async def _serve(self, raw: SocketChannel) -> None:
        channel: Channel = raw
        try:
            async with asyncio.timeout(SETUP_TIMEOUT):
                raw.set_blocking(False)
                raw.set_delay(False)
                if self._creds is not None:
                    channel = TLSChannel.server(channel, self._creds)
                    await channel.ahandshake()
                channel = head = HeadChannel(channel)
                await head.ahandshake()
                try:
                    role = await self._answer(head)
                except HttpError as exc:
                    await head.awrite_all(exc.response())
                    role = None
                if role is None:
                    channel.shutdown()
                    channel.close()
                    return
                channel = ws = WebsockChannel.server(head, path=WS_PATH)
                await ws.ahandshake()
        except asyncio.CancelledError:
            channel.close()
            raise
        except (OSError, ChannelError, TimeoutError) as exc:
            log.info("web console of '%s': connection failed: %s", self.hub.id, exc)
            channel.close()
            return
        self._add_viewer(ws, role)

    async def _answer(self, head: HeadChannel) -> Role | None:
        """Answer a page request, or return the role a WebSocket request may take."""
        if head.error is not None:
            raise head.error
        request = head.request
        assert request is not None  # the handshake sets one of the two
        head_only = request.method == "HEAD"
        asset = self._assets.get(request.path)
        if asset is not None:
            body, kind = asset
            await head.awrite_all(response(200, body, content_type=kind, head_only=head_only))
            return None
        if request.path not in ("/", WS_PATH):
            raise HttpError(404, f"nothing at {request.path[:60]!r}")
        role = self._role(request)
        if request.path == WS_PATH:
            check_origin(request, self._scheme, self._origins)
            return role
        page = self._page.replace(_ROLE_MARK, role.value.encode())
        html = "text/html; charset=utf-8"
        await head.awrite_all(response(200, page, content_type=html, head_only=head_only))
        return None

    def _role(self, request: Request) -> Role:
        token = request.query.get("token")
        auth = request.header("authorization")
        if token is None and auth is not None and auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
        if token:
            for role, expected in self._tokens.items():
                if hmac.compare_digest(token.encode(), expected.encode()):
                    return role
        raise HttpError(403, "a valid token is required")

    # ---- viewers --------------------------------------------------------------------

    def _add_viewer(self, channel: Channel, role: Role) -> None:
        self._count += 1
        hub = self.hub
        # Snapshot and joining under the hub's write lock: no output slips between them.
        with hub.write_lock:
            viewer = ViewerChardev(
                f"{hub.id[:100]}.web{self._count}",
                channel,
                role,
                replay=self._replay.snapshot() + encode_status(self._device_open),
                on_resize=self._resize if role is Role.READ_WRITE else None,
                on_end=self._viewer_ended,
                loop=self._loop,
            )
            self._viewers[viewer.id] = viewer
            hub.add_member(viewer, MemberPolicy(SlowConsumer.DROP, VIEWER_QUEUE))

    # ---- device state ---------------------------------------------------------------

    def _device_is_open(self) -> bool:
        return any(fe.frontend_open for fe in self.hub.frontends)

    def _changed(self) -> None:
        # Any chardev's open or close, on any thread: compare once on the loop.
        loop = self._loop
        if not self._check_pending and loop is not None and not loop.is_closed():
            self._check_pending = True
            loop.call_soon_threadsafe(self._check_device)

    def _check_device(self) -> None:
        self._check_pending = False
        device_open = self._device_is_open()
        if device_open == self._device_open or self._closed:
            return
        self._device_open = device_open
        status = encode_status(device_open)
        # Under the hub's write lock: the message goes between two writes of output.
        with self.hub.write_lock:
            for viewer in tuple(self._viewers.values()):
                try:
                    viewer.tell(status)
                except OSError:
                    pass  # the viewer is ending; its end is handled there

    def _viewer_ended(self, viewer: SessionChardev) -> None:
        self._viewers.pop(viewer.id, None)
        if viewer.owner is self.hub:
            self.hub.remove_member(viewer)

    def _resize(self, rows: int, cols: int) -> None:
        if self._on_resize is None:
            return
        try:
            self._on_resize(rows, cols)
        except Exception:
            log.exception("web console of '%s': resize to %dx%d failed", self.hub.id, rows, cols)
