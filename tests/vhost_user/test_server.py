"""Server life cycle: moving between loops and threads, reconnects, teardown."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from iochannel.vhost_user import blk
from iochannel.vhost_user.frontend import DATA_BASE, DriverQueue, Frontend, Segment
from iochannel.vhost_user.protocol import Request, encode_request

from .conftest import Export


@contextmanager
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="loop-b")
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def read_sector(fe: Frontend, sector: int) -> bytes:
    q = fe.queues[0]
    hdr, buf, st = DATA_BASE, DATA_BASE + 0x1000, DATA_BASE + 0x2000
    fe.write(hdr, struct.pack("<IIQ", blk.T_IN, 0, sector))
    q.add_chain([Segment(hdr, 16), Segment(buf, 512, True), Segment(st, 1, True)])
    q.notify()
    q.wait_used()
    assert fe.read(st, 1) == b"\0"
    return fe.read(buf, 512)


def test_move_between_loops_while_connected(export: Export) -> None:
    with open(export.image, "r+b") as f:
        f.write(b"SECTOR-0")
    with export.connect() as fe, loop_thread() as loop_b:
        fe.start(1)
        # Half a message is in the reader when the loop is parked.
        request = encode_request(Request.GET_QUEUE_NUM)
        fe.send(request[:5])
        export.server.detach()
        fe.send(request[5:])
        # Queues are served by worker threads, not by the loop: I/O goes on.
        assert read_sector(fe, 0)[:8] == b"SECTOR-0"
        export.server.attach(loop_b)
        assert fe.read_reply() == (Request.GET_QUEUE_NUM, 5, struct.pack("<Q", 2))
        assert fe.call_u64(Request.GET_FEATURES) != 0
        # And back to the server's own loop, detaching from a wait this time.
        export.server.detach()
        export.server.attach(export.loop)
        assert fe.call_u64(Request.GET_QUEUE_NUM) == 2
        assert read_sector(fe, 0)[:8] == b"SECTOR-0"


def test_close_while_detached(export: Export) -> None:
    with export.connect() as fe:
        fe.start(1)
        export.server.detach()
        export.server.close()
        assert fe.disconnected()


def test_reconnect_keeps_serving(export: Export) -> None:
    for _ in range(3):
        with export.connect() as fe:
            fe.start(2)
            assert read_sector(fe, 1) == bytes(512)
            assert fe.stop() == [1, 0]


def test_restart_resumes_ring_state(export: Export) -> None:
    """Like QEMU after a reconnect: used.idx is taken from guest memory."""
    with export.connect() as fe:
        fe.start(1)
        read_sector(fe, 0)
        read_sector(fe, 0)
        q = fe.queues[0]
        assert q.used_idx() == 2
        fe.reconnect(export.socket)
        fe.negotiate()
        fe.add_memory()
        q.configure(base=2)
        fe.request(Request.SET_VRING_ENABLE, struct.pack("<II", 0, 1))
        assert read_sector(fe, 0) == read_sector(fe, 0)
        assert q.used_idx() == 4


def test_kick_before_enable_is_not_lost(export: Export) -> None:
    """QEMU 7.2 does not wait for SET_VRING_ENABLE to be processed before the
    guest kicks; the ring is re-scanned when it is enabled."""
    with export.connect() as fe:
        fe.negotiate()
        fe.add_memory()
        q = DriverQueue(fe, 0, 64)
        fe.queues.append(q)
        q.configure()
        hdr, buf, st = DATA_BASE, DATA_BASE + 0x1000, DATA_BASE + 0x2000
        fe.write(hdr, struct.pack("<IIQ", blk.T_IN, 0, 0))
        q.add_chain([Segment(hdr, 16), Segment(buf, 512, True), Segment(st, 1, True)])
        q.notify()
        # Disabled rings are not processed...
        assert fe.call_u64(Request.GET_QUEUE_NUM) == 2
        assert q.used_idx() == 0
        # ...until enabled.
        fe.request(Request.SET_VRING_ENABLE, struct.pack("<II", 0, 1))
        assert q.wait_used() == [(0, 513)]
