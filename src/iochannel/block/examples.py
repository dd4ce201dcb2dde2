"""Two block drivers written in Python (see :mod:`.python`), useful in tests.

* ``RamDisk`` — ``size`` bytes of memory, zeroed; ``block_resize`` works::

      --blockdev driver=python,node-name=ram,module=iochannel.block.examples,
                 class=RamDisk,size=1048576

* ``ErrorInjector`` — a filter over ``file``: requests of the kinds in
  ``fail-on`` (``read,write``) touching the byte range ``fail-offset`` ..
  ``fail-offset + fail-length`` fail, and every request waits ``latency-ms``
  first::

      --blockdev driver=python,node-name=bad,module=iochannel.block.examples,
                 class=ErrorInjector,file=ram,fail-offset=4096,fail-length=512
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

__all__ = ["ErrorInjector", "RamDisk"]


class RamDisk:
    """A zeroed memory disk of ``size`` bytes."""

    def __init__(self, size: Any) -> None:
        self.data = bytearray(int(size))

    async def size(self) -> int:
        return len(self.data)

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    async def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data

    async def resize(self, size: int) -> None:
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))


class ErrorInjector:
    """Fails requests that touch a byte range; optionally slows every request."""

    def __init__(self, file: Any, **options: Any) -> None:
        self.file = file
        self.start = int(options.pop("fail-offset", 0))
        self.end = self.start + int(options.pop("fail-length", 0))
        self.fail_on = set(str(options.pop("fail-on", "read,write")).split(","))
        self.latency = int(options.pop("latency-ms", 0)) / 1000
        if options:
            raise TypeError(f"unknown option '{sorted(options)[0]}'")

    async def _check(self, kind: str, offset: int, length: int) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)
        if kind in self.fail_on and offset < self.end and self.start < offset + length:
            raise OSError(errno.EIO, f"injected {kind} error at {offset}+{length}")

    async def size(self) -> int:
        return int(await self.file.size())

    async def read(self, offset: int, length: int) -> bytes:
        await self._check("read", offset, length)
        return bytes(await self.file.read(offset, length))

    async def write(self, offset: int, data: bytes) -> None:
        await self._check("write", offset, len(data))
        await self.file.write(offset, data)

    async def flush(self) -> None:
        await self.file.flush()
