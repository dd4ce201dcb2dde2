"""The daemon's QMP monitor against pipelining, strict-JSON and oversized-input peers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from .conftest import Daemon
from .conftest import QmpConnection as Peer

CAPS = b'{"execute": "qmp_capabilities", "id": "caps"}'


def version(id: object) -> bytes:
    return json.dumps({"execute": "query-version", "id": id}).encode()


def monitor(hostile_daemon: Callable[..., Daemon], tmp_path: Path) -> tuple[Daemon, Path]:
    """The daemon with a QMP monitor on a unix socket, and that socket's path."""
    path = tmp_path / "qmp.sock"
    d = hostile_daemon(
        *("-chardev", f"socket,id=qmp,path={path},server=on,wait=off"),
        *("--monitor", "chardev=qmp"),
    )
    return d, path


@contextmanager
def peer(path: Path) -> Iterator[Peer]:
    p = Peer(path)
    try:
        yield p
    finally:
        p.close()


def is_version(reply: Any, id: object) -> bool:
    return reply.get("id") == id and reply.get("return", {}).get("package") == "iochannel"


def parse_error(desc: str) -> dict[str, Any]:
    return {"error": {"class": "GenericError", "desc": f"JSON parse error, {desc}"}}


def test_pipelined_replies_come_in_arrival_order(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    _, path = monitor(hostile_daemon, tmp_path)
    with peer(path) as p:
        p.sock.sendall(CAPS + version(1) + b"] {nope}" + version(2) + b"]" + version(3))
        caps, one, stray, nope, two, stray2, three = p.replies(7)
        assert caps == {"return": {}, "id": "caps"}
        assert is_version(one, 1) and is_version(two, 2) and is_version(three, 3)
        assert stray == stray2 == parse_error("stray ']'")
        assert nope["error"]["desc"].startswith("JSON parse error, ")


def test_duplicate_keys_and_non_json_numbers_are_refused(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d, path = monitor(hostile_daemon, tmp_path)
    with peer(path) as p:
        p.sock.sendall(CAPS)
        p.reply()
        p.sock.sendall(b'{"execute": "query-version", "execute": "quit"}\n' + version(1))
        dup, one = p.replies(2)
        assert dup == parse_error("duplicate key 'execute'")
        assert is_version(one, 1)
        d.assert_alive()  # the "quit" that Python's json would have kept did not run
        for text in (b"NaN", b"Infinity", b"-Infinity"):
            p.sock.sendall(b'{"execute": "query-version", "id": ' + text + b"}")
            assert p.reply() == parse_error(f"'{text.decode()}' is not a JSON number")
        p.sock.sendall(version(2))
        assert is_version(p.reply(), 2)


def test_nesting_limit_is_reported_at_once_and_the_connection_goes_on(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    _, path = monitor(hostile_daemon, tmp_path)
    with peer(path) as p:
        p.sock.sendall(CAPS)
        p.reply()
        p.sock.sendall(b"[" * 100_000)  # never closed: only the limit can answer
        err = p.reply()
        assert err["error"]["class"] == "GenericError"
        assert err["error"]["desc"].startswith("JSON nesting depth limit exceeded")
        p.sock.sendall(b"\n" + version(1))
        assert is_version(p.reply(), 1)


def test_a_huge_line_is_refused_before_it_ends_in_bounded_memory(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d, path = monitor(hostile_daemon, tmp_path)
    with peer(path) as p:
        p.sock.sendall(CAPS)
        p.reply()
        p.sock.sendall(b'{"execute": "query-version", "arguments": {"x": "')
        chunk = b"A" * (1 << 20)
        for _ in range(4):
            p.sock.sendall(chunk)
        err = p.reply()  # 96 MiB of the 100 MiB line are still to come
        assert err["error"]["class"] == "GenericError"
        assert err["error"]["desc"].startswith("JSON message size limit exceeded")
        for _ in range(96):
            p.sock.sendall(chunk)
        assert (d.rss_kib() - d.rss_at_start) // 1024 < d.rss_slack_mib
        p.sock.sendall(b'"}}\n' + version(1))
        assert is_version(p.reply(), 1)  # the rest of the line got no reply of its own


def test_the_qemu_qmp_client_works_after_hostile_peers(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d, path = monitor(hostile_daemon, tmp_path)
    with peer(path) as p:
        p.sock.sendall(
            b'{"execute": "query-version", "execute": "quit"}'
            + b"[" * 100_000
            + b'\n{"execute": "qmp_capabilities", "id": NaN}'
            + CAPS
        )
        assert p.replies(4)[-1] == {"return": {}, "id": "caps"}

    async def session() -> None:
        client = QMPClient("test")
        await client.connect(str(path))
        try:
            assert (await client.execute("query-version"))["package"] == "iochannel"
            labels = {c["label"] for c in await client.execute("query-chardev")}
            assert labels == {"qmp"}
        finally:
            await client.disconnect()

    asyncio.run(asyncio.wait_for(session(), 10))
    d.assert_alive()
