"""The ``null`` backend: open from the start, discards output, never has input."""

from __future__ import annotations

from typing import ClassVar

from .chardev import Chardev

__all__ = ["NullChardev"]


class NullChardev(Chardev):
    type_name: ClassVar[str] = "null"

    def _chr_write(self, data: memoryview) -> int:
        return len(data)
