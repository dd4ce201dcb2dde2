"""Handshakes have a deadline: a peer that stalls one cannot keep others out.

``handshake-timeout-ms`` bounds TLS, WebSocket and telnet negotiation
together; a connection that has not finished by then is closed, its slot is
freed and one line is logged.  Real clients (``openssl s_client``, the
``websockets`` client) then get in.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import trustme
from websockets.sync.client import connect as ws_connect

from ..conftest import require_tool
from .conftest import Daemon, free_port, wait_for

DEADLINE_MS = 1000


def idle_until_cut(port: int, started: float, timeout: float = 10.0) -> float:
    """Connect and send nothing; seconds until the daemon closed the connection."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(timeout)
        assert s.recv(100) == b""
        return time.monotonic() - started


def test_an_idle_connection_does_not_keep_a_tls_client_out(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    openssl = require_tool("openssl")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    (tmp_path / "ca-cert.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "server-cert.pem").write_bytes(cert.cert_chain_pems[0].bytes())
    (tmp_path / "server-key.pem").write_bytes(cert.private_key_pem.bytes())
    ca_file = str(tmp_path / "ca-cert.pem")
    port = free_port()
    d: Daemon = hostile_daemon(
        *("--object", f"tls-creds-x509,id=tls0,dir={tmp_path},endpoint=server,verify-peer=off"),
        "-chardev",
        f"socket,id=t,host=127.0.0.1,port={port},server=on,wait=off,tls-creds=tls0,"
        f"handshake-timeout-ms={DEADLINE_MS}",
    )
    with socket.create_connection(("127.0.0.1", port)) as idle:
        started = time.monotonic()
        # The real client waits in the backlog until the idle one is cut.
        client = subprocess.run(
            [openssl, "s_client", "-brief", "-connect", f"127.0.0.1:{port}", "-CAfile", ca_file],
            input=b"",
            capture_output=True,
            timeout=15,
        )
        waited = time.monotonic() - started
        assert client.returncode == 0, client.stderr.decode()
        assert b"CONNECTION ESTABLISHED" in client.stderr
        assert 0.5 < waited < 8
        idle.settimeout(5)
        assert idle.recv(100) == b""
    d.wait_log("handshake not finished within 1 s")
    assert d.log().count("handshake not finished") == 1

    # The deadline is for the handshake only: an established session may idle.
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    raw = socket.create_connection(("127.0.0.1", port))
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        time.sleep(DEADLINE_MS / 1000 * 1.5)
        tls.settimeout(0.2)
        try:
            assert tls.recv(100) != b"", "an established session was cut"
        except TimeoutError:
            pass
    d.assert_alive()


def test_slow_websocket_handshakes_are_cut(hostile_daemon: Callable[..., Daemon]) -> None:
    port = free_port()
    d: Daemon = hostile_daemon(
        "-chardev",
        f"socket,id=w,host=127.0.0.1,port={port},server=on,wait=off,websocket=on,"
        f"connections=4,handshake-timeout-ms={DEADLINE_MS}",
    )
    stop = threading.Event()
    cut: list[float] = []
    started = time.monotonic()

    def slow_loris() -> None:
        request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n" * 100
        with socket.create_connection(("127.0.0.1", port)) as s:
            try:
                for byte in request:  # one byte at a time, never finishing
                    if stop.wait(0.05):
                        return
                    s.sendall(bytes([byte]))
            except OSError:
                cut.append(time.monotonic() - started)

    lorises = [threading.Thread(target=slow_loris) for _ in range(4)]
    for t in lorises:
        t.start()
    try:
        time.sleep(0.3)  # all four hold a slot
        with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=10) as ws:
            ws.send(b"in at last")
        assert time.monotonic() - started > 0.5
        wait_for(lambda: len(cut) == 4, "the slow handshakes to be cut")
        assert all(0.5 < t < 8 for t in cut), cut
    finally:
        stop.set()
        for t in lorises:
            t.join()
    d.wait_log("handshake not finished within 1 s")
    assert 1 <= d.log().count("handshake not finished") <= 4  # one line per peer at most


def test_telnet_negotiation_does_not_wait_for_the_client(
    hostile_daemon: Callable[..., Daemon],
) -> None:
    # As in QEMU, the server states its options and goes on: a client that
    # never answers has a session at once, which the deadline leaves alone.
    port = free_port()
    d: Daemon = hostile_daemon(
        "-chardev",
        f"socket,id=tn,host=127.0.0.1,port={port},server=on,wait=off,telnet=on,"
        f"handshake-timeout-ms={DEADLINE_MS}",
    )
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(5)
        greeting = b""
        while len(greeting) < 12:
            greeting += s.recv(12 - len(greeting))
        assert greeting == bytes.fromhex("fffb01 fffb03 fffb00 fffd00".replace(" ", ""))
        time.sleep(DEADLINE_MS / 1000 * 1.5)
        s.settimeout(0.2)
        try:
            assert s.recv(100) != b"", "the telnet session was cut"
        except TimeoutError:
            pass
    assert "handshake not finished" not in d.log()
