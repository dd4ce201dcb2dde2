"""Chardev options: the engine that reads each backend's declared schema.

Every backend class declares, in its own module, one :class:`Schema` per type
name it builds and registers it with the :func:`register_backend` class
decorator: its ``-chardev`` keys and their types, its QAPI ``backend.data``
fields with defaults, how the first become the second, its cross-field
checks, its legacy (``-serial``) forms and its factory.  This module owns no
backend: it parses, checks types and words the errors the same way for all.

Every entry point returns (or checks) one *spec*, the shape QMP's
``chardev-add`` takes::

    {"id": "c0", "backend": {"type": "socket", "data": {...}}}

with QEMU's field names and every default filled in, so a consumer never
guesses.  Two optional top-level keys carry what the command line adds beyond
``chardev-add``: ``"mux": True`` (``mux=on``: the registry builds ``<id>-base``
plus a mux ``<id>``) and ``"mux-be-id": "H"`` (join hub ``H``).

* :func:`parse_chardev` reads ``-chardev`` syntax: comma-separated
  ``key=value`` with ``,,`` standing for a comma inside a value, a first item
  without ``=`` naming the backend, booleans as ``on``/``off`` (also
  ``yes``/``no``, ``true``/``false``, ``y``/``n``), and the deprecated short
  flags ``key`` (on) and ``nokey`` (off).  A repeated key: the last one wins.
* :func:`parse_legacy` reads the short strings of ``-serial`` and friends
  (``tcp:host:port``, ``file:path``, ``/dev/ttyS0`` …); ``chardev:ID`` yields a
  :class:`ChardevRef` to an existing chardev.
* :func:`validate_spec` checks a spec given directly (QMP), filling QMP's
  defaults, which differ from the command line's for socket ``server`` and
  ``wait``.
* :func:`backend_help` and :func:`options_help` answer ``-chardev help`` and
  ``-chardev TYPE,help``; :func:`backend_names` is ``query-chardev-backends``.

Unlike QEMU, keys that the chosen backend does not use are rejected rather
than ignored, with the nearest valid names suggested.  Every problem raises
:class:`ChardevOptionError` naming the key as the user wrote it: the
``-chardev`` key for a string, ``backend.data.FIELD`` for a spec; nothing
else escapes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from .._parsers import keyval
from .._transports.address import (
    Address,
    AddressError,
    FdAddress,
    InetAddress,
    UnixAddress,
    VsockAddress,
)
from ..errors import ConfigurationError
from .chardev import Chardev, ChardevError, ClosedWrites, WhileClosed

__all__ = [
    "REQUIRED",
    "ChardevLookup",
    "ChardevOptionError",
    "ChardevRef",
    "Factory",
    "Field",
    "Names",
    "Schema",
    "address_text",
    "backend_help",
    "backend_names",
    "chardev_kwargs",
    "check_id",
    "escape",
    "host_port",
    "missing_directory",
    "options_help",
    "options_table",
    "parse_bool",
    "parse_chardev",
    "parse_keyval",
    "parse_legacy",
    "preflight",
    "qapi_address",
    "register_backend",
    "schema",
    "settings",
    "validate_spec",
]

#: Longest chardev id.
MAX_ID = 127


class ChardevOptionError(ChardevError, ConfigurationError):
    """A chardev option string or spec is invalid; the message names the key and value."""


@dataclasses.dataclass(frozen=True)
class ChardevRef:
    """``chardev:ID`` in a legacy string: the existing chardev *id*, not a new one."""

    id: str


class ChardevLookup(Protocol):
    """What a factory may use of the registry that builds a chardev."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...

    @property
    def objects(self) -> Mapping[str, object]: ...

    def get(self, id: str) -> Chardev | None: ...


#: ``factory(id, data, registry)``: a chardev, unopened, from validated ``backend.data``.
Factory = Callable[[str, Mapping[str, Any], ChardevLookup], Chardev]
#: The name the user wrote for a ``backend.data`` path (``"size"``, ``"addr.data.port"``).
Names = Callable[[str], str]

REQUIRED = object()
_ABSENT = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One QAPI field: its kind, its default (``REQUIRED``: none) and an integer's minimum."""

    kind: str  # "str", "bool", "int", "addr", "strlist" or "object"
    default: object = _ABSENT
    minimum: int = 0


def _rename(names: Mapping[str, str]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """The ``-chardev`` keys as ``backend.data`` fields: the QAPI names of *names*' values."""
    back = {cli: field for field, cli in names.items()}
    return lambda o: {back.get(k, k): v for k, v in o.items()}


@dataclasses.dataclass(frozen=True)
class Schema:
    """Everything the options engine knows of one backend type (see the module docstring)."""

    type_name: str
    #: One line for ``-chardev help``.
    summary: str
    #: ``-chardev`` keys and their kinds: ``str``, ``bool``, ``num``, ``size`` or ``port``.
    cli: Mapping[str, str]
    #: ``backend.data`` fields (the keys every backend takes are added by the engine).
    qapi: Mapping[str, Field]
    #: ``backend.data`` paths whose ``-chardev`` key has another name (``{"out": "path"}``).
    cli_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: The converted ``-chardev`` keys as ``backend.data`` (default: renamed by *cli_names*).
    from_cli: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    #: Cross-field checks of ``backend.data`` (defaults filled in); may normalise it.
    check: Callable[[dict[str, Any], Names], None] | None = None
    #: A legacy string (``file:PATH``) as ``-chardev`` text without ``id``, ``None`` if not ours.
    legacy: Callable[[str], str | None] | None = None
    #: Builds the chardev; by default the class's ``from_qapi``.
    factory: Factory | None = None
    #: A mux or a hub: it cannot be stacked on another (set from the class).
    multiplexer: bool = False
    #: What start-up would find wrong on this host (a missing directory to create a socket
    #: or a file in), checked without creating anything: ``preflight(id, data)`` raises
    #: :class:`ChardevError` with start-up's message.
    preflight: Callable[[str, Mapping[str, Any]], None] | None = None

    def cli_to_qapi(self, typed: Mapping[str, Any]) -> dict[str, Any]:
        return (self.from_cli or _rename(self.cli_names))(typed)

    def cli_name(self, path: str) -> str:
        """The ``-chardev`` key for a ``backend.data`` path (an address's key: its last part)."""
        if path in self.cli_names:
            return self.cli_names[path]
        return path.rpartition(".data.")[2]

    def build(self, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> Chardev:
        assert self.factory is not None  # register_backend sets it
        return self.factory(id, data, registry)


_BACKENDS: dict[str, Schema] = {}
_C = TypeVar("_C", bound=type[Chardev])


def register_backend(*schemas: Schema) -> Callable[[_C], _C]:
    """Class decorator: the class builds these backend types (one :class:`Schema` each).

    A schema without a factory is built by the class's ``from_qapi``.  A
    type registered again replaces the earlier one.
    """

    def register(cls: _C) -> _C:
        for s in schemas:
            factory = s.factory or getattr(cls, "from_qapi", None)
            if factory is None:
                raise TypeError(f"{cls.__name__} has no from_qapi to build '{s.type_name}'")
            _BACKENDS[s.type_name] = dataclasses.replace(
                s, factory=factory, multiplexer=cls.multiplexer
            )
        return cls

    return register


def backend_names() -> list[str]:
    """The registered backend types, sorted (``query-chardev-backends``)."""
    return sorted(_BACKENDS)


def schema(type_name: object) -> Schema:
    """The schema of *type_name*; an unknown one suggests the nearest names."""
    if isinstance(type_name, str) and type_name in _BACKENDS:
        return _BACKENDS[type_name]
    raise ChardevOptionError(
        f"'{type_name}' is not a valid char driver name" + keyval.did_you_mean(type_name, _BACKENDS)
    )


def _invalid(name: str, key: str, valid: Iterable[str]) -> ChardevOptionError:
    return ChardevOptionError(
        f"Invalid parameter '{name}'" + keyval.did_you_mean(key, valid), field=name
    )


# ---- keyval syntax ----------------------------------------------------------------


def parse_keyval(text: str, implied: str | None = None) -> list[tuple[str, str]]:
    """Split ``-chardev`` option text into ``(key, value)`` pairs (QEMU's keyval syntax)."""
    try:
        return keyval.split(text, implied=implied)
    except keyval.KeyvalError as exc:
        raise ChardevOptionError(str(exc), field=exc.field) from None


def escape(value: str) -> str:
    """*value* inside ``-chardev`` text (a comma doubled)."""
    return value.replace(",", ",,")


# ---- typed values from strings -----------------------------------------------------

_BOOLS = {"on": True, "yes": True, "true": True, "y": True}
_BOOLS.update(dict.fromkeys(("off", "no", "false", "n"), False))
_SIZE = re.compile(r"([0-9]+)([bkmgtpe]?)", re.IGNORECASE)
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def parse_bool(key: str, value: str) -> bool:
    try:
        return _BOOLS[value]
    except KeyError:
        raise ChardevOptionError(
            f"Parameter '{key}' expects 'on' or 'off', got '{value}'"
        ) from None


def _number(key: str, value: str) -> int:
    # The length check comes first: int() refuses very long digit strings.
    if not value.isascii() or not value.isdigit() or len(value) > 20 or int(value) >= 1 << 64:
        raise ChardevOptionError(f"Parameter '{key}' expects a number, got '{value}'")
    return int(value)


def _size(key: str, value: str) -> int:
    m = _SIZE.fullmatch(value)
    if m is None or not value.isascii() or len(value) > 24:
        raise ChardevOptionError(
            f"Parameter '{key}' expects a size (a number with an optional suffix "
            f"B, K, M, G, T, P or E), got '{value}'"
        )
    suffix = m.group(2).lower()
    n = int(m.group(1)) << (10 * "bkmgtpe".index(suffix)) if suffix else int(m.group(1))
    if n >= 1 << 64:
        raise ChardevOptionError(f"Parameter '{key}' is out of range, got '{value}'")
    return n


def _port(key: str, value: str) -> str:
    if _number(key, value) > 65535:
        raise ChardevOptionError(
            f"Parameter '{key}' expects a port number (0-65535), got '{value}'"
        )
    return value


def _string(key: str, value: str) -> str:
    return value


#: Each ``-chardev`` key kind: its converter and how ``help`` shows it (QEMU's words).
_KINDS: dict[str, tuple[Callable[[str, str], Any], str]] = {
    "str": (_string, "str"),
    "bool": (parse_bool, "bool (on/off)"),
    "num": (_number, "num"),
    "size": (_size, "size"),
    "port": (_port, "port"),
}

# ---- the keys every backend takes ---------------------------------------------------

_COMMON_CLI = {
    "mux": "bool",
    "mux-be-id": "str",
    "logfile": "str",
    "logappend": "bool",
    "closed-writes": "str",
    "closed-writes-limit": "size",
    "closed-writes-overflow": "str",
}
_COMMON: dict[str, Field] = {
    "logfile": Field("str"),
    "logappend": Field("bool", False),
    "closed-writes": Field("str"),
    "closed-writes-limit": Field("int"),
    "closed-writes-overflow": Field("str"),
}
#: Top-level spec keys beside ``id`` and ``backend`` (command-line extensions).
_TOP = ("mux", "mux-be-id")
_CLOSED_WRITES = ("drop", "error", "buffer")
_OVERFLOW = ("drop-oldest", "error")


def _missing(key: str) -> ChardevOptionError:
    return ChardevOptionError(f"Parameter '{key}' is missing", field=key)


# ---- the command line ------------------------------------------------------------------


def parse_chardev(text: str) -> dict[str, Any]:
    """Parse a ``-chardev`` option string into a validated spec (see module docstring)."""
    if not isinstance(text, str):
        raise ChardevOptionError(f"a chardev option string is needed, got {type(text).__name__}")
    opts = dict(parse_keyval(text, implied="backend"))
    backend = opts.pop("backend", None)
    if backend is None:
        raise _missing("backend")
    s = schema(backend)
    id = opts.pop("id", None)
    if id is None:
        raise _missing("id")
    common: dict[str, Any] = {}
    typed: dict[str, Any] = {}
    for key, value in opts.items():
        if key in _COMMON_CLI:
            common[key] = _KINDS[_COMMON_CLI[key]][0](key, value)
        elif key in s.cli:
            typed[key] = _KINDS[s.cli[key]][0](key, value)
        else:
            raise _invalid(key, key, [*s.cli, *_COMMON_CLI, "id"])
    spec: dict[str, Any] = {"id": id, "backend": {"type": backend, "data": s.cli_to_qapi(typed)}}
    for key in _TOP:
        if key in common:
            spec[key] = common.pop(key)
    spec["backend"]["data"].update(common)
    return _validate(spec, s.cli_name)


# ---- legacy strings ------------------------------------------------------------------


def host_port(text: str) -> tuple[str, str, int]:
    """``[host]:port`` at the start of *text*, up to a comma: host, port, end index."""
    end = text.find(",")
    end = len(text) if end < 0 else end
    hostport = text[:end]
    if hostport.startswith("["):
        host, sep, tail = hostport[1:].partition("]")
        if not sep or not tail.startswith(":"):
            raise ChardevOptionError(f"invalid address '{hostport}': expected [host]:port")
        return host, tail[1:], end
    host, sep, port = hostport.rpartition(":")
    if not sep or not port:
        raise ChardevOptionError(f"invalid address '{hostport}': expected [host]:port")
    return host, port, end


def _legacy_string(text: str) -> str | None:
    """The ``-chardev`` string for legacy *text* (without ``id``), or ``None`` if unknown."""
    for s in _BACKENDS.values():
        cli = s.legacy(text) if s.legacy is not None else None
        if cli is not None:
            return cli
    return None


def parse_legacy(text: str, id: str) -> dict[str, Any] | ChardevRef:
    """Parse a legacy chardev string (``-serial`` syntax) into a spec named *id*.

    ``mon:X`` multiplexes X (and turns stdio's ``signal`` off, as a monitor
    handles ^C itself); ``chardev:ID`` names an existing chardev.
    """
    if not isinstance(text, str):
        raise ChardevOptionError(f"a chardev string is needed, got {type(text).__name__}")
    if text.startswith("chardev:"):
        return ChardevRef(check_id("id", text[8:]))
    monitor = text.startswith("mon:")
    inner = text[4:] if monitor else text
    cli = _legacy_string(inner)
    if cli is None:
        raise ChardevOptionError(f"'{text}' is not a valid char driver")
    cli += f",id={escape(id)}"
    if monitor:
        cli += ",mux=on" + (",signal=off" if cli.startswith("stdio,") else "")
    return parse_chardev(cli)


# ---- QAPI specs ------------------------------------------------------------------------

_ADDRESSES: dict[str, dict[str, Field]] = {
    "inet": {
        "host": Field("str", REQUIRED),
        "port": Field("str", REQUIRED),
        "numeric": Field("bool"),
        "to": Field("int"),
        "ipv4": Field("bool"),
        "ipv6": Field("bool"),
        "keep-alive": Field("bool"),
    },
    "unix": {
        "path": Field("str", REQUIRED),
        "abstract": Field("bool"),
        "tight": Field("bool"),
    },
    "vsock": {"cid": Field("str", REQUIRED), "port": Field("str", REQUIRED)},
    "fd": {"str": Field("str", REQUIRED)},
}


def _type_error(name: str, expected: str, value: object) -> ChardevOptionError:
    return ChardevOptionError(f"Parameter '{name}' expects {expected}, got {value!r}", field=name)


def _check_dict(name: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _type_error(name or "spec", "an object", value)
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_fields(
    path: str, value: object, fields: Mapping[str, Field], name: Names
) -> dict[str, Any]:
    """Check the object at data *path* (``""``: the data itself) against *fields*."""
    obj = _check_dict(name(path) if path else "backend.data", value)
    for key in obj:
        if key not in fields:
            raise _invalid(name(_join(path, key)), key, fields)
    out: dict[str, Any] = {}
    for key, field in fields.items():
        where = _join(path, key)
        if key in obj:
            out[key] = _check_value(where, obj[key], field, name)
        elif field.default is REQUIRED:
            raise _missing(name(where))
        elif field.default is not _ABSENT:
            out[key] = field.default
    return out


def _check_value(path: str, value: object, field: Field, name: Names) -> Any:
    kind = field.kind
    if kind == "str":
        if not isinstance(value, str):
            raise _type_error(name(path), "a string", value)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(name(path), "a boolean", value)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(name(path), "an integer", value)
        if not field.minimum <= value < 1 << 64:
            raise _type_error(name(path), f"an integer of at least {field.minimum}", value)
        return value
    if kind == "object":
        return dict(_check_dict(name(path), value))
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _type_error(name(path), "a list of strings", value)
        return list(value)
    return _check_address(path, value, name)


def _check_address(path: str, value: object, name: Names) -> dict[str, Any]:
    obj = _check_dict(name(path), value)
    kind = obj.get("type")
    if kind not in _ADDRESSES:
        raise _type_error(name(f"{path}.type"), "one of " + ", ".join(_ADDRESSES), kind)
    extra = set(obj) - {"type", "data"}
    if extra:
        raise ChardevOptionError(f"Invalid parameter '{name(path)}.{sorted(extra)[0]}'")
    data = _check_fields(f"{path}.data", obj.get("data"), _ADDRESSES[kind], name)
    if kind == "inet":
        port = data["port"]
        if port.isascii() and port.isdigit():
            if len(port) > 5 or int(port) > 65535:
                raise _type_error(name(f"{path}.data.port"), "a port number (0-65535)", port)
        elif not _SERVICE.fullmatch(port):
            raise _type_error(name(f"{path}.data.port"), "a port number or service name", port)
        if not 0 <= data.get("to", 0) <= 65535:
            raise _type_error(name(f"{path}.data.to"), "a port number (0-65535)", data["to"])
    if kind == "unix" and "\0" in data["path"]:
        raise _type_error(
            name(f"{path}.data.path"), "a file name without NUL characters", data["path"]
        )
    return {"type": kind, "data": data}


def check_id(name: str, value: object) -> str:
    """A chardev id: a letter, then letters, digits, ``-``, ``.``, ``_``; at most 127."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise _type_error(
            name, "an identifier (a letter, then letters, digits, '-', '.', '_')", value
        )
    if len(value) > MAX_ID:
        raise ChardevOptionError(f"Parameter '{name}' is longer than {MAX_ID} characters")
    return value


def _check_common(data: dict[str, Any], name: Names) -> None:
    mode = data.get("closed-writes")
    if mode is not None and mode not in _CLOSED_WRITES:
        raise _type_error(name("closed-writes"), "one of " + ", ".join(_CLOSED_WRITES), mode)
    overflow = data.get("closed-writes-overflow")
    if overflow is not None and overflow not in _OVERFLOW:
        raise _type_error(
            name("closed-writes-overflow"), "one of " + ", ".join(_OVERFLOW), overflow
        )


def _qapi_name(path: str) -> str:
    return _join("backend.data", path)


def preflight(spec: Mapping[str, Any]) -> None:
    """Raise what starting the chardev of a validated *spec* would find wrong on this host.

    Nothing is created: ``--check`` and the parse before start-up report a
    missing directory as start-up would.
    """
    check = schema(spec["backend"]["type"]).preflight
    if check is not None:
        check(spec["id"], spec["backend"]["data"])


def missing_directory(id: str, key: str, path: str, what: str) -> ChardevError | None:
    """The error for a *what* (socket, file) at *path* whose directory is missing, else None."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(folder):
        return None
    return ChardevError(
        f"chardev '{id}': '{key}': cannot create the {what} {path}: directory {folder} "
        "does not exist (create it, or choose a path in an existing directory)"
    )


def validate_spec(spec: object) -> dict[str, Any]:
    """Check a spec (QMP ``chardev-add`` arguments); returns a copy with defaults filled in."""
    return _validate(spec, _qapi_name)


def _validate(spec: object, name: Names) -> dict[str, Any]:
    top = _check_dict("", spec)
    extra = set(top) - {"id", "backend", *_TOP}
    if extra:
        raise _invalid(sorted(extra)[0], sorted(extra)[0], ["id", "backend", *_TOP])
    if "id" not in top:
        raise _missing("id")
    out: dict[str, Any] = {"id": check_id("id", top["id"])}
    backend = _check_dict("backend", top.get("backend"))
    extra = set(backend) - {"type", "data"}
    if extra:
        raise ChardevOptionError(f"Invalid parameter 'backend.{sorted(extra)[0]}'")
    s = schema(backend.get("type"))
    data = _check_fields("", backend.get("data", {}), {**_COMMON, **s.qapi}, name)
    _check_common(data, name)
    if s.check is not None:
        s.check(data, name)
    out["backend"] = {"type": s.type_name, "data": data}
    if "mux" in top:
        out["mux"] = _check_value("mux", top["mux"], Field("bool"), str)
    if "mux-be-id" in top:
        out["mux-be-id"] = check_id("mux-be-id", top["mux-be-id"])
    if out.get("mux") and "mux-be-id" in out:
        raise ChardevOptionError(
            "'mux' and 'mux-be-id' cannot be combined: muxes and hubs do not stack"
        )
    if s.multiplexer and (out.get("mux") or "mux-be-id" in out):
        raise ChardevOptionError(f"a {s.type_name} cannot be stacked on a mux or a hub")
    return out


def qapi_address(addr: Mapping[str, Any]) -> Address:
    """QMP's ``SocketAddressLegacy`` (``{"type": …, "data": {…}}``) as an :class:`Address`.

    Checks the fields itself, so it also serves specs that skipped validation.
    """
    kind, data = addr.get("type"), addr.get("data", {})
    try:
        if kind == "inet":
            to = data.get("to")
            return InetAddress(
                str(data["host"]),
                str(data["port"]),
                numeric=bool(data.get("numeric", False)),
                to=int(to) if to is not None else None,
                ipv4=data.get("ipv4"),
                ipv6=data.get("ipv6"),
                keep_alive=data.get("keep-alive"),
            )
        if kind == "unix":
            return UnixAddress(
                str(data["path"]),
                bool(data.get("abstract", False)),
                bool(data.get("tight", True)),
            )
        if kind == "vsock":
            return VsockAddress(int(data["cid"]), int(data["port"]))
        if kind == "fd":
            fd = str(data["str"])
            if not fd.isdigit():
                raise ChardevOptionError(f"fd '{fd}' is not a number (named fds are not supported)")
            return FdAddress(int(fd))
    except KeyError as exc:
        raise ChardevOptionError(f"Parameter 'addr.data.{exc.args[0]}' is missing") from None
    except (AddressError, ValueError) as exc:
        raise ChardevOptionError(f"invalid socket address: {exc}") from exc
    raise ChardevOptionError(
        f"Invalid value {kind!r} for 'addr.type': expected inet, unix, vsock or fd"
    )


def chardev_kwargs(
    data: Mapping[str, Any], loop: asyncio.AbstractEventLoop | None
) -> dict[str, Any]:
    """:class:`Chardev` constructor arguments from a spec's common keys.

    ``closed-writes`` may be a mode with the flat ``closed-writes-limit`` and
    ``closed-writes-overflow`` keys (the command line) or a mapping with
    ``mode``/``limit``/``overflow`` (QMP).
    """
    kwargs: dict[str, Any] = {
        "loop": loop,
        "logfile": data.get("logfile"),
        "logappend": bool(data.get("logappend", False)),
    }
    policy = data.get("closed-writes")
    if policy is None:
        return kwargs
    if not isinstance(policy, Mapping):
        policy = {
            "mode": policy,
            "limit": data.get("closed-writes-limit", ClosedWrites.limit),
            "overflow": data.get("closed-writes-overflow", ClosedWrites.overflow),
        }
    try:
        kwargs["closed_writes"] = ClosedWrites(
            WhileClosed(policy.get("mode", "error")),
            int(policy.get("limit", ClosedWrites.limit)),
            policy.get("overflow", ClosedWrites.overflow),
        )
    except (TypeError, ValueError) as exc:
        raise ChardevOptionError(f"invalid closed-writes policy: {exc}") from exc
    return kwargs


# ---- what a spec sets, and help ------------------------------------------------------------


def _word(value: object) -> str:
    """A setting as the command line writes it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def address_text(addr: Mapping[str, Any]) -> str:
    """A valid ``SocketAddressLegacy`` in one word, then its other settings (``,ipv6=on``).

    ``HOST:PORT[-TO]`` (``[V6]:PORT``), ``unix:PATH``, ``vsock:CID:PORT`` or ``fd:N``.
    """
    kind, data = addr["type"], dict(addr["data"])
    if kind == "inet":
        host = data.pop("host")
        text = f"[{host}]:{data.pop('port')}" if ":" in host else f"{host}:{data.pop('port')}"
        text += f"-{data.pop('to')}" if "to" in data else ""
    elif kind == "unix":
        text = f"unix:{data.pop('path')}"
    elif kind == "vsock":
        text = f"vsock:{data.pop('cid')}:{data.pop('port')}"
    else:
        text = f"fd:{data.pop('str')}"
    return text + "".join(f",{k}={_word(v)}" for k, v in data.items())


def settings(spec: Mapping[str, Any]) -> dict[str, str]:
    """The ``backend.data`` fields of a valid *spec* that differ from their declared defaults,
    each written as on the command line.

    An address is one word (:func:`address_text`); other objects are
    flattened to dotted paths (``policies.log.mode``), so each entry is one
    setting that takes effect beyond the defaults.
    """
    s = schema(spec["backend"]["type"])
    fields = {**_COMMON, **s.qapi}
    out: dict[str, str] = {}

    def walk(path: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{path}.{k}", v)
        else:
            out[path] = _word(value)

    for key, value in spec["backend"]["data"].items():
        field = fields.get(key)
        if field is not None and value == field.default:
            continue
        if field is not None and field.kind == "addr":
            out[key] = address_text(value)
        else:
            walk(key, value)
    return out


def backend_help() -> str:
    """``-chardev help``: the backend types, one per line with its summary."""
    width = max(map(len, _BACKENDS))
    lines = [f"  {n:<{width}}  {_BACKENDS[n].summary}" for n in backend_names()]
    return "Available chardev backend types:\n" + "\n".join(lines) + "\n"


def _key_lines(keys: Mapping[str, str]) -> list[str]:
    return [f"  {k}=<{_KINDS[kind][1]}>" for k, kind in sorted(keys.items())]


def options_help(type_name: str) -> str:
    """``-chardev TYPE,help``: the keys of *type_name* with their types, as QEMU lists them."""
    s = schema(type_name)
    lines = [f"{s.type_name} options:", "  id=<str>", *_key_lines(s.cli)]
    lines += ["options of every backend:", *_key_lines(_COMMON_CLI)]
    return "\n".join(lines) + "\n"


def options_table() -> str:
    """Every backend's ``-chardev`` keys as a Markdown table (docs/chardev.md carries it)."""
    lines = ["| type | keys |", "|---|---|"]
    for n in backend_names():
        keys = ", ".join(f"`{k}=<{_KINDS[v][1]}>`" for k, v in sorted(_BACKENDS[n].cli.items()))
        lines.append(f"| `{n}` | {keys or '—'} |")
    return "\n".join(lines) + "\n"
