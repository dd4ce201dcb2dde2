"""A socket chardev with no frontend still does its connection's duties.

Nothing reads the chardev, yet each session reads its connection: WebSocket
pings get their pong, an unmasked frame gets close 1002 (as the ``websockets``
server and qemu-storage-daemon answer), and a client that leaves is noticed,
so its fd and its slot are released.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from websockets.frames import CloseCode
from websockets.sync.client import connect as ws_connect

from .conftest import Daemon, free_port, wait_for


def ws_daemon(hostile_daemon: Callable[..., Daemon]) -> tuple[Daemon, int]:
    port = free_port()
    d: Daemon = hostile_daemon(
        "-chardev", f"socket,id=w,host=127.0.0.1,port={port},server=on,wait=off,websocket=on"
    )
    return d, port


def test_ping_is_answered_and_a_closed_client_frees_the_only_slot(
    hostile_daemon: Callable[..., Daemon],
) -> None:
    d, port = ws_daemon(hostile_daemon)
    for _ in range(3):  # each client gets the one slot after the last one left
        with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=5) as ws:
            ws.send(b"nobody reads this")
            assert ws.ping(b"are you there").wait(5)
            wait_for(lambda: d.fd_count() > d.fds_at_start, "the session")
        # The closing handshake was answered: a clean 1000, not a timeout.
        assert ws.close_code == CloseCode.NORMAL_CLOSURE
        d.assert_intact()


def test_an_unmasked_frame_is_refused_with_1002(hostile_daemon: Callable[..., Daemon]) -> None:
    d, port = ws_daemon(hostile_daemon)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 101")
        s.sendall(b"\x82\x05hello")  # a client's binary frame without a mask
        reply = b""
        while chunk := s.recv(100):
            reply += chunk
        assert reply[0] == 0x88  # a close frame …
        assert struct.unpack("!H", reply[2:4])[0] == CloseCode.PROTOCOL_ERROR  # … with 1002
    d.assert_intact()


def test_clients_that_come_and_go_are_released_without_a_frontend(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    path = tmp_path / "s.sock"
    d: Daemon = hostile_daemon(
        "-chardev", f"socket,id=s,path={path},server=on,wait=off,connections=4"
    )
    for round in range(5):
        clients = []
        for _ in range(4):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(str(path))
            clients.append(c)
        wait_for(lambda: d.fd_count() >= d.fds_at_start + 4, "four sessions")
        # Half of them say something nobody reads before they leave.
        for i, c in enumerate(clients):
            if i % 2:
                c.sendall(b"unread %d\n" % round)
            c.close()
        d.assert_intact()
