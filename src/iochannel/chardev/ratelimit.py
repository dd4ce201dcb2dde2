"""Rate-limited log lines for what peers cause, so one peer cannot flood the log.

A client that connects and resets in a loop, or a server that accepts and
drops every connection, would otherwise cost one log line per attempt.
:func:`log_peer` logs at most :data:`BURST` lines per :data:`INTERVAL`
seconds for each *source* (a chardev id, say); the lines beyond that are
counted, and the next line logged for that source says how many were
suppressed.  :class:`RateLimiter` is the sans-I/O counter underneath.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

from ..errors import ConfigurationError

__all__ = ["BURST", "INTERVAL", "RateLimiter", "log_peer"]

#: Lines logged at most per source and interval.
BURST = 5
#: The interval, in seconds.
INTERVAL = 10.0


class RateLimiter:
    """At most *burst* admissions per *interval* seconds for each key.

    Keeps at most *max_keys* keys: past that, keys whose interval is over are
    forgotten first, then the oldest.
    """

    __slots__ = ("_clock", "_windows", "burst", "interval", "max_keys")

    def __init__(
        self,
        burst: int = BURST,
        interval: float = INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        if burst < 1:
            raise ConfigurationError(f"burst must be at least 1, not {burst}", field="burst")
        if interval <= 0:
            raise ConfigurationError(f"interval must be positive, not {interval}", field="interval")
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        # key -> [window start, admitted in the window, suppressed since the last admission]
        self._windows: dict[Hashable, list[float]] = {}

    def admit(self, key: Hashable) -> int | None:
        """``None`` if *key* is over its limit (counted); else how many were suppressed before."""
        now = self._clock()
        window = self._windows.get(key)
        if window is None:
            self._forget_stale(now)
            window = self._windows[key] = [now, 0, 0]
        elif now - window[0] >= self.interval:
            window[0], window[1] = now, 0
        if window[1] >= self.burst:
            window[2] += 1
            return None
        window[1] += 1
        suppressed, window[2] = int(window[2]), 0
        return suppressed

    def _forget_stale(self, now: float) -> None:
        if len(self._windows) < self.max_keys:
            return
        for key, window in list(self._windows.items()):
            if now - window[0] >= self.interval:
                del self._windows[key]
        while len(self._windows) >= self.max_keys:
            del self._windows[next(iter(self._windows))]


_limiter = RateLimiter()


def log_peer(logger: logging.Logger, source: str, level: int, msg: str, *args: Any) -> None:
    """``logger.log(level, msg, *args)`` unless *source* logged too much lately (see above)."""
    if not logger.isEnabledFor(level):
        return
    suppressed = _limiter.admit((logger.name, source))
    if suppressed is None:
        return
    if suppressed:
        msg += " (%d similar messages suppressed)"
        args += (suppressed,)
    logger.log(level, msg, *args)
