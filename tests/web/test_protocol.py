"""The page-to-server messages: decoding in any split, and refusing garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iochannel.web.protocol import (
    MAX_INPUT,
    ClientDecoder,
    Input,
    ProtocolError,
    Resize,
    encode_input,
    encode_resize,
)

messages = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=300).map(Input),
        st.builds(Resize, st.integers(1, 0xFFFF), st.integers(1, 0xFFFF)),
    ),
    max_size=20,
)


def encode(message: Input | Resize) -> bytes:
    if isinstance(message, Input):
        return encode_input(message.data)
    return encode_resize(message.rows, message.cols)


@given(messages, st.lists(st.integers(1, 50), min_size=1))
def test_any_split_decodes_the_same(sent: list[Input | Resize], cuts: list[int]) -> None:
    stream = b"".join(encode(m) for m in sent)
    decoder = ClientDecoder()
    got: list[Input | Resize] = []
    pos = 0
    for i in range(len(stream) + 1):
        step = cuts[i % len(cuts)]
        got += decoder.feed(stream[pos : pos + step])
        pos += step
        if pos >= len(stream):
            break
    assert got == sent


def test_long_input_is_split_into_messages() -> None:
    data = bytes(range(256)) * 600
    decoded = ClientDecoder().feed(encode_input(data))
    assert len(decoded) == 3 and all(isinstance(m, Input) for m in decoded)
    assert b"".join(m.data for m in decoded if isinstance(m, Input)) == data
    assert max(len(m.data) for m in decoded if isinstance(m, Input)) == MAX_INPUT


@pytest.mark.parametrize(
    "data",
    [b"\x02", b"\xff\x00", b"\x00\x00\x00", b"\x01\x00\x00\x00\x05", b"\x01\x00\x05\x00\x00"],
)
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        ClientDecoder().feed(data)
