"""The reconnect backoff schedule (sans-I/O: delays are computed, never waited for)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from iochannel.chardev.backoff import Backoff


def test_nominal_delays_double_up_to_the_cap() -> None:
    b = Backoff(1.0, 30.0)
    assert [b.nominal(k) for k in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.nominal(10_000) == 30  # no overflow however long it fails


def test_delays_are_jittered_within_bounds() -> None:
    b = Backoff(0.5, 8.0, jitter=0.5, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(40)]
    for k, d in enumerate(delays):
        nominal = b.nominal(k)
        assert nominal * 0.5 <= d <= nominal
        assert d <= 8.0
    assert b.attempts == 40
    # Jitter spreads clients that lost the same server.
    other = Backoff(0.5, 8.0, jitter=0.5, rng=random.Random(8))
    assert [other.next_delay() for _ in range(40)] != delays


def test_no_jitter_is_deterministic() -> None:
    b = Backoff(0.25, 1.0, jitter=0.0)
    assert [b.next_delay() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]


def test_only_a_stable_connection_resets() -> None:
    b = Backoff(1.0, 60.0, jitter=0.0)
    for _ in range(4):
        b.next_delay()  # last nominal: 8 s
    b.connected(uptime=0.01)  # a flapping port: accepted then dropped
    assert b.next_delay() == 16.0
    b.connected(uptime=20.0)  # outlived the delay before it: stable
    assert b.attempts == 0
    assert b.next_delay() == 1.0


def test_flapping_peer_cannot_cause_a_storm() -> None:
    """A peer that drops every connection at once: the total wait grows without bound."""
    b = Backoff(0.1, 5.0, rng=random.Random(1))
    waited = 0.0
    for _ in range(100):
        waited += b.next_delay()
        b.connected(uptime=0.0)
    # 100 retries at the fixed 0.1 s QEMU would use take 10 s; these take far longer.
    assert waited > 100 * 5.0 * 0.5 - 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": 0}, "positive"),
        ({"initial": 2, "maximum": 1}, "below"),
        ({"initial": 1, "factor": 0.5}, "factor"),
        ({"initial": 1, "jitter": 1.0}, "jitter"),
    ],
)
def test_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


def test_default_cap() -> None:
    assert Backoff(1.0).maximum == 30.0
    assert Backoff(45.0).maximum == 45.0
