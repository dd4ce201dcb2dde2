"""``iochannel console TARGET``: an interactive terminal on a console socket.

TARGET is one of:

* a unix socket path (``unix:PATH`` also works, and is needed for a path
  without ``/`` that contains ``:``);
* ``HOST:PORT``: a raw TCP byte stream;
* ``telnet://HOST:PORT``: telnet negotiation from the server is stripped and a
  0xFF byte typed is sent as ``IAC IAC``;
* ``ws://HOST:PORT/PATH?QUERY`` or ``wss://…`` (with ``--tls-creds DIR``, the
  QEMU-style x509 directory holding ``ca-cert.pem``): a WebSocket carrying the
  byte stream, such as a socket chardev with ``websocket=on``;
* ``http://HOST:PORT/?token=T`` or ``https://…``: the web console, by the page
  address the daemon prints; keys go out as the page's input messages.

The terminal is put in raw mode, so every key, Ctrl-C and Ctrl-D included,
goes to the peer; the escape key (Ctrl-] unless ``--escape`` says otherwise)
leaves.  The terminal settings are restored however the client ends: the
escape key, end of the peer's stream, end of standard input, an error, or
SIGTERM/SIGHUP.  ``--log FILE`` appends everything received to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import termios
import tty
from collections.abc import Sequence
from typing import IO

from .._core.channel import Channel
from .._transports.socket import SocketChannel
from ..chardev.telnet import TelnetFilter
from ..errors import ChannelError
from ._console import WEBSOCKET_KINDS, parse_target, websocket_layers

__all__ = ["escape_byte", "main", "run_console"]

_IAC = b"\xff"
_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def escape_byte(text: str) -> int | None:
    """``"^]"`` → 0x1d, ``"^A"`` → 0x01, ``"none"`` → ``None`` (no escape key)."""
    if text == "none":
        return None
    if len(text) == 2 and text[0] == "^" and 0x3F <= ord(text[1].upper()) <= 0x5F:
        return ord(text[1].upper()) ^ 0x40
    raise ValueError(f"--escape {text!r}: use ^X for Ctrl+X (e.g. ^] or ^A), or none")


async def open_target(target: str, tls_creds: str | None = None) -> tuple[Channel, bool]:
    """Connect to *target*; return the channel and whether it speaks telnet."""
    kind, addr, resource = parse_target(target)
    channel: Channel = await SocketChannel.connect_async(addr)
    if kind in WEBSOCKET_KINDS:
        channel = websocket_layers(channel, kind, target, resource, tls_creds)
    return channel, kind == "telnet"


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        view = view[n:]


async def run_console(
    channel: Channel,
    *,
    escape: int | None = 0x1D,
    telnet: bool = False,
    stdin: int = 0,
    stdout: int = 1,
    log: IO[bytes] | None = None,
) -> str:
    """Relay *stdin* to *channel* and *channel* to *stdout* until one side ends.

    Returns why it ended: ``"escape"``, ``"peer"`` (end of stream), ``"stdin"``
    or a signal name.  The caller owns the terminal mode and the channel.
    """
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str] = loop.create_future()
    keys: asyncio.Queue[bytes] = asyncio.Queue()

    def end(reason: str) -> None:
        if not ended.done():
            ended.set_result(reason)

    def on_keys() -> None:
        try:
            data = os.read(stdin, 4096)
        except BlockingIOError:
            return
        if not data:
            end("stdin")
            return
        if escape is not None and escape in data:
            data = data[: data.index(escape)]
            end("escape")
        if telnet:
            data = data.replace(_IAC, _IAC + _IAC)
        if data:
            keys.put_nowait(data)

    async def send() -> None:
        while True:
            await channel.awrite_all(await keys.get())

    async def receive() -> None:
        strip = TelnetFilter() if telnet else None
        while data := await channel.aread(65536):
            if log is not None:
                log.write(data)
                log.flush()
            if strip is not None:
                data = b"".join(p for p in strip.feed(data) if isinstance(p, bytes))
            await _write_all(stdout, data)
        end("peer")

    loop.add_reader(stdin, on_keys)
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, end, sig.name)
    tasks = [asyncio.create_task(send()), asyncio.create_task(receive())]

    def failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            end("error")

    for task in tasks:
        task.add_done_callback(failed)
    try:
        reason = await ended
        # Keys typed before the escape key still go out.
        while not keys.empty():
            await channel.awrite_all(keys.get_nowait())
        for task in tasks:
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error
        return reason
    finally:
        loop.remove_reader(stdin)
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _name(escape: int | None) -> str:
    return "none" if escape is None else f"^{chr(escape ^ 0x40)}"


async def _amain(args: argparse.Namespace, escape: int | None) -> str:
    channel, telnet = await open_target(args.target, args.tls_creds)
    log = open(args.log, "ab") if args.log else None  # noqa: SIM115 (closed below)
    try:
        print(
            f"Connected to {args.target}. Escape character is '{_name(escape)}'.",
            file=sys.stderr,
            end="\r\n",  # the terminal is raw: no newline translation
            flush=True,
        )
        return await run_console(channel, escape=escape, telnet=telnet, log=log)
    finally:
        await channel.aclose()
        if log is not None:
            log.close()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="iochannel console",
        description="Interactive terminal on a console socket (unix path, HOST:PORT, "
        "telnet://HOST:PORT, ws:// or wss:// URL, or the web console's http(s):// page URL).",
    )
    parser.add_argument(
        "target", help="unix path, HOST:PORT, telnet://HOST:PORT, ws(s):// or http(s):// URL"
    )
    parser.add_argument("--escape", default="^]", help="key that leaves: ^X or none (default ^])")
    parser.add_argument("--log", metavar="FILE", help="append everything received to FILE")
    parser.add_argument(
        "--tls-creds", metavar="DIR", help="x509 directory for wss:// and https:// (ca-cert.pem)"
    )
    args = parser.parse_args(list(argv))
    try:
        escape = escape_byte(args.escape)
    except ValueError as exc:
        parser.error(str(exc))
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setraw(fd, termios.TCSANOW)
        reason = asyncio.run(_amain(args, escape))
    except (OSError, ValueError, ChannelError) as exc:
        print(f"\niochannel console: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    print(f"\nDisconnected ({reason}).", file=sys.stderr, flush=True)
    return 0
