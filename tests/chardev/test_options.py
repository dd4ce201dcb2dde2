"""Chardev option parsing: -chardev strings, legacy strings, QAPI specs, hostile input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iochannel.chardev import ChardevError
from iochannel.chardev.options import (
    ChardevOptionError,
    ChardevRef,
    parse_chardev,
    parse_keyval,
    parse_legacy,
    validate_spec,
)


def data_of(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = spec["backend"]["data"]
    return result


def inet(host: str, port: str, **extra: Any) -> dict[str, Any]:
    return {"type": "inet", "data": {"host": host, "port": port, **extra}}


# ---- syntax ------------------------------------------------------------------


def test_keyval_escapes_commas_and_implies_the_first_key() -> None:
    assert parse_keyval("file,id=a,path=/tmp/x,,y,,", implied="backend") == [
        ("backend", "file"),
        ("id", "a"),
        ("path", "/tmp/x,y,"),
    ]
    assert parse_keyval("id=a,backend=null", implied="backend") == [
        ("id", "a"),
        ("backend", "null"),
    ]
    assert parse_keyval("a,,b,c=1", implied="backend") == [("backend", "a,b"), ("c", "1")]


def test_short_booleans_are_deprecated_but_understood() -> None:
    spec = parse_chardev("socket,id=s,host=h,port=1,server,nowait")
    assert data_of(spec)["server"] is True and data_of(spec)["wait"] is False


@pytest.mark.parametrize("word", ["on", "yes", "true", "y"])
def test_boolean_words_on(word: str) -> None:
    assert data_of(parse_chardev(f"file,id=f,path=p,append={word}"))["append"] is True


@pytest.mark.parametrize("word", ["off", "no", "false", "n"])
def test_boolean_words_off(word: str) -> None:
    assert data_of(parse_chardev(f"file,id=f,path=p,append={word}"))["append"] is False


def test_last_repeated_key_wins() -> None:
    assert data_of(parse_chardev("file,id=f,path=a,path=b"))["out"] == "b"


# ---- every backend and its defaults -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "data"),
    [
        ("null,id=c", "null", {"logappend": False}),
        (
            "file,id=c,path=out,input-path=in,append=on",
            "file",
            {"logappend": False, "out": "out", "in": "in", "append": True, "timestamp": False},
        ),
        (
            "file,id=c,path=out",
            "file",
            {"logappend": False, "out": "out", "append": False, "timestamp": False},
        ),
        ("pipe,id=c,path=/p", "pipe", {"logappend": False, "device": "/p"}),
        ("serial,id=c,path=/dev/ttyS0", "serial", {"logappend": False, "device": "/dev/ttyS0"}),
        ("pty,id=c", "pty", {"logappend": False}),
        ("pty,id=c,path=/tmp/l", "pty", {"logappend": False, "path": "/tmp/l"}),
        ("stdio,id=c", "stdio", {"logappend": False, "signal": True}),
        ("stdio,id=c,signal=off", "stdio", {"logappend": False, "signal": False}),
        ("ringbuf,id=c", "ringbuf", {"logappend": False, "size": 65536}),
        ("ringbuf,id=c,size=2", "ringbuf", {"logappend": False, "size": 2}),
        ("memory,id=c,size=1k", "memory", {"logappend": False, "size": 1024}),
        ("mux,id=c,chardev=base", "mux", {"logappend": False, "chardev": "base"}),
        (
            "hub,id=c,chardevs.0=a,chardevs.1=b",
            "hub",
            {"logappend": False, "chardevs": ["a", "b"]},
        ),
        ("udp,id=c,port=5", "udp", {"logappend": False, "remote": inet("localhost", "5")}),
        (
            "udp,id=c,host=1.2.3.4,port=5,localport=6,ipv4=on",
            "udp",
            {
                "logappend": False,
                "remote": inet("1.2.3.4", "5", ipv4=True),
                "local": inet("", "6", ipv4=True),
            },
        ),
        (
            "udp,id=c,port=5,localaddr=127.0.0.1",
            "udp",
            {"logappend": False, "remote": inet("localhost", "5"), "local": inet("127.0.0.1", "0")},
        ),
        (
            "null,id=c,logfile=/tmp/log,logappend=on,closed-writes=buffer,"
            "closed-writes-limit=4k,closed-writes-overflow=error",
            "null",
            {
                "logfile": "/tmp/log",
                "logappend": True,
                "closed-writes": "buffer",
                "closed-writes-limit": 4096,
                "closed-writes-overflow": "error",
            },
        ),
    ],
)
def test_backend_keys_and_defaults(text: str, kind: str, data: dict[str, Any]) -> None:
    spec = parse_chardev(text)
    assert spec == {"id": "c", "backend": {"type": kind, "data": data}}


SOCKET_DEFAULTS = {
    "logappend": False,
    "nodelay": False,
    "telnet": False,
    "tn3270": False,
    "websocket": False,
    "connections": 1,
    "reconnect-ms": 0,
}


def test_socket_cli_defaults_differ_from_qmp() -> None:
    client = data_of(parse_chardev("socket,id=s,host=localhost,port=4444"))
    assert client == {
        **SOCKET_DEFAULTS,
        "addr": inet("localhost", "4444"),
        "server": False,
        "wait": False,
    }
    server = data_of(parse_chardev("socket,id=s,path=/tmp/s,server=on"))
    assert server["server"] is True and server["wait"] is True  # CLI: wait defaults on
    qmp = data_of(
        validate_spec({"id": "s", "backend": {"type": "socket", "data": {"addr": inet("h", "1")}}})
    )
    assert qmp == {**SOCKET_DEFAULTS, "addr": inet("h", "1"), "server": True, "wait": False}


def test_socket_addresses_and_options() -> None:
    d = data_of(
        parse_chardev(
            "socket,id=s,path=/tmp/a,,b,abstract=on,tight=off,server=on,wait=off,"
            "telnet=on,connections=3"
        )
    )
    assert d["addr"] == {
        "type": "unix",
        "data": {"path": "/tmp/a,b", "abstract": True, "tight": False},
    }
    assert d["telnet"] is True and d["connections"] == 3
    d = data_of(parse_chardev("socket,id=s,host=::1,port=0,to=9,ipv6=on,server=on"))
    assert d["addr"] == inet("::1", "0", to=9, ipv6=True)
    d = data_of(parse_chardev("socket,id=s,fd=7"))
    assert d["addr"] == {"type": "fd", "data": {"str": "7"}}
    d = data_of(
        parse_chardev("socket,id=s,host=h,port=1,tls-creds=tls0,tls-authz=authz0,delay=off")
    )
    assert (d["tls-creds"], d["tls-authz"], d["nodelay"]) == ("tls0", "authz0", True)
    assert data_of(parse_chardev("socket,id=s,host=h,port=1,nodelay=on"))["nodelay"] is True


def test_socket_reconnect_seconds_become_milliseconds() -> None:
    assert data_of(parse_chardev("socket,id=s,host=h,port=1,reconnect=2"))["reconnect-ms"] == 2000
    d = data_of(parse_chardev("socket,id=s,host=h,port=1,reconnect-ms=250"))
    assert d["reconnect-ms"] == 250 and "reconnect" not in d


def test_mux_and_hub_membership() -> None:
    spec = parse_chardev("null,id=n,mux=on")
    assert spec["mux"] is True and spec["id"] == "n"
    spec = parse_chardev("ringbuf,id=r,mux-be-id=h")
    assert spec["mux-be-id"] == "h"


# ---- legacy strings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "data"),
    [
        ("null", "null", {}),
        ("pty", "pty", {}),
        ("stdio", "stdio", {"signal": True}),
        ("file:/tmp/f,x", "file", {"out": "/tmp/f,x", "append": False, "timestamp": False}),
        ("pipe:/tmp/p", "pipe", {"device": "/tmp/p"}),
        ("pty:/tmp/link", "pty", {"path": "/tmp/link"}),
        ("/dev/ttyS0", "serial", {"device": "/dev/ttyS0"}),
        ("udp::5", "udp", {"remote": inet("localhost", "5")}),
        (
            "udp:1.2.3.4:5@:6",
            "udp",
            {"remote": inet("1.2.3.4", "5"), "local": inet("", "6")},
        ),
        (
            "udp:[::1]:5@127.0.0.1:6",
            "udp",
            {"remote": inet("::1", "5"), "local": inet("127.0.0.1", "6")},
        ),
    ],
)
def test_legacy_strings(text: str, kind: str, data: dict[str, Any]) -> None:
    spec = parse_legacy(text, "c0")
    assert isinstance(spec, dict)
    assert spec["backend"] == {"type": kind, "data": {"logappend": False, **data}}
    assert spec["id"] == "c0"


@pytest.mark.parametrize(
    ("text", "flags", "addr", "server", "wait"),
    [
        ("tcp::4444,server=on,wait=off", {}, inet("", "4444"), True, False),
        ("tcp:localhost:4444", {}, inet("localhost", "4444"), False, False),
        ("tcp:[::1]:4444,server=on", {}, inet("::1", "4444"), True, True),
        (
            "telnet:localhost:23,server,nowait",
            {"telnet": True},
            inet("localhost", "23"),
            True,
            False,
        ),
        ("tn3270::23,server=on", {"tn3270": True}, inet("", "23"), True, True),
        (
            "websocket:127.0.0.1:0,server=on,wait=off",
            {"websocket": True},
            inet("127.0.0.1", "0"),
            True,
            False,
        ),
        (
            "unix:/tmp/s,,x,server=on,wait=off",
            {},
            {"type": "unix", "data": {"path": "/tmp/s,x"}},
            True,
            False,
        ),
    ],
)
def test_legacy_sockets(
    text: str, flags: dict[str, bool], addr: dict[str, Any], server: bool, wait: bool
) -> None:
    spec = parse_legacy(text, "c0")
    assert isinstance(spec, dict)
    d = spec["backend"]["data"]
    assert spec["backend"]["type"] == "socket"
    assert (d["addr"], d["server"], d["wait"]) == (addr, server, wait)
    for key in ("telnet", "tn3270", "websocket"):
        assert d[key] is flags.get(key, False)


def test_legacy_chardev_and_mon() -> None:
    assert parse_legacy("chardev:serial0", "x") == ChardevRef("serial0")
    spec = parse_legacy("mon:stdio", "compat_monitor0")
    assert isinstance(spec, dict)
    assert spec["mux"] is True
    assert spec["backend"] == {"type": "stdio", "data": {"logappend": False, "signal": False}}
    spec = parse_legacy("mon:tcp::4444,server=on,wait=off", "m")
    assert isinstance(spec, dict) and spec["mux"] is True


@pytest.mark.parametrize("text", ["invalid", "vc", "COM1", "mon:invalid", "tcp", "", "chardev"])
def test_legacy_invalid(text: str) -> None:
    with pytest.raises(ChardevOptionError, match="is not a valid char driver"):
        parse_legacy(text, "c0")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp:nohost", "invalid address 'nohost'"),
        ("udp:1.2.3.4", "invalid address '1.2.3.4'"),
        ("udp::5@bad", "invalid address 'bad'"),
        ("tcp:[::1:5", r"invalid address '\[::1:5'"),
        ("tcp::x", "Parameter 'port' expects a number, got 'x'"),
        ("chardev:9bad", "Parameter 'id' expects an identifier"),
        ("/dev/parport0", "'/dev/parport0': parallel ports are not supported"),
        ("/dev/ppi0", "'/dev/ppi0': parallel ports are not supported"),
    ],
)
def test_legacy_errors(text: str, message: str) -> None:
    with pytest.raises(ChardevOptionError, match=message):
        parse_legacy(text, "c0")


# ---- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Parameter 'backend' is missing"),
        ("null", "Parameter 'id' is missing"),
        ("id=x", "Parameter 'backend' is missing"),
        ("bogus,id=x", "'bogus' is not a valid char driver name"),
        ("null,id=9x", "Parameter 'id' expects an identifier"),
        ("null,id=" + "a" * 128, "longer than 127 characters"),
        ("null,id=x,port=1", "Invalid parameter 'port'"),
        ("null,id=x,mux=maybe", "Parameter 'mux' expects 'on' or 'off', got 'maybe'"),
        ("socket,id=x,host=h,port=x", "Parameter 'port' expects a number, got 'x'"),
        ("socket,id=x,host=h,port=70000", r"Parameter 'port' expects a port number \(0-65535\)"),
        ("socket,id=x,host=h,port=1,to=x", "Parameter 'to' expects a number, got 'x'"),
        ("socket,id=x,host=h", "Parameter 'port' is missing"),
        ("socket,id=x", "Exactly one of 'path', 'host' or 'fd' is required"),
        ("socket,id=x,path=p,host=h,port=1", "Exactly one of"),
        ("socket,id=x,path=p,to=5", "Parameter 'to' cannot be used with 'path'"),
        (
            "socket,id=x,host=h,port=1,abstract=on",
            "Parameter 'abstract' cannot be used with 'host'",
        ),
        ("socket,id=x,host=h,port=1,delay=on,nodelay=on", "'delay' and 'nodelay'"),
        (
            "socket,id=x,host=h,port=1,reconnect=1,reconnect-ms=5",
            "'reconnect' and 'reconnect-ms' are mutually exclusive",
        ),
        ("socket,id=x,host=h,port=1,reconnect=x", "Parameter 'reconnect' expects a number"),
        ("socket,id=x,host=h,port=1,server=on,reconnect-ms=5", "server listen mode"),
        ("socket,id=x,host=h,port=1,wait=on", "client connect mode"),
        ("socket,id=x,host=h,port=1,websocket=on", "Websocket client is not implemented"),
        ("socket,id=x,host=h,port=1,connections=2", "'connections' option is incompatible"),
        ("socket,id=x,host=h,port=1,server=on,connections=0", "at least 1"),
        ("socket,id=x,path=p,tls-creds=t", "'tls-creds' option is incompatible with 'unix'"),
        ("socket,id=x,fd=3,tls-creds=t", "'tls-creds' option is incompatible with 'fd'"),
        ("socket,id=x,host=h,port=1,tls-authz=a", "'tls-authz' option requires 'tls-creds'"),
        ("file,id=x", "Parameter 'path' is missing"),
        ("pipe,id=x", "Parameter 'path' is missing"),
        ("serial,id=x", "Parameter 'path' is missing"),
        ("udp,id=x", "Parameter 'port' is missing"),
        ("udp,id=x,port=1,localport=y", "Parameter 'localport' expects a number, got 'y'"),
        ("ringbuf,id=x,size=big", "Parameter 'size' expects a size"),
        ("ringbuf,id=x,size=0", "expects an integer of at least 1"),
        ("ringbuf,id=x,size=99999E", "Parameter 'size' is out of range"),
        ("ringbuf,id=x,size=" + "9" * 5000, "Parameter 'size' expects a size"),
        ("socket,id=x,host=h,port=1,to=" + "9" * 5000, "Parameter 'to' expects a number"),
        ("mux,id=x", "Parameter 'chardev' is missing"),
        ("hub,id=h", "hub: 'chardevs' list is not defined"),
        ("hub,id=h,chardevs.1=b", "Parameter 'chardevs.1' given without 'chardevs.0'"),
        ("null,id=x,closed-writes=sometimes", "Parameter 'closed-writes' expects one of"),
        ("null,id=x,closed-writes-overflow=x", "Parameter 'closed-writes-overflow' expects"),
        ("null,id=x,closed-writes-limit=-1", "Parameter 'closed-writes-limit' expects a size"),
        ("null,id=x,mux=on,mux-be-id=h", "'mux' and 'mux-be-id' cannot be combined"),
        ("hub,id=x,chardevs.0=a,mux=on", "a hub cannot be stacked"),
        ("null,id=x,mux-be-id=1h", "Parameter 'mux-be-id' expects an identifier"),
    ],
)
def test_errors_name_the_key_and_value(text: str, message: str) -> None:
    with pytest.raises(ChardevOptionError, match=message):
        parse_chardev(text)


def test_hub_takes_at_most_four() -> None:
    members = ",".join(f"chardevs.{i}=c{i}" for i in range(10))
    with pytest.raises(ChardevOptionError, match=r"Invalid parameter 'chardevs\.4'"):
        parse_chardev(f"hub,id=h,{members}")


def test_option_error_is_a_chardev_error_and_a_value_error() -> None:
    with pytest.raises(ChardevError):
        parse_chardev("bogus,id=x")
    with pytest.raises(ValueError):
        parse_chardev("bogus,id=x")


# ---- QAPI specs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "expects an object"),
        ({"backend": {"type": "null"}}, "Parameter 'id' is missing"),
        ({"id": 5, "backend": {"type": "null"}}, "Parameter 'id' expects an identifier"),
        ({"id": "x", "backend": None}, "Parameter 'backend' expects an object"),
        ({"id": "x", "backend": {"type": "nope"}}, "'nope' is not a valid char driver name"),
        ({"id": "x", "backend": {"type": "null", "extra": 1}}, "Invalid parameter 'backend.extra'"),
        ({"id": "x", "other": 1, "backend": {"type": "null"}}, "Invalid parameter 'other'"),
        (
            {"id": "x", "backend": {"type": "null", "data": {"bogus": 1}}},
            "Invalid parameter 'backend.data.bogus'",
        ),
        (
            {"id": "x", "backend": {"type": "file", "data": {}}},
            "Parameter 'backend.data.out' is missing",
        ),
        (
            {"id": "x", "backend": {"type": "file", "data": {"out": 1}}},
            "Parameter 'backend.data.out' expects a string, got 1",
        ),
        (
            {"id": "x", "backend": {"type": "file", "data": {"out": "o", "append": "on"}}},
            "Parameter 'backend.data.append' expects a boolean, got 'on'",
        ),
        (
            {"id": "x", "backend": {"type": "ringbuf", "data": {"size": True}}},
            "Parameter 'backend.data.size' expects an integer",
        ),
        (
            {"id": "x", "backend": {"type": "hub", "data": {"chardevs": "a"}}},
            "expects a list of strings",
        ),
        (
            {"id": "x", "backend": {"type": "hub", "data": {"chardevs": ["a", "9"]}}},
            r"Parameter 'backend.data.chardevs.1' expects an identifier",
        ),
        (
            {"id": "x", "backend": {"type": "socket", "data": {"addr": {"type": "ip"}}}},
            "Parameter 'backend.data.addr.type' expects one of inet, unix, vsock, fd",
        ),
        (
            {
                "id": "x",
                "backend": {"type": "socket", "data": {"addr": {"type": "inet", "data": {}}}},
            },
            "Parameter 'backend.data.addr.data.host' is missing",
        ),
        (
            {"id": "x", "backend": {"type": "socket", "data": {"addr": inet("h", "99999")}}},
            "Parameter 'backend.data.addr.data.port' expects a port number",
        ),
        (
            {"id": "x", "backend": {"type": "socket", "data": {"addr": inet("h", "9" * 5000)}}},
            "Parameter 'backend.data.addr.data.port' expects a port number",
        ),
        (
            {"id": "x", "backend": {"type": "socket", "data": {"addr": inet("h", "a b")}}},
            "expects a port number or service name",
        ),
        (
            {"id": "x", "backend": {"type": "udp", "data": {"remote": {**inet("h", "1"), "x": 1}}}},
            "Invalid parameter 'backend.data.remote.x'",
        ),
        (
            {"id": "x", "mux": "yes", "backend": {"type": "null"}},
            "Parameter 'mux' expects a boolean",
        ),
    ],
)
def test_qapi_errors(spec: object, message: str) -> None:
    with pytest.raises(ChardevOptionError, match=message):
        validate_spec(spec)


def test_qapi_accepts_service_names_and_fills_defaults() -> None:
    spec = validate_spec(
        {"id": "s", "backend": {"type": "socket", "data": {"addr": inet("h", "telnet")}}}
    )
    assert data_of(spec)["addr"] == inet("h", "telnet")
    assert validate_spec({"id": "n", "backend": {"type": "null"}}) == {
        "id": "n",
        "backend": {"type": "null", "data": {"logappend": False}},
    }


def test_qapi_round_trip_is_stable() -> None:
    spec = parse_chardev("socket,id=s,host=h,port=1,server=on,wait=off,reconnect-ms=0")
    assert validate_spec(spec) == spec


# ---- hostile input -----------------------------------------------------------------

_WORDS = """socket file udp hub mux mux-be null pty ringbuf id path host port server wait on off
no chardevs. size mux-be-id tcp: closed-writes reconnect tls-creds unix: mon: chardev: \x00 é"""
_ALPHABET = st.sampled_from([*",=.:@[]/0123456789", *_WORDS.split()])
_OPTION_TEXT = st.one_of(st.text(max_size=80), st.lists(_ALPHABET, max_size=30).map("".join))


@settings(max_examples=600, deadline=None)
@given(_OPTION_TEXT)
def test_fuzz_chardev_strings(text: str) -> None:
    try:
        spec = parse_chardev(text)
    except ChardevOptionError:
        return
    assert validate_spec(spec) == spec


@settings(max_examples=400, deadline=None)
@given(_OPTION_TEXT)
def test_fuzz_legacy_strings(text: str) -> None:
    try:
        parse_legacy(text, "c0")
    except ChardevOptionError:
        pass


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_SPECS = st.fixed_dictionaries(
    {
        "id": st.one_of(st.just("c"), _JSON),
        "backend": st.one_of(
            _JSON,
            st.fixed_dictionaries(
                {
                    "type": st.sampled_from(["socket", "udp", "file", "hub", "ringbuf", "x"]),
                    "data": st.one_of(
                        _JSON,
                        st.dictionaries(
                            st.sampled_from(
                                ["addr", "remote", "out", "size", "chardevs", "server"]
                            ),
                            _JSON,
                            max_size=3,
                        ),
                    ),
                }
            ),
        ),
    }
)


@settings(max_examples=600, deadline=None)
@given(st.one_of(_JSON, _SPECS))
def test_fuzz_qapi_specs(spec: object) -> None:
    try:
        validate_spec(spec)
    except ChardevOptionError:
        pass


@pytest.mark.parametrize(
    "text",
    ["x," * 100_000, "null,id=a," + "k=1," * 100_000, ",," * 100_000, "=" * 100_000],
    ids=["flags", "keys", "escapes", "equals"],
)
def test_long_hostile_strings_are_refused(text: str) -> None:
    with pytest.raises(ChardevOptionError):
        parse_chardev(text)
    with pytest.raises(ChardevOptionError):
        parse_legacy(text, "c0")


def test_hub_member_policies_on_the_command_line() -> None:
    spec = parse_chardev("hub,id=h,chardevs.0=a,chardevs.1=b,policy.1=drop,limit.1=64k")
    assert spec["backend"]["data"]["policies"] == {"b": {"mode": "drop", "limit": 65536}}
    with pytest.raises(ChardevOptionError, match=r"'policy\.2' given without 'chardevs\.2'"):
        parse_chardev("hub,id=h,chardevs.0=a,policy.2=drop")
