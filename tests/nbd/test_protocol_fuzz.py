"""Property-based tests of the sans-I/O NBD core, both sides.

Valid streams cut at random points decode to the same events as in one piece,
and whatever garbage a peer sends, the core only ever raises its
:class:`ProtocolError`.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from iochannel.nbd.protocol import (
    IHAVEOPT,
    MAX_REQUEST,
    NBDMAGIC,
    REQUEST_MAGIC,
    ClientConnection,
    Command,
    Event,
    Export,
    Extent,
    ProtocolError,
    Reply,
    Request,
    ServerConnection,
)

FUZZ = settings(max_examples=150, deadline=None)

DISK = Export("d", 1 << 16, read_only=False, can_trim=True, can_write_zeroes=True)
EXPORTS = {"d": DISK}

u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
requests = st.lists(
    st.tuples(
        st.sampled_from(
            [Command.READ, Command.WRITE, Command.FLUSH, Command.TRIM, Command.BLOCK_STATUS]
        ),
        st.integers(0, DISK.size),
        st.integers(0, 3000),
    ),
    max_size=8,
)


def normal(events: list[Event]) -> list[Any]:
    """Events with their buffers as bytes, comparable whatever the cuts were."""
    out: list[Any] = []
    for e in events:
        if isinstance(e, Request) and e.data is not None:
            e = replace(e, data=bytes(e.data))
        elif isinstance(e, Reply) and e.data is not None:
            e = Reply(e.cookie, e.command, e.error, e.message, bytes(e.data), e.extents)
        out.append(e)
    return out


def session(reqs: list[tuple[Command, int, int]], structured: bool) -> tuple[bytes, bytes]:
    """Everything a client and a server send in a session with *reqs*."""
    server = ServerConnection(EXPORTS)
    client = ClientConnection("d", structured=structured)
    to_server = bytearray()
    to_client = bytearray()
    sent_reqs = False
    while True:
        a = b"".join(bytes(b) for b in server.data_to_send())
        b = b"".join(bytes(b) for b in client.data_to_send())
        to_client += a
        to_server += b
        if a:
            client.receive_data(a)
        if b:
            server.receive_data(b)
        for ev in server.events_received():
            if isinstance(ev, Request):
                if ev.command == Command.READ:
                    half = ev.length // 2
                    server.reply_read(ev.cookie, ev.offset, [b"r" * half, ev.length - half])
                elif ev.command == Command.BLOCK_STATUS:
                    server.reply_block_status(
                        ev.cookie, 0, [Extent(100, 0), Extent(1 << 20, 3)], ev.length, False
                    )
                else:
                    server.reply_ok(ev.cookie)
        client.events_received()
        if not a and not b:
            if sent_reqs or client.export is None:
                return bytes(to_server), bytes(to_client)
            sent_reqs = True
            for command, offset, length in reqs:
                length = min(length, DISK.size - offset)
                if command == Command.WRITE:
                    client.request(command, offset, data=b"w" * length)
                elif command == Command.FLUSH:
                    client.request(command)
                elif command == Command.BLOCK_STATUS and not structured:
                    continue
                else:
                    client.request(command, offset, max(length, 1) if offset < DISK.size else 0)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


def feed_server(pieces: list[bytes]) -> list[Any]:
    server = ServerConnection(EXPORTS)
    events: list[Event] = []
    for piece in pieces:
        server.receive_data(piece)
        events += server.events_received()
    return normal(events)


def feed_client(pieces: list[bytes], to_server: bytes) -> list[Any]:
    """Replay the server's bytes to a client that sends the same requests."""
    client = ClientConnection("d", structured=b"\0\0\0\x08" in to_server)
    events: list[Event] = []
    for piece in pieces:
        client.receive_data(piece)
        for ev in client.events_received():
            events.append(ev)
    return normal(events)


@FUZZ
@given(requests, st.booleans(), st.lists(u32, max_size=12))
def test_server_splits_do_not_matter(
    reqs: list[tuple[Command, int, int]], structured: bool, cuts: list[int]
) -> None:
    to_server, _ = session(reqs, structured)
    assert feed_server(split(to_server, cuts)) == feed_server([to_server])


@FUZZ
@given(st.lists(u32, max_size=12))
def test_client_handshake_splits_do_not_matter(cuts: list[int]) -> None:
    to_server, to_client = session([], True)
    assert feed_client(split(to_client, cuts), to_server) == feed_client([to_client], to_server)


@FUZZ
@given(requests, st.booleans(), st.lists(u32, max_size=12))
def test_client_reply_splits_do_not_matter(
    reqs: list[tuple[Command, int, int]], structured: bool, cuts: list[int]
) -> None:
    """The client decodes the server's replies the same whatever the cuts."""

    def run(pieces: list[bytes]) -> list[Any]:
        server = ServerConnection(EXPORTS)
        client = ClientConnection("d", structured=structured)
        events: list[Event] = []
        while True:
            a = b"".join(bytes(b) for b in server.data_to_send())
            b = b"".join(bytes(b) for b in client.data_to_send())
            if a:
                client.receive_data(a)
            if b:
                server.receive_data(b)
            server.events_received()
            client.events_received()
            if not a and not b:
                break
        for command, offset, length in reqs:
            if command in (Command.READ, Command.WRITE):
                client.request(command, offset, min(length, DISK.size - offset))
            else:
                client.request(Command.FLUSH)
        for piece in pieces:
            client.receive_data(piece)
            events += client.events_received()
        return normal(events)

    # The replies: simple, each with read data where the request is a read.
    replies = bytearray()
    structured_chunk = struct.Struct(">IHHQI")
    for cookie, (command, offset, length) in enumerate(reqs, 1):
        n = min(length, DISK.size - offset)
        if command == Command.READ and structured:
            replies += structured_chunk.pack(0x668E33EF, 1, 1, cookie, 8 + n)
            replies += struct.pack(">Q", offset) + b"x" * n
        elif command == Command.READ:
            replies += struct.pack(">IIQ", 0x67446698, 0, cookie) + b"x" * n
        else:
            replies += struct.pack(">IIQ", 0x67446698, 0, cookie)
    if structured and any(c == Command.READ and min(n, DISK.size - o) == 0 for c, o, n in reqs):
        return  # a structured READ reply must carry data or be NONE; not this test's subject
    whole = bytes(replies)
    assert run(split(whole, cuts)) == run([whole])


GREETED = struct.pack(">I", 3)
garbage = st.binary(max_size=400)
ints = st.one_of(u16, u32, u64, st.sampled_from([0, 1, 4096, MAX_REQUEST, MAX_REQUEST + 1]))
option = st.builds(
    lambda opt, data: struct.pack(">QII", IHAVEOPT, opt, len(data)) + data,
    st.integers(0, 12),
    garbage,
)
request = st.builds(
    lambda flags, kind, offset, length, tail: (
        struct.pack(">IHHQQI", REQUEST_MAGIC, flags, kind, 1, offset, length) + tail
    ),
    u16,
    st.integers(0, 9),
    u64,
    ints.filter(lambda n: n < 2**32),
    garbage,
)
messages = st.lists(st.one_of(garbage, option, request), max_size=6)


def go_bytes() -> bytes:
    return struct.pack(">QII", IHAVEOPT, 7, 7) + struct.pack(">I", 1) + b"d" + b"\0\0"


@FUZZ
@given(st.booleans(), st.booleans(), messages, st.lists(u32, max_size=6))
def test_server_garbage_raises_only_protocol_error(
    greet: bool, go: bool, msgs: list[bytes], cuts: list[int]
) -> None:
    server = ServerConnection(EXPORTS, tls=go and greet)
    prefix = (GREETED + (go_bytes() if go else b"")) if greet else b""
    data = prefix + b"".join(msgs)
    try:
        for piece in split(data, cuts):
            server.receive_data(piece)
            server.events_received()
            server.data_to_send()
        server.receive_eof()
    except ProtocolError:
        pass


@FUZZ
@given(st.booleans(), messages, st.lists(u32, max_size=6), st.booleans())
def test_client_garbage_raises_only_protocol_error(
    greet: bool, msgs: list[bytes], cuts: list[int], structured: bool
) -> None:
    _, to_client = session([], structured)
    client = ClientConnection("d", structured=structured)
    data = (to_client if greet else b"") + b"".join(msgs)
    try:
        for piece in split(data, cuts):
            client.receive_data(piece)
            client.events_received()
            client.data_to_send()
            if client.export is not None and not client.in_flight:
                client.request(Command.READ, 0, 16)
                client.request(Command.BLOCK_STATUS, 0, 16)
        client.receive_eof()
    except ProtocolError:
        pass


def test_greeting_constants() -> None:
    server = ServerConnection(EXPORTS)
    assert bytes(server.data_to_send()[0]) == struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3)
