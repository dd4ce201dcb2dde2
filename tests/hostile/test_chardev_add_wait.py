"""``chardev-add`` of a socket server that would wait for a client.

Waiting would block the daemon's loop until someone connects: every monitor,
viewer and signal would stop.  QMP refuses it with an error that says what to
use instead, and the daemon keeps answering.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError, QMPClient

from .conftest import Daemon


def test_chardev_add_with_wait_is_refused_without_freezing(
    hostile_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    qmp = tmp_path / "qmp.sock"
    d: Daemon = hostile_daemon(
        *("-chardev", f"socket,id=qmp,path={qmp},server=on,wait=off"),
        *("--monitor", "chardev=qmp"),
    )

    def server(wait: bool) -> dict[str, object]:
        addr = {"type": "unix", "data": {"path": str(tmp_path / "late.sock")}}
        return {"type": "socket", "data": {"addr": addr, "server": True, "wait": wait}}

    async def main() -> None:
        client = QMPClient("test")
        await client.connect(str(qmp))
        try:
            add = client.execute("chardev-add", {"id": "late", "backend": server(True)})
            with pytest.raises(ExecuteError, match="'wait' cannot be true"):
                await asyncio.wait_for(add, 5)
            version = await asyncio.wait_for(client.execute("query-version"), 5)
            assert isinstance(version, dict) and version["package"] == "iochannel"
            # Without waiting it is added, and accepts clients in the background.
            await client.execute("chardev-add", {"id": "late", "backend": server(False)})
            _, writer = await asyncio.open_unix_connection(str(tmp_path / "late.sock"))
            writer.close()
            await writer.wait_closed()
            await client.execute("chardev-remove", {"id": "late"})
        finally:
            await client.disconnect()

    asyncio.run(main())
    d.assert_alive()
