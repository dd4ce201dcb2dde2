"""``iothread-vq-mapping``: each virtqueue of an export served on its iothread's loop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iochannel.block import BlockError
from iochannel.vhost_user import blk
from iochannel.vhost_user.blk import BlkDevice
from iochannel.vhost_user.frontend import Frontend
from iochannel.vhost_user.virtqueue import Virtqueue
from tests.block.test_resize import Daemon
from tests.vhost_user.test_blk import submit


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon()
    try:
        for id in ("io0", "io1", "io2"):
            d.run(lambda id=id: d.storage.iothread_add({"id": id}, typed=True))
        image = tmp_path / "disk.img"
        image.write_bytes(bytes(1 << 20))
        args = {"driver": "file", "node-name": "f0", "filename": str(image)}
        d.run(lambda: d.storage.blockdev_add(args, typed=True))
        yield d
    finally:
        d.close()


def _add(d: Daemon, tmp_path: Path, typed: bool = True, **extra: Any) -> str:
    sock = str(tmp_path / "vub.sock")
    args = {
        "type": "vhost-user-blk",
        "id": "e0",
        "node-name": "f0",
        "writable": True,
        "addr": {"type": "unix", "path": sock},
        **extra,
    }
    d.run(lambda: d.storage.export_add(args, typed=typed))
    return sock


def _served_by(monkeypatch: pytest.MonkeyPatch) -> dict[int, set[str]]:
    """Records which thread runs handle_queue for each queue index."""
    seen: dict[int, set[str]] = {}
    original = BlkDevice.handle_queue

    def spy(self: BlkDevice, vq: Virtqueue, thread_id: int) -> None:
        seen.setdefault(vq.index, set()).add(threading.current_thread().name)
        original(self, vq, thread_id)

    monkeypatch.setattr(BlkDevice, "handle_queue", spy)
    return seen


def test_each_queue_runs_on_its_iothread(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _served_by(monkeypatch)
    mapping = [{"iothread": "io1", "vqs": [0, 2]}, {"iothread": "io2", "vqs": [1]}]
    sock = _add(
        daemon, tmp_path, iothread="io0", **{"num-queues": 3, "iothread-vq-mapping": mapping}
    )
    with Frontend(sock) as fe:
        fe.start(3)
        for q in fe.queues:
            payload = bytes([q.index + 1]) * 512
            assert submit(fe, q, blk.T_OUT, q.index, out=payload)[0] == blk.S_OK
            assert submit(fe, q, blk.T_IN, q.index, in_len=512)[:2] == (blk.S_OK, payload)
        fe.stop()
    assert seen == {0: {"iothread-io1"}, 1: {"iothread-io2"}, 2: {"iothread-io1"}}
    # An iothread that serves a queue cannot go while the export is there.
    for id in ("io0", "io1", "io2"):
        with pytest.raises(BlockError, match=f"object '{id}' is in use by export 'e0'"):
            daemon.run(lambda id=id: daemon.storage.iothread_del(id))
    daemon.run(lambda: daemon.storage.export_del("e0"))
    daemon.run(lambda: daemon.storage.iothread_del("io2"))


def test_keyval_round_robin_and_reconnect(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _served_by(monkeypatch)
    keyval = {
        "num-queues": "4",
        "iothread-vq-mapping": {"0": {"iothread": "io1"}, "1": {"iothread": "io2"}},
    }
    sock = _add(daemon, tmp_path, typed=False, **keyval)
    for _ in range(2):  # the second connection gets fresh queue tasks
        with Frontend(sock) as fe:
            fe.start(4)
            for q in fe.queues:
                assert submit(fe, q, blk.T_IN, 0, in_len=512)[0] == blk.S_OK
    assert seen == {i: {f"iothread-io{1 + i % 2}"} for i in range(4)}


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ([{"iothread": "nope"}], 'IOThread "nope" object does not exist'),
        ([{"iothread": "io1"}, {"iothread": "io1"}], 'duplicate IOThread name "io1"'),
        ([{"iothread": "io1", "vqs": [0]}, {"iothread": "io2"}], "either all items"),
        ([{"iothread": "io1", "vqs": [2]}], 'vq index 2 for IOThread "io1" must be less than'),
        ([{"iothread": "io1", "vqs": [0, 0]}], 'cannot assign vq 0 to IOThread "io1"'),
        ([{"iothread": "io1", "vqs": [0]}], "missing vq 1 IOThread assignment"),
        ([{"iothread": "io1", "bogus": 1}], "Parameter 'iothread-vq-mapping.0.bogus' is unexp"),
        ([], "expects at least one item"),
        ("io1", "Invalid parameter type for 'iothread-vq-mapping', expected: array"),
    ],
)
def test_refusals(daemon: Daemon, tmp_path: Path, mapping: Any, message: str) -> None:
    with pytest.raises(BlockError, match=message.replace("(", r"\(")):
        _add(daemon, tmp_path, **{"num-queues": 2, "iothread-vq-mapping": mapping})
    assert daemon.storage.exports == {}
