"""Drive a console from Python: send text, wait for patterns, run commands.

:class:`Console` (blocking) and :class:`AsyncConsole` (asyncio) connect to a
QEMU serial console, a chardev of the daemon, the web console or a child
process, and wait for output with :meth:`~Console.expect` the way pexpect
does; :class:`Reconnect` keeps a wait going across a restart of the other
side.  Every failure is an :class:`ExpectError` (a
:class:`~iochannel.ChannelError`): :class:`ExpectTimeout`, :class:`ExpectEOF`,
:class:`ExpectFailure`, and :class:`CommandFailedError` for a command that
exited non-zero.
"""

from ._console import (
    AsyncConsole,
    CommandFailedError,
    Console,
    Reconnect,
    control_byte,
)
from ._expect import (
    ExpectEOF,
    Expecter,
    ExpectError,
    ExpectFailure,
    ExpectMatch,
    ExpectTimeout,
    Pattern,
    Searcher,
)

__all__ = [
    "AsyncConsole",
    "CommandFailedError",
    "Console",
    "ExpectEOF",
    "ExpectError",
    "ExpectFailure",
    "ExpectMatch",
    "ExpectTimeout",
    "Expecter",
    "Pattern",
    "Reconnect",
    "Searcher",
    "control_byte",
]
