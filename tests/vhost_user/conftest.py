"""Fixtures: a vhost-user-blk export served from a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from iochannel import UnixAddress
from iochannel.block import open_file
from iochannel.vhost_user.blk import BlkDevice
from iochannel.vhost_user.frontend import QEMU_SEALS, Frontend
from iochannel.vhost_user.server import VhostUserServer

IMAGE_SIZE = 16 << 20


@dataclass
class Export:
    server: VhostUserServer
    device: BlkDevice
    socket: str
    image: Path
    loop: asyncio.AbstractEventLoop
    #: Seals of the front-ends' guest RAM: with QEMU's, the back-end maps it;
    #: without sealing (None) it reaches it through system calls.
    seals: int | None = QEMU_SEALS

    def connect(self, timeout: float = 10.0) -> Frontend:
        return Frontend(self.socket, timeout=timeout, seals=self.seals)


def _serve(
    tmp_path: Path, *, writable: bool = True, num_queues: int = 2, logical_block_size: int = 512
) -> Iterator[Export]:
    image = tmp_path / "disk.img"
    if not image.exists():
        with open(image, "wb") as f:
            f.truncate(IMAGE_SIZE)
    node = open_file(str(image), read_only=not writable)
    dev = BlkDevice(
        node, writable=writable, num_queues=num_queues, logical_block_size=logical_block_size
    )
    sock = str(tmp_path / "vub.sock")
    server = VhostUserServer.listen(dev, UnixAddress(sock))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),))
    thread.start()
    try:
        yield Export(server, dev, sock, image, loop)
    finally:
        server.close()
        thread.join()
        loop.close()
        node.close()


@pytest.fixture(params=[QEMU_SEALS, None], ids=["sealed", "unsealed"])
def export(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Export]:
    """A writable 2-queue export of a 16 MiB zeroed image, for front-ends with
    sealed and with unsealed guest RAM."""
    for exp in _serve(tmp_path):
        exp.seals = request.param
        yield exp


@pytest.fixture
def make_export(tmp_path: Path) -> Iterator[Callable[..., Export]]:
    """Factory for exports with other options (one per test)."""
    gens: list[Iterator[Export]] = []

    def make(**kw: Any) -> Export:
        gen = _serve(tmp_path, **kw)
        gens.append(gen)
        return next(gen)

    yield make
    for gen in gens:
        for _ in gen:
            pass
