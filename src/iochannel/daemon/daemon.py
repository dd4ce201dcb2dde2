"""The daemon: runs a :class:`~.cli.Config` on one asyncio loop, reloads it, shuts it down.

Contract:

* :meth:`Daemon.start` builds, in order: ``--object`` objects (into
  ``registry.objects``), chardevs (in configuration order, so members come
  before their hub), relays, QMP monitors (with :mod:`.qmp_commands`), the web
  console and the vhost-user exports.  A failure names the option that caused
  it, and everything built so far is torn down again.
* :meth:`Daemon.reload` applies a new configuration whole or not at all:
  chardevs whose spec is unchanged stay as they are (their clients stay
  connected); changed or removed ones, and everything that uses them (the hub
  they are members of, relays, monitors, the web console), are taken down and
  built again from the new configuration.  First, with nothing running
  touched, the new objects and every new or changed chardev that needs no
  other chardev and no resource an old one still holds (a listening path or
  port) are built; any failure there drops them and keeps the running
  configuration.  Only then is the old part taken down and the rest built; a
  failure at that stage takes the new part down again and rebuilds the old one
  from the running configuration.  Either way one error line says why.
  Exports are not reloaded.
* :meth:`Daemon.stop` takes everything down, users before what they use:
  listening unix sockets are unlinked, programs of ``command`` chardevs are
  hung up and reaped, a terminal used by ``stdio`` is restored.
* :func:`run` is the process around it: SIGTERM and SIGINT stop, SIGHUP
  reloads the ``--config`` file (with the same command line), the pid file is
  written once everything listens and removed on exit, ``--daemonize`` detaches
  only after that (the parent exits 0 when the daemon is ready, 1 if it failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any

from .._transports.address import InetAddress, UnixAddress
from ..block.storage import Storage
from ..chardev import Chardev, ChardevError, ChardevRegistry, CommandChardev, FileChardev
from ..chardev.socket import SocketChardev
from ..qmp import QMPError, QMPMonitor
from ..vhost_user import cli as vhost_cli
from .cli import Config, ConfigError, MonitorSpec, RelaySpec, parse_args, program
from .objects import ObjectSpec
from .qmp_commands import (
    EventWatcher,
    never_waits,
    register_commands,
    register_storage_commands,
)
from .relay import Relay

__all__ = ["VERSION", "Daemon", "run"]

log = logging.getLogger(__name__)

#: What ``query-version`` reports.
VERSION = (0, 1, 0)


class Daemon:
    """Chardevs, relays, monitors, web console and exports of one configuration."""

    def __init__(self, config: Config, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = Config()  # what runs now: nothing yet
        self._target = config
        self.loop = loop or asyncio.get_running_loop()
        self.registry = ChardevRegistry(loop=self.loop)
        self.relays: dict[str, Relay] = {}
        self.monitors: dict[str, QMPMonitor] = {}
        self.web: Any = None
        self.storage = Storage(emit=self._emit, objects=self.registry.objects)
        self._watcher = EventWatcher(self.registry, self._emit)
        self.stopped = asyncio.Event()

    # ---- starting -----------------------------------------------------------------------

    async def start(self) -> None:
        """Build everything; on failure nothing is left running."""
        try:
            await self._apply(self._target, strict=True)
            self._start_exports(self._target)
        except BaseException:
            await self.stop()
            raise
        self._watcher.start()

    async def _apply(self, new: Config, *, strict: bool) -> None:
        """Build what *new* has and the running configuration lacks."""
        failed: set[str] = set()

        def attempt(where: str, key: str, build: Callable[[], object]) -> None:
            try:
                _build_for(where, build)
            except ConfigError as exc:
                if strict:
                    raise
                log.error("%s", exc)
                failed.add(key)

        for id, obj in new.objects.items():
            if id not in self.registry.objects:
                attempt(f"--object id={id}", id, functools.partial(self._add_object, obj))
        for id, spec in new.chardevs.items():
            if id not in self.registry:
                attempt(new.origin[id], id, functools.partial(self.registry.add, spec))
        for id, r in new.relays.items():
            if id not in self.relays and not {r.chardev, r.peer} & failed:
                attempt(f"--relay id={id}", id, functools.partial(self._add_relay, r))
        for id, m in new.monitors.items():
            if id not in self.monitors and m.chardev not in failed:
                attempt(f"--monitor id={id}", id, functools.partial(self._add_monitor, m))
        hub = new.web_hub()
        if new.web is not None and self.web is None and hub not in failed:
            try:
                await self._add_web(new)
            except (ChardevError, OSError, ValueError) as exc:
                if strict:
                    raise ConfigError(f"--web: {exc}") from exc
                log.error("--web: %s", exc)
        self.config = new

    def _add_object(self, obj: ObjectSpec) -> None:
        self.registry.objects[obj.id] = obj.build()

    def _chardev(self, id: str) -> Chardev:
        chr = self.registry.get(id)
        if chr is None:
            raise ChardevError(f"Chardev '{id}' not found")
        return chr

    def _add_relay(self, r: RelaySpec) -> None:
        self.relays[r.id] = Relay(
            r.id, self._chardev(r.chardev), self._chardev(r.peer), notices=r.notices
        )

    def _add_monitor(self, m: MonitorSpec) -> None:
        mon = QMPMonitor(
            self._chardev(m.chardev),
            version=VERSION,
            package="iochannel",
            on_quit=self.request_stop,
        )
        register_commands(mon, self.registry, self.relays.values)
        register_storage_commands(mon, self.storage, self.registry)
        self.monitors[m.id] = mon

    async def _add_web(self, config: Config) -> None:
        web = config.web
        assert web is not None
        try:
            module = importlib.import_module("iochannel.web")
        except ImportError as exc:
            raise ConfigError(
                f"the web console is not available in this installation ({exc})"
            ) from None
        hub = self._chardev(config.web_hub() or "")
        device = next(
            (r.chardev for r in self.relays.values() if r.peer is hub),
            None,
        )
        on_resize = device.resize if isinstance(device, CommandChardev) and device.pty else None
        console = module.WebConsole(
            hub,
            web.host,
            web.port,
            rw_token=web.rw_token,
            ro_token=web.ro_token,
            tls_creds=self.registry.objects[web.tls_creds] if web.tls_creds else None,
            on_resize=on_resize,
            allowed_origins=web.allowed_origins,
            loop=self.loop,
        )
        started = console.start()
        if inspect.isawaitable(started):
            await started
        self.web = console

    def _start_exports(self, config: Config) -> None:
        for option, text in config.storage_items():
            try:
                vhost_cli.apply(self.storage, option, text)
            except vhost_cli.UsageError as exc:
                raise ConfigError(str(exc)) from None

    # ---- reloading ----------------------------------------------------------------------

    async def reload(self, new: Config) -> None:
        """Apply *new* whole, or keep the running configuration (see the module docstring)."""
        old = self.config
        gone = {
            id
            for id, spec in old.chardevs.items()
            if new.chardevs.get(id) != spec or _objects_changed(spec, old, new)
        }
        gone |= _dependents(old, gone)
        try:
            staged = self._stage(old, new, gone)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        running_objects = dict(self.registry.objects)
        self._take_down(old, new, gone)
        self.registry.objects.clear()
        self.registry.objects.update(staged.objects)
        try:
            _build_for("reload", functools.partial(self.registry.adopt, staged))
            await self._apply(new, strict=True)
        except ConfigError as exc:
            log.error("reload failed, restoring the running configuration: %s", exc)
            staged.close()  # what the registry did not adopt
            built = {id for id in new.chardevs if id in gone or id not in old.chardevs}
            self._take_down(new, old, _dependents(new, built))
            self.registry.objects.clear()
            self.registry.objects.update(running_objects)
            await self._apply(old, strict=False)
            return
        log.info("configuration reloaded: %d chardevs rebuilt or removed", len(gone))

    def _stage(self, old: Config, new: Config, gone: set[str]) -> ChardevRegistry:
        """Build what a reload can build beside the running configuration.

        Returns a registry holding every object of *new* (unchanged ones shared
        with the running registry) and the new or changed chardevs that use no
        other chardev and claim nothing a running one holds; the rest is built
        once the old part is down.  Raises :class:`ConfigError` with nothing
        left behind.
        """
        staged = ChardevRegistry(loop=self.loop)
        try:
            for id, obj in new.objects.items():
                if old.objects.get(id) == obj and id in self.registry.objects:
                    staged.objects[id] = self.registry.objects[id]
                else:
                    _build_for(
                        f"--object id={id}", functools.partial(self._stage_object, staged, obj)
                    )
            held = {claim: id for id in old.chardevs for claim in _claims(old.chardevs[id])}
            for id, spec in new.chardevs.items():
                if id not in gone and id in self.registry:
                    continue  # kept as it runs
                try:
                    never_waits(spec)
                except QMPError as exc:
                    raise ConfigError(f"{new.origin[id]}: {exc}") from None
                claims = _claims(spec)
                kept = sorted(held[c] for c in claims if c in held and held[c] not in gone)
                if kept:
                    raise ConfigError(
                        f"{new.origin[id]}: its address is in use by chardev '{kept[0]}', "
                        "which this configuration keeps"
                    )
                if _standalone(spec) and not claims & held.keys():
                    _build_for(new.origin[id], functools.partial(staged.add, spec))
        except BaseException:
            staged.close()
            raise
        return staged

    @staticmethod
    def _stage_object(staged: ChardevRegistry, obj: ObjectSpec) -> None:
        staged.objects[obj.id] = obj.build()

    def _take_down(self, old: Config, new: Config, gone: set[str]) -> None:
        relays = {
            id
            for id, r in self.relays.items()
            if old.relays.get(id) != new.relays.get(id) or {r.chardev.id, r.peer.id} & gone
        }
        hub = old.web_hub()
        # The web console resizes the device relayed to its hub: rebuilt with that relay.
        web_relay = any(self.relays[id].peer.id == hub for id in relays)
        if self.web is not None and (old.web != new.web or hub in gone or web_relay):
            self._close_web()
        for id in relays:
            self.relays.pop(id).close()
        for id, mon in list(self.monitors.items()):
            if old.monitors.get(id) != new.monitors.get(id) or mon.chardev.id in gone:
                self.monitors.pop(id).close()
        self._remove_chardevs(gone, old)

    def _remove_chardevs(self, ids: set[str], config: Config) -> None:
        """Remove *ids* (with their mux bases), users first."""
        pending = set(ids) | {f"{i}-base" for i in ids if config.chardevs.get(i, {}).get("mux")}
        pending &= set(q["label"] for q in self.registry.query())
        while pending:
            free = [i for i in pending if not self._chardev(i).busy]
            if not free:  # only a frontend outside the daemon's control could do this
                log.error("chardevs %s are still in use; closing them anyway", sorted(pending))
                free = list(pending)
            for i in free:
                pending.discard(i)
                chr = self._chardev(i)
                if chr.busy:
                    chr.close()
                else:
                    self.registry.remove(i)

    # ---- stopping -----------------------------------------------------------------------

    def request_stop(self) -> None:
        self.stopped.set()

    def _close_web(self) -> None:
        web, self.web = self.web, None
        with contextlib.suppress(Exception):  # another component: never block the shutdown
            web.close()

    async def stop(self) -> None:
        """Take everything down, users before what they use."""
        self._watcher.close()
        if self.web is not None:
            self._close_web()
        await self.storage.close()
        for mon in self.monitors.values():
            mon.close()
        self.monitors.clear()
        for relay in self.relays.values():
            relay.close()
        self.relays.clear()
        self.registry.close()
        self.registry.objects.clear()
        self.stopped.set()

    # ---- events and information ---------------------------------------------------------

    def _emit(self, name: str, data: dict[str, Any]) -> None:
        for mon in self.monitors.values():
            mon.emit(name, data)

    def endpoints(self) -> list[str]:
        """How to reach each chardev and the web console, one line each."""
        qmp = {m.chardev.id for m in self.monitors.values()}
        lines = []
        for q in self.registry.query():
            chr = self.registry.get(q["label"])
            if isinstance(chr, SocketChardev):
                for addr in chr.listen_addresses:
                    lines.append(f"{chr.id}: {_client_hint(addr, chr, chr.id in qmp)}")
            elif isinstance(chr, FileChardev):
                lines.append(f"{chr.id}: tail -f {chr.out_path}")
            elif isinstance(getattr(chr, "pty_path", None), str):
                lines.append(f"{q['label']}: screen {getattr(chr, 'pty_path', '')}")
        if self.web is not None:
            lines += [f"web ({role}): {url}" for role, url in self.web.urls.items()]
        return lines


def _client_hint(addr: Any, chr: SocketChardev, qmp: bool) -> str:
    if isinstance(addr, UnixAddress):
        # A hint is a command that works here: the first QMP client installed.
        if qmp and shutil.which("qmp-shell"):
            return f"qmp-shell {addr.path}"
        if qmp and shutil.which("socat"):
            return f"socat - UNIX-CONNECT:{addr.path}"
        # A raw terminal passes Ctrl-C and Ctrl-D on; Ctrl-] leaves the client.
        path = addr.path if "/" in addr.path or ":" not in addr.path else f"unix:{addr.path}"
        return f"{program()} console {path}"
    if isinstance(addr, InetAddress):
        host = f"[{addr.host}]" if ":" in addr.host else addr.host
        if chr.setup.websocket:
            if chr.setup.tls_creds is not None:
                return f"wss://{host}:{addr.port}/"
            return f"{program()} console ws://{host}:{addr.port}/"
        scheme = "telnet://" if chr.setup.telnet else ""
        return f"{program()} console {scheme}{host}:{addr.port}"
    return str(addr)


def _objects_changed(spec: dict[str, Any], old: Config, new: Config) -> bool:
    data = spec["backend"]["data"]
    return any(
        key in data and old.objects.get(data[key]) != new.objects.get(data[key])
        for key in ("tls-creds", "tls-authz")
    )


def _build_for(where: str, build: Callable[[], object]) -> None:
    """Run *build*; a failure becomes a :class:`ConfigError` naming *where*."""
    try:
        build()
    except ConfigError:
        raise
    except (ChardevError, OSError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _uses(spec: dict[str, Any]) -> set[str]:
    """The chardevs *spec* is built on: a mux's or hub's chardevs, a member's hub."""
    data = spec["backend"]["data"]
    uses = set(data.get("chardevs", ())) | {data.get("chardev"), spec.get("mux-be-id")}
    uses.discard(None)
    return uses


def _standalone(spec: dict[str, Any]) -> bool:
    """Buildable on its own, in a registry of its own (a reload's staging)."""
    return not _uses(spec) and spec["backend"]["type"] not in ("mux", "hub", "mux-be")


def _claims(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """What only one chardev can hold at a time: a listening unix path or port, the terminal."""
    backend = spec["backend"]
    data = backend["data"]
    if backend["type"] == "stdio":
        return {("stdio", "")}
    addr = None
    if backend["type"] == "socket" and data.get("server"):
        addr = data["addr"]
    elif backend["type"] == "udp":
        addr = data.get("local")
    if addr is None:
        return set()
    if addr["type"] == "unix":
        path = addr["data"]["path"]
        if addr["data"].get("abstract"):
            return {("abstract", path)}
        return {("unix", os.path.abspath(path))}
    port = str(addr["data"].get("port", ""))
    if addr["type"] == "inet" and port not in ("", "0"):
        return {("udp" if backend["type"] == "udp" else "tcp", port)}
    return set()


def _dependents(config: Config, ids: set[str]) -> set[str]:
    """Chardevs that must go with *ids*: hubs and muxes over them, ``mux-be`` members of them."""
    result = set(ids)
    while True:
        more = set()
        for id, spec in config.chardevs.items():
            if _uses(spec) & result:
                more.add(id)
        if more <= result:
            return result
        result |= more


# ---- the process ----------------------------------------------------------------------


async def _serve(config: Config, ready: Callable[[Daemon], None]) -> None:
    daemon = Daemon(config)
    await daemon.start()
    loop = asyncio.get_running_loop()
    reloading: set[asyncio.Task[None]] = set()

    def hup() -> None:
        if config.config_file is None:
            log.warning("SIGHUP: no --config file to reload")
            return
        task = loop.create_task(_reload(daemon, config.argv))
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
    loop.add_signal_handler(signal.SIGINT, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, hup)
    try:
        ready(daemon)
        await daemon.stopped.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for task in reloading:
            task.cancel()
        await daemon.stop()


async def _reload(daemon: Daemon, argv: list[str]) -> None:
    try:
        new = parse_args(argv)
    except ConfigError as exc:
        log.error("reload failed, keeping the running configuration: %s", exc)
        return
    await daemon.reload(new)


def _daemonize() -> int:
    """Fork twice; returns the fd to report readiness on (in the daemon)."""
    rfd, wfd = os.pipe()
    if os.fork() > 0:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            ok = r.read(1) == b"\0"
        os._exit(0 if ok else 1)
    os.close(rfd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    return wfd


def _detach_stdio() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def run(config: Config, *, banner: str = "") -> int:
    """Run *config* until SIGTERM, SIGINT or QMP ``quit``; returns the exit status."""
    ready_fd = _daemonize() if config.daemonize else -1
    wrote_pidfile = False

    def ready(daemon: Daemon) -> None:
        nonlocal wrote_pidfile
        if config.pidfile is not None:
            try:
                vhost_cli.write_pidfile(config.pidfile)
            except OSError as exc:
                raise ConfigError(f"--pidfile {config.pidfile}: {exc.strerror or exc}") from None
            wrote_pidfile = True
        lines = daemon.endpoints()
        print(banner + "".join(f"  {line}\n" for line in lines), end="", flush=True)
        if ready_fd >= 0:
            os.write(ready_fd, b"\0")
            os.close(ready_fd)
            _detach_stdio()

    try:
        asyncio.run(_serve(config, ready))
    except ConfigError as exc:
        print(f"iochannel: {exc}", file=sys.stderr)
        return 1
    finally:
        if wrote_pidfile and config.pidfile is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(config.pidfile)
    return 0
