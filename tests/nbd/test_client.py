"""The NBD client against real servers: qemu-nbd on qcow2 images, qemu-storage-daemon."""

from __future__ import annotations

import asyncio
import errno
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from iochannel import TLSError
from iochannel.crypto import PSKCredentials, X509Credentials
from iochannel.crypto.certs import make_credentials_dir
from iochannel.crypto.psk import psk_supported
from iochannel.nbd.client import Allocation, AsyncNbdClient, NbdClient, NbdError
from tests.conftest import require_tool

from .client_peers import QemuNbd, free_port, make_qcow2, qemu_img, qemu_io, qemu_nbd, qsd_nbd

K = 1024
M = 1024 * K


@pytest.fixture
def qcow2(tmp_path: Path) -> Path:
    """4 MiB: 0x5a at 64 KiB..128 KiB, 0xa5 at 1 MiB..1 MiB+4 KiB, the rest unallocated."""
    return make_qcow2(tmp_path / "disk.qcow2", "4M", "write -P 0x5a 64k 64k", "write -P 0xa5 1M 4k")


def test_read_what_qemu_io_wrote(qcow2: Path, tmp_path: Path) -> None:
    with (
        qemu_nbd(qcow2, tmp_path / "nbd.sock") as server,
        NbdClient.connect(server.address, "disk") as nbd,
    ):
        assert nbd.size == 4 * M
        assert nbd.export == "disk"
        assert not nbd.read_only
        data = nbd.read(0, 2 * M)
    assert data[: 64 * K] == bytes(64 * K)
    assert data[64 * K : 128 * K] == b"\x5a" * (64 * K)
    assert data[128 * K : M] == bytes(M - 128 * K)
    assert data[M : M + 4 * K] == b"\xa5" * (4 * K)
    assert data[M + 4 * K :] == bytes(M - 4 * K)


def test_writes_land_in_the_qcow2(qcow2: Path, tmp_path: Path) -> None:
    reference = tmp_path / "expected.raw"
    subprocess.run(
        [
            require_tool("qemu-img"),
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            str(qcow2),
            str(reference),
        ],
        check=True,
    )
    ops: list[tuple[int, bytes]] = [(0, b"boot" * 128), (3 * M - 100, b"\x01" * 300)]
    with (
        qemu_nbd(qcow2, tmp_path / "nbd.sock") as server,
        NbdClient.connect(server.address, "disk") as nbd,
    ):
        for offset, data in ops:
            nbd.write(data, offset)
        nbd.write(b"durable", 2 * M, fua=True)
        nbd.write_zeroes(64 * K, 4 * K)
        nbd.flush()
    with open(reference, "r+b") as f:
        for offset, data in [*ops, (2 * M, b"durable"), (64 * K, bytes(4 * K))]:
            f.seek(offset)
            f.write(data)
    qemu_img("compare", "-f", "qcow2", "-F", "raw", str(qcow2), str(reference))
    qemu_io(qcow2, "read -P 0 64k 4k", "read -P 0x5a 68k 60k")


def test_asyncio_requests_in_flight_together(qcow2: Path, tmp_path: Path) -> None:
    async def main(address: str) -> list[bytes]:
        async with await AsyncNbdClient.connect(address, "disk") as nbd:
            writes = [nbd.write(bytes([i]) * 4096, i * 8192) for i in range(1, 33)]
            await asyncio.gather(*writes)
            reads = [nbd.read(i * 8192, 4096) for i in range(1, 33)]
            return await asyncio.gather(*reads)

    with qemu_nbd(qcow2, tmp_path / "nbd.sock") as server:
        results = asyncio.run(main(server.address))
    assert results == [bytes([i]) * 4096 for i in range(1, 33)]


def test_qemu_storage_daemon_export(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\x11" * (2 * M))
    with (
        qsd_nbd(image, tmp_path / "qsd.sock") as address,
        NbdClient.connect(address, "disk") as nbd,
    ):
        assert (nbd.size, nbd.can_flush, nbd.can_fua, nbd.can_trim) == (2 * M, True, True, True)
        assert nbd.can_write_zeroes and nbd.can_multi_conn
        nbd.write(b"qsd!", 512, fua=True)
        nbd.trim(M, 64 * K)
        nbd.write_zeroes(4096, 4096, no_hole=True)
        nbd.flush()
        assert nbd.read(512, 4) == b"qsd!"
        assert nbd.read(4096, 4096) == bytes(4096)
        with pytest.raises(OSError) as info:
            nbd.read(2 * M - 512, 1024)  # past the end: QEMU answers EINVAL
        assert info.value.errno == errno.EINVAL
        assert isinstance(info.value, NbdError)
        assert nbd.read(0, 4) == b"\x11" * 4  # the connection survives a refusal
    data = image.read_bytes()
    assert data[512:516] == b"qsd!" and data[4096:8192] == bytes(4096)


def test_large_requests_are_split_and_read_whole(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(48 * M)
    data = random.Random(7).randbytes(40 * M)  # over the 32 MiB a request may carry

    async def main(address: str) -> list[bytes]:
        async with await AsyncNbdClient.connect(address, "disk") as nbd:
            assert nbd.info.max_block == 32 * M
            await nbd.write(data, M)
            reads = [nbd.read(M + i * 5 * M, 5 * M) for i in range(8)]
            return await asyncio.gather(nbd.read(M, len(data)), *reads)

    with qsd_nbd(image, tmp_path / "qsd.sock") as address:
        whole, *parts = asyncio.run(main(address))
        with NbdClient.connect(address, "disk") as nbd:
            assert nbd.read(M, len(data)) == data
    assert whole == data and b"".join(parts) == data
    with open(image, "rb") as f:
        f.seek(M)
        assert f.read(len(data)) == data


def test_list_exports(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(M))
    extra = ["-D", "the description"]
    with qemu_nbd(image, tmp_path / "qn.sock", export="named", fmt="raw", extra=extra) as server:
        assert NbdClient.list_exports(server.address) == [("named", "the description")]
        with NbdClient.connect(server.address, "named") as nbd:
            assert nbd.description == "the description"
        with pytest.raises(NbdError, match="'nothere'"):
            NbdClient.connect(server.address, "nothere")


def test_block_status_of_a_sparse_image(qcow2: Path, tmp_path: Path) -> None:
    with (
        qemu_nbd(qcow2, tmp_path / "nbd.sock") as server,
        NbdClient.connect(server.address, "disk") as nbd,
    ):
        extents = nbd.block_status(0, 2 * M)
    hole = Allocation.HOLE | Allocation.ZERO
    assert extents[:4] == [
        Allocation(0, 64 * K, hole),
        Allocation(64 * K, 64 * K, 0),
        Allocation(128 * K, M - 128 * K, hole),
        Allocation(M, 64 * K, 0),  # qemu-io wrote 4 KiB: the whole 64 KiB cluster is data
    ]
    assert all(e.hole for e in extents[4:])
    assert extents[0].zero and not extents[1].hole


def test_inet_and_request_errors(qcow2: Path, tmp_path: Path) -> None:
    port = free_port()
    with qemu_nbd(qcow2, tmp_path / "nbd.sock", port=port, extra=["-r"]) as server:
        assert server.address == f"127.0.0.1:{port}"
        with NbdClient.connect(server.address, "disk") as nbd:
            assert nbd.read_only
            with pytest.raises(OSError) as info:
                nbd.write(b"x", 0)
            assert info.value.errno in (errno.EPERM, errno.EINVAL)
            assert nbd.read(64 * K, 2) == b"\x5a\x5a"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    make_credentials_dir(tmp_path / "pki")
    return tmp_path / "pki"


def _tls_args(pki: Path, kind: str = "x509") -> list[str]:
    return [
        "--object", f"tls-creds-{kind},id=tls0,endpoint=server,dir={pki}",
        "--tls-creds", "tls0",
    ]  # fmt: skip


def test_tls_x509(qcow2: Path, pki: Path, tmp_path: Path) -> None:
    creds = X509Credentials(pki, "client")
    with (
        qemu_nbd(qcow2, tmp_path / "nbd.sock", extra=_tls_args(pki)) as server,
        NbdClient.connect(server.address, "disk", tls=creds, tls_hostname="localhost") as nbd,
    ):
        assert nbd.read(64 * K, 4) == b"\x5a" * 4
        nbd.write(b"tls", 0)
        assert NbdClient.list_exports(server.address, tls=creds, tls_hostname="localhost") == [
            ("disk", "")
        ]
        with pytest.raises(NbdError, match="TLS"):
            NbdClient.connect(server.address, "disk")  # the server requires TLS
        with pytest.raises(TLSError, match="Hostname mismatch"):
            NbdClient.connect(server.address, "disk", tls=creds, tls_hostname="elsewhere")
    qemu_io(qcow2, "read -P 0x74 0 1")


@pytest.mark.skipif(not psk_supported(), reason="TLS-PSK needs Python 3.13")
def test_tls_psk(qcow2: Path, tmp_path: Path) -> None:
    keys = tmp_path / "psk"
    keys.mkdir()
    (keys / "keys.psk").write_text("qemu:" + "0123456789abcdef" * 4 + "\n")
    creds = PSKCredentials(keys, "client")
    with (
        qemu_nbd(qcow2, tmp_path / "nbd.sock", extra=_tls_args(keys, "psk")) as server,
        NbdClient.connect(server.address, "disk", tls=creds) as nbd,
    ):
        assert nbd.read(64 * K, 1) == b"\x5a"


def test_reconnect_within_the_delay_completes_the_read(qcow2: Path, tmp_path: Path) -> None:
    server = QemuNbd(qcow2, tmp_path / "nbd.sock").start()

    async def main() -> bytes:
        async with await AsyncNbdClient.connect(server.address, "disk", reconnect_delay=10) as nbd:
            assert await nbd.read(64 * K, 4) == b"\x5a" * 4
            server.stop(signal.SIGKILL)
            pending = asyncio.ensure_future(nbd.read(64 * K, 8))
            await asyncio.sleep(0.5)
            assert not pending.done()  # waits for the server to come back
            await asyncio.to_thread(server.start)
            return await asyncio.wait_for(pending, 10)

    try:
        assert asyncio.run(main()) == b"\x5a" * 8
    finally:
        server.stop()


def test_the_blocking_client_reconnects_too(qcow2: Path, tmp_path: Path) -> None:
    server = QemuNbd(qcow2, tmp_path / "nbd.sock").start()
    try:
        with NbdClient.connect(server.address, "disk", reconnect_delay=10) as nbd:
            assert nbd.read(64 * K, 4) == b"\x5a" * 4
            server.stop(signal.SIGKILL)
            # The read waits for qemu-nbd to come back, then completes.
            restart = threading.Timer(0.5, server.start)
            restart.start()
            start = time.monotonic()
            assert nbd.read(64 * K, 8) == b"\x5a" * 8
            restart.join()
            assert time.monotonic() - start >= 0.5
            assert nbd.connected
    finally:
        server.stop()


def test_reconnect_delay_passed_fails_with_eio(qcow2: Path, tmp_path: Path) -> None:
    server = QemuNbd(qcow2, tmp_path / "nbd.sock").start()

    async def main() -> float:
        async with await AsyncNbdClient.connect(server.address, "disk", reconnect_delay=1) as nbd:
            server.stop(signal.SIGKILL)
            start = time.monotonic()
            with pytest.raises(OSError) as info:
                await asyncio.wait_for(nbd.read(0, 512), 10)
            assert info.value.errno == errno.EIO
            waited = time.monotonic() - start
            with pytest.raises(OSError):  # no server yet: fails at once
                await asyncio.wait_for(nbd.read(0, 512), 0.5)
            await asyncio.to_thread(server.start)
            assert await asyncio.wait_for(nbd.read(64 * K, 1), 10) == b"\x5a"
            return waited

    try:
        assert 0.9 <= asyncio.run(main()) < 5
    finally:
        server.stop()


def test_without_reconnect_a_lost_server_fails_the_request(qcow2: Path, tmp_path: Path) -> None:
    with qemu_nbd(qcow2, tmp_path / "nbd.sock") as server:
        nbd = NbdClient.connect(server.address, "disk")
        server.stop(signal.SIGKILL)
        with nbd, pytest.raises(OSError) as info:
            nbd.read(0, 512)
        assert info.value.errno == errno.EIO


def test_closing_while_reconnecting(qcow2: Path, tmp_path: Path) -> None:
    server = QemuNbd(qcow2, tmp_path / "nbd.sock").start()

    async def main() -> None:
        nbd = await AsyncNbdClient.connect(server.address, "disk", reconnect_delay=30)
        server.stop(signal.SIGKILL)
        pending = asyncio.ensure_future(nbd.read(0, 512))
        await asyncio.sleep(0.3)
        await nbd.aclose()
        with pytest.raises(NbdError, match="closed while reconnecting"):
            await asyncio.wait_for(pending, 5)

    try:
        asyncio.run(main())
    finally:
        server.stop()
