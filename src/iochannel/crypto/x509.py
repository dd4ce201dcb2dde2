"""X.509 credentials loaded from a directory, with QEMU's file names.

The directory holds PEM files:

=====================  ==========================================
``ca-cert.pem``        CA certificates the peer must chain to
``server-cert.pem``    server certificate (and any intermediates)
``server-key.pem``     its private key
``client-cert.pem``    client certificate (and any intermediates)
``client-key.pem``     its private key
``dh-params.pem``      optional Diffie-Hellman parameters (server)
=====================  ==========================================

With ``verify_peer`` (the default) both sides present certificates, every
certificate of the peer's chain must be within its validity period and chain
to ``ca-cert.pem``, the client checks the server's name against the hostname
or IP it connected to (SAN, or CN when there is no SAN), and the server may
check the client's distinguished name (see :func:`distinguished_name`) with an
:class:`~iochannel.crypto.authz.AuthzList`.  Without it no certificate is
checked, and the client's certificate files are optional.
"""

from __future__ import annotations

import os
import ssl

from cryptography import x509

from .creds import Credentials, CredentialsError, Endpoint, new_context

__all__ = ["X509Credentials", "distinguished_name"]

CA_CERT = "ca-cert.pem"
DH_PARAMS = "dh-params.pem"


def distinguished_name(der: bytes) -> str:
    """The subject of a DER certificate as QEMU prints it: ``C=UK,O=Acme,CN=qemu``.

    RDNs come in the order they appear in the certificate (not the reversed
    RFC 4514 order), each formatted and escaped as RFC 4514 says.
    """
    cert = x509.load_der_x509_certificate(der)
    return ",".join(rdn.rfc4514_string() for rdn in cert.subject.rdns)


class X509Credentials(Credentials):
    """Certificates and keys from *directory* for *endpoint* (see the module doc)."""

    __slots__ = ("_context", "directory", "verify_peer")

    def __init__(
        self,
        directory: str | os.PathLike[str],
        endpoint: Endpoint | str,
        *,
        verify_peer: bool = True,
        password: bytes | None = None,
    ) -> None:
        super().__init__(endpoint)
        self.directory = os.fspath(directory)
        self.verify_peer = verify_peer
        if not os.path.isdir(self.directory):
            raise CredentialsError(f"credentials directory {self.directory!r} does not exist")
        self._context = self._load(password)

    @property
    def verifies_peer(self) -> bool:
        return self.verify_peer

    def ssl_context(self) -> ssl.SSLContext:
        return self._context

    def _path(self, name: str, required: bool) -> str | None:
        path = os.path.join(self.directory, name)
        if os.path.exists(path):
            return path
        if required:
            raise CredentialsError(f"cannot load {name}: {path!r} does not exist")
        return None

    def _load(self, password: bytes | None) -> ssl.SSLContext:
        role = self.endpoint.value
        ctx = new_context(self.endpoint)
        # A client's own certificate is only needed when the server checks it.
        need_own = self.endpoint is Endpoint.SERVER or self.verify_peer
        cert = self._path(f"{role}-cert.pem", need_own)
        key = self._path(f"{role}-key.pem", need_own)
        if cert is not None:
            if key is None:
                raise CredentialsError(f"{cert!r} has no matching {role}-key.pem")
            try:
                ctx.load_cert_chain(cert, key, password)
            except (ssl.SSLError, OSError) as exc:
                raise CredentialsError(
                    f"cannot load {role}-cert.pem/{role}-key.pem from {self.directory!r}: {exc}"
                ) from exc
        if self.verify_peer:
            ca = self._path(CA_CERT, True)
            try:
                ctx.load_verify_locations(cafile=ca)
            except (ssl.SSLError, OSError) as exc:
                raise CredentialsError(f"cannot load {CA_CERT} from {ca!r}: {exc}") from exc
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        dh = self._path(DH_PARAMS, False)
        if dh is not None and self.endpoint is Endpoint.SERVER:
            try:
                ctx.load_dh_params(dh)
            except (ssl.SSLError, OSError) as exc:
                raise CredentialsError(f"cannot load {DH_PARAMS} from {dh!r}: {exc}") from exc
        return ctx
