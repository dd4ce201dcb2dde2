"""Reconnect backoff: exponential, capped, jittered; sans-I/O.

QEMU retries a lost socket connection at a fixed ``reconnect-ms`` interval,
so every client of a restarted server comes back in the same instant, and a
peer that accepts and drops at once is hammered at that rate forever.
:class:`Backoff` spreads and slows retries instead:

* the *nominal* delay of attempt *k* (counted from 0) is
  ``min(maximum, initial * factor**k)``;
* the delay handed out is the nominal one minus up to ``jitter`` of it, drawn
  at random, so it lies in ``[nominal * (1 - jitter), nominal]``: never above
  the cap, never below ``initial * (1 - jitter)``, and clients that lost the
  same server spread out;
* :meth:`Backoff.connected` is told how long a connection lasted; only one
  that outlived the nominal delay before it counts as stable and resets the
  schedule.  A port that flaps (accepts, then drops) therefore keeps the
  delays growing up to the cap instead of restarting them each time.

The object only computes delays; the caller owns the timer and the clock.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays (seconds) between reconnection attempts; see the module docstring."""

    __slots__ = ("_attempt", "_last", "_rng", "factor", "initial", "jitter", "maximum")

    def __init__(
        self,
        initial: float,
        maximum: float | None = None,
        *,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0:
            raise ValueError(f"initial delay must be positive, not {initial}")
        if maximum is None:
            # Long enough to calm a flapping peer, short enough to notice a fix soon.
            maximum = max(initial, 30.0)
        if maximum < initial:
            raise ValueError(f"maximum delay {maximum} is below the initial delay {initial}")
        if factor < 1:
            raise ValueError(f"factor must be at least 1, not {factor}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), not {jitter}")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._attempt = 0
        self._last = initial

    @property
    def attempts(self) -> int:
        """Delays handed out since the last reset."""
        return self._attempt

    def nominal(self, attempt: int) -> float:
        """The un-jittered delay before attempt *attempt* (0-based)."""
        if self.factor == 1:
            return self.initial
        # Step by step: factor**attempt overflows a float after enough failures.
        delay = self.initial
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.maximum:
                return self.maximum
        return min(delay, self.maximum)

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the schedule."""
        nominal = self.nominal(self._attempt)
        self._attempt += 1
        self._last = nominal
        return nominal * (1.0 - self.jitter * self._rng.random())

    def connected(self, uptime: float) -> None:
        """A connection lasted *uptime* seconds; a stable one resets the schedule."""
        if uptime >= self._last:
            self.reset()

    def reset(self) -> None:
        self._attempt = 0
        self._last = self.initial
