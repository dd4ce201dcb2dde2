"""Viewers on one ``connections=N`` socket: a stalled one costs only itself.

The daemon relays what a feeder writes into a hub whose member is a unix
socket with ``connections=8``.  Three viewers connect; one stops reading.  The
two that keep reading must get every line, in order, while the third falls
behind and gets what the hub's policy for that member says: the oldest output
dropped (``drop``) or its connection cut (``disconnect``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import Daemon

LINE = 10  # "%09d\n"
LINES = 300_000  # 3 MB: far beyond the stalled viewer's socket buffers and queue
LIMIT = 256 * 1024
HELLO = b"hello\n"


def start(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path, policy: str
) -> tuple[Daemon, Path, Path]:
    feed, view = tmp_path / "feed.sock", tmp_path / "view.sock"
    d: Daemon = hostile_daemon(
        *("-chardev", f"socket,id=feed,path={feed},server=on,wait=off"),
        *("-chardev", f"socket,id=view,path={view},server=on,wait=off,connections=8"),
        *("-chardev", f"hub,id=viewers,chardevs.0=view,policy.0={policy},limit.0={LIMIT}"),
        *("--relay", "chardev=feed,peer=viewers"),
    )
    return d, feed, view


def connect(path: Path, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(str(path))
    s.settimeout(30)
    return s


def read_until(s: socket.socket, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError(f"EOF before {marker!r}; got {got[-100:]!r}")
        got += chunk
    return got


class Reader(threading.Thread):
    """Reads a viewer's stream of numbered lines after HELLO, checking there is no gap."""

    def __init__(self, s: socket.socket) -> None:
        super().__init__(daemon=True)
        self.s = s
        self.next = 0
        self.error: str | None = None

    def run(self) -> None:
        rest = b""
        try:
            while self.next < LINES:
                chunk = self.s.recv(65536)
                if not chunk:
                    self.error = f"EOF at line {self.next}"
                    return
                data = rest + chunk
                whole = len(data) - len(data) % LINE
                for i in range(0, whole, LINE):
                    n = int(data[i : i + LINE])
                    if n != self.next:
                        self.error = f"line {n} came where {self.next} was due"
                        return
                    self.next += 1
                rest = data[whole:]
        except OSError as exc:
            self.error = f"{exc} at line {self.next}"


def feed_lines(feeder: socket.socket) -> None:
    """All lines, paced a little so that a reader that keeps up is never behind."""
    batch = 2000
    for start in range(0, LINES, batch):
        feeder.sendall(b"".join(b"%09d\n" % n for n in range(start, start + batch)))
        time.sleep(0.005)


def run_stream(d: Daemon, feed: Path, view: Path) -> tuple[socket.socket, list[Reader]]:
    """Three viewers see HELLO; the third then stops reading while the lines flow."""
    viewers = [connect(view), connect(view), connect(view, rcvbuf=4096)]
    feeder = connect(feed)
    try:
        # Every viewer has joined once it saw HELLO (resent until the last one is in).
        for v in viewers:
            deadline = time.monotonic() + 10
            v.settimeout(0.2)
            got = b""
            while HELLO not in got:
                assert time.monotonic() < deadline, "a viewer never joined"
                feeder.sendall(HELLO)
                try:
                    got += v.recv(4096)
                except TimeoutError:
                    pass
        feeder.sendall(b"-" * (LINE - 1) + b"\n")  # the stream starts after this line
        for v in viewers:
            v.settimeout(30)
            read_until(v, b"-\n")
        readers = [Reader(v) for v in viewers[:2]]
        for r in readers:
            r.start()
        feed_lines(feeder)
        for r in readers:
            r.join(60)
        d.assert_alive()
        return viewers[2], readers
    finally:
        feeder.close()
        for v in viewers[:2]:
            v.close()


def assert_complete(readers: list[Reader]) -> None:
    for r in readers:
        assert not r.is_alive(), f"a reader is stuck at line {r.next}"
        assert r.error is None, r.error
        assert r.next == LINES


def test_a_stalled_viewer_loses_its_oldest_output_alone(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d, feed, view = start(hostile_daemon, tmp_path, "drop")
    stalled, readers = run_stream(d, feed, view)
    with stalled:
        assert_complete(readers)
        # The stalled viewer gets the start, a gap, then at most its queue's worth.
        stalled.settimeout(2)
        data = b""
        try:
            while chunk := stalled.recv(65536):
                data += chunk
        except TimeoutError:
            pass
        assert LIMIT // 2 < len(data) < LINES * LINE // 2
        assert data[:LINE] == b"%09d\n" % 0


def test_disconnect_policy_cuts_only_the_stalled_viewer(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d, feed, view = start(hostile_daemon, tmp_path, "disconnect")
    stalled, readers = run_stream(d, feed, view)
    with stalled:
        assert_complete(readers)
        d.wait_log("fell 262144 bytes behind: disconnecting it")
        assert d.log().count("disconnecting it") == 1
        stalled.settimeout(10)
        while stalled.recv(65536):  # what was sent before the cut, then EOF
            pass
