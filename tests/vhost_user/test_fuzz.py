"""Property-based tests of the sans-I/O vhost-user codec.

Whatever a front-end sends (random, truncated, oversized or well-formed
messages, cut at random points, with random fds attached), the reader either
yields messages or raises :class:`ProtocolError`, never anything else, and
every fd it was given ends up closed or owned by a returned message.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from iochannel.vhost_user.protocol import (
    HEADER,
    MAX_FDS,
    MAX_PAYLOAD,
    Flags,
    Message,
    MessageReader,
    ProtocolError,
    Region,
    Request,
    VringAddr,
    encode_request,
    pack_config,
    pack_mem_table,
    pack_region,
    pack_u64,
    pack_vring_addr,
    pack_vring_state,
)

FUZZ = settings(max_examples=200, deadline=None)

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
request_numbers = st.one_of(st.sampled_from([int(r) for r in Request]), u32)
flags = st.one_of(st.just(int(Flags.VERSION)), st.just(Flags.VERSION | Flags.NEED_REPLY), u32)
regions = st.builds(Region, u64, u64, u64, u64)

payloads = st.one_of(
    st.binary(max_size=64),
    u64.map(pack_u64),
    st.tuples(u32, u32).map(lambda t: pack_vring_state(*t)),
    st.builds(VringAddr, u32, u32, u64, u64, u64, u64).map(pack_vring_addr),
    regions.map(pack_region),
    st.lists(regions, min_size=0, max_size=MAX_FDS + 1).map(pack_mem_table),
    st.tuples(u32, u32, st.binary(max_size=300)).map(lambda t: pack_config(*t)),
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """One message: a plausible one, with a lying size, cut short, or oversized."""
    payload = draw(payloads)
    kind = draw(st.sampled_from(["exact", "size", "truncated", "oversized"]))
    request, flag = draw(request_numbers), draw(flags)
    if kind == "exact":
        return encode_request(request, payload, flag)
    if kind == "size":
        return HEADER.pack(request, flag, draw(u32)) + payload
    if kind == "truncated":
        data = encode_request(request, payload, flag)
        return data[: draw(st.integers(0, len(data)))]
    return HEADER.pack(request, flag, draw(st.integers(MAX_PAYLOAD + 1, 2**32 - 1))) + payload


#: A stream: chunks as read off the socket, each with some fds riding on it.
streams = st.lists(
    st.tuples(st.one_of(messages(), st.binary(max_size=80)), st.integers(0, 3)),
    max_size=6,
).flatmap(
    lambda parts: st.tuples(
        st.just(parts),
        st.lists(st.integers(1, 64), min_size=len(parts), max_size=len(parts)),
    )
)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def run(parts: list[tuple[bytes, int]], cuts: list[int], eof: bool) -> list[int]:
    """Feed *parts* re-cut into reads; return the fds given to the reader.

    Raises only what the reader raises; every message's fds are closed.
    """
    given_fds: list[int] = []
    reader = MessageReader()
    received: list[Message] = []
    try:
        for (data, nfds), cut in zip(parts, cuts, strict=True):
            fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(nfds)]
            given_fds += fds
            for i in range(0, max(len(data), 1), cut):
                reader.feed(data[i : i + cut], fds if i == 0 else ())
                while (msg := reader.next_message()) is not None:
                    received.append(msg)
        if eof:
            reader.eof()
    finally:
        for msg in received:
            assert isinstance(msg.request, Request)
            msg.close_fds()
        reader.close()
    return given_fds


@FUZZ
@given(streams, st.booleans())
def test_any_input_parses_or_raises_protocol_error(
    stream: tuple[list[tuple[bytes, int]], list[int]], eof: bool
) -> None:
    parts, cuts = stream
    given_fds: list[int] = []
    try:
        given_fds = run(parts, cuts, eof)
    except ProtocolError as exc:
        assert exc.field and exc.reason
    # Whatever happened, nothing the peer sent stays open in the back-end.
    leaked = [fd for fd in given_fds if is_open(fd)]
    for fd in leaked:
        os.close(fd)
    assert not leaked


@FUZZ
@given(
    st.builds(VringAddr, st.integers(0, 255), st.integers(0, 1), u64, u64, u64, u64),
    st.integers(1, 40),
)
def test_valid_messages_round_trip_at_any_cut(addr: VringAddr, cut: int) -> None:
    data = encode_request(Request.SET_VRING_ADDR, pack_vring_addr(addr))
    data += encode_request(Request.SET_VRING_NUM, pack_vring_state(addr.index, 256))
    reader = MessageReader()
    got: list[Message] = []
    for i in range(0, len(data), cut):
        reader.feed(data[i : i + cut])
        while (msg := reader.next_message()) is not None:
            got.append(msg)
    reader.eof()
    assert [(m.request, m.payload) for m in got] == [
        (Request.SET_VRING_ADDR, addr),
        (Request.SET_VRING_NUM, (addr.index, 256)),
    ]
