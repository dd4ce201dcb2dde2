"""The socket chardev: test-char's socket cases, plus what QEMU lacks (backoff, connections=N)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from iochannel import Address, FdAddress, InetAddress, SocketChannel, UnixAddress
from iochannel.chardev import (
    Chardev,
    ChardevClosedError,
    ChardevError,
    ChardevEvent,
    ClosedWrites,
    Frontend,
    HubChardev,
    MemberPolicy,
    SlowConsumer,
    WhileClosed,
    parse_chardev,
    validate_spec,
)
from iochannel.chardev.backoff import Backoff
from iochannel.chardev.socket import SocketChardev
from iochannel.crypto import AuthzList, Credentials, Endpoint

from .fehandler import FeHandler

OPENED, CLOSED, BREAK = ChardevEvent.OPENED, ChardevEvent.CLOSED, ChardevEvent.BREAK


async def until(pred: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Run the loop until *pred* holds (the timeout only bounds a failing test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def saw(h: FeHandler, event: ChardevEvent) -> Callable[[], bool]:
    """Whether *h*'s latest event is *event* (for :func:`until`)."""
    return lambda: h.last_event == event


def connected(chr: SocketChardev) -> Callable[[], bool]:
    return lambda: chr.connected


def port_of(chr: SocketChardev) -> str:
    addr = chr.listen_addresses[0]
    assert isinstance(addr, InetAddress)
    return addr.port


async def settle(rounds: int = 20) -> None:
    """Let the loop run a few iterations (for checking that nothing happens)."""
    for _ in range(rounds):
        await asyncio.sleep(0.001)


def attached(chr: Chardev, capacity: int = 128) -> tuple[Frontend, FeHandler]:
    """A frontend on *chr* with a registered test-char handler."""
    fe = Frontend(chr)
    h = FeHandler(fe, capacity)
    h.register()
    return fe, h


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


def server_address(kind: str, tmp_path: Path) -> Address:
    if kind == "tcp":
        return InetAddress("127.0.0.1", "0")
    return UnixAddress(str(tmp_path / "test-char.sock"))


def prelisten(addr: Address) -> FdAddress:
    """A listening socket passed by number (test-char's ``-fdpass``)."""
    if isinstance(addr, UnixAddress):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(addr.path)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return FdAddress(sock.detach())


def new_server(addr: Address, **kwargs: Any) -> SocketChardev:
    chr = SocketChardev("chr", addr, server=True, loop=asyncio.get_running_loop(), **kwargs)
    chr.open()
    return chr


# ---- /char/socket/server ----------------------------------------------------------


@pytest.mark.parametrize("fdpass", [False, True], ids=["plain", "fdpass"])
@pytest.mark.parametrize("mode", ["mainloop", "wait-conn"])
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_server(kind: str, mode: str, fdpass: bool, tmp_path: Path) -> None:
    async def main() -> None:
        addr = server_address(kind, tmp_path)
        chr = new_server(prelisten(addr) if fdpass else addr)
        target = chr.listen_addresses[0]
        fe, h = attached(chr)
        assert not chr.connected and h.events == []  # registering gives nothing while closed
        for _round in range(2):
            peer = SocketChannel.connect(target)
            if mode == "wait-conn":
                chr.wait_connected()
            else:
                await until(lambda: chr.connected, "the connection")
            assert chr.connected and h.last_event == OPENED
            assert fe.write_all(b"Hello\0") == 6
            assert await peer.aread_all(6) == b"Hello\0"
            # A new registration is told OPENED again.
            h = FeHandler(fe)
            h.register()
            assert h.events == [OPENED]
            await peer.awrite_all(b"World\0")
            peer.close()
            await until(saw(h, CLOSED), "CLOSED")
            assert not chr.connected
            assert h.read_buf == b"World\0"
            assert h.events == [OPENED, CLOSED] and not h.mismatch
        fe.deinit(delete=True)
        if fdpass and kind == "unix":
            os.unlink(tmp_path / "test-char.sock")

    run(main)


def test_server_two_clients() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"))
        target = chr.listen_addresses[0]
        fe, h = attached(chr)
        peer1 = SocketChannel.connect(target)
        chr.wait_connected()
        assert h.events == [OPENED]
        # QEMU moves the handlers to another context here; a new registration is our move.
        h = FeHandler(fe)
        h.register()
        peer2 = SocketChannel.connect(target)  # completes in the kernel backlog
        await peer2.awrite_all(b"second")
        await settle()
        assert len(chr.sessions) == 1 and h.read_buf == b""  # not served yet
        peer1.close()
        await until(lambda: h.openclose_count == 3, "CLOSED, then OPENED for client 2")
        assert h.events == [OPENED, CLOSED, OPENED]
        await until(lambda: h.read_buf == b"second", "client 2's bytes")
        peer2.close()
        await until(lambda: h.last_event == CLOSED, "CLOSED for client 2")
        assert h.events.count(CLOSED) == 2 and not h.mismatch
        fe.deinit(delete=True)

    run(main)


# ---- /char/socket/client ----------------------------------------------------------


class PingPongServer:
    """The peer of the client tests: accepts, reads a ping, answers a pong, hangs up."""

    def __init__(self, addr: Address) -> None:
        self.listener = SocketChannel.listen(addr, backlog=4)
        self.listener.set_blocking(False)
        self.address = self.listener.local_address
        self.pings: list[bytes] = []
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            conn = await self.listener.aaccept()
            try:
                ping = await conn.aread(5)
                if len(ping) < 5:
                    ping += await conn.aread_all(5 - len(ping)) if ping else b""
                if ping:
                    self.pings.append(ping)
                    await conn.awrite_all(b"pong!")
            except (OSError, EOFError):
                pass  # the client dropped us: take the next one
            finally:
                conn.close()

    async def close(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        self.listener.close()


@pytest.mark.parametrize("variant", ["plain", "reconnect", "fdpass"])
@pytest.mark.parametrize("mode", ["mainloop", "wait-conn"])
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_client(kind: str, mode: str, variant: str, tmp_path: Path) -> None:
    async def main() -> None:
        srv = PingPongServer(server_address(kind, tmp_path))
        addr: Address = srv.address
        if variant == "fdpass":
            conn = SocketChannel.connect(srv.address)
            addr = FdAddress(os.dup(conn.fileno()))
            conn.close()
        reconnect = variant == "reconnect"
        chr = SocketChardev(
            "chr",
            addr,
            reconnect_ms=100 if reconnect else 0,
            loop=asyncio.get_running_loop(),
        )
        chr.open()
        fe, h = attached(chr)
        if reconnect:
            assert h.events == []  # OPENED comes once the connection is made
            if mode == "wait-conn":
                chr.wait_connected()
            await until(lambda: h.events == [OPENED], "OPENED")
        else:
            assert chr.connected and h.events == [OPENED]  # connected at creation
        rounds = 2 if reconnect else 1
        for _round in range(rounds):
            assert fe.write_all(b"ping!") == 5
            h = FeHandler(fe)
            h.register()
            assert h.events == [OPENED]
            await until(saw(h, CLOSED), "CLOSED")
            assert h.read_buf == b"pong!" and not h.mismatch
            if reconnect and _round == 0:
                await until(saw(h, OPENED), "OPENED after reconnecting")
        assert srv.pings == [b"ping!"] * rounds
        fe.deinit(delete=True)
        await srv.close()

    run(main)


def test_client_reconnect_error() -> None:
    """Disconnecting on the first OPENED: the chardev reconnects and finishes by itself."""

    async def main() -> None:
        srv = PingPongServer(InetAddress("127.0.0.1", "0"))
        chr = SocketChardev("chr", srv.address, reconnect_ms=50, loop=asyncio.get_running_loop())
        fe = Frontend(chr)
        h = FeHandler(fe)
        dropped: list[bool] = []

        def event(ev: ChardevEvent) -> None:
            h.event(ev)
            if ev == OPENED and not dropped:
                dropped.append(True)
                fe.disconnect()

        fe.set_handlers(h.can_read, h.read, event)
        chr.open()
        await until(lambda: h.events == [OPENED, CLOSED, OPENED], "the reconnection")
        fe.write_all(b"ping!")
        await until(lambda: h.read_buf == b"pong!", "the pong")
        assert not h.mismatch
        fe.deinit(delete=True)
        await srv.close()

    run(main)


def test_client_without_reconnect_fails_at_open() -> None:
    async def main() -> None:
        probe = SocketChannel.listen(InetAddress("127.0.0.1", "0"))
        addr = probe.local_address
        probe.close()  # nothing listens there now
        chr = SocketChardev("chr", addr, loop=asyncio.get_running_loop())
        with pytest.raises(ConnectionRefusedError):
            chr.open()
        chr.close()

    run(main)


# ---- lifecycle, filenames, policies -------------------------------------------------


def test_filenames_follow_qemu() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"))
        port = port_of(chr)
        assert chr.filename == f"disconnected:tcp:127.0.0.1:{port},server=on"
        fe, _ = attached(chr)
        peer = SocketChannel.connect(chr.listen_addresses[0])
        await until(lambda: chr.connected, "the connection")
        local = peer.local_address
        assert isinstance(local, InetAddress)
        assert chr.filename == f"tcp:127.0.0.1:{port},server=on <-> 127.0.0.1:{local.port}"
        peer.close()
        await until(lambda: not chr.connected, "the disconnection")
        assert chr.filename == f"disconnected:tcp:127.0.0.1:{port},server=on"
        fe.deinit(delete=True)

    run(main)


def test_unix_filename(tmp_path: Path) -> None:
    async def main() -> None:
        path = str(tmp_path / "s")
        chr = new_server(UnixAddress(path), telnet=False)
        assert chr.filename == f"disconnected:unix:{path},server=on"
        fe = Frontend(chr)
        FeHandler(fe).register()
        peer = SocketChannel.connect(UnixAddress(path))
        await until(lambda: chr.connected, "the connection")
        assert chr.filename == f"unix:{path},server=on"
        peer.close()
        fe.deinit(delete=True)
        assert not os.path.exists(path)  # the listener removes what it created

    run(main)


def test_writes_while_disconnected() -> None:
    def free_address() -> Address:
        probe = SocketChannel.listen(InetAddress("127.0.0.1", "0"))
        addr = probe.local_address
        probe.close()
        return addr

    async def main() -> None:
        addr = free_address()
        loop = asyncio.get_running_loop()
        chr = SocketChardev("chr", addr, reconnect_ms=20, loop=loop)
        chr.open()
        fe = Frontend(chr)
        FeHandler(fe).register()
        with pytest.raises(ChardevClosedError, match="not connected"):
            fe.write(b"lost")  # QEMU: EIO
        fe.deinit(delete=True)

        policy = ClosedWrites(WhileClosed.BUFFER, limit=4)
        # Its own address: a connect the closed chardev had in flight may still arrive.
        addr = free_address()
        buffered = SocketChardev("buf", addr, reconnect_ms=20, loop=loop, closed_writes=policy)
        buffered.open()
        fe = Frontend(buffered)
        FeHandler(fe).register()
        assert fe.write(b"early-bytes") == 11  # only the newest 4 are kept
        listener = SocketChannel.listen(addr)
        listener.set_blocking(False)
        conn = await asyncio.wait_for(listener.aaccept(), 30)
        assert await conn.aread_all(4) == b"ytes"
        assert buffered.stats.dropped == 7
        conn.close()
        listener.close()
        fe.deinit(delete=True)

    run(main)


def test_disconnect_drops_the_connection_and_a_server_serves_the_next() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"))
        fe, h = attached(chr)
        peer = SocketChannel.connect(chr.listen_addresses[0])
        await until(lambda: chr.connected, "the connection")
        fe.disconnect()
        assert h.events == [OPENED, CLOSED] and not chr.connected
        assert await peer.aread(10) == b""  # the peer sees the connection end
        peer.close()
        peer = SocketChannel.connect(chr.listen_addresses[0])
        await until(lambda: chr.connected, "the next connection")
        peer.close()
        fe.deinit(delete=True)

    run(main)


def test_wait_connected_is_refused_with_handshakes() -> None:
    async def main() -> None:
        for key in ("telnet", "tn3270", "websocket"):
            chr = new_server(InetAddress("127.0.0.1", "0"), **{key: True})
            with pytest.raises(ChardevError, match=f"'{key}' option is incompatible"):
                chr.wait_connected()
            chr.close()

    run(main)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wait": True}, "'wait' option is incompatible with socket in client connect mode"),
        ({"websocket": True}, "Websocket client is not implemented"),
        ({"server": True, "reconnect_ms": 10}, "incompatible with socket in server listen"),
        ({"tls_authz": "a"}, "'tls-authz' option requires 'tls-creds' option"),
        ({"telnet": True, "tn3270": True}, "mutually exclusive"),
        ({"connections": 2}, "'connections' option is incompatible with socket in client"),
        ({"server": True, "connections": 0}, "at least 1"),
        ({"tls_creds": "nope"}, "No TLS credentials with id 'nope'"),
        ({"handshake_timeout_ms": -1}, "'handshake-timeout-ms' must be at least 0, not -1"),
        ({"reconnect_ms": 5, "reconnect_max_ms": 1}, "must not be below 'reconnect-ms'"),
    ],
)
def test_option_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ChardevError, match=message):
        SocketChardev("chr", InetAddress("127.0.0.1", "1"), **kwargs)


def test_credentials_for_the_other_endpoint_say_what_to_set() -> None:
    objects = {"srv": Credentials(Endpoint.SERVER), "a": AuthzList()}
    with pytest.raises(ChardevError, match="not TLS credentials"):
        SocketChardev("chr", InetAddress("127.0.0.1", "1"), tls_creds="a", objects=objects)
    with pytest.raises(ChardevError, match="client endpoint: set endpoint=client on 'srv'"):
        SocketChardev("chr", InetAddress("127.0.0.1", "1"), tls_creds="srv", objects=objects)


# ---- fd passing ----------------------------------------------------------------------


def test_fd_passing_on_unix(tmp_path: Path) -> None:
    async def main() -> None:
        chr = new_server(UnixAddress(str(tmp_path / "fd.sock")))
        fe, h = attached(chr)
        peer = SocketChannel.connect(chr.listen_addresses[0])
        await until(lambda: chr.connected, "the connection")
        r, w = os.pipe()
        peer.write_all(b"m", fds=[r])
        await until(lambda: h.read_buf == b"m", "the message")
        fds = fe.get_msgfds()
        assert len(fds) == 1 and fe.get_msgfds() == []
        fe.set_msgfds([w])
        fe.write_all(b"n")
        back: list[int] = []
        await peer.areadv_all([bytearray(1)], fds=back)
        assert len(back) == 1
        # An fd nobody took is closed when the connection ends.
        peer.write_all(b"x", fds=[r])
        await until(lambda: h.read_buf == b"mx", "the second message")
        peer.close()
        await until(lambda: not chr.connected, "the disconnection")
        assert fe.get_msgfds() == []
        for fd in (*fds, *back, r, w):
            os.close(fd)
        fe.deinit(delete=True)

    run(main)


# ---- telnet -------------------------------------------------------------------------


def test_telnet_break_and_iac() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"), telnet=True)
        fe, h = attached(chr)
        peer = SocketChannel.connect(chr.listen_addresses[0])
        assert await peer.aread_all(12) == bytes.fromhex("fffb01fffb03fffb00fffd00")
        await until(lambda: chr.connected, "the connection")  # negotiation sent, then OPENED
        assert chr.filename.startswith("telnet:127.0.0.1:")
        await peer.awrite_all(b"ab\xff\xf3cd\xff\xff\xff\xfb\x01e")
        await until(lambda: h.read_buf == b"abcd\xffe", "the filtered input")
        assert h.events == [OPENED, BREAK]
        # A truncated IAC, then the peer leaves: no harm.
        await peer.awrite_all(b"\xff")
        peer.close()
        await until(lambda: h.last_event == CLOSED, "CLOSED")
        assert not h.mismatch
        fe.deinit(delete=True)

    run(main)


def test_tn3270_negotiation() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"), tn3270=True)
        fe, h = attached(chr)
        peer = SocketChannel.connect(chr.listen_addresses[0])
        assert len(await peer.aread_all(21)) == 21
        await peer.awrite_all(b"\xff\xfb\x19rec\xff\xef\xff\xf1")
        await until(lambda: h.read_buf == b"rec\xff\xef", "the record")
        peer.close()
        await until(lambda: h.last_event == CLOSED, "CLOSED")
        fe.deinit(delete=True)

    run(main)


def test_telnet_garbage_does_not_hurt() -> None:
    async def main() -> None:
        import random

        rng = random.Random(5)
        chr = new_server(InetAddress("127.0.0.1", "0"), telnet=True)
        fe, h = attached(chr, capacity=1 << 20)
        for _ in range(3):
            peer = SocketChannel.connect(chr.listen_addresses[0])
            await peer.aread_all(12)
            junk = bytes(rng.choice(b"\xff\xfa\xf0\xf3\xfb\x01a") for _ in range(5000))
            await peer.awrite_all(junk)
            peer.close()
            await until(lambda: h.last_event == CLOSED, "CLOSED")
        assert not h.mismatch and h.events.count(OPENED) == 3
        fe.deinit(delete=True)

    run(main)


# ---- websocket ------------------------------------------------------------------------


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def test_websocket() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"), websocket=True)
        fe, h = attached(chr)
        peer = SocketChannel.connect(chr.listen_addresses[0])
        await peer.awrite_all(
            b"GET / HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: o9JHNiS3/0/0zYE1wa3yIw==\r\n"
            b"Sec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: binary\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += await peer.aread(1)
        assert head.startswith(b"HTTP/1.1 101")
        for field in (b"Upgrade", b"Connection", b"Sec-WebSocket-Accept"):
            assert field in head
        assert b"Sec-WebSocket-Protocol: binary" in head
        await peer.awrite_all(_masked(0x9, b"hello"))
        assert await peer.aread_all(7) == b"\x8a\x05hello"
        await peer.awrite_all(_masked(0x2, b"world"))
        await until(lambda: h.read_buf == b"world", "the binary frame")
        assert chr.connected and h.events == [OPENED]
        assert chr.filename.startswith("websocket:127.0.0.1:")
        await peer.awrite_all(_masked(0x8, b"\x03\xe8bye"))
        head = await peer.aread_all(2)
        assert head[0] == 0x88  # a close frame answers ours, echoing the status
        assert (await peer.aread_all(head[1]))[:2] == b"\x03\xe8"
        await until(lambda: h.last_event == CLOSED, "CLOSED")
        peer.close()
        fe.deinit(delete=True)

    run(main)


# ---- connections=N ------------------------------------------------------------------------


def test_connections_n_output_to_all_input_from_any() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"), connections=2)
        target = chr.listen_addresses[0]
        fe, h = attached(chr)
        p1 = SocketChannel.connect(target)
        p2 = SocketChannel.connect(target)
        await until(lambda: len(chr.sessions) == 2, "two sessions")
        assert h.events == [OPENED]  # one OPENED for the first client only
        assert fe.write_all(b"to all") == 6
        assert await p1.aread_all(6) == b"to all"
        assert await p2.aread_all(6) == b"to all"
        await p1.awrite_all(b"1")
        await until(lambda: h.read_buf == b"1", "input from client 1")
        await p2.awrite_all(b"2")
        await until(lambda: h.read_buf == b"12", "input from client 2")
        p3 = SocketChannel.connect(target)  # the third waits in the backlog
        await p3.awrite_all(b"3")
        await settle()
        assert len(chr.sessions) == 2 and h.read_buf == b"12"
        p1.close()
        await until(lambda: h.read_buf == b"123", "client 3, served once client 1 left")
        assert h.events == [OPENED]  # clients remained throughout
        p2.close()
        p3.close()
        await until(lambda: h.last_event == CLOSED, "CLOSED after the last client")
        assert h.events == [OPENED, CLOSED] and not h.mismatch
        fe.deinit(delete=True)

    run(main)


def test_connections_n_slow_client_gets_every_byte_once() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"), connections=2)
        target = chr.listen_addresses[0]
        fe = Frontend(chr)
        FeHandler(fe).register()
        fast = SocketChannel.connect(target)
        slow = SocketChannel.connect(target)
        await until(lambda: len(chr.sessions) == 2, "two sessions")
        data = bytes(range(256)) * 8192  # 2 MiB: more than the socket buffers hold

        async def slow_reader() -> bytes:
            got = bytearray()
            while len(got) < len(data):
                got += await slow.aread(4096)
                await asyncio.sleep(0)
            return bytes(got)

        sent, got_fast, got_slow = await asyncio.gather(
            fe.awrite_all(data), fast.aread_all(len(data)), slow_reader()
        )
        assert sent == len(data) and got_fast == data and got_slow == data
        fast.close()
        slow.close()
        fe.deinit(delete=True)

    run(main)


@pytest.mark.parametrize("clients_first", [False, True])
def test_connections_n_clients_each_get_the_hub_policy(tmp_path: Path, clients_first: bool) -> None:
    """In a ``drop`` hub, a client that stops reading loses its own oldest bytes, alone.

    Clients connected before the socket joined the hub come under its policy too.
    """

    async def main() -> None:
        chr = new_server(UnixAddress(str(tmp_path / "s.sock")), connections=2)
        if clients_first:
            fast = SocketChannel.connect(chr.listen_addresses[0])
            stalled = SocketChannel.connect(chr.listen_addresses[0])
            await until(lambda: len(chr.sessions) == 2, "two sessions")
        hub = HubChardev("hub", [chr], policies={"chr": MemberPolicy(SlowConsumer.DROP, 4096)})
        hub.open()
        fe = Frontend(hub)
        FeHandler(fe).register()
        if not clients_first:
            fast = SocketChannel.connect(chr.listen_addresses[0])
            stalled = SocketChannel.connect(chr.listen_addresses[0])
        await until(lambda: len(chr.sessions) == 2 and hub.be_open, "two sessions")
        assert {chr.fanout.members[i].policy.mode for i in (0, 1)} == {SlowConsumer.DROP}
        data = bytes(range(256)) * 8192  # 2 MiB: more than the stalled client's buffers
        got = bytearray()
        for i in range(0, len(data), 4096):  # the fast client keeps up
            await fe.awrite_all(data[i : i + 4096])
            got += await fast.aread_all(4096)
        assert got == data
        dropped = sum(m.stats.dropped for m in chr.fanout.members)
        assert dropped > 0 and hub.member("chr").stats.dropped == dropped
        hub.remove_member(chr)
        assert chr.fanout.policy == MemberPolicy()
        for c in (fast, stalled, hub, chr):
            c.close()
        fe.deinit(delete=True)

    run(main)


def test_handshake_timeout_option() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        addr = {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}}
        for data, seconds in (
            ({}, 10.0),
            ({"handshake-timeout-ms": 250}, 0.25),
            ({"handshake-timeout-ms": 0}, None),
        ):
            chr = SocketChardev.from_qapi("h", qapi({"addr": addr, **data}), Registry(loop))
            assert chr.setup.handshake_timeout == seconds
            chr.close()
        checked = parse_chardev("socket,id=h,path=p,server=on,handshake-timeout-ms=5")
        assert checked["backend"]["data"]["handshake-timeout-ms"] == 5

    run(main)


# ---- hostile peers ----------------------------------------------------------------------


def test_client_vanishing_mid_write() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"))
        fe, h = attached(chr)
        for _ in range(3):
            peer = SocketChannel.connect(chr.listen_addresses[0])
            peer.set_send_buffer(4096)
            await until(lambda: chr.connected, "the connection")
            writer = asyncio.ensure_future(fe.awrite_all(b"z" * (8 << 20)))
            await peer.aread(1000)
            peer.close()
            with pytest.raises((ChardevClosedError, OSError)):
                await asyncio.wait_for(writer, 30)
            await until(lambda: not chr.connected, "the disconnection")
        assert h.events == [OPENED, CLOSED] * 3 and not h.mismatch
        fe.deinit(delete=True)

    run(main)


def test_reconnect_against_a_flapping_port() -> None:
    """A port that accepts and drops at once, then vanishes, then serves: events alternate."""

    async def main() -> None:
        listener = SocketChannel.listen(InetAddress("127.0.0.1", "0"), backlog=8)
        listener.set_blocking(False)
        addr = listener.local_address
        backoff = Backoff(0.005, 0.05, jitter=0.5)
        chr = SocketChardev(
            "chr", addr, reconnect_ms=5, backoff=backoff, loop=asyncio.get_running_loop()
        )
        fe, h = attached(chr)
        chr.open()
        for _ in range(5):
            conn = await asyncio.wait_for(listener.aaccept(), 30)
            conn.close()
        await until(lambda: h.events.count(CLOSED) >= 5, "five flaps")
        assert backoff.attempts >= 5  # the short connections did not reset the schedule
        listener.close()  # the port vanishes: refused connections, retried
        await settle()
        listener = SocketChannel.listen(addr, backlog=8)
        listener.set_blocking(False)
        conn = await asyncio.wait_for(listener.aaccept(), 30)
        await until(lambda: chr.connected, "the stable connection")
        fe.write_all(b"ok")
        assert await conn.aread_all(2) == b"ok"
        assert not h.mismatch and h.last_event == OPENED
        fe.deinit(delete=True)
        conn.close()
        listener.close()

    run(main)


# ---- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def creds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from iochannel.crypto.certs import make_credentials_dir

    d = tmp_path_factory.mktemp("tls")
    make_credentials_dir(d, client_dn="C=UK,CN=qemu")
    return d


def test_tls_server_and_client(creds_dir: Path) -> None:
    from iochannel.crypto import AuthzList, X509Credentials

    async def main() -> None:
        loop = asyncio.get_running_loop()
        objects = {
            "srv": X509Credentials(creds_dir, "server"),
            "cli": X509Credentials(creds_dir, "client"),
            "acl": AuthzList(["C=UK,CN=qemu"]),
        }
        server = SocketChardev(
            "s",
            InetAddress("127.0.0.1", "0"),
            server=True,
            tls_creds="srv",
            tls_authz="acl",
            objects=objects,
            loop=loop,
        )
        server.open()
        sfe = Frontend(server)
        sh = FeHandler(sfe)
        sh.register()
        port = port_of(server)
        client = SocketChardev(
            "c",
            InetAddress("127.0.0.1", port),
            reconnect_ms=20,
            tls_creds="cli",
            objects=objects,
            loop=loop,
        )
        cfe = Frontend(client)
        ch = FeHandler(cfe)
        ch.register()
        client.open()
        with pytest.raises(ChardevError, match="'tls-creds' option is incompatible"):
            client.wait_connected()
        await until(lambda: server.connected and client.connected, "the TLS session")
        await cfe.awrite_all(b"secret")
        await until(lambda: sh.read_buf == b"secret", "data through TLS")
        await sfe.awrite_all(b"reply")
        await until(lambda: ch.read_buf == b"reply", "the reply through TLS")
        cfe.deinit(delete=True)
        await until(lambda: sh.last_event == CLOSED, "the server's CLOSED")
        assert not sh.mismatch and not ch.mismatch
        sfe.deinit(delete=True)

    run(main)


def test_tls_authz_denies(creds_dir: Path) -> None:
    from iochannel import TLSChannel, TLSError
    from iochannel.crypto import AuthzList, X509Credentials

    async def main() -> None:
        objects = {"srv": X509Credentials(creds_dir, "server"), "acl": AuthzList(["CN=other"])}
        server = new_server(
            InetAddress("127.0.0.1", "0"), tls_creds="srv", tls_authz="acl", objects=objects
        )
        sfe = Frontend(server)
        sh = FeHandler(sfe)
        sh.register()
        for _ in range(2):  # the server goes on accepting after a refusal
            raw = SocketChannel.connect(server.listen_addresses[0])
            tls = TLSChannel.client(raw, X509Credentials(creds_dir, "client"), "127.0.0.1")
            with pytest.raises((TLSError, OSError)):
                await tls.ahandshake()
                await tls.aread(1)  # TLS 1.3: the refusal arrives after the client's finish
            tls.close()
        await settle()
        assert sh.events == [] and not server.connected
        sfe.deinit(delete=True)

    run(main)


# ---- QMP shape ------------------------------------------------------------------------------


class Registry:
    def __init__(self, loop: asyncio.AbstractEventLoop | None, **objects: object) -> None:
        self.loop = loop
        self.objects = objects

    def get(self, id: str) -> Chardev | None:
        return None


def qapi(data: dict[str, Any]) -> dict[str, Any]:
    """QMP's ``ChardevSocket`` *data* as a factory takes it: validated, defaults filled in."""
    spec = validate_spec({"id": "x", "backend": {"type": "socket", "data": data}})
    checked: dict[str, Any] = spec["backend"]["data"]
    return checked


def test_from_qapi_defaults_and_shape(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        path = str(tmp_path / "q.sock")
        chr = SocketChardev.from_qapi(
            "q",
            qapi({"addr": {"type": "unix", "data": {"path": path}}, "closed-writes": "drop"}),
            Registry(loop),
        )
        assert chr.is_server and not chr.wait  # QMP: server true, wait false
        assert chr.closed_writes.mode is WhileClosed.DROP
        chr.open()
        assert chr.filename == f"disconnected:unix:{path},server=on"
        assert chr.write(b"dropped") == 7
        chr.close()
        flat = SocketChardev.from_qapi(
            "f",
            qapi(
                {
                    "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}},
                    "server": False,
                    "reconnect": 2,
                    "closed-writes": "buffer",
                    "closed-writes-limit": 8,
                }
            ),
            Registry(loop),
        )
        assert flat.reconnect_ms == 2000 and flat.closed_writes.limit == 8
        flat.close()
        with pytest.raises(ChardevError, match=r"Invalid parameter 'backend\.data\.bogus'"):
            qapi({"addr": {}, "bogus": 1})
        with pytest.raises(ChardevError, match=r"'backend\.data\.addr\.data\.path' is missing"):
            qapi({"addr": {"type": "unix", "data": {}}})
        with pytest.raises(ChardevError, match="not TLS credentials"):
            SocketChardev.from_qapi(
                "x",
                qapi(
                    {"addr": {"type": "inet", "data": {"host": "h", "port": "1"}}, "tls-creds": "o"}
                ),
                Registry(loop, o=object()),
            )

    run(main)


# ---- waiting, addresses, options, the registry ---------------------------------------------


def test_server_wait_on_blocks_open_until_a_client_connects() -> None:
    async def main() -> None:
        probe = SocketChannel.listen(InetAddress("127.0.0.1", "0"))
        addr = probe.local_address
        probe.close()
        # The client connects before the chardev listens: retry in a thread meanwhile.
        connect = asyncio.get_running_loop().run_in_executor(None, _connect_retrying, addr)
        chr = SocketChardev("w", addr, server=True, wait=True, loop=asyncio.get_running_loop())
        chr.open()
        assert chr.connected
        peer = await connect
        fe, h = attached(chr)
        assert h.events == [OPENED]
        peer.close()
        await until(saw(h, CLOSED), "CLOSED")
        fe.deinit(delete=True)

    run(main)


def _connect_retrying(addr: Address) -> SocketChannel:
    import time

    deadline = time.monotonic() + 30
    while True:
        try:
            return SocketChannel.connect(addr)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def test_wait_connected_from_another_thread_while_the_loop_runs() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"))
        fe, h = attached(chr)
        waiting = asyncio.get_running_loop().run_in_executor(None, chr.wait_connected, 30.0)
        await settle()
        peer = SocketChannel.connect(chr.listen_addresses[0])
        await waiting
        assert chr.connected and h.events == [OPENED]
        peer.close()
        await until(saw(h, CLOSED), "CLOSED")
        fe.deinit(delete=True)

    run(main)


def test_await_connected_reconnects_a_client_without_reconnect_ms() -> None:
    async def main() -> None:
        srv = PingPongServer(InetAddress("127.0.0.1", "0"))
        chr = SocketChardev("c", srv.address, loop=asyncio.get_running_loop())
        chr.open()
        fe, h = attached(chr)
        fe.disconnect()
        assert h.events == [OPENED, CLOSED]
        await asyncio.wait_for(fe.await_connected(), 30)
        assert h.events == [OPENED, CLOSED, OPENED] and not h.mismatch
        fe.deinit(delete=True)
        await srv.close()

    run(main)


def test_abstract_unix_socket() -> None:
    async def main() -> None:
        name = f"iochannel-test-{os.getpid()}"
        chr = new_server(UnixAddress(name, abstract=True))
        fe, h = attached(chr)
        client = SocketChardev("c", UnixAddress(name, abstract=True), loop=chr.loop)
        client.open()
        cfe = Frontend(client)
        FeHandler(cfe).register()
        await until(lambda: chr.connected, "the connection")
        await cfe.awrite_all(b"abstract")
        await until(lambda: h.read_buf == b"abstract", "the bytes")
        cfe.deinit(delete=True)
        await until(saw(h, CLOSED), "CLOSED")
        fe.deinit(delete=True)

    run(main)


def test_nodelay_reaches_the_connection() -> None:
    async def main() -> None:
        for nodelay in (False, True):
            chr = new_server(InetAddress("127.0.0.1", "0"), nodelay=nodelay)
            fe = Frontend(chr)
            FeHandler(fe).register()
            peer = SocketChannel.connect(chr.listen_addresses[0])
            await until(connected(chr), "the connection")
            [session] = chr.sessions
            channel = session.input_channel
            assert isinstance(channel, SocketChannel)
            assert (
                bool(channel.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) is nodelay
            )
            peer.close()
            fe.deinit(delete=True)

    run(main)


def test_registry_builds_sockets_and_refuses_a_duplicate_id() -> None:
    """test-char's dupid-reconnect: a second chardev with the same id fails, the first lives on."""
    from iochannel.chardev.registry import ChardevRegistry

    async def main() -> None:
        srv = PingPongServer(InetAddress("127.0.0.1", "0"))
        assert isinstance(srv.address, InetAddress)
        reg = ChardevRegistry(asyncio.get_running_loop())
        spec = f"socket,id=dup,host=127.0.0.1,port={srv.address.port},reconnect-ms=50"
        chr = reg.add(spec)
        assert isinstance(chr, SocketChardev)
        with pytest.raises(ChardevError, match="Chardev with id 'dup' already exists"):
            reg.add(spec)
        fe, h = attached(chr)
        await until(lambda: h.events == [OPENED], "OPENED")
        fe.write_all(b"ping!")
        await until(lambda: h.read_buf == b"pong!", "the pong")
        fe.deinit()
        reg.close()
        await srv.close()

    run(main)


# ---- the connection-oriented server API ----------------------------------------------------


def test_chardev_server_hands_out_one_chardev_per_session() -> None:
    from iochannel import NetListener
    from iochannel.chardev import ChardevServer, SessionChardev, SessionSetup

    async def main() -> None:
        sessions: list[tuple[SessionChardev, FeHandler]] = []
        ended: list[SessionChardev] = []

        def connect(session: SessionChardev) -> None:
            assert session.be_open  # open from birth
            h = FeHandler(Frontend(session))
            h.register()
            assert h.events == [OPENED]
            sessions.append((session, h))

        listener = NetListener()
        listener.open(InetAddress("127.0.0.1", "0"))
        server = ChardevServer(
            "srv",
            listener,
            connect,
            disconnect=ended.append,
            setup=SessionSetup(telnet=True),
            max_sessions=2,
            loop=asyncio.get_running_loop(),
        )
        server.start()
        target = listener.local_addresses[0]
        peers = [SocketChannel.connect(target) for _ in range(2)]
        await until(lambda: len(sessions) == 2, "two sessions")
        peers.append(SocketChannel.connect(target))
        await settle()
        assert len(sessions) == 2 and server.busy == 2  # the third waits in the backlog
        for peer in peers[:2]:
            assert await peer.aread_all(12) == bytes.fromhex("fffb01fffb03fffb00fffd00")
        (s1, h1), (s2, h2) = sessions
        assert s1.id == "srv.1" and s2.id == "srv.2"
        await peers[0].awrite_all(b"one\xff\xf3")
        await until(lambda: h1.events == [OPENED, BREAK], "client 1's BREAK")
        assert h1.read_buf == b"one" and h2.read_buf == b""  # each session is its own device
        s2.disconnect()
        assert h2.events == [OPENED, CLOSED] and ended == [s2] and s2.closed
        with pytest.raises(ChardevClosedError):
            s2.write(b"after the end")
        await until(lambda: len(sessions) == 3, "the third client")
        assert await peers[2].aread_all(12)
        peers[0].close()
        await until(saw(h1, CLOSED), "client 1's end")
        server.close()
        assert [h.events[-1] for _, h in sessions] == [CLOSED] * 3
        for _session, h in sessions:
            h.fe.deinit()
        for peer in peers:
            peer.close()

    run(main)


def test_websocket_garbage_is_refused_and_the_server_goes_on() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"), websocket=True)
        fe, h = attached(chr)
        bad = SocketChannel.connect(chr.listen_addresses[0])
        await bad.awrite_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        answer = await bad.aread(4096)
        assert answer.startswith(b"HTTP/1.1 400")
        bad.close()
        truncated = SocketChannel.connect(chr.listen_addresses[0])
        await truncated.awrite_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        truncated.close()  # gone in the middle of the handshake
        good = SocketChannel.connect(chr.listen_addresses[0])
        await good.awrite_all(
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: o9JHNiS3/0/0zYE1wa3yIw==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await until(lambda: chr.connected, "the good client")
        assert h.events == [OPENED]
        good.close()
        await until(saw(h, CLOSED), "CLOSED")
        fe.deinit(delete=True)

    run(main)


def test_connections_n_client_vanishing_mid_write_leaves_the_others_whole() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"), connections=2)
        target = chr.listen_addresses[0]
        fe, h = attached(chr)
        stays = SocketChannel.connect(target)
        leaves = SocketChannel.connect(target)
        await until(lambda: len(chr.sessions) == 2, "two sessions")
        data = bytes(range(251)) * 8000

        async def leave() -> None:
            await leaves.aread(50_000)
            leaves.close()

        sent, got, _ = await asyncio.gather(
            fe.awrite_all(data), stays.aread_all(len(data)), leave()
        )
        assert sent == len(data) and got == data
        await until(lambda: len(chr.sessions) == 1, "the leaver's end")
        assert h.events == [OPENED]
        stays.close()
        await until(saw(h, CLOSED), "CLOSED")
        fe.deinit(delete=True)

    run(main)


def test_add_client_adopts_a_connected_socket() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"))
        fe, h = attached(chr)
        ours, peer = SocketChannel.pair()
        chr.add_client(ours)
        assert chr.connected and h.events == [OPENED]
        extra, extra_peer = SocketChannel.pair()
        with pytest.raises(ChardevError, match="already connected"):
            chr.add_client(extra)
        extra.close()
        extra_peer.close()
        await peer.awrite_all(b"adopted")
        await until(lambda: h.read_buf == b"adopted", "the adopted client's bytes")
        peer.close()
        await until(saw(h, CLOSED), "CLOSED")
        fe.deinit(delete=True)

    run(main)


def test_from_qapi_address_kinds() -> None:
    vsock = SocketChardev.from_qapi(
        "v", qapi({"addr": {"type": "vsock", "data": {"cid": "3", "port": "1234"}}}), Registry(None)
    )
    assert vsock.filename == "disconnected:vsock:3:1234"
    inet = SocketChardev.from_qapi(
        "i",
        qapi(
            {
                "addr": {
                    "type": "inet",
                    "data": {"host": "::1", "port": "5", "to": 9, "ipv6": True},
                },
                "server": False,
                "telnet": True,
            }
        ),
        Registry(None),
    )
    assert inet.addr == InetAddress("::1", "5", to=9, ipv6=True)
    assert inet.filename == "disconnected:telnet:::1:5"
    fd = SocketChardev.from_qapi(
        "f", qapi({"addr": {"type": "fd", "data": {"str": "7"}}}), Registry(None)
    )
    assert fd.addr == FdAddress(7) and fd.filename == "disconnected:fd:7,server=on"
    with pytest.raises(ChardevError, match="named fds"):
        SocketChardev.from_qapi(
            "n", qapi({"addr": {"type": "fd", "data": {"str": "x"}}}), Registry(None)
        )
    with pytest.raises(ChardevError, match=r"'backend\.data\.addr\.type'"):
        qapi({"addr": {"type": "tcp", "data": {}}})
    for chr in (vsock, inet, fd):
        chr.close()


@pytest.mark.parametrize("connections", [1, 2])
def test_input_respects_can_read_and_resumes_on_accept_input(connections: int) -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"), connections=connections)
        fe, h = attached(chr, capacity=10)
        peers = [SocketChannel.connect(chr.listen_addresses[0]) for _ in range(connections)]
        await until(lambda: len(chr.sessions) == connections, "the sessions")
        for peer in peers:
            await peer.awrite_all(b"x" * 100)
        await until(lambda: len(h.read_buf) == 10, "the first 10 bytes")
        await settle()
        assert len(h.read_buf) == 10  # can_read hit 0: input paused
        want = 100 * connections
        total = len(h.take())
        while total < want:
            fe.accept_input()
            await until(lambda: h.read_buf, "more input")
            assert len(h.read_buf) <= 10
            total += len(h.take())
        assert total == want
        for peer in peers:
            peer.close()
        fe.accept_input()  # a paused reader sees the end once it reads again
        await until(saw(h, CLOSED), "CLOSED")
        fe.deinit(delete=True)

    run(main)


def test_a_closed_handler_can_hand_over_the_next_client() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"))
        fe = Frontend(chr)
        h = FeHandler(fe)
        spare, spare_peer = SocketChannel.pair()

        def event(ev: ChardevEvent) -> None:
            h.event(ev)
            if ev == CLOSED and h.openclose_count == 2:
                chr.add_client(spare)  # the slot is free again when CLOSED arrives

        fe.set_handlers(h.can_read, h.read, event)
        first, first_peer = SocketChannel.pair()
        chr.add_client(first)
        first_peer.close()
        await until(lambda: h.openclose_count == 3, "the handed-over client")
        assert h.events == [OPENED, CLOSED, OPENED] and chr.connected and not h.mismatch
        spare_peer.close()
        await until(saw(h, CLOSED), "CLOSED")
        fe.deinit(delete=True)

    run(main)


def test_closing_during_a_handshake_leaves_nothing_behind() -> None:
    async def main() -> None:
        chr = new_server(InetAddress("127.0.0.1", "0"), websocket=True, connections=2)
        fe, h = attached(chr)
        peers = [SocketChannel.connect(chr.listen_addresses[0]) for _ in range(2)]
        await peers[0].awrite_all(b"GET / HTTP/1.1\r\nHost: h\r\n")  # and never the end
        await settle()
        fe.deinit(delete=True)  # the pending handshakes are abandoned, their sockets closed
        for peer in peers:
            assert await peer.aread(100) == b""
            peer.close()
        await settle()
        assert h.events == []

    run(main)
