"""``--blockdev driver=nbd``: a block node whose bytes are an export of an NBD server.

Options, spelled as QEMU 7.2's ``BlockdevOptionsNbd``:

* ``server.type=unix,server.path=P``, ``server.type=inet,server.host=H,``
  ``server.port=N`` or ``server.type=fd,server.str=N`` (a flat
  ``SocketAddress``, read as ``--nbd-server`` reads ``addr``);
* ``export`` — the export name (default ``""``, the server's default export);
* ``tls-creds`` — the id of a ``tls-creds-x509``/``tls-creds-psk`` object
  with ``endpoint=client``; ``tls-hostname`` — the name the server's
  certificate must carry (default: ``server.host``; needed over a unix socket);
* ``reconnect-delay`` — seconds (default 0).  When the connection is lost the
  node reconnects; requests issued meanwhile, and those that were in flight,
  wait up to this long for the new connection and are then sent again.  Past
  the delay they fail with ``EIO``, and so does each later request whose own
  reconnection attempt fails;
* ``open-timeout`` — seconds (default 0: one attempt) during which opening
  the node retries the connection.  Each attempt ends after
  :data:`~iochannel.nbd.client.HANDSHAKE_TIMEOUT` seconds without an answer.

The node runs an :class:`~iochannel.nbd.client.AsyncNbdClient` on a thread
of its own (``iothread-nbd-NAME``), so requests from every queue thread of an
export are in flight together on one connection.  A request the server
refuses fails with its errno (``EIO``, ``ENOSPC``, ``EPERM``…), as QEMU
reports it to the guest.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from .._transports.address import InetAddress
from ..block.iothread import IOThread
from ..block.nodes import BlockNode
from ..block.options import BlockError, Options
from ..crypto import Endpoint
from ..errors import ChannelError
from .client import AsyncNbdClient
from .service import parse_addr, tls_credentials

__all__ = ["NbdNode", "open_nbd"]

T = TypeVar("T")

_MAX_DELAY = 1 << 32  # QEMU's reconnect-delay and open-timeout are uint32


class NbdNode(BlockNode):
    """A node reading and writing an NBD export; see the module docstring."""

    driver = "nbd"

    def __init__(self, name: str, read_only: bool, thread: IOThread, client: AsyncNbdClient):
        super().__init__(name, read_only)
        self.thread = thread
        self.client = client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        # Server refusals are OSErrors with the server's errno, a lost connection
        # EIO; anything else (a protocol or TLS error) is an EIO too.
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.thread.loop).result()
        except OSError:
            raise
        except ChannelError as exc:
            raise OSError(errno.EIO, f"nbd node '{self.name}': {exc}") from exc

    def size(self) -> int:
        return self.client.size

    def preadv(self, bufs: list[memoryview], offset: int) -> int:
        room = max(0, self.client.size - offset)
        clipped: list[memoryview] = []
        for b in bufs:  # a read stops at the end of the export
            if room <= 0:
                break
            clipped.append(b[:room])
            room -= len(clipped[-1])
        if clipped:
            self._run(self.client.readinto(clipped, offset))
        return sum(len(b) for b in clipped)

    def pwritev(self, bufs: list[memoryview], offset: int) -> int:
        length = sum(len(b) for b in bufs)
        if offset + length > self.client.size:
            raise OSError(errno.ENOSPC, "write beyond the end of the node")
        self._run(self.client.writev(bufs, offset))
        return length

    def flush(self) -> None:
        if self.client.can_flush:
            self._run(self.client.flush())

    def discard(self, offset: int, length: int) -> None:
        if self.client.can_trim:
            self._run(self.client.trim(offset, length))

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        if self.client.can_write_zeroes:
            self._run(self.client.write_zeroes(offset, length, no_hole=not unmap))
        else:
            super().write_zeroes(offset, length, unmap)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        # base:allocation's bits are the node's STATUS_HOLE/STATUS_ZERO.
        return [(a.length, a.flags) for a in self._run(self.client.block_status(offset, length))]

    def filename(self) -> str:
        return self.client.uri

    def close(self) -> None:
        try:
            self._run(self.client.aclose())
        except OSError:
            pass  # the server is gone: nothing to say goodbye to
        finally:
            self.thread.stop()


def open_nbd(
    name: str, read_only: bool, opts: Options, objects: Mapping[str, object], dry: bool
) -> BlockNode:
    """The ``nbd`` driver: check the options, connect and negotiate the export."""
    if not opts.has("server"):
        raise BlockError("Parameter 'server' is missing")
    address = parse_addr(opts.group("server"), legacy=False)
    export = opts.string("export", "")
    creds_id = opts.optional_str("tls-creds")
    hostname = opts.optional_str("tls-hostname")
    reconnect_delay = opts.integer("reconnect-delay", 0, 0, _MAX_DELAY - 1)
    open_timeout = opts.integer("open-timeout", 0, 0, _MAX_DELAY - 1)
    opts.done()
    creds = (
        None if creds_id is None else tls_credentials(objects, creds_id, Endpoint.CLIENT, dry=dry)
    )
    if hostname is None and isinstance(address, InetAddress):
        hostname = address.host
    if creds is not None and creds.verifies_peer and hostname is None:
        raise BlockError(
            "Parameter 'tls-hostname' is missing: it names the server's certificate, "
            "which cannot be checked against a unix socket path"
        )
    if dry:
        node = BlockNode(name, read_only)
        node.driver = "nbd"
        return node
    thread = IOThread(f"nbd-{name}")
    try:
        client = asyncio.run_coroutine_threadsafe(
            AsyncNbdClient.connect(
                address,
                export,
                tls=creds,
                tls_hostname=hostname,
                reconnect_delay=reconnect_delay,
                open_timeout=open_timeout,
            ),
            thread.loop,
        ).result()
    except (OSError, ChannelError) as exc:
        thread.stop()
        raise BlockError(f"Failed to connect to the NBD server of node '{name}': {exc}") from None
    except BaseException:
        thread.stop()
        raise
    node = NbdNode(name, read_only, thread, client)
    if client.read_only and not read_only:
        node.close()
        raise BlockError(f"Export '{export}' of node '{name}' is read-only: add read-only=on")
    return node
