"""Every channel type through the shared conformance suite (iochannel.testing)."""

from __future__ import annotations

import os
import socket

import pytest

from iochannel import (
    Channel,
    CommandChannel,
    FileChannel,
    InetAddress,
    SocketChannel,
    UnixAddress,
    memory_pair,
    pipe_pair,
)
from iochannel.testing import (
    check_fd_passing_channel,
    check_half_closeable_channel,
    check_one_way_channel,
    check_two_way_channel,
)

from .conftest import require_tool

Pair = tuple[Channel, Channel]


def small_buffers(*channels: SocketChannel) -> None:
    # QEMU's socket tests force partial reads and writes this way.
    for ch in channels:
        ch.set_send_buffer(64 * 1024)


def socketpair() -> Pair:
    a, b = SocketChannel.pair()
    small_buffers(a, b)
    return a, b


def tcp_pair(host: str = "127.0.0.1") -> Pair:
    with SocketChannel.listen(InetAddress(host, "0")) as listener:
        client = SocketChannel.connect(listener.local_address)
        listener.wait(__import__("iochannel").Condition.IN)
        server = listener.accept()
    assert server is not None
    client.set_delay(False)
    small_buffers(client, server)
    return client, server


def tcp6_pair() -> Pair:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    return tcp_pair("::1")


def unix_pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    path = str(tmp_path_factory.mktemp("sock") / "s.sock")
    with SocketChannel.listen(UnixAddress(path)) as listener:
        client = SocketChannel.connect(UnixAddress(path))
        server = listener.accept()
    assert server is not None
    small_buffers(client, server)
    return client, server


def one_way_pipe() -> Pair:
    r, w = FileChannel.pipe()
    return w, r


def memory() -> Pair:
    a, b = memory_pair()
    return a, b


def test_socketpair() -> None:
    check_two_way_channel(socketpair)
    check_half_closeable_channel(socketpair)
    check_fd_passing_channel(socketpair)


def test_tcp_ipv4() -> None:
    check_two_way_channel(tcp_pair)
    check_half_closeable_channel(tcp_pair)


def test_tcp_ipv6() -> None:
    check_two_way_channel(tcp6_pair)


def test_unix_listen_connect(tmp_path_factory: pytest.TempPathFactory) -> None:
    check_two_way_channel(lambda: unix_pair(tmp_path_factory))
    check_fd_passing_channel(lambda: unix_pair(tmp_path_factory))


def test_pipe() -> None:
    check_one_way_channel(one_way_pipe)


def test_fifo(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "fifo")
    os.mkfifo(path)

    def fifo_pair() -> Pair:
        reader = FileChannel.open(path, os.O_RDONLY | os.O_NONBLOCK)
        writer = FileChannel.open(path, "a")
        reader.set_blocking(True)
        return writer, reader

    check_one_way_channel(fifo_pair)


def test_pty() -> None:
    def pty_pair() -> Pair:
        master, slave_path = FileChannel.open_pty()
        slave = FileChannel.open(slave_path, "r+")
        return master, slave

    # Closing a pty end does not give the other side a clean EOF on every kernel path.
    check_two_way_channel(pty_pair, eof=False)


def test_memory_pair() -> None:
    check_two_way_channel(memory)
    check_half_closeable_channel(memory)
    check_fd_passing_channel(memory)


def test_command_cat_loopback() -> None:
    cat = require_tool("cat")

    def loop() -> Pair:
        ch = CommandChannel.spawn([cat])
        return ch, ch

    check_one_way_channel(loop, eof=False)


def test_command_socat_echo() -> None:
    socat = require_tool("socat")

    def loop() -> Pair:
        ch = CommandChannel.spawn([socat, "-", "-"])
        return ch, ch

    check_one_way_channel(loop, eof=False)


def test_stapled_pipe_pair() -> None:
    check_two_way_channel(pipe_pair)
    check_half_closeable_channel(pipe_pair)
