"""WebSocket layer bulk throughput, client to server (masked), 64 KiB writes.

Measured side by side over an AF_UNIX socketpair, the writer in a thread and
the reader in the main thread:

* ours: ``WebsockChannel.client`` → ``WebsockChannel.server``;
* baseline: a bare loop around the ``websockets`` sans-I/O ``Protocol`` on raw
  sockets (``send_binary``/``data_to_send``/``sendall``, ``recv_into``/
  ``receive_data``/``events_received``) — goal: ratio >= 0.8;
* the same bare loop around ``wsproto`` — goal: ours >= 5x.
"""

from __future__ import annotations

import socket

from _common import (  # type: ignore[import-not-found]
    CHUNK,
    Rates,
    best_pair,
    layer_bulk,
    measure,
    report_both,
)
from websockets.frames import Frame
from websockets.protocol import Protocol, Side
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage

from iochannel import SocketChannel
from iochannel.websock import WebsockChannel

BULK = 256 * 1024 * 1024


def _layer() -> Rates:
    a, b = SocketChannel.pair()
    return layer_bulk(WebsockChannel.client(a), WebsockChannel.server(b), BULK)


def _websockets_loop() -> Rates:
    a, b = socket.socketpair()
    sender, receiver = Protocol(Side.CLIENT, max_size=None), Protocol(Side.SERVER, max_size=None)
    data = bytes(CHUNK)
    buf = bytearray(256 * 1024)
    view = memoryview(buf)

    def write() -> None:
        for _ in range(BULK // CHUNK):
            sender.send_binary(data)
            for chunk in sender.data_to_send():
                a.sendall(chunk)

    def read() -> None:
        left = BULK
        while left:
            n = b.recv_into(view)
            receiver.receive_data(buf[:n])
            for event in receiver.events_received():
                assert isinstance(event, Frame)
                left -= len(event.data)

    try:
        return measure(write, read, BULK)
    finally:
        a.close()
        b.close()


def _wsproto_loop(bulk: int) -> Rates:
    a, b = socket.socketpair()
    sender, receiver = Connection(ConnectionType.CLIENT), Connection(ConnectionType.SERVER)
    data = bytes(CHUNK)
    buf = bytearray(256 * 1024)
    view = memoryview(buf)

    def write() -> None:
        for _ in range(bulk // CHUNK):
            a.sendall(sender.send(BytesMessage(data=data)))

    def read() -> None:
        left = bulk
        while left:
            n = b.recv_into(view)
            receiver.receive_data(buf[:n])
            for event in receiver.events():
                assert isinstance(event, BytesMessage)
                left -= len(event.data)

    try:
        return measure(write, read, bulk)
    finally:
        a.close()
        b.close()


def main() -> None:
    ours, base = best_pair(_layer, _websockets_loop)
    report_both("WebSocket bulk (masked)", ours, base, 0.8, "websockets sans-I/O")
    # wsproto is much slower: a smaller transfer keeps the run short.
    runs = [_wsproto_loop(BULK // 16) for _ in range(3)]
    slow = (max(r[0] for r in runs), max(r[1] for r in runs))
    report_both("WebSocket bulk (masked)", ours, slow, 5.0, "wsproto sans-I/O")


if __name__ == "__main__":
    main()
