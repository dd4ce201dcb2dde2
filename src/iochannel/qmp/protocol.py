"""Sans-I/O QMP server protocol: bytes in, requests out; replies and events to bytes.

Feed received bytes to :meth:`QMPServerProtocol.receive_data`; it returns, in
order, :class:`Request` objects to execute and ready-made error replies
(``bytes``) for input that was not a valid request.  Encode outcomes with
:meth:`reply`, :meth:`error` and :meth:`event`.  Every outgoing message is one
JSON object followed by CRLF, as QEMU sends them (clients read lines).

Session states: ``NEGOTIATING`` (only ``qmp_capabilities`` is accepted; the
greeting comes from :meth:`greeting`) then ``COMMAND``.  Events are only for
sessions in ``COMMAND`` state.

Input handling follows QEMU's rules, with bounds: the stream is split into
top-level JSON values without needing newlines; a 0xFF byte resets the parser
(clients use it to resynchronise); a message over ``max_size`` bytes or
nested deeper than ``max_depth`` is discarded with an error reply instead of
being buffered.  Requests are checked for shape (``execute`` string,
``arguments`` object, only known members) and, when the command declares
parameters, for missing, unexpected and mistyped arguments — with QEMU's error
messages and classes.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

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


class QMPError(Exception):
    """A command failed; becomes ``{"error": {"class": …, "desc": …}}``."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class


class JSONSplitter:
    """Splits a byte stream into complete top-level JSON texts (bounded, restartable).

    :meth:`feed` returns ``bytes`` for each complete value and
    :class:`QMPError` for each discarded one (too large, too deep, stray
    closing bracket).  Nothing is parsed here: only string, escape and
    bracket state is tracked, so a huge value costs no memory beyond the bound.
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
        self._error: QMPError | None = None

    def feed(self, data: bytes) -> list[bytes | QMPError]:
        out: list[bytes | QMPError] = []
        i, end = 0, len(data)
        while i < end:
            byte = data[i]
            if byte == 0xFF:  # QEMU's in-band reset
                self._reset()
                i += 1
                continue
            consumed, done = self._step(byte)
            i += consumed
            if done:
                out.append(self._error or bytes(self._buf))
                self._reset()
        return out

    def _keep(self, byte: int) -> None:
        if self._error is not None:
            return
        if len(self._buf) >= self.max_size:
            self._error = QMPError(f"JSON message is larger than {self.max_size} bytes")
            self._buf = bytearray()
        else:
            self._buf.append(byte)

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
            if self._depth > self.max_depth and self._error is None:
                self._error = QMPError(f"JSON nesting is deeper than {self.max_depth} levels")
        elif byte in (0x7D, 0x5D):  # } ]
            if self._depth == 0:
                self._error = QMPError("JSON parse error, stray closing bracket")
                return True, True
            self._depth -= 1
            self._keep(byte)
            return True, self._depth == 0
        elif self._depth == 0:
            self._scalar = True  # a bare number or literal at top level
        self._keep(byte)
        return True, False


class SessionState(enum.Enum):
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
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
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
    """One command to execute; :attr:`id` is echoed in its reply."""

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
        """A new client: back to negotiation, parser state dropped."""
        self.state = SessionState.NEGOTIATING
        self._splitter = JSONSplitter(max_size=self._splitter.max_size)

    def receive_data(self, data: bytes) -> list[Request | bytes]:
        out: list[Request | bytes] = []
        for item in self._splitter.feed(data):
            if isinstance(item, QMPError):
                out.append(self.error(None, item))
                continue
            try:
                out.append(self._request(item))
            except _Rejected as rej:
                out.append(self.error(rej.request_id, rej.error, has_id=rej.has_id))
        return out

    def _request(self, text: bytes) -> Request:
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise _Rejected(QMPError(f"JSON parse error, {exc}")) from None
        if not isinstance(msg, dict):
            raise _Rejected(QMPError("QMP input must be a JSON object"))
        has_id = "id" in msg
        rid = msg.get("id")
        for key in msg:
            if key not in ("execute", "arguments", "id", "exec-oob"):
                raise _Rejected(QMPError(f"QMP input member '{key}' is unexpected"), rid, has_id)
        if "exec-oob" in msg:
            raise _Rejected(
                QMPError("QMP input member 'exec-oob' is unexpected: out-of-band is not enabled"),
                rid,
                has_id,
            )
        name = msg.get("execute")
        if name is None:
            raise _Rejected(QMPError("QMP input lacks member 'execute'"), rid, has_id)
        if not isinstance(name, str):
            raise _Rejected(QMPError("QMP input member 'execute' must be a string"), rid, has_id)
        args = msg.get("arguments", {})
        if not isinstance(args, dict):
            raise _Rejected(QMPError("QMP input member 'arguments' must be an object"), rid, has_id)
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
                QMPError(f"The command {name} has not been found", "CommandNotFound"), rid, has_id
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
            raise _Rejected(QMPError(f"Parameter '{key}' is unexpected"), rid, has_id)
    for key, (type_name, required) in spec.params.items():
        if key not in args:
            if required:
                raise _Rejected(QMPError(f"Parameter '{key}' is missing"), rid, has_id)
            continue
        if not _TYPES[type_name](args[key]):
            raise _Rejected(
                QMPError(f"Invalid parameter type for '{key}', expected: {_TYPE_NAMES[type_name]}"),
                rid,
                has_id,
            )


def _encode(msg: Mapping[str, Any]) -> bytes:
    return json.dumps(msg, separators=(", ", ": ")).encode() + b"\r\n"
