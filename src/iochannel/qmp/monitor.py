"""QMPMonitor: a QMP server on any chardev (as ``--monitor chardev=ID`` gives)."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, final

from ..chardev import Chardev, ChardevError, ChardevEvent, Frontend
from .protocol import CommandSpec, QMPError, QMPServerProtocol, Request, SessionState

__all__ = ["MAX_QUEUED", "QMPMonitor"]

log = logging.getLogger(__name__)

#: Requests waiting at most before the monitor stops reading input.
MAX_QUEUED = 8

Handler = Callable[[dict[str, Any]], Any]


@final
class QMPMonitor:
    """A QMP server on any chardev (as ``--monitor chardev=ID`` gives).

    The monitor is the chardev's frontend.  Each OPENED starts a session: the
    greeting goes out, and after ``qmp_capabilities`` commands run in arrival
    order, one at a time (handlers may be plain functions or coroutines).  Every
    message gets its reply in arrival order, error replies for unparsable input
    included: a message is checked only when the one before it has been answered.
    CLOSED ends the session; replies still pending for it are dropped.

    Flow control both ways: at most ``MAX_QUEUED`` messages wait before the
    monitor stops reading (QEMU's limit), and replies and events are queued and
    written with the chardev's writable watch, never by blocking the loop.  A
    client that stops reading cannot grow the output queue past
    ``max_output`` bytes: past it the session is disconnected.

    Handlers raise :class:`~iochannel.qmp.protocol.QMPError` for failures with a
    QMP error class; any other exception becomes a ``GenericError`` carrying its
    message (and is logged), never a crash of the monitor.
    """

    def __init__(
        self,
        chardev: Chardev,
        *,
        version: tuple[int, int, int] = (0, 0, 0),
        package: str = "",
        max_output: int = 16 << 20,
        on_quit: Callable[[], None] | None = None,
    ) -> None:
        self.chardev = chardev
        self._specs: dict[str, CommandSpec] = {}
        self._handlers: dict[str, Handler] = {}
        self._proto = QMPServerProtocol(self._specs, version=version, package=package)
        self._out: collections.deque[bytes] = collections.deque()
        self._out_size = 0
        self.max_output = max_output
        self._watch: Any = None
        self._worker: asyncio.Task[None] | None = None
        self._session = 0
        self._on_quit = on_quit
        self._add_builtins()
        self.fe = Frontend(chardev)
        self.fe.set_handlers(self._can_read, self._read, self._event)

    # ---- commands -------------------------------------------------------

    def register(
        self,
        name: str,
        handler: Handler,
        params: Mapping[str, tuple[str, bool]] | None = None,
        *,
        negotiation: bool = False,
    ) -> None:
        """Add a command; *params* maps names to (type, required) for argument checks."""
        self._specs[name] = CommandSpec(name, params, negotiation)
        self._handlers[name] = handler

    def _add_builtins(self) -> None:
        self.register(
            "qmp_capabilities",
            self._qmp_capabilities,
            {"enable": ("array", False)},
            negotiation=True,
        )
        self.register("query-commands", lambda args: [{"name": n} for n in sorted(self._specs)], {})
        self.register("query-version", self._query_version, {})
        self.register("quit", self._quit, {})

    def _qmp_capabilities(self, args: dict[str, Any]) -> None:
        for cap in args.get("enable", []):
            raise QMPError(f"Capability '{cap}' not available", "GenericError")
        self._proto.negotiated()

    def _query_version(self, args: dict[str, Any]) -> dict[str, Any]:
        major, minor, micro = self._proto.version
        return {
            "qemu": {"major": major, "minor": minor, "micro": micro},
            "package": self._proto.package,
        }

    def _quit(self, args: dict[str, Any]) -> None:
        if self._on_quit is not None:
            asyncio.get_running_loop().call_soon(self._on_quit)

    # ---- chardev frontend ---------------------------------------------------

    def _can_read(self) -> int:
        return 4096 if self._proto.pending < MAX_QUEUED else 0

    def _event(self, event: ChardevEvent) -> None:
        if event == ChardevEvent.OPENED:
            self._session += 1
            self._proto.reset()
            self._out.clear()
            self._out_size = 0
            self._send(self._proto.greeting())
        elif event == ChardevEvent.CLOSED:
            self._session += 1  # replies of the old session are dropped
            self._proto.reset()
            self._out.clear()
            self._out_size = 0

    def _read(self, data: bytes) -> None:
        self._proto.receive_data(data)
        if self._proto.pending and (self._worker is None or self._worker.done()):
            self._worker = asyncio.get_running_loop().create_task(self._run_requests())

    async def _run_requests(self) -> None:
        # One queue for requests and parse errors alike: replies keep arrival order.
        while (item := self._proto.next_request()) is not None:
            session = self._session
            reply = item if isinstance(item, bytes) else await self._execute(item)
            if session == self._session:
                self._send(reply)
            self.fe.accept_input()  # room in the queue again

    async def _execute(self, request: Request) -> bytes:
        handler = self._handlers[request.name]
        try:
            result = handler(request.arguments)
            if inspect.isawaitable(result):
                result = await result
        except QMPError as err:
            return self._proto.error(request, err)
        except ChardevError as err:
            return self._proto.error(request, QMPError(_describe(err)))
        except Exception as err:
            log.exception("QMP command %s failed", request.name)
            return self._proto.error(request, QMPError(f"{request.name}: {_describe(err)}"))
        return self._proto.reply(request, result)

    # ---- output -------------------------------------------------------------

    def emit(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Send an event to the current session, if it has negotiated."""
        if self.fe.is_open and self._proto.state is SessionState.COMMAND:
            self._send(self._proto.event(name, data))

    def _send(self, message: bytes) -> None:
        self._out.append(message)
        self._out_size += len(message)
        if self._out_size > self.max_output:
            log.warning("QMP client on '%s' is not reading; disconnecting it", self.chardev.id)
            self._out.clear()
            self._out_size = 0
            self.fe.disconnect()
            return
        self._flush()

    def _flush(self) -> None:
        while self._out:
            head = self._out[0]
            try:
                n = self.fe.write(head)
            except (ChardevError, OSError) as exc:
                log.info("QMP output on '%s' failed: %s", self.chardev.id, exc)
                self._out.clear()
                self._out_size = 0
                return
            if n is None:
                if self._watch is None:
                    self._watch = self.fe.add_watch(self._on_writable)
                return
            self._out_size -= n
            if n < len(head):
                self._out[0] = head[n:]
            else:
                self._out.popleft()

    def _on_writable(self) -> bool:
        self._watch = None
        self._flush()
        return False

    async def drain(self) -> None:
        """Wait until queued requests ran and their replies were handed to the chardev."""
        while self._proto.pending or self._out or (self._worker and not self._worker.done()):
            await asyncio.sleep(0.001)

    def close(self) -> None:
        """Detach from the chardev (the chardev itself stays)."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._worker is not None:
            self._worker.cancel()
        self.fe.deinit()


def _describe(err: Exception) -> str:
    """A never-empty message: some exceptions (MemoryError) have none of their own."""
    return str(err) or type(err).__name__
