"""The sans-I/O QMP server: negotiation, request checks and hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iochannel.qmp import CommandSpec, JSONSplitter, QMPServerProtocol, Request

COMMANDS = {
    "qmp_capabilities": CommandSpec("qmp_capabilities", {"enable": ("array", False)}, True),
    "query-version": CommandSpec("query-version", {}),
    "ringbuf-read": CommandSpec("ringbuf-read", {"device": ("str", True), "size": ("int", True)}),
    "anything": CommandSpec("anything"),
}


def session(negotiated: bool = True) -> QMPServerProtocol:
    proto = QMPServerProtocol(COMMANDS, version=(1, 2, 3), package="pkg")
    if negotiated:
        proto.negotiated()
    return proto


def feed(proto: QMPServerProtocol, data: bytes) -> list[Request | bytes]:
    """Receive *data* and take every message it completed."""
    proto.receive_data(data)
    return list(iter(proto.next_request, None))


def decode(out: bytes) -> Any:
    assert out.endswith(b"\r\n")
    return json.loads(out)


def test_greeting_shape() -> None:
    msg = decode(session(False).greeting())
    assert msg == {
        "QMP": {
            "version": {"qemu": {"major": 1, "minor": 2, "micro": 3}, "package": "pkg"},
            "capabilities": [],
        }
    }


def test_commands_need_negotiation_first() -> None:
    proto = session(False)
    (out,) = feed(proto, b'{"execute": "query-version", "id": 7}')
    assert isinstance(out, bytes)
    assert decode(out) == {
        "error": {
            "class": "CommandNotFound",
            "desc": "Expecting capabilities negotiation with 'qmp_capabilities'",
        },
        "id": 7,
    }
    (req,) = feed(proto, b'{"execute": "qmp_capabilities"}')
    assert isinstance(req, Request) and req.name == "qmp_capabilities"
    proto.negotiated()
    (again,) = feed(proto, b'{"execute": "qmp_capabilities"}')
    assert isinstance(again, bytes)
    assert "already complete" in decode(again)["error"]["desc"]


def test_reply_echoes_id_and_split_input() -> None:
    proto = session()
    text = b'{"execute": "query-version", "id": {"x": [1, "}"]}}\n{"execute":"anything"}'
    got: list[Request | bytes] = []
    for i in range(len(text)):  # one byte at a time: state must survive every split
        got += feed(proto, text[i : i + 1])
    got += feed(proto, b" ")
    assert [r.name for r in got if isinstance(r, Request)] == ["query-version", "anything"]
    first = got[0]
    assert isinstance(first, Request)
    assert decode(proto.reply(first, {"a": 1})) == {"return": {"a": 1}, "id": {"x": [1, "}"]}}


@pytest.mark.parametrize(
    ("text", "cls", "desc"),
    [
        (b"[1, 2]", "GenericError", "QMP input must be a JSON object"),
        (b'"str"', "GenericError", "QMP input must be a JSON object"),
        (b"{nope}", "GenericError", "JSON parse error"),
        (b'{"execute": "x", "bogus": 1}', "GenericError", "member 'bogus' is unexpected"),
        (b'{"arguments": {}}', "GenericError", "lacks member 'execute'"),
        (b'{"execute": 5}', "GenericError", "'execute' must be a string"),
        (b'{"execute": "anything", "arguments": []}', "GenericError", "must be an object"),
        (b'{"execute": "no-such"}', "CommandNotFound", "The command no-such has not been found"),
        (b'{"execute": "ringbuf-read"}', "GenericError", "Parameter 'device' is missing"),
        (
            b'{"execute": "ringbuf-read", "arguments": {"device": "r", "size": "4"}}',
            "GenericError",
            "Invalid parameter type for 'size', expected: integer",
        ),
        (
            b'{"execute": "ringbuf-read", "arguments": {"device": "r", "size": 4, "x": 1}}',
            "GenericError",
            "Parameter 'x' is unexpected",
        ),
        (b'{"exec-oob": "query-version"}', "GenericError", "out-of-band"),
        (b"]", "GenericError", "JSON parse error, stray ']'"),
    ],
)
def test_bad_requests_get_qmp_errors(text: bytes, cls: str, desc: str) -> None:
    (out,) = feed(session(), text + b" ")
    assert isinstance(out, bytes)
    err = decode(out)["error"]
    assert err["class"] == cls and desc in err["desc"]


def test_oversized_and_deep_messages_are_discarded_with_bounded_memory() -> None:
    proto = QMPServerProtocol(COMMANDS, max_size=1024)
    proto.negotiated()
    huge = b'{"execute": "anything", "arguments": {"x": "' + b"a" * 100_000 + b'"}}'
    (out,) = feed(proto, huge)
    assert isinstance(out, bytes) and "at most 1024 bytes" in decode(out)["error"]["desc"]
    assert len(proto._splitter._buf) == 0
    (deep,) = feed(proto, b"[" * 100 + b"]" * 100)
    assert isinstance(deep, bytes) and "at most 64 levels" in decode(deep)["error"]["desc"]
    # The session goes on working afterwards.
    (ok,) = feed(proto, b'{"execute": "query-version"}')
    assert isinstance(ok, Request)


def test_0xff_resets_the_parser() -> None:
    proto = session()
    assert feed(proto, b'{"execute": "query-ver') == []
    (req,) = feed(proto, b'\xff{"execute": "query-version"}')
    assert isinstance(req, Request) and req.name == "query-version"


def test_event_encoding() -> None:
    msg = decode(session().event("CHARDEV_OPENED", {"id": "c0"}))
    assert msg["event"] == "CHARDEV_OPENED" and msg["data"] == {"id": "c0"}
    assert set(msg["timestamp"]) == {"seconds", "microseconds"}


@given(st.binary(max_size=200))
def test_fuzzed_bytes_never_crash(data: bytes) -> None:
    proto = session()
    for item in feed(proto, data) + feed(proto, b" "):
        if isinstance(item, bytes):
            assert "error" in decode(item)
        else:
            assert isinstance(item, Request)


@given(st.lists(st.binary(max_size=20), max_size=20))
def test_splitter_never_holds_more_than_its_bound(chunks: list[bytes]) -> None:
    splitter = JSONSplitter(max_size=64)
    for chunk in chunks:
        splitter.feed(chunk)
        assert len(splitter._buf) <= 64


def test_pipelined_negotiation_is_checked_in_arrival_order() -> None:
    proto = session(False)
    proto.receive_data(
        b'{"execute": "qmp_capabilities", "id": 1}{"execute": "query-version", "id": 2}]'
    )
    assert proto.pending == 3
    first = proto.next_request()
    assert isinstance(first, Request) and first.id == 1
    proto.negotiated()  # what running qmp_capabilities does, before the next is looked at
    second = proto.next_request()
    assert isinstance(second, Request) and second.id == 2
    third = proto.next_request()
    assert isinstance(third, bytes) and "stray" in decode(third)["error"]["desc"]
    assert proto.next_request() is None


@pytest.mark.parametrize(
    ("text", "desc"),
    [
        (b'{"execute": "query-version", "execute": "quit"}', "duplicate key 'execute'"),
        (b'{"execute": "anything", "arguments": {"a": 1, "a": 2}}', "duplicate key 'a'"),
        (b'{"execute": "query-version", "id": NaN}', "'NaN' is not a JSON number"),
        (b'{"execute": "query-version", "id": Infinity}', "'Infinity' is not a JSON number"),
        (b'{"execute": "query-version", "id": -Infinity}', "'-Infinity' is not a JSON number"),
        (b'{"execute": "query-version", "id": 1e999}', "number 1e999 is out of range"),
    ],
)
def test_json_python_accepts_but_qemu_refuses(text: bytes, desc: str) -> None:
    (out,) = feed(session(), text)
    assert isinstance(out, bytes)
    assert decode(out) == {"error": {"class": "GenericError", "desc": f"JSON parse error, {desc}"}}


def test_limits_are_reported_when_crossed_and_the_parser_resynchronises() -> None:
    proto = QMPServerProtocol(COMMANDS, max_size=1024)
    proto.negotiated()
    (big,) = feed(proto, b'{"execute": "anything", "arguments": {"x": "' + b"a" * 2000)
    assert "at most 1024 bytes" in decode(big)["error"]["desc"]  # the message has not ended
    assert feed(proto, b"a" * 100_000) == [] and len(proto._splitter._buf) == 0
    (ok,) = feed(proto, b'"}}{"execute": "query-version", "id": 1}')  # the value ended
    assert isinstance(ok, Request) and ok.id == 1
    (deep,) = feed(proto, b"[" * 100_000)
    assert "at most 64 levels" in decode(deep)["error"]["desc"]
    (ok,) = feed(proto, b'\n{"execute": "query-version", "id": 2}')  # a newline ends skipping
    assert isinstance(ok, Request) and ok.id == 2
