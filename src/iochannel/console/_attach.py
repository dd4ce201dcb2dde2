"""Consoles on chardevs: a :class:`~iochannel.Channel` that is a chardev's frontend.

:class:`ChardevChannel` attaches to an iochannel :class:`~iochannel.chardev.Chardev`
as its frontend and offers the chardev's input and output as a channel, so a
:class:`~iochannel.console.Console` can drive a device inside the daemon, a
hub, or a socket chardev client that reconnects.  The chardev's callbacks
run on its loop; the channel may be read from any thread (a blocking console
while the loop runs in another thread) or from a task on that loop.

Connections come and go under the channel: with *follow* (the default) the
stream goes on across a CLOSED and the next OPENED, so a wait in progress
waits through a reconnection; without it the first CLOSED ends the stream.
Closing the chardev while it is connected ends it too (its CLOSED comes with
the chardev marked closed), and so does a disconnection longer than
*deadline* seconds (counted from a CLOSED, or from the start if no
connection was ever made): :attr:`ChardevChannel.eof_reason` says why.
While disconnected, a write raises :class:`ConnectionError` (it is not kept
for the next connection).

:func:`chardev_client` makes such a channel through a
:class:`~iochannel.chardev.SocketChardev` client, which does the telnet
negotiation and the reconnecting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import select
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from .._core.channel import Buffer, Channel
from .._core.flags import Condition, Feature, ReadFlag, WriteFlag
from .._core.watch import FdSpec, forget_fd
from .._layers.layer import LayerChannel
from .._transports.address import Address
from .._transports.memory import LevelFd
from ..chardev.chardev import Chardev
from ..chardev.events import ChardevEvent
from ..chardev.frontend import Frontend
from ..chardev.socket import SocketChardev

__all__ = ["ChardevChannel", "LoopThread", "WebConsoleChannel", "chardev_client", "on_loop"]

T = TypeVar("T")

# Input kept for a reader before the chardev is told to pause (its backpressure).
_INPUT_LIMIT = 1 << 20


class LoopThread:
    """An event loop running in its own thread, for chardevs driven by a blocking console."""

    def __init__(self, name: str = "console-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T]) -> T:
    """Call *fn* on *loop*'s thread and return its result (directly if already there)."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop or not loop.is_running():
        return fn()
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)

    loop.call_soon_threadsafe(call)
    return done.result()


class ChardevChannel(Channel):
    """*chardev*'s frontend as a channel; see the module docstring.

    *own* closes the chardev with the channel (else it is only detached);
    *loop_thread* is stopped with it.
    """

    def __init__(
        self,
        chardev: Chardev,
        *,
        follow: bool = True,
        deadline: float | None = None,
        own: bool = False,
        loop_thread: LoopThread | None = None,
        name: str = "",
    ) -> None:
        super().__init__(Feature.NONE, name or f"chardev '{chardev.id}'")
        self.chardev = chardev
        self.follow = follow
        self.deadline = deadline
        self.connections = 0
        """OPENED events seen: 2 after one reconnection."""
        self.eof_reason = ""
        """Why the stream ended, when the chardev did not simply close."""
        self._own = own
        self._loop_thread = loop_thread
        self._lock = threading.Lock()
        self._data = bytearray()
        self._eof = False
        self._readable = LevelFd()
        self._writable = LevelFd()
        self._writable.set(True)
        self._give_up: asyncio.TimerHandle | None = None
        self._fe = Frontend()  # detached until _attach runs on the chardev's loop
        try:
            on_loop(chardev.loop, self._attach)
        except BaseException:
            self.close()
            raise

    # ---- the frontend side, on the chardev's loop -----------------------------

    def _attach(self) -> None:
        self._fe = Frontend(self.chardev)
        self._fe.set_handlers(self._can_read, self._on_input, self._on_event)
        if not self.chardev.be_open:
            self._arm_give_up()

    def _can_read(self) -> int:
        return max(0, _INPUT_LIMIT - len(self._data))

    def _on_input(self, data: bytes) -> None:
        with self._lock:
            self._data += data
            self._readable.set(True)

    def _on_event(self, event: ChardevEvent) -> None:
        if event == ChardevEvent.OPENED:
            self.connections += 1
            self._cancel_give_up()
        elif event == ChardevEvent.CLOSED:
            if self.chardev.closed or not self.follow:
                self._end("")
            else:
                self._arm_give_up()

    def _arm_give_up(self) -> None:
        if self.deadline is not None and self._give_up is None:
            self._give_up = self.chardev.loop.call_later(self.deadline, self._deadline_passed)

    def _cancel_give_up(self) -> None:
        timer, self._give_up = self._give_up, None
        if timer is not None:
            timer.cancel()

    def _deadline_passed(self) -> None:
        self._give_up = None
        if not self.chardev.be_open:
            self._end(f"no connection for {self.deadline:g} s")

    def _end(self, reason: str) -> None:
        with self._lock:
            if not self._eof:
                self.eof_reason = reason
                self._eof = True
                self._readable.set(True)

    # ---- the channel side, on any thread --------------------------------------

    def _readv(
        self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int | None:
        while True:
            with self._lock:
                data = self._data
                if data:
                    full = len(data) >= _INPUT_LIMIT
                    n = 0
                    for b in buffers:
                        view = memoryview(b).cast("B")
                        chunk = data[n : n + len(view)]
                        view[: len(chunk)] = chunk
                        n += len(chunk)
                        if n >= len(data):
                            break
                    del data[:n]
                    self._readable.set(bool(data) or self._eof)
                    break
                if self._eof:
                    return 0
            if not self._blocking:
                return None
            _block_on(self._readable.fd)
            self._check_open()
        if full:
            self.chardev.loop.call_soon_threadsafe(self._fe.accept_input)
        return n

    def _writev(
        self, buffers: Sequence[Buffer], fds: Sequence[int], flags: WriteFlag
    ) -> int | None:
        data = b"".join(buffers)
        while True:
            n = self._fe.write(data)
            if n is not None:
                return n
            with self._lock:
                self._writable.set(False)
            self.chardev.loop.call_soon_threadsafe(self._watch_writable)
            if not self._blocking:
                return None
            _block_on(self._writable.fd)
            self._check_open()

    def _watch_writable(self) -> None:
        def ready() -> bool:
            with self._lock:
                self._writable.set(True)
            return False

        if self._fe.add_watch(ready) is None:
            ready()

    def _pending(self, cond: Condition) -> Condition:
        ready = Condition.NONE
        if cond & Condition.IN and self._readable.on:
            ready |= Condition.IN
        if cond & Condition.OUT and self._writable.on:
            ready |= Condition.OUT
        return ready

    def _wait_fds(self, cond: Condition) -> FdSpec:
        spec: list[tuple[int, int]] = []
        if cond & Condition.IN:
            spec.append((self._readable.fd, select.POLLIN))
        if cond & Condition.OUT:
            spec.append((self._writable.fd, select.POLLIN))
        return tuple(spec)

    def _set_blocking(self, blocking: bool) -> None:
        pass

    def _close(self) -> None:
        with self._lock:
            # Wake a blocking read or write in another thread: it sees the close.
            self._readable.set(True)
            self._writable.set(True)
        loop = self.chardev.loop
        if not loop.is_closed():
            on_loop(loop, self._detach)
        if self._loop_thread is not None:
            self._loop_thread.stop()
        self._close_levels()

    def _close_levels(self) -> None:
        for level in (self._readable, self._writable):
            forget_fd(level.fd)
            os.close(level.fd)

    def _detach(self) -> None:
        self._cancel_give_up()
        self._fe.deinit(delete=self._own)


def _block_on(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(None)


def chardev_client(
    addr: Address,
    *,
    telnet: bool,
    retry: float | None,
    max_retry: float | None,
    deadline: float | None,
    loop: asyncio.AbstractEventLoop | None,
    name: str,
) -> ChardevChannel:
    """A console channel through a :class:`~iochannel.chardev.SocketChardev` client.

    The chardev does the telnet negotiation and, given *retry* (seconds; the
    delays grow up to *max_retry* if set), the reconnecting, which the channel
    follows.  It runs on *loop*, or on a new :class:`LoopThread` (stopped with
    the channel) if ``None``.
    """
    thread = LoopThread() if loop is None else None
    chr_loop = thread.loop if thread is not None else loop
    assert chr_loop is not None
    try:
        chardev = SocketChardev(
            "console",
            addr,
            telnet=telnet,
            reconnect_ms=round(retry * 1000) if retry else 0,
            reconnect_max_ms=round(max_retry * 1000) if retry and max_retry else None,
            loop=chr_loop,
        )
        try:
            on_loop(chr_loop, chardev.open)
        except BaseException:
            on_loop(chr_loop, chardev.close)
            raise
    except BaseException:
        if thread is not None:
            thread.stop()
        raise
    return ChardevChannel(
        chardev,
        follow=retry is not None,
        deadline=deadline,
        own=True,
        loop_thread=thread,
        name=name,
    )


class WebConsoleChannel(LayerChannel):
    """The web console's WebSocket seen as a terminal: writes go out as input messages.

    The page's side of :mod:`iochannel.web.protocol`: what is written is framed
    as terminal input; what is read is the terminal output as the server sends
    it, device-state sequences included (``strip_ansi`` removes them).
    """

    def __init__(self, master: Channel) -> None:
        super().__init__(master, master.name)

    def _handshake_step(self) -> Condition:
        return Condition.NONE

    def _readv(
        self, buffers: Sequence[Buffer], flags: ReadFlag, fds: list[int] | None
    ) -> int | None:
        return self._master.readv(buffers)

    def _encode(self, buffers: Sequence[Buffer]) -> int:
        from ..web.protocol import MAX_INPUT, encode_input

        data = b"".join(bytes(b) for b in buffers)[:MAX_INPUT]
        self._queue(encode_input(data))
        return len(data)

    def _readable(self) -> bool:
        return bool(self._master._pending(Condition.IN))
