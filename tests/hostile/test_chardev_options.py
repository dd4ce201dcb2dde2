"""Chardev options as the daemon process answers them: help, QMP and --check agree."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from .conftest import Daemon
from .test_small import iochannel, qmp_daemon, qmp_errors


def qmp_execute(path: Path, name: str) -> Any:
    async def main() -> Any:
        client = QMPClient("test")
        await client.connect(str(path))
        try:
            return await client.execute(name)
        finally:
            await client.disconnect()

    return asyncio.run(main())


def test_help_and_query_chardev_backends_list_the_same_types(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d, qmp = qmp_daemon(hostile_daemon, tmp_path)
    answer = sorted(b["name"] for b in qmp_execute(qmp, "query-chardev-backends"))
    helped = iochannel("-chardev", "help")
    assert helped.returncode == 0 and helped.stderr == ""
    lines = helped.stdout.splitlines()
    assert lines[0] == "Available chardev backend types:"
    assert [line.split()[0] for line in lines[1:]] == answer
    for name in answer:  # each type's keys, listed the way the parser takes them
        keys = iochannel("-chardev", f"{name},help")
        assert keys.returncode == 0 and keys.stdout.startswith(f"{name} options:\n  id=<str>\n")
    d.assert_alive()


def test_a_misspelt_key_gets_the_same_suggestion_everywhere(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d, qmp = qmp_daemon(hostile_daemon, tmp_path)
    [error] = qmp_errors(
        qmp,
        [
            (
                "chardev-add",
                {"id": "f", "backend": {"type": "file", "data": {"out": "o", "apend": 1}}},
            )
        ],
    )
    assert error.startswith("Invalid parameter 'backend.data.apend'; did you mean 'append'")
    argv = ("-chardev", f"file,id=f,path={tmp_path / 'o'},apend=on")
    checked, started = iochannel("--check", *argv), iochannel(*argv)
    assert checked.returncode == started.returncode == 1
    assert checked.stderr == started.stderr
    assert "Invalid parameter 'apend'; did you mean 'append'" in checked.stderr
    assert not (tmp_path / "o").exists()
    d.assert_alive()
