"""Hostile NBD clients against the real daemon: each costs only its own connection.

Clients send truncated, oversized and out-of-order options and requests,
pipeline requests without reading a reply, or vanish mid-request.  After each,
the daemon is alive, serves a well-behaved client, and (checked by the fixture)
gives back its fds and memory.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from iochannel.crypto.certs import make_credentials_dir
from iochannel.nbd.protocol import (
    EINVAL,
    IHAVEOPT,
    NBDMAGIC,
    REQUEST_MAGIC,
    ClientConnection,
    Command,
    ExportReady,
    Option,
    OptionReply,
)

from .conftest import Daemon, QmpConnection

SIZE = 4 << 20
SIMPLE = struct.Struct(">IIQ")


def start(hostile_daemon: object, tmp_path: Path, *extra: str, server: str = "") -> Daemon:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(range(256)) * (SIZE // 256))
    d: Daemon = hostile_daemon(  # type: ignore[operator]
        *extra,
        *("--blockdev", f"driver=file,node-name=f0,filename={image}"),
        *("--nbd-server", f"addr.type=unix,addr.path={tmp_path / 'nbd.sock'}{server}"),
        *("--export", "type=nbd,id=e0,node-name=f0,name=disk,writable=on"),
    )
    return d


def raw(tmp_path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(tmp_path / "nbd.sock"))
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def greeted(tmp_path: Path) -> socket.socket:
    s = raw(tmp_path)
    assert struct.unpack(">QQH", recv_exact(s, 18)) == (NBDMAGIC, IHAVEOPT, 3)
    s.sendall(struct.pack(">I", 1))  # FIXED_NEWSTYLE, zeroes kept
    return s


def option(s: socket.socket, opt: int, data: bytes = b"") -> tuple[int, bytes]:
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)
    magic, got, kind, n = struct.unpack(">QIII", recv_exact(s, 20))
    assert (magic, got) == (0x3E889045565A9, opt)
    return kind, recv_exact(s, n)


def closed_by_server(s: socket.socket) -> bool:
    try:
        while s.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        return False
    return True


def ready(tmp_path: Path) -> tuple[socket.socket, ClientConnection]:
    """A connection in transmission, simple replies (driven by the protocol core)."""
    s = raw(tmp_path)
    core = ClientConnection("disk", structured=False)
    while core.export is None:
        core.receive_data(s.recv(65536))
        for buf in core.data_to_send():
            s.sendall(buf)
    assert any(isinstance(e, ExportReady) for e in core.events_received())
    return s, core


def request(cookie: int, command: int, offset: int, length: int, flags: int = 0) -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, cookie, offset, length)


def well_behaved(tmp_path: Path) -> None:
    """A normal client still reads the image."""
    s, _ = ready(tmp_path)
    with s:
        s.sendall(request(1, Command.READ, 256, 256))
        assert SIMPLE.unpack(recv_exact(s, 16)) == (0x67446698, 0, 1)
        assert recv_exact(s, 256) == bytes(range(256))
        s.sendall(request(2, Command.DISC, 0, 0))


def test_bad_requests_get_einval(hostile_daemon: object, tmp_path: Path) -> None:
    d = start(hostile_daemon, tmp_path)
    s, _ = ready(tmp_path)
    with s:
        bad = [
            request(1, Command.READ, SIZE - 1, 2),  # past the end
            request(2, Command.READ, 0, 0xFFFFFFFF),  # 4 GiB
            request(3, Command.READ, 0, 512, 0x80),  # unknown flag
            request(4, 42, 0, 512),  # unknown command
            request(5, Command.BLOCK_STATUS, 0, 512),  # no meta context negotiated
            request(6, Command.WRITE_ZEROES, 1 << 62, 1 << 30),  # offset + length overflow the size
            request(7, Command.FLUSH, 4096, 0),
        ]
        s.sendall(b"".join(bad))
        answers = sorted(SIMPLE.unpack(recv_exact(s, 16)) for _ in bad)
        assert answers == [(0x67446698, EINVAL, cookie) for cookie in range(1, 8)]
        # A zero-length read is fine and carries no data.
        s.sendall(request(8, Command.READ, 0, 0))
        assert SIMPLE.unpack(recv_exact(s, 16)) == (0x67446698, 0, 8)
        s.sendall(request(9, Command.READ, 0, 16))
        assert SIMPLE.unpack(recv_exact(s, 16)) == (0x67446698, 0, 9)
        assert recv_exact(s, 16) == bytes(range(16))
        # A request with a bad magic is answered, then the connection ends.
        s.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, 0, 10, 0, 16))
        assert SIMPLE.unpack(recv_exact(s, 16)) == (0x67446698, EINVAL, 10)
        assert closed_by_server(s)
    d.wait_log("protocol error")
    well_behaved(tmp_path)


def test_write_over_32mib_is_refused_then_disconnected(
    hostile_daemon: object, tmp_path: Path
) -> None:
    start(hostile_daemon, tmp_path)
    s, _ = ready(tmp_path)
    with s:
        s.sendall(request(1, Command.WRITE, 0, (32 << 20) + 1))
        assert SIMPLE.unpack(recv_exact(s, 16)) == (0x67446698, EINVAL, 1)
        assert closed_by_server(s)
    well_behaved(tmp_path)


def test_handshake_abuse(hostile_daemon: object, tmp_path: Path) -> None:
    d = start(hostile_daemon, tmp_path)
    # Unknown client flags: disconnect.
    s = raw(tmp_path)
    with s:
        recv_exact(s, 18)
        s.sendall(struct.pack(">I", 0x80))
        assert closed_by_server(s)
    # A request before the handshake ended is a bad option magic: disconnect.
    with greeted(tmp_path) as s:
        s.sendall(request(1, Command.READ, 0, 512))
        assert closed_by_server(s)
    with greeted(tmp_path) as s:
        # An unknown option with a large payload is skipped unread.
        assert option(s, 99, bytes(1 << 20))[0] == OptionReply.ERR_UNSUP
        # Names over 4 KiB are refused, the session goes on.
        long = b"n" * 5000
        kind, _ = option(s, Option.GO, struct.pack(">I", len(long)) + long + b"\0\0")
        assert kind == OptionReply.ERR_INVALID
        # A GO whose name length runs past the payload.
        kind, _ = option(s, Option.GO, struct.pack(">I", 100) + b"disk\0\0")
        assert kind == OptionReply.ERR_INVALID
        # Meta contexts before structured replies, LIST with a payload.
        assert option(s, Option.SET_META_CONTEXT, bytes(8))[0] == OptionReply.ERR_INVALID
        assert option(s, Option.LIST, b"x")[0] == OptionReply.ERR_INVALID
        assert option(s, Option.STARTTLS)[0] == OptionReply.ERR_POLICY
        # An option payload larger than any option needs.
        assert option(s, Option.INFO, bytes(100_000))[0] == OptionReply.ERR_TOO_BIG
        # EXPORT_NAME of an unknown export can only be refused by disconnecting.
        s.sendall(struct.pack(">QII", IHAVEOPT, Option.EXPORT_NAME, 4) + b"nope")
        assert closed_by_server(s)
    # A truncated option, then the client goes away.
    with greeted(tmp_path) as s:
        s.sendall(struct.pack(">QII", IHAVEOPT, Option.GO, 1000) + b"abc")
    d.wait_log("end of stream inside a message")
    well_behaved(tmp_path)


def test_starttls_required_and_not_twice(hostile_daemon: object, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    make_credentials_dir(pki, hostnames=["localhost"])
    start(
        hostile_daemon,
        tmp_path,
        *("--object", f"tls-creds-x509,id=tls0,endpoint=server,dir={pki}"),
        server=",tls-creds=tls0",
    )
    with greeted(tmp_path) as s:
        assert option(s, Option.LIST)[0] == OptionReply.ERR_TLS_REQD
        assert option(s, Option.STRUCTURED_REPLY)[0] == OptionReply.ERR_TLS_REQD
        assert option(s, Option.STARTTLS) == (OptionReply.ACK, b"")
        context = ssl.create_default_context(cafile=str(pki / "ca-cert.pem"))
        context.load_cert_chain(str(pki / "client-cert.pem"), str(pki / "client-key.pem"))
        with context.wrap_socket(s, server_hostname="localhost") as t:
            assert option(t, Option.STARTTLS)[0] == OptionReply.ERR_INVALID  # type: ignore[arg-type]
            kind, data = option(t, Option.LIST)  # type: ignore[arg-type]
            assert kind == OptionReply.SERVER and data == b"\0\0\0\x04disk"
    # EXPORT_NAME before TLS: disconnect.
    with greeted(tmp_path) as s:
        s.sendall(struct.pack(">QII", IHAVEOPT, Option.EXPORT_NAME, 4) + b"disk")
        assert closed_by_server(s)


def test_client_that_never_reads_replies(hostile_daemon: object, tmp_path: Path) -> None:
    """Pipelined reads with no reply read: the daemon stops reading, others are served."""
    d = start(hostile_daemon, tmp_path)
    s, _ = ready(tmp_path)
    with s:
        s.setblocking(False)
        sent = 0
        batch = b"".join(request(i, Command.READ, 0, 1 << 20) for i in range(64))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                sent += s.send(batch)
            except BlockingIOError:
                time.sleep(0.05)
        # The daemon stopped taking requests long before 5 s of sending.
        assert sent < 1 << 20
        well_behaved(tmp_path)
        d.assert_alive()
        assert (d.rss_kib() - d.rss_at_start) < 64 << 10
    well_behaved(tmp_path)


@pytest.mark.parametrize("cut", [10, 28 + 1000])
def test_client_vanishes_mid_request(hostile_daemon: object, tmp_path: Path, cut: int) -> None:
    start(hostile_daemon, tmp_path)
    s, _ = ready(tmp_path)
    with s:
        s.sendall((request(1, Command.WRITE, 0, 1 << 20) + bytes(1 << 20))[:cut])
    well_behaved(tmp_path)


def qmp(conn: QmpConnection, name: str, **args: Any) -> Any:
    conn.sock.sendall(json.dumps({"execute": name, "arguments": args}).encode())
    while True:
        reply = conn.reply()
        if "event" not in reply:
            return reply


def test_export_del_with_a_client(hostile_daemon: object, tmp_path: Path) -> None:
    """A safe delete is refused while a client is connected; a hard one drops the client."""
    start(
        hostile_daemon,
        tmp_path,
        *("-chardev", f"socket,id=m,path={tmp_path / 'qmp.sock'},server=on,wait=off"),
        *("--monitor", "chardev=m"),
    )
    conn = QmpConnection(tmp_path / "qmp.sock")
    try:
        assert qmp(conn, "qmp_capabilities") == {"return": {}}
        s, _ = ready(tmp_path)
        with s:
            reply = qmp(conn, "block-export-del", id="e0")
            assert reply["error"]["desc"] == "export 'e0' still in use"
            assert qmp(conn, "block-export-del", id="e0", mode="hard") == {"return": {}}
            assert closed_by_server(s)
        assert qmp(conn, "query-block-exports") == {"return": []}
    finally:
        conn.close()
