"""Frontend: the device side of a chardev (what QEMU's guest devices hold)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, final

from .._core.channel import Buffer
from ..errors import ChannelTimeoutError
from .chardev import Chardev, ChardevError
from .events import ChardevEvent, LifecycleView, changed

__all__ = ["Frontend"]

CanRead = Callable[[], int]
Read = Callable[[bytes], None]
Event = Callable[[ChardevEvent], None]
BeChange = Callable[[], bool]


@final
class Frontend:
    """The device side of a chardev (what QEMU's guest devices hold).

    A frontend attaches to one chardev (``Frontend(chardev)``; a chardev already in
    use raises :class:`ChardevBusyError`) and registers handlers:

    * ``can_read() -> int`` — how many bytes it accepts now; input never exceeds
      it, 0 pauses input until :meth:`accept_input`;
    * ``read(data)`` — input;
    * ``event(ChardevEvent)`` — OPENED/CLOSED strictly alternating per
      registration (see ``iochannel.chardev.events``), plus BREAK and mux focus;
    * ``be_change() -> bool`` — after a hot-swap; ``False`` rolls the swap back
      (no callback: the frontend refuses hot-swap).

    The frontend's *own* open state (the guest opened its port, seed of QEMU's
    ``fe_open``) is :meth:`set_open`/:attr:`frontend_open`; backends get a hook.
    Restoring a saved state — handlers registered with ``restore_open=`` and a
    :meth:`set_open` to the saved value — produces only the transitions that
    reach it.

    Writes: :meth:`write` is non-blocking (count, or ``None`` → :meth:`add_watch`),
    :meth:`write_all` blocks, :meth:`awrite_all` awaits.  All callbacks run on the
    chardev's loop.
    """

    def __init__(self, chardev: Chardev | None = None) -> None:
        self.chardev: Chardev | None = None
        self._can_read_cb: CanRead | None = None
        self._read_cb: Read | None = None
        self._event_cb: Event | None = None
        self._be_change: BeChange | None = None
        self._view: LifecycleView | None = None
        self._fe_open = False
        if chardev is not None:
            chardev._attach(self)
            self.chardev = chardev

    # ---- handlers -------------------------------------------------------

    def set_handlers(
        self,
        can_read: CanRead | None = None,
        read: Read | None = None,
        event: Event | None = None,
        be_change: BeChange | None = None,
        *,
        set_open: bool = True,
        restore_open: bool | None = None,
    ) -> None:
        """Register handlers (all ``None`` unregisters); starts a new registration.

        The new registration's view starts closed (or *restore_open*, for a
        frontend that already knew the state) and is brought in line with the
        backend: attaching to an open backend delivers exactly one OPENED.
        """
        self._can_read_cb = can_read
        self._read_cb = read
        self._event_cb = event
        self._be_change = be_change
        active = any(cb is not None for cb in (can_read, read, event))
        label = self.chardev.id if self.chardev is not None else "(none)"
        self._view = LifecycleView(label) if active else None
        if self._view is not None and restore_open:
            self._view.open = True
        chr = self.chardev
        if chr is None:
            return
        chr._handlers_changed(self)
        if set_open:
            self.set_open(active)
        if active:
            chr._take_focus(self)
            self._sync()

    def _sync(self) -> None:
        """Deliver what the registration's view is missing about the backend."""
        chr, view = self.chardev, self._view
        if chr is None or view is None:
            return
        if chr.be_open and not view.open:
            self._event(ChardevEvent.OPENED, synthetic=True)
        elif view.open and not chr.be_open:
            self._event(ChardevEvent.CLOSED, synthetic=True)

    def _can_read(self) -> int:
        cb = self._can_read_cb
        return cb() if cb is not None else 0

    def _deliver(self, data: Buffer) -> None:
        cb = self._read_cb
        if cb is not None:
            cb(bytes(data))

    def _event(self, event: ChardevEvent, *, synthetic: bool = False) -> None:
        view = self._view
        if view is None or not view.filter(event, duplicate_ok=synthetic):
            return
        cb = self._event_cb
        if cb is not None:
            cb(event)

    @property
    def is_open(self) -> bool:
        """What this registration has been told: OPENED without a CLOSED since."""
        return self._view is not None and self._view.open

    # ---- state ----------------------------------------------------------

    @property
    def frontend_open(self) -> bool:
        """The frontend's own (guest-side) open state."""
        return self._fe_open

    def set_open(self, open: bool) -> None:
        """Set the frontend's open state; repeating the current value does nothing."""
        if open == self._fe_open:
            return
        self._fe_open = open
        if self.chardev is not None:
            self.chardev._set_fe_open(open)
            changed()  # frontend-open is state that management shows

    @property
    def backend_connected(self) -> bool:
        """A chardev is attached."""
        return self.chardev is not None

    @property
    def backend_open(self) -> bool:
        return self.chardev is not None and self.chardev.be_open

    @property
    def connected(self) -> bool:
        return self.chardev is not None and self.chardev.connected

    # ---- output -----------------------------------------------------------

    def write(self, data: Buffer) -> int | None:
        """Write what fits now: a count, or ``None`` (use :meth:`add_watch`); 0 unattached."""
        if self.chardev is None:
            return 0
        return self.chardev.write(data)

    def write_all(self, data: Buffer, timeout: float | None = None) -> int:
        """Write everything, waiting (off the loop thread) while the backend is full.

        Returns the byte count; raises :class:`~iochannel.errors.ChannelTimeoutError`
        (a :class:`TimeoutError`) after *timeout*.
        """
        view = memoryview(data).cast("B")
        done = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while done < len(view):
            n = self.write(view[done:])
            if n is None:
                if deadline is not None and time.monotonic() > deadline:
                    raise ChannelTimeoutError(f"write to chardev timed out after {done} bytes")
                time.sleep(0.0001)  # QEMU's 100 µs pacing; async callers use awrite_all
                continue
            if n == 0 and self.chardev is None:
                break
            done += n
        return done

    async def awrite_all(self, data: Buffer) -> int:
        """Write everything, awaiting a writable watch while the backend is full."""
        view = memoryview(data).cast("B")
        done = 0
        loop = asyncio.get_running_loop()
        while done < len(view):
            n = self.write(view[done:])
            if n is None:
                ready: asyncio.Future[None] = loop.create_future()

                def wake(fut: asyncio.Future[None] = ready) -> bool:
                    if not fut.done():
                        fut.set_result(None)
                    return False

                handle = self.add_watch(wake)
                if handle is None:
                    await asyncio.sleep(0.001)
                else:
                    try:
                        await ready
                    finally:
                        handle.cancel()
                continue
            if n == 0 and self.chardev is None:
                break
            done += n
        return done

    def add_watch(self, callback: Callable[[], bool]) -> Any:
        """Call ``callback()`` when writing may succeed again (returns keep); or ``None``."""
        return self.chardev.add_watch(callback) if self.chardev is not None else None

    def accept_input(self) -> None:
        """The frontend can take more input: resume delivery."""
        if self.chardev is not None:
            self.chardev._accept_input()

    # ---- control --------------------------------------------------------

    def get_msgfds(self) -> list[int]:
        return self.chardev.get_msgfds() if self.chardev is not None else []

    def set_msgfds(self, fds: list[int]) -> None:
        if self.chardev is None:
            raise ChardevError("no chardev attached")
        self.chardev.set_msgfds(fds)

    def ioctl(self, command: str, argument: object = None) -> object:
        if self.chardev is None:
            raise ChardevError("no chardev attached")
        return self.chardev.ioctl(command, argument)

    def set_echo(self, echo: bool) -> None:
        if self.chardev is not None:
            self.chardev.set_echo(echo)

    def disconnect(self) -> None:
        if self.chardev is not None:
            self.chardev.disconnect()

    def wait_connected(self, timeout: float | None = None) -> None:
        if self.chardev is not None:
            self.chardev.wait_connected(timeout)

    async def await_connected(self) -> None:
        if self.chardev is not None:
            await self.chardev.await_connected()

    # ---- detaching and swapping -----------------------------------------------

    def deinit(self, delete: bool = False) -> None:
        """Unregister handlers and detach; *delete* also closes the chardev."""
        chr = self.chardev
        self.set_handlers(None, None, None, None, set_open=True)
        if chr is None:
            return
        chr._detach(self)
        self.chardev = None
        if delete:
            chr.close()

    def _swap(self, new: Chardev) -> bool:
        """Hot-swap to *new* (used by the registry); ``False`` if rolled back."""
        if self._be_change is None:
            raise ChardevError("Chardev user does not support chardev hotswap")
        old = self.chardev
        assert old is not None
        closed_for_swap = False
        if self._view is not None and self._view.open and not new.be_open:
            self._event(ChardevEvent.CLOSED)
            closed_for_swap = True
        old._detach(self)
        new._attach(self)
        self.chardev = new
        new._handlers_changed(self)
        if self._be_change():
            self._sync()
            if self._fe_open:
                new._set_fe_open(True)
            return True
        # Roll back: the frontend keeps the old chardev and its view of it.
        new._detach(self)
        old._attach(self)
        self.chardev = old
        old._handlers_changed(self)
        if closed_for_swap:
            self._event(ChardevEvent.OPENED)
        return False
