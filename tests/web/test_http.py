"""The console's HTTP request parser against well-formed and hostile heads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iochannel.web.http import (
    MAX_HEAD,
    HttpError,
    check_origin,
    parse_origin,
    parse_request,
    response,
)


def head(start: str = "GET / HTTP/1.1", *fields: str) -> bytes:
    return ("\r\n".join((start, *(fields or ("Host: console",)))) + "\r\n\r\n").encode()


def status_of(data: bytes) -> int:
    with pytest.raises(HttpError) as info:
        parse_request(data)
    return info.value.status


def test_a_browser_request() -> None:
    request = parse_request(
        head("GET /static/vendor/xterm.js?token=a%2Bb&x= HTTP/1.1", "Host: h", "Accept: */*")
    )
    assert request.method == "GET"
    assert request.path == "/static/vendor/xterm.js"
    assert request.query == {"token": "a+b", "x": ""}
    assert request.header("ACCEPT") == "*/*"
    assert request.header("authorization") is None


@pytest.mark.parametrize(
    "start",
    [
        "GET /../etc/passwd HTTP/1.1",
        "GET /static/../../etc/passwd HTTP/1.1",
        "GET /static/%2e%2e/%2E%2E/etc/passwd HTTP/1.1",
        "GET /static/./x HTTP/1.1",
        "GET /static/..%5c..%5cx HTTP/1.1",
        "GET /static/x%00.js HTTP/1.1",
        "GET /%zz HTTP/1.1",
        "GET /%ff HTTP/1.1",
        "GET http://evil/ HTTP/1.1",
        "GET * HTTP/1.1",
        "GET / HTTP/1.0",
        "GET / HTTP/2",
        "GET /  HTTP/1.1",
        "GET / HTTP/1.1 extra",
        "G@T / HTTP/1.1",
        "GET /?token=a&token=b HTTP/1.1",
        "GET /?%ff=1 HTTP/1.1",
    ],
)
def test_bad_request_lines_are_400(start: str) -> None:
    assert status_of(head(start)) == 400


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT"])
def test_other_methods_are_405_with_allow(method: str) -> None:
    with pytest.raises(HttpError) as info:
        parse_request(head(f"{method} / HTTP/1.1"))
    assert info.value.status == 405
    assert b"\r\nAllow: GET, HEAD\r\n" in info.value.response()


@pytest.mark.parametrize(
    "fields",
    [
        (),
        ("Host: a", "Host: b"),
        ("Host: a", "Bad Name: x"),
        ("Host: a", "NoColon"),
        ("Host: a", "X: \x01"),
        ("Host: a", "X: caf\u00e9"),
    ],
)
def test_bad_header_fields_are_400(fields: tuple[str, ...]) -> None:
    data = ("\r\n".join(("GET / HTTP/1.1", *fields)) + "\r\n\r\n").encode()
    assert status_of(data) == 400


def test_too_many_or_too_large_headers_are_431() -> None:
    assert status_of(head("GET / HTTP/1.1", "Host: a", *(f"X-{i}: y" for i in range(40)))) == 431
    assert status_of(head("GET / HTTP/1.1", "Host: a", "X: " + "y" * MAX_HEAD)) == 431


def test_responses_are_complete_and_close() -> None:
    answer = response(200, b"hello", content_type="text/html")
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 5" in head_part and b"Connection: close" in head_part
    assert b"Referrer-Policy: no-referrer" in head_part
    assert body == b"hello"
    assert (
        response(200, b"hello", content_type="text/html", head_only=True) == head_part + b"\r\n\r\n"
    )


@given(st.binary(max_size=600))
def test_random_heads_only_raise_http_errors(data: bytes) -> None:
    try:
        parse_request(data + b"\r\n\r\n")
    except HttpError as exc:
        assert exc.status in (400, 405, 431)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("http://Console.Example", "http://console.example"),
        ("HTTP://console.example:80", "http://console.example"),
        ("https://console.example:443", "https://console.example"),
        ("https://console.example:8443", "https://console.example:8443"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_origins_are_canonical(text: str, canonical: str) -> None:
    assert parse_origin(text) == canonical


@pytest.mark.parametrize(
    "text", ["null", "console.example", "ftp://a", "http://a/", "http://u@a", "http://a:x", ""]
)
def test_malformed_origins_are_refused_naming_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        parse_origin(text)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        ("http://console:8080", True),  # the console's own
        ("http://CONSOLE:8080", True),
        ("http://other.example", True),  # listed
        ("https://console:8080", False),  # the scheme differs
        ("http://console:8081", False),
        ("http://evil.example", False),
        ("null", False),
    ],
)
def test_the_websocket_origin_check(origin: str | None, allowed: bool) -> None:
    fields = ["Host: console:8080", *([f"Origin: {origin}"] if origin else [])]
    request = parse_request(head("GET /ws HTTP/1.1", *fields))
    if allowed:
        check_origin(request, "http", {"http://other.example"})
    else:
        with pytest.raises(HttpError) as info:
            check_origin(request, "http", {"http://other.example"})
        assert info.value.status == 403
