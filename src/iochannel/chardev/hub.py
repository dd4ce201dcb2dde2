"""The ``hub`` chardev: one frontend, many backends (QEMU's ``-chardev hub``).

Contract:

* **Members.** Any number of backend chardevs (QEMU's limit of 4 does not
  apply), given at creation or with :meth:`HubChardev.add_member`.  A member
  is busy (``owner``) while it belongs to the hub; the hub is busy while its
  frontend is attached; hubs and muxes cannot be stacked; a hub is never
  hot-swapped (registries refuse ``chardev-change`` by its type).
* **Input** from any member goes to the frontend.
* **Output** goes to every open member.  Each member has a slow-consumer
  :class:`MemberPolicy`:

  - ``block`` (QEMU's behaviour, lossless): the write returns what the
    slowest ``block`` member took.  A member that took more is *ahead*; the
    bytes it already has are not sent to it again when the frontend offers the
    rest, so no byte is sent twice or skipped.  When a write would block,
    :meth:`~Chardev.add_watch` watches the slowest blocked member.
  - ``drop``: the member never paces the frontend; what it cannot take waits
    in a queue of ``limit`` bytes, and beyond that the oldest bytes are
    dropped and counted.
  - ``disconnect``: like ``drop``, but a queue that would exceed ``limit``
    disconnects the member (counted); it is left out until it opens again.

* **Joining.** A member that opens (or reopens) joins at the current position:
  bytes written while it was closed are not sent to it.
* **Members with clients.** A member that fans out itself (a
  :class:`FanoutChardev`: a ``connections=N`` socket) applies its policy to
  each of its clients, so one client that stops reading costs only itself;
  the bytes its clients lose and their cuts count in the member's stats.
* **Events.** OPENED when the first member opens, CLOSED when the last one
  closes; other member events (BREAK) pass through.  Unlike QEMU's hub, the
  hub's own open state is kept, so a frontend attached later gets OPENED, and
  ``send_break`` on the hub reaches the frontend.

:class:`Progress` (the ``block`` accounting) and :class:`Backlog` (the bounded
queue) are sans-I/O; :class:`Fanout` moves the bytes by the policies, for the
hub's members and for a socket's clients alike.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from ..errors import ConfigurationError
from .chardev import (
    Chardev,
    ChardevBusyError,
    ChardevError,
    ClosedWrites,
    WatchCallback,
    WhileClosed,
)
from .events import ChardevEvent, changed
from .frontend import Frontend
from .options import (
    REQUIRED,
    ChardevLookup,
    ChardevOptionError,
    Field,
    Names,
    Schema,
    chardev_kwargs,
    check_id,
    register_backend,
)

__all__ = [
    "Backlog",
    "Fanout",
    "FanoutChardev",
    "HubChardev",
    "Member",
    "MemberPolicy",
    "MemberStats",
    "Progress",
    "SlowConsumer",
]

log = logging.getLogger(__name__)

#: Most queued bytes offered to a member at once (one socket buffer's worth).
SEND_CHUNK = 65536
#: Hub members the command line names (``chardevs.0`` … ``chardevs.3``, as QEMU's);
#: a spec's list is not limited.
MAX_HUB = 4


class SlowConsumer(enum.Enum):
    """What the hub does with a member that takes output slower than it comes."""

    #: Pace the frontend by this member; lossless.
    BLOCK = "block"
    #: Queue up to the limit, then drop the oldest queued bytes.
    DROP = "drop"
    #: Queue up to the limit, then disconnect the member.
    DISCONNECT = "disconnect"


@dataclasses.dataclass(frozen=True)
class MemberPolicy:
    mode: SlowConsumer = SlowConsumer.BLOCK
    #: ``drop``/``disconnect``: bytes queued for the member at most.
    limit: int = 65536

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ConfigurationError(f"limit must not be negative, not {self.limit}", field="limit")

    @classmethod
    def from_qapi(cls, data: Mapping[str, Any]) -> MemberPolicy:
        """``{"mode": "drop", "limit": N}``; both keys optional."""
        try:
            mode = SlowConsumer(data.get("mode", "block"))
        except ValueError:
            raise ChardevError(
                f"hub: policy mode must be 'block', 'drop' or 'disconnect', not {data['mode']!r}"
            ) from None
        limit = data.get("limit", cls.limit)
        if not isinstance(limit, int) or limit < 0:
            raise ChardevError(f"hub: policy limit must be a non-negative integer, not {limit!r}")
        return cls(mode, limit)


@dataclasses.dataclass
class MemberStats:
    """Counters of one member, for the management API."""

    #: Bytes the member took.
    bytes: int = 0
    #: Bytes it never got because its queue was full (``drop``).
    dropped: int = 0
    #: Times it was cut off for a full queue (``disconnect``).
    disconnects: int = 0
    #: Bytes waiting in its queue now.
    queued: int = 0


class Progress:
    """Sans-I/O accounting of one output stream written to ``block`` members.

    Positions are counted from the start of the stream.  :attr:`position` is
    what the frontend has been told was written; a member is *ahead* by what it
    took beyond that.  For a write of ``length`` bytes, each member is still to
    get ``data[ahead(key):]``; :meth:`settle` takes how much of ``data`` each
    member now holds (``ahead + taken``), returns the bytes the write reports,
    and keeps what each is ahead by, so the rest is never sent twice.
    """

    __slots__ = ("_ahead", "position")

    def __init__(self) -> None:
        self.position = 0
        self._ahead: dict[int, int] = {}

    def join(self, key: int) -> None:
        """The member starts (again) at the current position."""
        self._ahead[key] = 0

    def leave(self, key: int) -> None:
        self._ahead.pop(key, None)

    def ahead(self, key: int) -> int:
        return self._ahead[key]

    def settle(self, length: int, held: Mapping[int, int]) -> int:
        accepted = min((length, *held.values()))
        for key, n in held.items():
            self._ahead[key] = n - accepted
        self.position += accepted
        return accepted


class Backlog:
    """Sans-I/O bounded byte queue that keeps the newest ``limit`` bytes."""

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()

    def __len__(self) -> int:
        return len(self._buf)

    def push(self, data: memoryview) -> int:
        """Append *data*; returns how many of the oldest bytes fell out."""
        overflow = max(0, len(self._buf) + len(data) - self.limit)
        if overflow:
            old = min(overflow, len(self._buf))
            del self._buf[:old]
            data = data[overflow - old :]
        self._buf += data
        return overflow

    def send(self, write: Callable[[memoryview], int | None]) -> int:
        """Give the head to *write*; drop what it took and return the count."""
        # A copy, not a view: *write* may end in a close that clears the queue.
        head = bytes(self._buf[:SEND_CHUNK])
        n = write(memoryview(head)) or 0
        del self._buf[:n]
        return n

    def clear(self) -> None:
        self._buf.clear()


class Member:
    """One output of a :class:`Fanout`: its chardev, policy and counters."""

    def __init__(self, key: int, chardev: Chardev, policy: MemberPolicy) -> None:
        self.key = key
        self.chardev = chardev
        self.policy = policy
        self.stats = MemberStats()
        self.port = Frontend(chardev)
        self.backlog = Backlog(policy.limit)
        #: Left out until it next opens (write error, or cut off by policy).
        self.out = False
        self.drain_watch: Any = None

    @property
    def live(self) -> bool:
        """Open and taking output."""
        return self.port.is_open and not self.out

    @property
    def paces(self) -> bool:
        return self.policy.mode is SlowConsumer.BLOCK

    def write(self, data: memoryview) -> int | None:
        """Write to the member; an error leaves it out (its backend reports the close)."""
        try:
            n = self.port.write(data)
        except (OSError, ChardevError) as exc:
            log.info("chardev '%s': write failed: %s", self.chardev.id, exc)
            self.out = True
            return None
        if n:
            self.stats.bytes += n
        return n

    def reset(self) -> None:
        if self.drain_watch is not None:
            self.drain_watch.cancel()
            self.drain_watch = None
        self.backlog.clear()
        self.stats.queued = 0


class _FanoutWatch:
    """A writer's writable watch on a fan-out: fires when the blocked member
    drains, or when that member leaves (writes may proceed without it)."""

    def __init__(self, fanout: Fanout, member: Member, callback: WatchCallback) -> None:
        self._fanout = fanout
        self.member = member
        self._callback = callback
        self._inner: Any = member.port.add_watch(self._fire)

    @property
    def armed(self) -> bool:
        return self._inner is not None

    def _fire(self) -> bool:
        keep = self._callback()
        if not keep:
            self._inner = None  # returning False ends the member's watch
            self._forget()
        return keep

    def member_left(self) -> None:
        if self._inner is not None:
            self._inner.cancel()
            self._inner = None
        # A member may leave on any thread (remove_member).
        self._fanout.owner.loop.call_soon_threadsafe(self._fire_once)

    def _fire_once(self) -> None:
        if self in self._fanout.watches:
            self._forget()
            self._callback()

    def cancel(self) -> None:
        if self._inner is not None:
            self._inner.cancel()
            self._inner = None
        self._forget()

    def _forget(self) -> None:
        if self in self._fanout.watches:
            self._fanout.watches.remove(self)


class Fanout:
    """One output stream written to many chardevs, each under its :class:`MemberPolicy`.

    The mechanism behind a hub's members and a ``connections=N`` socket's
    clients (see the module docstring for the policies).  *owner* is the
    chardev whose writes this serves: its write lock is held while bytes
    move and its loop runs the watches.  Members added without a policy get
    ``policy``; the bytes they lose and their cuts are also counted in
    ``parent``, the owner's own counters as a hub member, if it is one.
    """

    def __init__(self, owner: Chardev, policy: MemberPolicy | None = None) -> None:
        self.owner = owner
        self.policy = policy or MemberPolicy()
        self.parent: MemberStats | None = None
        self.members: list[Member] = []
        self.watches: list[_FanoutWatch] = []
        self._next_key = 0
        self._progress = Progress()
        self._blocked: Member | None = None

    def add(self, chardev: Chardev, policy: MemberPolicy | None = None) -> Member:
        """A new member, taking no output until :meth:`join`."""
        member = Member(self._next_key, chardev, policy or self.policy)
        self._next_key += 1
        self.members.append(member)
        return member

    def remove(self, member: Member) -> None:
        """Forget *member* and let go of its chardev (not closed)."""
        with self.owner.write_lock:
            if member in self.members:
                self.members.remove(member)
            self.leave(member)
            member.port.deinit()

    def set_policy(self, policy: MemberPolicy, parent: MemberStats | None) -> None:
        """Put every member, present and future, under *policy*; count losses in *parent* too."""
        with self.owner.write_lock:
            self.policy, self.parent = policy, parent
            for m in self.members:
                self.leave(m)  # its progress and queue belong to the old policy
                m.policy = policy
                m.backlog = Backlog(policy.limit)
                if m.port.is_open:
                    self.join(m)

    def join(self, member: Member) -> None:
        """*member* opened: it gets output from the current position on."""
        with self.owner.write_lock:
            member.out = False
            member.reset()
            if member.paces:
                self._progress.join(member.key)

    def leave(self, member: Member) -> None:
        """*member* takes no more output: forget its progress, wake writers it held."""
        with self.owner.write_lock:
            member.reset()
            self._progress.leave(member.key)
            if self._blocked is member:
                self._blocked = None
            for watch in tuple(self.watches):
                if watch.member is member:
                    watch.member_left()

    def write(self, data: memoryview) -> int | None:
        """Bytes of *data* the ``block`` members all hold (all of it without any), or None."""
        length = len(data)
        held: dict[int, int] = {}
        slowest: Member | None = None
        for m in tuple(self.members):
            if not (m.paces and m.live):
                continue
            ahead = self._progress.ahead(m.key)
            if ahead < length:  # otherwise the member already has all of *data*
                n = m.write(data[ahead:])
                if m.out:  # failed: it no longer paces anyone
                    self._progress.leave(m.key)
                    continue
                if not n and (slowest is None or ahead < held[slowest.key]):
                    slowest = m
                ahead += n or 0
            held[m.key] = ahead
        accepted = self._progress.settle(length, held)
        self._blocked = slowest
        if accepted:
            for m in tuple(self.members):
                if not m.paces and m.live:
                    self._queue(m, data[:accepted])
        return accepted or None

    def _queue(self, m: Member, data: memoryview) -> None:
        if not m.backlog:
            n = m.write(data) or 0
            data = data[n:]
        if not data or m.out:
            return
        overflow = m.backlog.push(data)
        if overflow and m.policy.mode is SlowConsumer.DISCONNECT:
            self._cut(m)
            return
        m.stats.dropped += overflow
        if self.parent is not None:
            self.parent.dropped += overflow
        m.stats.queued = len(m.backlog)
        if m.drain_watch is None:
            m.drain_watch = m.port.add_watch(lambda: self._drain(m))

    def _drain(self, m: Member) -> bool:
        with self.owner.write_lock:
            while m.backlog and m.live:
                if not m.backlog.send(m.write):
                    break
            m.stats.queued = len(m.backlog)
            if m.backlog and m.live:
                return True
            m.drain_watch = None
            return False

    def _cut(self, m: Member) -> None:
        log.warning(
            "%s '%s': member '%s' fell %d bytes behind: disconnecting it",
            self.owner.type_name,
            self.owner.id,
            m.chardev.id,
            m.policy.limit,
        )
        m.stats.disconnects += 1
        if self.parent is not None:
            self.parent.disconnects += 1
        m.out = True
        m.reset()
        m.chardev.disconnect()

    def add_write_watch(self, callback: WatchCallback) -> Any:
        """Watch the member that blocked the last write (see :meth:`Chardev.add_watch`)."""
        member = self._blocked
        if member is None or not member.live:
            return None
        watch = _FanoutWatch(self, member, callback)
        if not watch.armed:
            return None
        self.watches.append(watch)
        return watch


class FanoutChardev(Chardev):
    """A chardev whose output goes to several chardevs through a :class:`Fanout`.

    A hub puts its policy for such a member in its ``fanout``'s ``policy``, so
    it applies to each of the member's own outputs (the clients of a
    ``connections=N`` socket) rather than to all of them at once.
    """

    def __init__(self, id: str, **kwargs: Any) -> None:
        super().__init__(id, **kwargs)
        self.fanout = Fanout(self)

    def _chr_write(self, data: memoryview) -> int | None:
        return self.fanout.write(data)

    def _add_write_watch(self, callback: WatchCallback) -> Any:
        return self.fanout.add_write_watch(callback)


def _from_cli(o: Mapping[str, Any]) -> dict[str, Any]:
    members: list[str] = []
    policies: dict[str, dict[str, Any]] = {}
    for i in range(MAX_HUB):
        key = f"chardevs.{i}"
        if key not in o:
            break
        members.append(o[key])
        policy = {
            name: o[f"{option}.{i}"]
            for name, option in (("mode", "policy"), ("limit", "limit"))
            if f"{option}.{i}" in o
        }
        if policy:
            policies[o[key]] = policy
    used = {f"{k}.{i}" for k in ("chardevs", "policy", "limit") for i in range(len(members))}
    extra = sorted(set(o) - used)
    if extra:
        kind, _, n = extra[0].partition(".")
        missing = f"chardevs.{len(members) if kind == 'chardevs' else n}"
        raise ChardevOptionError(f"Parameter '{extra[0]}' given without '{missing}'")
    return {"chardevs": members, **({"policies": policies} if policies else {})}


def _members(data: Mapping[str, Any]) -> list[str]:
    members: list[str] | None = data.get("chardevs")
    if not members:
        raise ChardevOptionError("hub: 'chardevs' list is not defined")
    return members


def _check(data: dict[str, Any], name: Names) -> None:
    for i, member in enumerate(_members(data)):
        check_id(name(f"chardevs.{i}"), member)


def _mux_be(id: str, data: Mapping[str, Any], registry: ChardevLookup) -> HubChardev:
    return HubChardev.from_mux_be(id, data, registry)


@register_backend(
    Schema(
        "hub",
        "one frontend, many backends (chardevs.N=ID)",
        {
            **{f"chardevs.{i}": "str" for i in range(MAX_HUB)},
            # Extension: each member's slow-consumer policy and its queue bound.
            **{f"policy.{i}": "str" for i in range(MAX_HUB)},
            **{f"limit.{i}": "size" for i in range(MAX_HUB)},
        },
        {"chardevs": Field("strlist", REQUIRED), "policies": Field("object")},
        from_cli=_from_cli,
        check=_check,
    ),
    Schema(
        "mux-be",
        "an empty hub; chardevs join it with mux-be-id=ID",
        {},
        {"policies": Field("object")},
        factory=_mux_be,
    ),
)
class HubChardev(FanoutChardev):
    """One frontend, many backend chardevs; see the module docstring."""

    type_name: ClassVar[str] = "hub"
    multiplexer: ClassVar[bool] = True
    #: With nothing open, output goes nowhere, as in QEMU.
    default_closed_writes: ClassVar[ClosedWrites] = ClosedWrites(WhileClosed.DROP)

    def __init__(
        self,
        id: str,
        members: Iterable[Chardev] = (),
        *,
        policies: Mapping[str, MemberPolicy] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(id, **kwargs)
        #: Policies by member id, also for members that join later (``mux-be``).
        self.policies = dict(policies or {})
        try:
            for chardev in members:
                self.add_member(chardev)
        except ChardevError:
            self._close()
            raise

    # ---- configuration -----------------------------------------------------------

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> HubChardev:
        """Build from QAPI ``ChardevHub`` plus per-member policies.

        ``{"chardevs": [ids], "policies": {id: {"mode": "drop", "limit": N}}}``.
        """
        return cls._build(id, _members(data), data, registry)

    @classmethod
    def from_mux_be(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> HubChardev:
        """Build the ``mux-be`` form: an empty hub; each backend with ``mux-be-id=``
        then joins through :meth:`add_member`."""
        return cls._build(id, (), data, registry)

    @classmethod
    def _build(
        cls,
        id: str,
        ids: Iterable[str],
        data: Mapping[str, Any],
        registry: ChardevLookup,
    ) -> HubChardev:
        policies: Mapping[str, Mapping[str, Any]] = data.get("policies") or {}
        parsed = {key: MemberPolicy.from_qapi(value) for key, value in policies.items()}
        chardevs = []
        for member_id in ids:
            chardev = registry.get(member_id)
            if chardev is None:
                raise ChardevError(f"hub: chardev can't be found by id '{member_id}'")
            chardevs.append(chardev)
        return cls(id, chardevs, policies=parsed, **chardev_kwargs(data, registry.loop))

    def add_member(self, chardev: Chardev, policy: MemberPolicy | None = None) -> Member:
        """Add *chardev* as a backend; it joins output at the current position.

        Without *policy*, the one configured for its id applies, else ``block``.
        """
        if chardev.multiplexer:
            raise ChardevError(
                "hub: multiplexers and hub devices can't be stacked, check chardev "
                f"'{chardev.id}', chardev should not be a hub device or have 'mux=on' enabled"
            )
        if chardev.owner is not None:
            raise ChardevBusyError(f"chardev '{chardev.id}' is already in use")
        policy = policy or self.policies.get(chardev.id) or MemberPolicy()
        member = self.fanout.add(chardev, policy)
        chardev.owner = self
        if isinstance(chardev, FanoutChardev):
            # Its own outputs (a socket's clients) each get the policy and report here.
            chardev.fanout.set_policy(policy, member.stats)
        if self.opened and not self.closed:
            self._listen(member)
        changed()
        return member

    def remove_member(self, chardev: Chardev) -> None:
        """Stop using *chardev*; it is free again (not closed)."""
        member = self.member(chardev.id)
        with self._write_lock:
            was_open = member.port.is_open
            self.fanout.remove(member)
            chardev.owner = None
            if isinstance(chardev, FanoutChardev):
                chardev.fanout.set_policy(MemberPolicy(), None)
        if was_open and not any(m.port.is_open for m in self.fanout.members):
            self.be_event(ChardevEvent.CLOSED)
        changed()

    @property
    def members(self) -> tuple[Member, ...]:
        return tuple(self.fanout.members)

    def member(self, id: str) -> Member:
        for m in self.fanout.members:
            if m.chardev.id == id:
                return m
        raise ChardevError(f"hub '{self.id}' has no member '{id}'")

    # ---- lifecycle ---------------------------------------------------------------

    def _open(self) -> bool:
        for member in self.members:
            self._listen(member)
        return False  # be_open follows the members' events

    def _listen(self, member: Member) -> None:
        member.port.set_handlers(
            self.be_can_read,
            self.be_write,
            lambda event: self._member_event(member, event),
        )
        member.chardev.open()

    def _close(self) -> None:
        for member in self.members:
            self.fanout.remove(member)
            member.chardev.owner = None

    def _member_event(self, member: Member, event: ChardevEvent) -> None:
        if event == ChardevEvent.OPENED:
            self.fanout.join(member)
            self.be_event(ChardevEvent.OPENED)  # absorbed unless it is the first
        elif event == ChardevEvent.CLOSED:
            self.fanout.leave(member)
            if not any(m.port.is_open for m in self.fanout.members):
                self.be_event(ChardevEvent.CLOSED)
        else:
            self.be_event(event)

    # ---- input ---------------------------------------------------------------------

    def _update_read_handler(self) -> None:
        for member in self.fanout.members:
            if member.port.chardev is not None:
                member.port.accept_input()
