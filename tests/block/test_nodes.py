"""The block layer: drivers, the node graph, iothreads and hostile requests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from iochannel.block import BlockError, open_file
from iochannel.block.storage import Storage

MiB = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * (MiB // 256))
    return path


def read(node: Any, offset: int, n: int) -> bytes:
    buf = bytearray(n)
    assert node.preadv([memoryview(buf)], offset) == n
    return bytes(buf)


def test_file_and_raw_window(image: Path) -> None:
    s = Storage()
    f = s.blockdev_add({"driver": "file", "node-name": "f0", "filename": str(image)}, typed=True)
    r = s.blockdev_add(
        {"driver": "raw", "node-name": "r0", "file": "f0", "offset": "4096", "size": "8192"},
        typed=False,
    )
    assert (f.size(), r.size()) == (MiB, 8192)
    assert read(r, 0, 4) == bytes(range(4))  # 4096 is a multiple of 256
    # A read across the window's end stops at it; a write beyond it fails.
    assert r.preadv([memoryview(bytearray(8192))], 4096) == 4096
    with pytest.raises(OSError):
        r.pwritev([memoryview(b"x" * 512)], 8192)
    r.pwritev([memoryview(b"hello")], 1)
    assert read(f, 4097, 5) == b"hello"
    with pytest.raises(BlockError, match="Block device f0 is in use by node 'r0'"):
        s.blockdev_del("f0")
    s.blockdev_del("r0")
    s.blockdev_del("f0")
    assert s.nodes == {}


def test_inline_child_goes_with_parent(image: Path) -> None:
    s = Storage()
    s.blockdev_add(
        {"driver": "raw", "node-name": "d", "file": {"driver": "file", "filename": str(image)}},
        typed=True,
    )
    assert [n["node-name"] for n in s.query_named_block_nodes()] == ["#block0", "d"]
    s.blockdev_del("d")
    assert s.nodes == {}


def test_null_reads(tmp_path: Path) -> None:
    s = Storage()
    zero = s.blockdev_add({"driver": "null-co", "node-name": "z", "read-zeroes": True}, typed=True)
    keep = s.blockdev_add({"driver": "null-aio", "node-name": "k", "size": 4096}, typed=True)
    assert (zero.size(), keep.size()) == (1 << 30, 4096)
    buf = bytearray(b"x" * 8)
    keep.preadv([memoryview(buf)], 0)
    assert buf == b"x" * 8  # read-zeroes=off leaves the buffer as it was
    zero.preadv([memoryview(buf)], 0)
    assert buf == bytes(8)
    assert keep.pwritev([memoryview(b"abc")], 0) == 3


def test_locking_refuses_a_second_writer(image: Path) -> None:
    first = open_file(str(image))
    try:
        with pytest.raises(BlockError, match="lock"):
            open_file(str(image))
        s = Storage()
        with pytest.raises(BlockError, match="lock"):
            s.blockdev_add({"driver": "file", "node-name": "a", "filename": str(image)}, typed=True)
        s.blockdev_add(
            {"driver": "file", "node-name": "b", "filename": str(image), "locking": "off"},
            typed=True,
        )
        s.blockdev_del("b")
    finally:
        first.close()


def test_host_device_and_direct(image: Path) -> None:
    s = Storage()
    with pytest.raises(BlockError, match="either a character or block device"):
        s.blockdev_add(
            {"driver": "host_device", "node-name": "h", "filename": str(image)}, typed=True
        )
    try:
        node = s.blockdev_add(
            {
                "driver": "file",
                "node-name": "d",
                "filename": str(image),
                "cache": {"direct": True},
                "aio": "threads",
            },
            typed=True,
        )
    except BlockError as exc:  # some file systems (tmpfs) refuse O_DIRECT
        assert "Invalid argument" in str(exc)
    else:
        assert node.size() == MiB
        s.blockdev_del("d")
    assert s.nodes == {}


F = {"driver": "file", "node-name": "f", "filename": "x.img"}


@pytest.mark.parametrize(
    ("args", "typed", "message"),
    [
        ({"node-name": "n"}, True, "Parameter 'driver' is missing"),
        ({"driver": "null-co"}, True, "'node-name' must be specified for the root node"),
        ({"driver": "null-co", "node-name": "9x"}, True, "Invalid node-name: '9x'"),
        ({"driver": "null-co", "node-name": "n", "size": "1M"}, True,
         "Invalid parameter type for 'size', expected: integer"),
        ({"driver": "null-co", "node-name": "n", "size": "1M"}, False,
         "Parameter 'size' expects integer"),
        ({"driver": "null-co", "node-name": "n", "size": -1}, True, "'size' expects a value in"),
        ({"driver": "null-co", "node-name": "n", "size": True}, True, "expected: integer"),
        ({"driver": "null-co", "node-name": "n", "bogus": 1}, True,
         "Parameter 'bogus' is unexpected"),
        ({"driver": "null-co", "node-name": "n", "read-zeroes": "maybe"}, False,
         "'read-zeroes' expects 'on' or 'off'"),
        ({"driver": "frob", "node-name": "n"}, True,
         "Parameter 'driver' does not accept value 'frob'"),
        ({"driver": "qcow2", "node-name": "n", "file": "f"}, True, "use driver=nbd"),
        ({"driver": 7, "node-name": "n"}, True, "'driver', expected: string"),
        ({**F, "filename": "/nonexistent/x.img"}, True,
         "Could not open '/nonexistent/x.img': No such file or directory"),
        ({**F, "aio": "posix"}, True, "'aio' does not accept value 'posix'"),
        ({**F, "cache": {"direct": "on"}}, True,
         "Invalid parameter type for 'cache.direct', expected: boolean"),
        ({**F, "cache": {"nope": True}}, True, "Parameter 'cache.nope' is unexpected"),
        ({"driver": "raw", "node-name": "r"}, True, "Parameter 'file' is missing"),
        ({"driver": "raw", "node-name": "r", "file": "nope"}, True,
         "Cannot find device='nope' nor node-name='nope'"),
        ({"driver": "raw", "node-name": "r", "file": 5}, True, "expected: string or object"),
        ({"driver": "raw", "node-name": "r", "file": {"driver": "frob"}}, True,
         "does not accept value 'frob'"),
    ],
)  # fmt: skip
def test_blockdev_add_refusals(args: dict[str, Any], typed: bool, message: str) -> None:
    s = Storage()
    with pytest.raises(BlockError, match=message.replace("(", r"\(").replace(")", r"\)")):
        s.blockdev_add(args, typed=typed)
    assert s.nodes == {}  # nothing half-built is left


def test_duplicates_and_window_bounds(image: Path) -> None:
    s = Storage()
    s.blockdev_add({"driver": "file", "node-name": "f", "filename": str(image)}, typed=True)
    with pytest.raises(BlockError, match="Duplicate nodes with node-name='f'"):
        s.blockdev_add({"driver": "null-co", "node-name": "f"}, typed=True)
    with pytest.raises(BlockError, match=r"The sum of offset \(4096\) and size \(1048576\)"):
        s.blockdev_add(
            {"driver": "raw", "node-name": "r", "file": "f", "offset": 4096, "size": MiB},
            typed=True,
        )
    with pytest.raises(BlockError, match="Failed to find node with node-name='x'"):
        s.blockdev_del("x")
    s.blockdev_del("f")


def _export(**extra: Any) -> dict[str, Any]:
    return {
        "type": "vhost-user-blk",
        "id": "e0",
        "node-name": "n",
        "addr": {"type": "unix", "path": extra.pop("path", "unused.sock")},
        **extra,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({**_export(), "id": None}, "Parameter 'id' is missing"),
        (_export(**{"node-name": "x"}), "Cannot find device='' nor node-name='x'"),
        (_export(iothread="t"), 'iothread "t" not found'),
        (_export(**{"num-queues": 0}), "num-queues must be greater than 0"),
        (_export(**{"num-queues": 5000}), "num-queues must be at most 1024"),
        (_export(**{"num-queues": "2"}), "'num-queues', expected: integer"),
        (_export(**{"logical-block-size": 1000}), "it's not a power of 2"),
        (_export(writable="yes"), "'writable', expected: boolean"),
        ({**_export(), "addr": {"type": "inet", "host": "h", "port": "1"}},
         "Only socket address types 'unix' and 'fd' are supported"),
        ({**_export(), "addr": None}, "Parameter 'addr' is missing"),
        ({**_export(), "addr": "x"}, "'addr', expected: object"),
        ({**_export(), "type": "fuse"}, "Export type 'fuse' is not supported"),
        ({**_export(), "type": "zz"}, "Parameter 'type' does not accept value 'zz'"),
        (_export(bogus=1), "Parameter 'bogus' is unexpected"),
        (_export(writable=True), "Cannot export read-only node as writable"),
    ],
)  # fmt: skip
def test_export_add_refusals(args: dict[str, Any], message: str) -> None:
    args = {k: v for k, v in args.items() if v is not None}
    s = Storage(dry=True)
    s.blockdev_add({"driver": "null-co", "node-name": "n", "read-only": True}, typed=True)
    with pytest.raises(BlockError, match=message):
        s.export_add(args, typed=True)
    assert s.exports == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"id": "t", "poll-max-ns": "x"}, "Invalid parameter type for 'poll-max-ns'"),
        ({"id": "t", "poll-grow": -1}, "'poll-grow' expects a value in"),
        ({"id": "t", "frob": 1}, "Parameter 'frob' is unexpected"),
        ({}, "Parameter 'id' is missing"),
        ({"id": "io0"}, "attempt to add duplicate property 'io0'"),
    ],
)
def test_iothread_refusals(args: dict[str, Any], message: str) -> None:
    s = Storage(dry=True)
    s.iothread_add({"id": "io0"}, typed=True)
    with pytest.raises(BlockError, match=message):
        s.iothread_add(args, typed=True)
    assert list(s.iothreads) == ["io0"]


def test_export_on_iothread(tmp_path: Path) -> None:
    """An export on an iothread serves there; the iothread and node are pinned while it runs."""
    events: list[tuple[str, dict[str, Any]]] = []

    async def main() -> None:
        s = Storage(emit=lambda name, data: events.append((name, data)))
        try:
            s.iothread_add({"id": "io0", "poll-max-ns": 32768, "aio-max-batch": 0}, typed=True)
            s.blockdev_add({"driver": "null-co", "node-name": "n"}, typed=True)
            sock = tmp_path / "e0.sock"
            s.export_add(_export(path=str(sock), iothread="io0"), typed=True)
            assert sock.exists()
            with pytest.raises(BlockError, match="Block export id 'e0' is already in use"):
                s.export_add(_export(path=str(tmp_path / "e1.sock")), typed=True)
            with pytest.raises(BlockError, match="object 'io0' is in use by export 'e0'"):
                s.iothread_del("io0")
            with pytest.raises(BlockError, match="Node n is in use by export 'e0'"):
                s.blockdev_del("n")
            assert s.query_block_exports() == [
                {"id": "e0", "type": "vhost-user-blk", "node-name": "n", "shutting-down": False}
            ]
            await s.export_del("e0")
            assert not sock.exists()
            assert events == [("BLOCK_EXPORT_DELETED", {"id": "e0"})]
            with pytest.raises(BlockError, match="Export 'e0' is not found"):
                await s.export_del("e0")
            s.iothread_del("io0")
            with pytest.raises(BlockError, match="object 'io0' not found"):
                s.iothread_del("io0")
        finally:
            await s.close()

    asyncio.run(main())
