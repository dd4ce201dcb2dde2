"""``--blockdev driver=nbd``: a qcow2 served by qemu-nbd, re-exported by iochannel."""

from __future__ import annotations

import contextlib
import errno
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from iochannel.block import BlockError
from iochannel.block.nodes import STATUS_HOLE, STATUS_ZERO
from iochannel.block.storage import Storage
from iochannel.crypto import X509Credentials
from iochannel.crypto.certs import make_credentials_dir
from iochannel.nbd.client import Allocation, NbdClient
from iochannel.vhost_user import blk
from iochannel.vhost_user.frontend import Frontend
from tests.conftest import iochannel_process
from tests.vhost_user.test_blk import submit

from .client_peers import QemuNbd, make_qcow2, qemu_img, qemu_io, qemu_nbd

K = 1024
M = 1024 * K


@pytest.fixture
def qcow2(tmp_path: Path) -> Path:
    return make_qcow2(tmp_path / "disk.qcow2", "4M", "write -P 0x5a 64k 64k")


def _nbd_node(server: QemuNbd, **extra: Any) -> dict[str, Any]:
    return {
        "driver": "nbd",
        "node-name": "n0",
        "server": {"type": "unix", "path": str(server.sock)},
        "export": server.export,
        **extra,
    }


def _read(node: Any, offset: int, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    assert node.preadv([view[: n // 2], view[n // 2 :]], offset) == n
    return bytes(buf)


def _daemon(
    tmp_path: Path, *argv: str
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    return iochannel_process(tmp_path / "daemon.pid", *argv)


def _vub_export(vub: Path) -> list[str]:
    spec = f"type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path={vub},writable=on"
    return ["--export", f"{spec},num-queues=2"]


def test_qcow2_through_vhost_user_blk(qcow2: Path, tmp_path: Path) -> None:
    vub = tmp_path / "vub.sock"
    with qemu_nbd(qcow2, tmp_path / "nbd.sock") as server:
        node = f"driver=nbd,node-name=n0,server.type=unix,server.path={server.sock},export=disk"
        argv = ["--blockdev", f"{node},reconnect-delay=5", *_vub_export(vub)]
        with _daemon(tmp_path, *argv), Frontend(str(vub)) as fe:
            fe.start(2)
            q0, q1 = fe.queues
            status, data, _ = submit(fe, q0, blk.T_IN, 128, in_len=4096)  # 64 KiB
            assert (status, data) == (blk.S_OK, b"\x5a" * 4096)
            status, data, _ = submit(fe, q1, blk.T_IN, 0, in_len=512)
            assert (status, data) == (blk.S_OK, bytes(512))
            assert submit(fe, q0, blk.T_OUT, 2048, out=b"\x77" * 1024)[0] == blk.S_OK
            assert submit(fe, q1, blk.T_FLUSH)[0] == blk.S_OK
    qemu_io(qcow2, "read -P 0x77 1M 1k", "read -P 0x5a 64k 64k")


def test_tls_node_in_the_daemon(qcow2: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    make_credentials_dir(pki)
    vub = tmp_path / "vub.sock"
    tls = ["--object", f"tls-creds-x509,id=tls0,endpoint=server,dir={pki}", "--tls-creds", "tls0"]
    with qemu_nbd(qcow2, tmp_path / "nbd.sock", extra=tls) as server:
        node = f"driver=nbd,node-name=n0,server.type=unix,server.path={server.sock},export=disk"
        argv = [
            "--object", f"tls-creds-x509,id=c0,endpoint=client,dir={pki}",
            "--blockdev", f"{node},tls-creds=c0,tls-hostname=localhost",
            *_vub_export(vub),
        ]  # fmt: skip
        with _daemon(tmp_path, *argv), Frontend(str(vub)) as fe:
            fe.start(1)
            status, data, _ = submit(fe, fe.queues[0], blk.T_IN, 128, in_len=512)
            assert (status, data) == (blk.S_OK, b"\x5a" * 512)
        no_hostname = subprocess.run(
            [sys.executable, "-m", "iochannel", *argv[:3], f"{node},tls-creds=c0", *argv[4:]],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert no_hostname.returncode == 1
        assert "Parameter 'tls-hostname' is missing" in no_hostname.stderr


def test_node_io_and_block_status(qcow2: Path, tmp_path: Path) -> None:
    with qemu_nbd(qcow2, tmp_path / "nbd.sock") as server:
        s = Storage()
        node = s.blockdev_add(_nbd_node(server), typed=True)
        try:
            assert node.size() == 4 * M
            assert node.filename() == server.uri
            hole = STATUS_HOLE | STATUS_ZERO
            assert node.block_status(0, 256 * K) == [(64 * K, hole), (64 * K, 0), (128 * K, hole)]
            assert _read(node, 64 * K, 8192) == b"\x5a" * 8192
            assert node.pwritev([memoryview(b"ab"), memoryview(b"cd")], 8) == 4
            node.write_zeroes(64 * K, 4096, unmap=True)
            node.flush()
            assert _read(node, 0, 16) == bytes(8) + b"abcd" + bytes(4)
            # A read across the end stops at it; a write past it fails.
            assert node.preadv([memoryview(bytearray(8192))], 4 * M - 4096) == 4096
            with pytest.raises(OSError) as info:
                node.pwritev([memoryview(b"x")], 4 * M)
            assert info.value.errno == errno.ENOSPC
            assert s.query_named_block_nodes()[0]["drv"] == "nbd"
        finally:
            s.blockdev_del("n0")
    qemu_io(qcow2, "read -P 0 64k 4k", "read -P 0x61 8 1")


def test_read_only_export_needs_read_only(qcow2: Path, tmp_path: Path) -> None:
    with qemu_nbd(qcow2, tmp_path / "nbd.sock", extra=["-r"]) as server:
        s = Storage()
        with pytest.raises(BlockError, match="read-only=on"):
            s.blockdev_add(_nbd_node(server), typed=True)
        node = s.blockdev_add(_nbd_node(server, **{"read-only": True}), typed=True)
        assert _read(node, 64 * K, 2) == b"\x5a\x5a"
        s.blockdev_del("n0")


def test_open_timeout_waits_for_the_server(qcow2: Path, tmp_path: Path) -> None:
    server = QemuNbd(qcow2, tmp_path / "nbd.sock")
    s = Storage()
    with pytest.raises(BlockError, match="Failed to connect"):
        s.blockdev_add(_nbd_node(server), typed=True)  # open-timeout 0: one attempt
    starter = threading.Timer(0.5, server.start)
    starter.start()
    try:
        node = s.blockdev_add(_nbd_node(server, **{"open-timeout": 10}), typed=True)
        assert _read(node, 64 * K, 2) == b"\x5a\x5a"
        s.blockdev_del("n0")
    finally:
        starter.join()
        server.stop()


_UNIX = {"type": "unix", "path": "p"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "Parameter 'server' is missing"),
        ({"server": {"type": "vsock"}}, "Parameter 'server.type' does not accept value 'vsock'"),
        ({"server": {"type": "unix"}}, "Parameter 'server.path' is missing"),
        ({"server": {"type": "inet", "host": "h"}}, "Parameter 'server.port' is missing"),
        ({"server": {**_UNIX, "x": "1"}}, "Parameter 'server.x' is unexpected"),
        ({"server": _UNIX, "x-dirty-bitmap": "b"}, "Parameter 'x-dirty-bitmap' is unexpected"),
        ({"server": _UNIX, "reconnect-delay": -1}, "Parameter 'reconnect-delay' expects a value"),
        ({"server": _UNIX, "open-timeout": "1"}, "Invalid parameter type for 'open-timeout'"),
    ],
)
def test_refusals(args: dict[str, Any], message: str) -> None:
    with pytest.raises(BlockError, match=message):
        Storage(dry=True).blockdev_add({"driver": "nbd", "node-name": "n", **args}, typed=True)


def test_qcow2_refusal_names_the_nbd_route() -> None:
    with pytest.raises(BlockError, match="serve it with qemu-nbd and use driver=nbd"):
        Storage(dry=True).blockdev_add({"driver": "qcow2", "node-name": "n"}, typed=True)


def test_tls_creds_must_name_client_credentials(tmp_path: Path) -> None:
    make_credentials_dir(tmp_path)
    objects = {
        "srv": X509Credentials(tmp_path, "server"),
        "cli": X509Credentials(tmp_path, "client"),
    }
    s = Storage(objects={**objects, "authz0": object()})
    base = {"driver": "nbd", "node-name": "n", "server": {"type": "unix", "path": "p"}}
    for creds, message in [
        ("nope", "No TLS credentials with id 'nope'"),
        ("authz0", "Object with id 'authz0' is not TLS credentials"),
        ("srv", "Expecting TLS credentials with a client endpoint: set endpoint=client on 'srv'"),
        ("cli", "Parameter 'tls-hostname' is missing"),
    ]:
        with pytest.raises(BlockError, match=re.escape(message)):
            s.blockdev_add({**base, "tls-creds": creds}, typed=True)
    assert not s.nodes


def test_reexported_over_nbd_by_the_daemon(qcow2: Path, tmp_path: Path) -> None:
    """qcow2 → qemu-nbd → driver=nbd node → the daemon's NBD export → qemu-img, our client."""
    again = tmp_path / "again.sock"
    with qemu_nbd(qcow2, tmp_path / "nbd.sock") as server:
        node = f"driver=nbd,node-name=n0,server.type=unix,server.path={server.sock},export=disk"
        argv = [
            "--blockdev", node,
            "--nbd-server", f"addr.type=unix,addr.path={again}",
            "--export", "type=nbd,id=e0,node-name=n0,name=again",
        ]  # fmt: skip
        with _daemon(tmp_path, *argv):
            uri = f"nbd+unix:///again?socket={again}"
            qemu_img("compare", "-U", "-f", "raw", "-F", "qcow2", uri, str(qcow2))
            with NbdClient.connect(f"unix:{again}", "again") as nbd:
                assert nbd.read_only
                status = nbd.block_status(0, 256 * K)
    hole = Allocation.HOLE | Allocation.ZERO
    assert status == [
        Allocation(0, 64 * K, hole),
        Allocation(64 * K, 64 * K, 0),
        Allocation(128 * K, 128 * K, hole),
    ]
