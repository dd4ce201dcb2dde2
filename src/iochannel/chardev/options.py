"""Chardev options: QEMU's ``-chardev`` strings, its legacy strings, and QAPI specs.

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

Unlike QEMU, keys that the chosen backend does not use are rejected rather
than ignored.  Socket specs always come out with ``reconnect-ms`` (the
deprecated ``reconnect``, in seconds, is converted).  Every problem raises
:class:`ChardevOptionError` naming the key and the value; nothing else escapes.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from .. import keyval
from ..address import Address, AddressError, FdAddress, InetAddress, UnixAddress, VsockAddress
from .chardev import ChardevError, ClosedWrites, WhileClosed

__all__ = [
    "BACKEND_TYPES",
    "REQUIRED",
    "ChardevOptionError",
    "ChardevRef",
    "Field",
    "chardev_kwargs",
    "check_ringbuf_size",
    "parse_bool",
    "parse_chardev",
    "parse_keyval",
    "parse_legacy",
    "parse_number",
    "parse_string",
    "qapi_address",
    "register_options",
    "validate_spec",
]

log = logging.getLogger(__name__)

#: Longest chardev id.
MAX_ID = 127
#: Hub members the command line names (``chardevs.0`` … ``chardevs.3``, as QEMU's);
#: a spec's list is not limited.
MAX_HUB = 4
#: Largest ``ringbuf`` size: its memory is taken whole when the chardev is created.
MAX_RINGBUF = 1 << 30


class ChardevOptionError(ChardevError, ValueError):
    """A chardev option string or spec is invalid; the message names the key and value."""


@dataclasses.dataclass(frozen=True)
class ChardevRef:
    """``chardev:ID`` in a legacy string: the existing chardev *id*, not a new one."""

    id: str


# ---- keyval syntax ----------------------------------------------------------------


def parse_keyval(text: str, implied: str | None = None) -> list[tuple[str, str]]:
    """Split ``-chardev`` option text into ``(key, value)`` pairs (see :mod:`iochannel.keyval`)."""
    try:
        return keyval.split(text, implied=implied)
    except keyval.KeyvalError as exc:
        raise ChardevOptionError(str(exc)) from None


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


def parse_number(key: str, value: str) -> int:
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
    if parse_number(key, value) > 65535:
        raise ChardevOptionError(
            f"Parameter '{key}' expects a port number (0-65535), got '{value}'"
        )
    return value


def parse_string(key: str, value: str) -> str:
    return value


Conv = Callable[[str, str], Any]

# ---- the command line: keys of every backend ---------------------------------------------

_COMMON_CLI: dict[str, Conv] = {
    "mux": parse_bool,
    "mux-be-id": parse_string,
    "logfile": parse_string,
    "logappend": parse_bool,
    "closed-writes": parse_string,
    "closed-writes-limit": _size,
    "closed-writes-overflow": parse_string,
}

_CLI_KEYS: dict[str, dict[str, Conv]] = {
    "null": {},
    "file": {
        "path": parse_string,
        "input-path": parse_string,
        "append": parse_bool,
        "timestamp": parse_bool,  # extension: a wall-clock stamp before each line
    },
    "pipe": {"path": parse_string},
    "serial": {"path": parse_string},
    "parallel": {"path": parse_string},
    "pty": {"path": parse_string},
    "stdio": {"signal": parse_bool},
    "ringbuf": {"size": _size},
    "memory": {"size": _size},
    "mux": {"chardev": parse_string},
    "hub": {
        **{f"chardevs.{i}": parse_string for i in range(MAX_HUB)},
        # Extension: each member's slow-consumer policy and its queue bound.
        **{f"policy.{i}": parse_string for i in range(MAX_HUB)},
        **{f"limit.{i}": _size for i in range(MAX_HUB)},
    },
    "mux-be": {},
    "udp": {
        "host": parse_string,
        "port": _port,
        "localaddr": parse_string,
        "localport": _port,
        "ipv4": parse_bool,
        "ipv6": parse_bool,
    },
    "socket": {
        "host": parse_string,
        "port": _port,
        "to": parse_number,
        "ipv4": parse_bool,
        "ipv6": parse_bool,
        "path": parse_string,
        "abstract": parse_bool,
        "tight": parse_bool,
        "fd": parse_string,
        "server": parse_bool,
        "wait": parse_bool,
        "nodelay": parse_bool,
        "delay": parse_bool,
        "telnet": parse_bool,
        "tn3270": parse_bool,
        "websocket": parse_bool,
        "reconnect": parse_number,
        "reconnect-ms": parse_number,
        "reconnect-max-ms": parse_number,
        "tls-creds": parse_string,
        "tls-authz": parse_string,
        "connections": parse_number,
        "handshake-timeout-ms": parse_number,
    },
}

#: Backend types this module knows (``query-chardev-backends`` lists those the registry builds).
BACKEND_TYPES = tuple(_CLI_KEYS)


def _missing(key: str) -> ChardevOptionError:
    return ChardevOptionError(f"Parameter '{key}' is missing")


def _inet(host: str, port: str, opts: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    data: dict[str, Any] = {"host": host, "port": port}
    data.update({k: opts[k] for k in keys if k in opts})
    return {"type": "inet", "data": data}


def _cli_file(o: Mapping[str, Any]) -> dict[str, Any]:
    if "path" not in o:
        raise _missing("path")
    data: dict[str, Any] = {
        "out": o["path"],
        "append": o.get("append", False),
        "timestamp": o.get("timestamp", False),
    }
    if "input-path" in o:
        data["in"] = o["input-path"]
    return data


def _cli_device(o: Mapping[str, Any]) -> dict[str, Any]:
    if "path" not in o:
        raise _missing("path")
    return {"device": o["path"]}


def _cli_same(o: Mapping[str, Any]) -> dict[str, Any]:
    return dict(o)


def _cli_hub(o: Mapping[str, Any]) -> dict[str, Any]:
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


def _cli_udp(o: Mapping[str, Any]) -> dict[str, Any]:
    if not o.get("port"):
        raise _missing("port")
    family = ("ipv4", "ipv6")
    data: dict[str, Any] = {"remote": _inet(o.get("host") or "localhost", o["port"], o, family)}
    if o.get("localaddr") or o.get("localport"):
        local = _inet(o.get("localaddr", ""), o.get("localport") or "0", o, family)
        data["local"] = local
    return data


# Socket keys that only some address kinds take.
_ADDRESS_KEYS = {
    "path": frozenset({"path", "abstract", "tight"}),
    "host": frozenset({"host", "port", "to", "ipv4", "ipv6"}),
    "fd": frozenset({"fd"}),
}
_ANY_ADDRESS_KEY = frozenset().union(*_ADDRESS_KEYS.values())


def _cli_socket(o: Mapping[str, Any]) -> dict[str, Any]:
    given = [k for k in ("path", "host", "fd") if k in o]
    if len(given) != 1:
        raise ChardevOptionError("Exactly one of 'path', 'host' or 'fd' is required")
    wrong = sorted(_ANY_ADDRESS_KEY.intersection(o) - _ADDRESS_KEYS[given[0]])
    if wrong:
        raise ChardevOptionError(f"Parameter '{wrong[0]}' cannot be used with '{given[0]}'")
    if "path" in o:
        unix = {k: o[k] for k in ("path", "abstract", "tight") if k in o}
        addr: dict[str, Any] = {"type": "unix", "data": unix}
    elif "host" in o:
        if "port" not in o:
            raise _missing("port")
        addr = _inet(o["host"], o["port"], o, ("to", "ipv4", "ipv6"))
    else:
        addr = {"type": "fd", "data": {"str": o["fd"]}}
    if "delay" in o and "nodelay" in o:
        raise ChardevOptionError("'delay' and 'nodelay' are mutually exclusive")
    server = o.get("server", False)
    data: dict[str, Any] = {
        "addr": addr,
        "server": server,
        "nodelay": o.get("nodelay", not o.get("delay", True)),
    }
    data["wait"] = o.get("wait", server)
    keep = ("telnet", "tn3270", "websocket", "reconnect", "reconnect-ms", "reconnect-max-ms")
    ours = ("connections", "handshake-timeout-ms")
    data.update({k: o[k] for k in (*keep, "tls-creds", "tls-authz", *ours) if k in o})
    return data


_CLI_BUILD: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "null": _cli_same,
    "file": _cli_file,
    "pipe": _cli_device,
    "serial": _cli_device,
    "parallel": _cli_device,
    "pty": _cli_same,
    "stdio": _cli_same,
    "ringbuf": _cli_same,
    "memory": _cli_same,
    "mux": _cli_same,
    "hub": _cli_hub,
    "mux-be": _cli_same,
    "udp": _cli_udp,
    "socket": _cli_socket,
}


def parse_chardev(text: str) -> dict[str, Any]:
    """Parse a ``-chardev`` option string into a validated spec (see module docstring)."""
    if not isinstance(text, str):
        raise ChardevOptionError(f"a chardev option string is needed, got {type(text).__name__}")
    opts = dict(parse_keyval(text, implied="backend"))
    backend = opts.pop("backend", None)
    if backend is None:
        raise _missing("backend")
    if backend not in _CLI_KEYS:
        raise ChardevOptionError(f"'{backend}' is not a valid char driver name")
    id = opts.pop("id", None)
    if id is None:
        raise _missing("id")
    keys = _CLI_KEYS[backend]
    common: dict[str, Any] = {}
    typed: dict[str, Any] = {}
    for key, value in opts.items():
        if key in _COMMON_CLI:
            common[key] = _COMMON_CLI[key](key, value)
        elif key in keys:
            typed[key] = keys[key](key, value)
        else:
            raise ChardevOptionError(f"Invalid parameter '{key}'")
    spec: dict[str, Any] = {
        "id": id,
        "backend": {"type": backend, "data": _CLI_BUILD[backend](typed)},
    }
    for key in ("mux", "mux-be-id"):
        if key in common:
            spec[key] = common.pop(key)
    spec["backend"]["data"].update(common)
    return validate_spec(spec)


# ---- legacy strings ------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, str, int]:
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

    def esc(value: str) -> str:
        return value.replace(",", ",,")

    if text in ("null", "pty", "stdio"):
        return text
    for prefix, backend in (("file:", "file"), ("pipe:", "pipe"), ("pty:", "pty")):
        if text.startswith(prefix):
            return f"{backend},path={esc(text[len(prefix) :])}"
    for prefix in ("tcp:", "telnet:", "tn3270:", "websocket:"):
        if text.startswith(prefix):
            host, port, end = _host_port(text[len(prefix) :])
            rest = text[len(prefix) + end :]
            flag = "" if prefix == "tcp:" else f",{prefix[:-1]}=on"
            return f"socket,host={esc(host)},port={esc(port)}{rest}{flag}"
    if text.startswith("unix:"):
        return f"socket,path={text[5:]}"
    if text.startswith("udp:"):
        remote, at, local = text[4:].partition("@")
        host, port, end = _host_port(remote)
        out = f"udp,host={esc(host)},port={esc(port)}"
        if end < len(remote):
            raise ChardevOptionError(f"invalid udp address '{remote}'")
        if at:
            lhost, lport, lend = _host_port(local)
            if lend < len(local):
                raise ChardevOptionError(f"invalid udp address '{local}'")
            out += f",localaddr={esc(lhost)},localport={esc(lport)}"
        return out
    if text.startswith(("/dev/parport", "/dev/ppi")):
        return f"parallel,path={esc(text)}"
    if text.startswith("/dev/"):
        return f"serial,path={esc(text)}"
    return None


def parse_legacy(text: str, id: str) -> dict[str, Any] | ChardevRef:
    """Parse a legacy chardev string (``-serial`` syntax) into a spec named *id*.

    ``mon:X`` multiplexes X (and turns stdio's ``signal`` off, as a monitor
    handles ^C itself); ``chardev:ID`` names an existing chardev.
    """
    if not isinstance(text, str):
        raise ChardevOptionError(f"a chardev string is needed, got {type(text).__name__}")
    if text.startswith("chardev:"):
        return ChardevRef(_check_id("id", text[8:]))
    monitor = text.startswith("mon:")
    inner = text[4:] if monitor else text
    cli = _legacy_string(inner)
    if cli is None:
        raise ChardevOptionError(f"'{text}' is not a valid char driver")
    cli += f",id={id.replace(',', ',,')}"
    if monitor:
        cli += ",mux=on" + (",signal=off" if cli.startswith("stdio,") else "")
    return parse_chardev(cli)


# ---- QAPI specs ------------------------------------------------------------------------

REQUIRED = object()
_ABSENT = object()


@dataclasses.dataclass(frozen=True)
class Field:
    kind: str  # "str", "bool", "int", "addr", "strlist" or "object"
    default: object = _ABSENT
    minimum: int = 0


_COMMON: dict[str, Field] = {
    "logfile": Field("str"),
    "logappend": Field("bool", False),
    "closed-writes": Field("str"),
    "closed-writes-limit": Field("int"),
    "closed-writes-overflow": Field("str"),
}
_DEVICE = {"device": Field("str", REQUIRED)}
_RINGBUF = {"size": Field("int", 65536, minimum=1)}

_QAPI: dict[str, dict[str, Field]] = {
    "null": {},
    "file": {
        "in": Field("str"),
        "out": Field("str", REQUIRED),
        "append": Field("bool", False),
        "timestamp": Field("bool", False),
    },
    "pipe": _DEVICE,
    "serial": _DEVICE,
    "parallel": _DEVICE,
    "pty": {"path": Field("str")},
    "stdio": {"signal": Field("bool", True)},
    "ringbuf": _RINGBUF,
    "memory": _RINGBUF,
    "mux": {"chardev": Field("str", REQUIRED)},
    "hub": {"chardevs": Field("strlist", REQUIRED), "policies": Field("object")},
    "mux-be": {"policies": Field("object")},
    "udp": {"remote": Field("addr", REQUIRED), "local": Field("addr")},
    "socket": {
        "addr": Field("addr", REQUIRED),
        "tls-creds": Field("str"),
        "tls-authz": Field("str"),
        "server": Field("bool", True),
        "wait": Field("bool", False),
        "nodelay": Field("bool", False),
        "telnet": Field("bool", False),
        "tn3270": Field("bool", False),
        "websocket": Field("bool", False),
        "reconnect": Field("int"),
        "reconnect-ms": Field("int"),
        "reconnect-max-ms": Field("int"),
        "connections": Field("int", 1, minimum=1),
        "handshake-timeout-ms": Field("int"),
    },
}

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

_CLOSED_WRITES = ("drop", "error", "buffer")
_OVERFLOW = ("drop-oldest", "error")


def _type_error(path: str, expected: str, value: object) -> ChardevOptionError:
    return ChardevOptionError(f"Parameter '{path}' expects {expected}, got {value!r}")


def _check_dict(path: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _type_error(path or "spec", "an object", value)
    return value


def _check_fields(path: str, value: object, fields: Mapping[str, Field]) -> dict[str, Any]:
    obj = _check_dict(path, value)
    for key in obj:
        if key not in fields:
            raise ChardevOptionError(f"Invalid parameter '{path}.{key}'")
    out: dict[str, Any] = {}
    for key, field in fields.items():
        where = f"{path}.{key}"
        if key in obj:
            out[key] = _check_value(where, obj[key], field)
        elif field.default is REQUIRED:
            raise _missing(where)
        elif field.default is not _ABSENT:
            out[key] = field.default
    return out


def _check_value(path: str, value: object, field: Field) -> Any:
    kind = field.kind
    if kind == "str":
        if not isinstance(value, str):
            raise _type_error(path, "a string", value)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(path, "a boolean", value)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(path, "an integer", value)
        if not field.minimum <= value < 1 << 64:
            raise _type_error(path, f"an integer of at least {field.minimum}", value)
        return value
    if kind == "object":
        return dict(_check_dict(path, value))
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _type_error(path, "a list of strings", value)
        return list(value)
    return _check_address(path, value)


def _check_address(path: str, value: object) -> dict[str, Any]:
    obj = _check_dict(path, value)
    kind = obj.get("type")
    if kind not in _ADDRESSES:
        raise _type_error(f"{path}.type", "one of " + ", ".join(_ADDRESSES), kind)
    extra = set(obj) - {"type", "data"}
    if extra:
        raise ChardevOptionError(f"Invalid parameter '{path}.{sorted(extra)[0]}'")
    data = _check_fields(f"{path}.data", obj.get("data"), _ADDRESSES[kind])
    if kind == "inet":
        port = data["port"]
        if port.isascii() and port.isdigit():
            if len(port) > 5 or int(port) > 65535:
                raise _type_error(f"{path}.data.port", "a port number (0-65535)", port)
        elif not _SERVICE.fullmatch(port):
            raise _type_error(f"{path}.data.port", "a port number or service name", port)
        if not 0 <= data.get("to", 0) <= 65535:
            raise _type_error(f"{path}.data.to", "a port number (0-65535)", data["to"])
    if kind == "unix" and "\0" in data["path"]:
        raise _type_error(f"{path}.data.path", "a file name without NUL characters", data["path"])
    return {"type": kind, "data": data}


def _check_id(path: str, value: object) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise _type_error(
            path, "an identifier (a letter, then letters, digits, '-', '.', '_')", value
        )
    if len(value) > MAX_ID:
        raise ChardevOptionError(f"Parameter '{path}' is longer than {MAX_ID} characters")
    return value


def _check_socket(data: dict[str, Any]) -> None:
    addr, server = data["addr"]["type"], data["server"]
    if "reconnect" in data:
        if "reconnect-ms" in data:
            raise ChardevOptionError("'reconnect' and 'reconnect-ms' are mutually exclusive")
        log.warning("chardev socket option 'reconnect' is deprecated: use 'reconnect-ms'")
        data["reconnect-ms"] = data.pop("reconnect") * 1000
    data.setdefault("reconnect-ms", 0)
    if "tls-creds" in data and (addr in ("unix", "vsock") or (addr == "fd" and not server)):
        raise ChardevOptionError(f"'tls-creds' option is incompatible with '{addr}' addresses")
    if "tls-authz" in data and "tls-creds" not in data:
        raise ChardevOptionError("'tls-authz' option requires 'tls-creds' option")
    top = data.get("reconnect-max-ms")
    if top is not None and not data["reconnect-ms"]:
        raise ChardevOptionError("'reconnect-max-ms' option requires 'reconnect-ms' option")
    if top is not None and top < data["reconnect-ms"]:
        raise ChardevOptionError(
            f"'reconnect-max-ms' ({top}) must not be below 'reconnect-ms' ({data['reconnect-ms']})"
        )
    if server:
        if data["reconnect-ms"]:
            raise ChardevOptionError(
                "'reconnect-ms' option is incompatible with socket in server listen mode"
            )
    else:
        if data["wait"]:
            raise ChardevOptionError(
                "'wait' option is incompatible with socket in client connect mode"
            )
        if data["websocket"]:
            raise ChardevOptionError("Websocket client is not implemented")
        if data["connections"] != 1:
            raise ChardevOptionError(
                "'connections' option is incompatible with socket in client connect mode"
            )


def _check_hub(data: dict[str, Any]) -> None:
    members = data["chardevs"]
    if not members:
        raise ChardevOptionError("hub: 'chardevs' list is not defined")
    for i, member in enumerate(members):
        _check_id(f"backend.data.chardevs.{i}", member)


def _check_common(data: dict[str, Any]) -> None:
    mode = data.get("closed-writes")
    if mode is not None and mode not in _CLOSED_WRITES:
        raise _type_error("closed-writes", "one of " + ", ".join(_CLOSED_WRITES), mode)
    overflow = data.get("closed-writes-overflow")
    if overflow is not None and overflow not in _OVERFLOW:
        raise _type_error("closed-writes-overflow", "one of " + ", ".join(_OVERFLOW), overflow)


def _check_mux(data: dict[str, Any]) -> None:
    _check_id("backend.data.chardev", data["chardev"])


def check_ringbuf_size(size: int) -> None:
    """QEMU's rule (a power of two) and a bound, as every ring is allocated whole at once."""
    if not 0 < size <= MAX_RINGBUF or size & (size - 1):
        raise ChardevOptionError(
            "Parameter 'size': size of ringbuf chardev must be a power of two "
            f"of at most {MAX_RINGBUF} (1G), not {size}"
        )


def _check_ringbuf(data: dict[str, Any]) -> None:
    check_ringbuf_size(data["size"])


_SEMANTICS: dict[str, Callable[[dict[str, Any]], None]] = {
    "socket": _check_socket,
    "hub": _check_hub,
    "mux": _check_mux,
    "ringbuf": _check_ringbuf,
    "memory": _check_ringbuf,
}


def validate_spec(spec: object) -> dict[str, Any]:
    """Check a spec (QMP ``chardev-add`` arguments); returns a copy with defaults filled in."""
    top = _check_dict("", spec)
    extra = set(top) - {"id", "backend", "mux", "mux-be-id"}
    if extra:
        raise ChardevOptionError(f"Invalid parameter '{sorted(extra)[0]}'")
    if "id" not in top:
        raise _missing("id")
    out: dict[str, Any] = {"id": _check_id("id", top["id"])}
    backend = _check_dict("backend", top.get("backend"))
    extra = set(backend) - {"type", "data"}
    if extra:
        raise ChardevOptionError(f"Invalid parameter 'backend.{sorted(extra)[0]}'")
    kind = backend.get("type")
    if not isinstance(kind, str) or kind not in _QAPI:
        raise ChardevOptionError(f"'{kind}' is not a valid char driver name")
    data = _check_fields("backend.data", backend.get("data", {}), {**_COMMON, **_QAPI[kind]})
    _check_common(data)
    if kind in _SEMANTICS:
        _SEMANTICS[kind](data)
    out["backend"] = {"type": kind, "data": data}
    if "mux" in top:
        out["mux"] = _check_value("mux", top["mux"], Field("bool"))
    if "mux-be-id" in top:
        out["mux-be-id"] = _check_id("mux-be-id", top["mux-be-id"])
    if out.get("mux") and "mux-be-id" in out:
        raise ChardevOptionError(
            "'mux' and 'mux-be-id' cannot be combined: muxes and hubs do not stack"
        )
    if kind in ("mux", "hub", "mux-be") and (out.get("mux") or "mux-be-id" in out):
        raise ChardevOptionError(f"a {kind} cannot be stacked on a mux or a hub")
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


def chardev_kwargs(data: Mapping[str, Any], loop: Any) -> dict[str, Any]:
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


def register_options(
    type_name: str,
    *,
    cli_keys: Mapping[str, Conv],
    cli_build: Callable[[Mapping[str, Any]], dict[str, Any]],
    qapi: Mapping[str, Field],
    check: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Teach the parser a backend type defined outside this module.

    *cli_keys* converts each ``-chardev`` key, *cli_build* turns the converted
    keys into the QAPI ``data`` object, *qapi* declares that object's fields
    (type, default, bounds) and *check* validates across fields.  Both the
    command line and QMP ``chardev-add`` then go through the same checks.
    """
    _CLI_KEYS[type_name] = dict(cli_keys)
    _CLI_BUILD[type_name] = cli_build
    _QAPI[type_name] = dict(qapi)
    if check is not None:
        _SEMANTICS[type_name] = check
