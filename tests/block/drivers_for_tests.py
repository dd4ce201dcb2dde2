"""Misbehaving Python block drivers, for the hostile tests."""

from __future__ import annotations

import asyncio
from typing import Any


class Misbehaving:
    """Reads at 0 raise, at 512 hang, at 1024 return short data; others read zeros."""

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"unknown option '{sorted(options)[0]}'")

    async def size(self) -> int:
        return 1 << 20

    async def read(self, offset: int, length: int) -> bytes:
        if offset == 0:
            raise ValueError("driver bug")
        if offset == 512:
            await asyncio.sleep(3600)
        if offset == 1024:
            return b"short"
        return bytes(length)

    async def write(self, offset: int, data: bytes) -> None:
        pass


class BadSize:
    async def size(self) -> int:
        raise RuntimeError("no size")


class BadResize:
    """1 MiB of zeros whose resize raises (to 4096 bytes) or hangs (to 8192)."""

    async def size(self) -> int:
        return 1 << 20

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(length)

    async def write(self, offset: int, data: bytes) -> None:
        pass

    async def resize(self, size: int) -> None:
        if size == 4096:
            raise ValueError("cannot shrink that far")
        if size == 8192:
            await asyncio.sleep(3600)
