"""Sans-I/O QMP server protocol: bytes in, requests out; replies and events to bytes.

Feed received bytes to :meth:`QMPServerProtocol.receive_data`, then take
messages with :meth:`~QMPServerProtocol.next_request`: in arrival order, a
:class:`Request` to execute or a ready-made error reply (``bytes``) for input
that was not a valid request.  Encode outcomes with
:meth:`reply`, :meth:`error` and :meth:`event`.  Every outgoing message is one
JSON object followed by CRLF, as QEMU sends them (clients read lines).

Session states: ``NEGOTIATING`` (only ``qmp_capabilities`` is accepted; the
greeting comes from :meth:`greeting`) then ``COMMAND``.  Events are only for
sessions in ``COMMAND`` state.

Input handling follows QEMU's rules, with bounds: the stream is split into
top-level JSON values without needing newlines; a 0xFF byte resets the parser
(clients use it to resynchronise).  Received values wait in arrival order, parse
errors keeping their place among them; :meth:`~QMPServerProtocol.next_request`
checks each against the session state *at that moment*, so ``qmp_capabilities``
followed by a command in the same write works.

Parsing is strict where Python's :mod:`json` is lenient: duplicate keys and
``NaN``/``Infinity``/``-Infinity`` (or numbers that overflow to them) are
refused.  A message over ``max_size`` bytes or nested deeper than
``max_depth`` is reported as soon as the limit is crossed; the rest of it is
then skipped without being stored, up to whichever comes first: the end of
that value (its nesting back to zero) or a newline.  Requests are checked for
shape (``execute`` string, ``arguments`` object, only known members) and, when
the command declares parameters, for missing, unexpected and mistyped
arguments — with QEMU's error messages and classes.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import RemoteProtocolError

__all__ = [
    "CommandSpec",
    "JSONSplitter",
    "QMPError",
    "QMPServerProtocol",
    "Request",
    "SessionState",
]

_WS = frozenset(b" \t\r\n")
_STRUCT = frozenset(b'{}[],:"')
# Runs of bytes that change no splitter state, by state: skipped in one step
# so a huge message costs one regex scan, not a Python iteration per byte.
_PLAIN_IN_STRING = re.compile(rb'[^"\\\xff\n]+')
_PLAIN_IN_CONTAINER = re.compile(rb'[^"{}\[\]\xff\n]+')
_PLAIN_IN_SCALAR = re.compile(rb'[^ \t\r\n{}\[\],:"\xff]+')
_BLANK = re.compile(rb"[ \t\r\n]+")


class QMPError(RemoteProtocolError):
    """The client's command is refused; becomes ``{"error": {"class": …, "desc": …}}``.

    ``error_class`` (also ``reply``) is the QMP error class; ``field`` names
    the member or argument at fault, when one is.
    """

    def __init__(
        self, desc: str, error_class: str = "GenericError", *, field: str | None = None
    ) -> None:
        super().__init__(desc, field=field, reply=error_class)
        self.desc = desc
        self.error_class = error_class


class JSONSplitter:
    """Splits a byte stream into complete top-level JSON texts (bounded, restartable).

    :meth:`~iochannel.qmp.JSONSplitter.feed` returns, in stream order, ``bytes`` for each
    complete value and :class:`QMPError` for each refused one: too large or too deep (reported
    the moment the limit is crossed, then skipped to the end of that value or
    of the line, whichever comes first), or a stray closing bracket.  Nothing
    is parsed here: only string, escape and bracket state is tracked, so a
    huge value costs no memory beyond the bound.
    """

    def __init__(self, max_size: int = 1 << 20, max_depth: int = 64) -> None:
        self.max_size = max_size
        self.max_depth = max_depth
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._scalar = False
        #: A limit was crossed: the rest of this value is skipped, not stored.
        self._discarding = False
        self._error: QMPError | None = None

    def feed(self, data: bytes) -> list[bytes | QMPError]:
        out: list[bytes | QMPError] = []
        pos, end = 0, len(data)
        while pos < end:
            pos = self._skip_plain(data, pos)
            done = False
            if pos < end:
                byte = data[pos]
                if byte == 0xFF:  # QEMU's in-band reset
                    self._reset()
                    pos += 1
                    continue
                if byte == 0x0A and self._discarding:  # a newline ends the skipping
                    self._reset()
                    pos += 1
                    continue
                consumed, done = self._step(byte)
                pos += consumed
            if self._error is not None:
                out.append(self._error)
                self._error = None
                self._discarding = True
                self._buf = bytearray()
            if done:
                if not self._discarding:
                    out.append(bytes(self._buf))
                self._reset()
        return out

    def _skip_plain(self, data: bytes, pos: int) -> int:
        """Take the run of bytes at *pos* that changes no state; returns where it ends."""
        if self._escape:
            return pos
        if self._in_string:
            pattern = _PLAIN_IN_STRING
        elif self._depth:
            pattern = _PLAIN_IN_CONTAINER
        elif self._scalar:
            pattern = _PLAIN_IN_SCALAR
        else:
            match = _BLANK.match(data, pos)  # between values: nothing to keep
            return match.end() if match else pos
        match = pattern.match(data, pos)
        if match is None:
            return pos
        self._keep(data[pos : match.end()])
        return match.end()

    def _keep(self, chunk: bytes | int) -> None:
        if self._discarding or self._error is not None:
            return
        size = 1 if isinstance(chunk, int) else len(chunk)
        if len(self._buf) + size > self.max_size:
            self._error = QMPError(
                f"JSON message size limit exceeded: a message may have at most "
                f"{self.max_size} bytes"
            )
        elif isinstance(chunk, int):
            self._buf.append(chunk)
        else:
            self._buf += chunk

    def _step(self, byte: int) -> tuple[bool, bool]:
        """Look at one byte: (consumed it, a top-level value just ended)."""
        if self._in_string:
            self._keep(byte)
            if self._escape:
                self._escape = False
            elif byte == 0x5C:  # backslash
                self._escape = True
            elif byte == 0x22:  # closing quote
                self._in_string = False
                return True, self._depth == 0
            return True, False
        if self._scalar:
            if byte in _WS or byte in _STRUCT:
                return False, True  # the byte belongs to whatever comes next
            self._keep(byte)
            return True, False
        if byte in _WS:
            if self._depth:
                self._keep(byte)
            return True, False
        if byte == 0x22:
            self._in_string = True
        elif byte in (0x7B, 0x5B):  # { [
            self._depth += 1
            if self._depth > self.max_depth and not self._discarding:
                self._error = QMPError(
                    f"JSON nesting depth limit exceeded: at most {self.max_depth} levels"
                )
        elif byte in (0x7D, 0x5D):  # } ]
            if self._depth == 0:
                self._error = QMPError(f"JSON parse error, stray '{chr(byte)}'")
                return True, True
            self._depth -= 1
            self._keep(byte)
            return True, self._depth == 0
        elif self._depth == 0:
            self._scalar = True  # a bare number or literal at top level
        self._keep(byte)
        return True, False


class SessionState(enum.Enum):
    """Where a QMP session is: capabilities negotiation, or command mode."""

    NEGOTIATING = "negotiating"
    COMMAND = "command"


@dataclasses.dataclass(frozen=True)
class CommandSpec:
    """A command's name and declared parameters (``None``: accept any arguments)."""

    name: str
    #: parameter name -> (JSON type name, required); types: str, int, bool, object, array, any
    params: Mapping[str, tuple[str, bool]] | None = None
    #: allowed before capabilities negotiation
    negotiation: bool = False


_TYPES: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    # QAPI's int is 64-bit: QEMU refuses a larger number as the wrong type.
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(1 << 63) <= v < 1 << 63,
    "bool": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "any": lambda v: True,
}
_TYPE_NAMES = {
    "str": "string",
    "int": "integer",
    "bool": "boolean",
    "object": "object",
    "array": "array",
    "any": "any",
}


@dataclasses.dataclass
class Request:
    """One command to execute; ``id`` is echoed in its reply."""

    name: str
    arguments: dict[str, Any]
    id: Any = None
    has_id: bool = False


class QMPServerProtocol:
    """One QMP session, server side (see the module docstring)."""

    def __init__(
        self,
        commands: Mapping[str, CommandSpec],
        *,
        version: tuple[int, int, int] = (0, 0, 0),
        package: str = "",
        max_size: int = 1 << 20,
    ) -> None:
        self.commands = commands
        self.version = version
        self.package = package
        self.state = SessionState.NEGOTIATING
        self._splitter = JSONSplitter(max_size=max_size)
        self._pending: collections.deque[bytes | QMPError] = collections.deque()

    def greeting(self) -> bytes:
        major, minor, micro = self.version
        return _encode(
            {
                "QMP": {
                    "version": {
                        "qemu": {"major": major, "minor": minor, "micro": micro},
                        "package": self.package,
                    },
                    "capabilities": [],
                }
            }
        )

    def reset(self) -> None:
        """A new client: back to negotiation, parser state and waiting input dropped."""
        self.state = SessionState.NEGOTIATING
        self._splitter = JSONSplitter(max_size=self._splitter.max_size)
        self._pending.clear()

    def receive_data(self, data: bytes) -> None:
        """Take received bytes; complete messages wait for :meth:`next_request`."""
        self._pending.extend(self._splitter.feed(data))

    @property
    def pending(self) -> int:
        """Messages (or parse errors) received and not yet taken by :meth:`next_request`."""
        return len(self._pending)

    def next_request(self) -> Request | bytes | None:
        """The next message in arrival order: a request to run, an error reply, or ``None``.

        Checks that depend on the session state happen here, so a caller that
        runs each request before asking for the next one sees the state that
        request left (``qmp_capabilities`` then a command, in one write).
        """
        if not self._pending:
            return None
        item = self._pending.popleft()
        if isinstance(item, QMPError):
            return self.error(None, item)
        try:
            return self._request(item)
        except _Rejected as rej:
            return self.error(rej.request_id, rej.error, has_id=rej.has_id)

    def _request(self, text: bytes) -> Request:
        try:
            msg = json.loads(
                text,
                object_pairs_hook=_unique_keys,
                parse_constant=_no_constant,
                parse_float=_finite_float,
            )
        except (ValueError, RecursionError) as exc:
            raise _Rejected(QMPError(f"JSON parse error, {exc}")) from None
        if not isinstance(msg, dict):
            raise _Rejected(QMPError("QMP input must be a JSON object"))
        has_id = "id" in msg
        rid = msg.get("id")
        for key in msg:
            if key not in ("execute", "arguments", "id", "exec-oob"):
                raise _Rejected(
                    QMPError(f"QMP input member '{key}' is unexpected", field=key), rid, has_id
                )
        if "exec-oob" in msg:
            raise _Rejected(
                QMPError(
                    "QMP input member 'exec-oob' is unexpected: out-of-band is not enabled",
                    field="exec-oob",
                ),
                rid,
                has_id,
            )
        name = msg.get("execute")
        if name is None:
            raise _Rejected(
                QMPError("QMP input lacks member 'execute'", field="execute"), rid, has_id
            )
        if not isinstance(name, str):
            raise _Rejected(
                QMPError("QMP input member 'execute' must be a string", field="execute"),
                rid,
                has_id,
            )
        args = msg.get("arguments", {})
        if not isinstance(args, dict):
            raise _Rejected(
                QMPError("QMP input member 'arguments' must be an object", field="arguments"),
                rid,
                has_id,
            )
        spec = self.commands.get(name)
        if self.state is SessionState.NEGOTIATING and (spec is None or not spec.negotiation):
            raise _Rejected(
                QMPError(
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                    "CommandNotFound",
                ),
                rid,
                has_id,
            )
        if spec is None:
            raise _Rejected(
                QMPError(
                    f"The command {name} has not been found", "CommandNotFound", field="execute"
                ),
                rid,
                has_id,
            )
        if self.state is SessionState.COMMAND and spec.negotiation and name == "qmp_capabilities":
            raise _Rejected(
                QMPError(
                    "Capabilities negotiation is already complete, command ignored",
                    "CommandNotFound",
                ),
                rid,
                has_id,
            )
        if spec.params is not None:
            _check_arguments(spec, args, rid, has_id)
        return Request(name, args, rid, has_id)

    def negotiated(self) -> None:
        """``qmp_capabilities`` succeeded: commands and events may flow."""
        self.state = SessionState.COMMAND

    # ---- encoders ---------------------------------------------------------

    def reply(self, request: Request, result: Any) -> bytes:
        msg: dict[str, Any] = {"return": {} if result is None else result}
        if request.has_id:
            msg["id"] = request.id
        return _encode(msg)

    def error(self, request: Request | Any, err: QMPError, *, has_id: bool | None = None) -> bytes:
        msg: dict[str, Any] = {"error": {"class": err.error_class, "desc": err.desc}}
        if isinstance(request, Request):
            if request.has_id:
                msg["id"] = request.id
        elif has_id:
            msg["id"] = request
        return _encode(msg)

    def event(self, name: str, data: Mapping[str, Any] | None = None) -> bytes:
        now = time.time()
        msg: dict[str, Any] = {
            "event": name,
            "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)},
        }
        if data is not None:
            msg["data"] = dict(data)
        return _encode(msg)


class _Rejected(Exception):
    def __init__(self, error: QMPError, request_id: Any = None, has_id: bool = False) -> None:
        self.error = error
        self.request_id = request_id
        self.has_id = has_id


def _check_arguments(spec: CommandSpec, args: Mapping[str, Any], rid: Any, has_id: bool) -> None:
    assert spec.params is not None
    for key in args:
        if key not in spec.params:
            raise _Rejected(QMPError(f"Parameter '{key}' is unexpected", field=key), rid, has_id)
    for key, (type_name, required) in spec.params.items():
        if key not in args:
            if required:
                raise _Rejected(QMPError(f"Parameter '{key}' is missing", field=key), rid, has_id)
            continue
        if not _TYPES[type_name](args[key]):
            raise _Rejected(
                QMPError(
                    f"Invalid parameter type for '{key}', expected: {_TYPE_NAMES[type_name]}",
                    field=key,
                ),
                rid,
                has_id,
            )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:  # QEMU refuses them; Python would keep the last one silently
            raise ValueError(f"duplicate key '{key}'")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"'{name}' is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _encode(msg: Mapping[str, Any]) -> bytes:
    return json.dumps(msg, separators=(", ", ": ")).encode() + b"\r\n"
