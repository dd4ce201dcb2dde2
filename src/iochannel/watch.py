"""Waiting for channel readiness: blocking waits, asyncio waits and watches.

A channel describes its readiness with two hooks (see :class:`~iochannel.Channel`):
``_pending(cond)`` — conditions already satisfied without waiting (decrypted
bytes inside a TLS layer, an in-memory buffer) — and ``_wait_fds(cond)`` — the
``(fd, events)`` pairs to wait on otherwise.  Everything here is built on those
two hooks, so layers compose by delegating them to the channel beneath.

Theory of operation
-------------------
*Blocking waits* poll the channel's fds together with a per-direction eventfd
that :meth:`Channel.wake_read` and :meth:`Channel.close` write to, so another
thread can end the wait.  The eventfds are created on first use and closed
with the channel.

*Async waits* use the loop that is running the awaiting coroutine, looked up
at each wait: nothing is attached to a channel, so one coroutine can read on
loop A in one thread while another writes on loop B in another thread. asyncio
allows one reader and one writer callback per fd and loop, so fds are
registered through a per-loop :class:`_LoopHub` that fans readiness out to any
number of subscribers (a TLS channel and the socket beneath it, a watch and a
wait); while an fd has one subscriber, the loop calls it directly. A hub entry
stays registered after its last subscriber leaves and is dropped the next time
it fires with nobody listening; a request/response pattern that waits again
right after each read therefore makes no epoll_ctl calls at all. The awaiting
task waits on the operation itself, a minimal future that resumes it from the
fd callback: one loop iteration per message.

An *operation* is a plain call that returns ``None`` while the channel would
block and its result once done; one that made progress and must keep state
until it can go on returns a :class:`Continuation` instead (see
:class:`AsyncOp`).

*Watches* are persistent callbacks on a loop, fired while the condition holds
(level-triggered, like GLib sources) until the callback returns ``False`` or
the watch is cancelled.  Closing a channel cancels every watch and ends every
wait with :class:`~iochannel.ChannelClosedError`.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import select
import threading
import weakref
from collections.abc import Awaitable, Callable, Generator
from threading import get_ident
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ChannelClosedError
from .flags import Condition

if TYPE_CHECKING:
    from .channel import Channel

__all__ = ["Continuation", "Waits", "Watch", "WatchCallback", "add_watch", "forget_fd"]

#: ``callback(channel, condition) -> keep`` — return ``False`` to remove the watch.
WatchCallback = Callable[["Channel", Condition], bool]

_IN = int(Condition.IN)
_OUT = int(Condition.OUT)
# poll(2) reports these whatever was asked for; a waiter always wants to know.
_ERR_HUP = int(Condition.ERR | Condition.HUP)
_NVAL = select.POLLNVAL
_ALWAYS = _ERR_HUP | _NVAL

FdSpec = tuple[tuple[int, int], ...]

# AsyncOp states: not in use (or parked), awaited, finished with its result not yet taken.
_IDLE, _PENDING, _DONE = 0, 1, 2
# AsyncOp.result for asyncio.Task's wake-up, which calls it only to see if it
# raises: a builtin that returns None runs without a Python frame, and
# ``__await__`` raises the op's error itself once resumed.
_no_result = type(None)
_Subscriber = Callable[[int], None]
T = TypeVar("T")


class Continuation:
    """A stateful operation: what a call returns when it moved some bytes but would now block.

    The wait goes on calling the continuation instead (``None`` while it
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

    __slots__ = ("direct", "event", "hub", "key", "owner", "subs")

    def __init__(self, hub: _LoopHub, key: tuple[int, int], owner: object) -> None:
        self.hub = hub
        self.key = key
        self.event = key[1]
        # Weak: an entry outlives its subscribers until the fd fires again, and
        # must not keep an unclosed channel from being collected meanwhile.
        self.owner = weakref.ref(owner)
        self.subs: list[_Subscriber] = []
        # Whether the loop calls the lone first subscriber itself rather than
        # fire(): one frame less per event, which a request/response loop shows.
        self.direct = False

    def fire(self) -> None:
        """The loop's readiness callback (removing the entry cancels it)."""
        subs = self.subs
        if len(subs) == 1:
            subs[0](self.event)
        elif not subs:
            self.hub._remove(self.key)
        else:
            for sub in tuple(subs):
                sub(self.event)


class _LoopHub:
    """Fans fd readiness on one loop out to many subscribers (see module doc)."""

    __slots__ = ("__weakref__", "_loop", "entries")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak, so that a finished loop (and its fds) is freed with its hub.
        self._loop = weakref.ref(loop)
        self.entries: dict[tuple[int, int], _Entry] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        assert loop is not None, "hub outlived its loop"
        return loop

    def subscribe(self, fd: int, event: int, owner: object, sub: _Subscriber) -> None:
        key = (fd, event)
        entry = self.entries.get(key)
        if entry is not None and entry.owner() is not owner:
            # The fd number was closed and reused by another channel.
            self._remove(key)
            entry = None
        if entry is None:
            entry = self.entries[key] = _Entry(self, key, owner)
            entry.direct = True
            self._register(key, sub, event)
        elif entry.direct:
            self._fan_out(entry)
        entry.subs.append(sub)

    def unsubscribe(self, fd: int, event: int, sub: _Subscriber) -> None:
        entry = self.entries.get((fd, event))
        if entry is not None:
            try:
                entry.subs.remove(sub)
            except ValueError:
                pass
            if entry.direct:
                self._fan_out(entry)  # fire() drops the registration when it next runs

    def _register(self, key: tuple[int, int], callback: Callable[..., None], *args: int) -> None:
        if key[1] == _IN:
            self.loop.add_reader(key[0], callback, *args)
        else:
            self.loop.add_writer(key[0], callback, *args)

    def _fan_out(self, entry: _Entry) -> None:
        entry.direct = False
        self._register(entry.key, entry.fire)

    def _remove(self, key: tuple[int, int]) -> None:
        if self.entries.pop(key, None) is None:
            return
        if self.loop.is_closed():
            return
        if key[1] == _IN:
            self.loop.remove_reader(key[0])
        else:
            self.loop.remove_writer(key[0])

    def forget_fd(self, fd: int) -> None:
        """Drop every registration of *fd*; called on the loop's thread."""
        for event in (_IN, _OUT):
            key = (fd, event)
            entry = self.entries.get(key)
            if entry is not None:
                subs = entry.subs
                self._remove(key)
                for sub in subs:
                    sub(_ALWAYS)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopHub] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def _hub(loop: asyncio.AbstractEventLoop) -> _LoopHub:
    cached = _last_hub
    if cached is not None and cached._loop() is loop:
        return cached
    hub = _hubs.get(loop)
    if hub is None:
        with _hubs_lock:
            hub = _hubs.setdefault(loop, _LoopHub(loop))
    _set_last_hub(hub)
    return hub


# The hub used last: most programs run one loop, and a weak-dict lookup per wait shows.
_last_hub: _LoopHub | None = None


def _set_last_hub(hub: _LoopHub) -> None:
    global _last_hub
    _last_hub = hub


# A forked child may have inherited a loop that looks as if it ran in this
# thread; from then on only asyncio.get_running_loop() is trusted.
_forked = False


def _after_fork() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_after_fork)


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def forget_fd(fd: int) -> None:
    """Remove *fd* from every loop before it is closed (fd numbers get reused)."""
    for loop, hub in list(_hubs.items()):
        if not any(k[0] == fd for k in hub.entries):
            continue
        if loop.is_closed():
            hub.entries = {k: e for k, e in hub.entries.items() if k[0] != fd}
        elif _in_loop_thread(loop):
            hub.forget_fd(fd)
        else:
            try:
                loop.call_soon_threadsafe(hub.forget_fd, fd)
            except RuntimeError:  # closed meanwhile
                pass


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


class AsyncOp:
    """One pending async wait or operation on a channel, driven from loop callbacks.

    A plain wait (``call`` is ``None``) finishes with the readiness reported.
    An operation's ``call`` is made *inside* the hub callback, so the I/O
    happens when the loop reports readiness and a stale report (one queued
    before the data was consumed) costs a failed non-blocking call instead
    of a task switch.

    The op is itself what the awaiting task waits on: it speaks the part of
    the future protocol that :class:`asyncio.Task` uses.  When a readiness
    callback of the loop finishes it, the task is resumed there and then
    rather than through ``call_soon``, so a request/response exchange costs
    one loop iteration per message where a future costs two.  Finished any
    other way (``close``, ``wake_read``, inside a task) or cancelled, the
    wake-up is scheduled as a future's would be: a task never runs inside a
    call that somebody else made.

    Once its result has been taken the op is *parked*: it stays subscribed,
    and registered with the channel's waits, and the channel's next wait on
    the same loop in the same direction reuses it, so a request/response loop
    subscribes once.  A parked op that fires unsubscribes itself (the fd is
    level-triggered); it holds no reference to its channel, so an unclosed
    channel can still be collected.
    """

    __slots__ = (
        "_asyncio_future_blocking",
        "_callback",
        "_context",
        "_error",
        "_loop",
        "_state",
        "_value",
        "call",
        "channel",
        "cond",
        "fixed",
        "hub",
        "result",
        "slot",
        "subscribed",
        "waits",
    )

    def __init__(
        self, waits: Waits, loop: asyncio.AbstractEventLoop, fixed: bool, slot: list[AsyncOp]
    ) -> None:
        self.waits = waits
        self._loop = loop
        # See Channel._fixed_readiness.
        self.fixed = fixed
        #: The list of ``waits.parked`` this op parks in (its direction).
        self.slot = slot
        self.hub = _hub(loop)
        self.channel: Channel | None = None
        self.call: Callable[[], Any] | None = None
        self.cond = Condition.NONE
        self.subscribed: FdSpec = ()
        self._state = _IDLE
        self._value: Any = None
        self._error: BaseException | None = None
        self._callback: Callable[[AsyncOp], object] | None = None
        self._context: contextvars.Context | None = None
        self._asyncio_future_blocking = False
        self.result = _no_result

    def arm(self, cond: Condition) -> None:
        """Wait for *cond*; try the call at once if the channel reports it pending."""
        ch = self.channel
        assert ch is not None
        self.cond = cond
        if not self.fixed and self.call is not None and ch._pending(cond):
            self(0)  # re-arms if the call would still block
        else:
            fds = ch._wait_fds(cond)
            if fds != self.subscribed:
                self._subscribe(fds, ch._io_owner())

    def _subscribe(self, fds: FdSpec, owner: object) -> None:
        _move(self.hub, self.subscribed, fds, owner, self)
        self.subscribed = fds

    def _unsubscribe(self) -> None:
        if self.subscribed:
            _move(self.hub, self.subscribed, (), None, self)
            self.subscribed = ()

    def __call__(self, revents: int) -> None:
        """Readiness *revents* from the hub, or ``0`` to retry the call now."""
        ch = self.channel
        if ch is None:  # idle or parked: nobody waits, stop the reports
            self._unsubscribe()
            return
        call = self.call
        if revents & _NVAL:
            self.finish(None, ChannelClosedError(f"{ch.name}: channel closed"), False)
            return
        # Only the loop's readiness callback passes revents: nothing of ours
        # is on the stack and no task runs, so the task may resume right here.
        direct = revents != 0
        if call is None:
            self.finish(revents & (self.cond | _ERR_HUP) | ch._pending(self.cond), None, direct)
            return
        try:
            result = call()
        except BaseException as exc:
            self.finish(None, exc, direct)
            return
        if result is None or isinstance(result, Continuation):
            if result is not None:
                self.call = result
            if not self.fixed:
                self.arm(self.cond)
        else:
            self.finish(result, None, direct)

    def finish(self, value: Any, error: BaseException | None, direct: bool) -> None:
        """End the wait; resume the task in place if *direct*, else schedule it."""
        self.call = None
        self.channel = None
        self._value = value
        self._error = error
        self._state = _DONE
        callback = self._callback
        if callback is None:  # not awaited yet: ``__await__`` finds it done
            return
        self._callback = None
        context = self._context
        assert context is not None
        # Last: the resumed task may reuse this op for its next wait.
        if direct:
            context.run(callback, self)
        else:
            self._loop.call_soon(callback, self, context=context)

    def wake(self, exc: BaseException | None) -> None:
        """Thread-safe: retry an operation, end a plain wait, or fail with *exc*."""
        if _in_loop_thread(self._loop):
            self._on_wake(exc)
        else:
            try:
                self._loop.call_soon_threadsafe(self._on_wake, exc)
            except RuntimeError:
                pass

    def _on_wake(self, exc: BaseException | None) -> None:
        # A wake can reach an op that finished meanwhile, even one reused by
        # the next wait: like a wake sent while nothing waited, it ends that one.
        if self.channel is None or self._state != _PENDING:
            return
        if exc is not None:
            self.finish(None, exc, False)
        elif self.call is None:
            self.finish(0, None, False)
        else:
            self(0)  # retry the operation

    def abandon(self) -> None:
        """Stop waiting and release the call's state; the op is not reused."""
        self._unsubscribe()
        self.waits.remove_op(self)
        call, self.call = self.call, None
        self.channel = None
        self._state = _IDLE
        if isinstance(call, Continuation):
            call.close()

    # ---- awaiting: the part of the future protocol asyncio.Task uses ----
    # (_asyncio_future_blocking, _loop, add_done_callback, result, cancel).
    # asyncio reads ``_loop`` when there is no get_loop(), and ``result`` is a
    # builtin (see _no_result): two Python calls fewer per wait.

    def __await__(self) -> Generator[AsyncOp, None, Any]:
        try:
            if self._state == _PENDING:
                self._asyncio_future_blocking = True
                yield self
        finally:
            # Done (or, if something was thrown in, still pending): hand over
            # the result, then park the op for the next wait or drop it.
            value, error = self._value, self._error
            self._value = self._error = None
            if self._state == _DONE and error is None and not self.slot and not self.waits.closed:
                self._state = _IDLE
                self.slot.append(self)  # still subscribed: the next wait reuses it
            else:
                self.abandon()
        if error is not None:
            raise error
        return value

    def add_done_callback(
        self, callback: Callable[[AsyncOp], object], *, context: contextvars.Context | None = None
    ) -> None:
        # The task registers right after the op yielded itself, so it is pending.
        self._callback = callback
        self._context = context if context is not None else contextvars.copy_context()

    def cancel(self, msg: object = None) -> bool:
        if self._state != _PENDING:
            return False
        self.abandon()
        callback, context = self._callback, self._context
        self._callback = self._context = None
        self._value, self._error = None, asyncio.CancelledError(msg)
        self._state = _DONE
        if callback is not None:
            self._loop.call_soon(callback, self, context=context)
        return True

    def __repr__(self) -> str:
        state = ("idle", "pending", "done")[self._state]
        return f"<AsyncOp {state} {self.cond!r} on {self.channel.name if self.channel else None}>"


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
        channel: Channel,
        cond: Condition,
        callback: WatchCallback,
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
        if _in_loop_thread(self._loop):
            self._teardown()
        elif not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._teardown)
            except RuntimeError:
                pass

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
                self._handle = self._loop.call_soon(self._dispatch, 0)
        else:
            self._resubscribe(ch._wait_fds(Condition(self._cond)))

    def _resubscribe(self, fds: FdSpec) -> None:
        if fds == self._subscribed:
            return
        _move(_hub(self._loop), self._subscribed, fds, self._channel._io_owner(), self._on_fd)
        self._subscribed = fds

    def _on_fd(self, revents: int) -> None:
        if self._handle is None and self.active:
            self._handle = self._loop.call_soon(self._dispatch, revents)

    def _dispatch(self, hint: int) -> None:
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
        "async_ops",
        "blocking",
        "closed",
        "lock",
        "parked",
        "pending_wakes",
        "wake_fds",
        "watches",
    )

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.async_ops: list[AsyncOp] = []
        # At most one parked op per direction (reading, writing); see AsyncOp.
        self.parked: tuple[list[AsyncOp], list[AsyncOp]] = ([], [])
        self.watches: list[Watch] = []
        # direction (IN or OUT) -> [eventfd, number of blocking waiters]
        self.wake_fds: dict[int, list[int]] = {}
        self.blocking = 0
        self.closed = False
        #: Directions woken while nothing waited (see :meth:`wake`).
        self.pending_wakes = 0

    # ---- blocking -------------------------------------------------------

    def wait_blocking(self, channel: Channel, cond: Condition, timeout: float | None) -> Condition:
        direction = _IN if cond & Condition.IN else _OUT
        with self.lock:
            if self.closed:
                raise ChannelClosedError(f"{channel.name}: channel is closed")
            if self._take_wake(cond):
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

    def run_async(
        self, channel: Channel, cond: Condition, call: Callable[[], Any] | None
    ) -> Awaitable[Any]:
        """Wait for *cond* on the running loop, then make *call* (see :class:`AsyncOp`).

        Call from a coroutine and await the result at once.
        """
        if self.pending_wakes and call is None:
            with self.lock:
                if self._take_wake(cond):
                    return ready(0)
        # int() first: enum.Flag's operators are Python methods, costly per wait.
        parked = self.parked[0 if int(cond) & _IN else 1]
        op = None
        if parked:
            try:
                op = parked.pop()  # atomic: waits on two threads never share an op
            except IndexError:
                pass
        # On Python 3.11 asyncio.get_running_loop() makes a getpid() system
        # call, a share of a round trip that shows.  A loop of asyncio's records
        # the thread running it, and a thread runs one loop at a time: if the
        # parked op's loop runs in this thread, it is the running loop.
        if op is not None and getattr(op._loop, "_thread_id", None) == get_ident() and not _forked:
            loop = op._loop
        else:
            loop = asyncio.get_running_loop()
            if op is not None and op._loop is not loop:
                self.remove_op(op)
                op = None  # parked on another loop: it unsubscribes when it fires
        if op is None:
            op = AsyncOp(self, loop, channel._fixed_readiness, parked)
            op._state = _PENDING
            # list.append is atomic; close() sets ``closed`` before it snapshots the list.
            self.async_ops.append(op)
        else:
            op._state = _PENDING  # a parked op is registered already
        op.channel = channel
        op.call = call
        if self.closed:
            op.abandon()
            raise ChannelClosedError(f"{channel.name}: channel is closed")
        # A reused op of a fixed-readiness channel that is subscribed for
        # this condition already needs no arming (see Channel._fixed_readiness).
        if not (op.fixed and op.subscribed and cond == op.cond):
            op.arm(cond)
        return op

    def remove_op(self, op: AsyncOp) -> None:
        try:
            self.async_ops.remove(op)
        except ValueError:
            pass

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
            ops = [op for op in self.async_ops if op._state == _PENDING and op.cond & direction]
            if not blocked and not ops:
                self.pending_wakes |= direction
        for op in ops:
            op.wake(None)

    def _take_wake(self, cond: Condition) -> bool:
        """Consume a wake kept for *cond*'s direction (call with the lock held)."""
        direction = _IN if cond & Condition.IN else _OUT
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
            # Parked ops wait for nothing; one a wait is taking now is
            # pending already, or sees ``closed`` right after (run_async).
            ops = [op for op in self.async_ops if op._state == _PENDING]
            watches = list(self.watches)
            self.watches.clear()
            for parked in self.parked:
                parked.clear()  # the channel's close drops their fds from every hub
        for op in ops:
            op.wake(ChannelClosedError(f"{name}: channel closed while waiting"))
        return watches


async def ready(value: T) -> T:
    """An awaitable of a result that needed no wait."""
    return value


def add_watch(
    channel: Channel,
    waits: Waits,
    cond: Condition,
    callback: WatchCallback,
    loop: asyncio.AbstractEventLoop | None,
) -> Watch:
    if loop is None:
        loop = asyncio.get_running_loop()
    watch = Watch(channel, cond, callback, loop)
    with waits.lock:
        if waits.closed:
            raise ChannelClosedError(f"{channel.name}: channel is closed")
        waits.watches.append(watch)
    if _in_loop_thread(loop):
        watch._start()
    else:
        loop.call_soon_threadsafe(watch._start)
    return watch
