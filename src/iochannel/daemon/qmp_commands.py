"""The daemon's QMP commands and events, served by every ``--monitor``.

Commands (QEMU's names, arguments and replies):

=========================  ==========================================================
``chardev-add``            ``{"id", "backend"}`` → ``{}`` or ``{"pty": path}``
``chardev-change``         ``{"id", "backend"}`` → the same
``chardev-remove``         ``{"id"}``
``chardev-send-break``     ``{"id"}``
``query-chardev``          ``[{"label", "filename", "frontend-open", "open", "error"?}]``
``query-chardev-backends`` ``[{"name"}]``
``ringbuf-write``          ``{"device", "data", "format"?}``
``ringbuf-read``           ``{"device", "size", "format"?}`` → the data
=========================  ==========================================================

Storage commands (:func:`register_storage_commands`, qemu-storage-daemon's
names, arguments and error texts; see ``docs/storage.md``): ``blockdev-add``,
``blockdev-del``, ``block_resize``, ``block-export-add``, ``block-export-del``,
``nbd-server-start``/``-stop``/``-add``/``-remove``, ``query-block-exports``,
``query-named-block-nodes``, ``object-add`` / ``object-del`` (``iothread``),
``qom-list`` / ``qom-get`` (:mod:`.qom`), and
the event ``BLOCK_EXPORT_DELETED`` ``{"id"}``.

plus the monitor's own ``qmp_capabilities``, ``query-commands``,
``query-version`` and ``quit``.  Our additions:

* in ``query-chardev``, ``open`` (whether the backend is open: a client is
  connected, the program runs) and, while the chardev's output fails but it
  stays open (a ``file`` on a full disk), ``error`` saying why;

* ``query-chardev-stats`` → ``[{"label", "open", "bytes-in", "bytes-out",
  "dropped", "opens", "reconnects"}]`` (``reconnects`` counts every open after
  the first);
* ``query-hub-members`` ``{"hub"?}`` → ``[{"hub", "member", "mode", "limit",
  "open", "bytes", "dropped", "disconnects", "queued", "error"?}]`` (``error``
  as in ``query-chardev``);
* ``query-relays`` → ``[{"id", "chardev", "peer", "bytes-forward",
  "bytes-back", "dropped-forward", "dropped-back"}]``.

Events, with ``data``:

* ``CHARDEV_OPENED`` / ``CHARDEV_CLOSED`` ``{"id"}`` — a chardev's backend
  opened or closed (a client connected, a program started or exited);
* ``HUB_MEMBER_JOINED`` / ``HUB_MEMBER_LEFT`` ``{"hub", "member"}`` — a member
  was added to or removed from a hub, or a member opened or closed (a viewer
  came or went; a ``connections=N`` socket member opens with its first client
  and closes after its last).

:class:`EventWatcher` reacts to :func:`~iochannel.chardev.events.observe_changes`
by comparing each chardev's open/close counters and each hub's members with
what it reported last: an open and a close in quick succession are both
reported, in that order, and none is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from ..block.options import BlockError
from ..block.storage import Storage
from ..chardev import Chardev, ChardevRegistry, HubChardev
from ..chardev.events import observe_changes
from ..qmp import QMPError, QMPMonitor
from .qom import QomTree
from .relay import Relay

__all__ = ["EventWatcher", "register_commands", "register_storage_commands"]


_ID = {"id": ("str", True)}
_BACKEND = {"id": ("str", True), "backend": ("object", True)}


def _device(registry: ChardevRegistry, id: str) -> Chardev:
    chr = registry.get(id)
    if chr is None:
        raise QMPError(f"Device '{id}' not found", "DeviceNotFound")
    return chr


def register_commands(
    monitor: QMPMonitor, registry: ChardevRegistry, relays: Callable[[], Iterable[Relay]]
) -> None:
    """Add the daemon's commands (module docstring) to *monitor*."""

    def send_break(args: dict[str, Any]) -> None:
        _device(registry, args["id"]).send_break()

    def ringbuf_write(args: dict[str, Any]) -> None:
        _device(registry, args["device"])
        registry.ringbuf_write(args["device"], args["data"], args.get("format", "utf8"))

    def ringbuf_read(args: dict[str, Any]) -> str:
        _device(registry, args["device"])
        return registry.ringbuf_read(args["device"], args["size"], args.get("format", "utf8"))

    def hub_members(args: dict[str, Any]) -> list[dict[str, Any]]:
        if "hub" in args:
            hub = _device(registry, args["hub"])
            if not isinstance(hub, HubChardev):
                raise QMPError(f"{args['hub']} is not a hub device")
            hubs = [hub]
        else:
            hubs = [c for c in _chardevs(registry) if isinstance(c, HubChardev)]
        return [
            {
                "hub": hub.id,
                "member": m.chardev.id,
                "mode": m.policy.mode.value,
                "limit": m.policy.limit,
                "open": m.chardev.be_open,
                "bytes": m.stats.bytes,
                "dropped": m.stats.dropped,
                "disconnects": m.stats.disconnects,
                "queued": m.stats.queued,
                **_error(m.chardev),
            }
            for hub in hubs
            for m in hub.members
        ]

    fmt = {"format": ("str", False)}
    for name, handler, params in (
        ("chardev-add", lambda a: registry.chardev_add(never_waits(a)), _BACKEND),
        (
            "chardev-change",
            lambda a: _pty_reply(registry.change(a["id"], never_waits(a)["backend"])),
            _BACKEND,
        ),
        ("chardev-remove", lambda a: registry.remove(a["id"]), _ID),
        ("chardev-send-break", send_break, _ID),
        ("query-chardev", lambda a: _query_chardev(registry), {}),
        ("query-chardev-backends", lambda a: [{"name": n} for n in registry.backends()], {}),
        ("ringbuf-write", ringbuf_write, {"device": ("str", True), "data": ("str", True), **fmt}),
        ("ringbuf-read", ringbuf_read, {"device": ("str", True), "size": ("int", True), **fmt}),
        ("query-chardev-stats", lambda a: [_stats(c) for c in _chardevs(registry)], {}),
        ("query-hub-members", hub_members, {"hub": ("str", False)}),
        ("query-relays", lambda a: [r.query() for r in relays()], {}),
    ):
        monitor.register(name, handler, params)


def register_storage_commands(
    monitor: QMPMonitor, storage: Storage, registry: ChardevRegistry | None = None
) -> None:
    """Add the storage commands (module docstring) to *monitor*; *registry*'s
    chardevs show in ``qom-list /chardevs``."""
    qom = QomTree(
        storage,
        lambda: [(c.id, c.type_name) for c in _chardevs(registry)] if registry else [],
    )

    def guarded(call: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
        async def run(args: dict[str, Any]) -> Any:
            try:
                result = call(args)
                if asyncio.iscoroutine(result):
                    result = await result
            except BlockError as exc:
                raise QMPError(str(exc)) from None
            return {} if result is None else result

        return run

    def object_add(args: dict[str, Any]) -> None:
        args = dict(args)
        kind = args.pop("qom-type", None)
        if kind is None:
            raise BlockError("Parameter 'qom-type' is missing")
        if kind != "iothread":
            raise BlockError(f"Invalid object type '{kind}' (supported here: iothread)")
        storage.iothread_add(args, typed=True)

    def blockdev_add(args: dict[str, Any]) -> None:
        storage.blockdev_add(args, typed=True)

    def export_add(args: dict[str, Any]) -> None:
        storage.export_add(args, typed=True)

    def nbd_server_add(args: dict[str, Any]) -> None:
        # The deprecated form of block-export-add type=nbd: the NBD name is the id.
        if not storage.nbd.running:
            raise BlockError("NBD server not running")
        args = dict(args)
        device = args.pop("device", None)
        if device is None:
            raise BlockError("Parameter 'device' is missing")
        name = args.get("name", device)
        storage.export_add({**args, "type": "nbd", "id": name, "node-name": device}, typed=True)

    async def nbd_server_remove(args: dict[str, Any]) -> None:
        if not storage.nbd.running:
            raise BlockError("NBD server not running")
        await storage.export_del(args["name"], args.get("mode", "safe"))

    commands: list[tuple[str, Callable[[dict[str, Any]], Any], dict[str, Any] | None]] = [
        # Driver-specific members: checked by the block layer, not the monitor.
        ("blockdev-add", blockdev_add, None),
        (
            "blockdev-del",
            lambda a: storage.blockdev_del(a["node-name"]),
            {"node-name": ("str", True)},
        ),
        ("block-export-add", export_add, None),
        (
            "block-export-del",
            lambda a: storage.export_del(a["id"], a.get("mode", "safe")),
            {"id": ("str", True), "mode": ("str", False)},
        ),
        (
            "nbd-server-start",
            lambda a: storage.nbd_server_start(a, typed=True, legacy=True),
            None,
        ),
        ("nbd-server-stop", lambda a: storage.nbd_server_stop(), {}),
        ("nbd-server-add", nbd_server_add, None),
        (
            "nbd-server-remove",
            nbd_server_remove,
            {"name": ("str", True), "mode": ("str", False)},
        ),
        ("query-block-exports", lambda a: storage.query_block_exports(), {}),
        (
            "query-named-block-nodes",
            lambda a: storage.query_named_block_nodes(),
            {"flat": ("bool", False)},
        ),
        ("object-add", object_add, None),
        ("object-del", lambda a: storage.iothread_del(a["id"]), _ID),
        (
            "block_resize",
            lambda a: storage.block_resize(a.get("device"), a.get("node-name"), a["size"]),
            {"device": ("str", False), "node-name": ("str", False), "size": ("int", True)},
        ),
    ]
    for name, handler, params in commands:
        monitor.register(name, guarded(handler), params)
    path = {"path": ("str", True)}
    monitor.register("qom-list", lambda a: qom.qom_list(a["path"]), path)
    monitor.register(
        "qom-get",
        lambda a: qom.qom_get(a["path"], a["property"]),
        {**path, "property": ("str", True)},
    )


def never_waits(args: dict[str, Any]) -> dict[str, Any]:
    """*args* (a chardev spec), unless a socket server would wait for its first client.

    Waiting blocks the daemon's loop (every monitor, viewer and signal) until
    a client connects, so a running daemon refuses it (QMP, a reload); the
    server accepts clients on the loop anyway.
    """
    backend = args["backend"]
    data = backend.get("data")
    socket = backend.get("type") == "socket" and isinstance(data, dict)
    if socket and data.get("server", True) and data.get("wait") is True:
        raise QMPError(
            "'wait' cannot be true once the daemon runs: waiting for a client would stop "
            "the daemon; leave 'wait' false, the server accepts clients in the background"
        )
    return args


def _pty_reply(chr: Chardev) -> dict[str, str]:
    pty = getattr(chr, "pty_path", None)
    return {"pty": pty} if isinstance(pty, str) else {}


def _query_chardev(registry: ChardevRegistry) -> list[dict[str, Any]]:
    replies = registry.query()
    for reply in replies:
        chr = registry.get(reply["label"])
        if chr is not None:
            reply["open"] = chr.be_open
            reply.update(_error(chr))
    return replies


def _error(chr: Chardev) -> dict[str, str]:
    return {"error": chr.error} if chr.error is not None else {}


def _chardevs(registry: ChardevRegistry) -> list[Chardev]:
    return [c for c in (registry.get(q["label"]) for q in registry.query()) if c is not None]


def _stats(chr: Chardev) -> dict[str, Any]:
    s = chr.stats
    return {
        "label": chr.id,
        "open": chr.be_open,
        "bytes-in": s.bytes_in,
        "bytes-out": s.bytes_out,
        "dropped": s.dropped,
        "opens": s.opens,
        "reconnects": max(0, s.opens - 1),
    }


class EventWatcher:
    """Emits the module's events on *emit* as the registry's chardevs change."""

    def __init__(
        self, registry: ChardevRegistry, emit: Callable[[str, dict[str, Any]], None]
    ) -> None:
        self.registry = registry
        self.emit = emit
        # id(chardev) → (opens, closes) already reported; hub id → member ids.
        self._seen: dict[int, tuple[int, int]] = {}
        self._members: dict[str, set[str]] = {}
        self._stop: Callable[[], None] | None = None
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.poll(report=False)
        self._loop = asyncio.get_running_loop()
        self._stop = observe_changes(self._changed)

    def _changed(self) -> None:
        # Coalesce a burst of changes into one comparison on the daemon's loop.
        if not self._scheduled and self._loop is not None and not self._loop.is_closed():
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._poll_now)

    def _poll_now(self) -> None:
        self._scheduled = False
        self.poll()

    def poll(self, report: bool = True) -> None:
        """Report what changed since the last poll (with *report* false: just remember)."""
        seen: dict[int, tuple[int, int]] = {}
        members: dict[str, set[str]] = {}
        for chr in _chardevs(self.registry):
            subjects: list[tuple[Chardev, HubChardev | None]] = [(chr, None)]
            if isinstance(chr, HubChardev):
                ids = {m.chardev.id for m in chr.members}
                members[chr.id] = ids
                old = self._members.get(chr.id, set())
                for gone in sorted(old - ids) if report else ():
                    self.emit("HUB_MEMBER_LEFT", {"hub": chr.id, "member": gone})
                for new in sorted(ids - old) if report else ():
                    self.emit("HUB_MEMBER_JOINED", {"hub": chr.id, "member": new})
                subjects += [(m.chardev, chr) for m in chr.members]
            for subject, hub in subjects:
                counts = (subject.stats.opens, subject.stats.closes)
                if report:
                    self._report(subject, hub, self._seen.get(id(subject), counts), counts)
                seen[id(subject)] = counts
        self._seen, self._members = seen, members

    def _report(
        self,
        chr: Chardev,
        hub: HubChardev | None,
        before: tuple[int, int],
        now: tuple[int, int],
    ) -> None:
        opens, closes = now[0] - before[0], now[1] - before[1]
        # Opens and closes alternate; the state before decides which came first.
        was_open = before[0] > before[1]
        order = []
        while opens or closes:
            if was_open and closes:
                order.append(False)
                closes -= 1
            elif opens:
                order.append(True)
                opens -= 1
            else:
                order.append(False)
                closes -= 1
            was_open = order[-1]
        for opened in order:
            if hub is None:
                self.emit("CHARDEV_OPENED" if opened else "CHARDEV_CLOSED", {"id": chr.id})
            else:
                event = "HUB_MEMBER_JOINED" if opened else "HUB_MEMBER_LEFT"
                self.emit(event, {"hub": hub.id, "member": chr.id})

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None
