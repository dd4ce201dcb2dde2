"""The expect core (iochannel.console._expect) and its blocking and asyncio shells."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import threading
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from iochannel import SocketChannel
from iochannel.console import (
    AsyncConsole,
    Console,
    ExpectEOF,
    Expecter,
    ExpectFailure,
    ExpectTimeout,
    Searcher,
    control_byte,
)

# ---- the core, fed directly ------------------------------------------------

TOKENS = ["PROMPT# ", "login: ", "ok=1;", "ok=7;"]
PATTERNS: list[Any] = ["PROMPT# ", "login: ", re.compile(r"ok=\d;")]
# Noise shares no character with the tokens, so it can never complete one.
NOISE = st.text(alphabet="abc \r\n\u00e9\u20ac", max_size=20)
ESCAPES = st.sampled_from(["", "\x1b[0m", "\x1b[1;31m", "\x1b]0;title\x07", "\x1bc"])


def _collect(exp: Expecter[Any], chunks: list[bytes], patterns: list[Any]) -> list[tuple[Any, ...]]:
    """Feed *chunks*, searching after each one as a shell does; a new search after each match."""
    found: list[tuple[Any, ...]] = []
    searcher = Searcher(patterns, kind=exp.kind)
    for chunk in [*chunks, None]:
        if chunk is None:
            exp.feed_eof()
        else:
            exp.feed(chunk)
        while (m := exp.search(searcher)) is not None:
            found.append((m.index, m.before, m.after))
            searcher = Searcher(patterns, kind=exp.kind)
    return found


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.tuples(NOISE, ESCAPES, st.sampled_from(TOKENS)), max_size=12),
    tail=NOISE,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    strip=st.booleans(),
)
def test_split_stream_finds_the_same_matches_as_whole(
    parts: list[tuple[str, str, str]], tail: str, cuts: list[int], strip: bool
) -> None:
    text = "".join(n + e + t for n, e, t in parts) + tail
    data = text.encode()
    # Text mode, decoding UTF-8 split anywhere, escapes stripped or not; window as
    # small as the longest token, so every chunk boundary exercises the overlap.
    whole = _collect(Expecter.text(strip_ansi=strip, window=8), [data], PATTERNS)
    split = _collect(Expecter.text(strip_ansi=strip, window=8), _split(data, cuts), PATTERNS)
    assert split == whole
    assert [after for _, _, after in whole] == [t for _, _, t in parts]
    # Bytes mode, same patterns as bytes.
    bpatterns = [
        p.encode() if isinstance(p, str) else re.compile(p.pattern.encode()) for p in PATTERNS
    ]
    bwhole = _collect(Expecter.binary(window=8), [data], bpatterns)
    bsplit = _collect(Expecter.binary(window=8), _split(data, cuts), bpatterns)
    assert bsplit == bwhole
    assert [after for _, _, after in bwhole] == [t.encode() for _, _, t in parts]


def test_before_holds_the_text_since_the_previous_match() -> None:
    exp = Expecter.text()
    exp.feed(b"boot... login: root\nPROMPT# ")
    s = Searcher(["login: ", "PROMPT# "], exact=True, kind=str)
    m = exp.search(s)
    assert m is not None and (m.index, m.before, m.after) == (0, "boot... ", "login: ")
    m = exp.search(Searcher(["PROMPT# "], exact=True, kind=str))
    assert m is not None and m.before == "root\n"
    assert exp.search(Searcher(["PROMPT# "], exact=True, kind=str)) is None


def test_earliest_match_wins_then_list_order() -> None:
    exp = Expecter.binary()
    exp.feed(b"xx bbb aaa")
    m = exp.search(Searcher([b"aaa", b"bbb", b"b+"], kind=bytes))
    assert m is not None and (m.index, m.after) == (1, b"bbb")


def test_failure_pattern_raises_at_once() -> None:
    exp = Expecter.text()
    exp.feed(b"[    1.0] Kernel panic - not syncing\nlogin: ")
    with pytest.raises(
        ExpectFailure, match="'Kernel panic' appeared while waiting for 'login: '"
    ) as e:
        exp.search(Searcher(["login: "], ["Kernel panic", "Call Trace"], kind=str))
    assert e.value.match.index == 0 and e.value.match.after == "Kernel panic"
    # A success before the failure in the same chunk is a success.
    exp = Expecter.text()
    exp.feed(b"login: \nKernel panic")
    m = exp.search(Searcher(["login: "], ["Kernel panic"], kind=str))
    assert m is not None and m.after == "login: "


def test_failure_wins_a_tie_at_the_same_position() -> None:
    exp = Expecter.text()
    exp.feed(b"Kernel panic - not syncing")
    with pytest.raises(ExpectFailure):
        exp.search(Searcher(["Kernel"], ["Kernel panic"], exact=True, kind=str))


def test_failure_split_across_chunks() -> None:
    exp = Expecter.text(window=16)
    s = Searcher(["login: "], ["Kernel panic"], kind=str)
    for chunk in (b"x" * 100 + b"Kern", b"el pa", b"nic"):
        exp.feed(chunk)
        if chunk != b"nic":
            assert exp.search(s) is None
    with pytest.raises(ExpectFailure):
        exp.search(s)


def test_pattern_type_must_match_the_mode() -> None:
    with pytest.raises(TypeError, match="pass str patterns"):
        Searcher([b"x"], kind=str)
    with pytest.raises(TypeError, match="pass bytes patterns"):
        Searcher(["x"], kind=bytes)
    with pytest.raises(ValueError, match="at least one pattern"):
        Searcher([], kind=bytes)


def test_invalid_utf8_and_binary_garbage() -> None:
    garbage = bytes(range(256)) * 4 + b"\xff\xfe\xc3"
    exp = Expecter.text(errors="replace")
    exp.feed(garbage)
    exp.feed(b"\x00\x80 login: ")
    m = exp.search(Searcher(["login: "], exact=True, kind=str))
    assert m is not None and "\ufffd" in m.before
    exp = Expecter.binary()
    exp.feed(garbage + b"\x00\x80 login: ")
    m = exp.search(Searcher([b"\x80 login: "], exact=True, kind=bytes))
    assert m is not None and m.before.startswith(bytes(range(256)))
    with pytest.raises(UnicodeDecodeError):
        Expecter.text(errors="strict").feed(b"ok \xff")


def test_a_literal_longer_than_the_window_is_still_found() -> None:
    exp = Expecter.binary(window=4)
    s = Searcher([b"0123456789"], exact=True, kind=bytes)
    exp.feed(b"..01234")
    assert exp.search(s) is None
    exp.feed(b"56789")
    assert exp.search(s) is not None


def test_a_regex_longer_than_the_window_is_missed_as_documented() -> None:
    exp = Expecter.binary(window=8)
    s = Searcher([rb"<[a-z]*>"], kind=bytes)
    exp.feed(b"<" + b"a" * 20)
    assert exp.search(s) is None
    exp.feed(b">")
    assert exp.search(s) is None


def test_strip_ansi_across_chunks() -> None:
    exp = Expecter.text(strip_ansi=True)
    s = Searcher(["root@host:~# "], exact=True, kind=str)
    for chunk in (b"\x1b[1;3", b"2mroot@\x1b", b"[0mhost:~# "):
        exp.feed(chunk)
    m = exp.search(s)
    assert m is not None and m.before == ""


def test_log_gets_raw_bytes_with_optional_timestamps() -> None:
    seen: list[bytes] = []
    exp = Expecter.text(strip_ansi=True, log=seen.append)
    exp.feed(b"\x1b[0mone\ntw")
    exp.feed(b"o\n")
    assert b"".join(seen) == b"\x1b[0mone\ntwo\n"
    out = io.BytesIO()
    exp = Expecter.binary(log=out, timestamps=True)
    exp.feed(b"one\ntw")
    exp.feed(b"o\nthree")
    lines = out.getvalue().split(b"\n")
    stamp = rb"\[\d\d:\d\d:\d\d\.\d\d\d\] "
    assert [re.sub(stamp, b"", line) for line in lines] == [b"one", b"two", b"three"]
    assert all(re.match(stamp, line) for line in lines)


def test_eof_mid_match_says_what_was_awaited_and_what_came() -> None:
    exp = Expecter.text()
    exp.feed(b"Welcome\r\nlogi")
    s = Searcher(["login: "], exact=True, kind=str)
    assert exp.search(s) is None
    exp.feed_eof()
    assert exp.search(s) is None
    err = exp.eof_error(s, "unix:serial.sock")
    assert str(err) == (
        "end of stream on unix:serial.sock while waiting for 'login: '; "
        "last bytes received: b'Welcome\\r\\nlogi'"
    )


# ---- the shells over a socket ----------------------------------------------


def _pair() -> tuple[socket.socket, SocketChannel]:
    ours, peer = socket.socketpair()
    return peer, SocketChannel(ours)


def test_console_expect_send_and_peer_closing_mid_match() -> None:
    peer, channel = _pair()
    with peer, Console(channel, linesep="\r") as c:
        peer.sendall(b"login: ")
        assert c.expect([r"log\w+: ", "Password"]).index == 0
        c.sendline("root")
        c.sendcontrol("c")
        assert peer.recv(100) == b"root\r\x03"
        peer.sendall(b"Passw")
        peer.shutdown(socket.SHUT_WR)
        with pytest.raises(
            ExpectEOF, match=r"while waiting for 'Password: '; last bytes received: b'login: Passw'"
        ):
            c.expect_exact("Password: ")


def test_control_bytes() -> None:
    assert [control_byte(c) for c in "c]?@"] == [b"\x03", b"\x1d", b"\x7f", b"\x00"]
    with pytest.raises(ValueError, match="control character '1'"):
        control_byte("1")


def _flood(peer: socket.socket, total: int, stop: threading.Event) -> None:
    block = (b"no match here " * 300)[:4096]
    sent = 0
    try:
        while sent < total and not stop.is_set():
            peer.sendall(block)
            sent += len(block)
    except OSError:
        pass  # the console closed its end


def test_flood_without_match_is_bounded_and_times_out_on_time() -> None:
    peer, channel = _pair()
    stop = threading.Event()
    writer = threading.Thread(target=_flood, args=(peer, 100 << 20, stop))
    c = Console(channel, max_before=1 << 20)
    tracemalloc.start()
    writer.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(ExpectTimeout, match=r"timed out after 1.5 s .* waiting for 'PROMPT# '"):
            c.expect("PROMPT# ", timeout=1.5)
        elapsed = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        stop.set()
        c.close()
        writer.join()
        peer.close()
    assert 1.5 <= elapsed < 2.5
    assert c.expecter.received > 1 << 20
    assert peak < 8 << 20, f"peak {peak} bytes while flooded"


def test_async_console_flood_times_out_on_time() -> None:
    async def main() -> float:
        peer, channel = _pair()
        stop = threading.Event()
        writer = threading.Thread(target=_flood, args=(peer, 100 << 20, stop))
        c = AsyncConsole(channel)
        writer.start()
        try:
            t0 = time.monotonic()
            with pytest.raises(ExpectTimeout):
                await c.expect_exact("PROMPT# ", timeout=1.0)
            return time.monotonic() - t0
        finally:
            stop.set()
            await c.aclose()
            writer.join()
            peer.close()

    assert 1.0 <= asyncio.run(main()) < 2.0


def test_async_console_expect_and_run_markers() -> None:
    async def main() -> None:
        peer, channel = _pair()
        async with AsyncConsole(channel, encoding=None) as c:
            peer.sendall(b"\x00garbage\xff$ ")
            m = await c.expect(rb"\$ ", failures=[b"Kernel panic"])
            assert m.before == b"\x00garbage\xff"
            with pytest.raises(
                ExpectTimeout, match=r"last bytes received: b'\\x00garbage\\xff\$ '"
            ):
                await c.expect(b"never", timeout=0.1)
            # A caller's own timeout stays a plain TimeoutError, not ours.
            with pytest.raises(TimeoutError) as e:
                async with asyncio.timeout(0.05):
                    await c.expect(b"never", timeout=5)
            assert not isinstance(e.value, ExpectTimeout)
        peer.close()

    asyncio.run(main())


@settings(max_examples=500, deadline=None)
@example(literal="ab", pieces=[["b"] * 18 + ["L"]])  # a match right after the last miss
@given(
    literal=st.text(alphabet="ab :", min_size=1, max_size=5),
    pieces=st.lists(
        st.lists(st.sampled_from(["a", "b", " ", ":", "ab", "L", "P"]), max_size=120),
        min_size=1,
        max_size=6,
    ),
)
def test_literal_search_finds_what_find_finds(literal: str, pieces: list[list[str]]) -> None:
    # Texts of near misses ("P": the literal's prefix) make every anchor common: the
    # search must change anchors and fall back to plain find, over several calls,
    # and still agree with str.find.
    searcher = Searcher([literal], exact=True, kind=str)
    bsearcher = Searcher([literal.encode()], exact=True, kind=bytes)
    for piece in pieces:
        text = "".join(literal if p == "L" else literal[:-1] if p == "P" else p for p in piece)
        found = searcher.find(text)
        assert (found[0] if found else -1) == text.find(literal)
        bfound = bsearcher.find(text.encode())
        assert (bfound[0] if bfound else -1) == text.find(literal)


def _trickle(peer: socket.socket, pieces: list[bytes], pause: float, stop: threading.Event) -> None:
    for piece in pieces:
        if stop.wait(pause):
            return
        peer.sendall(piece)


def test_async_timeout_is_for_the_whole_wait_not_each_read() -> None:
    # A byte arrives every 0.15 s: each read is quick, but the pattern is
    # complete only after 0.75 s, past the 0.5 s timeout.
    async def main() -> None:
        peer, channel = _pair()
        stop = threading.Event()
        pieces = [b"l", b"o", b"g", b"i", b"n", b":", b" "]
        writer = threading.Thread(target=_trickle, args=(peer, pieces, 0.15, stop))
        c = AsyncConsole(channel)
        writer.start()
        try:
            t0 = time.monotonic()
            with pytest.raises(
                ExpectTimeout, match=r"timed out after 0.5 s .* last bytes received: b'log'"
            ):
                await c.expect_exact("login: ", timeout=0.5)
            assert 0.5 <= time.monotonic() - t0 < 0.65
            # Nothing was lost: the rest completes the pattern for the next expect.
            m = await c.expect_exact("login: ", timeout=5)
            assert m.before == ""
        finally:
            stop.set()
            writer.join()
            await c.aclose()
            peer.close()

    asyncio.run(main())


def test_async_cancelled_expect_leaves_the_console_usable_and_loses_nothing() -> None:
    async def main() -> None:
        peer, channel = _pair()
        async with AsyncConsole(channel, timeout=10) as c:
            peer.sendall(b"boot 1\r\nlog")
            task = asyncio.create_task(c.expect_exact("login: "))
            await asyncio.sleep(0.1)  # the task has read "log" and waits for more
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Bytes that arrive after the cancellation and a flood in between all count.
            flood = b"".join(b"line %06d\r\n" % i for i in range(20_000))
            sender = threading.Thread(target=peer.sendall, args=(b"in: " + flood + b"PROMPT# ",))
            sender.start()
            m = await c.expect_exact("login: ")
            assert m.before == "boot 1\r\n"
            m = await c.expect_exact("PROMPT# ")
            sender.join()
            assert m.before == flood.decode()
            assert c.expecter.received == len(b"boot 1\r\nlogin: " + flood + b"PROMPT# ")
            # Cancelled again and again in the middle of a flood: whatever was read is kept.
            # (three floods: less than max_before, so before holds them all)
            sender = threading.Thread(target=peer.sendall, args=(flood * 3 + b"END",))
            sender.start()
            for i in range(10_000):
                task = asyncio.create_task(c.expect_exact("END"))
                for _ in range(i % 5):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    m = await task  # it may have matched before the cancellation
                    break
                except asyncio.CancelledError:
                    pass
            else:
                m = await c.expect_exact("END")
            sender.join()
            assert m.before == flood.decode() * 3
        peer.close()

    asyncio.run(main())
