"""The ``iochannel`` command (also ``python -m iochannel``).

The daemon (``-chardev``, ``--monitor``, ``--export``, the web console) is not
part of this release yet; the command says so instead of pretending to run it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = "usage: iochannel [--help]\n"

NOT_YET = """\
iochannel: the daemon (-chardev, --relay, --monitor, --export, --web) is not available yet.
What works today is the library: python -c 'import iochannel; help(iochannel)'
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(NOT_YET, end="")
        return 0
    if args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    print(f"iochannel: unknown option {args[0]!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
