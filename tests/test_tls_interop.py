"""TLSChannel against OpenSSL's own tools, in both directions, over a unix socket."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator

import pytest

from iochannel import CommandChannel, Condition, SocketChannel, TLSChannel, TLSError, UnixAddress
from iochannel.crypto import AuthzList

from .conftest import require_tool
from .test_tls import Creds, make_creds


@pytest.fixture
def creds(tmp_path: object) -> Creds:
    return make_creds(str(tmp_path))


@pytest.fixture
def sock_path() -> Iterator[str]:
    # OpenSSL 3.0's s_server fails on unix paths longer than about 32 bytes.
    d = tempfile.mkdtemp(prefix="ossl")
    yield os.path.join(d, "s.sock")
    shutil.rmtree(d)


def _connect(path: str, attempts: int = 500) -> SocketChannel:
    # s_server creates its socket after start-up: wait for it to appear.
    for _ in range(attempts):
        try:
            return SocketChannel.connect(UnixAddress(path))
        except (FileNotFoundError, ConnectionRefusedError):
            threading.Event().wait(0.01)
    raise AssertionError(f"openssl s_server never listened on {path}")


def _s_server(openssl: str, creds: Creds, path: str) -> CommandChannel:
    d = creds.server
    return CommandChannel.spawn(
        [
            openssl, "s_server", "-quiet", "-naccept", "1", "-rev", "-unix", path,
            "-cert", f"{d}/server-cert.pem", "-key", f"{d}/server-key.pem",
            "-CAfile", f"{d}/ca-cert.pem", "-Verify", "1", "-verify_return_error",
        ],
        "r",
    )  # fmt: skip


def test_client_against_openssl_s_server(creds: Creds, sock_path: str) -> None:
    openssl = require_tool("openssl")
    path = sock_path
    server = _s_server(openssl, creds, path)
    try:
        client = TLSChannel.client(_connect(path), creds.client_creds(), "qemu.org")
        with client:
            client.handshake()
            assert client.peer_dn() == "C=UK,CN=qemu.org"
            client.write_all(b"hello openssl\n")
            got = b""
            while not got.endswith(b"\n"):
                chunk = client.read(100)
                assert chunk, "s_server closed early"
                got += chunk
            assert got == b"lssnepo olleh\n"  # -rev answers each line reversed
    finally:
        server.close()


def test_client_rejects_openssl_s_server_for_wrong_name(creds: Creds, sock_path: str) -> None:
    openssl = require_tool("openssl")
    path = sock_path
    server = _s_server(openssl, creds, path)
    try:
        client = TLSChannel.client(_connect(path), creds.client_creds(), "qemu.com")
        with client, pytest.raises(TLSError, match="Hostname mismatch"):
            client.handshake()
    finally:
        server.close()


def _s_client(openssl: str, creds: Creds, path: str, *extra: str) -> CommandChannel:
    d = creds.client
    return CommandChannel.spawn(
        [
            openssl, "s_client", "-quiet", "-unix", path,
            "-cert", f"{d}/client-cert.pem", "-key", f"{d}/client-key.pem",
            "-CAfile", f"{d}/ca-cert.pem", "-verify_hostname", "qemu.org",
            "-verify_return_error", *extra,
        ],
        "rw",
    )  # fmt: skip


def _accept(listener: SocketChannel) -> SocketChannel:
    listener.wait(Condition.IN)
    conn = listener.accept()
    assert conn is not None
    return conn


@contextlib.contextmanager
def _s_client_session(
    creds: Creds, tmp_path: object, allow: str
) -> Iterator[tuple[TLSChannel, CommandChannel]]:
    """A TLS server (its authz list allowing *allow*) with `openssl s_client` connected."""
    openssl = require_tool("openssl")
    path = os.path.join(str(tmp_path), "server.sock")
    with SocketChannel.listen(UnixAddress(path)) as listener:
        s_client = _s_client(openssl, creds, path)
        try:
            server = TLSChannel.server(
                _accept(listener), creds.server_creds(), authz=AuthzList([allow])
            )
            with server:
                yield server, s_client
        finally:
            s_client.close()


def test_server_against_openssl_s_client(creds: Creds, tmp_path: object) -> None:
    with _s_client_session(creds, tmp_path, "C=UK,CN=qemu*") as (server, s_client):
        server.handshake()
        assert server.peer_dn() == "C=UK,CN=qemu"
        s_client.write_all(b"ping\n")
        assert server.read_all(5) == b"ping\n"
        server.write_all(b"pong\n")
        assert s_client.read_all(5) == b"pong\n"
        server.bye()


def test_server_denies_openssl_s_client_by_acl(creds: Creds, tmp_path: object) -> None:
    with (
        _s_client_session(creds, tmp_path, "C=UK,CN=other") as (server, _s_client),
        pytest.raises(TLSError, match="authz check for C=UK,CN=qemu is denied"),
    ):
        server.handshake()
