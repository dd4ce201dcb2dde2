"""QMP storage commands: our daemon and qemu-storage-daemon 7.2 answer the same input.

Documented differences: where qemu-storage-daemon's text is a prefix of ours,
we name the user (``Node n0 is in use by export 'e0'``) or say what to do.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import require_tool


class _QMP:
    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + 20
        while not path.exists():
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rw")
        self.file.readline()
        self.events: list[str] = []
        assert self.cmd("qmp_capabilities") == {"return": {}}

    def cmd(self, name: str, /, **args: Any) -> dict[str, Any]:
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()
        while True:
            reply: dict[str, Any] = json.loads(self.file.readline())
            if "event" not in reply:
                return reply
            self.events.append(reply["event"])

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _start(argv: list[str], sock: Path) -> tuple[subprocess.Popen[bytes], _QMP]:
    chardev = f"socket,path={sock},server=on,wait=off,id=m"
    proc = subprocess.Popen(
        [*argv, "--chardev", chardev, "--monitor", "chardev=m"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, _QMP(sock)


def _script(d: Path) -> list[tuple[str, dict[str, Any]]]:
    img = str(d / "disk.img")

    def export(id: str, **extra: Any) -> dict[str, Any]:
        addr = {"type": "unix", "path": str(d / f"{id}.sock")}
        return {"type": "vhost-user-blk", "id": id, "node-name": "n0", "addr": addr, **extra}

    return [
        ("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": "1M"}),
        ("blockdev-add", {"driver": "null-co", "node-name": "n0", "bogus": 1}),
        ("blockdev-add", {"node-name": "n0"}),
        ("blockdev-add", {"driver": "frob", "node-name": "n0"}),
        ("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": 1048576}),
        ("blockdev-add", {"driver": "null-co", "node-name": "n0"}),
        ("blockdev-add", {"driver": "null-co"}),
        ("blockdev-add", {"driver": "file", "node-name": "9bad", "filename": img}),
        ("blockdev-add", {"driver": "file", "node-name": "f1", "filename": img + ".none"}),
        ("blockdev-add", {"driver": "file", "node-name": "f0", "filename": img}),
        ("blockdev-add", {"driver": "raw", "node-name": "r1", "file": "nope"}),
        ("blockdev-add", {"driver": "raw", "node-name": "r2", "file": "f0", "size": 1 << 21}),
        ("blockdev-add", {"driver": "host_device", "node-name": "h0", "filename": img}),
        ("blockdev-add", {"driver": "raw", "node-name": "r0", "file": "f0", "size": 8192}),
        ("blockdev-del", {"node-name": "f0"}),
        ("blockdev-del", {"node-name": "zz"}),
        ("object-add", {"qom-type": "iothread", "id": "io0"}),
        ("object-add", {"qom-type": "iothread", "id": "io0"}),
        ("object-add", {"qom-type": "iothread", "id": "io1", "poll-max-ns": "x"}),
        ("block-export-add", export("e0", iothread="io0")),
        ("block-export-add", export("e0")),
        ("block-export-add", {**export("e2"), "node-name": "nx"}),
        ("block-export-add", export("e3", iothread="iox")),
        ("block-export-add", export("e4", **{"num-queues": 0})),
        ("block-export-add", export("e5", **{"logical-block-size": 1000})),
        ("block-export-add", {**export("e6"), "addr": {"type": "inet", "host": "x", "port": "1"}}),
        ("block-export-add", {k: v for k, v in export("e7").items() if k != "addr"}),
        ("query-block-exports", {}),
        ("blockdev-del", {"node-name": "n0"}),
        ("object-del", {"id": "iox"}),
        ("block-export-del", {"id": "e0"}),
        ("block-export-del", {"id": "e0"}),
        ("object-del", {"id": "io0"}),
        ("blockdev-del", {"node-name": "r0"}),
        ("blockdev-del", {"node-name": "f0"}),
        ("blockdev-del", {"node-name": "n0"}),
        ("query-named-block-nodes", {}),
    ]


Script = Callable[[Path], list[tuple[str, dict[str, Any]]]]


def _run_both(tmp_path: Path, script: Script) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Run *script* on qsd and on our daemon: the replies and events of each."""
    require_tool("qemu-storage-daemon")
    answers: dict[str, list[dict[str, Any]]] = {}
    events: dict[str, list[str]] = {}
    for kind, argv in (
        ("qsd", ["qemu-storage-daemon"]),
        ("ours", [sys.executable, "-m", "iochannel"]),
    ):
        d = tmp_path / kind
        d.mkdir()
        (d / "disk.img").write_bytes(bytes(1 << 20))
        proc, qmp = _start(argv, d / "qmp.sock")
        try:
            # Paths differ only by the directory: compare with it taken out.
            replies = [qmp.cmd(name, **args) for name, args in script(d)]
            answers[kind] = json.loads(json.dumps(replies).replace(str(d), "D"))
            events[kind] = qmp.events
        finally:
            qmp.close()
            proc.terminate()
            assert proc.wait(10) == 0
    return answers, events


def _same_error(where: str, theirs: dict[str, Any], ours: dict[str, Any]) -> None:
    assert ("error" in theirs) == ("error" in ours), f"{where}: {theirs} vs {ours}"
    if "error" in theirs:
        assert ours["error"]["class"] == theirs["error"]["class"], where
        # The same text, or ours extends it with the user's name or a hint.
        assert ours["error"]["desc"].startswith(theirs["error"]["desc"]), (
            f"{where}: {theirs['error']['desc']!r} vs {ours['error']['desc']!r}"
        )


def test_same_answers_as_qsd(tmp_path: Path) -> None:
    answers, events = _run_both(tmp_path, _script)
    script = _script(tmp_path)
    for (name, args), theirs, ours in zip(script, answers["qsd"], answers["ours"], strict=True):
        where = f"{name} {args}"
        _same_error(where, theirs, ours)
        if "error" in theirs:
            continue
        if name == "query-block-exports":
            assert ours == theirs, where
        elif name != "query-named-block-nodes":
            assert ours == theirs == {"return": {}}, where
    assert events["ours"] == events["qsd"] == ["BLOCK_EXPORT_DELETED"]
    assert answers["ours"][-1] == answers["qsd"][-1] == {"return": []}


def _resize_and_qom_script(d: Path) -> list[tuple[str, dict[str, Any]]]:
    img = str(d / "disk.img")
    big = 9223372035781033984  # QEMU's largest image size
    return [
        ("blockdev-add", {"driver": "file", "node-name": "f0", "filename": img}),
        ("blockdev-add", {"driver": "file", "node-name": "fro", "filename": img,
                          "read-only": True, "locking": "off"}),
        ("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": 1 << 20}),
        ("blockdev-add", {"driver": "raw", "node-name": "win", "file": "f0", "size": 4096}),
        ("block_resize", {"node-name": "zz", "size": 1 << 20}),
        ("block_resize", {"device": "f0", "size": 1 << 20}),
        ("block_resize", {"size": 1 << 20}),
        ("block_resize", {"node-name": "f0"}),
        ("block_resize", {"node-name": "f0", "size": "1M"}),
        ("block_resize", {"node-name": "f0", "size": 1.5}),
        ("block_resize", {"node-name": "f0", "size": 1 << 64}),
        ("block_resize", {"node-name": "f0", "size": -1}),
        ("block_resize", {"node-name": "f0", "size": 1 << 20, "bogus": 1}),
        ("block_resize", {"node-name": "n0", "size": 2 << 20}),
        ("block_resize", {"node-name": "fro", "size": 2 << 20}),
        ("block_resize", {"node-name": "win", "size": 8192}),
        ("block_resize", {"node-name": "f0", "size": 8192}),  # win forbids it
        ("blockdev-del", {"node-name": "win"}),
        ("blockdev-add", {"driver": "raw", "node-name": "r0", "file": "f0"}),
        ("block_resize", {"node-name": "f0", "size": big + 1}),
        ("block_resize", {"node-name": "r0", "size": 1001}),  # unaligned is fine
        ("block_resize", {"device": "zz", "node-name": "r0", "size": 3 << 20}),
        ("block_resize", {"node-name": "f0", "size": 0}),
        ("block_resize", {"node-name": "r0", "size": 2 << 20}),
        ("query-named-block-nodes", {}),
        ("object-add", {"qom-type": "iothread", "id": "io0", "poll-max-ns": 1000,
                        "poll-grow": 3, "aio-max-batch": 7}),
        ("object-add", {"qom-type": "iothread", "id": "io1"}),
        ("qom-list", {"path": "/"}),
        ("qom-list", {"path": "/objects"}),
        ("qom-list", {"path": "//objects/"}),
        ("qom-list", {"path": "/objects/io0"}),
        ("qom-list", {"path": "io1"}),
        ("qom-list", {"path": "/chardevs"}),
        ("qom-list", {"path": "/nope"}),
        ("qom-list", {"path": "/objects/io0/x"}),
        ("qom-list", {}),
        *(("qom-get", {"path": "/objects/io0", "property": p}) for p in (
            "type", "poll-max-ns", "poll-grow", "poll-shrink", "aio-max-batch",
            "thread-pool-min", "thread-pool-max", "nope")),
        ("qom-get", {"path": "/objects/io1", "property": "poll-max-ns"}),
        ("qom-get", {"path": "/objects", "property": "io1"}),
        ("qom-get", {"path": "/", "property": "type"}),
        ("qom-get", {"path": "/objects/zz", "property": "type"}),
        ("object-del", {"id": "io1"}),
        ("qom-list", {"path": "/objects"}),
        # An NBD export forbids resizing its node and, through it, the child.
        ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(d / "nbd.sock")}}}),
        ("block-export-add", {"type": "nbd", "id": "nb", "node-name": "r0"}),
        ("block_resize", {"node-name": "r0", "size": 1 << 20}),
        ("block_resize", {"node-name": "f0", "size": 1 << 20}),
    ]  # fmt: skip


def test_block_resize_and_qom_same_as_qsd(tmp_path: Path) -> None:
    answers, _ = _run_both(tmp_path, _resize_and_qom_script)
    script = _resize_and_qom_script(tmp_path)
    for (name, args), theirs, ours in zip(script, answers["qsd"], answers["ours"], strict=True):
        where = f"{name} {args}"
        _same_error(where, theirs, ours)
        if name == "query-named-block-nodes":
            # "fro" (the same file, read-only) is left out: qsd keeps its old size.
            sizes = [{n["node-name"]: n["image"]["virtual-size"] for n in r["return"]
                      if n["node-name"] != "fro"} for r in (theirs, ours)]  # fmt: skip
            assert sizes[0] == sizes[1] == {"f0": 2 << 20, "n0": 1 << 20, "r0": 2 << 20}, where
        elif "error" not in theirs:
            assert ours == theirs, where
