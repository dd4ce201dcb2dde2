"""The ``iochannel`` command (also ``python -m iochannel``).

Today it serves vhost-user-blk exports configured with qemu-storage-daemon's
``--blockdev``/``--export`` options.  The console daemon (``-chardev``,
``--relay``, ``--monitor``, the web console) is not part of this release yet;
with no arguments the command says so instead of pretending to run it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """\
usage: iochannel --blockdev driver=file,node-name=N,filename=IMG [--blockdev driver=raw,...]
                 --export type=vhost-user-blk,id=ID,node-name=N,addr.type=unix,addr.path=SOCK
                          [,writable=on|off][,num-queues=N][,logical-block-size=N]
                 [--pidfile FILE]
"""

NOT_YET = """\
iochannel: the console daemon (-chardev, --relay, --monitor, --web) is not available yet.
What works today:
  * the channel library: python -c 'import iochannel; help(iochannel)'
  * vhost-user-blk exports, qemu-storage-daemon style:
"""

_EXPORT_OPTIONS = ("--blockdev", "--export", "--pidfile")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a.split("=", 1)[0] in _EXPORT_OPTIONS for a in args):
        from .vhost_user.cli import main as export_main

        return export_main(args)
    if not args:
        print(NOT_YET + USAGE, end="")
        return 0
    if args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    print(f"iochannel: unknown option {args[0]!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
