"""TLSChannel: QEMU's test-io-channel-tls, the conformance suite, handshake drivers, EOF rules."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from iochannel import (
    Channel,
    ChannelClosedError,
    CommandChannel,
    Condition,
    Feature,
    FileChannel,
    ReadFlag,
    Shutdown,
    SocketChannel,
    Task,
    TLSChannel,
    TLSError,
    UnixAddress,
    memory_pair,
    pipe_pair,
)
from iochannel.crypto import AuthzList, CredentialsError, X509Credentials
from iochannel.crypto.certs import CertificateAuthority, pem
from iochannel.testing import check_half_closeable_channel, check_two_way_channel

from .conftest import require_tool

# ---- credentials and pairs (the other TLS test modules use these too) -------


@dataclass
class Creds:
    """A server and a client credentials directory."""

    server: str
    client: str

    def server_creds(self) -> X509Credentials:
        return X509Credentials(self.server, "server")

    def client_creds(self) -> X509Credentials:
        return X509Credentials(self.client, "client")


def write_dir(path: str, ca_pem: bytes, role: str, cert_pem: bytes, key_pem: bytes) -> str:
    os.makedirs(path, exist_ok=True)
    for name, data in (
        ("ca-cert.pem", ca_pem),
        (f"{role}-cert.pem", cert_pem),
        (f"{role}-key.pem", key_pem),
    ):
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    return path


def make_creds(
    base: str,
    *,
    server_names: Sequence[str] = ("qemu.org",),
    server_dn: str = "C=UK,CN=qemu.org",
    client_dn: str = "C=UK,CN=qemu",
    ca: CertificateAuthority | None = None,
) -> Creds:
    """QEMU's test setup: one CA, a server cert for qemu.org, a client cert CN=qemu."""
    ca = ca or CertificateAuthority.create("C=UK,CN=qemu CA")
    server = ca.issue(server_dn, server=True, names=server_names)
    client = ca.issue(client_dn, client=True)
    ca_pem = pem(ca.cert)
    return Creds(
        write_dir(os.path.join(base, "server"), ca_pem, "server", pem(server[0]), pem(server[1])),
        write_dir(os.path.join(base, "client"), ca_pem, "client", pem(client[0]), pem(client[1])),
    )


@pytest.fixture(scope="session")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Creds:
    return make_creds(str(tmp_path_factory.mktemp("tls")))


def tls_pair(
    creds: Creds,
    masters: tuple[Channel, Channel] | None = None,
    *,
    hostname: str = "qemu.org",
    authz: AuthzList | None = None,
) -> tuple[TLSChannel, TLSChannel]:
    """(client, server) TLS channels over *masters* (default a socketpair), not shaken."""
    a, b = masters or SocketChannel.pair()
    client = TLSChannel.client(a, creds.client_creds(), hostname)
    server = TLSChannel.server(b, creds.server_creds(), authz=authz)
    return client, server


def run_handshakes(
    client: TLSChannel, server: TLSChannel
) -> tuple[BaseException | None, BaseException | None]:
    """Blocking handshakes in two threads: (client error, server error).

    A side that fails closes its channel, so the other one is never left waiting.
    """
    errors: dict[str, BaseException] = {}

    def run(ch: TLSChannel, key: str) -> None:
        try:
            ch.handshake()
        except Exception as exc:
            errors[key] = exc
            ch.close()

    t = threading.Thread(target=run, args=(server, "server"))
    t.start()
    run(client, "client")
    t.join()
    return errors.get("client"), errors.get("server")


def send_across(src: Channel, dst: Channel, data: bytes) -> None:
    """Write *data* to *src* from a thread while *dst* reads it; check it arrives whole."""
    writer = threading.Thread(target=src.write_all, args=(data,))
    writer.start()
    assert dst.read_all(len(data)) == data
    writer.join()


def shaken_pair(
    creds: Creds, masters: tuple[Channel, Channel] | None = None
) -> tuple[Channel, Channel]:
    client, server = tls_pair(creds, masters)
    errors = run_handshakes(client, server)
    assert errors == (None, None)
    return client, server


# ---- QEMU's test-io-channel-tls ----------------------------------------------


def test_basic_with_acl_nonblocking_and_blocking_transfer(creds: Creds) -> None:
    # /qio/channel/tls/basic: handshakes driven by a loop, then 1 MB both ways of blocking.
    acl = AuthzList(["C=UK,CN=qemu*"], name="channeltlsacl")
    client, server = tls_pair(creds, authz=acl)

    async def shake() -> None:
        await asyncio.gather(client.handshake_task(), server.handshake_task())

    try:
        asyncio.run(shake())
        assert client.handshake_done and server.handshake_done
        assert server.peer_dn() == "C=UK,CN=qemu"
        assert client.peer_dn() == "C=UK,CN=qemu.org"
        data = os.urandom(1 << 20)
        for blocking in (False, True):
            client.set_blocking(blocking)
            server.set_blocking(blocking)
            send_across(client, server, data)
    finally:
        client.close()
        server.close()


def test_features_copy_shutdown_never_fd_pass(creds: Creds) -> None:
    client, server = tls_pair(creds)
    try:
        assert client.has_feature(Feature.SHUTDOWN)
        assert not client.has_feature(Feature.FD_PASS)
        assert client.master.has_feature(Feature.FD_PASS)
    finally:
        client.close()
        server.close()
    m1, m2 = memory_pair()
    client, server = tls_pair(creds, (m1, m2))
    try:
        assert client.features & Feature.SHUTDOWN == m1.features & Feature.SHUTDOWN
    finally:
        client.close()
        server.close()


# ---- the conformance suite -------------------------------------------------------


def test_conformance_over_socketpair(creds: Creds) -> None:
    check_two_way_channel(lambda: shaken_pair(creds))


def test_conformance_half_close(creds: Creds) -> None:
    # shutdown(WRITE) sends close_notify, so the peer reads a clean EOF.
    check_half_closeable_channel(lambda: shaken_pair(creds))


def test_reads_and_writes_drive_the_handshake(creds: Creds) -> None:
    client, server = tls_pair(creds)

    async def run() -> None:
        await asyncio.gather(client.awrite_all(b"implicit"), server.aread_all(8))
        assert client.handshake_done and server.handshake_done

    try:
        asyncio.run(run())
    finally:
        client.close()
        server.close()


def test_conformance_over_memory_pair(creds: Creds) -> None:
    check_two_way_channel(lambda: shaken_pair(creds, memory_pair()))


def test_conformance_over_pipe_pair(creds: Creds) -> None:
    check_two_way_channel(lambda: shaken_pair(creds, pipe_pair()))


def test_tls_over_command_channel(creds: Creds, tmp_path: object) -> None:
    # The client's master is `socat` relaying stdio to the server's unix socket.
    socat = require_tool("socat")
    path = os.path.join(str(tmp_path), "tls.sock")
    with SocketChannel.listen(UnixAddress(path)) as listener:
        cmd = CommandChannel.spawn([socat, "-", f"UNIX-CONNECT:{path}"])
        listener.wait(Condition.IN)
        accepted = listener.accept()
        assert accepted is not None
    client, server = tls_pair(creds, (cmd, accepted))
    try:
        assert run_handshakes(client, server) == (None, None)
        data = os.urandom(300_000)
        send_across(client, server, data)
        server.write_all(b"pong")
        assert client.read_all(4) == b"pong"
        client.bye()
        assert server.read(10) == b""
    finally:
        server.close()
        client.close()


# ---- handshake drivers and the CVE-2023-3354 class -------------------------------


def test_ahandshake(creds: Creds) -> None:
    client, server = tls_pair(creds)

    async def run() -> None:
        await asyncio.gather(client.ahandshake(), server.ahandshake())
        await client.awrite_all(b"async")
        assert await server.aread_all(5) == b"async"

    try:
        asyncio.run(run())
    finally:
        client.close()
        server.close()


def test_handshake_task_callback_runs_once_on_the_loop(creds: Creds) -> None:
    client, server = tls_pair(creds)
    calls: list[tuple[object, BaseException | None, threading.Thread]] = []

    async def run() -> None:
        done = asyncio.Event()

        def callback(task: Task[Any]) -> None:
            calls.append((task, task.error, threading.current_thread()))
            done.set()

        ctask = client.handshake_task(callback)
        stask = server.handshake_task()
        await done.wait()
        assert await stask is server
        assert await ctask is client

    try:
        asyncio.run(run())
    finally:
        client.close()
        server.close()
    assert len(calls) == 1
    assert calls[0][1] is None
    assert calls[0][2] is threading.main_thread()


def test_close_during_pending_handshake_never_calls_back(creds: Creds) -> None:
    # CVE-2023-3354: the peer stays silent, the channel is closed mid-handshake.
    a, b = SocketChannel.pair()
    server = TLSChannel.server(a, creds.server_creds())
    calls: list[object] = []

    async def run() -> None:
        task = server.handshake_task(calls.append)
        await asyncio.sleep(0.05)
        assert not task.done
        server.close()
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
    finally:
        server.close()
        b.close()
    assert calls == []


def test_handshake_error_is_sticky(creds: Creds) -> None:
    a, b = SocketChannel.pair()
    server = TLSChannel.server(a, creds.server_creds())
    try:
        b.write_all(b"\x00" * 64)
        b.close()
        with pytest.raises(TLSError) as first:
            server.handshake()
        with pytest.raises(TLSError) as again:
            server.read(1)
        assert again.value is first.value
    finally:
        server.close()


# ---- end of stream ----------------------------------------------------------------


@pytest.fixture
def pair(creds: Creds) -> Iterator[tuple[TLSChannel, TLSChannel]]:
    client, server = tls_pair(creds)
    assert run_handshakes(client, server) == (None, None)
    yield client, server
    client.close()
    server.close()


def test_bye_sends_close_notify(pair: tuple[TLSChannel, TLSChannel]) -> None:
    client, server = pair
    client.write_all(b"last words")
    client.bye()
    assert server.read_all(10) == b"last words"
    assert server.read(10) == b""
    # The other direction still works after a TLS 1.3 close_notify.
    server.write_all(b"reply")
    assert client.read_all(5) == b"reply"


def test_bye_keeps_data_already_in_flight(pair: tuple[TLSChannel, TLSChannel]) -> None:
    """Half-close: what the peer sent before our close_notify is still read in full."""
    client, server = pair
    server.write_all(b"sent before the bye")
    client.bye()
    assert client.read_all(19) == b"sent before the bye"
    assert server.read(10) == b""
    server.write_all(b"and after")
    assert client.read_all(9) == b"and after"


async def _abye(client: TLSChannel, server: TLSChannel) -> None:
    await client.abye()
    assert await server.aread(10) == b""


def test_abye(pair: tuple[TLSChannel, TLSChannel]) -> None:
    asyncio.run(_abye(*pair))


def test_eof_without_close_notify_is_an_error(pair: tuple[TLSChannel, TLSChannel]) -> None:
    client, server = pair
    client.write_all(b"data")
    client.master.close()  # a TCP close, no close_notify
    assert server.read_all(4) == b"data"
    with pytest.raises(TLSError, match="without a TLS close_notify"):
        server.read(10)


def test_eof_without_close_notify_relaxed(pair: tuple[TLSChannel, TLSChannel]) -> None:
    client, server = pair
    client.master.close()
    assert server.readv([bytearray(10)], flags=ReadFlag.RELAXED_EOF) == 0


def test_eof_without_close_notify_after_shutdown_read(pair: tuple[TLSChannel, TLSChannel]) -> None:
    client, server = pair
    server.shutdown(Shutdown.READ)
    client.master.close()
    assert server.read(10) == b""


def test_close_sends_close_notify(pair: tuple[TLSChannel, TLSChannel]) -> None:
    client, server = pair
    client.close()
    assert server.read(10) == b""


# ---- readiness reflects the layer --------------------------------------------------


def test_decrypted_data_makes_the_channel_readable(pair: tuple[TLSChannel, TLSChannel]) -> None:
    client, server = pair
    client.write_all(b"0123456789")
    server.set_blocking(False)
    assert server.wait(Condition.IN, timeout=30) & Condition.IN
    assert server.read(3) == b"012"
    # The rest sits decrypted inside the TLS object; the socket is empty.
    assert server.master.wait(Condition.IN, timeout=0) == Condition.NONE
    assert server.wait(Condition.IN, timeout=0) == Condition.IN

    async def watch() -> Condition:
        fired: asyncio.Future[Condition] = asyncio.get_running_loop().create_future()

        def on_ready(_ch: Channel, cond: Condition) -> bool:
            fired.set_result(cond)
            return False

        server.add_watch(Condition.IN, on_ready)
        return await asyncio.wait_for(fired, 30)

    assert asyncio.run(watch()) == Condition.IN
    assert server.read(100) == b"3456789"
    assert server.read(100) is None


def test_writes_are_bounded_when_the_peer_never_reads(
    pair: tuple[TLSChannel, TLSChannel],
) -> None:
    client, _server = pair
    client.set_blocking(False)
    chunk = bytes(65536)
    written = 0
    while (n := client.write(chunk)) is not None:
        written += n
        assert written < 64 << 20, "writes never blocked"
    assert client.write(chunk) is None
    assert client.wait(Condition.OUT, timeout=0) == Condition.NONE


# ---- construction errors --------------------------------------------------------------


def test_endpoint_mismatch(creds: Creds) -> None:
    a, b = SocketChannel.pair()
    try:
        with pytest.raises(CredentialsError, match="endpoint doesn't match"):
            TLSChannel.server(a, creds.client_creds())
        with pytest.raises(CredentialsError, match="no hostname"):
            TLSChannel.client(b, creds.client_creds())
    finally:
        a.close()
        b.close()


def test_closed_master_is_refused(creds: Creds) -> None:
    a, b = SocketChannel.pair()
    a.close()
    b.close()
    with pytest.raises(ChannelClosedError):
        TLSChannel.server(a, creds.server_creds())


def test_tls_over_tcp_with_ip_hostname(tmp_path_factory: pytest.TempPathFactory) -> None:
    creds = make_creds(str(tmp_path_factory.mktemp("ip")), server_names=["127.0.0.1"])
    listener_sock = socket.create_server(("127.0.0.1", 0))
    port = listener_sock.getsockname()[1]
    conn = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener_sock.accept()
    listener_sock.close()
    client, server = tls_pair(
        creds, (SocketChannel(conn), SocketChannel(accepted)), hostname="127.0.0.1"
    )
    try:
        assert run_handshakes(client, server) == (None, None)
    finally:
        client.close()
        server.close()


def test_tls_over_a_pty(creds: Creds) -> None:
    # The pty is raw, so it carries TLS records unchanged both ways.
    master, path = FileChannel.open_pty(raw=True)
    slave = FileChannel.open(path, "r+")
    client, server = tls_pair(creds, (master, slave))
    try:
        assert run_handshakes(client, server) == (None, None)
        data = os.urandom(100_000)
        send_across(client, server, data)
        server.write_all(b"over a tty")
        assert client.read_all(10) == b"over a tty"
    finally:
        client.close()
        server.close()
