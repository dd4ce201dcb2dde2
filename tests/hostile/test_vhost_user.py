"""A vhost-user front-end that shrinks guest memory cannot fault the daemon.

Guest RAM mapped from a file faults (SIGBUS) the process touching it once the
file is truncated.  The export maps only memory sealed against shrinking and
reaches other memory through system calls, so a front-end that truncates its
RAM and kicks loses its own connection, the log says why, and the next
front-end and every chardev are served as before.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from pathlib import Path

import pytest

from iochannel.vhost_user.frontend import DATA_BASE, QEMU_SEALS, DriverQueue, Frontend, Segment
from iochannel.vhost_user.protocol import ProtocolFeature, Region, Request, pack_region

from .conftest import Daemon

IMAGE_SIZE = 1 << 20
HDR = DATA_BASE
BUF = DATA_BASE + 0x1000
STATUS = DATA_BASE + 0x2000
SECTOR = 8


def image_bytes(offset: int, n: int) -> bytes:
    return bytes((offset + i) * 7 % 251 for i in range(n))


def start_daemon(hostile_daemon: object, tmp_path: Path) -> Daemon:
    """An export of a patterned image and two socket chardevs relayed to each other."""
    image = tmp_path / "disk.img"
    image.write_bytes(image_bytes(0, IMAGE_SIZE))
    d: Daemon = hostile_daemon(  # type: ignore[operator]
        *("--blockdev", f"driver=file,node-name=f0,filename={image}"),
        "--export",
        "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,"
        f"addr.path={tmp_path / 'vub.sock'},writable=on",
        *("-chardev", f"socket,id=a,path={tmp_path / 'a.sock'},server=on,wait=off"),
        *("-chardev", f"socket,id=b,path={tmp_path / 'b.sock'},server=on,wait=off"),
        *("--relay", "chardev=a,peer=b"),
    )
    return d


def queue_read(fe: Frontend, q: DriverQueue) -> None:
    """Place a 4 KiB read of SECTOR in the ring, without kicking."""
    fe.write(HDR, struct.pack("<IIQ", 0, 0, SECTOR))
    fe.write(STATUS, b"\xff")
    q.add_chain([Segment(HDR, 16), Segment(BUF, 4096, True), Segment(STATUS, 1, True)])


def read_and_check(fe: Frontend) -> None:
    q = fe.queues[0]
    queue_read(fe, q)
    q.notify()
    q.wait_used(1)
    assert fe.read(STATUS, 1) == b"\0"
    assert fe.read(BUF, 4096) == image_bytes(SECTOR * 512, 4096)


def assert_relay_works(tmp_path: Path) -> None:
    with (
        socket.socket(socket.AF_UNIX) as a,
        socket.socket(socket.AF_UNIX) as b,
    ):
        a.settimeout(10)
        b.settimeout(10)
        a.connect(str(tmp_path / "a.sock"))
        b.connect(str(tmp_path / "b.sock"))
        # The relay forwards once both ends are connected; resend until it does.
        got = b""
        for _ in range(100):
            a.sendall(b"ping")
            b.settimeout(0.1)
            try:
                got += b.recv(100)
            except TimeoutError:
                continue
            break
        assert got.startswith(b"ping")
        b.settimeout(10)
        b.sendall(b"pong")
        assert a.recv(100) == b"pong"


@pytest.mark.parametrize(
    "seals", [QEMU_SEALS, 0], ids=["sealed-by-the-front-end", "sealed-by-the-back-end"]
)
def test_sealed_guest_memory_cannot_shrink(
    hostile_daemon: object, tmp_path: Path, seals: int
) -> None:
    d = start_daemon(hostile_daemon, tmp_path)
    with Frontend(str(tmp_path / "vub.sock"), seals=seals) as fe:
        fe.start()
        queue_read(fe, fe.queues[0])
        with pytest.raises(OSError) as exc:
            os.ftruncate(fe.memfd, 0)
        assert exc.value.errno == errno.EPERM
        fe.queues[0].notify()
        fe.queues[0].wait_used(1)
        assert fe.read(BUF, 4096) == image_bytes(SECTOR * 512, 4096)
        read_and_check(fe)
    d.assert_alive()
    assert "ending connection" not in d.log()


def test_unsealed_guest_memory_that_shrinks_ends_only_its_connection(
    hostile_daemon: object, tmp_path: Path
) -> None:
    d = start_daemon(hostile_daemon, tmp_path)
    sock = str(tmp_path / "vub.sock")
    with Frontend(sock, seals=None) as fe:
        fe.start()
        queue_read(fe, fe.queues[0])
        os.ftruncate(fe.memfd, 0)
        # From here this process must not touch fe.mem either: it would fault.
        fe.queues[0].notify()
        assert fe.disconnected()
    d.wait_log("e0: ending connection: ")
    # One line names the export and the reason.
    lines = [x for x in d.log().splitlines() if "shrank" in x]
    assert len(lines) == 1, lines
    assert "e0: ending connection: queue 0: guest memory region shrank" in lines[0]
    d.assert_alive()
    for seals in (None, QEMU_SEALS):
        with Frontend(sock, seals=seals) as fe:
            fe.start()
            read_and_check(fe)
    assert_relay_works(tmp_path)


def test_unsealed_hugetlbfs_memory_is_refused(hostile_daemon: object, tmp_path: Path) -> None:
    try:
        huge = os.memfd_create("huge", os.MFD_CLOEXEC | os.MFD_HUGETLB)
    except OSError as exc:
        pytest.skip(f"no hugetlbfs memfd: {exc}")
    try:
        os.ftruncate(huge, 2 << 20)
        d = start_daemon(hostile_daemon, tmp_path)
        with Frontend(str(tmp_path / "vub.sock")) as fe:
            fe.negotiate()
            assert fe.protocol & ProtocolFeature.REPLY_ACK
            region = pack_region(Region(0, 2 << 20, 0x7000_0000_0000, 0))
            assert fe.ack(Request.ADD_MEM_REG, region, [huge]) == 1
            assert fe.call_u64(Request.GET_FEATURES) != 0  # the connection goes on
        d.wait_log("e0: ADD_MEM_REG failed: memory fd is not sealed against shrinking")
        assert_relay_works(tmp_path)
    finally:
        os.close(huge)
