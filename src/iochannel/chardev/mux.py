"""The ``mux`` chardev: one backend shared by many frontends, with keyboard focus.

Contract:

* **Frontends.** Any number attach (QEMU's limit of 4 does not apply).  Output
  from every frontend goes to the base chardev.
* **Focus.** Input goes to one frontend.  Each registration of handlers (or
  the ``c`` escape) moves the focus: MUX_OUT to the old frontend, then MUX_IN
  to the new one.  Clearing handlers keeps the focus where it is.
* **Input buffering.** Up to :data:`INPUT_BUFFER` bytes are kept per frontend
  while it cannot read; they are delivered first when it reads again.
* **Events.** Events of the base reach every frontend.  Events injected into
  the mux (:meth:`Chardev.be_event`, ``send_break``) reach only the focused
  one, except OPENED/CLOSED, which every frontend must see to stay in step.
  Each frontend sees exactly one OPENED when the base opens, whenever it
  attached: no duplicate banners at startup.
* **Escapes.** The escape character (default ``C-a``, 0x01) followed by
  ``h``/``?`` (help, written to the base), ``x`` (the quit callback; by
  default only logged), ``b`` (BREAK to the focused frontend), ``c`` (focus
  the next frontend), ``t`` (toggle per-line ``[HH:MM:SS.mmm]`` timestamps
  on output) or the escape character again (sent literally).  Other keys are
  dropped.  :class:`MuxKeys` and :class:`LineStamper` are the sans-I/O state
  machines; :class:`MuxChardev` only moves bytes.
* **Ownership.** The base is busy while the mux exists; the mux is busy while
  any frontend is attached; muxes and hubs cannot be stacked; a mux is never
  hot-swapped (registries refuse ``chardev-change`` by its type).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

from ..errors import ConfigurationError
from .chardev import AttachedFrontend, Chardev, ChardevBusyError, ChardevError, WatchCallback
from .events import ChardevEvent
from .frontend import Frontend
from .options import (
    REQUIRED,
    ChardevLookup,
    Field,
    Names,
    Schema,
    chardev_kwargs,
    check_id,
    register_backend,
)
from .timestamps import LineStamper

__all__ = [
    "INPUT_BUFFER",
    "LineStamper",
    "MuxChardev",
    "MuxCommand",
    "MuxKeys",
]

log = logging.getLogger(__name__)

#: Input bytes kept per frontend while it cannot read (QEMU's size: enough for
#: typed keys, small enough that a stalled frontend does not hold up the base).
INPUT_BUFFER = 32

_LIFECYCLE = (ChardevEvent.OPENED, ChardevEvent.CLOSED)


class MuxCommand(enum.Enum):
    """What an escape sequence asks the mux to do."""

    HELP = "help"
    QUIT = "quit"
    BREAK = "break"
    NEXT = "next"
    TIMESTAMPS = "timestamps"


_KEYS = {
    ord("h"): MuxCommand.HELP,
    ord("?"): MuxCommand.HELP,
    ord("x"): MuxCommand.QUIT,
    ord("b"): MuxCommand.BREAK,
    ord("c"): MuxCommand.NEXT,
    ord("t"): MuxCommand.TIMESTAMPS,
}


class MuxKeys:
    """Sans-I/O escape decoder for mux input.

    :meth:`feed` takes input bytes and yields, in order, runs of data for the
    focused frontend (``bytes``) and :class:`MuxCommand` values.  An escape
    split across two feeds is remembered.
    """

    __slots__ = ("_pending", "escape")

    def __init__(self, escape: int = 0x01) -> None:
        if not 0 <= escape <= 0xFF:
            raise ConfigurationError(
                f"escape character must be a byte value, not {escape}", field="escape"
            )
        self.escape = escape
        self._pending = False

    def feed(self, data: bytes) -> Iterator[bytes | MuxCommand]:
        start = 0
        if self._pending and data:
            self._pending = False
            start = 1
            if data[0] == self.escape:
                yield data[:1]
            elif data[0] in _KEYS:
                yield _KEYS[data[0]]
        while start < len(data):
            esc = data.find(self.escape, start)
            if esc < 0:
                yield data[start:]
                return
            if esc > start:
                yield data[start:esc]
            if esc + 1 == len(data):
                self._pending = True
                return
            key = data[esc + 1]
            if key == self.escape:
                yield data[esc : esc + 1]
            elif key in _KEYS:
                yield _KEYS[key]
            start = esc + 2

    def key_name(self) -> str:
        """How the escape character is typed (``C-a`` …), for the help text."""
        if 1 <= self.escape <= 26:
            return "C-" + chr(ord("a") + self.escape - 1)
        return f"0x{self.escape:02x}"


QuitCallback = Callable[["MuxChardev"], None]


def _log_quit(mux: MuxChardev) -> None:
    log.warning("mux '%s': quit requested from the console", mux.id)


def _check(data: dict[str, Any], name: Names) -> None:
    check_id(name("chardev"), data["chardev"])


@register_backend(
    Schema(
        "mux",
        "one backend shared by many frontends (mux=on builds one)",
        {"chardev": "str"},
        {"chardev": Field("str", REQUIRED)},
        check=_check,
    )
)
class MuxChardev(Chardev):
    """One base chardev, any number of frontends; see the module docstring."""

    type_name: ClassVar[str] = "mux"
    max_frontends: ClassVar[int] = 1 << 30
    multiplexer: ClassVar[bool] = True

    def __init__(
        self,
        id: str,
        base: Chardev,
        *,
        escape: int = 0x01,
        on_quit: QuitCallback = _log_quit,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        if base.multiplexer:
            raise ChardevError(
                f"mux: multiplexers and hub devices can't be stacked, check chardev '{base.id}'"
            )
        kwargs.setdefault("closed_writes", base.closed_writes)
        super().__init__(id, **kwargs)
        self.keys = MuxKeys(escape)
        self.stamper = LineStamper(clock)
        self.on_quit = on_quit
        self._base = base
        # The mux is the base's one frontend; taking it is what makes the base busy.
        self._port = Frontend(base)
        base.owner = self
        self._pending_in: dict[AttachedFrontend, bytearray] = {}
        self.filename = f"mux:{base.id}"

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> MuxChardev:
        """Build from QAPI ``ChardevMux`` (``{"chardev": base_id}``)."""
        base_id = data.get("chardev")
        base = registry.get(base_id) if isinstance(base_id, str) else None
        if base is None:
            raise ChardevError(f"mux: base chardev {base_id} not found")
        if base.busy:
            raise ChardevBusyError(f"chardev '{base.id}' is already in use")
        return cls(id, base, **chardev_kwargs(data, registry.loop))

    @property
    def base(self) -> Chardev:
        return self._base

    @property
    def focus(self) -> AttachedFrontend | None:
        return self._focus

    # ---- lifecycle ------------------------------------------------------------

    def _open(self) -> bool:
        # Listening to the base only now keeps startup quiet: frontends attached
        # before open() get one OPENED when the base is (or becomes) open.
        self._port.set_handlers(self._port_can_read, self._port_read, self._base_event)
        self._base.open()
        return False  # be_open follows the base's events

    def _close(self) -> None:
        self._port.deinit()
        self._base.owner = None
        self._pending_in.clear()

    def _base_event(self, event: ChardevEvent) -> None:
        if event in _LIFECYCLE:
            self.be_event(event)
        else:
            self._broadcast(event)

    def _deliver_event(self, event: ChardevEvent) -> None:
        if event in _LIFECYCLE:
            self._broadcast(event)
        elif self._focus is not None:
            self._focus._event(event)

    def _broadcast(self, event: ChardevEvent) -> None:
        for fe in tuple(self._frontends):
            fe._event(event)

    # ---- frontends and focus -----------------------------------------------------

    def _attach(self, fe: AttachedFrontend) -> None:
        focus = self._focus
        super()._attach(fe)
        self._focus = focus  # focus moves only when handlers are registered

    def _detach(self, fe: AttachedFrontend) -> None:
        was = self._focus
        self._pending_in.pop(fe, None)
        super()._detach(fe)
        if self._focus is not None and self._focus is not was:
            self._focus._event(ChardevEvent.MUX_IN)
            self._update_read_handler()

    def _take_focus(self, fe: AttachedFrontend) -> None:
        if self._focus is not None:
            self._focus._event(ChardevEvent.MUX_OUT)
        self._focus = fe
        fe._event(ChardevEvent.MUX_IN)
        self._update_read_handler()

    def focus_next(self) -> None:
        """Move the focus to the next frontend, wrapping around (the ``c`` escape)."""
        if not self._frontends:
            return
        index = self._frontends.index(self._focus) + 1 if self._focus in self._frontends else 0
        self._take_focus(self._frontends[index % len(self._frontends)])

    # ---- input: base → focused frontend ------------------------------------------

    def _port_can_read(self) -> int:
        fe = self._focus
        if fe is None:
            return 0
        pending = self._pending_in.get(fe)
        room = INPUT_BUFFER - len(pending or b"")
        return room if pending else room + fe._can_read()

    def _port_read(self, data: bytes) -> None:
        for item in self.keys.feed(data):
            if isinstance(item, MuxCommand):
                self._command(item)
            else:
                self._input(item)

    def _input(self, data: bytes) -> None:
        fe = self._focus
        if fe is None:
            self.stats.dropped += len(data)
            return
        self.stats.bytes_in += len(data)
        pending = self._pending_in.setdefault(fe, bytearray())
        if not pending:
            n = min(len(data), fe._can_read())
            if n > 0:
                fe._deliver(data[:n])
                data = data[n:]
        if data:
            room = INPUT_BUFFER - len(pending)
            pending += data[:room]
            self.stats.dropped += max(0, len(data) - room)

    def _update_read_handler(self) -> None:
        """Hand buffered input to the focused frontend, then let the base read again."""
        fe = self._focus
        pending = self._pending_in.get(fe) if fe is not None else None
        if fe is not None and pending:
            n = min(len(pending), fe._can_read())
            if n > 0:
                chunk = bytes(pending[:n])
                del pending[:n]
                fe._deliver(chunk)
        if self._port.chardev is not None:
            self._port.accept_input()

    def _command(self, command: MuxCommand) -> None:
        if command is MuxCommand.HELP:
            self._port.write(self.help_text())
        elif command is MuxCommand.QUIT:
            self.on_quit(self)
        elif command is MuxCommand.BREAK:
            if self._focus is not None:
                self._focus._event(ChardevEvent.BREAK)
        elif command is MuxCommand.NEXT:
            self.focus_next()
        else:
            self.stamper.toggle()

    def help_text(self) -> bytes:
        key = self.keys.key_name()
        lines = [
            f"{key} h    print this help",
            f"{key} x    quit",
            f"{key} t    toggle console timestamps",
            f"{key} b    send break",
            f"{key} c    switch to the next frontend",
            f"{key} {key}  send {key}",
        ]
        return ("\r\n" + "\r\n".join(lines) + "\r\n").encode()

    # ---- output: any frontend → base --------------------------------------------

    def _chr_write(self, data: memoryview) -> int | None:
        return self.stamper.write(data, self._port.write)

    def _add_write_watch(self, callback: WatchCallback) -> Any:
        return self._port.add_watch(callback)
