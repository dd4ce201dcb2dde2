"""``python -m iochannel.daemon.stamp FILE``: append standard input to FILE, each line time-stamped.

The log member of the built-in default is a ``command`` chardev running this
program on pipes: the hub writes the console output to its standard input,
and every line is written to *FILE* prefixed by the local wall-clock time as
``[YYYY-MM-DD HH:MM:SS.mmm] ``.  A line in progress is written at once (the
stamp comes with its first byte), so the log never lags the console.  The
program writes nothing to standard output, so nothing flows back into the
console, and it exits at the end of its input.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

__all__ = ["Stamper", "main"]


def _now() -> bytes:
    t = time.time()
    ms = int(t * 1000) % 1000
    return time.strftime("[%Y-%m-%d %H:%M:%S", time.localtime(t)).encode() + b".%03d] " % ms


class Stamper:
    """Sans-I/O: the bytes to write for each piece of input."""

    def __init__(self, clock: Callable[[], bytes] = _now) -> None:
        self._clock = clock
        self._line_start = True

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for line in data.splitlines(keepends=True):
            if self._line_start:
                out += self._clock()
            out += line
            self._line_start = line.endswith(b"\n")
        return bytes(out)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m iochannel.daemon.stamp FILE", file=sys.stderr)
        return 2
    # Ctrl-C in the daemon's terminal reaches this process too; the daemon
    # ends it by closing its input, after the last output is written.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stamper = Stamper()
    fd = os.open(argv[0], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        while data := os.read(0, 65536):
            os.write(fd, stamper.feed(data))
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
