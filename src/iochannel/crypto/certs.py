"""Making a CA, certificates and a credentials directory, with ``cryptography``.

Library use::

    ca = CertificateAuthority.create("C=UK,O=Example,CN=Example CA")
    cert, key = ca.issue("C=UK,CN=qemu.org", server=True, names=["qemu.org"])

Command line — writes ``ca-cert.pem``, ``server-cert.pem``/``server-key.pem``
and ``client-cert.pem``/``client-key.pem`` (QEMU's names, keys mode 0600)::

    python -m iochannel.crypto.certs DIR --hostname qemu.org --client-dn "C=UK,CN=qemu"

Keys are ECDSA P-256: fast to make and accepted by every TLS 1.2+ peer.
Existing files are never overwritten unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigurationError

__all__ = ["CertificateAuthority", "main", "make_credentials_dir", "parse_dn", "pem"]

Key = ec.EllipticCurvePrivateKey

_ATTRS = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
}


def parse_dn(dn: str) -> x509.Name:
    """``C=UK,O=Example,CN=qemu`` → a Name with the RDNs in that order."""
    attrs = []
    for part in dn.split(","):
        key, sep, value = part.strip().partition("=")
        oid = _ATTRS.get(key.strip().upper())
        if not sep or oid is None or not value:
            raise ConfigurationError(
                f"bad distinguished name component {part!r} in {dn!r}", field="dn"
            )
        attrs.append(x509.NameAttribute(oid, value.strip()))
    return x509.Name(attrs)


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def pem(obj: x509.Certificate | Key) -> bytes:
    """PEM encoding of a certificate or an (unencrypted PKCS#8) private key."""
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    """A CA certificate and key that can issue certificates and sub-CAs."""

    __slots__ = ("cert", "key")

    def __init__(self, cert: x509.Certificate, key: Key) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, dn: str = "CN=iochannel CA", *, days: int = 3650) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = parse_dn(dn)
        cert = (
            _builder(name, name, key.public_key(), _an_hour_ago(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def issue(
        self,
        dn: str,
        *,
        server: bool = False,
        client: bool = False,
        names: Sequence[str] = (),
        ca: bool = False,
        not_before: datetime.datetime | None = None,
        days: int = 365,
    ) -> tuple[x509.Certificate, Key]:
        """Issue a certificate for *dn*.

        *server*/*client* set the TLS web server/client extended key usages,
        *names* become subjectAltName entries (IP addresses or DNS names), *ca*
        makes an intermediate CA.  Validity starts at *not_before* (default an
        hour ago) and lasts *days*.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or _an_hour_ago()
        builder = _builder(parse_dn(dn), self.cert.subject, key.public_key(), start, days)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=None), critical=True
        )
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
            critical=False,
        )
        if ca:
            builder = builder.add_extension(_ca_usage(), critical=True)
        else:
            builder = builder.add_extension(
                x509.KeyUsage(True, False, True, False, True, False, False, False, False),
                critical=True,
            )
            usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [
                ExtendedKeyUsageOID.CLIENT_AUTH
            ] * client
            if usages:
                builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_general_names(names)), critical=False
            )
        return builder.sign(self.key, hashes.SHA256()), key

    def issue_ca(self, dn: str, *, days: int = 3650) -> CertificateAuthority:
        """An intermediate CA signed by this one."""
        cert, key = self.issue(dn, ca=True, days=days)
        return CertificateAuthority(cert, key)


def _an_hour_ago() -> datetime.datetime:
    # Starting validity in the past tolerates small clock differences between peers.
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(True, False, False, False, False, True, True, False, False)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    start: datetime.datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _write(path: str, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_credentials_dir(
    directory: str | os.PathLike[str],
    *,
    hostnames: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    server_dn: str | None = None,
    client_dn: str = "CN=qemu",
    ca_dn: str = "CN=iochannel CA",
    days: int = 365,
    force: bool = False,
) -> None:
    """Create *directory* with a CA, a server and a client certificate."""
    directory = os.fspath(directory)
    if not hostnames:
        raise ConfigurationError(
            "at least one server hostname or IP address is needed", field="hostnames"
        )
    os.makedirs(directory, exist_ok=True)
    ca = CertificateAuthority.create(ca_dn, days=days)
    server = ca.issue(server_dn or f"CN={hostnames[0]}", server=True, names=hostnames, days=days)
    client = ca.issue(client_dn, client=True, days=days)
    files = [("ca-cert.pem", pem(ca.cert), 0o644)]
    for role, (cert, key) in (("server", server), ("client", client)):
        files += [(f"{role}-cert.pem", pem(cert), 0o644), (f"{role}-key.pem", pem(key), 0o600)]
    for name, data, mode in files:
        _write(os.path.join(directory, name), data, mode, force)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iochannel.crypto.certs",
        description="Create a TLS credentials directory (CA, server and client certificates).",
    )
    parser.add_argument("directory")
    parser.add_argument(
        "--hostname",
        action="append",
        dest="hostnames",
        metavar="NAME",
        help="server DNS name or IP address (repeatable; default localhost, 127.0.0.1, ::1)",
    )
    parser.add_argument("--server-dn", help="server subject (default CN=<first hostname>)")
    parser.add_argument("--client-dn", default="CN=qemu", help="client subject (default CN=qemu)")
    parser.add_argument("--ca-dn", default="CN=iochannel CA", help="CA subject")
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    try:
        make_credentials_dir(
            args.directory,
            hostnames=args.hostnames or ("localhost", "127.0.0.1", "::1"),
            server_dn=args.server_dn,
            client_dn=args.client_dn,
            ca_dn=args.ca_dn,
            days=args.days,
            force=args.force,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
