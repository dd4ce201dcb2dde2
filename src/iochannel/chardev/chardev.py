"""Chardev: the backend half of a character device, with an enforced connection lifecycle.

A chardev moves bytes between one outside thing (a socket, a file, a pty, a
ring buffer …) and its frontend(s) (:class:`~iochannel.chardev.Frontend`).

*Input* (backend → frontend) is pull-driven: the backend asks
:meth:`Chardev.be_can_read` how much the frontend accepts, never delivers more
through :meth:`Chardev.be_write`, and stops reading at 0 until
:meth:`_update_read_handler` is called (the frontend's ``accept_input``).

*Output* (frontend → backend) is non-blocking: :meth:`Chardev.write` takes what
fits and returns the count, or ``None`` when it would block — then a writable
watch (:meth:`Chardev.add_watch`) is the only backpressure.

*Lifecycle*: :meth:`Chardev.be_event` with OPENED/CLOSED sets
``be_open``; delivery to frontends goes through each registration's
:class:`~iochannel.chardev.events.LifecycleView`, so frontends see OPENED and
CLOSED strictly alternating whatever the backend does.

*Writes while closed* follow the chardev's :class:`ClosedWrites` policy:
``drop`` (counted), ``error`` (:class:`ChardevClosedError`) or ``buffer`` up to
a bound, then ``drop-oldest`` or ``error``.  Buffered bytes go out first when
the backend opens.

Every chardev belongs to an asyncio loop (:attr:`loop`): callbacks to frontends
run there.  :meth:`write` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from .._core.channel import Buffer
from ..errors import ChannelBusyError, ChannelError, ConfigurationError
from .events import ChardevEvent, changed

__all__ = [
    "Chardev",
    "ChardevBusyError",
    "ChardevClosedError",
    "ChardevError",
    "ClosedWrites",
    "Stats",
    "WhileClosed",
    "WriteWatch",
]

log = logging.getLogger(__name__)


class AttachedFrontend(Protocol):
    """What a chardev uses of a frontend attached to it.

    :class:`iochannel.chardev.Frontend` implements it; naming it here keeps
    this module free of the frontend module, which builds on it.
    """

    @property
    def frontend_open(self) -> bool: ...

    @property
    def _be_change(self) -> object: ...

    def _can_read(self) -> int: ...

    def _deliver(self, data: Buffer) -> None: ...

    def _event(self, event: ChardevEvent) -> None: ...

    def _swap(self, new: Chardev) -> bool: ...


#: Most bytes handed to a frontend in one delivery (QEMU's READ_BUF_LEN).
READ_CHUNK = 4096


class ChardevError(ChannelError):
    """Base class of chardev errors; messages name the chardev."""


class ChardevBusyError(ChardevError, ChannelBusyError):
    """The chardev is in use (by a frontend, a mux or a hub)."""


class ChardevClosedError(ChardevError, ConnectionError):
    """A write to a chardev that is not open, under the ``error`` policy."""


class WhileClosed(enum.Enum):
    """What :meth:`Chardev.write` does while the backend is not open."""

    DROP = "drop"
    ERROR = "error"
    BUFFER = "buffer"


@dataclasses.dataclass(frozen=True)
class ClosedWrites:
    """The policy for writes while the backend is closed."""

    mode: WhileClosed = WhileClosed.ERROR
    #: ``buffer`` mode: bytes kept at most.
    limit: int = 65536
    #: ``buffer`` mode, when full: ``"drop-oldest"`` or ``"error"``.
    overflow: str = "drop-oldest"

    def __post_init__(self) -> None:
        if self.overflow not in ("drop-oldest", "error"):
            raise ConfigurationError(
                f"overflow must be 'drop-oldest' or 'error', not {self.overflow!r}",
                field="overflow",
            )
        if self.limit < 0:
            raise ConfigurationError(f"limit must not be negative, not {self.limit}", field="limit")


@dataclasses.dataclass
class Stats:
    """Counters a chardev keeps (shown by the management API)."""

    bytes_in: int = 0
    bytes_out: int = 0
    dropped: int = 0
    opens: int = 0
    closes: int = 0


WatchCallback = Callable[[], bool]


class WriteWatch:
    """A writable watch handed out by :meth:`Chardev.add_watch` (see there)."""

    def __init__(self, registry: set[WriteWatch], callback: WatchCallback) -> None:
        self._registry = registry
        self._callback = callback
        #: The backend's own watch handle (with ``cancel()``).
        self.inner: Any = None
        self.active = True
        registry.add(self)

    def fire(self) -> bool:
        keep = self.active and self._callback()
        if not keep:
            self.cancel()
        return keep

    def hang_up(self) -> None:
        if self.active:
            self.cancel()
            self._callback()

    def cancel(self) -> None:
        self.active = False
        self._registry.discard(self)
        if self.inner is not None:
            self.inner.cancel()
            self.inner = None


class Chardev:
    """Base class of every backend; see the module docstring.

    Subclasses implement ``_open`` (returns whether the backend is open at
    once), ``_chr_write`` and optionally ``_close``, ``_update_read_handler``,
    ``_add_write_watch``, ``_set_fe_open`` and the control hooks.
    """

    #: The backend type name (``socket``, ``file`` …).
    type_name: ClassVar[str] = ""
    #: Frontends that may attach at once (a mux takes many).
    max_frontends: ClassVar[int] = 1
    #: The policy used when none is configured.
    default_closed_writes: ClassVar[ClosedWrites] = ClosedWrites(WhileClosed.ERROR)
    #: A mux or a hub: it cannot be stacked on another, nor hot-swapped.
    multiplexer: ClassVar[bool] = False

    def __init__(
        self,
        id: str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        closed_writes: ClosedWrites | None = None,
        logfile: str | None = None,
        logappend: bool = False,
    ) -> None:
        if not id or len(id) > 127:
            raise ConfigurationError(f"chardev id {id!r} must have 1 to 127 characters", field="id")
        self.id = id
        # Bound now: a thread (a connect worker, a hub's waker) cannot look up
        # the loop later, and a lazy lookup from the wrong thread would fail.
        self._loop = loop if loop is not None else _running_loop()
        self.closed_writes = closed_writes or self.default_closed_writes
        self.be_open = False
        self.stats = Stats()
        #: Why output is failing while the backend stays open (a full disk,
        #: say), for the management API; ``None`` while it works.
        self.error: str | None = None
        self.filename = self.type_name
        self._frontends: list[AttachedFrontend] = []
        self._focus: AttachedFrontend | None = None
        self._write_lock: threading.RLock = threading.RLock()
        self._pending_out: collections.deque[bytes] = collections.deque()
        self._write_watches: set[WriteWatch] = set()
        self._pending_size = 0
        self._logfd = -1
        #: Set by a mux or hub that uses this chardev as one of its backends.
        self.owner: object | None = None
        self.opened = False
        self.closed = False
        if logfile:
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
            flags |= os.O_APPEND if logappend else os.O_TRUNC
            self._logfd = os.open(logfile, flags, 0o666)

    # ---- identity -------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop that runs this chardev's callbacks.

        The one passed, else the one running when the chardev was created, else
        the one running at first use; :class:`ChardevError` if there is none.
        """
        if self._loop is None:
            self._loop = _running_loop()
            if self._loop is None:
                raise ChardevError(
                    f"chardev '{self.id}' has no event loop: create it while the loop "
                    "runs, or pass loop="
                )
        return self._loop

    def __repr__(self) -> str:
        state = "open" if self.be_open else "closed"
        return f"<{type(self).__name__} {self.id!r} {state}>"

    @property
    def busy(self) -> bool:
        """In use by a frontend, a mux or a hub: cannot be removed."""
        return bool(self._frontends) or self.owner is not None

    @property
    def frontends(self) -> tuple[AttachedFrontend, ...]:
        return tuple(self._frontends)

    # ---- lifecycle --------------------------------------------------------

    def open(self) -> None:
        """Start the backend (once); an immediately open backend emits OPENED."""
        if self.opened:
            return
        self.opened = True
        if self._open():
            self.be_event(ChardevEvent.OPENED)

    def close(self) -> None:
        """Stop the backend and release everything; frontends see CLOSED if open."""
        if self.closed:
            return
        self.closed = True
        try:
            self._close()
        finally:
            if self.be_open:
                self.be_event(ChardevEvent.CLOSED)
            if self._logfd >= 0:
                os.close(self._logfd)
                self._logfd = -1

    # ---- frontend links -------------------------------------------------

    def _attach(self, fe: AttachedFrontend) -> None:
        if len(self._frontends) >= self.max_frontends or self.owner is not None:
            raise ChardevBusyError(f"chardev '{self.id}' is already in use")
        self._frontends.append(fe)
        if self._focus is None:
            self._focus = fe

    def _detach(self, fe: AttachedFrontend) -> None:
        if fe in self._frontends:
            self._frontends.remove(fe)
        if self._focus is fe:
            self._focus = self._frontends[0] if self._frontends else None
        self._update_read_handler()

    def _handlers_changed(self, fe: AttachedFrontend) -> None:
        """A frontend (un)registered handlers: input may start or stop."""
        self._update_read_handler()

    def _take_focus(self, fe: AttachedFrontend) -> None:
        self._focus = fe

    # ---- input: backend → frontend ----------------------------------------

    def be_can_read(self) -> int:
        """Bytes the focused frontend accepts now (0 pauses input)."""
        fe = self._focus
        return fe._can_read() if fe is not None else 0

    def be_write(self, data: Buffer) -> None:
        """Deliver input to the focused frontend (no more than :meth:`be_can_read`)."""
        fe = self._focus
        if fe is not None:
            self.stats.bytes_in += memoryview(data).nbytes
            fe._deliver(data)

    def be_event(self, event: ChardevEvent) -> None:
        """Report a backend event; OPENED/CLOSED update ``be_open``."""
        if event == ChardevEvent.OPENED:
            if self.be_open:
                # Backends that re-announce are absorbed here, once, for everyone.
                return
            self.be_open = True
            self.stats.opens += 1
            self._flush_pending()
        elif event == ChardevEvent.CLOSED:
            if not self.be_open:
                return
            self.be_open = False
            self.stats.closes += 1
            self._hang_up_write_watches()
        self._deliver_event(event)
        if event in (ChardevEvent.OPENED, ChardevEvent.CLOSED):
            changed()

    def _deliver_event(self, event: ChardevEvent) -> None:
        for fe in tuple(self._frontends):
            fe._event(event)

    def _update_read_handler(self) -> None:
        """Hook: the frontend's appetite may have changed; resume or pause input."""

    # ---- output: frontend → backend -----------------------------------------

    def write(self, data: Buffer) -> int | None:
        """Write without blocking: bytes taken, or ``None`` (add a writable watch).

        While closed, the ``closed_writes`` policy applies.  Thread-safe.
        """
        view = memoryview(data).cast("B")
        if not view:
            return 0
        with self._write_lock:
            if not self.be_open:
                return self._write_closed(view)
            if self._pending_out and not self._flush_pending():
                return None
            n = self._chr_write(view)
            if n:
                self.stats.bytes_out += n
                self._log(view[:n])
            return n

    def _write_closed(self, view: memoryview) -> int:
        policy = self.closed_writes
        size = len(view)
        if policy.mode is WhileClosed.ERROR:
            raise ChardevClosedError(f"chardev '{self.id}' is not connected")
        if policy.mode is WhileClosed.DROP:
            self.stats.dropped += size
            return size
        room = policy.limit - self._pending_size
        taken = size
        if size > room:
            if policy.overflow == "error":
                if room <= 0:
                    raise ChardevClosedError(
                        f"chardev '{self.id}' is not connected and its buffer "
                        f"({policy.limit} bytes) is full"
                    )
                view = view[:room]  # a partial write, as a full pipe gives
                taken = room
            else:
                self._drop_oldest(min(size - room, self._pending_size))
                if size > policy.limit:  # this write alone overflows: keep its tail
                    self.stats.dropped += size - policy.limit
                    view = view[size - policy.limit :]
        if view:
            self._pending_out.append(bytes(view))
            self._pending_size += len(view)
        return taken

    def _drop_oldest(self, excess: int) -> None:
        while excess > 0 and self._pending_out:
            head = self._pending_out[0]
            if len(head) <= excess:
                self._pending_out.popleft()
                self._pending_size -= len(head)
                self.stats.dropped += len(head)
                excess -= len(head)
            else:
                self._pending_out[0] = head[excess:]
                self._pending_size -= excess
                self.stats.dropped += excess
                excess = 0

    def _flush_pending(self) -> bool:
        """Send bytes buffered while closed; True when none are left."""
        with self._write_lock:
            while self._pending_out and self.be_open:
                head = self._pending_out[0]
                try:
                    n = self._chr_write(memoryview(head))
                except OSError:
                    return False
                if not n:
                    return False
                self.stats.bytes_out += n
                self._log(memoryview(head)[:n])
                self._pending_size -= n
                if n == len(head):
                    self._pending_out.popleft()
                else:
                    self._pending_out[0] = head[n:]
            return not self._pending_out

    @property
    def write_lock(self) -> threading.RLock:
        """Held while frontend output is written; hold it to act between two writes."""
        return self._write_lock

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered while closed, waiting for the backend to open."""
        return self._pending_size

    def _log(self, data: memoryview) -> None:
        if self._logfd >= 0:
            os.write(self._logfd, data)

    def add_watch(self, callback: WatchCallback) -> WriteWatch | None:
        """Call ``callback()`` on the loop when a write may succeed; it returns keep.

        The callback also runs (once) when the backend closes, so a writer
        waiting for room learns that its next write will fail instead of
        waiting forever.  Returns a handle with ``cancel()``, or ``None`` if no
        watch is possible (nothing could block, or nothing is connected).
        """
        watch = WriteWatch(self._write_watches, callback)
        watch.inner = self._add_write_watch(watch.fire)
        if watch.inner is None:
            watch.cancel()
            return None
        return watch

    def _hang_up_write_watches(self) -> None:
        """Fire every pending writable watch once (the connection went away)."""
        for watch in tuple(self._write_watches):
            watch.hang_up()

    # ---- hooks -------------------------------------------------------------

    def _open(self) -> bool:
        return True

    def _close(self) -> None:
        pass

    def _chr_write(self, data: memoryview) -> int | None:
        raise NotImplementedError

    def _add_write_watch(self, callback: WatchCallback) -> Any:
        return None

    def _set_fe_open(self, open: bool) -> None:
        """Hook: the frontend (guest side) opened or closed its end."""

    def _accept_input(self) -> None:
        self._update_read_handler()

    def get_msgfds(self) -> list[int]:
        """Take the fds that came with the latest input (caller owns them)."""
        return []

    def set_msgfds(self, fds: list[int]) -> None:
        """Fds to send with the next write; replaces any pending set."""
        raise ChardevError(f"chardev '{self.id}' cannot pass file descriptors")

    def send_break(self) -> None:
        """Deliver BREAK to the frontend (``chardev-send-break``)."""
        self.be_event(ChardevEvent.BREAK)

    def ioctl(self, command: str, argument: object = None) -> object:
        raise ChardevError(f"chardev '{self.id}' ({self.type_name}) has no '{command}' control")

    def set_echo(self, echo: bool) -> None:
        pass

    def disconnect(self) -> None:
        """Drop the current connection (connection-oriented backends)."""

    @property
    def connected(self) -> bool:
        return self.be_open

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until connected (connection-oriented backends; others return at once)."""

    async def await_connected(self) -> None:
        """Wait on the loop until connected."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
