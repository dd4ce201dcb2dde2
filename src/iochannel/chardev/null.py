"""The ``null`` backend: open from the start, discards output, never has input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .chardev import Chardev
from .options import ChardevLookup, Schema, chardev_kwargs, register_backend

__all__ = ["NullChardev"]


def _legacy(text: str) -> str | None:
    return "null" if text == "null" else None


@register_backend(Schema("null", "discards output, never has input", {}, {}, legacy=_legacy))
class NullChardev(Chardev):
    """The ``null`` backend: open from the start, discards output, never has input."""

    type_name: ClassVar[str] = "null"

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> NullChardev:
        return cls(id, **chardev_kwargs(data, registry.loop))

    def _chr_write(self, data: memoryview) -> int:
        return len(data)
