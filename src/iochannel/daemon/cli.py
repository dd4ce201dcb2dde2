"""The daemon's configuration: QEMU-style command line and TOML file, checked as one graph.

:func:`parse_args` reads the command line; ``--config FILE`` adds a TOML file
whose entries come first.  Both end up as the same list of ``(option, text)``
items, so a TOML table and a command-line string go through the very same
parser:

* ``-chardev``/``--chardev OPTS`` — :func:`~iochannel.chardev.parse_chardev`;
* ``--object TYPE,id=ID,…`` — :mod:`.objects`;
* ``--relay chardev=A,peer=B[,id=R][,notices=on]``;
* ``--monitor [chardev=]ID[,mode=control]`` — a QMP monitor (qemu-storage-daemon's);
* ``--web [ADDR]`` or ``--web [addr=]HOST:PORT,hub=H,rw-token=…,ro-token=…,tls-creds=ID,
  allowed-origins=ORIGIN`` (or a list, ``allowed-origins.0=O,allowed-origins.1=O``);
* ``--blockdev``/``--export`` and ``--object iothread`` — :mod:`iochannel.vhost_user.cli`;
* ``--pidfile FILE``, ``--daemonize``, ``--check``, ``-T``/``--trace``, ``-V``/``--version``,
  ``--man``, ``--completion bash|zsh``.

:data:`OPTIONS` lists them: the parser, ``--help``, the manual page and the
shell completions (:mod:`.manual`) are all made from it.  An unknown option,
like an unknown key or value anywhere, is refused with the nearest known names
(:func:`iochannel._parsers.keyval.did_you_mean`).

In TOML every option is a top-level key; a value is a string in command-line
syntax, a table (keys as on the command line; ``true``/``false`` become
``on``/``off``, lists become ``key.0``, ``key.1`` …, nested tables dotted keys)
or an array of either::

    pidfile = "/run/console.pid"
    chardev = ["socket,id=vm,path=vm.sock,server=on,wait=off"]
    [[chardev]]
    backend = "hub"
    id = "viewers"
    chardevs = ["log"]

:func:`Config.check` then resolves the references (relay ends, monitor
chardevs, hub members, TLS objects, the web console's hub) and refuses a
chardev claimed twice.  Every error is a :class:`ConfigError` whose message
starts with the option and its text (or the file and entry) and names the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import shutil
import sys
import sysconfig
import textwrap
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from .._parsers import keyval
from ..block.drivers import DRIVERS
from ..block.storage import EXPORT_TYPES
from ..chardev import ChardevError, parse_chardev
from ..chardev.options import (
    address_text,
    backend_help,
    backend_names,
    options_help,
    parse_bool,
    preflight,
    settings,
)
from ..errors import ConfigurationError
from ..nbd.service import ADDRESS_TYPES
from ..vhost_user.cli import UsageError
from ..vhost_user.cli import check as check_storage
from .objects import QOM_TYPES, ObjectSpec, parse_object

__all__ = [
    "OPTIONS",
    "USAGE",
    "Config",
    "ConfigError",
    "MonitorSpec",
    "Option",
    "RelaySpec",
    "WebSpec",
    "parse_args",
    "parser",
    "program",
]

#: TOML keys and the command-line option each stands for.
_TOML_KEYS = {
    "chardev": "-chardev",
    "object": "--object",
    "relay": "--relay",
    "monitor": "--monitor",
    "web": "--web",
    "blockdev": "--blockdev",
    "export": "--export",
    "nbd-server": "--nbd-server",
}


class ConfigError(ConfigurationError):
    """A configuration error; the message names the option (or file entry) and the key."""


@dataclasses.dataclass(frozen=True)
class RelaySpec:
    id: str
    chardev: str
    peer: str
    #: Tell the peer with a line when the chardev closes and opens again.
    notices: bool = False


@dataclasses.dataclass(frozen=True)
class MonitorSpec:
    id: str
    chardev: str


@dataclasses.dataclass(frozen=True)
class WebSpec:
    #: The hub whose console is shown (``None``: the only hub).
    hub: str | None
    host: str
    port: int
    rw_token: str | None = None
    ro_token: str | None = None
    tls_creds: str | None = None
    #: Other pages (``http[s]://HOST[:PORT]``) whose scripts may open the WebSocket.
    allowed_origins: tuple[str, ...] = ()


@dataclasses.dataclass
class Config:
    """One parsed configuration; ids keep their order of appearance."""

    chardevs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    objects: dict[str, ObjectSpec] = dataclasses.field(default_factory=dict)
    relays: dict[str, RelaySpec] = dataclasses.field(default_factory=dict)
    monitors: dict[str, MonitorSpec] = dataclasses.field(default_factory=dict)
    web: WebSpec | None = None
    #: ``--blockdev``/``--export`` arguments, in order, for the vhost-user parser.
    storage: list[str] = dataclasses.field(default_factory=list)
    pidfile: str | None = None
    daemonize: bool = False
    check_only: bool = False
    #: ``-T``/``--trace`` values (see :func:`trace_logging`).
    trace: list[str] = dataclasses.field(default_factory=list)
    #: ``-V``/``--version``: print the version and exit.
    version: bool = False
    #: ``--man``: print the manual page and exit.
    man: bool = False
    #: ``--completion SHELL``: print the completion script for *SHELL* and exit.
    completion: str | None = None
    config_file: str | None = None
    #: The command line without ``--config``'s file contents (re-read on reload).
    argv: list[str] = dataclasses.field(default_factory=list)
    #: Where each chardev came from (option and text, or file and entry), for error messages.
    origin: dict[str, str] = dataclasses.field(default_factory=dict)
    #: ``-chardev help`` or ``-chardev TYPE,help``: the text to print instead of running.
    help_text: str | None = None

    # ---- adding items ------------------------------------------------------------

    def add(self, option: str, text: str, where: str) -> None:
        """Parse one option value; *where* prefixes error messages."""
        try:
            if option == "-chardev":
                help_text = _chardev_help(text)
                if help_text is None:
                    self._add_chardev(parse_chardev(text), where)
                else:
                    self.help_text = self.help_text or help_text
            elif option == "--object" and _is_iothread(text):
                self.storage += [option, text]  # the storage layer's object
            elif option == "--object":
                obj = parse_object(text)
                self._unique(self.objects, obj.id)
                self.objects[obj.id] = obj
            elif option == "--relay":
                relay = _relay(text, len(self.relays))
                self._unique(self.relays, relay.id)
                self.relays[relay.id] = relay
            elif option == "--monitor":
                mon = _monitor(text, len(self.monitors))
                self._unique(self.monitors, mon.id)
                self.monitors[mon.id] = mon
            elif option == "--web":
                if self.web is not None:
                    raise ConfigError("only one web console can be configured")
                self.web = _web(text)
            else:
                self.storage += [option, text]
                return
        except (ChardevError, keyval.KeyvalError, ConfigError) as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def _add_chardev(self, spec: dict[str, Any], where: str) -> None:
        ids = [spec["id"], f"{spec['id']}-base"] if spec.get("mux") else [spec["id"]]
        for id in ids:
            self._unique(self.chardevs, id)
        self.chardevs[spec["id"]] = spec
        self.origin[spec["id"]] = where

    @staticmethod
    def _unique(table: Mapping[str, object], id: str) -> None:
        if id in table:
            raise ConfigError(f"id '{id}' is used twice")

    # ---- references -------------------------------------------------------------------

    def check(self) -> None:
        """Resolve every reference; raise :class:`ConfigError` for the first bad one."""
        ids = set(self.chardevs) | {f"{k}-base" for k, s in self.chardevs.items() if s.get("mux")}
        users: dict[str, str] = {}

        def claim(id: str, user: str, where: str, key: str) -> None:
            if id not in ids:
                raise ConfigError(f"{where}: '{key}': no chardev with id '{id}'")
            if id in users:
                raise ConfigError(
                    f"{where}: '{key}': chardev '{id}' is already used by {users[id]}"
                )
            users[id] = user

        order = {id: i for i, id in enumerate(self.chardevs)}

        def member(id: str, owner: str, where: str, key: str) -> None:
            kind = self.chardevs[owner]["backend"]["type"]
            claim(id, f"{kind} '{owner}'", where, key)
            # Built in order, as QEMU builds them: a hub or mux finds only earlier chardevs.
            if order.get(id, -1) > order[owner]:
                raise ConfigError(f"{where}: '{key}': chardev '{id}' must be defined before it")

        for id, spec in self.chardevs.items():
            where, data = self.origin[id], spec["backend"]["data"]
            kind = spec["backend"]["type"]
            if kind == "hub":
                for i, m in enumerate(data["chardevs"]):
                    member(m, id, where, f"chardevs.{i}")
            if kind == "mux":
                member(data["chardev"], id, where, "chardev")
            if "mux-be-id" in spec:
                hub = self.chardevs.get(spec["mux-be-id"])
                if hub is None or hub["backend"]["type"] != "mux-be":
                    raise ConfigError(
                        f"{where}: 'mux-be-id': no mux-be chardev with id '{spec['mux-be-id']}'"
                    )
                users[id] = f"hub '{spec['mux-be-id']}'"
            for key in ("tls-creds", "tls-authz"):
                if key in data and data[key] not in self.objects:
                    raise ConfigError(f"{where}: '{key}': no object with id '{data[key]}'")
            try:
                preflight(spec)
            except ChardevError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        for relay in self.relays.values():
            where = f"--relay id={relay.id}"
            claim(relay.chardev, f"relay '{relay.id}'", where, "chardev")
            claim(relay.peer, f"relay '{relay.id}'", where, "peer")
        for mon in self.monitors.values():
            claim(mon.chardev, f"monitor '{mon.id}'", f"--monitor id={mon.id}", "chardev")
        if self.web is not None:
            self._check_web(self.web)
        if self.storage:
            try:
                objects = {id: obj.unloaded() for id, obj in self.objects.items()}
                check_storage(self.storage_items(), objects)
            except UsageError as exc:
                raise ConfigError(str(exc)) from None

    def storage_items(self) -> list[tuple[str, str]]:
        """The storage options (``--blockdev``, ``--export``, ``--object iothread``) in order."""
        return list(zip(self.storage[::2], self.storage[1::2], strict=True))

    def _check_web(self, web: WebSpec) -> None:
        hub = self.web_hub()
        if hub is None:
            raise ConfigError("--web: 'hub': there is no hub to show (or more than one)")
        if self.chardevs[hub]["backend"]["type"] not in ("hub", "mux-be"):
            raise ConfigError(f"--web: 'hub': chardev '{hub}' is not a hub")
        creds = self.objects.get(web.tls_creds or "")
        if web.tls_creds is not None and (creds is None or not creds.type.startswith("tls-creds")):
            raise ConfigError(f"--web: 'tls-creds': no TLS credentials with id '{web.tls_creds}'")

    def web_hub(self) -> str | None:
        """The id of the hub the web console shows: the configured one, else the only hub."""
        if self.web is None:
            return None
        if self.web.hub is not None:
            return self.web.hub if self.web.hub in self.chardevs else None
        hubs = [k for k, s in self.chardevs.items() if s["backend"]["type"] in ("hub", "mux-be")]
        return hubs[0] if len(hubs) == 1 else None

    # ---- the graph ------------------------------------------------------------------------

    def describe(self) -> str:
        """The configuration as a readable graph (what ``--check`` prints)."""
        lines = []
        if self.objects:
            lines.append("objects:")
            lines += [f"  {o.id}: {o.describe()}" for o in self.objects.values()]
        if self.chardevs:
            lines.append("chardevs:")
            width = max(len(k) for k in self.chardevs)
            for id, spec in self.chardevs.items():
                lines.append(f"  {id:<{width}}  {describe_chardev(spec)}")
        if self.relays:
            lines.append("relays:")
            for r in self.relays.values():
                lines.append(f"  {r.id}: {r.chardev} <-> {r.peer}")
        if self.monitors:
            lines.append("monitors:")
            lines += [f"  {m.id}: QMP on {m.chardev}" for m in self.monitors.values()]
        if self.web is not None:
            w = self.web
            lines.append(f"web: console of hub {self.web_hub()} at http://{w.host}:{w.port}/")
        if self.storage:
            lines.append("storage:")
            for option, text in zip(self.storage[::2], self.storage[1::2], strict=True):
                lines.append(f"  {option} {text}")
        return "\n".join(lines) + "\n"


def _chardev_help(text: str) -> str | None:
    """What ``-chardev help`` or ``-chardev TYPE,help`` prints; ``None`` for other text."""
    if text == "help":
        return backend_help()
    head = text.removesuffix("help")
    # ",help" ends the text unless its comma is the second of an escaped ",,".
    if head == text or (len(head) - len(head.rstrip(","))) % 2 == 0:
        return None
    pairs = keyval.split(head[:-1], implied="backend")
    return options_help(pairs[0][1] if pairs and pairs[0][0] == "backend" else "")


def describe_chardev(spec: Mapping[str, Any]) -> str:
    """One line about a chardev spec: its type, what it connects to, and every other setting
    that differs from the defaults."""
    kind, data = spec["backend"]["type"], spec["backend"]["data"]
    shown = {"logfile", "addr", "server", "telnet", "websocket", "tn3270", "connections"}
    if kind == "socket":
        where = ("tcp:" if data["addr"]["type"] == "inet" else "") + address_text(data["addr"])
        flags = [k for k in ("server", "telnet", "websocket", "tn3270") if data.get(k)]
        if data.get("connections", 1) > 1:
            flags.append(f"connections={data['connections']}")
        text = f"socket {where} {' '.join(flags)}".rstrip()
    elif kind == "hub":
        text = "hub of " + ", ".join(data["chardevs"])
        shown.add("chardevs")
    elif kind == "command":
        mode = "pty" if data["pty"] else "pipes"
        text = (
            f"command {shlex.join(data['argv'])} ({mode}{', restart' if data['restart'] else ''})"
        )
        shown |= {"argv", "pty", "restart"}
    elif kind == "file":
        text = f"file {data['out']}"
        shown.add("out")
    else:
        text = kind
    extra = {k: v for k, v in settings(spec).items() if k.partition(".")[0] not in shown}
    text += "".join(f" {k}={v}" for k, v in extra.items())
    if spec.get("mux"):
        text += " (mux)"
    if "mux-be-id" in spec:
        text += f" (member of {spec['mux-be-id']})"
    if data.get("logfile"):
        text += f", log {data['logfile']}"
    return text


# ---- option values --------------------------------------------------------------------


def _pairs(text: str, keys: Iterable[str], implied: str | None = None) -> dict[str, str]:
    pairs = dict(keyval.split(text, implied=implied, short_booleans=False))
    for key in pairs:
        if key not in keys:
            raise ConfigError(f"Invalid parameter '{key}'" + keyval.did_you_mean(key, keys))
    return pairs


def _is_iothread(text: str) -> bool:
    first = keyval.split(text, implied="qom-type", short_booleans=False)[:1]
    return first == [("qom-type", "iothread")]


def _trace_spec(text: str) -> tuple[str, str | None]:
    p = _pairs(text, ("enable", "events", "file"), implied="enable")
    if "events" in p:
        raise ConfigError(f"-T {text}: 'events' files are not supported; give patterns with -T")
    return p.get("enable", "*"), p.get("file")


def trace_logging(specs: Sequence[str]) -> None:
    """Map qemu-storage-daemon's ``-T [enable=]PATTERN[,file=F]`` onto logging.

    QEMU's trace events do not exist here; any ``-T`` turns on debug logging
    of the storage loggers (``iochannel.block``, ``iochannel.vhost_user``),
    written to ``file`` if given, else to stderr.
    """
    for text in specs:
        _, path = _trace_spec(text)
        handler = logging.FileHandler(path) if path else logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        for name in ("iochannel.block", "iochannel.vhost_user"):
            logger = logging.getLogger(name)
            logger.setLevel(logging.DEBUG)
            logger.addHandler(handler)


def _relay(text: str, index: int) -> RelaySpec:
    p = _pairs(text, ("chardev", "peer", "id", "notices"))
    for key in ("chardev", "peer"):
        if not p.get(key):
            raise ConfigError(f"Parameter '{key}' is missing")
    if p["chardev"] == p["peer"]:
        raise ConfigError("Parameter 'peer' must differ from 'chardev'")
    notices = parse_bool("notices", p.get("notices", "off"))
    return RelaySpec(p.get("id") or f"relay{index}", p["chardev"], p["peer"], notices)


def _monitor(text: str, index: int) -> MonitorSpec:
    p = _pairs(text, ("chardev", "mode", "id", "pretty"), implied="chardev")
    if not p.get("chardev"):
        raise ConfigError("Parameter 'chardev' is missing")
    if p.get("mode", "control") != "control":
        raise ConfigError(f"Parameter 'mode' must be 'control' (QMP), not '{p['mode']}'")
    if p.get("pretty", "off") != "off":
        raise ConfigError("Parameter 'pretty' is not supported")
    return MonitorSpec(p.get("id") or f"monitor{index}", p["chardev"])


_WEB_KEYS = ("addr", "hub", "rw-token", "ro-token", "tls-creds", "allowed-origins")


def _web(text: str) -> WebSpec:
    p = dict(keyval.split(text, implied="addr", short_booleans=False)) if text else {}
    origins = []
    for key, value in p.items():
        # One origin as allowed-origins=O, or a list as allowed-origins.0=O,... (TOML's form).
        if key == "allowed-origins" or key.startswith("allowed-origins."):
            origins.append(value)
        elif key not in _WEB_KEYS:
            raise ConfigError(f"Invalid parameter '{key}'" + keyval.did_you_mean(key, _WEB_KEYS))
    host, port = split_host_port(p.get("addr") or "127.0.0.1:8080", "addr")
    return WebSpec(
        p.get("hub"),
        host,
        port,
        p.get("rw-token"),
        p.get("ro-token"),
        p.get("tls-creds"),
        tuple(origins),
    )


def split_host_port(text: str, key: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` (localhost) or ``PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"Parameter '{key}' expects [HOST:]PORT, got '{text}'")
    return host, int(port)


# ---- TOML --------------------------------------------------------------------------


def _to_text(table: Mapping[str, Any], where: str) -> str:
    """A TOML table as command-line option text."""
    items: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        elif isinstance(value, bool):
            items.append(f"{prefix}={'on' if value else 'off'}")
        elif isinstance(value, (int, str)):
            items.append(f"{prefix}={str(value).replace(',', ',,')}")
        else:
            raise ConfigError(f"{where}: '{prefix}' has an unsupported value {value!r}")

    walk("", table)
    return ",".join(items)


def _toml_items(path: str) -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
    """The option items of a TOML file, and its scalar settings."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: {exc}") from None
    items: list[tuple[str, str, str]] = []
    settings: dict[str, Any] = {}
    for key, value in doc.items():
        if key in ("pidfile", "daemonize"):
            kind = str if key == "pidfile" else bool
            if not isinstance(value, kind):
                raise ConfigError(f"{path}: '{key}' expects a {kind.__name__}, got {value!r}")
            settings[key] = value
            continue
        if key not in _TOML_KEYS:
            raise ConfigError(
                f"{path}: unknown key '{key}' (expected one of {', '.join(_TOML_KEYS)})"
                + keyval.did_you_mean(key, [*_TOML_KEYS, "pidfile", "daemonize"])
            )
        if key == "web" and value is True:
            value = ""
        entries = value if isinstance(value, list) else [value]
        for i, entry in enumerate(entries):
            where = f"{path}: {key}[{i}]" if isinstance(value, list) else f"{path}: {key}"
            if isinstance(entry, Mapping):
                entry = _to_text(entry, where)
            if not isinstance(entry, str):
                raise ConfigError(f"{where}: expects a string or a table, got {entry!r}")
            items.append((_TOML_KEYS[key], entry, where))
    return items, settings


# ---- the command line ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


class _Ordered(argparse.Action):
    """Keep every repeatable option in one list, in command-line order."""

    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: Any, opt: Any = None
    ) -> None:
        ns.items.append((self.dest, value if value is not None else ""))


@dataclasses.dataclass(frozen=True)
class Option:
    """One command-line option: the parser, ``--help``, the man page and completion read it."""

    names: tuple[str, ...]
    #: The value's placeholder; ``""``: a flag, without a value.
    metavar: str
    help: str
    #: ``"ordered"``: repeatable, in command-line order with the others (:meth:`Config.add`);
    #: ``"append"``: repeatable; ``"optional"``: the value may be left out; ``"once"``.
    kind: str = "once"
    #: What a shell completes as the value (``--completion`` accepts only these).
    values: tuple[str, ...] = ()

    def placeholder(self) -> str:
        """The value as usage shows it: ``OPTS``, ``[ADDR]`` (may be left out) or ``""``."""
        return f"[{self.metavar}]" if self.kind == "optional" else self.metavar

    def invocation(self) -> str:
        """``-T, --trace PATTERN``: the names and the value's placeholder."""
        return " ".join([", ".join(self.names), self.placeholder()]).rstrip()


#: Every option of the daemon, in the order ``--help`` and the man page list them.
OPTIONS = (
    Option(
        ("-chardev", "--chardev"),
        "OPTS",
        "a chardev, in QEMU's -chardev syntax (also the 'command' backend); "
        "-chardev help lists the types, -chardev TYPE,help the keys of one",
        "ordered",
        (*backend_names(), "help"),
    ),
    Option(
        ("--object",),
        "OPTS",
        "an object: " + ", ".join(QOM_TYPES) + " (TYPE,id=ID,...)",
        "ordered",
        QOM_TYPES,
    ),
    Option(
        ("--relay",),
        "OPTS",
        "make chardevs A and B each other's frontend (chardev=A,peer=B[,id=R][,notices=on])",
        "ordered",
    ),
    Option(("--monitor",), "OPTS", "a QMP monitor on a chardev ([chardev=]ID)", "ordered"),
    Option(
        ("--web",),
        "ADDR",
        "the web console of a hub ([HOST:]PORT, or hub=H,addr=...,rw-token=...)",
        "optional",
    ),
    Option(
        ("--blockdev",),
        "OPTS",
        "a block node, in qemu-storage-daemon's syntax (driver=DRIVER,node-name=NAME,...)",
        "ordered",
        tuple(f"driver={d}" for d in DRIVERS),
    ),
    Option(
        ("--export",),
        "OPTS",
        "a vhost-user-blk or NBD export of a node, in qemu-storage-daemon's syntax "
        "(type=TYPE,id=ID,node-name=NAME,...)",
        "ordered",
        tuple(f"type={t}" for t in EXPORT_TYPES),
    ),
    Option(
        ("--nbd-server",),
        "OPTS",
        "the NBD server, in qemu-storage-daemon's syntax (addr.type=TYPE,...)",
        "ordered",
        tuple(f"addr.type={t}" for t in ADDRESS_TYPES),
    ),
    Option(("--config",), "FILE", "read options from a TOML file (SIGHUP reloads it)"),
    Option(("--pidfile",), "FILE", "write the pid once ready; removed on exit"),
    Option(("--daemonize",), "", "detach once ready"),
    Option(("--check",), "", "validate, print the resulting graph, and exit"),
    Option(
        ("-T", "--trace"),
        "PATTERN",
        "debug logging of the storage layer ([enable=]PATTERN[,file=F])",
        "append",
    ),
    Option(("-V", "--version"), "", "print the version and exit"),
    Option(("-h", "--help"), "", "print the usage, the options and examples, and exit"),
    Option(("--man",), "", "print the manual page (roff: iochannel --man | man -l -) and exit"),
    Option(
        ("--completion",),
        "SHELL",
        "print a completion script for bash or zsh and exit",
        values=("bash", "zsh"),
    ),
)


def parser() -> argparse.ArgumentParser:
    """The daemon's argument parser, built from :data:`OPTIONS`."""
    p = _Parser(prog="iochannel", allow_abbrev=False, add_help=False)
    p.set_defaults(items=[])
    for o in OPTIONS:
        kwargs: dict[str, Any] = {"help": o.help}
        if not o.metavar:
            kwargs["action"] = "store_true"
        elif o.kind in ("ordered", "optional"):
            kwargs.update(dest=o.names[0], action=_Ordered, metavar=o.metavar)
            if o.kind == "optional":
                kwargs["nargs"] = "?"
        elif o.kind == "append":
            kwargs.update(action="append", default=[], metavar=o.metavar)
        else:
            kwargs.update(metavar=o.metavar, choices=o.values or None)
        p.add_argument(*o.names, **kwargs)
    return p


EXAMPLES = """\
# share a VM's serial console (QEMU: -serial unix:vm.sock) with viewers on view.sock
iochannel -chardev socket,id=vm,path=vm.sock,server=on,wait=off \\
          -chardev socket,id=view,path=view.sock,server=on,wait=off,connections=8 \\
          --relay chardev=vm,peer=view
# serve a raw image over NBD, as qemu-storage-daemon does
iochannel --blockdev driver=file,node-name=disk0,filename=disk.img \\
          --nbd-server addr.type=unix,addr.path=nbd.sock \\
          --export type=nbd,id=exp0,node-name=disk0,writable=on
"""

#: Where the documentation is, for ``--help`` and the man page.
DOCUMENTATION = "README.md and docs/ in the source distribution (make docs builds the site)"


def synopsis() -> list[str]:
    """Each option as the synopsis shows it: ``[--relay OPTS]...``."""
    return [
        f"[{' '.join([o.names[0], o.placeholder()]).rstrip()}]"
        + ("..." if o.kind in ("ordered", "append") else "")
        for o in OPTIONS
    ]


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)


def _usage() -> str:
    head = "usage: iochannel "
    lines: list[str] = []
    for item in synopsis():
        if lines and len(lines[-1]) + 1 + len(item) <= 100:
            lines[-1] += " " + item
        else:
            lines.append((" " * len(head) if lines else head) + item)
    lines += [
        "       iochannel                 (no arguments: the built-in demo console)",
        "       iochannel console TARGET  (a terminal on a console: iochannel console --help)",
        "",
    ]
    width = 24
    for o in OPTIONS:
        inv = o.invocation()
        first, *rest = _wrap(o.help, 100 - width - 2)
        if len(inv) < width:
            lines.append(f"  {inv:<{width}}{first}")
        else:
            lines += [f"  {inv}", " " * (width + 2) + first]
        lines += [" " * (width + 2) + r for r in rest]
    lines += ["", "examples:", textwrap.indent(EXAMPLES, "  "), f"Documentation: {DOCUMENTATION}."]
    return "\n".join(lines) + "\n"


USAGE = _usage()


def program() -> str:
    """The command that runs this installation, as a user pastes it into a shell.

    ``iochannel`` when that name on ``PATH`` is this interpreter's script (a
    virtual environment's bin directory on ``PATH``, an installation for the
    user or the system), else ``PYTHON -m iochannel`` with this interpreter.
    """
    found = shutil.which("iochannel")
    here = {sysconfig.get_path("scripts"), sysconfig.get_path("scripts", f"{os.name}_user")}
    if found is not None and any(
        os.path.isdir(d) and os.path.samefile(os.path.dirname(found), d) for d in here
    ):
        return "iochannel"
    return f"{shlex.quote(sys.executable)} -m iochannel"


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def _unknown(arg: str) -> ConfigError:
    """The error for an argument the parser does not know, with the nearest options."""
    if not arg.startswith("-"):
        hint = keyval.did_you_mean(arg, ["console"])  # the one command word
        return ConfigError(f"unexpected argument '{arg}'{hint} (each value follows its option)")
    name = arg.partition("=")[0]
    # Matched without dashes (QEMU users write -object): -chardev is also --chardev.
    words = {n.lstrip("-") for o in OPTIONS for n in o.names if len(n) > 2}
    hint = keyval.did_you_mean(name.lstrip("-"), words, "--")
    return ConfigError(f"unknown option '{name}'{hint} (see iochannel --help)")


def parse_args(argv: Sequence[str]) -> Config:
    """The configuration of a command line (and its ``--config`` file), checked."""
    ns, extra = parser().parse_known_args(list(argv))
    if extra:
        raise _unknown(extra[0])
    config = Config(argv=list(argv), config_file=ns.config)
    if ns.config is not None:
        items, settings = _toml_items(ns.config)
        for option, text, where in items:
            config.add(option, text, where)
        config.pidfile = settings.get("pidfile")
        config.daemonize = settings.get("daemonize", False)
    for option, text in ns.items:
        config.add(option, text, f"{option} {text}".rstrip())
    config.pidfile = ns.pidfile or config.pidfile
    config.daemonize = ns.daemonize or config.daemonize
    config.check_only = ns.check
    config.version = ns.version
    config.man = ns.man
    config.completion = ns.completion
    config.trace = ns.trace
    for text in ns.trace:
        _trace_spec(text)
    if config.help_text is None:
        config.check()
    return config
