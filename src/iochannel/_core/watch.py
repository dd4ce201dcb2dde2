"""Waiting for channel readiness: blocking waits, asyncio waits and watches.

A channel describes its readiness with two hooks (see :class:`~iochannel.Channel`):
``_pending(cond)`` — conditions already satisfied without waiting (decrypted
bytes inside a TLS layer, an in-memory buffer) — and ``_wait_fds(cond)`` — the
``(fd, events)`` pairs to wait on otherwise.  Everything here is built on those
two hooks, so layers compose by delegating them to the channel beneath.

Theory of operation
-------------------
A wait only reports readiness; it never moves bytes.  The channel's
operations (``Channel._run`` and ``Channel._arun``) make their I/O call
themselves, wait while it would block, and call again.  So an asyncio task can
only be cancelled at its ``await``, where no I/O is in flight: a cancelled read
or write has moved exactly the bytes it moved before it waited, and moves no
more.

*Blocking waits* poll the channel's fds together with a per-direction eventfd
that :meth:`Channel.wake_read` and :meth:`Channel.close` write to, so another
thread can end the wait.  The eventfds are created on first use and closed
with the channel.

*Async waits* (:meth:`Waits.wait_async`) use the loop that runs the awaiting
coroutine, looked up at each wait with :func:`asyncio.get_running_loop`:
nothing is attached to a channel, so one coroutine can read on loop A in one
thread while another writes on loop B in another thread.  A wait goes through
these states::

    wait_async(cond)
      |-- channel closed ---------------------------> raise ChannelClosedError
      |-- a wake_read() was kept for this direction -> return 0 (NONE)
      |-- channel._pending(cond) holds -------------> return it
      v
    WAITING: a future from loop.create_future(), listed in the futures of the
             channel's _Waiter for this direction and loop, which listens to
             channel._wait_fds(cond) through the loop's _LoopHub
      |-- fd ready ------------------> future.set_result(revents)   all three on
      |-- wake_read() (any thread) --> future.set_result(0)         the loop's
      |-- close() (any thread) ------> future.set_result(0)         thread
      |-- the task is cancelled -----> the task cancels the future; the wait
      |                                unlists it and re-raises
      v
    DONE: the task resumes the way asyncio resumes any task awaiting a future,
          through the loop's scheduling (on the next loop iteration); the wait
          raises ChannelClosedError if the channel closed or its fd went away,
          else returns the events of *cond* (and ERR, HUP) that were reported

An exact read (``areadv_all`` and kin) whose previous one found nothing at its
first call waits *before* its first call, so a request/response reader does not
make a call that is bound to fail.  The hint (``Waits.would_block``) is set by
such a read and cleared by the waiter when its fd is reported ready twice in a
row, i.e. the readiness outlasted the tasks the first report woke: the bytes
keep coming, and calling first pays off again.  (A loop that runs woken tasks
before it polls again, as uvloop does, reports no stale readiness, so there
every second report counts as "keep coming" and the hint saves nothing.)
Other operations always call first: a stream read or a write that waited first
would put a bulk writer and reader in lockstep, one buffer per loop round.

A :class:`_Waiter` stays subscribed after its waits end, so the next wait in a
request/response loop subscribes nothing; readiness reported with no wait
listed unsubscribes it.  asyncio allows one reader and one writer callback per
fd and loop, so fds are registered through a per-loop :class:`_LoopHub` that
fans readiness out to any number of subscribers (a TLS channel and the socket
beneath it, a watch and a wait); an fd is registered with the loop while it
has subscribers.

*Watches* are persistent callbacks on a loop, fired while the condition holds
(level-triggered, like GLib sources) until the callback returns ``False`` or
the watch is cancelled.  Closing a channel cancels every watch and ends every
wait with :class:`~iochannel.ChannelClosedError`.

Threads: :class:`Waits` keeps its state under its lock, except the
``would_block`` hint (items written whole, and a stale hint only costs a call
or a wait).  A future, a
:class:`_Waiter`'s list of futures and a hub are only changed on their loop's
thread; other threads reach them through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol, final

from ..errors import ChannelClosedError
from .flags import Condition

__all__ = [
    "Continuation",
    "Waitable",
    "Waits",
    "Watch",
    "add_watch",
    "forget_fd",
    "in_loop_thread",
]

_IN = int(Condition.IN)
_OUT = int(Condition.OUT)
# poll(2) reports these whatever was asked for; a waiter always wants to know.
_ERR_HUP = int(Condition.ERR | Condition.HUP)
_NVAL = select.POLLNVAL
_ALWAYS = _ERR_HUP | _NVAL

FdSpec = tuple[tuple[int, int], ...]


class Waitable(Protocol):
    """What waits and watches use of a channel: its name, state and readiness hooks.

    :class:`~iochannel.Channel` implements it; naming it here keeps this
    module free of the channel class that builds on it.
    """

    @property
    def name(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def _pending(self, cond: Condition) -> Condition: ...

    def _wait_fds(self, cond: Condition) -> FdSpec: ...

    def _io_owner(self) -> object: ...

    def _waits_remove_watch(self, watch: Watch) -> None: ...


#: A watch's ``callback(channel, condition) -> keep``; :data:`iochannel.Channel.add_watch`
#: types the channel argument exactly.
_Callback = Callable[[Any, Condition], bool]

#: A hub subscriber: called on the loop's thread with the poll(2) events seen, and
#: whether they outlasted the run of the tasks the previous report woke (see _Entry.fire).
_Subscriber = Callable[[int, bool], None]


class Continuation:
    """A stateful operation: what a call returns when it moved some bytes but would now block.

    The operation goes on calling the continuation instead (``None`` while it
    would block, then the result); :meth:`close` releases what it holds if
    the operation is given up (cancelled, or the channel closed).
    """

    __slots__ = ()

    def __call__(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def first(self) -> Any:
        """Make the first call: its result, or this continuation if it would block."""
        result = self()
        return self if result is None else result


class _Entry:
    """One fd and direction registered with the loop, and its subscribers."""

    __slots__ = ("hub", "key", "owner", "poller", "reported", "subs")

    def __init__(self, hub: _LoopHub, key: tuple[int, int], owner: object) -> None:
        self.hub = hub
        self.key = key
        # Weak: a _Waiter stays subscribed between waits, and that must not keep
        # an unclosed channel from being collected.
        self.owner = weakref.ref(owner)
        self.subs: list[_Subscriber] = []
        self.poller = select.poll()
        self.poller.register(*key)
        # Whether the last report was passed on (and no stale one came since).
        self.reported = False

    def fire(self) -> None:
        """The loop's readiness callback."""
        subs = self.subs
        # asyncio's selector loop collects readiness before it runs the tasks
        # woken in its previous round, so a report may describe bytes such a
        # task has consumed since.  A zero-timeout poll confirms it: waking the
        # task for nothing costs a 64-byte asyncio ping-pong over a third more
        # instructions.
        ready = self.poller.poll(0)
        if not ready:
            self.reported = False
            return
        # Reported twice in a row: the readiness outlasted the tasks the first
        # report woke, so the bytes keep coming (see Channel._arun).
        flowing = self.reported
        self.reported = True
        revents = ready[0][1]
        for sub in tuple(subs):
            sub(revents, flowing)


class _LoopHub:
    """Fans fd readiness on one loop out to many subscribers (see module doc)."""

    __slots__ = ("__weakref__", "entries", "loop_ref")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak, so that a finished loop (and its fds) is freed with its hub.
        self.loop_ref = weakref.ref(loop)
        self.entries: dict[tuple[int, int], _Entry] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self.loop_ref()
        assert loop is not None, "hub outlived its loop"
        return loop

    def subscribe(self, fd: int, event: int, owner: object, sub: _Subscriber) -> None:
        key = (fd, event)
        entry = self.entries.get(key)
        if entry is not None and entry.owner() is not owner:
            # The fd number was closed and reused by another channel.
            self.remove(key)
            entry = None
        if entry is None:
            entry = self.entries[key] = _Entry(self, key, owner)
            if event == _IN:
                self.loop.add_reader(fd, entry.fire)
            else:
                self.loop.add_writer(fd, entry.fire)
        entry.subs.append(sub)

    def unsubscribe(self, fd: int, event: int, sub: _Subscriber) -> None:
        entry = self.entries.get((fd, event))
        if entry is not None and sub in entry.subs:
            entry.subs.remove(sub)
            if not entry.subs:
                self.remove(entry.key)

    def remove(self, key: tuple[int, int]) -> None:
        if self.entries.pop(key, None) is None or self.loop.is_closed():
            return
        if key[1] == _IN:
            self.loop.remove_reader(key[0])
        else:
            self.loop.remove_writer(key[0])

    def forget_fd(self, fd: int) -> None:
        """Drop every registration of *fd*, telling its subscribers it is gone."""
        for event in (_IN, _OUT):
            entry = self.entries.get((fd, event))
            if entry is not None:
                self.remove(entry.key)
                for sub in entry.subs:
                    sub(_ALWAYS, False)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopHub] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def _hub(loop: asyncio.AbstractEventLoop) -> _LoopHub:
    with _hubs_lock:
        hub = _hubs.get(loop)
        if hub is None:
            hub = _hubs[loop] = _LoopHub(loop)
        return hub


def in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the calling thread is running *loop* now."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _call_on_loop(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any
) -> None:
    """Call *callback* now if this thread runs *loop*, else soon on the loop's thread."""
    if in_loop_thread(loop):
        callback(*args)
    elif not loop.is_closed():
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # closed meanwhile: nothing waits there any more
            pass


def forget_fd(fd: int) -> None:
    """Remove *fd* from every loop before it is closed (fd numbers get reused)."""
    with _hubs_lock:
        hubs = list(_hubs.items())
    for loop, hub in hubs:
        _call_on_loop(loop, hub.forget_fd, fd)


def _poll_events(fds: FdSpec) -> int:
    """Current readiness of *fds* as Condition bits, without blocking."""
    poller = select.poll()
    for fd, events in fds:
        poller.register(fd, events)
    ready = 0
    for _fd, revents in poller.poll(0):
        ready |= revents
    return ready


def _move(hub: _LoopHub, old: FdSpec, new: FdSpec, owner: object, sub: _Subscriber) -> None:
    """Move *sub*'s subscriptions on *hub* from the fds of *old* to those of *new*."""
    for fd, events in old:
        for ev in (_IN, _OUT):
            if events & ev:
                hub.unsubscribe(fd, ev, sub)
    for fd, events in new:
        for ev in (_IN, _OUT):
            if events & ev:
                hub.subscribe(fd, ev, owner, sub)


class _Waiter:
    """The async waits of one channel in one direction on one loop.

    A hub subscriber that ends every wait listed in :attr:`futures` when its
    fds report readiness.  It stays subscribed between waits, so the next wait
    in a request/response loop subscribes nothing (subscribing for each wait
    costs a 64-byte asyncio ping-pong 60% more instructions); readiness
    reported with no wait listed unsubscribes it.  It holds no reference to
    its channel (the hub holds it while it is subscribed), so an unclosed
    channel can still be collected.
    """

    __slots__ = ("direction", "futures", "hub", "loop", "subscribed", "would_block")

    def __init__(self, hub: _LoopHub, direction: int, would_block: dict[int, bool]) -> None:
        self.hub = hub
        self.loop = hub.loop
        self.direction = direction
        # Changed on the loop's thread only; other threads just test it for emptiness.
        self.futures: list[asyncio.Future[int]] = []
        self.subscribed: FdSpec = ()
        # The channel's Waits.would_block: cleared here when the bytes keep coming.
        self.would_block = would_block

    def subscribe(self, fds: FdSpec, owner: object) -> None:
        """Listen to *fds* instead of those it listens to now (on the loop's thread)."""
        _move(self.hub, self.subscribed, fds, owner, self)
        self.subscribed = fds

    def __call__(self, revents: int, flowing: bool = False) -> None:
        """Readiness from the hub: end every listed wait with *revents*."""
        if flowing:
            self.would_block[self.direction] = False
        futures, self.futures = self.futures, []
        if self.subscribed and (not futures or revents & _NVAL):
            # Nobody waits, or an fd went away: listen to nothing until the next wait.
            self.subscribe((), None)
        for future in futures:
            if not future.done():  # cancelled ones are done
                future.set_result(revents)

    def end_all(self, revents: int) -> None:
        """Thread-safe: end every listed wait with *revents* (``0`` for a wake)."""
        _call_on_loop(self.loop, self, revents)


@final
class Watch:
    """A persistent readiness callback on an asyncio loop.

    Created by :meth:`Channel.add_watch`.  The callback runs on the loop's
    thread with the subset of the watched condition that holds; it keeps
    running while the condition holds until it returns ``False`` or
    :meth:`cancel` is called.  Closing the channel cancels the watch.
    """

    __slots__ = (
        "_callback",
        "_channel",
        "_cond",
        "_handle",
        "_loop",
        "_subscribed",
        "active",
    )

    def __init__(
        self,
        channel: Waitable,
        cond: Condition,
        callback: _Callback,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._channel = channel
        self._cond = int(cond)
        self._callback = callback
        self._loop = loop
        self._subscribed: FdSpec = ()
        self._handle: asyncio.Handle | None = None
        #: False once cancelled or removed by its callback.
        self.active = True

    @property
    def condition(self) -> Condition:
        return Condition(self._cond)

    def cancel(self) -> None:
        """Stop the watch; thread-safe and idempotent."""
        if not self.active:
            return
        self.active = False
        _call_on_loop(self._loop, self._teardown)

    def _teardown(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._resubscribe(())
        self._channel._waits_remove_watch(self)

    def _start(self) -> None:
        if self.active:
            self._arm()

    def _arm(self) -> None:
        ch = self._channel
        if ch.closed:
            self.active = False
            self._resubscribe(())
            return
        if ch._pending(Condition(self._cond)):
            self._resubscribe(())
            if self._handle is None:
                self._handle = self._loop.call_soon(self._dispatch)
        else:
            self._resubscribe(ch._wait_fds(Condition(self._cond)))

    def _resubscribe(self, fds: FdSpec) -> None:
        if fds == self._subscribed:
            return
        _move(_hub(self._loop), self._subscribed, fds, self._channel._io_owner(), self._on_fd)
        self._subscribed = fds

    def _on_fd(self, revents: int, flowing: bool) -> None:
        if self._handle is None and self.active:
            self._handle = self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._handle = None
        if not self.active:
            return
        ch = self._channel
        cond = Condition(self._cond)
        ready = int(ch._pending(cond))
        if self._subscribed:
            ready |= _poll_events(self._subscribed)
        # HUP and ERR are reported whatever was asked, as poll(2) does.
        ready &= self._cond | (_ALWAYS & ~_NVAL)
        if not ready:
            self._arm()
            return
        keep = self._callback(ch, Condition(ready))
        if not keep:
            self.active = False
            self._teardown()
        else:
            self._arm()


class Waits:
    """Per-channel registry of pending waits and watches (created on first use)."""

    __slots__ = (
        "blocking",
        "closed",
        "lock",
        "pending_wakes",
        "waiters",
        "wake_fds",
        "watches",
        "would_block",
    )

    def __init__(self) -> None:
        # Guards every attribute here: waits start, end and are woken from any thread.
        self.lock = threading.Lock()
        self.waiters: list[_Waiter] = []
        self.watches: list[Watch] = []
        # direction (IN or OUT) -> [eventfd, number of blocking waiters]
        self.wake_fds: dict[int, list[int]] = {}
        self.blocking = 0
        self.closed = False
        #: Directions woken while nothing waited (see :meth:`wake`).
        self.pending_wakes = 0
        #: Per direction: whether its calls are expected to block, so that an
        #: operation waits before its first call (see ``Channel._arun``).  A hint,
        #: each item written whole: it needs no lock.
        self.would_block = {_IN: False, _OUT: False}

    # ---- blocking -------------------------------------------------------

    def wait_blocking(self, channel: Waitable, cond: Condition, timeout: float | None) -> Condition:
        direction = _IN if cond & Condition.IN else _OUT
        with self.lock:
            if self.closed:
                raise ChannelClosedError(f"{channel.name}: channel is closed")
            if self._take_wake(direction):
                return Condition.NONE
            slot = self.wake_fds.get(direction)
            if slot is None:
                slot = [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK), 0]
                self.wake_fds[direction] = slot
            slot[1] += 1
            self.blocking += 1
            wake_fd = slot[0]
        try:
            poller = select.poll()
            for fd, events in channel._wait_fds(cond):
                poller.register(fd, events)
            poller.register(wake_fd, select.POLLIN)
            ms = None if timeout is None else max(0, int(timeout * 1000))
            ready = 0
            woken = False
            for fd, revents in poller.poll(ms):
                if fd == wake_fd:
                    woken = True
                else:
                    ready |= revents
            if woken:
                try:
                    os.eventfd_read(wake_fd)
                except BlockingIOError:
                    pass
            if self.closed:
                raise ChannelClosedError(f"{channel.name}: channel closed while waiting")
            # Channels whose fds only wake waiters report their state through _pending.
            ready = ready & (int(cond) | _ERR_HUP) | int(channel._pending(cond))
            return Condition(ready)
        finally:
            with self.lock:
                slot[1] -= 1
                self.blocking -= 1
                if self.closed and self.blocking == 0:
                    self._close_wake_fds()

    def _close_wake_fds(self) -> None:
        for fd, _count in self.wake_fds.values():
            os.close(fd)
        self.wake_fds.clear()

    # ---- asyncio --------------------------------------------------------

    async def wait_async(self, channel: Waitable, cond: Condition) -> int:
        """Wait on the running loop until *cond* holds (see module doc).

        Returns the part of *cond* (plus ERR and HUP) that holds, or ``0`` if woken.
        """
        loop = asyncio.get_running_loop()
        bits = int(cond)
        direction = _IN if bits & _IN else _OUT
        with self.lock:
            if self.closed:
                raise ChannelClosedError(f"{channel.name}: channel is closed")
            if self._take_wake(direction):
                return 0
            waiter = self._waiter(loop, direction)
            future: asyncio.Future[int] = loop.create_future()
            # Listed under the lock, so that close() and wake() see every wait.
            waiter.futures.append(future)
        try:
            ready = int(channel._pending(cond))
            if ready:
                return ready
            fds = channel._wait_fds(cond)
            if fds != waiter.subscribed:
                waiter.subscribe(fds, channel._io_owner())
            revents = await future
        finally:
            # Still listed if it ended early or was cancelled (the waiter
            # unlists the waits it ends).
            if future in waiter.futures:
                waiter.futures.remove(future)
        if revents & _NVAL or self.closed:
            raise ChannelClosedError(f"{channel.name}: channel closed while waiting")
        return revents & (bits | _ERR_HUP)

    def _waiter(self, loop: asyncio.AbstractEventLoop, direction: int) -> _Waiter:
        """The waiter for *direction* on *loop*, made on first use (call with the lock held)."""
        for waiter in self.waiters:
            if waiter.direction == direction and waiter.loop is loop:
                return waiter
        # A waiter of another loop with nothing listed is dropped from this list
        # (it unsubscribes itself when its fd next fires).
        self.waiters = [w for w in self.waiters if w.futures or w.loop is loop]
        waiter = _Waiter(_hub(loop), direction, self.would_block)
        self.waiters.append(waiter)
        return waiter

    # ---- waking ---------------------------------------------------------

    def wake(self, direction: int) -> None:
        """End pending waits in *direction* early (thread-safe).

        With no wait pending, the wake is kept for the next wait in that
        direction, so a wake that races with the start of a wait is not lost.
        """
        with self.lock:
            slot = self.wake_fds.get(direction)
            blocked = slot is not None and slot[1] > 0
            if blocked:
                assert slot is not None
                os.eventfd_write(slot[0], 1)
            waiters = [w for w in self.waiters if w.direction == direction and w.futures]
            if not blocked and not waiters:
                self.pending_wakes |= direction
        for waiter in waiters:
            waiter.end_all(0)

    def _take_wake(self, direction: int) -> bool:
        """Consume a wake kept for *direction* (call with the lock held)."""
        if self.pending_wakes & direction:
            self.pending_wakes &= ~direction
            return True
        return False

    def close(self, name: str) -> list[Watch]:
        """Fail every pending wait; return the watches to cancel."""
        with self.lock:
            self.closed = True
            for fd, count in self.wake_fds.values():
                if count:
                    os.eventfd_write(fd, 1)
            if self.blocking == 0:
                self._close_wake_fds()
            waiters = [w for w in self.waiters if w.futures]
            watches = list(self.watches)
            self.watches.clear()
        # ``closed`` is set: each wait, once resumed, raises ChannelClosedError.
        for waiter in waiters:
            waiter.end_all(0)
        return watches


def add_watch(
    channel: Waitable,
    waits: Waits,
    cond: Condition,
    callback: _Callback,
    loop: asyncio.AbstractEventLoop | None,
) -> Watch:
    if loop is None:
        loop = asyncio.get_running_loop()
    watch = Watch(channel, cond, callback, loop)
    with waits.lock:
        if waits.closed:
            raise ChannelClosedError(f"{channel.name}: channel is closed")
        waits.watches.append(watch)
    _call_on_loop(loop, watch._start)
    return watch
