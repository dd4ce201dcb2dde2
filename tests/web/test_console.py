"""WebConsole over real sockets: routing, tokens, replay, input, roles, slow viewers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from iochannel import SocketChannel
from iochannel._layers.websock import HandshakeError, WebsockChannel
from iochannel.chardev import Frontend, HubChardev
from iochannel.web import Role, WebConsole
from iochannel.web import console as console_module
from iochannel.web.protocol import encode_input, encode_resize, encode_status
from tests.chardev.fehandler import FeHandler
from tests.test_tls import make_creds

from .client import exchange, get, read_to_end, read_until, settle, token, viewer


class Console:
    """A hub with a recording frontend and a web console on it."""

    def __init__(self, **kwargs: Any) -> None:
        self.hub = HubChardev("console")
        self.hub.open()
        self.guest = FeHandler(Frontend(self.hub), capacity=1 << 20)
        self.guest.register()
        self.sizes: list[tuple[int, int]] = []
        self.web = WebConsole(self.hub, on_resize=lambda r, c: self.sizes.append((r, c)), **kwargs)

    def output(self, data: bytes) -> None:
        assert self.guest.fe.write(data) == len(data)

    def close(self) -> None:
        self.web.close()
        self.guest.fe.deinit()
        self.hub.close()


@contextlib.asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[Console]:
    console = Console(**kwargs)
    try:
        await console.web.start()
        yield console
    finally:
        console.close()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


# ---- pages and refusals -------------------------------------------------------------


def test_pages_assets_and_refusals() -> None:
    async def main() -> None:
        async with running(rw_token="rw-secret", ro_token="ro-secret") as c:
            web = c.web
            assert web.urls["rw"].endswith("/?token=rw-secret")
            page = await get(web, "/?token=rw-secret")
            assert page.startswith(b"HTTP/1.1 200 OK\r\n") and b'data-role="rw"' in page
            assert b'data-role="ro"' in await get(web, "/?token=ro-secret")
            bearer = await get(web, "/", extra="Authorization: Bearer ro-secret\r\n")
            assert b'data-role="ro"' in bearer
            script = await get(web, "/static/vendor/xterm.js")
            assert b"Content-Type: text/javascript; charset=utf-8" in script
            assert len(script) > 100_000
            head_only = await get(web, "/static/console.js", method="HEAD")
            assert head_only.endswith(b"\r\n\r\n") and b"Content-Length: 0" not in head_only
            for target, status in [
                ("/", 403),
                ("/?token=wrong", 403),
                ("/?token=", 403),
                ("/ws?token=nope", 403),
                ("/static/index.html", 404),
                ("/static/../static/console.js", 400),
                ("/static/%2e%2e/console.py", 400),
                ("/etc/passwd", 404),
            ]:
                answer = await get(web, target)
                assert answer.startswith(f"HTTP/1.1 {status} ".encode()), (target, answer)
            posted = await get(web, "/?token=rw-secret", method="POST")
            assert posted.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in posted
            huge = await exchange(web, b"GET / HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n")
            assert huge.startswith(b"HTTP/1.1 431 ")
            assert not web.viewers

    run(main)


def test_websocket_with_a_bad_token_is_refused() -> None:
    async def main() -> None:
        async with running() as c:
            ws = WebsockChannel.client(
                SocketChannel.connect(c.web.address), host="console", path="/ws?token=bad"
            )
            with ws, pytest.raises(HandshakeError, match="403"):
                await ws.ahandshake()
            assert not c.web.viewers

    run(main)


def test_a_tls_client_on_the_plain_port_is_answered_at_once() -> None:
    # A TLS ClientHello never ends a head: the first byte shows it is no request line.
    async def main() -> None:
        async with running() as c:
            async with asyncio.timeout(5):
                answer = await exchange(c.web, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            assert answer.startswith(b"HTTP/1.1 400 ")
            assert b"illegal request line" in answer

    run(main)


def test_a_stalled_request_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_module, "SETUP_TIMEOUT", 0.2)

    async def main() -> None:
        async with running() as c:
            with SocketChannel.connect(c.web.address) as raw:
                raw.set_blocking(False)
                await raw.awrite_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                async with asyncio.timeout(5):
                    assert await raw.aread(100) == b""

    run(main)


def test_close_abandons_connections_being_set_up() -> None:
    async def main() -> None:
        async with running() as c:
            with SocketChannel.connect(c.web.address) as raw:
                raw.set_blocking(False)
                await raw.awrite_all(b"GET /ws?token=x HTTP/1.1\r\n")
                await asyncio.sleep(0.05)
                c.web.close()
                async with asyncio.timeout(5):
                    assert await raw.aread(100) == b""

    run(main)


def test_tokens_must_differ() -> None:
    hub = HubChardev("h")
    with pytest.raises(ValueError, match="differ"):
        WebConsole(hub, rw_token="same", ro_token="same")
    hub.close()


# ---- output, replay, reconnect ---------------------------------------------------------


def test_late_joiners_get_the_replay_then_live_output() -> None:
    async def main() -> None:
        async with running() as c:
            c.output(b"boot banner\r\n")
            first = await viewer(c.web, "ro")
            assert await read_until(first, b"boot banner\r\n") == b"boot banner\r\n"
            c.output(b"$ ")
            assert await read_until(first, b"$ ") == b"$ "
            second = await viewer(c.web, "rw")
            assert await read_until(second, b"$ ") == b"boot banner\r\n$ "
            c.output(b"live")
            for ws in (first, second):
                assert await read_until(ws, b"live") == b"live"
                ws.close()

    run(main)


def test_replay_keeps_the_last_64_kib() -> None:
    async def main() -> None:
        async with running() as c:
            data = bytes(i % 251 for i in range(200_000))
            for i in range(0, len(data), 7000):
                c.output(data[i : i + 7000])
            with await viewer(c.web, "ro") as ws:
                tail = data[-console_module.REPLAY_SIZE :]
                assert await read_until(ws, tail) == tail

    run(main)


def test_a_replay_the_socket_cannot_take_at_once_follows_as_it_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # More than loopback socket buffers take at once.
    monkeypatch.setattr(console_module, "REPLAY_SIZE", 8 << 20)

    async def main() -> None:
        async with running() as c:
            data = bytes(i % 251 for i in range(8 << 20))
            c.output(data)
            # A small receive window makes the console's first write of the replay partial.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            sock.connect((c.web.address.host, int(c.web.address.port)))
            raw = SocketChannel(sock)
            raw.set_blocking(False)
            path = f"/ws?token={token(c.web, 'ro')}"
            with WebsockChannel.client(raw, host="console", path=path) as ws:
                await ws.ahandshake()
                await settle(lambda: bool(c.web.viewers))
                assert c.web.viewers[0].pending_bytes > 0
                await asyncio.sleep(0.1)
                assert await read_until(ws, data) == data  # with no further output

    run(main)


def test_a_reconnecting_viewer_gets_the_replay_again() -> None:
    async def main() -> None:
        async with running() as c:
            c.output(b"one ")
            with await viewer(c.web, "rw") as ws:
                await read_until(ws, b"one ")
            await settle(lambda: not c.web.viewers)
            assert [m.chardev.id for m in c.hub.members] == ["console.web-replay"]
            c.output(b"two ")
            with await viewer(c.web, "rw") as ws:
                assert await read_until(ws, b"two ") == b"one two "

    run(main)


def test_viewers_are_told_whether_the_device_is_there() -> None:
    gone, there = encode_status(False), encode_status(True)

    async def main() -> None:
        async with running() as c:
            c.output(b"before ")
            with await viewer(c.web, "ro") as ws:
                # The state follows the replay, then comes with each change.
                assert await read_until(ws, there, status=True) == b"before " + there
                c.guest.fe.set_open(False)  # a relayed shell exited, say
                assert await read_until(ws, gone, status=True) == gone
                with await viewer(c.web, "rw") as late:
                    assert await read_until(late, gone, status=True) == b"before " + gone
                c.guest.fe.set_open(True)
                assert await read_until(ws, there, status=True) == there

    run(main)


# ---- input, resize, roles -------------------------------------------------------------


def test_read_write_input_and_resize_reach_the_console() -> None:
    async def main() -> None:
        async with running() as c:
            with await viewer(c.web, "rw") as ws:
                await ws.awrite_all(encode_resize(24, 80) + encode_input(b"ls\r"))
                await ws.awrite_all(encode_input(b"x" * 70_000))
                await settle(lambda: len(c.guest.read_buf) == 70_003)
                assert c.guest.take() == b"ls\r" + b"x" * 70_000
                assert c.sizes == [(24, 80)]

    run(main)


def test_read_only_input_and_resize_are_refused_by_the_server() -> None:
    async def main() -> None:
        async with running() as c:
            with await viewer(c.web, "ro") as ro, await viewer(c.web, "rw") as rw:
                await ro.awrite_all(encode_input(b"reboot\r") + encode_resize(5, 5))
                await rw.awrite_all(encode_input(b"ok"))
                await settle(lambda: c.guest.read_buf == b"ok")
                (ro_viewer,) = [v for v in c.web.viewers if v.role is Role.READ_ONLY]
                await settle(lambda: ro_viewer.refused == 2)
                assert c.guest.take() == b"ok" and c.sizes == []
                c.output(b"still watching")
                assert await read_until(ro, b"still watching") == b"still watching"

    run(main)


def test_garbage_from_a_viewer_ends_it() -> None:
    async def main() -> None:
        async with running() as c:
            with await viewer(c.web, "rw") as ws:
                await ws.awrite_all(b"\x07junk")
                async with asyncio.timeout(5):
                    assert await read_to_end(ws) == b""
                assert not c.web.viewers

    run(main)


def test_a_viewer_that_never_reads_does_not_hold_up_the_others() -> None:
    async def main() -> None:
        async with running() as c:
            stuck_raw = SocketChannel.connect(c.web.address)
            stuck_raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck = WebsockChannel.client(
                stuck_raw, host="console", path=f"/ws?token={token(c.web, 'ro')}"
            )
            with stuck, await viewer(c.web, "ro") as healthy:
                await stuck.ahandshake()
                await settle(lambda: len(c.web.viewers) == 2)
                chunk = bytes(range(256)) * 256
                total = 0
                for i in range(256):  # 16 MiB, more than the kernel buffers; each write taken whole
                    c.output(chunk)
                    total += len(chunk)
                    got = await read_until(healthy, chunk)
                    assert len(got) == len(chunk), i
                healthy_member, stuck_member = sorted(
                    (m for m in c.hub.members if m.chardev in c.web.viewers),
                    key=lambda m: m.stats.dropped,
                )
                assert healthy_member.stats.dropped == 0
                assert stuck_member.stats.dropped > 0
                assert stuck_member.stats.queued <= console_module.VIEWER_QUEUE
                assert c.hub.stats.bytes_out == total

    run(main)


def test_close_ends_every_viewer_and_leaves_the_hub() -> None:
    async def main() -> None:
        async with running() as c:
            first, second = await viewer(c.web, "rw"), await viewer(c.web, "ro")
            await settle(lambda: len(c.web.viewers) == 2)
            c.web.close()
            c.web.close()
            for ws in (first, second):
                with ws:
                    async with asyncio.timeout(5):
                        assert await read_to_end(ws) == b""
            assert not c.hub.members and not c.web.viewers
            assert c.hub.opened and not c.hub.closed

    run(main)


# ---- TLS --------------------------------------------------------------------------------


def test_over_tls(tmp_path: Path) -> None:
    creds = make_creds(str(tmp_path), server_names=("127.0.0.1",))

    async def main() -> None:
        async with running(tls_creds=creds.server_creds()) as c:
            assert c.web.urls["rw"].startswith("https://127.0.0.1:")
            c.output(b"secret banner")
            with await viewer(c.web, "ro", creds.client_creds()) as ws:
                assert await read_until(ws, b"secret banner") == b"secret banner"

    run(main)
