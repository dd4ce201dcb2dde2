"""Reading option dictionaries the way QEMU does, from keyval text or typed QMP JSON.

Command-line values arrive as strings (``size=1048576``, ``read-only=on``);
QMP values arrive typed and must have the right JSON type.  :class:`Options`
reads either and raises :class:`BlockError` with qemu-storage-daemon's wording:
``Parameter 'X' is missing``, ``Parameter 'X' is unexpected``, ``Invalid
parameter type for 'X', expected: integer`` (QMP) or ``Parameter 'X' expects
integer`` (command line).  An unexpected key or a value outside a closed set
also names the nearest valid ones (``did you mean 'filename'?``), and a
missing key the given key that looks like its misspelling.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from .._parsers.keyval import did_you_mean
from ..errors import ConfigurationError

__all__ = ["BlockError", "Options"]


class BlockError(ConfigurationError):
    """A refused block-layer request; the message names the field and what is wrong."""


_BOOLS = {"on": True, "yes": True, "true": True, "y": True}
_BOOLS |= {"off": False, "no": False, "false": False, "n": False}


class Options:
    """Pops typed values from *values*; *typed* is true for QMP's JSON arguments."""

    def __init__(self, values: dict[str, Any], *, typed: bool, prefix: str = "") -> None:
        self.values = dict(values)
        self.typed = typed
        self.prefix = prefix
        #: Every key asked for so far: what :meth:`done` suggests instead of an unexpected one.
        self.known: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _take(self, key: str) -> Any:
        self.known.add(key)
        return self.values.pop(key, None)

    def _missing(self, key: str) -> BlockError:
        unknown = [k for k in self.values if k not in self.known]
        typo = difflib.get_close_matches(key, unknown, n=1)
        hint = f"; is '{self._name(typo[0])}' a misspelling of it?" if typo else ""
        return BlockError(f"Parameter '{self._name(key)}' is missing{hint}")

    def bad_value(self, key: str, value: str, valid: Iterable[str]) -> BlockError:
        """The error for *value* of *key*, which must be one of *valid*."""
        return BlockError(
            f"Parameter '{self._name(key)}' does not accept value '{value}'"
            + did_you_mean(value, valid)
        )

    def _wrong(self, key: str, kind: str) -> BlockError:
        if self.typed:
            return BlockError(f"Invalid parameter type for '{self._name(key)}', expected: {kind}")
        return BlockError(f"Parameter '{self._name(key)}' expects {kind}")

    def has(self, key: str) -> bool:
        return key in self.values

    def string(self, key: str, default: str | None = None) -> str:
        value = self._take(key)
        if value is None:
            if default is None:
                raise self._missing(key)
            return default
        if not isinstance(value, str):
            raise self._wrong(key, "string")
        return value

    def optional_str(self, key: str) -> str | None:
        return self.string(key) if key in self.values else None

    def boolean(self, key: str, default: bool) -> bool:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if not self.typed and isinstance(value, str) and value in _BOOLS:
            return _BOOLS[value]
        raise self._wrong(key, "boolean" if self.typed else "'on' or 'off'")

    def integer(self, key: str, default: int, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
        value = self._take(key)
        if value is None:
            return default
        if self.typed:
            if not isinstance(value, int) or isinstance(value, bool):
                raise self._wrong(key, "integer")
            number = value
        else:
            try:
                number = int(value, 0) if isinstance(value, str) else int("x")
            except ValueError:
                raise self._wrong(key, "integer") from None
        if not lo <= number <= hi:
            raise BlockError(f"Parameter '{self._name(key)}' expects a value in {lo}..{hi}")
        return number

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.bad_value(key, value, choices)
        return value

    def child(self, key: str) -> str | dict[str, Any]:
        """A reference to another node: its name, or an inline node definition."""
        value = self._take(key)
        if value is None:
            raise self._missing(key)
        if not isinstance(value, (str, dict)):
            raise self._wrong(key, "string or object")
        return value

    def items(self, key: str) -> list[Any] | None:
        """A list (QMP's JSON array, or keyval's ``key.0=…,key.1=…``); None if absent."""
        value = self._take(key)
        if value is None:
            return None
        if not self.typed and isinstance(value, dict):
            keys = [str(i) for i in range(len(value))]
            if sorted(value) != sorted(keys):
                raise BlockError(
                    f"Parameter '{self._name(key)}' expects a list: number its items "
                    f"{self._name(key)}.0, {self._name(key)}.1, ..."
                )
            return [value[k] for k in keys]
        if not isinstance(value, list):
            raise self._wrong(key, "array")
        return value

    def group(self, key: str) -> Options:
        """Nested options (``cache.direct``), read with the same typing."""
        value = self._take(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self._wrong(key, "object")
        return Options(value, typed=self.typed, prefix=f"{self._name(key)}.")

    def done(self) -> None:
        """Refuse whatever was not read."""
        if self.values:
            key = sorted(self.values)[0]
            raise BlockError(
                f"Parameter '{self._name(key)}' is unexpected"
                + did_you_mean(key, self.known, self.prefix)
            )
