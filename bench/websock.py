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
from collections.abc import Callable, Iterable

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

from iochannel import SocketChannel, WebsockChannel

BULK = 256 * 1024 * 1024


def _layer() -> Rates:
    a, b = SocketChannel.pair()
    return layer_bulk(WebsockChannel.client(a), WebsockChannel.server(b), BULK)


def _sansio_loop(
    bulk: int, encode: Callable[[bytes], Iterable[bytes]], decode: Callable[[bytearray], int]
) -> Rates:
    """A bare sans-I/O loop on raw sockets.

    *encode* turns a chunk into wire bytes; *decode* feeds wire bytes and
    returns the payload bytes that came out.
    """
    a, b = socket.socketpair()
    data = bytes(CHUNK)
    buf = bytearray(256 * 1024)
    view = memoryview(buf)

    def write() -> None:
        for _ in range(bulk // CHUNK):
            for chunk in encode(data):
                a.sendall(chunk)

    def read() -> None:
        left = bulk
        while left:
            left -= decode(buf[: b.recv_into(view)])

    try:
        return measure(write, read, bulk)
    finally:
        a.close()
        b.close()


def _payload(events: Iterable[object], kind: type[Frame | BytesMessage]) -> int:
    """The payload bytes of *events*, each of which must be a *kind* (a data frame or message)."""
    n = 0
    for event in events:
        assert isinstance(event, kind)
        n += len(event.data)
    return n


def _websockets_loop() -> Rates:
    sender, receiver = Protocol(Side.CLIENT, max_size=None), Protocol(Side.SERVER, max_size=None)

    def encode(data: bytes) -> list[bytes]:
        sender.send_binary(data)
        return sender.data_to_send()

    def decode(wire: bytearray) -> int:
        receiver.receive_data(wire)
        return _payload(receiver.events_received(), Frame)

    return _sansio_loop(BULK, encode, decode)


def _wsproto_loop(bulk: int) -> Rates:
    sender, receiver = Connection(ConnectionType.CLIENT), Connection(ConnectionType.SERVER)

    def encode(data: bytes) -> tuple[bytes]:
        return (sender.send(BytesMessage(data=data)),)

    def decode(wire: bytearray) -> int:
        receiver.receive_data(wire)
        return _payload(receiver.events(), BytesMessage)

    return _sansio_loop(bulk, encode, decode)


def main() -> None:
    ours, base = best_pair(_layer, _websockets_loop)
    report_both("WebSocket bulk (masked)", ours, base, 0.8, "websockets sans-I/O")
    # wsproto is much slower: a smaller transfer keeps the run short.
    runs = [_wsproto_loop(BULK // 16) for _ in range(3)]
    slow = (max(r[0] for r in runs), max(r[1] for r in runs))
    report_both("WebSocket bulk (masked)", ours, slow, 5.0, "wsproto sans-I/O")


if __name__ == "__main__":
    main()
