"""Property-based fuzzing of the telnet input filter (sans-I/O, so no peer is needed)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from iochannel.chardev.telnet import (
    BREAK,
    DO,
    DONT,
    EOR,
    IAC,
    SB,
    SE,
    WILL,
    WONT,
    TelnetEvent,
    TelnetFilter,
)

Output = list[bytes | TelnetEvent]

FUZZ = settings(max_examples=300, deadline=None)

#: Bytes that matter to the parser, over-represented so that commands are common.
_SPECIAL = [IAC, DO, DONT, WILL, WONT, SB, SE, BREAK, EOR, 241, 244, 249, 0, 1, 24]
streams = st.lists(st.one_of(st.sampled_from(_SPECIAL), st.integers(0, 255)), max_size=300).map(
    bytes
)


def normalised(items: Output) -> Output:
    """Adjacent data chunks joined: how the data is cut is not part of the contract."""
    out: Output = []
    for item in items:
        if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += item
        else:
            out.append(item)
    return out


def feed_split(data: bytes, cuts: list[int], *, tn3270: bool) -> tuple[Output, bool]:
    f = TelnetFilter(tn3270=tn3270)
    out: Output = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for start, end in itertools.pairwise(bounds):
        items = f.feed(data[start:end])
        assert all(item for item in items if isinstance(item, bytes)), "an empty chunk"
        out += items
    return normalised(out), f.in_command


@FUZZ
@given(data=streams, cuts=st.lists(st.integers(0, 400), max_size=20), tn3270=st.booleans())
def test_any_split_gives_what_the_whole_gives(data: bytes, cuts: list[int], tn3270: bool) -> None:
    """Random bytes, malformed and truncated commands included: never an exception."""
    assert feed_split(data, cuts, tn3270=tn3270) == feed_split(data, [], tn3270=tn3270)


@FUZZ
@given(data=streams, cut=st.integers(0, 300), tn3270=st.booleans())
def test_a_truncated_command_only_holds_back_its_own_bytes(
    data: bytes, cut: int, tn3270: bool
) -> None:
    """Input ending inside a command yields what came before it; the rest completes it."""
    cut = min(cut, len(data))
    prefix = TelnetFilter(tn3270=tn3270)
    head = normalised(prefix.feed(data[:cut]))
    whole = feed_split(data, [cut], tn3270=tn3270)[0]
    assert normalised(head + prefix.feed(data[cut:])) == whole


# A telnet stream built from what a peer may send, with the output it must give.
_data = st.binary(max_size=40).map(lambda b: b.replace(b"\xff", b""))
_option = st.integers(0, 255)
_sub_payload = st.binary(max_size=20).map(lambda b: b.replace(b"\xff", b"\xff\xff"))
_tokens = st.one_of(
    _data.map(lambda d: (d, [d] if d else [])),
    st.just((bytes([IAC, IAC]), [b"\xff"])),
    st.just((bytes([IAC, BREAK]), [TelnetEvent.BREAK])),
    st.tuples(st.sampled_from([WILL, WONT, DO, DONT]), _option).map(
        lambda t: (bytes([IAC, *t]), [])
    ),
    _sub_payload.map(lambda p: (bytes([IAC, SB]) + p + bytes([IAC, SE]), [])),
    st.sampled_from([241, 242, 244, 245, 246, 247, 248, 249, EOR]).map(
        lambda c: (bytes([IAC, c]), [])
    ),
)


@FUZZ
@given(tokens=st.lists(_tokens, max_size=40), cuts=st.lists(st.integers(0, 2000), max_size=20))
def test_negotiation_never_reaches_the_output(
    tokens: list[tuple[bytes, Output]], cuts: list[int]
) -> None:
    """Data, escaped 0xFF and BREAKs come out in order; options and subnegotiations do not."""
    stream = b"".join(raw for raw, _ in tokens)
    expected = normalised([item for _, items in tokens for item in items])
    out, in_command = feed_split(stream, cuts, tn3270=False)
    assert out == expected
    assert not in_command
