"""TLS as a layer over any channel: :class:`TLSChannel`.

Built on :class:`ssl.SSLObject` with two :class:`ssl.MemoryBIO`\\ s, so the
master can be a socket, a pipe pair, a command, a pty or a memory pair.

Theory of operation
-------------------
Reads pull ciphertext from the master into the incoming BIO (up to 256 KiB
per master read) and decrypt as many records as fit the
caller's buffers.  Writes encrypt into the outgoing BIO, move the ciphertext
to a queue and push the queue to the master, at most ``_WRITE_CHUNK`` bytes
per ``writev`` (see :mod:`iochannel._layers.layer` for what happens when the master
takes only part of it).

Readiness reflects the layer: decrypted or undecrypted bytes already held
make the channel readable without the master being readable.

End of stream: a ``close_notify`` from the peer reads as EOF.  A master EOF
without one is a :class:`TLSError` (the data may have been truncated) unless
the read passes ``ReadFlag.RELAXED_EOF`` or ``shutdown(Shutdown.READ)`` was
called.  :meth:`TLSChannel.bye` sends ``close_notify``; :meth:`close` sends it
too, as a courtesy that never blocks.

Credentials (:mod:`iochannel.crypto`) carry the endpoint role, the CA and the
peer checks.  After the handshake a server with an
:class:`~iochannel.crypto.AuthzList` checks the client certificate's
distinguished name against it.  Every failure raises :class:`TLSError` with a
message naming the cause (expired certificate, unknown CA, hostname mismatch,
denied name, truncated handshake …).
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence
from typing import final

from .._core.channel import Buffer, Channel
from .._core.flags import Condition, ReadFlag, Shutdown
from ..crypto.authz import AuthzDeniedError, AuthzList
from ..crypto.creds import Credentials, CredentialsError, Endpoint
from ..crypto.x509 import distinguished_name
from ..errors import ChannelError
from .layer import LayerChannel

__all__ = ["TLSChannel", "TLSError"]

# Plaintext encrypted by one writev: a few records, one master write.
_WRITE_CHUNK = 256 * 1024

_SSL_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)$")


class TLSError(ChannelError):
    """The TLS connection failed: handshake, certificate check, authorization or record."""


def _describe(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    text = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    return _SSL_LOCATION.sub("", text)


@final
class TLSChannel(LayerChannel):
    """TLS over *master*; use :meth:`server` or :meth:`client` to make one."""

    __slots__ = (
        "_authz",
        "_bye_sent",
        "_eof",
        "_in",
        "_out",
        "_shut",
        "_ssl",
        "_ssl_done",
        "credentials",
    )

    def __init__(
        self,
        master: Channel,
        credentials: Credentials,
        endpoint: Endpoint,
        *,
        hostname: str | None = None,
        authz: AuthzList | None = None,
        name: str = "",
    ) -> None:
        credentials.check_endpoint(endpoint)
        server = endpoint is Endpoint.SERVER
        if not server and credentials.verifies_peer and not hostname:
            raise CredentialsError("no hostname for certificate validation")
        context = credentials.ssl_context()
        super().__init__(master, name or f"tls-{endpoint.value}({master.name})")
        self.credentials = credentials
        self._authz = authz
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._in, self._out, server_side=server, server_hostname=None if server else hostname
        )
        self._eof = False
        self._ssl_done = False
        self._bye_sent = False
        self._shut = Shutdown(0)

    @classmethod
    def server(
        cls,
        master: Channel,
        credentials: Credentials,
        *,
        authz: AuthzList | None = None,
        name: str = "",
    ) -> TLSChannel:
        """The server side over *master*; *authz* checks the client's DN."""
        return cls(master, credentials, Endpoint.SERVER, authz=authz, name=name)

    @classmethod
    def client(
        cls,
        master: Channel,
        credentials: Credentials,
        hostname: str | None = None,
        *,
        name: str = "",
    ) -> TLSChannel:
        """The client side over *master*; *hostname* (or IP) must match the server cert."""
        return cls(master, credentials, Endpoint.CLIENT, hostname=hostname, name=name)

    # ---- connection information --------------------------------------------

    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER), or ``None``."""
        return self._ssl.getpeercert(binary_form=True)

    def peer_dn(self) -> str | None:
        """The peer certificate's distinguished name, as an authz list sees it."""
        der = self.peer_certificate()
        return None if der is None else distinguished_name(der)

    @property
    def version(self) -> str | None:
        return self._ssl.version()

    @property
    def cipher(self) -> str | None:
        info = self._ssl.cipher()
        return None if info is None else info[0]

    # ---- moving ciphertext -----------------------------------------------------

    def _fill(self) -> int | None:
        """Read ciphertext from the master: a count, 0 at EOF, ``None`` if it would block."""
        buf, n = self._read_master()
        with self._engine:
            if n:
                self._in.write(buf[:n])
            elif n == 0:
                self._in.write_eof()
                self._eof = True
        return n

    def _collect_output(self) -> None:
        if self._out.pending:
            self._queue(self._out.read())

    def _error(self, exc: ssl.SSLError, during: str) -> TLSError:
        try:
            self._flush()  # deliver any alert telling the peer why
        except (OSError, ChannelError):
            pass
        return TLSError(f"{self.name}: TLS {during} failed: {_describe(exc)}")

    # ---- handshake ---------------------------------------------------------------

    def _handshake_step(self) -> Condition:
        while not self._ssl_done:
            try:
                with self._engine:
                    self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                if not self._flush():
                    return Condition.OUT
                n = self._fill()
                if n is None:
                    return Condition.IN
                if n == 0:
                    raise TLSError(
                        f"{self.name}: peer closed the connection during the TLS handshake"
                    ) from None
                continue
            except ssl.SSLError as exc:
                raise self._error(exc, "handshake") from exc
            self._ssl_done = True
        if not self._flush():
            return Condition.OUT
        self._check_peer()
        return Condition.NONE

    def _check_peer(self) -> None:
        if self._authz is None or not self.credentials.verifies_peer:
            return
        dn = self.peer_dn()
        if dn is None:
            raise TLSError(f"{self.name}: no client certificate for the authorization check")
        try:
            self._authz.check(dn)
        except AuthzDeniedError as exc:
            raise TLSError(f"{self.name}: TLS x509 authz check for {dn} is denied") from exc

    # ---- data ------------------------------------------------------------------

    def _decrypt(self, views: list[memoryview]) -> tuple[int, bool]:
        """Decrypt into *views* what is available: (count, whether input ran out).

        A count of 0 with input left means end of stream.
        """
        ssl_read = self._ssl.read
        total = 0
        with self._engine:
            for i, view in enumerate(views):
                while view:
                    try:
                        # With a buffer, read() returns a count (typeshed says bytes).
                        n: int = ssl_read(len(view), view)  # type: ignore[assignment]
                    except ssl.SSLWantReadError:
                        views[i] = view
                        return total, True
                    if n == 0:  # close_notify
                        return total, False
                    total += n
                    view = view[n:]
        return total, False

    def _readv(
        self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int | None:
        if not self._can_transfer():
            return None
        views = [memoryview(b).cast("B") for b in buffers]
        try:
            while True:
                total, starved = self._decrypt(views)
                if self._out.pending or self._wq:
                    self._flush_if_free()  # what reading produced: key updates, …
                if total or not starved:
                    return total
                if self._fill() is None:
                    return None
        except ssl.SSLZeroReturnError:
            return 0  # close_notify after ours: a clean end of stream too
        except ssl.SSLEOFError as exc:
            if flags & ReadFlag.RELAXED_EOF or self._shut & Shutdown.READ:
                return 0
            raise TLSError(
                f"{self.name}: peer closed the connection without a TLS close_notify "
                "(the data may be truncated)"
            ) from exc
        except ssl.SSLError as exc:
            raise self._error(exc, "read") from exc

    def _encode(self, buffers: Sequence[Buffer]) -> int:
        total = 0
        try:
            with self._engine:
                for buf in buffers:
                    view = memoryview(buf).cast("B")[: _WRITE_CHUNK - total]
                    if view:
                        total += self._ssl.write(view)
                        if total >= _WRITE_CHUNK:
                            break
        except ssl.SSLError as exc:
            raise self._error(exc, "write") from exc
        return total

    def bye(self) -> None:
        """Send ``close_notify``, waiting until the master took it.

        The peer then reads EOF; this side can still read what the peer sends.
        """
        self._check_open()
        self._send_close_notify()
        self._drain()

    async def abye(self) -> None:
        """:meth:`bye` on the running loop."""
        self._check_open()
        self._async_mode()
        self._send_close_notify()
        await self._adrain()

    def _send_close_notify(self) -> None:
        if not self._can_transfer():
            raise TLSError(f"{self.name}: cannot send close_notify before the handshake ends")
        with self._engine:
            if self._bye_sent:
                return
            self._bye_sent = True
            # SSLObject.unwrap() also tries to read the peer's close_notify, which
            # would eat application data already fed in: keep it aside meanwhile.
            held = self._in.read()
            try:
                self._ssl.unwrap()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                raise TLSError(f"{self.name}: TLS close_notify failed: {_describe(exc)}") from exc
            finally:
                if held:
                    self._in.write(held)

    def _goodbye(self) -> None:
        self._send_close_notify()
        self._flush()

    # ---- readiness ------------------------------------------------------------------

    def _readable(self) -> bool:
        return bool(
            self._ssl.pending()
            or self._in.pending
            or self._eof
            or self._master._pending(Condition.IN)
        )

    def _shutdown(self, how: Shutdown) -> None:
        """Shutting down writing sends ``close_notify`` first (waiting to flush it)."""
        self._shut |= how
        if how & Shutdown.WRITE and self._hs_done:
            self._send_close_notify()
            self._drain()
        self._master.shutdown(how)
