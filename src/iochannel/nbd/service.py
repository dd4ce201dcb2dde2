"""The storage daemon's NBD server: ``nbd-server-start``/``-stop`` and NBD exports.

:class:`NbdService` is what :class:`~iochannel.block.storage.Storage` keeps for
qemu-storage-daemon's ``--nbd-server`` option, the ``nbd-server-*`` QMP
commands and ``block-export-add type=nbd``.  It checks arguments as
qemu-storage-daemon 7.2 does and words refusals as it does
(:class:`~iochannel.block.options.BlockError`).  One server at a time; its
exports are keyed by NBD name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from typing import Any

from .._transports.address import Address, AddressError, FdAddress, InetAddress, UnixAddress
from ..block.nodes import BlockNode
from ..block.options import BlockError, Options
from ..crypto import AuthzList, Credentials, CredentialsError, Endpoint, find_credentials
from .protocol import MAX_STRING
from .server import NbdExport, NbdServer

__all__ = ["ADDRESS_TYPES", "NbdService", "parse_addr", "tls_credentials"]

#: The ``addr.type`` values the server listens on.
ADDRESS_TYPES = ("inet", "unix", "fd")


def parse_addr(opts: Options, *, legacy: bool) -> Address:
    """A SocketAddress: flat (command line) or legacy (``{"type", "data": {…}}``, QMP)."""
    kind = opts.string("type")
    if legacy:
        if "data" not in opts.values:
            raise BlockError(f"Parameter '{opts.prefix}data' is missing")
        data = opts.values.pop("data")
        if not isinstance(data, dict):
            raise BlockError(f"Invalid parameter type for '{opts.prefix}data', expected: object")
        opts.done()
        opts = Options(data, typed=opts.typed, prefix=f"{opts.prefix}data.")
    addr: Address
    if kind == "inet":
        host = opts.string("host")
        port = opts.string("port")
        numeric = opts.boolean("numeric", False)
        ipv4, ipv6 = (opts.boolean(k, False) if opts.has(k) else None for k in ("ipv4", "ipv6"))
        keep_alive = opts.boolean("keep-alive", False)
        if ipv4 is False and ipv6 is False:
            raise BlockError("Cannot disable IPv4 and IPv6 at same time")
        # As QEMU reads them: one family turned off means only the other.
        ipv4 = True if ipv6 is False else ipv4
        ipv6 = True if ipv4 is False else ipv6
        try:
            addr = InetAddress(
                host, port, numeric=numeric, ipv4=ipv4, ipv6=ipv6, keep_alive=keep_alive
            )
        except AddressError as exc:
            raise BlockError(f"Parameter '{opts.prefix}port': {exc}") from None
    elif kind == "unix":
        path = opts.string("path")
        abstract = opts.boolean("abstract", False)
        tight = opts.boolean("tight", True)
        try:
            addr = UnixAddress(path, abstract=abstract, tight=tight)
        except AddressError as exc:
            raise BlockError(f"Parameter '{opts.prefix}path': {exc}") from None
    elif kind == "fd":
        text = opts.string("str")
        if not text.isdigit():
            raise BlockError(
                f"Parameter '{opts.prefix}str' expects a file descriptor, got '{text}'"
            )
        addr = FdAddress(int(text))
    else:
        raise opts.bad_value("type", kind, ADDRESS_TYPES)
    opts.done()
    return addr


def tls_credentials(
    objects: Mapping[str, object], ident: str, endpoint: Endpoint, *, dry: bool
) -> Credentials:
    """The ``tls-creds`` object *ident* of *objects* for *endpoint* (the server's or a node's).

    Refusals are QEMU's words, with what to fix.  Unless *dry* (a check, whose
    objects are not loaded), the credentials' SSL context is made now, so a
    problem fails here rather than at each connection (PSK needs Python 3.13).
    """
    try:
        obj = find_credentials(objects, ident, endpoint)
    except CredentialsError as exc:
        raise BlockError(str(exc)) from None
    if not dry:
        try:
            obj.ssl_context()
        except CredentialsError as exc:
            raise BlockError(f"TLS credentials '{ident}': {exc}") from None
    return obj


class NbdService:
    """The NBD server of a storage daemon and its exports; see the module docstring.

    With *dry*, requests are only checked (nothing listens); *objects* are the
    ``--object`` credentials and authorization lists by id.
    """

    def __init__(self, objects: Mapping[str, object], *, dry: bool = False) -> None:
        self._objects = objects
        self._dry = dry
        self.running = False
        self.server: NbdServer | None = None
        self._task: asyncio.Future[None] | None = None
        self._path: str | None = None

    def start(self, args: dict[str, Any], *, typed: bool, legacy: bool) -> None:
        """``nbd-server-start`` (*legacy*: QMP's address form) or ``--nbd-server``."""
        opts = Options(args, typed=typed)
        given = opts.has("addr")
        group = opts.group("addr")
        creds_id = opts.optional_str("tls-creds")
        authz_id = opts.optional_str("tls-authz")
        max_connections = opts.integer("max-connections", 100, 0, (1 << 32) - 1)
        # Unknown keys first: a misspelt addr (adr.type=…) is named as such.
        opts.done()
        if legacy and not given:
            raise BlockError("Parameter 'addr' is missing")
        # The command line's SocketAddress is flat: addr.type=… spelled as addr.*.
        addr = parse_addr(group, legacy=legacy)
        if self.running:
            raise BlockError("NBD server already running")
        creds = self._creds(creds_id)
        if authz_id is not None and creds_id is None:
            raise BlockError("'tls-authz' is only valid with 'tls-creds'")
        authz = self._authz(authz_id)
        if self._dry:
            self.running = True
            return
        server = NbdServer(
            tls_creds=creds,
            tls_authz=None if authz is None else (lambda: authz),
            max_connections=max_connections,
        )
        try:
            server.listen(addr)
        except (OSError, AddressError) as exc:
            server.shutdown_pool()
            if isinstance(exc, AddressError):
                raise BlockError(str(exc)) from None
            where = addr.path if isinstance(addr, UnixAddress) else str(addr)
            raise BlockError(f"Failed to bind socket to {where}: {exc.strerror}") from None
        self.server = server
        self.running = True
        # An abstract socket has no file to remove.
        self._path = addr.path if isinstance(addr, UnixAddress) and not addr.abstract else None
        self._task = asyncio.ensure_future(server.serve())

    def _creds(self, ident: str | None) -> Credentials | None:
        if ident is None:
            return None
        return tls_credentials(self._objects, ident, Endpoint.SERVER, dry=self._dry)

    def _authz(self, ident: str | None) -> AuthzList | None:
        if ident is None:
            return None
        obj = self._objects.get(ident)
        if not isinstance(obj, AuthzList):
            raise BlockError(f"No authorization object with id '{ident}'")
        return obj

    async def stop(self) -> None:
        """Stop listening and serving (the exports must be removed first)."""
        if not self.running:
            raise BlockError("NBD server not running")
        self.running = False
        server, task = self.server, self._task
        self.server = self._task = None
        if server is None or task is None:
            return
        server.close()
        with contextlib.suppress(Exception):
            await task
        await asyncio.to_thread(server.shutdown_pool)
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)

    def check_export(self, name: str) -> None:
        """Refuse an export *name* as qemu-storage-daemon does."""
        if not self.running:
            raise BlockError("NBD server not running")
        if len(name.encode()) > MAX_STRING:
            raise BlockError(f"export name '{name}' too long")
        if self.server is not None and name in self.server.exports:
            raise BlockError(f"NBD server already has export named '{name}'")

    def add_export(
        self,
        name: str,
        node: BlockNode,
        *,
        description: str,
        writable: bool,
        writethrough: bool,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        """Serve *node* as *name* (after :meth:`check_export`); *loop*: its iothread's."""
        if len(description.encode()) > MAX_STRING:
            raise BlockError(f"description '{description}' too long")
        if self.server is None:
            return  # checking only
        export = NbdExport(
            name, node, description, writable=writable, writethrough=writethrough, loop=loop
        )
        self.server.add_export(export)

    def clients(self, name: str) -> int:
        """Clients connected to export *name*."""
        export = self.server.exports.get(name) if self.server is not None else None
        return len(export.connections) if export is not None else 0

    async def remove_export(self, name: str) -> None:
        """Stop serving *name*, disconnecting its clients (see :meth:`NbdServer.remove_export`)."""
        if self.server is not None and name in self.server.exports:
            await self.server.remove_export(name)
