"""Sphinx configuration: the guides are Markdown (MyST), the reference comes from the docstrings."""

from __future__ import annotations

import functools
import glob
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

from docutils.nodes import Element
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.errors import ExtensionError
from sphinx.ext import intersphinx

from iochannel.chardev import LIFECYCLE

project = "iochannel"
author = "iochannel maintainers"
release = importlib.metadata.version("iochannel")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

# The docstrings are the reference: every public name, as the package exports it.
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"

# Every cross-reference must resolve (a broken one is a warning, and warnings
# are errors).  The standard library's names resolve through the inventory of
# Debian's python3-doc, read from disk: the build needs no network.
_stdlib = sorted(glob.glob("/usr/share/doc/python3*/html/objects.inv"))
if _stdlib:
    intersphinx_mapping = {"python": ("https://docs.python.org/3", _stdlib[-1])}
    nitpicky = True
elif os.environ.get("CI"):
    raise RuntimeError("the standard library's objects.inv is missing: install python3-doc")
else:
    print("docs: python3-doc is not installed, so cross-references are not checked")
nitpick_ignore = [
    # Buffer is typing_extensions' before 3.12 and absent from 3.11's inventory.
    ("py:class", "typing_extensions.Buffer"),
    ("py:class", "collections.abc.Buffer"),
    # Documented as classes only from 3.12 on.
    ("py:class", "re.Pattern"),
    ("py:class", "re.Match"),
]
nitpick_ignore_regex = [
    # Private helpers and type variables in public signatures have no page.
    ("py:.*", r"(.*\.)?_[A-Z]\w*(\.\w+)?"),
    ("py:.*", r"iochannel\..*\.(T|AnyText)"),
    # Internal types that show in a signature: the base every layer shares, what
    # a watch needs of a channel, the handshakes WebsockChannel.server/client make.
    ("py:class", r"iochannel\._layers\.layer\.LayerChannel"),
    ("py:class", r"iochannel\._core\.watch\.Waitable"),
    ("py:class", r"iochannel\._layers\.websock_handshake\.(Server|Client)Handshake"),
]

html_theme = "furo"
html_title = f"iochannel {release}"


# ---- pages generated from the code -------------------------------------------------------
#
# A line ``<!-- generated: NAME -->`` in a page is replaced at build time by what the code says
# (the chardev lifecycle table, the daemon's backends and QMP commands), so the page cannot drift
# from it.  A table after ``<!-- gaps: NAME -->`` gives the reason for each QEMU feature that is
# not supported; the build fails if it misses one, or names one that is supported.

# QEMU's names, for the support matrix: the -chardev backends of QEMU's chardev layer, and the QMP
# commands qemu-storage-daemon 7.2 answers in query-commands.
QEMU_CHARDEV_BACKENDS = frozenset(
    {
        "braille",
        "console",
        "dbus",
        "file",
        "hub",
        "memory",
        "msmouse",
        "mux",
        "null",
        "parallel",
        "pipe",
        "pty",
        "qemu-vdagent",
        "ringbuf",
        "serial",
        "socket",
        "spiceport",
        "spicevmc",
        "stdio",
        "testdev",
        "udp",
        "vc",
        "wctablet",
    }
)
QSD_COMMANDS = frozenset(
    {
        "block-commit",
        "block-dirty-bitmap-add",
        "block-dirty-bitmap-clear",
        "block-dirty-bitmap-disable",
        "block-dirty-bitmap-enable",
        "block-dirty-bitmap-merge",
        "block-dirty-bitmap-remove",
        "block-export-add",
        "block-export-del",
        "block-job-cancel",
        "block-job-complete",
        "block-job-dismiss",
        "block-job-finalize",
        "block-job-pause",
        "block-job-resume",
        "block-job-set-speed",
        "block-set-write-threshold",
        "block-stream",
        "block_resize",
        "blockdev-add",
        "blockdev-backup",
        "blockdev-create",
        "blockdev-del",
        "blockdev-mirror",
        "blockdev-reopen",
        "blockdev-snapshot",
        "blockdev-snapshot-delete-internal-sync",
        "blockdev-snapshot-internal-sync",
        "blockdev-snapshot-sync",
        "change-backing-file",
        "chardev-add",
        "chardev-change",
        "chardev-remove",
        "chardev-send-break",
        "drive-backup",
        "drive-mirror",
        "job-cancel",
        "job-complete",
        "job-dismiss",
        "job-finalize",
        "job-pause",
        "job-resume",
        "nbd-server-add",
        "nbd-server-remove",
        "nbd-server-start",
        "nbd-server-stop",
        "object-add",
        "object-del",
        "qmp_capabilities",
        "qom-get",
        "qom-list",
        "qom-list-properties",
        "qom-list-types",
        "qom-set",
        "query-block",
        "query-block-exports",
        "query-block-jobs",
        "query-blockstats",
        "query-chardev",
        "query-chardev-backends",
        "query-commands",
        "query-jobs",
        "query-named-block-nodes",
        "query-qmp-schema",
        "query-version",
        "quit",
        "ringbuf-read",
        "ringbuf-write",
        "transaction",
        "x-blockdev-amend",
        "x-blockdev-change",
        "x-blockdev-set-iothread",
        "x-debug-block-dirty-bitmap-sha256",
        "x-debug-query-block-graph",
    }
)
QEMU_NAMES = {"chardev-backends": QEMU_CHARDEV_BACKENDS, "qmp-commands": QSD_COMMANDS}


@functools.cache
def chardev_backends() -> dict[str, str]:
    """``iochannel -chardev help``: each backend type the daemon builds, with its summary."""
    out = subprocess.run(
        [sys.executable, "-m", "iochannel", "-chardev", "help"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return dict(line.split(None, 1) for line in out.splitlines()[1:])


@functools.cache
def qmp_commands() -> list[str]:
    """``query-commands``, asked of a daemon started for the purpose."""
    with tempfile.TemporaryDirectory() as where:
        qmp, pidfile = os.path.join(where, "qmp.sock"), os.path.join(where, "pid")
        daemon = subprocess.Popen(
            [
                *(sys.executable, "-m", "iochannel", "--pidfile", pidfile),
                *("-chardev", f"socket,id=qmp,path={qmp},server=on,wait=off"),
                *("--monitor", "chardev=qmp"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(pidfile):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the daemon did not start")
                time.sleep(0.05)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(60)
                sock.connect(qmp)
                sock.sendall(b'{"execute": "qmp_capabilities"}\n{"execute": "query-commands"}\n')
                answers = sock.makefile("rb")
                replies = [json.loads(answers.readline()) for _ in range(3)]
                answers.close()
        finally:
            daemon.terminate()
            daemon.wait(60)
    return sorted(c["name"] for c in replies[2]["return"])


def lifecycle() -> str:
    """The state diagram and the table of :data:`iochannel.chardev.LIFECYCLE`."""
    name = {False: "closed", True: "open"}
    assert {state for state, _ in LIFECYCLE} == {False, True}, "the drawing knows two states"

    def events(state: bool, after: bool | str) -> str:
        return ", ".join(e.name for (s, e), a in LIFECYCLE.items() if s is state and a == after)

    # A registration starts closed.
    forward, back = events(False, True), events(True, False)
    width = max(len(forward), len(back), 12)
    edge = "─" * (width + 9)
    lines = [
        f"     {forward:^{width + 9}}",
        f"    ┌{edge}┐",
        f"    │{' ' * (width + 9)}▼",
        f"   ┌────────┐{' ' * width}┌────────┐",
        f"──▶│ closed │{' ' * width}│  open  │",
        f"   └────────┘{' ' * width}└────────┘",
        f"    ▲{' ' * (width + 9)}│",
        f"    └{edge}┘",
        f"     {back:^{width + 9}}",
        "",
    ]
    for state in (False, True):
        if kept := events(state, state):
            lines.append(f"{name[state]}: {kept} delivered, the view stays {name[state]}")
        for (s, event), after in LIFECYCLE.items():
            if s is state and isinstance(after, str):
                lines.append(f"{name[state]}: {event.name} not delivered ({after})")
    table = ["| view | event | delivered | view after |", "|---|---|---|---|"]
    for (state, event), after in LIFECYCLE.items():
        delivered = f"no: {after}" if isinstance(after, str) else "yes"
        view = name[state] if isinstance(after, str) else name[after]
        table.append(f"| {name[state]} | `{event.name}` | {delivered} | {view} |")
    diagram = "\n".join(line.rstrip() for line in lines)
    return f"```text\n{diagram}\n```\n\n" + "\n".join(table) + "\n"


def backends_table() -> str:
    """The backends the daemon builds, marked where QEMU has none of that name."""
    rows = ["| type | what | in QEMU |", "|---|---|---|"]
    for type_name, summary in chardev_backends().items():
        qemu = "yes" if type_name in QEMU_CHARDEV_BACKENDS else "no"
        rows.append(f"| `{type_name}` | {summary} | {qemu} |")
    return "\n".join(rows) + "\n"


def commands_table() -> str:
    """The daemon's QMP commands, marked where qemu-storage-daemon 7.2 has none of that name."""
    rows = ["| command | in qemu-storage-daemon 7.2 |", "|---|---|"]
    for command in qmp_commands():
        rows.append(f"| `{command}` | {'yes' if command in QSD_COMMANDS else 'no'} |")
    return "\n".join(rows) + "\n"


GENERATED: dict[str, Callable[[], str]] = {
    "chardev-lifecycle": lifecycle,
    "chardev-backends": backends_table,
    "qmp-commands": commands_table,
}
SUPPORTED: dict[str, Callable[[], Iterable[str]]] = {
    "chardev-backends": chardev_backends,
    "qmp-commands": qmp_commands,
}


def gaps(page: str) -> dict[str, dict[str, str]]:
    """Each ``<!-- gaps: NAME -->`` table of *page*: the names in its first column, and why."""
    found: dict[str, dict[str, str]] = {}
    for match in re.finditer(r"<!-- gaps: (\S+) -->\n\n((?:\|.*\n)+)", page):
        rows = found.setdefault(match[1], {})
        for row in match[2].splitlines()[2:]:
            names, reason = row.strip("|").split("|", 1)
            for name in re.findall(r"`([^`]+)`", names):
                rows[name] = reason.strip()
    return found


def check_gaps(page: str) -> list[str]:
    """What the gap tables of *page* get wrong: a QEMU name missing, or one that is supported."""
    problems = []
    for kind, rows in gaps(page).items():
        supported = set(SUPPORTED[kind]())
        for name in sorted(QEMU_NAMES[kind] - supported - rows.keys()):
            problems.append(f"{kind}: QEMU's {name!r} is neither supported nor explained")
        for name in sorted(supported & rows.keys()):
            problems.append(f"{kind}: {name!r} is supported but listed as a gap")
    return problems


def _generate(app: Sphinx, docname: str, source: list[str]) -> None:
    if "<!-- gaps: " in source[0] and (problems := check_gaps(source[0])):
        raise ExtensionError(f"{docname}: " + "; ".join(problems))

    def expand(match: re.Match[str]) -> str:
        if match[1] not in GENERATED:
            raise ExtensionError(f"{docname}: nothing generates {match[1]!r}")
        return GENERATED[match[1]]()

    source[0] = re.sub(r"^<!-- generated: (\S+) -->$", expand, source[0], flags=re.MULTILINE)


def _public_stdlib_name(
    app: Sphinx, env: BuildEnvironment, node: Element, contnode: Element
) -> Any:
    """Resolve ``asyncio.events.X`` (where annotations say X is defined) as ``asyncio.X``."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("asyncio.events."):
        return None
    node["reftarget"] = "asyncio." + target.removeprefix("asyncio.events.")
    return intersphinx.missing_reference(app, env, node, contnode)


def setup(app: Sphinx) -> dict[str, bool]:
    app.connect("source-read", _generate)
    app.connect("missing-reference", _public_stdlib_name)
    return {"parallel_read_safe": True}
