"""The built-in default: what ``iochannel`` (``make run``) starts without arguments.

A shell on a pseudo-terminal is the "device" (a ``command`` chardev); it is
relayed to a hub of viewers: a unix socket, a telnet port on localhost, a log
file with per-line timestamps and, when the web console is installed, the
browser.  A QMP monitor listens on a second unix socket.  Written out as
options (:func:`default_config` returns exactly this, with *DIR* a fresh private
directory)::

    iochannel \\
      -chardev command,id=shell,cmd=$SHELL,restart=on \\
      -chardev socket,id=unix,path=DIR/console.sock,server=on,wait=off,connections=64 \\
      -chardev socket,id=telnet,host=127.0.0.1,port=5555,to=5600,telnet=on,\\
               server=on,wait=off,connections=64 \\
      -chardev file,id=log,path=DIR/console.log,append=on,timestamp=on \\
      -chardev hub,id=viewers,chardevs.0=unix,chardevs.1=telnet,chardevs.2=log,\\
               policy.0=drop,policy.1=drop \\
      --relay chardev=shell,peer=viewers,notices=on \\
      -chardev socket,id=qmp,path=DIR/qmp.sock,server=on,wait=off \\
      --monitor chardev=qmp \\
      --web 127.0.0.1:0

Connecting and disconnecting viewers never disturbs the shell.  When the
shell exits (``exit`` or Ctrl-D from any viewer), every viewer gets the line
``[iochannel: shell closed]``, and a new shell starts after a second (later
ones back off up to 30 s if it keeps exiting at once), announced by
``[iochannel: shell open]``; the daemon keeps running (stop it with Ctrl-C or
QMP ``quit``).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import tempfile

__all__ = ["default_config"]

BANNER = """\
iochannel: a shell on a pty, shared by every viewer below (Ctrl-C here stops it all).
The log is {log}
Connect with (Ctrl-] leaves iochannel console; the shell restarts when it exits):
"""


def _cmd(argv: list[str]) -> str:
    """A ``cmd=`` value: shell-quoted, with commas doubled for the option syntax."""
    return shlex.join(argv).replace(",", ",,")


def default_config(
    directory: str | None = None, *, web: bool | None = None
) -> tuple[list[str], str]:
    """The default configuration as command-line options (see the module docstring),
    and the banner that introduces it.

    *directory* holds the sockets and the log (default: a new private temporary
    directory); *web* adds the web console (default: if it is installed).
    """
    d = directory or tempfile.mkdtemp(prefix="iochannel-")
    shell = os.environ.get("SHELL") or "/bin/sh"
    log = os.path.join(d, "console.log")
    argv = [
        *("-chardev", f"command,id=shell,cmd={_cmd([shell])},restart=on"),
        *("-chardev", f"socket,id=unix,path={d}/console.sock,server=on,wait=off,connections=64"),
        "-chardev",
        "socket,id=telnet,host=127.0.0.1,port=5555,to=5600,telnet=on,server=on,wait=off,"
        "connections=64",
        *("-chardev", f"file,id=log,path={log},append=on,timestamp=on"),
        *(
            "-chardev",
            "hub,id=viewers,chardevs.0=unix,chardevs.1=telnet,chardevs.2=log,policy.0=drop,policy.1=drop",
        ),
        *("--relay", "chardev=shell,peer=viewers,notices=on"),
        *("-chardev", f"socket,id=qmp,path={d}/qmp.sock,server=on,wait=off"),
        *("--monitor", "chardev=qmp"),
    ]
    if web is None:
        web = importlib.util.find_spec("iochannel.web") is not None
    if web:
        argv += ["--web", "127.0.0.1:0"]
    return argv, BANNER.format(log=log)
