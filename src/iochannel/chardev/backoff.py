"""Reconnect and restart delays: a fixed interval, or exponential, capped and jittered; sans-I/O.

QEMU retries a lost socket connection at a fixed ``reconnect-ms`` interval.
:class:`Backoff` does the same when it is given no maximum.  Given a
maximum above the initial delay, it spreads and slows retries instead, so a
peer that stays away is not hammered and clients that lost the same server
do not all come back in the same instant:

* the *nominal* delay of attempt *k* (counted from 0) is
  ``min(maximum, initial * factor**k)``;
* the delay handed out is the nominal one minus up to ``jitter`` of it, drawn
  at random, so it lies in ``[nominal * (1 - jitter), nominal]``: never above
  the cap, never below ``initial * (1 - jitter)``;
* :meth:`Backoff.connected` is told how long a connection (or a program's
  run) lasted; one that lasted at least ``settle`` seconds counts as having
  lived and restarts the schedule from ``initial``.  A shorter one (a port
  that accepts and drops at once, a program that dies at start) counts as
  one more failure, so the delays keep growing toward the cap.

The object only computes delays; the caller owns the timer and the clock.
"""

from __future__ import annotations

import random

from ..errors import ConfigurationError

__all__ = ["Backoff"]


class Backoff:
    """Delays (seconds) between reconnection attempts; see the module docstring.

    *maximum* ``None`` means a fixed interval of *initial*.  *jitter* defaults
    to 0.5 when the delays grow and to none for a fixed interval.  *settle*
    defaults to the nominal delay before the connection: it lived if it
    outlasted the wait for it.
    """

    __slots__ = (
        "_attempt",
        "_last",
        "_rng",
        "factor",
        "initial",
        "jitter",
        "maximum",
        "settle",
    )

    def __init__(
        self,
        initial: float,
        maximum: float | None = None,
        *,
        factor: float = 2.0,
        jitter: float | None = None,
        settle: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0:
            raise ConfigurationError(
                f"initial delay must be positive, not {initial}", field="initial"
            )
        if maximum is None:
            maximum = initial
        if maximum < initial:
            raise ConfigurationError(
                f"maximum delay {maximum} is below the initial delay {initial}", field="maximum"
            )
        if factor < 1:
            raise ConfigurationError(f"factor must be at least 1, not {factor}", field="factor")
        if jitter is None:
            jitter = 0.5 if maximum > initial else 0.0
        if not 0 <= jitter < 1:
            raise ConfigurationError(f"jitter must be in [0, 1), not {jitter}", field="jitter")
        if settle is not None and settle < 0:
            raise ConfigurationError(f"settle must not be negative, not {settle}", field="settle")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.settle = settle
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
        """A connection lasted *uptime* seconds; one that lived restarts the schedule."""
        if uptime >= (self._last if self.settle is None else self.settle):
            self.reset()

    def reset(self) -> None:
        self._attempt = 0
        self._last = self.initial
