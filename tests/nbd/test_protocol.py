"""The sans-I/O NBD core: the server and client sides against each other and against raw bytes."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from iochannel.errors import ChannelError
from iochannel.nbd.protocol import (
    BASE_ALLOCATION,
    EINVAL,
    EPERM,
    IHAVEOPT,
    MAX_REQUEST,
    MAX_STRING,
    NBDMAGIC,
    REQUEST_MAGIC,
    ClientConnection,
    Command,
    CommandFlag,
    Disconnect,
    Event,
    Export,
    ExportList,
    ExportReady,
    Extent,
    NbdError,
    Option,
    OptionRefused,
    OptionReply,
    ProtocolError,
    Reply,
    Request,
    ServerConnection,
    StartTLS,
    TransmissionStarted,
)

DISK = Export(
    "disk",
    1 << 20,
    "a disk",
    read_only=False,
    can_trim=True,
    can_write_zeroes=True,
    can_fast_zero=True,
    can_multi_conn=True,
)
RO = Export("ro", 8192)
EXPORTS = {"disk": DISK, "ro": RO}


def flush(conn: ServerConnection | ClientConnection) -> bytes:
    return b"".join(bytes(b) for b in conn.data_to_send())


def pump(server: ServerConnection, client: ClientConnection) -> tuple[list[Event], list[Event]]:
    """Move bytes both ways until both sides are quiet; the events each side saw."""
    s_events: list[Event] = []
    c_events: list[Event] = []
    while True:
        to_client, to_server = flush(server), flush(client)
        if not to_client and not to_server:
            return s_events, c_events
        if to_client:
            client.receive_data(to_client)
        if to_server:
            server.receive_data(to_server)
        s_events += server.events_received()
        c_events += client.events_received()


def connected(
    export: str = "disk", **kwargs: Any
) -> tuple[ServerConnection, ClientConnection, ExportReady]:
    server = ServerConnection(EXPORTS)
    client = ClientConnection(export, **kwargs)
    s_events, c_events = pump(server, client)
    assert isinstance(s_events[-1], TransmissionStarted)
    ready = c_events[-1]
    assert isinstance(ready, ExportReady)
    return server, client, ready


def serve(server: ServerConnection, events: list[Event], disk: bytearray) -> None:
    """A trivial back-end answering requests from *disk*."""
    for ev in events:
        if not isinstance(ev, Request):
            continue
        if ev.command == Command.READ:
            server.reply_read(ev.cookie, ev.offset, [disk[ev.offset : ev.offset + ev.length]])
        elif ev.command == Command.WRITE:
            assert ev.data is not None
            disk[ev.offset : ev.offset + ev.length] = ev.data
            server.reply_ok(ev.cookie)
        elif ev.command == Command.BLOCK_STATUS:
            extents = [Extent(4096, 0), Extent(4096, 0), Extent(1 << 20, 3)]
            server.reply_block_status(
                ev.cookie, 0, extents, ev.length, bool(ev.flags & CommandFlag.REQ_ONE)
            )
        else:
            server.reply_ok(ev.cookie)


def roundtrip(server: ServerConnection, client: ClientConnection, disk: bytearray) -> list[Reply]:
    replies: list[Reply] = []
    while True:
        to_server = flush(client)
        if to_server:
            server.receive_data(to_server)
            serve(server, server.events_received(), disk)
        to_client = flush(server)
        if not to_client and not to_server:
            return replies
        if to_client:
            client.receive_data(to_client)
            replies += [e for e in client.events_received() if isinstance(e, Reply)]


@pytest.mark.parametrize("structured", [True, False])
def test_handshake_and_requests(structured: bool) -> None:
    server, client, ready = connected(structured=structured)
    assert ready.export.size == DISK.size and not ready.export.read_only
    assert ready.export.description == "a disk"
    assert ready.export.can_multi_conn and ready.export.can_fast_zero
    assert ready.structured is structured
    assert ready.meta_contexts == ({BASE_ALLOCATION: 0} if structured else {})
    disk = bytearray(DISK.size)
    w = client.request(Command.WRITE, 4096, data=b"x" * 5000, flags=CommandFlag.FUA)
    r = client.request(Command.READ, 4000, 6000)
    f = client.request(Command.FLUSH)
    replies = {rep.cookie: rep for rep in roundtrip(server, client, disk)}
    assert replies[w].error == 0 and replies[f].error == 0
    assert bytes(replies[r].data or b"") == bytes(96) + b"x" * 5000 + bytes(904)
    assert client.in_flight == 0


def test_sparse_read_and_block_status() -> None:
    server, client, _ = connected()
    cookie = client.request(Command.READ, 100, 300)
    cookie2 = client.request(Command.BLOCK_STATUS, 0, 1 << 20)
    cookie3 = client.request(Command.BLOCK_STATUS, 0, 1 << 20, CommandFlag.REQ_ONE)
    server.receive_data(flush(client))
    reqs = server.events_received()
    assert [type(e) for e in reqs] == [Request] * 3
    server.reply_read(cookie, 100, [b"ab", 200, b"c" * 98])
    server.reply_block_status(
        cookie2, 0, [Extent(4096, 0), Extent(4096, 0), Extent(1 << 30, 3)], 1 << 20, False
    )
    server.reply_block_status(cookie3, 0, [Extent(4096, 0), Extent(4096, 3)], 1 << 20, True)
    client.receive_data(flush(server))
    got = {e.cookie: e for e in client.events_received() if isinstance(e, Reply)}
    assert bytes(got[cookie].data or b"") == b"ab" + bytes(200) + b"c" * 98
    assert got[cookie2].extents == {0: [Extent(8192, 0), Extent((1 << 20) - 8192, 3)]}
    assert got[cookie3].extents == {0: [Extent(4096, 0)]}


def test_read_hole_chunks_on_the_wire() -> None:
    server, _client, _ = connected()
    server.reply_read(7, 0, [10, b"d"])
    out = flush(server)
    _magic, flags, kind, cookie, length = struct.unpack(">IHHQI", out[:20])
    assert (flags, kind, cookie, length) == (0, 2, 7, 12)
    assert struct.unpack(">QI", out[20:32]) == (0, 10)
    assert struct.unpack(">IHHQI", out[32:52])[1:] == (1, 1, 7, 9)
    server.reply_read(8, 0, [10, b"d"], df=True)
    out = flush(server)
    assert struct.unpack(">IHHQI", out[:20])[1:] == (1, 1, 8, 19)


def test_errors_reach_the_client() -> None:
    server, client, _ = connected()
    cookie = client.request(Command.READ, 0, 512)
    server.receive_data(flush(client))
    server.events_received()
    server.reply_error(cookie, 5, "disk on fire")
    client.receive_data(flush(server))
    (rep,) = client.events_received()
    assert isinstance(rep, Reply)
    assert (rep.error, rep.message, rep.data) == (5, "disk on fire", None)


def request(cookie: int, command: int, offset: int, length: int, flags: int = 0) -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, cookie, offset, length)


@pytest.mark.parametrize(
    ("export", "command", "offset", "length", "flags", "error"),
    [
        ("disk", Command.READ, DISK.size - 1, 2, 0, EINVAL),  # past the end
        ("disk", Command.READ, 0, MAX_REQUEST + 1, 0, EINVAL),
        ("disk", Command.READ, 0, 512, CommandFlag.FUA, EINVAL),
        ("disk", 99, 0, 0, 0, EINVAL),
        ("disk", Command.FLUSH, 1, 0, 0, EINVAL),
        ("disk", Command.WRITE_ZEROES, 0, 512, 0x80, EINVAL),
        ("ro", Command.TRIM, 0, 512, 0, EPERM),
        ("ro", Command.WRITE_ZEROES, 0, 512, 0, EPERM),
    ],
)
def test_server_refuses_bad_requests(
    export: str, command: int, offset: int, length: int, flags: int, error: int
) -> None:
    server, _client, _ = connected(export, structured=False)
    server.receive_data(request(42, command, offset, length, flags))
    assert server.events_received() == []
    assert struct.unpack(">IIQ", flush(server)) == (0x67446698, error, 42)
    # The session goes on.
    server.receive_data(request(43, Command.READ, 0, 512))
    assert [e.cookie for e in server.events_received() if isinstance(e, Request)] == [43]


def test_write_to_read_only_and_too_big_write() -> None:
    server, _client, _ = connected("ro", structured=False)
    server.receive_data(request(1, Command.WRITE, 0, 4) + b"abcd")
    assert struct.unpack(">IIQ", flush(server)) == (0x67446698, EPERM, 1)
    with pytest.raises(ProtocolError, match="request length"):
        server.receive_data(request(2, Command.WRITE, 0, MAX_REQUEST + 1))
    assert struct.unpack(">IIQ", flush(server)) == (0x67446698, EINVAL, 2)


def test_bad_request_magic_answers_then_fails() -> None:
    server, _client, _ = connected()
    bad = struct.pack(">IHHQQI", 0x12345678, 0, 0, 9, 0, 0)
    with pytest.raises(ProtocolError) as info:
        server.receive_data(bad)
    assert info.value.field == "request magic"
    assert isinstance(info.value, ChannelError)
    assert flush(server)  # the EINVAL reply
    with pytest.raises(ProtocolError):
        server.receive_data(b"more")


def test_disc_ends_the_session() -> None:
    server, client, _ = connected()
    client.disconnect()
    server.receive_data(flush(client))
    assert server.events_received() == [Disconnect()]
    server.receive_eof()
    with pytest.raises(NbdError):
        client.request(Command.READ, 0, 1)


# ---- handshake details against raw bytes ------------------------------------------------


def option(opt: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", IHAVEOPT, opt, len(data)) + data


def replies(data: bytes) -> list[tuple[int, int, bytes]]:
    out = []
    while data:
        magic, opt, kind, n = struct.unpack(">QIII", data[:20])
        assert magic == 0x3E889045565A9
        out.append((opt, kind, data[20 : 20 + n]))
        data = data[20 + n :]
    return out


def negotiating(**kwargs: Any) -> ServerConnection:
    server = ServerConnection(EXPORTS, **kwargs)
    greeting = flush(server)
    assert struct.unpack(">QQH", greeting) == (NBDMAGIC, IHAVEOPT, 3)
    server.receive_data(struct.pack(">I", 3))
    return server


def test_list_and_unknown_options() -> None:
    server = negotiating()
    server.receive_data(
        option(Option.LIST) + option(99, b"z" * 100_000) + option(Option.LIST, b"x")
    )
    got = replies(flush(server))
    assert [(o, k) for o, k, _ in got] == [
        (3, OptionReply.SERVER),
        (3, OptionReply.SERVER),
        (3, OptionReply.ACK),
        (99, OptionReply.ERR_UNSUP),
        (3, OptionReply.ERR_INVALID),
    ]
    assert got[0][2] == b"\0\0\0\x04disk" + b"a disk"  # name, then description


def test_go_unknown_export_and_long_name() -> None:
    server = negotiating()
    name = b"nope"
    server.receive_data(option(Option.GO, struct.pack(">I", 4) + name + b"\0\0"))
    ((_, kind, text),) = replies(flush(server))
    assert kind == OptionReply.ERR_UNKNOWN and b"nope" in text
    long = b"a" * (MAX_STRING + 1)
    server.receive_data(option(Option.GO, struct.pack(">I", len(long)) + long + b"\0\0"))
    ((_, kind, text),) = replies(flush(server))
    assert kind == OptionReply.ERR_INVALID and b"GO.name" in text
    with pytest.raises(ProtocolError, match="EXPORT_NAME"):
        server.receive_data(option(Option.EXPORT_NAME, long))


def test_meta_context_needs_structured_replies() -> None:
    server = negotiating()
    query = struct.pack(">I", 4) + b"disk" + struct.pack(">I", 1)
    query += struct.pack(">I", len(BASE_ALLOCATION)) + BASE_ALLOCATION.encode()
    server.receive_data(option(Option.SET_META_CONTEXT, query))
    assert replies(flush(server))[0][1] == OptionReply.ERR_INVALID
    server.receive_data(option(Option.STRUCTURED_REPLY))
    server.receive_data(option(Option.LIST_META_CONTEXT, query))
    got = replies(flush(server))
    assert [k for _, k, _ in got] == [OptionReply.ACK, OptionReply.META_CONTEXT, OptionReply.ACK]


def test_export_name_old_client() -> None:
    server = negotiating()
    server.receive_data(option(Option.EXPORT_NAME, b"ro"))
    out = flush(server)
    assert struct.unpack(">QH", out[:10]) == (8192, 0x40F)  # QEMU's 0x50F less multi-conn
    assert out[10:] == b""  # NO_ZEROES was negotiated
    (ev,) = server.events_received()
    assert isinstance(ev, TransmissionStarted) and ev.export is RO


def test_flags_as_qemu() -> None:
    assert DISK.flags(False) == 0xD6D and DISK.flags(True) == 0xDED
    assert Export("x", 1, can_multi_conn=True).flags(True) == 0x58F


def test_abort() -> None:
    server = negotiating()
    server.receive_data(option(Option.ABORT))
    assert replies(flush(server)) == [(2, OptionReply.ACK, b"")]
    assert server.events_received() == [Disconnect()]
    with pytest.raises(ProtocolError, match="after the session ended"):
        server.receive_data(b"x")


def test_starttls_both_sides() -> None:
    server = ServerConnection(EXPORTS, tls=True)
    client = ClientConnection("disk", tls=True)
    s_events, c_events = pump(server, client)
    assert s_events == [StartTLS()] and c_events == [StartTLS()]
    # Here each side would run its TLS handshake on the channel.
    server.tls_started()
    client.tls_started()
    s_events, c_events = pump(server, client)
    assert isinstance(c_events[-1], ExportReady)
    with pytest.raises(NbdError):
        client.tls_started()


def test_tls_required_and_refused_twice() -> None:
    server = negotiating(tls=True)
    server.receive_data(option(Option.LIST))
    assert replies(flush(server))[0][1] == OptionReply.ERR_TLS_REQD
    server.receive_data(option(Option.STARTTLS))
    assert replies(flush(server))[0][1] == OptionReply.ACK
    assert server.events_received() == [StartTLS()]
    server.tls_started()
    server.receive_data(option(Option.STARTTLS))
    assert replies(flush(server))[0][1] == OptionReply.ERR_INVALID
    server.receive_data(option(Option.LIST))
    assert replies(flush(server))[-1][1] == OptionReply.ACK


def test_starttls_without_tls_is_policy() -> None:
    server = negotiating()
    server.receive_data(option(Option.STARTTLS))
    ((_, kind, text),) = replies(flush(server))
    assert kind == OptionReply.ERR_POLICY and text == b"TLS not configured"


def test_data_before_tls_handshake_is_an_error() -> None:
    server = negotiating(tls=True)
    with pytest.raises(ProtocolError, match="before the TLS handshake"):
        server.receive_data(option(Option.STARTTLS) + b"\x16\x03\x01")


def test_client_list_exports() -> None:
    server = ServerConnection(EXPORTS)
    client = ClientConnection(list_exports=True)
    _, c_events = pump(server, client)
    assert c_events == [ExportList([("disk", "a disk"), ("ro", "")]), Disconnect()]


def test_client_unknown_export_is_refused() -> None:
    server = ServerConnection(EXPORTS)
    client = ClientConnection("nope")
    with pytest.raises(OptionRefused) as info:
        pump(server, client)
    assert info.value.option == Option.GO
    assert info.value.reply == OptionReply.ERR_UNKNOWN
    assert "export 'nope' not present" in str(info.value)


def test_client_falls_back_to_export_name() -> None:
    """A server answering GO with UNSUP (an old one) is served through EXPORT_NAME."""
    client = ClientConnection("disk", structured=False)
    client.receive_data(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 1))
    out = flush(client)
    assert out[:4] == struct.pack(">I", 1)
    client.receive_data(struct.pack(">QIII", 0x3E889045565A9, Option.GO, OptionReply.ERR_UNSUP, 0))
    out = flush(client)
    assert out == option(Option.EXPORT_NAME, b"disk")
    client.receive_data(struct.pack(">QH", 4096, 1) + bytes(124))
    (ready,) = client.events_received()
    assert isinstance(ready, ExportReady) and ready.export.size == 4096


def test_client_rejects_unknown_cookie_and_truncation() -> None:
    _server, client, _ = connected()
    with pytest.raises(ProtocolError, match="cookie"):
        client.receive_data(struct.pack(">IIQ", 0x67446698, 0, 77))
    _server, client, _ = connected()
    client.request(Command.READ, 0, 10)
    with pytest.raises(ProtocolError, match="end of stream"):
        client.receive_eof()


def test_client_rejects_read_chunk_outside_request() -> None:
    server, client, _ = connected()
    cookie = client.request(Command.READ, 0, 10)
    server.reply_read(cookie, 5, [b"0123456789"])
    with pytest.raises(ProtocolError, match="outside the requested range"):
        client.receive_data(flush(server))


def test_client_abort_without_ack_is_clean() -> None:
    server = ServerConnection(EXPORTS)
    client = ClientConnection(list_exports=True)
    client.receive_data(flush(server))
    server.receive_data(flush(client))
    client.receive_data(flush(server))  # the list; the client sends ABORT
    assert isinstance(client.events_received()[0], ExportList)
    assert flush(client).endswith(struct.pack(">QII", IHAVEOPT, Option.ABORT, 0))
    client.receive_eof()  # the server closed without its ACK
