"""TLS layer bulk throughput over an AF_UNIX socketpair / stdlib ``ssl.SSLSocket``.

Both sides use the same certificates, the same TLS 1.3 cipher suite and the
same link; the client writes 64 KiB chunks, the server reads into a 64 KiB
buffer in another thread.  Goal: ratio >= 1.0.

A second comparison, for information, puts the writing end in a forked child
process: the two ends of a real connection never share a process, and so never
contend for one interpreter lock, which costs the layer (its record copies
between the memory BIOs and the socket run with the lock held) more than
``SSLSocket`` (which holds it for nothing but the calls themselves).

Each figure is printed twice: MB/s of wall time, and MB per CPU-second of both
ends (threads or processes), which other load on the machine disturbs far less.
"""

from __future__ import annotations

import socket
import tempfile
import threading

from _common import (  # type: ignore[import-not-found]
    CHUNK,
    Rates,
    best_pair,
    layer_bulk,
    measure,
    report_both,
)

from iochannel import SocketChannel, TLSChannel
from iochannel.crypto import X509Credentials
from iochannel.crypto.certs import make_credentials_dir

BULK = 256 * 1024 * 1024


def _layer(creds: str, fork: bool = False) -> Rates:
    a, b = SocketChannel.pair()
    client = TLSChannel.client(a, X509Credentials(creds, "client"), "localhost")
    server = TLSChannel.server(b, X509Credentials(creds, "server"))
    return layer_bulk(client, server, BULK, fork=fork)


def _sslsocket(creds: str, fork: bool = False) -> Rates:
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
        return measure(write, read, BULK, fork=fork)
    finally:
        client.close()
        server.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as creds:
        make_credentials_dir(creds)
        ours, base = best_pair(lambda: _layer(creds), lambda: _sslsocket(creds))
        report_both("TLS layer bulk (AF_UNIX)", ours, base, 1.0, "ssl.SSLSocket")
        ours, base = best_pair(lambda: _layer(creds, True), lambda: _sslsocket(creds, True))
        report_both("TLS bulk, ends in two processes", ours, base, None, "ssl.SSLSocket")


if __name__ == "__main__":
    main()
