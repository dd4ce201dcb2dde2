"""Driving a console from a program: expect, send, and commands with exit status.

:class:`Console` (blocking) and :class:`AsyncConsole` (asyncio) are two thin
shells over one :class:`~iochannel.console.Expecter` and any
:class:`~iochannel.Channel`: a QEMU serial socket, a pty running a shell, a
WebSocket.  They read whatever the channel has, feed it to the matcher and
wait again until a pattern appears, the timeout passes
(:class:`~iochannel.console.ExpectTimeout`) or the stream ends
(:class:`~iochannel.console.ExpectEOF`).  The matching rules (window, decoding,
ANSI stripping, failure patterns, log) are the matcher's.

:meth:`Console.run` sends a shell command wrapped in markers and returns its
output and exit status.  The markers are made of random letters and printed by
the shell from two halves, so the echo of the command line never contains one;
terminal line wrapping of the echo therefore cannot confuse the result.  The
command runs through ``eval`` in the console's shell (``cd`` and variables
persist) and must not read from the console.  Output has ``\\r\\n`` turned into
``\\n``; standard error is mixed in, as on any terminal.

:meth:`Console.connect` with *reconnect* follows a server that restarts (QEMU
serving its serial port): the connection is a socket chardev client's, which
retries (:mod:`iochannel.console._attach`).  A wait in progress waits across
a reconnection, the text on either side of the gap kept; what the server
printed while nobody was connected is lost, and a send while disconnected
raises :class:`ConnectionError`.  With a *deadline*, that long without a
connection ends the stream (:class:`~iochannel.console.ExpectEOF` says so).
:meth:`Console.attach` drives a chardev of this process the same way.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shlex
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Self, overload
from urllib.parse import urlsplit

from .._core.channel import Channel
from .._core.flags import Condition
from .._transports.address import Address, UnixAddress, parse_address
from .._transports.command import CommandChannel
from .._transports.socket import SocketChannel
from ..errors import ChannelError
from ._expect import AnyText, Expecter, ExpectMatch, ExpectTimeout, LogTarget, Pattern, Searcher

if TYPE_CHECKING:
    # The chardev layer is imported only by consoles that use it.
    from ..chardev.chardev import Chardev
    from ._attach import ChardevChannel

__all__ = ["AsyncConsole", "CommandFailedError", "Console", "Reconnect"]

_READ_SIZE = 65536
# Letters a terminal or shell never turns into something else.
_MARKER_LETTERS = string.ascii_uppercase


class CommandFailedError(ChannelError):
    """:meth:`Console.run_check` saw a non-zero exit status."""

    def __init__(self, command: str, status: int, output: str | bytes) -> None:
        super().__init__(f"command {command!r} exited with status {status}; output: {output!r}")
        self.command = command
        self.status = status
        self.output = output


def control_byte(char: str) -> bytes:
    """The byte Ctrl+*char* sends: ``"c"`` → 0x03, ``"]"`` → 0x1d, ``"?"`` → 0x7f."""
    code = ord(char.upper()) if len(char) == 1 else -1
    if not 0x3F <= code <= 0x5F:
        raise ValueError(f"control character {char!r}: use one of @, A-Z, [, \\, ], ^, _, ?")
    return bytes((code ^ 0x40,))


class _RunPlan(Generic[AnyText]):
    """The line that runs a command between markers, and how to read its result."""

    def __init__(self, command: str, kind: type) -> None:
        marker = "".join(secrets.choice(_MARKER_LETTERS) for _ in range(16))
        left, right = marker[:8], marker[8:]
        self.command = command
        self.line = (
            f"printf '%s%s\\n' {left} {right}; eval {shlex.quote(command)}; "
            f"printf '\\n%s%s %d\\n' {left} {right} $?"
        )
        as_kind: Any = str if kind is str else (lambda s: s.encode())
        self.start = re.compile(as_kind(marker + r"\r?\n"))
        self.end = re.compile(as_kind(r"\r?\n" + marker + r" (\d+)\r?\n"))
        self._crlf: AnyText = as_kind("\r\n")
        self._lf: AnyText = as_kind("\n")

    def result(self, end: ExpectMatch[AnyText]) -> tuple[AnyText, int]:
        assert end.match is not None
        return end.before.replace(self._crlf, self._lf), int(end.match.group(1))


@dataclass(frozen=True)
class Reconnect:
    """How a console follows a socket that goes away and comes back.

    *delay*: seconds before each new attempt (QEMU's ``reconnect-ms``);
    *max_delay*: if set, the delays grow exponentially, jittered, up to it;
    *deadline*: if set, seconds without a connection after which the stream
    ends (an ``expect`` then raises ``ExpectEOF`` naming it); ``None`` keeps
    trying, and only each wait's own timeout bounds it.
    """

    delay: float = 0.1
    max_delay: float | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if not self.delay >= 0.001:
            raise ValueError(f"reconnect delay={self.delay}: give at least 0.001 seconds")
        if self.max_delay is not None and self.max_delay < self.delay:
            raise ValueError(
                f"reconnect max_delay={self.max_delay}: must be at least delay={self.delay}"
            )
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError(f"reconnect deadline={self.deadline}: must be positive, or None")


WEBSOCKET_KINDS = ("ws", "wss", "http", "https")


def parse_target(target: str) -> tuple[str, Address, str]:
    """(kind, address, resource) for a console target; see :meth:`Console.connect`.

    kind: unix, tcp, telnet, ws, wss, or http/https for the web console's page URL
    (the resource is then its WebSocket's, ``/ws`` with the page's query).
    """
    for scheme in ("telnet", *WEBSOCKET_KINDS):
        if target.startswith(f"{scheme}://"):
            url = urlsplit(target)
            if url.hostname is None or url.port is None:
                raise ValueError(f"{target!r}: give the host and port, e.g. {scheme}://HOST:PORT")
            host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
            path = url.path or "/"
            if scheme.startswith("http"):
                path = path.rstrip("/") + "/ws"
            resource = path + (f"?{url.query}" if url.query else "")
            return scheme, parse_address(f"{host}:{url.port}"), resource
    if target.startswith("unix:"):
        return "unix", UnixAddress(target[5:]), ""
    if "/" in target or ":" not in target:
        return "unix", UnixAddress(target), ""
    return "tcp", parse_address(target), ""


def websocket_layers(
    raw: Channel, kind: str, target: str, resource: str, tls_creds: str | None
) -> Channel:
    """TLS (wss, https), the WebSocket client and, for the web console, its input framing."""
    from .._layers.websock import WebsockChannel

    host = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    channel = raw
    if kind in ("wss", "https"):
        if tls_creds is None:
            raw.close()
            raise ValueError(
                f"{target!r}: {kind} needs TLS credentials (tls_creds=, --tls-creds): "
                "a directory with ca-cert.pem"
            )
        from .._layers.tls import TLSChannel
        from ..crypto.x509 import X509Credentials

        creds = X509Credentials(tls_creds, "client")
        channel = TLSChannel.client(channel, creds, urlsplit(target).hostname)
    channel = WebsockChannel.client(channel, host=host, path=resource)
    if kind.startswith("http"):
        from ._attach import WebConsoleChannel

        channel = WebConsoleChannel(channel)
    return channel


class _Target:
    """Where a console connects, and whether through a socket chardev client."""

    def __init__(self, target: str | Address, reconnect: Reconnect | bool | float | None) -> None:
        if isinstance(target, str):
            self.kind, self.addr, self.resource = parse_target(target)
        else:
            self.kind, self.addr, self.resource = "tcp", target, ""
        self.text = str(target)
        if reconnect is True:
            reconnect = Reconnect()
        elif reconnect is False:
            reconnect = None
        elif isinstance(reconnect, (int, float)):
            reconnect = Reconnect(delay=float(reconnect))
        self.reconnect = reconnect
        if reconnect is not None and self.kind in WEBSOCKET_KINDS:
            raise ValueError(f"reconnect: not available for {self.kind}:// targets")
        # Telnet needs the chardev's negotiation; reconnecting needs its timer.
        self.via_chardev = self.kind == "telnet" or reconnect is not None

    def chardev_channel(self, loop: asyncio.AbstractEventLoop | None) -> ChardevChannel:
        from ._attach import chardev_client

        rc = self.reconnect
        return chardev_client(
            self.addr,
            telnet=self.kind == "telnet",
            retry=rc.delay if rc else None,
            max_retry=rc.max_delay if rc else None,
            deadline=rc.deadline if rc else None,
            loop=loop,
            name=self.text,
        )


class _ConsoleBase(Generic[AnyText]):
    """What both shells share: the matcher, encoding of what is sent, results."""

    @overload
    def __init__(
        self: _ConsoleBase[str],
        channel: Channel | Chardev,
        *,
        encoding: str = ...,
        errors: str = ...,
        strip_ansi: bool = ...,
        window: int = ...,
        max_before: int = ...,
        log: LogTarget = ...,
        timestamps: bool = ...,
        timeout: float = ...,
        linesep: str = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: _ConsoleBase[bytes],
        channel: Channel | Chardev,
        *,
        encoding: None,
        errors: str = ...,
        strip_ansi: bool = ...,
        window: int = ...,
        max_before: int = ...,
        log: LogTarget = ...,
        timestamps: bool = ...,
        timeout: float = ...,
        linesep: str = ...,
    ) -> None: ...
    def __init__(
        self,
        channel: Channel | Chardev,
        *,
        encoding: str | None = "utf-8",
        errors: str = "replace",
        strip_ansi: bool = False,
        window: int = 4096,
        max_before: int = 1 << 20,
        log: LogTarget = None,
        timestamps: bool = False,
        timeout: float = 30.0,
        linesep: str = "\n",
    ) -> None:
        """Drive *channel*; the console owns it and closes it.

        A :class:`~iochannel.chardev.Chardev` is attached as its frontend
        instead (see :meth:`attach`).
        *encoding* ``None`` matches bytes; otherwise text decoded with
        *errors*.  *timeout* is the default for every wait, in seconds.
        *linesep* ends each :meth:`sendline` (``"\\r"`` for serial consoles
        is what a typing user sends; ``"\\n"`` works for most shells).
        The other options are :class:`~iochannel.console.Expecter`'s.
        """
        if not isinstance(channel, Channel):
            from ._attach import ChardevChannel

            channel = ChardevChannel(channel)
        self.channel = channel
        self._encoding = encoding or "utf-8"
        self.expecter: Expecter[AnyText] = Expecter(
            encoding=encoding,
            errors=errors,
            strip_ansi=strip_ansi,
            window=window,
            max_before=max_before,
            log=log,
            timestamps=timestamps,
        )
        self.timeout = timeout
        self.linesep = linesep
        self.last: ExpectMatch[AnyText] | None = None
        """The result of the last successful expect."""
        self._buffer = bytearray(_READ_SIZE)

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        rows: int = 24,
        cols: int = 80,
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Self:
        """Run *argv* on a new pty of *rows* x *cols* and drive it."""
        channel = CommandChannel.spawn(argv, pty=True, env=env)
        channel.resize(rows, cols)
        return cls(channel, **options)

    @classmethod
    def attach(cls, chardev: Chardev, *, deadline: float | None = None, **options: Any) -> Self:
        """Drive *chardev* as its frontend (it must have none); closing detaches.

        The console follows the chardev's connections: a wait goes on across a
        CLOSED and the next OPENED.  The stream ends when the chardev is
        closed while connected, or after *deadline* seconds without a
        connection.  The chardev's loop must run in another thread for a
        blocking :class:`Console`; on that loop, use :class:`AsyncConsole`.
        """
        from ._attach import ChardevChannel

        return cls(ChardevChannel(chardev, deadline=deadline), **options)

    def _searcher(
        self, patterns: Pattern | Sequence[Pattern], failures: Sequence[Pattern], exact: bool
    ) -> Searcher:
        return Searcher(patterns, failures, exact=exact, kind=self.expecter.kind)

    def _encode(self, data: str | bytes) -> bytes:
        return data.encode(self._encoding) if isinstance(data, str) else data

    def _deadline(self, timeout: float | None) -> tuple[float, float]:
        t = self.timeout if timeout is None else timeout
        return t, time.monotonic() + t

    def _feed(self, data: bytes) -> None:
        if data:
            self.expecter.feed(data)
        else:
            self.expecter.feed_eof()

    def _found(self, searcher: Searcher) -> ExpectMatch[AnyText] | None:
        m = self.expecter.search(searcher)
        if m is not None:
            self.last = m
        elif self.expecter.eof:
            channel = self.channel
            why: str = getattr(channel, "eof_reason", "")  # a chardev's channel says why
            raise self.expecter.eof_error(searcher, channel.name, why)
        return m

    @property
    def before(self) -> AnyText:
        """Text before the last match."""
        assert self.last is not None, "no expect has matched yet"
        return self.last.before

    @property
    def after(self) -> AnyText:
        """The text of the last match."""
        assert self.last is not None, "no expect has matched yet"
        return self.last.after


class Console(_ConsoleBase[AnyText]):
    """A blocking console over *channel* (switched to non-blocking mode internally)."""

    @classmethod
    def connect(
        cls,
        target: str | Address,
        *,
        reconnect: Reconnect | bool | float | None = None,
        tls_creds: str | None = None,
        **options: Any,
    ) -> Console[Any]:
        """Connect to a console socket, e.g. QEMU's ``-serial unix:PATH,server=on,wait=off``.

        *target* is an :data:`~iochannel.Address` or text: ``unix:PATH`` (or
        a path), ``HOST:PORT``, ``telnet://HOST:PORT``, ``ws://HOST:PORT/PATH``,
        the web console's page ``http://HOST:PORT/?token=T``, or ``wss://…``
        and ``https://…`` (*tls_creds*: a directory with ``ca-cert.pem``).
        *reconnect* (a :class:`Reconnect`, ``True`` for its defaults, or a delay
        in seconds) follows a server that restarts; see the module docstring.
        WebSocket targets cannot reconnect.
        """
        plan = _Target(target, reconnect)
        if plan.kind in WEBSOCKET_KINDS:
            raw = SocketChannel.connect(plan.addr)
            return cls(
                websocket_layers(raw, plan.kind, plan.text, plan.resource, tls_creds), **options
            )
        if plan.via_chardev:
            return cls(plan.chardev_channel(None), **options)
        return cls(SocketChannel.connect(plan.addr), **options)

    def _wait(self, searcher: Searcher, timeout: float | None) -> ExpectMatch[AnyText]:
        total, deadline = self._deadline(timeout)
        channel = self.channel
        if channel.blocking:
            channel.set_blocking(False)  # reads return None instead of blocking past the deadline
        buf = self._buffer
        view = memoryview(buf)
        while True:
            m = self._found(searcher)
            if m is not None:
                return m
            # Checked on every pass: a flood that never lets a read block still times out.
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.expecter.timeout_error(searcher, total, channel.name)
            n = channel.readinto(buf)
            if n is None:
                channel.wait(Condition.IN, left)
            else:
                self._feed(bytes(view[:n]))

    def expect(
        self,
        patterns: Pattern | Sequence[Pattern],
        timeout: float | None = None,
        *,
        failures: Sequence[Pattern] = (),
    ) -> ExpectMatch[AnyText]:
        """Wait for a regular expression (or one of a list); see the module docstring."""
        return self._wait(self._searcher(patterns, failures, False), timeout)

    def expect_exact(
        self,
        patterns: Pattern | Sequence[Pattern],
        timeout: float | None = None,
        *,
        failures: Sequence[Pattern] = (),
    ) -> ExpectMatch[AnyText]:
        """Wait for a literal string (or one of a list)."""
        return self._wait(self._searcher(patterns, failures, True), timeout)

    def send(self, data: str | bytes) -> None:
        self.channel.write_all(self._encode(data))

    def sendline(self, line: str | bytes = "") -> None:
        self.send(self._encode(line) + self.linesep.encode())

    def sendcontrol(self, char: str) -> None:
        """Send Ctrl+*char*, e.g. ``sendcontrol("c")`` for an interrupt."""
        self.send(control_byte(char))

    def run(self, command: str, timeout: float | None = None) -> tuple[AnyText, int]:
        """Run *command* in the console's shell; return (output, exit status)."""
        _, deadline = self._deadline(timeout)
        plan = _RunPlan[AnyText](command, self.expecter.kind)
        self.sendline(plan.line)
        self.expect(plan.start, max(0.0, deadline - time.monotonic()))
        return plan.result(self.expect(plan.end, max(0.0, deadline - time.monotonic())))

    def run_check(self, command: str, timeout: float | None = None) -> AnyText:
        """The output of :meth:`run`; a non-zero status raises :class:`CommandFailedError`."""
        output, status = self.run(command, timeout)
        if status:
            raise CommandFailedError(command, status, output)
        return output

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Console[AnyText]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncConsole(_ConsoleBase[AnyText]):
    """The asyncio shell: the same methods as :class:`Console`, awaited."""

    @classmethod
    async def connect(
        cls,
        target: str | Address,
        *,
        reconnect: Reconnect | bool | float | None = None,
        tls_creds: str | None = None,
        **options: Any,
    ) -> AsyncConsole[Any]:
        """:meth:`Console.connect` without blocking the loop; chardevs run on this loop."""
        plan = _Target(target, reconnect)
        if plan.kind in WEBSOCKET_KINDS:
            raw = await SocketChannel.connect_async(plan.addr)
            return cls(
                websocket_layers(raw, plan.kind, plan.text, plan.resource, tls_creds), **options
            )
        if plan.via_chardev:
            return cls(plan.chardev_channel(asyncio.get_running_loop()), **options)
        return cls(await SocketChannel.connect_async(plan.addr), **options)

    async def _wait(self, searcher: Searcher, timeout: float | None) -> ExpectMatch[AnyText]:
        total, deadline = self._deadline(timeout)
        error = self.expecter.timeout_error
        try:
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + total):
                while True:
                    m = self._found(searcher)
                    if m is not None:
                        return m
                    # A read that never has to wait never yields to the loop,
                    # so a flood would outrun asyncio's timeout: check here too.
                    if time.monotonic() >= deadline:
                        raise error(searcher, total, self.channel.name)
                    self._feed(await self.channel.aread(_READ_SIZE))
        except TimeoutError as exc:
            if isinstance(exc, ExpectTimeout) or time.monotonic() < deadline:
                raise  # ours already, or a timeout of the caller's
            raise error(searcher, total, self.channel.name) from None

    async def expect(
        self,
        patterns: Pattern | Sequence[Pattern],
        timeout: float | None = None,
        *,
        failures: Sequence[Pattern] = (),
    ) -> ExpectMatch[AnyText]:
        return await self._wait(self._searcher(patterns, failures, False), timeout)

    async def expect_exact(
        self,
        patterns: Pattern | Sequence[Pattern],
        timeout: float | None = None,
        *,
        failures: Sequence[Pattern] = (),
    ) -> ExpectMatch[AnyText]:
        return await self._wait(self._searcher(patterns, failures, True), timeout)

    async def send(self, data: str | bytes) -> None:
        await self.channel.awrite_all(self._encode(data))

    async def sendline(self, line: str | bytes = "") -> None:
        await self.send(self._encode(line) + self.linesep.encode())

    async def sendcontrol(self, char: str) -> None:
        await self.send(control_byte(char))

    async def run(self, command: str, timeout: float | None = None) -> tuple[AnyText, int]:
        _, deadline = self._deadline(timeout)
        plan = _RunPlan[AnyText](command, self.expecter.kind)
        await self.sendline(plan.line)
        await self.expect(plan.start, max(0.0, deadline - time.monotonic()))
        end = await self.expect(plan.end, max(0.0, deadline - time.monotonic()))
        return plan.result(end)

    async def run_check(self, command: str, timeout: float | None = None) -> AnyText:
        output, status = await self.run(command, timeout)
        if status:
            raise CommandFailedError(command, status, output)
        return output

    async def aclose(self) -> None:
        await self.channel.aclose()

    async def __aenter__(self) -> AsyncConsole[AnyText]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
