"""The web console refuses WebSockets opened by other sites' pages, and cannot be framed.

A page on another site can open a WebSocket to the console (browsers let it,
and send its ``Origin``): with a token leaked or guessed, it would drive the
console.  The console lets through its own origin, the ones configured, and
clients that send no ``Origin`` (not browsers), and refuses the rest before
the upgrade.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from .conftest import Daemon, free_port

TOKEN = "rw-secret-token"
OTHER = "http://console.example:8000"


def web_daemon(hostile_daemon: Callable[..., Daemon]) -> tuple[Daemon, int]:
    port = free_port()
    d = hostile_daemon(
        *("-chardev", "ringbuf,id=r"),
        *("-chardev", "hub,id=h,chardevs.0=r"),
        *("--web", f"127.0.0.1:{port},rw-token={TOKEN},allowed-origins={OTHER}"),
    )
    return d, port


def open_ws(port: int, origin: str | None) -> None:
    url = f"ws://127.0.0.1:{port}/ws?token={TOKEN}"
    with ws_connect(url, origin=origin, subprotocols=["binary"], open_timeout=5) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "binary"


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "http://127.0.0.1",  # the right host on another port
        "https://127.0.0.1:{port}",  # the right host and port, another scheme
        "null",  # a sandboxed frame or a file: page
    ],
)
def test_a_foreign_origin_gets_403_before_the_upgrade(
    hostile_daemon: Callable[..., Daemon], origin: str
) -> None:
    d, port = web_daemon(hostile_daemon)
    with pytest.raises(InvalidStatus) as refused:
        open_ws(port, origin.format(port=port))
    assert refused.value.response.status_code == 403
    assert b"is not allowed" in refused.value.response.body
    d.assert_intact()


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1:{port}", OTHER, OTHER.upper()])
def test_own_configured_and_absent_origins_are_let_in(
    hostile_daemon: Callable[..., Daemon], origin: str | None
) -> None:
    d, port = web_daemon(hostile_daemon)
    open_ws(port, origin and origin.format(port=port))
    d.assert_intact()


def head_of(port: int, path: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[0].decode() + "\r\n"


@pytest.mark.parametrize("path", [f"/?token={TOKEN}", "/static/console.js", "/nowhere"])
def test_answers_forbid_framing_sniffing_and_foreign_content(
    hostile_daemon: Callable[..., Daemon], path: str
) -> None:
    _, port = web_daemon(hostile_daemon)
    head = head_of(port, path)
    assert "\r\nX-Frame-Options: DENY\r\n" in head
    assert "\r\nX-Content-Type-Options: nosniff\r\n" in head
    csp = next(line for line in head.split("\r\n") if line.startswith("Content-Security-Policy:"))
    for directive in ("default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"):
        assert directive in csp
