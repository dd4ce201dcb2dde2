"""The ``ringbuf`` backend (alias ``memory``): frontend output kept in a ring buffer."""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Mapping
from typing import Any, ClassVar

from .chardev import Chardev, ChardevError
from .options import (
    ChardevLookup,
    ChardevOptionError,
    Field,
    Names,
    Schema,
    chardev_kwargs,
    register_backend,
)

__all__ = ["MAX_RINGBUF", "RingbufChardev"]

FORMATS = ("utf8", "base64")
#: Largest size: the memory is taken whole when the chardev is created.
MAX_RINGBUF = 1 << 30


def check_size(size: int, name: str = "size") -> None:
    """QEMU's rule (a power of two) and a bound, as every ring is allocated whole at once."""
    if not 0 < size <= MAX_RINGBUF or size & (size - 1):
        raise ChardevOptionError(
            f"Parameter '{name}': size of ringbuf chardev must be a power of two "
            f"of at most {MAX_RINGBUF} (1G), not {size}"
        )


def _check(data: dict[str, Any], name: Names) -> None:
    check_size(data["size"], name("size"))


def _schema(type_name: str) -> Schema:
    return Schema(
        type_name,
        "frontend output kept in a ring buffer (ringbuf-read)",
        {"size": "size"},
        {"size": Field("int", 65536, minimum=1)},
        check=_check,
    )


@register_backend(_schema("ringbuf"), _schema("memory"))
class RingbufChardev(Chardev):
    """The ``ringbuf`` backend (alias ``memory``): frontend output kept in a ring buffer.

    Writes always succeed, overwriting the oldest bytes; there is no input.  The
    size must be a power of two (default 64 KiB) of at most 1 GiB, as the whole
    ring is allocated at creation.  :meth:`RingbufChardev.read` takes up to
    *size* bytes out (``ringbuf-read``), :meth:`RingbufChardev.inject` stores
    bytes as if the frontend had written them (``ringbuf-write``); both speak
    ``utf8`` or ``base64``.  Unlike QEMU, utf8 reads decode invalid bytes as
    U+FFFD instead of cutting at the first NUL.
    """

    type_name: ClassVar[str] = "ringbuf"

    def __init__(self, id: str, size: int = 65536, **kwargs: Any) -> None:
        check_size(size)
        super().__init__(id, **kwargs)
        self.size = size
        self._data = bytearray(size)
        self._prod = 0  # total bytes ever written
        self._cons = 0  # total bytes ever read
        self._lock = threading.Lock()
        self.filename = "ringbuf"

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> RingbufChardev:
        return cls(id, size=data["size"], **chardev_kwargs(data, registry.loop))

    @property
    def count(self) -> int:
        """Bytes held now."""
        return self._prod - self._cons

    def _chr_write(self, data: memoryview) -> int:
        with self._lock:
            size, total = self.size, len(data)
            tail = data[total - size :] if total > size else data
            self._prod += total - len(tail)  # bytes that would be overwritten at once
            pos = self._prod % size
            first = min(len(tail), size - pos)
            self._data[pos : pos + first] = tail[:first]
            self._data[: len(tail) - first] = tail[first:]
            self._prod += len(tail)
            self._cons = max(self._cons, self._prod - size)
            return total

    def read_bytes(self, size: int) -> bytes:
        """Take up to *size* bytes, oldest first."""
        if size <= 0:
            raise ChardevError(f"size must be greater than zero, not {size}")
        with self._lock:
            n = min(size, self._prod - self._cons)
            pos = self._cons % self.size
            first = min(n, self.size - pos)
            out = bytes(self._data[pos : pos + first]) + bytes(self._data[: n - first])
            self._cons += n
            return out

    def read(self, size: int, format: str = "utf8") -> str:
        """``ringbuf-read``: up to *size* bytes as text (utf8) or base64."""
        _check_format(format)
        data = self.read_bytes(size)
        if format == "base64":
            return base64.b64encode(data).decode()
        return data.decode("utf-8", errors="replace")

    def inject(self, data: str, format: str = "utf8") -> None:
        """``ringbuf-write``: store *data* as if the frontend wrote it."""
        _check_format(format)
        if format == "base64":
            try:
                raw = base64.b64decode(data, validate=True)
            except binascii.Error as exc:
                raise ChardevError(f"invalid base64 data: {exc}") from exc
        else:
            raw = data.encode()
        self.write(raw)


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ChardevError(f"invalid data format {format!r}: use 'utf8' or 'base64'")
