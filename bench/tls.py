"""TLS layer bulk throughput over an AF_UNIX socketpair / stdlib ``ssl.SSLSocket``.

Both sides use the same certificates, the same TLS 1.3 cipher suite and the
same link; the client writes 64 KiB chunks, the server reads into a 64 KiB
buffer in another thread.  Goal: ratio >= 1.0.

Each figure is printed twice: MB/s of wall time, and MB per CPU-second of this
process (both threads), which other load on the machine disturbs far less.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable

from channel import report  # type: ignore[import-not-found]

from iochannel import SocketChannel
from iochannel.crypto import X509Credentials
from iochannel.crypto.certs import make_credentials_dir
from iochannel.tls import TLSChannel

CHUNK = 64 * 1024
BULK = 256 * 1024 * 1024
ROUNDS = 5


Rates = tuple[float, float]  # (MB/s of wall time, MB per CPU-second)


def best_pair(ours: Callable[[], Rates], base: Callable[[], Rates]) -> tuple[Rates, Rates]:
    """Best rates of each over ROUNDS, alternating runs so load changes hit both alike."""
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(ours())
        b.append(base())
    return (max(r[0] for r in a), max(r[1] for r in a)), (
        max(r[0] for r in b),
        max(r[1] for r in b),
    )


def measure(write: Callable[[], None], read: Callable[[], None], bulk: int = BULK) -> Rates:
    """Run *write* in a thread and *read* here; return the rates for *bulk* bytes."""
    t = threading.Thread(target=write)
    cpu, start = time.process_time(), time.perf_counter()
    t.start()
    read()
    t.join()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return bulk / wall / 1e6, bulk / cpu / 1e6


def report_both(name: str, ours: Rates, base: Rates, goal: float, baseline: str) -> None:
    report(name, ours[0], base[0], "MB/s", goal, baseline)
    report(name + " per CPU", ours[1], base[1], "MB/cpu-s", goal, baseline)


def _layer(creds: str) -> Rates:
    a, b = SocketChannel.pair()
    client = TLSChannel.client(a, X509Credentials(creds, "client"), "localhost")
    server = TLSChannel.server(b, X509Credentials(creds, "server"))
    t = threading.Thread(target=server.handshake)
    t.start()
    client.handshake()
    t.join()
    data = bytes(CHUNK)
    bufs = [memoryview(bytearray(CHUNK))]

    def write() -> None:
        for _ in range(BULK // CHUNK):
            client.write_all(data)

    def read() -> None:
        left = BULK
        while left:
            left -= server.readv(bufs) or 0

    try:
        return measure(write, read)
    finally:
        client.close()
        server.close()


def _sslsocket(creds: str) -> Rates:
    a, b = socket.socketpair()
    cctx = X509Credentials(creds, "client").ssl_context()
    sctx = X509Credentials(creds, "server").ssl_context()
    client = cctx.wrap_socket(a, server_hostname="localhost", do_handshake_on_connect=False)
    server = sctx.wrap_socket(b, server_side=True, do_handshake_on_connect=False)
    t = threading.Thread(target=server.do_handshake)
    t.start()
    client.do_handshake()
    t.join()
    data = bytes(CHUNK)
    view = memoryview(bytearray(CHUNK))

    def write() -> None:
        for _ in range(BULK // CHUNK):
            client.sendall(data)

    def read() -> None:
        left = BULK
        while left:
            left -= server.recv_into(view)

    try:
        return measure(write, read)
    finally:
        client.close()
        server.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as creds:
        make_credentials_dir(creds)
        ours, base = best_pair(lambda: _layer(creds), lambda: _sslsocket(creds))
    report_both("TLS layer bulk (AF_UNIX)", ours, base, 1.0, "ssl.SSLSocket")


if __name__ == "__main__":
    main()
