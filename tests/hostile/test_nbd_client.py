"""A ``driver=nbd`` node whose NBD server misbehaves: the guest sees I/O errors, nothing more.

The daemon serves the node over vhost-user-blk; the NBD server behind it is
:class:`~tests.nbd.client_peers.BadServer`.  Each bad answer costs the guest
an I/O error on that request, never a hang; the daemon keeps its fds, its
memory, and shuts down cleanly (checked by the fixture).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from iochannel.vhost_user import blk
from iochannel.vhost_user.frontend import Frontend
from tests.hostile.conftest import Daemon
from tests.nbd.client_peers import BadServer, Request, transmission
from tests.vhost_user.test_blk import submit


def _serve_node(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path, server: BadServer, *node_opts: str
) -> Path:
    vub = tmp_path / "vub.sock"
    node = ",".join(["driver=nbd,node-name=n0,server.type=unix", f"server.path={server.path}"])
    hostile_daemon(
        "--blockdev", ",".join([node, *node_opts]),
        "--export", f"type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path={vub}",
    )  # fmt: skip
    return vub


def _read_status(vub: Path) -> tuple[int, float]:
    start = time.monotonic()
    with Frontend(str(vub)) as fe:
        fe.start(1)
        status = submit(fe, fe.queues[0], blk.T_IN, 0, in_len=512)[0]
    return status, time.monotonic() - start


def test_garbage_replies_fail_requests(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    def reply(conn: socket.socket, req: Request) -> bool:
        conn.sendall(struct.pack(">IIQ", 0x67446698, 0, req[2] + 99))  # a cookie never sent
        return True

    server = BadServer(tmp_path / "bad.sock", transmission(reply))
    try:
        vub = _serve_node(hostile_daemon, tmp_path, server)
        assert _read_status(vub)[0] == blk.S_IOERR
        # The node is unusable after a protocol error: later requests fail at once.
        status, waited = _read_status(vub)
        assert status == blk.S_IOERR and waited < 5
    finally:
        server.close()


def test_a_server_dropping_every_request(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    server = BadServer(tmp_path / "bad.sock", transmission(lambda conn, req: False))
    try:
        vub = _serve_node(hostile_daemon, tmp_path, server, "reconnect-delay=1")
        status, waited = _read_status(vub)
        assert status == blk.S_IOERR and 0.9 < waited < 5  # retried for reconnect-delay
    finally:
        server.close()
