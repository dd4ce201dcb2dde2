"""Run every benchmark script in this folder (or those named on the command line).

Each script runs in its own process so one benchmark's memory and threads do
not disturb the next.  ``make bench`` runs them all; ``python -m bench channel``
runs ``bench/channel.py`` only.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys


def main(argv: list[str]) -> int:
    here = pathlib.Path(__file__).parent
    scripts = sorted(p for p in here.glob("*.py") if not p.name.startswith("_"))
    if argv:
        scripts = [p for p in scripts if any(p.stem.startswith(a) for a in argv)]
    failed = 0
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        failed += subprocess.call([sys.executable, str(script)]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
