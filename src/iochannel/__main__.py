"""The ``iochannel`` command (also ``python -m iochannel``).

``iochannel console TARGET`` is the interactive console client
(:mod:`iochannel.console._client`).  ``--blockdev``/``--export`` alone
(qemu-storage-daemon's vhost-user-blk exports, with ``--pidfile``) go to
:mod:`iochannel.vhost_user.cli`; anything else, including exports mixed with
chardev options, runs the console daemon (:mod:`iochannel.daemon`).  Without
arguments the daemon starts its built-in default; ``--help`` describes both,
``--man`` prints the manual page and ``--completion bash|zsh`` a completion
script (:mod:`iochannel.daemon.manual`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

_EXPORT_OPTIONS = frozenset(("--blockdev", "--export", "--pidfile"))


def _exports_only(args: Sequence[str]) -> bool:
    """Every option is one of the export tool's (``--opt value`` or ``--opt=value``)."""
    options = [a.split("=", 1)[0] for a in args if a.startswith("-")]
    return bool(options) and "--export" in options and set(options) <= _EXPORT_OPTIONS


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["console"]:
        from .console._client import main as console_main

        return console_main(args[1:])
    if _exports_only(args):
        from .vhost_user.cli import main as export_main

        return export_main(args)
    from .daemon import main as daemon_main

    return daemon_main(args)


if __name__ == "__main__":
    sys.exit(main())
