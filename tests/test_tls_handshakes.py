"""Real TLS handshakes: QEMU's test-crypto-tlssession cases and hostile or broken peers.

Each failure must raise :class:`TLSError` with a message naming the cause.
With TLS 1.3 a client finishes its handshake before the server has checked
the client certificate, so a server-side rejection reaches the client on its
first read.
"""

from __future__ import annotations

import datetime
import os
import threading

import pytest

from iochannel import SocketChannel, TLSChannel, TLSError
from iochannel.crypto import AuthzList, PSKCredentials, X509Credentials
from iochannel.crypto.certs import CertificateAuthority, pem
from iochannel.crypto.creds import CredentialsError
from iochannel.crypto.psk import psk_supported

from .test_tls import Creds, make_creds, run_handshakes, tls_pair, write_dir


def handshake(
    creds: Creds, *, hostname: str = "qemu.org", authz: AuthzList | None = None
) -> tuple[BaseException | None, BaseException | None]:
    """(client error, server error); a client error that shows only on reading counts."""
    client, server = tls_pair(creds, hostname=hostname, authz=authz)
    try:
        cerr, serr = run_handshakes(client, server)
        if cerr is None and serr is not None:
            try:
                client.read(1)
            except TLSError as exc:
                cerr = exc
        return cerr, serr
    finally:
        client.close()
        server.close()


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("C=UK,CN=qemu CA")


def test_basicca(tmp_path: object, ca: CertificateAuthority) -> None:
    assert handshake(make_creds(str(tmp_path), ca=ca)) == (None, None)


def test_differentca(tmp_path: object) -> None:
    # Server and client certificates come from two CAs that do not know each other.
    base = str(tmp_path)
    one, two = CertificateAuthority.create("CN=ca one"), CertificateAuthority.create("CN=ca two")
    server = one.issue("CN=qemu.org", server=True, names=["qemu.org"])
    client = two.issue("C=UK,CN=qemu", client=True)
    creds = Creds(
        write_dir(f"{base}/s", pem(one.cert), "server", pem(server[0]), pem(server[1])),
        write_dir(f"{base}/c", pem(one.cert), "client", pem(client[0]), pem(client[1])),
    )
    cerr, serr = handshake(creds)
    assert isinstance(serr, TLSError)
    assert "unable to get local issuer certificate" in str(serr)
    assert isinstance(cerr, TLSError)
    assert "unknown ca" in str(cerr)


def test_wrong_ca_on_the_client(tmp_path: object, ca: CertificateAuthority) -> None:
    creds = make_creds(str(tmp_path), ca=ca)
    other = CertificateAuthority.create("CN=somebody else")
    with open(os.path.join(creds.client, "ca-cert.pem"), "wb") as f:
        f.write(pem(other.cert))
    cerr, serr = handshake(creds)
    assert isinstance(cerr, TLSError)
    assert "certificate verification failed: self-signed certificate in certificate chain" in str(
        cerr
    )
    assert isinstance(serr, TLSError)


ALTNAMES = ["qemu.org", "www.qemu.org", "192.168.122.1", "fec0::dead:beaf"]


@pytest.mark.parametrize(
    ("case", "names", "hostname", "ok"),
    [
        ("altname1", ALTNAMES, "qemu.org", True),
        ("altname2", ALTNAMES, "fec0::dead:beaf", True),
        ("altname3", ALTNAMES, "192.168.122.1", True),
        ("altname4", ALTNAMES, "192.168.122.50", False),
        ("altname5", ALTNAMES, "www.qemu.org", True),
        ("altname6", ALTNAMES, "wiki.qemu.org", False),
        # With SANs present the CN (qemu.org) is not a valid name any more.
        ("altname7", ["www.qemu.org", "wiki.qemu.org"], "qemu.org", False),
        ("altname8", ["www.qemu.org", "wiki.qemu.org"], "wiki.qemu.org", True),
    ],
)
def test_altname(
    tmp_path: object,
    ca: CertificateAuthority,
    case: str,
    names: list[str],
    hostname: str,
    ok: bool,
) -> None:
    creds = make_creds(str(tmp_path), ca=ca, server_names=names)
    cerr, serr = handshake(creds, hostname=hostname)
    if ok:
        assert (cerr, serr) == (None, None), case
    else:
        assert isinstance(cerr, TLSError), case
        assert "mismatch" in str(cerr), case
        assert isinstance(serr, TLSError), case


def test_cn_is_used_without_san(tmp_path: object, ca: CertificateAuthority) -> None:
    creds = make_creds(str(tmp_path), ca=ca, server_names=[])
    assert handshake(creds) == (None, None)
    cerr, _ = handshake(creds, hostname="www.qemu.org")
    assert "Hostname mismatch" in str(cerr)


@pytest.mark.parametrize(
    ("case", "rules", "ok"),
    [
        ("wildcard1", ["C=UK,CN=dogfood"], False),
        ("wildcard2", ["C=UK,CN=qemu"], True),
        ("wildcard3", ["C=UK,CN=dogfood", "C=UK,CN=qemu"], True),
        ("wildcard4", ["C=UK,CN=qemustuff"], False),
        ("wildcard5", ["C=UK,CN=qemu*"], True),
        ("wildcard6", ["C=UK,CN=*emu*"], True),
    ],
)
def test_wildcard_acl(
    tmp_path: object, ca: CertificateAuthority, case: str, rules: list[str], ok: bool
) -> None:
    creds = make_creds(str(tmp_path), ca=ca)
    cerr, serr = handshake(creds, authz=AuthzList(rules))
    if ok:
        assert (cerr, serr) == (None, None), case
    else:
        assert isinstance(serr, TLSError), case
        assert "authz check for C=UK,CN=qemu is denied" in str(serr), case


def test_cachain(tmp_path: object) -> None:
    # root -> intermediate -> issuing CA; ca-cert.pem holds the whole chain.
    root = CertificateAuthority.create("C=UK,CN=qemu root CA")
    middle = root.issue_ca("C=UK,CN=qemu intermediate CA")
    issuing = middle.issue_ca("C=UK,CN=qemu issuing CA")
    server = issuing.issue("C=UK,CN=qemu.org", server=True, names=["qemu.org"])
    client = issuing.issue("C=UK,CN=qemu", client=True)
    bundle = pem(root.cert) + pem(middle.cert) + pem(issuing.cert)
    base = str(tmp_path)
    creds = Creds(
        write_dir(f"{base}/s", bundle, "server", pem(server[0]), pem(server[1])),
        write_dir(f"{base}/c", bundle, "client", pem(client[0]), pem(client[1])),
    )
    assert handshake(creds, authz=AuthzList(["C=UK,CN=qemu"])) == (None, None)


def _dated_creds(base: str, ca: CertificateAuthority, *, server: bool, days_from_now: int) -> Creds:
    creds = make_creds(base, ca=ca)
    start = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days_from_now)
    role = "server" if server else "client"
    cert, key = ca.issue(
        "C=UK,CN=qemu.org" if server else "C=UK,CN=qemu",
        server=server,
        client=not server,
        names=["qemu.org"] if server else [],
        not_before=start,
        days=30,
    )
    write_dir(getattr(creds, role), pem(ca.cert), role, pem(cert), pem(key))
    return creds


@pytest.mark.parametrize(
    ("server", "days", "message"),
    [
        (True, -100, "certificate has expired"),
        (True, 10, "certificate is not yet valid"),
        (False, -100, "certificate has expired"),
        (False, 10, "certificate is not yet valid"),
    ],
)
def test_validity_period(
    tmp_path: object, ca: CertificateAuthority, server: bool, days: int, message: str
) -> None:
    creds = _dated_creds(str(tmp_path), ca, server=server, days_from_now=days)
    cerr, serr = handshake(creds)
    checker, peer = (cerr, serr) if server else (serr, cerr)
    assert isinstance(checker, TLSError)
    assert message in str(checker)
    assert isinstance(peer, TLSError)


def test_client_without_certificate_is_refused(tmp_path: object, ca: CertificateAuthority) -> None:
    creds = make_creds(str(tmp_path), ca=ca)
    bare = os.path.join(str(tmp_path), "no-client-cert")
    os.makedirs(bare)
    a, b = SocketChannel.pair()
    client = TLSChannel.client(a, X509Credentials(bare, "client", verify_peer=False))
    server = TLSChannel.server(b, creds.server_creds())
    try:
        _, serr = run_handshakes(client, server)
        assert isinstance(serr, TLSError)
        assert "peer did not return a certificate" in str(serr)
    finally:
        client.close()
        server.close()


def test_verify_peer_off_accepts_anything(tmp_path: object) -> None:
    one, two = CertificateAuthority.create("CN=one"), CertificateAuthority.create("CN=two")
    server = one.issue("CN=elsewhere", server=True, names=["elsewhere"])
    base = str(tmp_path)
    sdir = write_dir(f"{base}/s", pem(one.cert), "server", pem(server[0]), pem(server[1]))
    cdir = f"{base}/c"
    os.makedirs(cdir)
    a, b = SocketChannel.pair()
    client = TLSChannel.client(a, X509Credentials(cdir, "client", verify_peer=False), "qemu.org")
    server_ch = TLSChannel.server(b, X509Credentials(sdir, "server", verify_peer=False))
    try:
        assert run_handshakes(client, server_ch) == (None, None)
        assert two  # unused CA: nothing is checked
    finally:
        client.close()
        server_ch.close()


# ---- broken and hostile peers ------------------------------------------------------


def _server_against(creds: Creds, feed: bytes, close: bool = True) -> TLSError:
    a, b = SocketChannel.pair()
    server = TLSChannel.server(a, creds.server_creds())
    try:
        b.write_all(feed)
        if close:
            b.shutdown()
        with pytest.raises(TLSError) as info:
            server.handshake()
        return info.value
    finally:
        server.close()
        b.close()


def test_truncated_handshake(tmp_path: object, ca: CertificateAuthority) -> None:
    # A ClientHello record header promising 512 bytes, 10 of them, then EOF.
    err = _server_against(make_creds(str(tmp_path), ca=ca), b"\x16\x03\x01\x02\x00" + bytes(10))
    assert "peer closed the connection during the TLS handshake" in str(err)


def test_peer_closes_before_any_byte(tmp_path: object, ca: CertificateAuthority) -> None:
    err = _server_against(make_creds(str(tmp_path), ca=ca), b"")
    assert "during the TLS handshake" in str(err)


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        (b"GET / HTTP/1.1\r\nHost: qemu.org\r\n\r\n", "http request"),
        (b"\x16\x03\x01\x00\x05\xff\xff\xff\xff\xff", "handshake failed"),
        (b"\x17\x03\x03\x00\x10" + bytes(16), "handshake failed"),
        (b"\x00" * 64, "handshake failed"),
        (b"\x16\x03\x01\xff\xff" + bytes(100), "handshake failed"),
    ],
)
def test_garbage_bytes(
    tmp_path_factory: pytest.TempPathFactory, garbage: bytes, message: str
) -> None:
    creds = make_creds(str(tmp_path_factory.mktemp("garbage")))
    err = _server_against(creds, garbage, close=False)
    assert message in str(err)


def test_garbage_from_the_server(tmp_path: object, ca: CertificateAuthority) -> None:
    creds = make_creds(str(tmp_path), ca=ca)
    a, b = SocketChannel.pair()
    client = TLSChannel.client(a, creds.client_creds(), "qemu.org")
    reader = threading.Thread(target=lambda: b.read(4096))
    reader.start()
    try:
        b.write_all(b"SSH-2.0-OpenSSH_9.6\r\n" + os.urandom(200))
        with pytest.raises(TLSError, match="handshake failed"):
            client.handshake()
    finally:
        reader.join()
        client.close()
        b.close()


# ---- PSK ---------------------------------------------------------------------------------


def test_psk(tmp_path: object) -> None:
    with open(os.path.join(str(tmp_path), "keys.psk"), "w") as f:
        f.write("qemu:9d65dde6ad2ed7e6\n")
    if not psk_supported():
        with pytest.raises(CredentialsError, match=r"TLS-PSK needs Python 3\.13"):
            PSKCredentials(str(tmp_path), "server").ssl_context()
        return
    a, b = SocketChannel.pair()
    client = TLSChannel.client(a, PSKCredentials(str(tmp_path), "client"))
    server = TLSChannel.server(b, PSKCredentials(str(tmp_path), "server"))
    try:
        assert run_handshakes(client, server) == (None, None)
        client.write_all(b"psk")
        assert server.read_all(3) == b"psk"
    finally:
        client.close()
        server.close()
