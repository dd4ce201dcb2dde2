"""``iochannel console`` under tmux: keys reach the peer, its output shows, the
escape key (and a peer closing, and SIGTERM) end it with the terminal restored."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iochannel.console._client import escape_byte

from .conftest import require_tool


class Tmux:
    def __init__(self, tmp_path: Path) -> None:
        self.tool = require_tool("tmux")
        self.base = [self.tool, "-S", str(tmp_path / "tmux.sock"), "-f", "/dev/null"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm"}
        subprocess.run(
            [*self.base, "new-session", "-d", "-x", "120", "-y", "30", "sh"], env=env, check=True
        )
        self.tty = self.cmd("display-message", "-p", "#{pane_tty}").strip()

    def cmd(self, *args: str) -> str:
        return subprocess.run(
            [*self.base, *args], check=True, capture_output=True, text=True
        ).stdout

    def keys(self, *keys: str) -> None:
        self.cmd("send-keys", "-t", "0", *keys)

    def screen(self) -> str:
        return self.cmd("capture-pane", "-p", "-t", "0")

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in (screen := self.screen()):
            assert time.monotonic() < deadline, f"{text!r} not on the screen:\n{screen}"
            time.sleep(0.05)
        return screen

    def stty(self) -> list[str]:
        return subprocess.run(
            ["stty", "-a", "-F", self.tty], check=True, capture_output=True, text=True
        ).stdout.split()

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


class Peer:
    """A unix socket server: greets, and answers each read with what it got."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen()
        self.received = bytearray()
        self.conn: socket.socket | None = None
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.conn = conn
        conn.sendall(b"WELCOME-FROM-PEER\r\n")
        while data := conn.recv(4096):
            self.received += data
            conn.sendall(b"[peer got " + data.hex().encode() + b"]\r\n")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        t.kill()


def _client(tmux: Tmux, sock: str, *extra: str) -> None:
    tmux.keys(f"{sys.executable} -m iochannel console {' '.join(extra)} {sock}", "Enter")
    tmux.wait_for("Escape character is")
    tmux.wait_for("WELCOME-FROM-PEER")


def _cooked(tmux: Tmux) -> bool:
    flags = tmux.stty()
    return "icanon" in flags and "echo" in flags


def _session(tmp_path: Path, tmux: Tmux, leave: Callable[[Peer], None], reason: str) -> Peer:
    peer = Peer(str(tmp_path / f"{reason}.sock"))
    try:
        assert _cooked(tmux)
        _client(tmux, str(tmp_path / f"{reason}.sock"))
        assert "-icanon" in tmux.stty() and "-echo" in tmux.stty()
        tmux.keys("-l", "hi")
        tmux.wait_for("[peer got 6869]")
        tmux.keys("C-c")  # a raw terminal passes Ctrl-C on
        tmux.wait_for("[peer got 03]")
        leave(peer)
        tmux.wait_for(f"Disconnected ({reason})")
        # The message is printed after the restore, so the mode is already back.
        assert _cooked(tmux), tmux.stty()
    finally:
        peer.close()
    return peer


def test_escape_key_leaves_and_restores_the_terminal(tmp_path: Path, tmux: Tmux) -> None:
    def leave(peer: Peer) -> None:
        tmux.keys("-l", "bye")
        tmux.wait_for("[peer got 627965]")
        tmux.keys("C-]")

    peer = _session(tmp_path, tmux, leave, "escape")
    assert bytes(peer.received) == b"hi\x03bye"  # the escape key itself is not sent


def test_peer_closing_restores_the_terminal(tmp_path: Path, tmux: Tmux) -> None:
    def close(peer: Peer) -> None:
        assert peer.conn is not None
        peer.conn.shutdown(socket.SHUT_RDWR)

    _session(tmp_path, tmux, close, "peer")


def test_sigterm_restores_the_terminal(tmp_path: Path, tmux: Tmux) -> None:
    def term(peer: Peer) -> None:
        pid = tmux.cmd("display-message", "-p", "#{pane_pid}").strip()
        child = subprocess.run(
            ["pgrep", "-P", pid], check=True, capture_output=True, text=True
        ).stdout.split()
        os.kill(int(child[0]), signal.SIGTERM)

    _session(tmp_path, tmux, term, "SIGTERM")


def test_escape_option() -> None:
    assert escape_byte("^]") == 0x1D and escape_byte("^a") == 0x01 and escape_byte("none") is None
    with pytest.raises(ValueError, match="--escape 'x'"):
        escape_byte("x")


def _relay(target: str, shown: bytes, keys: bytes) -> None:
    """Run the client with pipes (no terminal): *shown* must come out, then *keys* and ^] go in."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "iochannel", "console", target],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read(len(shown)) == shown
        proc.stdin.write(keys + b"\x1d")
        proc.stdin.close()
        assert proc.wait(30) == 0
        assert b"Disconnected (escape)" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_telnet_negotiation_is_stripped_and_iac_doubled() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    got = bytearray()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            # WILL ECHO, WILL SGA, a subnegotiation, a data 0xFF, then text.
            conn.sendall(b"\xff\xfb\x01\xff\xfb\x03\xff\xfa\x18\x01\xff\xf0A\xff\xffB\r\n")
            while data := conn.recv(4096):
                got.extend(data)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        port = listener.getsockname()[1]
        _relay(f"telnet://127.0.0.1:{port}", b"A\xffB\r\n", b"x\xffy")
    finally:
        thread.join(10)
        listener.close()
    assert bytes(got) == b"x\xff\xffy"


def test_websocket_target_with_a_real_server() -> None:
    from websockets.sync.server import ServerConnection, serve

    got: list[bytes] = []

    def handler(ws: ServerConnection) -> None:
        ws.send(b"hello from websockets\r\n")
        for message in ws:
            got.append(message if isinstance(message, bytes) else message.encode())

    with serve(handler, "127.0.0.1", 0, subprotocols=["binary"]) as server:  # type: ignore[list-item]
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            port = server.socket.getsockname()[1]
            _relay(f"ws://127.0.0.1:{port}/ws?t=1", b"hello from websockets\r\n", b"typed")
        finally:
            server.shutdown()
            thread.join(10)
    assert b"".join(got) == b"typed"


def test_web_console_page_url_frames_the_keys_as_input_messages() -> None:
    from websockets.sync.server import ServerConnection, serve

    got: list[bytes] = []
    paths: list[str] = []

    def handler(ws: ServerConnection) -> None:
        paths.append(ws.request.path if ws.request is not None else "")
        ws.send(b"web console\r\n")
        for message in ws:
            got.append(message if isinstance(message, bytes) else message.encode())

    with serve(handler, "127.0.0.1", 0, subprotocols=["binary"]) as server:  # type: ignore[list-item]
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            port = server.socket.getsockname()[1]
            _relay(f"http://127.0.0.1:{port}/?token=T0K", b"web console\r\n", b"typed")
        finally:
            server.shutdown()
            thread.join(10)
    # The page's WebSocket, and each key batch as an input message (type 0, u16 length).
    assert paths == ["/ws?token=T0K"]
    assert b"".join(got) == b"\x00\x00\x05typed"
