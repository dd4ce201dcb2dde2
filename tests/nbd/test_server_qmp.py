"""NBD QMP commands: our daemon and qemu-storage-daemon 7.2 answer the same input alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.block.test_qsd_side_by_side import _run_both, _same_error


def _script(d: Path) -> list[tuple[str, dict[str, Any]]]:
    img = str(d / "disk.img")
    sock = str(d / "nbd.sock")

    def nbd(id: str, node: str = "f0", **extra: Any) -> dict[str, Any]:
        return {"type": "nbd", "id": id, "node-name": node, **extra}

    return [
        ("nbd-server-stop", {}),
        ("blockdev-add", {"driver": "file", "node-name": "f0", "filename": img}),
        ("blockdev-add", {"driver": "file", "node-name": "fro", "filename": img,
                          "read-only": True, "locking": "off"}),
        ("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": 1 << 20}),
        ("block-export-add", nbd("e0")),
        ("nbd-server-add", {"device": "n0"}),
        ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}}}),
        ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}}}),
        ("block-export-add", nbd("e0", writable=True, name="disk", description="d")),
        ("block-export-add", nbd("e0", node="n0")),
        ("block-export-add", nbd("e1", name="disk")),
        ("block-export-add", nbd("e2", node="fro", writable=True)),
        ("block-export-add", nbd("e3", node="nx")),
        ("block-export-add", nbd("e4", iothread="iox")),
        ("block-export-add", nbd("e5", name="x" * 4097)),
        ("block-export-add", nbd("e6", node="fro")),
        ("nbd-server-add", {"device": "n0", "name": "legacy"}),
        ("query-block-exports", {}),
        ("block-export-del", {"id": "legacy"}),
        ("block-export-del", {"id": "legacy"}),
        ("nbd-server-remove", {"name": "e6"}),
        ("blockdev-del", {"node-name": "f0"}),
        ("query-block-exports", {}),
        ("nbd-server-stop", {}),
        ("query-block-exports", {}),
        ("nbd-server-stop", {}),
        ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": sock}}}),
        ("block-export-add", nbd("e7", node="n0")),
        ("nbd-server-stop", {}),
    ]  # fmt: skip


def test_nbd_commands_same_as_qsd(tmp_path: Path) -> None:
    answers, events = _run_both(tmp_path, _script)
    script = _script(tmp_path)
    for (name, args), theirs, ours in zip(script, answers["qsd"], answers["ours"], strict=True):
        where = f"{name} {args}"
        _same_error(where, theirs, ours)
        if name == "query-block-exports":
            # qemu-storage-daemon lists the newest first; the order is not part of the API.
            theirs, ours = ({"return": sorted(r["return"], key=str)} for r in (theirs, ours))
        if "error" not in theirs:
            assert ours == theirs, where
    assert events["ours"] == events["qsd"]
    assert events["ours"].count("BLOCK_EXPORT_DELETED") == 4
