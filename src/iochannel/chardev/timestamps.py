"""Per-line timestamps for chardev output (the mux's ``C-a t``, log files).

:class:`LineStamper` is sans-I/O: it says which stamp is due before the next
byte and where the current line ends, and is told what was actually written,
so a partial write never splits or repeats a stamp.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["LineStamper"]


class LineStamper:
    """Sans-I/O per-line timestamps for output.

    While :attr:`enabled`, each line starts with ``[HH:MM:SS.mmm] ``, time
    counted from the first stamped line (the mux's ``C-a t``), or with the
    local wall-clock time ``[YYYY-MM-DD HH:MM:SS.mmm] `` when *wall* is set
    (log files).  Turning stamps on takes effect at the
    next line start, so a line already in progress is not split.  The caller
    writes ``prefix()``, then ``data[start:segment_end(data, start)]``, and
    reports what went out with :meth:`advance`, so a partial write leaves the
    state exact.
    """

    __slots__ = ("_clock", "_left", "_line_start", "_start", "_wall", "enabled")

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall: bool = False,
        enabled: bool = False,
    ) -> None:
        self.enabled = enabled
        self._wall = wall
        self._clock = time.time if wall else clock
        self._start: float | None = None
        self._left = b""  # the part of a stamp a short write left unsent
        # A log starts at a line start; toggling on waits for the next one.
        self._line_start = enabled

    def toggle(self) -> None:
        self.enabled = not self.enabled
        self._start = None
        self._line_start = False

    def prefix(self) -> bytes:
        """The stamp due before the next byte (``b""`` if none); it counts as sent."""
        if not (self.enabled and self._line_start):
            return b""
        self._line_start = False
        now = self._clock()
        if self._wall:
            ms = int(now * 1000) % 1000
            return time.strftime("[%Y-%m-%d %H:%M:%S", time.localtime(now)).encode() + (
                b".%03d] " % ms
            )
        if self._start is None:
            self._start = now
        ms = int((now - self._start) * 1000)
        secs, ms = divmod(ms, 1000)
        mins, secs = divmod(secs, 60)
        hours, mins = divmod(mins, 60)
        return b"[%02d:%02d:%02d.%03d] " % (hours, mins, secs, ms)

    def segment_end(self, data: bytes, start: int) -> int:
        """Where the segment from *start* ends: after the next newline, or at the end."""
        end = data.find(b"\n", start) if self.enabled else -1
        return len(data) if end < 0 else end + 1

    def advance(self, sent: memoryview) -> None:
        """*sent* (a prefix of a segment) went out."""
        if sent:
            self._line_start = sent[-1] == 0x0A

    def write(self, data: memoryview, write: Callable[[memoryview], int | None]) -> int | None:
        """Write *data* through *write* with its stamps: bytes of *data* taken.

        ``None`` if nothing could be written; stops at the first short write,
        keeping any unsent part of a stamp for the next call.
        """
        if not self.enabled and not self._left:
            return write(data)
        raw = data.tobytes()  # searched once per line: no copy per line
        done = 0
        while done < len(data):
            if not self._left:
                self._left = self.prefix()
            while self._left:
                n = write(memoryview(self._left))
                if not n:
                    return done or None
                self._left = self._left[n:]
            seg = data[done : self.segment_end(raw, done)]
            n = write(seg)
            if not n:
                return done or None
            self.advance(seg[:n])
            done += n
            if n < len(seg):
                break
        return done
