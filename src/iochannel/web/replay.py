"""ReplayChardev: a hub member that keeps the console's recent output.

Every byte written is kept, up to ``size`` bytes; beyond that the oldest go.
Writes never block or fail, so as a hub member it never slows the console.
:meth:`ReplayChardev.snapshot` copies what is kept without consuming it —
what a viewer joining now is sent first.  Unlike the ``ringbuf`` backend
there is no consuming read: every joiner gets the same recent past.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..chardev import Chardev
from ..errors import ConfigurationError

__all__ = ["ReplayChardev"]


class ReplayChardev(Chardev):
    type_name: ClassVar[str] = "replay"

    def __init__(self, id: str, size: int = 65536, **kwargs: Any) -> None:
        if size < 1:
            raise ConfigurationError(
                f"a replay buffer needs at least 1 byte, not {size}", field="size"
            )
        super().__init__(id, **kwargs)
        self.size = size
        self._kept = bytearray()

    def _chr_write(self, data: memoryview) -> int:
        kept = self._kept
        kept += data[-self.size :]
        # Deleting from the front of a bytearray is cheap: it only moves a start offset.
        del kept[: max(0, len(kept) - self.size)]
        return len(data)

    def snapshot(self) -> bytes:
        """The kept output, oldest byte first."""
        with self._write_lock:
            return bytes(self._kept)
