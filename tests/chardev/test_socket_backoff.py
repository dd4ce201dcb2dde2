"""Reconnecting socket clients: the backoff schedule (sans-I/O) and the chardev that follows it."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iochannel import UnixAddress
from iochannel.chardev import ChardevError, ChardevEvent, ChardevRegistry, Frontend
from iochannel.chardev.backoff import Backoff
from iochannel.chardev.socket import SocketChardev

from .fehandler import FeHandler

OPENED, CLOSED = ChardevEvent.OPENED, ChardevEvent.CLOSED


def test_nominal_delays_double_up_to_the_cap() -> None:
    b = Backoff(1.0, 30.0)
    assert [b.nominal(k) for k in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.nominal(10_000) == 30  # no overflow however long it fails


def test_delays_are_jittered_within_bounds() -> None:
    b = Backoff(0.5, 8.0, jitter=0.5, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(40)]
    for k, d in enumerate(delays):
        nominal = b.nominal(k)
        assert nominal * 0.5 <= d <= nominal
        assert d <= 8.0
    assert b.attempts == 40
    # Jitter spreads clients that lost the same server.
    other = Backoff(0.5, 8.0, jitter=0.5, rng=random.Random(8))
    assert [other.next_delay() for _ in range(40)] != delays


def test_no_jitter_is_deterministic() -> None:
    b = Backoff(0.25, 1.0, jitter=0.0)
    assert [b.next_delay() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_without_a_maximum_the_interval_is_fixed() -> None:
    """QEMU's reconnect-ms: the same delay every time, however long the peer stays away."""
    b = Backoff(0.5)
    assert b.maximum == 0.5 and b.jitter == 0.0
    assert {b.next_delay() for _ in range(50)} == {0.5}


def test_a_connection_that_lived_settle_seconds_restarts_the_schedule() -> None:
    b = Backoff(0.5, 30.0, settle=0.5, jitter=0.0)
    for _ in range(8):
        b.next_delay()  # the peer stayed away: nominal delays reached the cap
    assert b.nominal(b.attempts) == 30.0
    b.connected(uptime=0.1)  # accepted and dropped at once: one more failure
    assert b.next_delay() == 30.0
    b.connected(uptime=20.0)  # a boot shorter than the last delay still lived
    assert b.next_delay() == 0.5


def test_only_a_stable_connection_resets() -> None:
    b = Backoff(1.0, 60.0, jitter=0.0)
    for _ in range(4):
        b.next_delay()  # last nominal: 8 s
    b.connected(uptime=0.01)  # a flapping port: accepted then dropped
    assert b.next_delay() == 16.0
    b.connected(uptime=20.0)  # outlived the delay before it: stable
    assert b.attempts == 0
    assert b.next_delay() == 1.0


def test_flapping_peer_cannot_cause_a_storm() -> None:
    """A peer that drops every connection at once: the total wait grows without bound."""
    b = Backoff(0.1, 5.0, rng=random.Random(1))
    waited = 0.0
    for _ in range(100):
        waited += b.next_delay()
        b.connected(uptime=0.0)
    # 100 retries at the fixed 0.1 s QEMU would use take 10 s; these take far longer.
    assert waited > 100 * 5.0 * 0.5 - 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": 0}, "positive"),
        ({"initial": 2, "maximum": 1}, "below"),
        ({"initial": 1, "factor": 0.5}, "factor"),
        ({"initial": 1, "jitter": 1.0}, "jitter"),
        ({"initial": 1, "settle": -1}, "settle"),
    ],
)
def test_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


def test_jitter_only_spreads_a_growing_schedule() -> None:
    assert Backoff(1.0, 1.0).jitter == 0.0
    assert Backoff(1.0, 2.0).jitter == 0.5


# ---- the client chardev ------------------------------------------------------------------


async def until(pred: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Run the loop until *pred* holds (the timeout only bounds a failing test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


class UnixServer:
    """A listening unix socket that can go away and come back, as a restarted VM's."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None

    def listen(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.sock.setblocking(False)

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        os.unlink(self.path)

    async def accept(self) -> socket.socket:
        assert self.sock is not None
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(self.sock), 10)
        return conn


def test_a_registry_made_without_a_loop_connects_and_reconnects(tmp_path: Path) -> None:
    """ChardevRegistry() inside asyncio.run: the chardev binds the running loop."""

    async def main() -> None:
        srv = UnixServer(str(tmp_path / "s.sock"))
        srv.listen()
        with ChardevRegistry() as reg:
            chr = reg.add(f"socket,id=c,path={srv.path},reconnect-ms=100")
            fe = Frontend(chr)
            h = FeHandler(fe)
            h.register()
            conn = await srv.accept()
            await until(lambda: h.events == [OPENED], "OPENED")
            conn.close()
            await until(lambda: h.events == [OPENED, CLOSED], "CLOSED")
            conn = await srv.accept()  # retried by itself
            await until(lambda: h.events == [OPENED, CLOSED, OPENED], "OPENED again")
            assert chr.filename.startswith("unix:")
            fe.deinit()
            conn.close()
        srv.stop()

    asyncio.run(main())


def test_a_reconnecting_client_without_any_loop_is_refused(tmp_path: Path) -> None:
    chr = SocketChardev("c", UnixAddress(str(tmp_path / "none.sock")), reconnect_ms=100)
    with pytest.raises(ChardevError, match="chardev 'c' has no event loop"):
        chr.open()
    chr.close()


def test_reconnect_ms_alone_retries_at_a_fixed_interval(tmp_path: Path) -> None:
    """As QEMU: a peer that keeps dropping the connection is retried every reconnect-ms."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = UnixServer(str(tmp_path / "s.sock"))
        srv.listen()
        chr = SocketChardev("c", UnixAddress(srv.path), reconnect_ms=50, loop=loop)
        fe = Frontend(chr)
        h = FeHandler(fe)
        h.register()
        chr.open()
        accepted = 0
        deadline = loop.time() + 1.0
        while loop.time() < deadline:
            conn = await srv.accept()
            conn.close()
            accepted += 1
        # Every 50 ms makes about 20; delays doubling from 50 ms would allow 5.
        assert accepted >= 10
        fe.deinit(delete=True)
        srv.stop()

    asyncio.run(main())


def test_a_connection_that_lived_restarts_the_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """reconnect-max-ms: delays grow while the peer is away, and start over once it served.

    A VM that boots for less time than the grown delay is still found at once
    when it restarts; connecting and losing the connection are logged.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = UnixServer(str(tmp_path / "s.sock"))
        with ChardevRegistry() as reg:
            chr = reg.add(f"socket,id=vm,path={srv.path},reconnect-ms=20,reconnect-max-ms=5000")
            fe = Frontend(chr)
            h = FeHandler(fe)
            h.register()
            await asyncio.sleep(1.4)  # 20, 40 … 640 ms: the next delay is 0.64 s or more
            srv.listen()
            conn = await srv.accept()  # the first VM
            await until(lambda: h.events == [OPENED], "OPENED")
            await asyncio.sleep(0.2)  # it boots (for less than the grown delay)
            conn.close()  # and exits; the next VM listens on the same socket at once
            await until(lambda: h.events == [OPENED, CLOSED], "CLOSED")
            started = loop.time()
            conn = await srv.accept()
            assert loop.time() - started < 0.35
            await until(lambda: h.events == [OPENED, CLOSED, OPENED], "OPENED again")
            fe.deinit()
            conn.close()
        srv.stop()

    with caplog.at_level(logging.INFO, logger="iochannel.chardev.socket"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "iochannel.chardev.socket"]
    assert f"chardev 'vm': connected to unix:{tmp_path / 's.sock'}" in lines
    assert f"chardev 'vm': unix:{tmp_path / 's.sock'} went away" in lines
