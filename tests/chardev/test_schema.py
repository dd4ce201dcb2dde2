"""Backend schemas: one declaration serves -chardev, QMP, help and the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iochannel.chardev import ChardevRegistry
from iochannel.chardev.options import (
    ChardevOptionError,
    backend_help,
    backend_names,
    options_help,
    options_table,
    parse_chardev,
    schema,
    validate_spec,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "chardev.md"
#: A value of each -chardev key kind that its converter takes.
VALUES = {"str": "x", "bool": "on", "num": "1", "size": "1k", "port": "1"}


def refusal(text: str) -> str:
    """The error of parsing *text*, or ``""`` if it parses."""
    try:
        parse_chardev(text)
    except ChardevOptionError as exc:
        return str(exc)
    return ""


@pytest.mark.parametrize("name", backend_names())
def test_command_line_qmp_and_help_agree(name: str) -> None:
    s = schema(name)
    # query-chardev-backends, -chardev help and the parser know the same types ...
    assert name in ChardevRegistry.backends()
    assert re.search(rf"^  {re.escape(name)} ", backend_help(), re.MULTILINE)
    assert "not a valid char driver name" not in refusal(f"{name},id=x")
    # ... and -chardev TYPE,help lists exactly the keys the parser takes, with their types.
    listed = re.findall(
        r"^  ([\w.-]+)=<(.+)>$", options_help(name).split("options of every")[0], re.M
    )
    assert {k for k, _ in listed} == {"id", *s.cli}
    for key, kind in s.cli.items():
        assert (key, kind if kind != "bool" else "bool (on/off)") in listed
        message = refusal(f"{name},id=x,{key}={VALUES[kind]}")
        assert f"Invalid parameter '{key}'" not in message
        assert f"Parameter '{key}' expects" not in message
    # chardev-add takes every declared field (it may refuse its value, never its name).
    for field in s.qapi:
        with pytest.raises(ChardevOptionError) as info:
            validate_spec({"id": "x", "backend": {"type": name, "data": {field: object()}}})
        assert "Parameter 'backend.data." in str(info.value)
        assert "Invalid parameter" not in str(info.value)


def test_a_spec_from_the_command_line_is_a_valid_qmp_spec() -> None:
    for text in (
        "file,id=f,path=o,input-path=i,append=on,timestamp=on",
        "socket,id=s,host=h,port=1,reconnect=2,reconnect-max-ms=9000",
        "hub,id=h,chardevs.0=a,policy.0=drop,limit.0=4k",
        "command,id=c,cmd=sh -c 'echo hi',pty=off,restart=on",
        "udp,id=u,host=h,port=1,localport=2",
    ):
        spec = parse_chardev(text)
        assert validate_spec(spec) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("socket,id=s,pth=x", "Invalid parameter 'pth'; did you mean 'path'?"),
        ("file,id=f,path=o,apend=on", "Invalid parameter 'apend'; did you mean 'append'?"),
        ("null,id=n,logfle=x", "Invalid parameter 'logfle'; did you mean 'logfile'?"),
        ("sockt,id=s", "'sockt' is not a valid char driver name; did you mean 'socket'?"),
        ("ringbuff,id=r", "did you mean 'ringbuf'?"),
        ("null,id=n,zzz=1", "Invalid parameter 'zzz'$"),
        ("qwerty,id=n", "'qwerty' is not a valid char driver name$"),
    ],
)
def test_unknown_names_suggest_the_nearest(text: str, message: str) -> None:
    with pytest.raises(ChardevOptionError, match=message):
        parse_chardev(text)


def test_unknown_qapi_names_suggest_the_nearest() -> None:
    with pytest.raises(ChardevOptionError, match=r"'backend\.data\.apend'; did you mean 'append'"):
        validate_spec({"id": "f", "backend": {"type": "file", "data": {"out": "o", "apend": 1}}})
    with pytest.raises(ChardevOptionError, match=r"'fiel' is not a valid .*did you mean 'file'"):
        validate_spec({"id": "f", "backend": {"type": "fiel"}})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"size": 3}, "Parameter 'backend.data.size': size of ringbuf chardev must be a power"),
        ({"chardev": "9"}, "Parameter 'backend.data.chardev' expects an identifier"),
    ],
    ids=["ringbuf", "mux"],
)
def test_qmp_errors_name_the_field_with_its_prefix(spec: dict[str, object], message: str) -> None:
    kind = "mux" if "chardev" in spec else "ringbuf"
    with pytest.raises(ChardevOptionError, match=message):
        validate_spec({"id": "x", "backend": {"type": kind, "data": spec}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ringbuf,id=r,size=3", "Parameter 'size': size of ringbuf chardev must be a power"),
        ("mux,id=m", "Parameter 'chardev' is missing"),
        ("command,id=c,cmd=", "Parameter 'cmd' must name a program"),
        ("command,id=c,cmd=x,restart-ms=9,restart-max-ms=5", "'restart-max-ms' must not be"),
        ("socket,id=s,host=h,port=1,tls-authz=a", "'tls-authz' option requires 'tls-creds'"),
    ],
)
def test_command_line_errors_name_the_key_as_written(text: str, message: str) -> None:
    with pytest.raises(ChardevOptionError, match=message) as info:
        parse_chardev(text)
    assert "backend.data" not in str(info.value) and "_" not in str(info.value).split("'")[1]


def test_socket_rules_are_the_same_for_specs_and_the_constructor() -> None:
    # Rules the constructor had and specs did not: now one check serves both.
    for text, message in (
        ("socket,id=s,host=h,port=1,telnet=on,tn3270=on", "'telnet' and 'tn3270'"),
        ("socket,id=s,fd=3,reconnect-ms=5", "'reconnect-ms' cannot be used with an 'fd'"),
    ):
        with pytest.raises(ChardevOptionError, match=message):
            parse_chardev(text)


def test_help_lists_backends_and_a_backends_keys_as_qemu_does() -> None:
    text = backend_help()
    assert text.startswith("Available chardev backend types:\n")
    assert [line.split()[0] for line in text.splitlines()[1:]] == backend_names()
    socket = options_help("socket")
    assert socket.startswith("socket options:\n  id=<str>\n")
    for line in ("  path=<str>", "  port=<port>", "  server=<bool (on/off)>", "  to=<num>"):
        assert line + "\n" in socket
    assert "  logfile=<str>\n" in socket.split("options of every backend:")[1]
    with pytest.raises(ChardevOptionError, match="did you mean 'socket'"):
        options_help("sockets")


def test_parallel_is_not_a_backend_anywhere() -> None:
    assert "parallel" not in backend_names()
    assert "parallel" not in ChardevRegistry.backends()
    assert "not a valid char driver name" in refusal("parallel,id=p,path=/dev/parport0")


def test_the_docs_carry_every_backends_keys() -> None:
    assert options_table() in DOCS.read_text(), (
        "docs/chardev.md: the table of -chardev keys differs from the declarations; "
        "paste iochannel.chardev.options.options_table() into its 'Options' section"
    )
