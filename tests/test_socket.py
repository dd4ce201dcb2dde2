"""Ports of QEMU tests/unit/test-io-channel-socket.c, plus socket hostile-input cases."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import tempfile
import threading

import pytest

from iochannel import (
    MAX_FDS,
    AddressError,
    ChannelClosedError,
    Condition,
    Feature,
    FileChannel,
    InetAddress,
    ReadFlag,
    SocketChannel,
    UnixAddress,
    UnsupportedFeatureError,
    VsockAddress,
    from_fd,
    parse_address,
)
from iochannel.testing import check_transfer


def _setup_sync(
    addr: InetAddress | UnixAddress,
) -> tuple[SocketChannel, SocketChannel, SocketChannel]:
    listener = SocketChannel.listen(addr)
    local = listener.local_address
    if isinstance(local, InetAddress):
        addr = InetAddress(local.host, local.port)
    client = SocketChannel.connect(addr)
    client.set_delay(False)
    listener.wait(Condition.IN)
    server = listener.accept()
    assert server is not None
    for ch in (client, server):
        ch.set_send_buffer(64 * 1024)
    return listener, client, server


async def _setup_async(
    addr: InetAddress | UnixAddress,
) -> tuple[SocketChannel, SocketChannel, SocketChannel]:
    listener = await SocketChannel.listen_async(addr)
    local = listener.local_address
    if isinstance(local, InetAddress):
        addr = InetAddress(local.host, local.port)
    client = await SocketChannel.connect_async(addr)
    server = await listener.aaccept()
    server.set_blocking(True)
    client.set_blocking(True)
    for ch in (client, server):
        ch.set_send_buffer(64 * 1024)
    return listener, client, server


def _run_rounds(addr: InetAddress | UnixAddress, use_async: bool) -> None:
    path = addr.path if isinstance(addr, UnixAddress) else None
    for round_ in (1, 2):
        if use_async:
            listener, client, server = asyncio.run(_setup_async(addr))
        else:
            listener, client, server = _setup_sync(addr)
        for ch in (client, server):
            assert ch.has_feature(Feature.SHUTDOWN)
            assert ch.has_feature(Feature.FD_PASS) == (path is not None)
        assert listener.has_feature(Feature.LISTEN)
        check_transfer(client, server, blocking=round_ == 1)
        check_transfer(server, client, blocking=round_ == 1)
        client.close()
        server.close()
        if path is not None:
            assert os.path.exists(path), "closing clients must not unlink the listener's path"
        listener.close()
        if path is not None:
            assert not os.path.exists(path), "closing the listener must unlink its path"


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_ipv4(use_async: bool) -> None:
    _run_rounds(InetAddress("127.0.0.1", "0"), use_async)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_ipv6(use_async: bool) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    _run_rounds(InetAddress("::1", "0", ipv6=True), use_async)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_unix(use_async: bool, tmp_path: os.PathLike[str]) -> None:
    _run_rounds(UnixAddress(os.path.join(tmp_path, "test-io-channel-socket.sock")), use_async)


def test_unix_fd_pass() -> None:
    from iochannel.testing import check_fd_passing_channel

    check_fd_passing_channel(SocketChannel.pair)


def test_unix_listen_cleanup(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "bound-by-hand.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    ch = SocketChannel(sock)
    assert not ch.has_feature(Feature.LISTEN)
    ch.close()
    assert os.path.exists(path), "a socket the channel did not listen on must not be unlinked"


def test_listener_does_not_unlink_a_replaced_path(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "s.sock")
    listener = SocketChannel.listen(UnixAddress(path))
    os.unlink(path)
    with open(path, "w") as f:
        f.write("someone else's file")
    listener.close()
    assert os.path.exists(path)


def test_listen_refuses_to_replace_a_regular_file(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "not-a-socket")
    open(path, "w").close()
    with pytest.raises(FileExistsError, match="not a socket"):
        SocketChannel.listen(UnixAddress(path))


def test_ipv4_fd() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    ch = from_fd(sock.detach())
    assert isinstance(ch, SocketChannel)
    ch.close()


def test_file_fd_gives_file_channel() -> None:
    with tempfile.TemporaryFile() as f:
        ch = from_fd(os.dup(f.fileno()))
        assert isinstance(ch, FileChannel)
        ch.close()


def test_abstract_and_tight(tmp_path: os.PathLike[str]) -> None:
    name = f"iochannel-test-{os.getpid()}"
    for tight in (True, False):
        listener = SocketChannel.listen(UnixAddress(name, abstract=True, tight=tight))
        local = listener.local_address
        assert local == UnixAddress(name, abstract=True, tight=tight)
        client = SocketChannel.connect(UnixAddress(name, abstract=True, tight=tight))
        server = listener.accept()
        assert server is not None
        client.write_all(b"hi")
        assert server.read_all(2) == b"hi"
        for ch in (client, server, listener):
            ch.close()


def test_unix_path_too_long() -> None:
    with pytest.raises(ValueError, match="too long"):
        UnixAddress("x" * 200)


def test_port_range_skips_ports_in_use() -> None:
    first = SocketChannel.listen(InetAddress("127.0.0.1", "0"))
    port = int(first.local_address.port)  # type: ignore[union-attr]
    second = SocketChannel.listen(InetAddress("127.0.0.1", str(port), to=port + 20))
    got = int(second.local_address.port)  # type: ignore[union-attr]
    assert port < got <= port + 20
    first.close()
    second.close()


def test_peek_and_credentials() -> None:
    a, b = SocketChannel.pair()
    a.write_all(b"peekaboo")
    buf = bytearray(4)
    assert b.readv([buf], flags=ReadFlag.MSG_PEEK) == 4 and buf == b"peek"
    assert b.read_all(8) == b"peekaboo"
    pid, uid, _gid = b.peer_credentials()
    assert (pid, uid) == (os.getpid(), os.getuid())
    a.close()
    b.close()


def test_received_fds_blocking_state() -> None:
    a, b = SocketChannel.pair()
    r, w = os.pipe()
    for flags, expect_blocking in ((ReadFlag.NONE, True), (ReadFlag.FD_PRESERVE_BLOCKING, False)):
        # O_NONBLOCK lives in the open file that every copy of the fd shares.
        os.set_blocking(r, False)
        a.write_all(b"x", fds=[r])
        fds: list[int] = []
        b.readv_all([bytearray(1)], fds=fds, flags=flags)
        assert os.get_blocking(fds[0]) is expect_blocking
        assert not os.get_inheritable(fds[0])
        os.close(fds[0])
    for fd in (r, w):
        os.close(fd)
    a.close()
    b.close()


def test_datagram() -> None:
    server = SocketChannel.dgram(InetAddress("127.0.0.1", "0"), None)
    local = server.local_address
    client = SocketChannel.dgram(None, local)
    client.write(b"one datagram")
    assert server.read(100) == b"one datagram"
    client.close()
    server.close()


# ---- hostile input ---------------------------------------------------------


def test_too_many_fds_is_refused() -> None:
    a, b = SocketChannel.pair()
    r, w = os.pipe()
    with pytest.raises(ValueError, match=f"Only {MAX_FDS} FDs can be sent, got 17"):
        a.writev([b"x"], fds=[r] * 17)
    a.set_blocking(False)
    b.set_blocking(False)
    assert b.read(1) is None, "nothing may be sent when the fd count is refused"
    for fd in (r, w):
        os.close(fd)
    a.close()
    b.close()


def test_more_than_16_fds_received_are_truncated_not_leaked() -> None:
    a_sock, b_sock = socket.socketpair()
    a = SocketChannel(a_sock)
    b = SocketChannel(b_sock)
    r, w = os.pipe()
    socket.send_fds(a_sock, [b"x"], [r] * 20)
    fds: list[int] = []
    b.readv_all([bytearray(1)], fds=fds)
    assert len(fds) == MAX_FDS
    for fd in [*fds, r, w]:
        os.close(fd)
    a.close()
    b.close()


def test_fds_on_non_unix_channel() -> None:
    a, b = _tcp()
    with pytest.raises(UnsupportedFeatureError, match="file descriptor passing"):
        a.writev([b"x"], fds=[0])
    with pytest.raises(UnsupportedFeatureError, match="file descriptor passing"):
        b.readv([bytearray(1)], fds=[])
    a.close()
    b.close()


def _tcp() -> tuple[SocketChannel, SocketChannel]:
    with SocketChannel.listen(InetAddress("127.0.0.1", "0")) as listener:
        client = SocketChannel.connect(listener.local_address)
        server = listener.accept()
        assert server is not None
        return client, server


def test_peek_unsupported_on_listener() -> None:
    with (
        SocketChannel.listen(InetAddress("127.0.0.1", "0")) as listener,
        pytest.raises(UnsupportedFeatureError, match="peek"),
    ):
        listener.readv([bytearray(1)], flags=ReadFlag.MSG_PEEK)


def test_connect_refused_names_the_address() -> None:
    with SocketChannel.listen(InetAddress("127.0.0.1", "0")) as listener:
        port = listener.local_address.port  # type: ignore[union-attr]
    with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}"):
        SocketChannel.connect(InetAddress("127.0.0.1", port))


def test_connect_async_error_reaches_awaiter() -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError, match="Failed to connect to unix:"):
            await SocketChannel.connect_async(UnixAddress("/nonexistent/iochannel.sock"))

    asyncio.run(main())


def test_peer_closing_mid_write() -> None:
    a, b = SocketChannel.pair()
    b.close()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        a.write_all(b"x" * (4 << 20))
    a.close()


def test_write_to_closed_channel() -> None:
    a, b = SocketChannel.pair()
    a.close()
    with pytest.raises(ChannelClosedError, match="closed"):
        a.write(b"x")
    b.close()


def test_accept_on_non_listener() -> None:
    a, b = SocketChannel.pair()
    with pytest.raises(UnsupportedFeatureError, match="not a listener"):
        a.accept()
    a.close()
    b.close()


def test_from_fd_rejects_non_socket() -> None:
    r, w = os.pipe()
    with pytest.raises(OSError) as info:
        SocketChannel.from_fd(r)
    assert info.value.errno == errno.ENOTSOCK
    os.close(r)
    os.close(w)


def test_vsock_address_parses_and_errors_cleanly() -> None:
    addr = parse_address("vsock:3:1234")
    assert addr == VsockAddress(cid=3, port=1234)
    with pytest.raises(AddressError, match="vsock port"):
        parse_address("vsock:3:4294967296")
    try:
        ch = SocketChannel.listen(addr)
    except OSError as exc:
        # No vsock transport in this kernel, or CID 3 is not ours: a clean OSError.
        assert exc.errno is not None
    else:
        ch.close()


def test_zero_copy_write_and_flush() -> None:
    from iochannel import WriteFlag

    client, server = _tcp()
    try:
        if not client.has_feature(Feature.WRITE_ZERO_COPY):
            pytest.skip("this kernel refuses SO_ZEROCOPY")
        data = bytes(range(256)) * 256
        sent = 0
        while sent < len(data):
            n = client.writev([memoryview(data)[sent:]], flags=WriteFlag.ZERO_COPY)
            assert n is not None
            sent += n
        # Loopback copies instead of pinning pages: flush reports that as 1.
        assert client.flush() in (0, 1)
        assert server.read_all(len(data)) == data
        with pytest.raises(UnsupportedFeatureError, match="file descriptor"):
            client.writev([b"x"], fds=[0], flags=WriteFlag.ZERO_COPY)
        assert not server.has_feature(Feature.WRITE_ZERO_COPY)
        with pytest.raises(UnsupportedFeatureError, match="zero-copy"):
            server.writev([b"x"], flags=WriteFlag.ZERO_COPY)
        assert server.flush() == 0
    finally:
        client.close()
        server.close()


def test_listener_finalizer_unlinks_its_path(tmp_path: os.PathLike[str]) -> None:
    import gc
    import warnings

    path = os.path.join(tmp_path, "gc.sock")
    listener = SocketChannel.listen(UnixAddress(path))
    assert os.path.exists(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del listener
        gc.collect()
    assert not os.path.exists(path), "a collected listener must unlink the path it created"
    assert any(issubclass(w.category, ResourceWarning) for w in caught)


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def test_async_readv_all_keeps_fds_across_waits_and_closes_them_when_cancelled() -> None:
    """fds that came with the first byte of a message are the reader's only once it completes.

    The message arrives in two parts with a wait between them: completed, the
    fds are handed over; cancelled in between, they are closed, not leaked.
    """
    a, b = SocketChannel.pair()
    r, w = os.pipe()

    async def main() -> None:
        before = _open_fds()
        got: list[int] = []
        a.writev((b"x",), fds=(r, w))
        reader = asyncio.ensure_future(b.areadv_all((bytearray(3),), fds=got))
        await asyncio.sleep(0.02)
        assert not reader.done() and got == []
        assert len(_open_fds() - before) == 2  # held by the pending read
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert got == [] and _open_fds() == before

        a.writev((b"y",), fds=(r,))
        buf = bytearray(2)
        reader = asyncio.ensure_future(b.areadv_all((buf,), fds=got))
        await asyncio.sleep(0.02)
        await a.awrite_all(b"z")
        await reader
        assert buf == b"yz" and len(got) == 1
        assert os.path.sameopenfile(got[0], r)
        os.close(got[0])

    try:
        asyncio.run(main())
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_blocking_readv_all_closes_fds_held_when_the_channel_closes() -> None:
    """A blocking exact read that holds fds mid-message closes them when close() ends its wait."""

    a, b = SocketChannel.pair()
    r, w = os.pipe()
    before = _open_fds()
    errors: list[BaseException] = []
    got: list[int] = []

    def read() -> None:
        try:
            b.readv_all((bytearray(4),), fds=got)
        except BaseException as exc:
            errors.append(exc)

    a.writev((b"ab",), fds=(w,))
    b.set_blocking(False)  # partial data, then a wait the close must end
    t = threading.Thread(target=read)
    t.start()
    for _ in range(200):
        if len(_open_fds() - before) >= 2:  # the fd received and the wait's eventfd
            break
        threading.Event().wait(0.01)
    b.close()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ChannelClosedError), errors
    assert got == [] and len(_open_fds()) == len(before) - 1  # b's socket went
    for fd in (r, w):
        os.close(fd)
    a.close()


def test_async_read_after_a_short_read_returns_bytes_already_there() -> None:
    """A short read makes the next async read wait first; bytes already queued still come."""
    a, b = SocketChannel.pair()

    async def main() -> None:
        a.write_all(b"abc")
        buf = bytearray(10)
        assert await b.areadinto(buf) == 3
        a.write_all(b"defgh")  # queued before the next read starts
        assert await asyncio.wait_for(b.areadinto(buf), 10) == 5
        assert buf[:5] == b"defgh"
        a.write_all(b"ij")
        assert await asyncio.wait_for(b.areadv((buf, bytearray(4))), 10) == 2
        a.close()
        assert await asyncio.wait_for(b.areadinto(buf), 10) == 0  # EOF after a short read

    try:
        asyncio.run(main())
    finally:
        a.close()
        b.close()
