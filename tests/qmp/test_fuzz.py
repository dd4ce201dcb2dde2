"""Property-based tests of the QMP parser on pipelined input split at random points."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from iochannel.qmp import CommandSpec, QMPServerProtocol, Request

COMMANDS = {
    "qmp_capabilities": CommandSpec("qmp_capabilities", {}, True),
    "query-version": CommandSpec("query-version", {}),
    "anything": CommandSpec("anything"),
}

FUZZ = settings(max_examples=300, deadline=None)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@st.composite
def commands(draw: st.DrawFn) -> tuple[bytes, tuple[str, dict[str, Any], Any, bool]]:
    """One valid command as sent (random layout) and what it must parse to."""
    name = draw(st.sampled_from(["query-version", "anything"]))
    msg: dict[str, Any] = {"execute": name}
    args: dict[str, Any] = {}
    if name == "anything":
        args = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
        msg["arguments"] = args
    has_id = draw(st.booleans())
    rid = draw(json_values) if has_id else None
    if has_id:
        msg["id"] = rid
    item_sep, key_sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\n", " :\t")]))
    text = json.dumps(msg, separators=(item_sep, key_sep), ensure_ascii=draw(st.booleans()))
    trailer = draw(st.sampled_from(["", "\n", "\r\n", " "]))
    return (text + trailer).encode(), (name, args, rid, has_id)


#: Input that is not a valid request and ends by itself: exactly one error reply each.
garbage = st.one_of(
    st.sampled_from(
        [
            b"]",
            b"}",
            b"{nope}",
            b'"str"',
            b"[1, 2]",
            b"null ",
            b"12 ",
            b'{"execute": "query-version", "execute": "quit"}',
            b'{"execute": "query-version", "id": NaN}',
            b'{"execute": "query-version", "id": -Infinity}',
            b'{"execute": "no-such-command"}',
            b'{"execute": "query-version", "arguments": {"x": 1}}',
            b"[" * 100 + b"]" * 100,
            b'{"a": "' + b"x" * 5000 + b'"}',
            b"[" * 70 + b"\n",
        ]
    ),
    st.text(alphabet="abcdefxyz0123456789.-+", min_size=1, max_size=10).map(
        lambda word: word.encode() + b" "
    ),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def run(data: bytes, cuts: list[int]) -> list[Request | bytes]:
    proto = QMPServerProtocol(COMMANDS, max_size=4096)
    proto.negotiated()
    out: list[Request | bytes] = []
    for chunk in split(data, cuts):
        proto.receive_data(chunk)
        out += iter(proto.next_request, None)
    proto.receive_data(b"\n")  # ends a trailing bare number
    out += iter(proto.next_request, None)
    return out


def parsed(item: Request | bytes) -> tuple[str, dict[str, Any], Any, bool] | str:
    if isinstance(item, Request):
        return (item.name, item.arguments, item.id, item.has_id)
    reply = json.loads(item)
    assert set(reply) == {"error"}
    assert reply["error"]["class"] in ("GenericError", "CommandNotFound")
    return "error"


@FUZZ
@given(st.lists(commands(), min_size=1, max_size=8), st.lists(st.integers(min_value=0)))
def test_pipelined_commands_split_anywhere_parse_the_same(
    cmds: list[tuple[bytes, tuple[str, dict[str, Any], Any, bool]]], cuts: list[int]
) -> None:
    data = b"".join(text for text, _ in cmds)
    assert [parsed(item) for item in run(data, cuts)] == [want for _, want in cmds]


@FUZZ
@given(
    st.lists(st.tuples(st.lists(garbage, max_size=3), commands()), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0)),
)
def test_garbage_between_commands_gives_errors_in_order(
    parts: list[tuple[list[bytes], tuple[bytes, tuple[str, dict[str, Any], Any, bool]]]],
    cuts: list[int],
) -> None:
    data = b"".join(b"".join(junk) + text for junk, (text, _) in parts)
    want: list[tuple[str, dict[str, Any], Any, bool] | str] = []
    for junk, (_, cmd) in parts:
        want += ["error"] * len(junk) + [cmd]
    assert [parsed(item) for item in run(data, cuts)] == want


@FUZZ
@given(st.binary(max_size=300), commands(), st.lists(st.integers(min_value=0)))
def test_a_reset_byte_after_any_bytes_resynchronises(
    junk: bytes, cmd: tuple[bytes, tuple[str, dict[str, Any], Any, bool]], cuts: list[int]
) -> None:
    text, want = cmd
    out = run(junk + b"\xff" + text, cuts)
    assert parsed(out[-1]) == want
    assert all(parsed(item) == "error" or isinstance(item, Request) for item in out)
