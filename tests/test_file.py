"""Ports of QEMU test-io-channel-file.c, test-io-channel-buffer.c and test-io-channel-null.c."""

from __future__ import annotations

import asyncio
import os

import pytest

from iochannel import (
    BufferChannel,
    ChannelClosedError,
    Condition,
    Feature,
    FileChannel,
    NullChannel,
    UnsupportedFeatureError,
)
from iochannel.testing import check_transfer, pattern


def _roundtrip(src: FileChannel, dst: FileChannel) -> None:
    data = pattern()
    src.writev_all(data)
    out = [bytearray(len(c)) for c in data]
    dst.readv_all(out)
    assert out == data


def test_file(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "test-io-channel-file.txt")
    old = os.umask(0o022)
    try:
        writer = FileChannel.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        writer.writev_all(pattern())
        writer.close()
        reader = FileChannel.open(path, "r")
        out = [bytearray(len(c)) for c in pattern()]
        reader.readv_all(out)
        assert out == pattern()
        reader.close()
        assert os.stat(path).st_mode & 0o777 == 0o600 & ~0o022
    finally:
        os.umask(old)


def test_mode_honours_umask(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "umask")
    old = os.umask(0o077)
    try:
        FileChannel.open(path, "w", 0o666).close()
        assert os.stat(path).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_file_rdwr(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "rdwr")
    ch = FileChannel.open(path, "w+")
    assert ch.has_feature(Feature.SEEKABLE)
    ch.writev_all(pattern())
    assert ch.seek(0) == 0
    out = [bytearray(len(c)) for c in pattern()]
    ch.readv_all(out)
    assert out == pattern()
    assert ch.pwrite(b"XYZ", 10) == 3
    assert ch.pread(5, 8) == b"\0\0XYZ"
    ch.close()


def test_file_fd(tmp_path: os.PathLike[str]) -> None:
    from iochannel import from_fd

    fd = os.open(os.path.join(tmp_path, "fd"), os.O_RDWR | os.O_CREAT, 0o600)
    ch = from_fd(fd)
    assert isinstance(ch, FileChannel)
    ch.close()


@pytest.mark.parametrize("blocking", [True, False], ids=["sync", "async"])
def test_pipe(blocking: bool) -> None:
    reader, writer = FileChannel.pipe()
    assert not reader.has_feature(Feature.SEEKABLE)
    check_transfer(writer, reader, blocking=blocking)
    reader.close()
    writer.close()


def test_pipe_is_not_seekable() -> None:
    reader, writer = FileChannel.pipe()
    with pytest.raises(UnsupportedFeatureError, match="random access"):
        reader.seek(0)
    with pytest.raises(UnsupportedFeatureError, match="shutdown"):
        writer.shutdown()
    reader.close()
    writer.close()


def test_pty_reads_eof_when_slave_closes() -> None:
    master, path = FileChannel.open_pty()
    slave = FileChannel.open(path, "r+")
    slave.write_all(b"from the slave")
    assert master.read_all(14) == b"from the slave"
    slave.close()
    assert master.read(10) == b""
    master.close()


def test_bad_mode_is_explained(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ValueError, match="invalid mode 'rw'"):
        FileChannel.open(os.path.join(tmp_path, "x"), "rw")


# ---- buffer -----------------------------------------------------------------


def test_buf() -> None:
    ch = BufferChannel()
    ch.writev_all(pattern())
    ch.seek(0)
    out = [bytearray(len(c)) for c in pattern()]
    ch.readv_all(out)
    assert out == pattern()
    assert ch.read(10) == b""
    ch.close()


def test_buffer_seek_semantics() -> None:
    ch = BufferChannel(b"hello world")
    ch.seek(6)
    ch.write_all(b"WORLD!!")  # overwrite then extend
    assert ch.getvalue() == b"hello WORLD!!"
    ch.seek(2, os.SEEK_END)  # past the end: a zero-filled gap
    ch.write_all(b"X")
    assert ch.getvalue() == b"hello WORLD!!\0\0X"
    ch.seek(-3, os.SEEK_CUR)
    assert ch.read(10) == b"\0\0X"
    with pytest.raises(ValueError, match="negative"):
        ch.seek(-100, os.SEEK_CUR)
    with pytest.raises(ValueError, match="whence"):
        ch.seek(0, 42)
    ch.close()


def test_buffer_watch_always_ready() -> None:
    async def main() -> None:
        ch = BufferChannel()
        got: asyncio.Future[Condition] = asyncio.get_running_loop().create_future()
        ch.add_watch(Condition.IN | Condition.OUT, lambda c, cond: bool(got.set_result(cond)))
        assert await got == Condition.IN | Condition.OUT
        ch.close()

    asyncio.run(main())


# ---- null -------------------------------------------------------------------


def test_null_io() -> None:
    async def main() -> None:
        ch = NullChannel()
        assert ch.write(b"Hello World") == 11
        assert ch.read(10) == b""
        loop = asyncio.get_running_loop()
        for cond in (Condition.IN, Condition.IN | Condition.OUT):
            got: asyncio.Future[Condition] = loop.create_future()
            ch.add_watch(cond, lambda c, ready, f=got: bool(f.set_result(ready)))
            await asyncio.sleep(0)  # one loop iteration is enough
            assert got.done() and got.result() == cond
        ch.close()
        with pytest.raises(ChannelClosedError):
            ch.write(b"Hello World")
        with pytest.raises(ChannelClosedError):
            ch.read(10)

    asyncio.run(main())
