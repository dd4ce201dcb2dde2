"""The ``iochannel`` daemon: chardevs, relays, QMP and exports from a QEMU-style command line.

* :mod:`.cli` — the command line and the TOML file, checked as one graph;
* :mod:`.objects` — ``--object`` credentials and authorization;
* :mod:`.relay` — two chardevs as each other's frontend;
* :mod:`.qmp_commands` — the QMP commands and events;
* :mod:`.daemon` — start, reload, stop, signals, pid file, daemonizing;
* :mod:`.default` — the built-in default that runs without arguments;
* :mod:`.manual` — ``--man`` and ``--completion``, generated from the options;

:func:`main` is the entry point.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence

from .cli import USAGE, Config, ConfigError, parse_args, trace_logging, wants_help
from .daemon import VERSION, Daemon, run
from .default import default_config
from .manual import completion, man_page
from .relay import Relay

__all__ = ["Config", "ConfigError", "Daemon", "Relay", "main", "parse_args", "run"]


def main(argv: Sequence[str]) -> int:
    """Run the daemon with *argv* (no arguments: the built-in default); returns the exit status."""
    args = list(argv)
    if wants_help(args):
        print(USAGE, end="")
        return 0
    banner = ""
    default_dir = None
    if not [a for a in args if a != "--check"]:
        default_dir = tempfile.mkdtemp(prefix="iochannel-")
        args, banner = default_config(default_dir)
        args += argv
    if not logging.getLogger().handlers:
        # Per-connection chatter of the library stays quiet; what the daemon,
        # its programs and the devices it connects to do is worth a line.
        logging.basicConfig(level=logging.WARNING, format="iochannel: %(name)s: %(message)s")
        for name in (__name__, "iochannel.chardev.command", "iochannel.chardev.socket"):
            logging.getLogger(name).setLevel(logging.INFO)
    try:
        config = parse_args(args)
    except ConfigError as exc:
        print(f"iochannel: {exc}", file=sys.stderr)
        return 1
    if config.help_text is not None:
        print(config.help_text, end="")
        return 0
    if config.version:
        print("iochannel {}.{}.{} (qemu-storage-daemon 7.2 options)".format(*VERSION))
        return 0
    if config.man:
        print(man_page(), end="")
        return 0
    if config.completion is not None:
        print(completion(config.completion), end="")
        return 0
    trace_logging(config.trace)
    if config.check_only:
        print(config.describe(), end="")
        if default_dir is not None:
            os.rmdir(default_dir)  # nothing was created in it
        return 0
    return run(config, banner=banner)
