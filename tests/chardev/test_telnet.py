"""The sans-I/O telnet/tn3270 filter: greetings, IAC handling, every split point."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iochannel.chardev.telnet import TelnetEvent, TelnetFilter

IAC = 0xFF
B = TelnetEvent.BREAK


def run(data: bytes, *, tn3270: bool = False, cuts: tuple[int, ...] = ()) -> list[object]:
    """Feed *data* cut at *cuts*; merge adjacent data chunks so splits compare equal."""
    f = TelnetFilter(tn3270=tn3270)
    out: list[object] = []
    start = 0
    for end in (*cuts, len(data)):
        for item in f.feed(data[start:end]):
            if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
                out[-1] += item
            else:
                out.append(item)
        start = end
    return out


def test_telnet_greeting_is_qemus_12_bytes() -> None:
    g = TelnetFilter().greeting()
    assert g == bytes.fromhex("fffb01 fffb03 fffb00 fffd00")
    assert len(g) == 12


def test_tn3270_greeting_is_qemus_21_bytes() -> None:
    g = TelnetFilter(tn3270=True).greeting()
    assert g == bytes.fromhex("fffd19 fffb19 fffd00 fffb00 fffd18 fffa18 01 fff0")
    assert len(g) == 21


CASES = [
    # (input, tn3270, expected)
    (b"plain", False, [b"plain"]),
    (b"a\xff\xffb", False, [b"a\xffb"]),
    (b"a\xff\xf3b", False, [b"a", B, b"b"]),
    (b"\xff\xfb\x01x\xff\xfd\x03y\xff\xfc\x00\xff\xfe\x01z", False, [b"xyz"]),
    # A subnegotiation is dropped whole, IAC IAC inside it included.
    (b"a\xff\xfa\x18\x00VT\xff\xff100\xff\xf0b", False, [b"ab"]),
    # Two-byte commands take two bytes: the next data byte survives.
    (b"a\xff\xf1b\xff\xf9c\xff\xf4d", False, [b"abcd"]),
    # tn3270 keeps EOR/SB/SE for the 3270 frontend, drops IP and NOP.
    (b"r1\xff\xefr2\xff\xf4\xff\xf1", True, [b"r1\xff\xefr2"]),
    (b"\xff\xfa\x18\x00IBM-3278-2\xff\xf0", True, [b"\xff\xfa\x18\x00IBM-3278-2\xff\xf0"]),
    (b"\xff\xfd\x19x\xff\xff\xff\xf3", True, [b"x\xff", B]),
    (b"", False, []),
]


@pytest.mark.parametrize(("data", "tn3270", "expected"), CASES)
def test_filter(data: bytes, tn3270: bool, expected: list[object]) -> None:
    assert run(data, tn3270=tn3270) == expected


@pytest.mark.parametrize(("data", "tn3270", "expected"), CASES)
def test_every_split_point_gives_the_same_result(
    data: bytes, tn3270: bool, expected: list[object]
) -> None:
    for i in range(len(data) + 1):
        assert run(data, tn3270=tn3270, cuts=(i,)) == expected, f"split at {i}"
        for j in range(i, len(data) + 1):
            assert run(data, tn3270=tn3270, cuts=(i, j)) == expected, f"split at {i}, {j}"
    one_by_one = tuple(range(1, len(data)))
    assert run(data, tn3270=tn3270, cuts=one_by_one) == expected


def test_truncated_iac_at_the_end_is_harmless() -> None:
    for tail in (b"\xff", b"\xff\xfb", b"\xff\xfa\x18", b"\xff\xfa\x18\xff"):
        f = TelnetFilter()
        assert f.feed(b"ok" + tail) == [b"ok"]
        assert f.in_command
        assert f.feed(b"") == []


@given(st.binary(max_size=300), st.booleans(), st.lists(st.integers(0, 300), max_size=6))
def test_garbage_never_fails_nor_grows(data: bytes, tn3270: bool, cuts: list[int]) -> None:
    points = tuple(sorted(c for c in cuts if c <= len(data)))
    whole = run(data, tn3270=tn3270)
    assert run(data, tn3270=tn3270, cuts=points) == whole
    size = sum(len(x) for x in whole if isinstance(x, bytes))
    assert size <= len(data)
    if IAC not in data:
        assert whole == ([data] if data else [])
