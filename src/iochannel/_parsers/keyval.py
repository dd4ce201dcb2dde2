"""QEMU's ``key=value,…`` option syntax, shared by every command-line parser.

:func:`split` turns option text into ``(key, value)`` pairs in order: items
are separated by ``,`` and ``,,`` is a literal comma inside a value.  QEMU has
two dialects and both are here:

* the ``-chardev`` (QemuOpts) dialect, ``split(text, implied="backend")``: a
  first item without ``=`` is the value of the *implied* key, and later items
  without ``=`` are the deprecated short booleans (``server`` → on,
  ``nowait`` → ``wait`` off), accepted with a logged warning;
* the strict dialect of ``--blockdev``/``--export`` (``short_booleans=False``),
  where every item needs ``=`` and :func:`to_tree` nests dotted keys
  (``addr.path=…``).

Malformed text raises :class:`KeyvalError` naming the offending part;
:func:`did_you_mean` words the nearest valid names for any parser's error
about an unknown key or value.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigurationError

__all__ = ["KeyvalError", "did_you_mean", "split", "to_tree"]

log = logging.getLogger(__name__)

_NAME_END = re.compile("[=,]")


class KeyvalError(ConfigurationError):
    """Option text that is not ``key=value,…``; ``field`` is the key at fault."""


def split(
    text: str, *, implied: str | None = None, short_booleans: bool = True
) -> list[tuple[str, str]]:
    """``(key, value)`` pairs of *text*, in order (see the module docstring)."""
    pairs: list[tuple[str, str]] = []
    pos, end = 0, len(text)
    while pos < end:
        m = _NAME_END.search(text, pos)
        stop = m.start() if m else end
        if stop < end and text[stop] == "=":
            key = text[pos:stop]
            if not key:
                raise KeyvalError(f"invalid parameter name '' at '{text[pos:]}'", field="")
            value, pos = _read_value(text, stop + 1)
        elif not pairs and implied is not None:
            key = implied
            value, pos = _read_value(text, pos)
        elif short_booleans:
            key, pos = text[pos:stop], stop + 1
            key, value = (key[2:], "off") if key.startswith("no") else (key, "on")
            log.warning("short-form boolean option '%s' is deprecated: use %s=%s", key, key, value)
        else:
            raise KeyvalError(f"expected 'key=value' at '{text[pos:]}'", field=text[pos:stop])
        pairs.append((key, value))
    return pairs


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """A value up to the next single comma (``,,`` is a literal comma); returns the next start."""
    out = []
    while pos < len(text):
        comma = text.find(",", pos)
        if comma < 0:
            out.append(text[pos:])
            return "".join(out), len(text)
        out.append(text[pos:comma])
        if text.startswith(",,", comma):
            out.append(",")
            pos = comma + 2
        else:
            return "".join(out), comma + 1
    return "".join(out), pos


def to_tree(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Nest dotted keys: ``[("addr.path", "s")]`` → ``{"addr": {"path": "s"}}``."""
    tree: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.split(".")
        if not all(parts):
            raise KeyvalError(f"invalid parameter name '{key}'", field=key)
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise KeyvalError(f"'{key}' conflicts with '{part}={child}'", field=key)
            node = child
        leaf = parts[-1]
        if leaf in node:
            raise KeyvalError(f"'{key}' given twice", field=key)
        node[leaf] = value
    return tree


def did_you_mean(given: object, valid: Iterable[str], prefix: str = "") -> str:
    """``"; did you mean 'x'?"`` naming the valid names nearest to *given*, else ``""``.

    Appended to an error about an unknown key or value, so every parser
    suggests the same way.  *prefix* is written before each suggestion (the
    path of a nested key) but takes no part in the likeness.
    """
    if not isinstance(given, str):
        return ""
    close = difflib.get_close_matches(given, list(valid), n=3)
    if not close:
        return ""
    return "; did you mean " + " or ".join(f"'{prefix}{c}'" for c in close) + "?"
