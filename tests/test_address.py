"""QEMU-style socket address strings and name resolution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iochannel import (
    AddressError,
    FdAddress,
    InetAddress,
    UnixAddress,
    VsockAddress,
    format_address,
    parse_address,
    resolve,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:4444", InetAddress("localhost", "4444")),
        (":4444", InetAddress("", "4444")),
        ("0.0.0.0:0", InetAddress("0.0.0.0", "0")),
        ("[::1]:80", InetAddress("::1", "80", ipv6=True)),
        ("127.0.0.1:5900,to=5910", InetAddress("127.0.0.1", "5900", to=5910)),
        ("host:1,ipv4", InetAddress("host", "1", ipv4=True)),
        ("host:1,ipv6=off,ipv4=on", InetAddress("host", "1", ipv4=True, ipv6=False)),
        ("unix:/tmp/x.sock", UnixAddress("/tmp/x.sock")),
        ("unix:name,abstract=on,tight=off", UnixAddress("name", abstract=True, tight=False)),
        ("vsock:3:1234", VsockAddress(3, 1234)),
        ("fd:7", FdAddress(7)),
    ],
)
def test_parse(text: str, expected: object) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nohostport", "has no ':port'"),
        ("::1:80", "brackets"),
        ("[::1]80", "expected \\[host\\]:port"),
        ("host:99999", "out of range"),
        ("host:1,to=0", "lower than port"),
        ("host:1,bogus=1", "unknown inet address option 'bogus'"),
        ("host:1,ipv4=maybe", "not a boolean"),
        ("host:1,ipv4=off,ipv6=off", "cannot both be off"),
        ("unix:/x,abstract=nah", "not a boolean"),
        ("unix:/x,foo", "unknown unix address option"),
        ("unix:" + "a" * 120, "too long"),
        ("vsock:3", "vsock:CID:PORT"),
        ("vsock:x:1", "invalid vsock cid"),
        ("fd:abc", "invalid fd"),
        ("fd:-1", "invalid fd"),
        ("host:po rt", "invalid port"),
    ],
)
def test_bad_addresses_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        parse_address(text)


@given(st.text(max_size=60))
def test_fuzzed_strings_parse_or_raise_address_error(text: str) -> None:
    try:
        addr = parse_address(text)
    except AddressError:
        return
    assert parse_address(format_address(addr)).__class__ is addr.__class__


def test_resolve_localhost_numeric() -> None:
    addrs = resolve(InetAddress("127.0.0.1", "80"))
    assert addrs == [InetAddress("127.0.0.1", "80", numeric=True, ipv4=True)]


def test_resolve_failure_is_address_error() -> None:
    with pytest.raises(AddressError, match="resolution failed"):
        resolve(InetAddress("no-such-host.invalid", "80"))


def test_resolve_passes_other_kinds_through() -> None:
    assert resolve(UnixAddress("/x")) == [UnixAddress("/x")]
