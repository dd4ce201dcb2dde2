"""qemu-storage-daemon compatible command line for vhost-user-blk exports.

Contract:

* :func:`main` takes the arguments after the program name, for example::

      --object iothread,id=io0
      --blockdev driver=file,node-name=file0,filename=disk.img
      --blockdev driver=raw,node-name=disk0,file=file0
      --export type=vhost-user-blk,id=exp0,node-name=disk0,iothread=io0,
               addr.type=unix,addr.path=vub.sock,writable=on,num-queues=2

  serves every export until SIGTERM or SIGINT, then disconnects the
  front-ends cleanly and returns 0.  Bad usage prints an error naming the
  option and returns 1 without serving anything.
* Options run left to right, as qemu-storage-daemon runs them: a node or
  iothread must be defined before what uses it.
* Option values use QEMU's keyval syntax (:func:`parse_keyval`): ``key=value``
  pairs separated by ``,``, a literal comma written ``,,``, dotted keys for
  nested objects (``addr.path``), the first key's name implied (``driver``,
  ``type``, ``qom-type``); a value starting with ``{`` is JSON.
* ``--blockdev``, ``--export`` and ``--object iothread`` are those of
  :class:`~iochannel.block.storage.Storage` (see ``docs/storage.md``);
  ``--pidfile``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .._parsers import keyval
from ..block.options import BlockError
from ..block.storage import Storage
from ..errors import ConfigurationError

__all__ = [
    "STORAGE_OPTIONS",
    "UsageError",
    "apply",
    "main",
    "parse_args",
    "parse_keyval",
    "write_pidfile",
]

log = logging.getLogger(__name__)

Tree = dict[str, Any]

#: Each storage option and the key its value's first item may leave implied.
STORAGE_OPTIONS = {
    "--blockdev": "driver",
    "--export": "type",
    "--object": "qom-type",
    "--nbd-server": None,
}


class UsageError(ConfigurationError):
    """A command-line error; the message names the option."""


def parse_keyval(text: str, option: str, implied: str | None = None) -> Tree:
    """Parse ``a=b,c.d=e`` (or JSON) into nested dicts (strings, or JSON's types)."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{option}: invalid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise UsageError(f"{option}: JSON value must be an object")
        return value
    try:
        return keyval.to_tree(keyval.split(text, implied=implied, short_booleans=False))
    except keyval.KeyvalError as exc:
        raise UsageError(f"{option}: {exc}") from None


def apply(storage: Storage, option: str, text: str) -> None:
    """Carry out one storage option on *storage*; errors name the option."""
    tree = parse_keyval(text, option, STORAGE_OPTIONS[option])
    # JSON values are typed as in QMP; keyval values are all strings.
    typed = text.lstrip().startswith("{")
    try:
        if option == "--blockdev":
            storage.blockdev_add(tree, typed=typed)
        elif option == "--export":
            storage.export_add(tree, typed=typed)
        elif option == "--nbd-server":
            # The command line's address is a flat SocketAddress, in JSON too.
            storage.nbd_server_start(tree, typed=typed, legacy=False)
        else:
            kind = tree.pop("qom-type", None)
            if kind != "iothread":
                raise BlockError(f"Invalid object type '{kind}' (supported here: iothread)")
            storage.iothread_add(tree, typed=typed)
    except BlockError as exc:
        raise UsageError(f"{option} {text}: {exc}") from None


def parse_args(argv: Sequence[str]) -> tuple[list[tuple[str, str]], str | None]:
    """Check the command line; return its storage options in order, and the pid file."""
    items: list[tuple[str, str]] = []
    pidfile: str | None = None
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, inline = arg.partition("=")
        if name not in (*STORAGE_OPTIONS, "--pidfile"):
            known = [o[2:] for o in (*STORAGE_OPTIONS, "--pidfile")]
            hint = keyval.did_you_mean(name.lstrip("-"), known, "--")
            raise UsageError(f"{arg}: unknown option{hint}")
        if eq:
            value = inline
        elif args:
            value = args.pop(0)
        else:
            raise UsageError(f"{name}: missing argument")
        if name == "--pidfile":
            pidfile = value
        else:
            items.append((name, value))
    check(items)
    if not any(option == "--export" for option, _ in items):
        raise UsageError("--export: at least one export is needed")
    return items, pidfile


def check(items: Sequence[tuple[str, str]], objects: Mapping[str, object] | None = None) -> None:
    """Check storage options without opening anything; raise :class:`UsageError`.

    *objects* are the ``--object`` objects they may name, by id (unloaded ones do).
    """
    dry = Storage(dry=True, objects=objects)
    for option, text in items:
        apply(dry, option, text)


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


async def _serve(items: list[tuple[str, str]], pidfile: str | None) -> None:
    storage = Storage()
    try:
        for option, text in items:
            apply(storage, option, text)
        if pidfile is not None:
            # Written once every export listens, so it also signals readiness.
            write_pidfile(pidfile)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    finally:
        await storage.close()


def main(argv: Sequence[str]) -> int:
    """Run the exports described by *argv* until SIGTERM/SIGINT; see the module docstring."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        items, pidfile = parse_args(argv)
        try:
            asyncio.run(_serve(items, pidfile))
        finally:
            if pidfile is not None and os.path.exists(pidfile):
                os.unlink(pidfile)
    except UsageError as exc:
        print(f"iochannel: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
