"""The socket address keys of ``--nbd-server addr.*`` and ``driver=nbd,server.*``.

``abstract``/``tight`` (abstract unix sockets), ``ipv4``/``ipv6`` (one family
only) and ``keep-alive`` (SO_KEEPALIVE) are applied, checked against
qemu-storage-daemon and qemu-img as peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iochannel import InetAddress
from iochannel.block.options import BlockError
from iochannel.nbd.service import NbdService
from tests.conftest import iochannel_process, require_tool, wait_for_file
from tests.nbd.test_server_peers import make_image, run


@contextlib.contextmanager
def qsd(*argv: str, pidfile: Path) -> Iterator[None]:
    cmd = [require_tool("qemu-storage-daemon"), *argv, "--pidfile", str(pidfile)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    try:
        wait_for_file(pidfile, proc)
        yield
    finally:
        proc.terminate()
        proc.wait(30)
        assert proc.stderr is not None
        proc.stderr.close()


def test_abstract_unix_sockets(tmp_path: Path) -> None:
    """qsd serves on an abstract socket; our node reads it and serves it on another (padded)."""
    image = make_image(tmp_path / "disk.img")
    theirs, ours = f"iochannel-test-{os.getpid()}-qsd", f"iochannel-test-{os.getpid()}-ours"
    with (
        qsd(
            "--blockdev", f"driver=file,node-name=f0,filename={image}",
            "--nbd-server", f"addr.type=unix,addr.path={theirs},addr.abstract=on",
            "--export", "type=nbd,id=e0,node-name=f0,name=disk",
            pidfile=tmp_path / "qsd.pid",
        ),
        iochannel_process(
            tmp_path / "ours.pid",
            "--blockdev",
            f"driver=nbd,node-name=n0,server.type=unix,server.path={theirs},"
            "server.abstract=on,export=disk,read-only=on",
            "--nbd-server", f"addr.type=unix,addr.path={ours},addr.abstract=on,addr.tight=off",
            "--export", "type=nbd,id=e0,node-name=n0,name=again",
        ),
    ):  # fmt: skip
        assert not (tmp_path / ours).exists() and not Path(ours).exists()  # no file made
        padded = f"driver=nbd,server.type=unix,server.path={ours},server.abstract=on,export=again"
        run(
            "qemu-img",
            "compare",
            "--image-opts",
            f"{padded},server.tight=off",
            f"file.filename={image},driver=raw",
        )
        # Bound padded, the name is not found unpadded.
        proc = run("qemu-img", "info", "--image-opts", padded, check=False)
        assert proc.returncode != 0 and "Connection refused" in proc.stderr


def serve(addr: dict[str, Any], check: Any) -> None:
    """Start an NBD service listening on *addr* (a flat SocketAddress), run *check(service)*."""

    async def main() -> None:
        service = NbdService({})
        service.start({"addr": addr}, typed=True, legacy=False)
        try:
            await check(service)
        finally:
            await service.stop()

    asyncio.run(main())


def test_families() -> None:
    def families(**keys: bool) -> set[int]:
        found: set[int] = set()

        async def check(service: NbdService) -> None:
            assert service.server is not None
            for a in service.server.local_addresses:
                assert isinstance(a, InetAddress)
                found.add(socket.AF_INET6 if ":" in a.host else socket.AF_INET)

        # No host: every local address, of both families unless one is chosen.
        serve({"type": "inet", "host": "", "port": "0", **keys}, check)
        return found

    if families() != {socket.AF_INET, socket.AF_INET6}:
        pytest.skip("this machine does not listen on IPv4 and IPv6")
    assert families(ipv4=True) == families(ipv6=False) == {socket.AF_INET}
    assert families(ipv6=True) == families(ipv4=False) == {socket.AF_INET6}


def test_both_families_off_is_refused_as_qsd_does(tmp_path: Path) -> None:
    option = "addr.type=inet,addr.host=localhost,addr.port=10809,addr.ipv4=off,addr.ipv6=off"
    theirs = run("qemu-storage-daemon", "--nbd-server", option, check=False)
    with pytest.raises(BlockError) as refused:
        serve(
            {"type": "inet", "host": "localhost", "port": "0", "ipv4": False, "ipv6": False}, None
        )
    assert theirs.stderr.strip().endswith(f": {refused.value}")
    ours = subprocess.run(
        [sys.executable, "-m", "iochannel", "--check", "--nbd-server", option],
        capture_output=True,
        text=True,
    )
    assert ours.returncode == 1
    assert ours.stderr.strip().endswith(f": {refused.value}")


def test_keep_alive_on_accepted_connections() -> None:
    async def check(service: NbdService) -> None:
        assert service.server is not None
        (addr,) = service.server.local_addresses
        assert isinstance(addr, InetAddress)
        reader, writer = await asyncio.open_connection(addr.host, int(addr.port))
        await reader.readexactly(18)  # the greeting: the server accepted us
        shown = await asyncio.to_thread(
            run, "ss", "-tnoH", "state", "established", f"sport = :{addr.port}"
        )
        writer.close()
        await writer.wait_closed()
        assert "keepalive" in shown.stdout, shown.stdout

    serve({"type": "inet", "host": "127.0.0.1", "port": "0", "keep-alive": True}, check)
