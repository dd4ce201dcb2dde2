"""Raw terminal mode, shared by the serial and stdio backends.

:func:`raw_mode` turns a ``termios.tcgetattr`` list into raw input: no input
translation or flow control, no line editing, reads return as soon as one
byte is there (VMIN 1, VTIME 0).  Output processing, echo and signal keys
(ISIG: ^C, ^Z) are kept or dropped as the caller asks: a serial line wants
none of them, a console on stdio keeps output processing and usually signals.
"""

from __future__ import annotations

import termios
from typing import Any

__all__ = ["CC", "CFLAG", "IFLAG", "ISPEED", "LFLAG", "OFLAG", "OSPEED", "raw_mode"]

#: Indexes into the ``tcgetattr`` list.
IFLAG, OFLAG, CFLAG, LFLAG, ISPEED, OSPEED, CC = range(7)

_INPUT_PROCESSING = (
    termios.IGNBRK
    | termios.BRKINT
    | termios.PARMRK
    | termios.ISTRIP
    | termios.INLCR
    | termios.IGNCR
    | termios.ICRNL
    | termios.IXON
)


def raw_mode(
    attrs: list[Any],
    *,
    output_processing: bool = False,
    echo: bool = False,
    signals: bool = False,
) -> list[Any]:
    """Make *attrs* raw (in place) and return it."""
    attrs[IFLAG] &= ~_INPUT_PROCESSING
    if output_processing:
        attrs[OFLAG] |= termios.OPOST
    else:
        attrs[OFLAG] &= ~termios.OPOST
    lflag = attrs[LFLAG] & ~(termios.ECHONL | termios.ICANON | termios.IEXTEN)
    lflag = lflag | termios.ECHO if echo else lflag & ~termios.ECHO
    lflag = lflag | termios.ISIG if signals else lflag & ~termios.ISIG
    attrs[LFLAG] = lflag
    attrs[CC][termios.VMIN] = 1
    attrs[CC][termios.VTIME] = 0
    return attrs
