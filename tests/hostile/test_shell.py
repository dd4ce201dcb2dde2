"""The default console's shared shell, ended by one viewer.

Any viewer can end the shell (``exit``, Ctrl-D).  The others must be told, a
new shell must come, and every view of the device (socket viewers, the web
console's WebSocket, QMP) must show it gone while it is gone.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from iochannel.daemon.cli import program
from iochannel.daemon.default import default_config

from .conftest import Daemon, Qmp

CLOSED = b"[iochannel: shell closed]"
OPENED = b"[iochannel: shell open]"
GONE = b"\x1b]7761;device=gone\x07"
BACK = b"\x1b]7761;device=open\x07"


class Viewer:
    """A unix-socket viewer: bytes received so far, read as needed."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.got = b""

    def expect(self, text: bytes) -> None:
        while text not in self.got:
            chunk = self.sock.recv(65536)
            assert chunk, f"the connection ended after {self.got[-300:]!r}"
            self.got += chunk


def web_expect(ws: ClientConnection, got: bytearray, text: bytes, start: int = 0) -> None:
    """Receive until *text* is in what the page got, from *start* on."""
    while text not in got[start:]:
        message = ws.recv(timeout=10)
        assert isinstance(message, bytes)
        got += message


@pytest.mark.parametrize("ending", [b"exit\n", b"\x04"], ids=["exit", "ctrl-d"])
def test_a_viewer_ends_the_shell_everyone_is_told_and_a_new_one_comes(
    hostile_daemon: Callable[..., Daemon],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ending: bytes,
) -> None:
    monkeypatch.setenv("SHELL", "/bin/sh")
    argv, _ = default_config(str(tmp_path))  # what the daemon runs without arguments
    d = hostile_daemon(*argv)
    d.wait_log("web (ro):")
    log = d.log()
    unix = re.search(rf"unix: {re.escape(program())} console (\S+)", log)
    web = re.search(r"web \(rw\): http://(\S+)/\?token=(\S+)", log)
    assert unix and web, log
    qmp = Qmp(Path(unix[1]).with_name("qmp.sock"))
    leaving, staying = Viewer(unix[1]), Viewer(unix[1])
    url = f"ws://{web[1]}/ws?token={web[2]}"
    try:
        with ws_connect(url, subprotocols=["binary"]) as page:  # type: ignore[list-item]
            page_got = bytearray()
            talk_and_end(qmp, leaving, staying, page, page_got, ending)
    finally:
        leaving.sock.close()
        staying.sock.close()
        qmp.close()


def talk_and_end(
    qmp: Qmp,
    leaving: Viewer,
    staying: Viewer,
    page: ClientConnection,
    page_got: bytearray,
    ending: bytes,
) -> None:
    def chardev(label: str) -> dict[str, Any]:
        return next(c for c in qmp.cmd("query-chardev") if c["label"] == label)

    web_expect(page, page_got, BACK)
    assert chardev("shell")["open"] is True
    leaving.sock.sendall(b"echo $((6 * 7))-before\n")
    staying.expect(b"42-before")

    leaving.sock.sendall(ending)
    staying.expect(CLOSED)
    # Gone until the new shell starts, a second later.
    assert chardev("shell")["open"] is False
    assert chardev("viewers")["frontend-open"] is False
    web_expect(page, page_got, GONE)
    web_expect(page, page_got, CLOSED)

    staying.expect(OPENED)
    assert chardev("shell")["open"] is True
    assert chardev("viewers")["frontend-open"] is True
    web_expect(page, page_got, BACK, page_got.index(GONE))
    staying.sock.sendall(b"echo $((6 * 7))-after\n")
    staying.expect(b"42-after")
    leaving.expect(b"42-after")  # the viewer that ended the shell sees the new one too
