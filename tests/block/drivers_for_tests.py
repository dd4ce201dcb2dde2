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
