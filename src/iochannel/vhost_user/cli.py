"""qemu-storage-daemon compatible command line for vhost-user-blk exports.

Contract:

* :func:`main` takes the arguments after the program name, for example::

      --blockdev driver=file,node-name=file0,filename=disk.img
      --blockdev driver=raw,node-name=disk0,file=file0
      --export type=vhost-user-blk,id=exp0,node-name=disk0,
               addr.type=unix,addr.path=vub.sock,writable=on,num-queues=2

  serves every export until SIGTERM or SIGINT, then disconnects the
  front-ends cleanly and returns 0.  Bad usage prints an error naming the
  option and returns 1 without serving anything.
* Option values use QEMU's keyval syntax (:func:`parse_keyval`): ``key=value``
  pairs separated by ``,``, a literal comma written ``,,``, dotted keys for
  nested objects (``addr.path``); a value starting with ``{`` is JSON.
* Supported: ``--blockdev`` drivers ``file`` (``filename``, ``read-only``, and
  accepted-but-ignored host cache options) and ``raw`` (``file`` as a node
  name or nested ``file.*``); ``--export type=vhost-user-blk`` with ``id``,
  ``node-name``, ``addr.type=unix|fd``, ``addr.path`` / ``addr.str``,
  ``writable``, ``writethrough``, ``num-queues``, ``logical-block-size``,
  ``serial`` and ``iothread`` (accepted; every queue has its own thread
  anyway); ``--pidfile``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import keyval
from ..address import Address, FdAddress, UnixAddress
from .blk import BlkDevice, open_image
from .server import VhostUserServer

__all__ = [
    "Export",
    "UsageError",
    "main",
    "open_export",
    "parse_args",
    "parse_keyval",
    "write_pidfile",
]

log = logging.getLogger(__name__)

Tree = dict[str, Any]


class UsageError(Exception):
    """A command-line error; the message names the option."""


def parse_keyval(text: str, option: str) -> Tree:
    """Parse ``a=b,c.d=e`` (or JSON) into nested dicts of strings."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{option}: invalid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise UsageError(f"{option}: JSON value must be an object")
        return {k: _stringify(v) for k, v in value.items()}
    try:
        return keyval.to_tree(keyval.split(text, short_booleans=False))
    except keyval.KeyvalError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _stringify(v: object) -> Any:
    if isinstance(v, dict):
        return {k: _stringify(x) for k, x in v.items()}
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def _bool(opts: Tree, key: str, option: str, default: bool) -> bool:
    value = opts.pop(key, None)
    if value is None:
        return default
    if value in ("on", "yes", "true"):
        return True
    if value in ("off", "no", "false"):
        return False
    raise UsageError(f"{option}: '{key}' expects 'on' or 'off', not '{value}'")


def _int(opts: Tree, key: str, option: str, default: int) -> int:
    value = opts.pop(key, None)
    if value is None:
        return default
    try:
        return int(value, 0)
    except (TypeError, ValueError):
        raise UsageError(f"{option}: '{key}' expects an integer, not '{value}'") from None


def _str(opts: Tree, key: str, option: str) -> str:
    value = opts.pop(key, None)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{option}: parameter '{key}' is missing")
    return value


def _no_more(opts: Tree, option: str) -> None:
    if opts:
        raise UsageError(f"{option}: invalid parameter '{sorted(opts)[0]}'")


# Host cache and locking knobs of the file driver; scripts pass them, the
# export has no use for them.
_IGNORED_FILE_OPTS = ("aio", "locking", "cache", "discard", "detect-zeroes", "auto-read-only")


@dataclass
class _Node:
    filename: str
    read_only: bool


def _blockdev(opts: Tree, nodes: dict[str, _Node], option: str) -> _Node:
    driver = _str(opts, "driver", option)
    name = opts.pop("node-name", None)
    read_only = _bool(opts, "read-only", option, False)
    if driver == "file":
        node = _Node(_str(opts, "filename", option), read_only)
        for key in _IGNORED_FILE_OPTS:
            opts.pop(key, None)
    elif driver == "raw":
        child = opts.pop("file", None)
        if isinstance(child, dict):
            base = _blockdev(child, nodes, f"{option} file")
        elif isinstance(child, str) and child in nodes:
            base = nodes[child]
        elif child is None:
            raise UsageError(f"{option}: parameter 'file' is missing")
        else:
            raise UsageError(f"{option}: 'file': no node named '{child}'")
        node = _Node(base.filename, base.read_only or read_only)
    else:
        raise UsageError(f"{option}: driver '{driver}' is not supported (use file or raw)")
    _no_more(opts, option)
    if isinstance(name, str):
        if name in nodes:
            raise UsageError(f"{option}: duplicate node name '{name}'")
        nodes[name] = node
    return node


@dataclass
class Export:
    node: _Node
    addr: Address
    writable: bool
    writethrough: bool
    num_queues: int
    logical_block_size: int
    serial: str
    name: str


def _export(opts: Tree, nodes: dict[str, _Node], option: str) -> Export:
    kind = _str(opts, "type", option)
    if kind != "vhost-user-blk":
        raise UsageError(f"{option}: export type '{kind}' is not supported")
    ident = _str(opts, "id", option)
    node_name = _str(opts, "node-name", option)
    if node_name not in nodes:
        raise UsageError(f"{option}: 'node-name': no node named '{node_name}'")
    addr_opts = opts.pop("addr", None)
    if not isinstance(addr_opts, dict):
        raise UsageError(f"{option}: parameter 'addr' is missing")
    addr_type = _str(addr_opts, "type", f"{option} addr")
    addr: Address
    if addr_type == "unix":
        addr = UnixAddress(_str(addr_opts, "path", f"{option} addr"))
    elif addr_type == "fd":
        addr = FdAddress(_int(addr_opts, "str", f"{option} addr", -1))
    else:
        raise UsageError(f"{option}: 'addr.type' must be unix or fd, not '{addr_type}'")
    _no_more(addr_opts, f"{option} addr")
    opts.pop("iothread", None)
    opts.pop("fixed-iothread", None)
    exp = Export(
        node=nodes[node_name],
        addr=addr,
        writable=_bool(opts, "writable", option, False),
        writethrough=_bool(opts, "writethrough", option, False),
        num_queues=_int(opts, "num-queues", option, 1),
        logical_block_size=_int(opts, "logical-block-size", option, 512),
        serial=opts.pop("serial", "vhost_user_blk"),
        name=ident,
    )
    _no_more(opts, option)
    if exp.writable and exp.node.read_only:
        raise UsageError(f"{option}: 'writable': node '{node_name}' is read-only")
    if not 1 <= exp.num_queues <= 1024:
        raise UsageError(f"{option}: 'num-queues' must be in 1..1024")
    return exp


def parse_args(argv: Sequence[str]) -> tuple[list[Export], str | None]:
    """Parse the command line into exports (and a pid file)."""
    nodes: dict[str, _Node] = {}
    exports: list[Export] = []
    pidfile: str | None = None
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, inline = arg.partition("=")
        if name not in ("--blockdev", "--export", "--pidfile"):
            raise UsageError(f"{arg}: unknown option")
        if eq:
            value = inline
        elif args:
            value = args.pop(0)
        else:
            raise UsageError(f"{name}: missing argument")
        if name == "--pidfile":
            pidfile = value
        elif name == "--blockdev":
            _blockdev(parse_keyval(value, name), nodes, name)
        else:
            exports.append(_export(parse_keyval(value, name), nodes, name))
    if not exports:
        raise UsageError("--export: at least one export is needed")
    return exports, pidfile


def open_export(exp: Export) -> VhostUserServer:
    """Open the image of *exp* and start listening for its front-end."""
    fd, size = open_image(exp.node.filename, exp.writable)
    try:
        dev = BlkDevice(
            fd,
            size,
            writable=exp.writable,
            num_queues=exp.num_queues,
            logical_block_size=exp.logical_block_size,
            serial=exp.serial,
        )
        dev.wce = not exp.writethrough
        return VhostUserServer.listen(dev, exp.addr, name=exp.name)
    except BaseException:
        os.close(fd)
        raise


def write_pidfile(path: str) -> None:
    """Write this process's pid to *path* atomically.

    Whoever sees the file (a script waiting for readiness) reads the whole
    pid, never an empty or half-written file.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


async def _serve(exports: list[Export], pidfile: str | None) -> None:
    servers: list[VhostUserServer] = []
    try:
        for exp in exports:
            try:
                servers.append(open_export(exp))
            except (OSError, ValueError) as exc:
                raise UsageError(f"--export id={exp.name}: {exc}") from exc
        if pidfile is not None:
            # Written once every export listens, so it also signals readiness.
            write_pidfile(pidfile)
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for s in servers:
                s.close()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        try:
            await asyncio.gather(*(s.serve() for s in servers))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    finally:
        for s in servers:
            s.close()
            dev = s.backend
            if isinstance(dev, BlkDevice):
                dev.close()


def main(argv: Sequence[str]) -> int:
    """Run the exports described by *argv* until SIGTERM/SIGINT; see the module docstring."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        exports, pidfile = parse_args(argv)
        try:
            asyncio.run(_serve(exports, pidfile))
        finally:
            if pidfile is not None and os.path.exists(pidfile):
                os.unlink(pidfile)
    except UsageError as exc:
        print(f"iochannel: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
