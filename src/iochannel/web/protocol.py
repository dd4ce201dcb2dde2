"""The console's wire protocol inside the WebSocket byte stream, sans-I/O.

The WebSocket layer carries a byte stream (frame boundaries and frame types
are not part of it), so messages are delimited in the stream itself:

* **server → page**: terminal output — the bytes the console wrote, replay
  first — and the device's state as a private OSC sequence the page consumes
  (xterm.js ``registerOscHandler``) and never shows:
  ``ESC ] 7761 ; device=open BEL`` or ``… device=gone BEL``
  (:func:`encode_status`).  One follows the replay, and another each time the
  state changes.  The console's own output never contains it: it is sent to
  web viewers only.
* **page → server**: a sequence of messages, each starting with a type byte:

  ==========  ======================================  =====================
  type        body                                    meaning
  ==========  ======================================  =====================
  ``0x00``    length (u16, big-endian), then bytes    terminal input
  ``0x01``    rows (u16), cols (u16), big-endian      the terminal's size
  ==========  ======================================  =====================

  Any other type byte, an empty input message, or a size of 0 rows or
  columns is a :class:`ViewerProtocolError` (the server then drops the viewer).

:class:`ClientDecoder` turns the page's bytes, split anyhow, into
:class:`Input` and :class:`Resize` messages; it holds at most one partial
message (under 64 KiB).  :func:`encode_input` and :func:`encode_resize` build
them (the page's ``console.js`` does the same in JavaScript).
"""

from __future__ import annotations

import dataclasses
import struct

from .._core.channel import Buffer
from ..errors import RemoteProtocolError

__all__ = [
    "ClientDecoder",
    "Input",
    "ProtocolError",
    "Resize",
    "ViewerProtocolError",
    "encode_input",
    "encode_resize",
    "encode_status",
]

INPUT = 0x00
RESIZE = 0x01
#: The OSC number of the device-state message (unassigned in xterm's table).
STATUS_OSC = 7761
#: Largest input message body.
MAX_INPUT = 0xFFFF
_U16 = struct.Struct("!H")
_SIZE = struct.Struct("!HH")


class ViewerProtocolError(RemoteProtocolError):
    """The page sent bytes that are not a valid viewer message; ``field`` is the part at fault."""


#: The former name, kept for existing code.
ProtocolError = ViewerProtocolError


@dataclasses.dataclass(frozen=True)
class Input:
    data: bytes


@dataclasses.dataclass(frozen=True)
class Resize:
    rows: int
    cols: int


Message = Input | Resize


def encode_input(data: bytes) -> bytes:
    """Input messages for *data*, split at :data:`MAX_INPUT` bytes."""
    return b"".join(
        bytes([INPUT]) + _U16.pack(len(piece)) + piece
        for piece in (data[i : i + MAX_INPUT] for i in range(0, len(data), MAX_INPUT))
    )


def encode_resize(rows: int, cols: int) -> bytes:
    return bytes([RESIZE]) + _SIZE.pack(rows, cols)


def encode_status(device_open: bool) -> bytes:
    """The server's device-state message: open, or gone."""
    return f"\x1b]{STATUS_OSC};device={'open' if device_open else 'gone'}\x07".encode()


class ClientDecoder:
    """Decodes the page's messages from bytes fed in any split."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: Buffer) -> list[Message]:
        """Add *data*; return the messages it completed.  Raises :class:`ViewerProtocolError`."""
        buf = self._buf
        buf += data
        messages: list[Message] = []
        pos = 0
        while pos < len(buf):
            kind = buf[pos]
            if kind == INPUT:
                if len(buf) - pos < 3:
                    break
                (length,) = _U16.unpack_from(buf, pos + 1)
                if not length:
                    raise ViewerProtocolError("empty input message", field="length")
                if len(buf) - pos < 3 + length:
                    break
                messages.append(Input(bytes(buf[pos + 3 : pos + 3 + length])))
                pos += 3 + length
            elif kind == RESIZE:
                if len(buf) - pos < 5:
                    break
                rows, cols = _SIZE.unpack_from(buf, pos + 1)
                if not rows or not cols:
                    raise ViewerProtocolError(
                        f"terminal size {rows}x{cols} is empty",
                        field="rows" if not rows else "cols",
                    )
                messages.append(Resize(rows, cols))
                pos += 5
            else:
                raise ViewerProtocolError(f"unknown message type 0x{kind:02x}", field="type")
        del buf[:pos]
        return messages
