"""The ``pipe`` backend: a pair of fifos, ``PATH.in`` and ``PATH.out``, or ``PATH`` itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .._transports.file import FileChannel
from .channel_backend import ChannelChardev
from .options import (
    REQUIRED,
    ChardevLookup,
    Field,
    Schema,
    chardev_kwargs,
    escape,
    register_backend,
)

__all__ = ["PipeChardev"]


def _legacy(text: str) -> str | None:
    return f"pipe,path={escape(text[5:])}" if text.startswith("pipe:") else None


@register_backend(
    Schema(
        "pipe",
        "a pair of fifos, PATH.in and PATH.out, or PATH",
        {"path": "str"},
        {"device": Field("str", REQUIRED)},
        cli_names={"device": "path"},
        legacy=_legacy,
    )
)
class PipeChardev(ChannelChardev):
    """The ``pipe`` backend: a pair of fifos, ``PATH.in`` and ``PATH.out``, or ``PATH`` itself.

    The fifos are not created here.  Each is opened read-write, so the chardev
    never sees end of input when a peer closes its end, and is open from the
    start.  When either of ``PATH.in``/``PATH.out`` cannot be opened, ``PATH`` is
    used for both directions.  Writes while closed (only after an I/O error)
    default to ``error``.
    """

    type_name: ClassVar[str] = "pipe"

    def __init__(self, id: str, path: str, **kwargs: Any) -> None:
        super().__init__(id, **kwargs)
        self.path = path
        self.filename = f"pipe:{path}"

    @classmethod
    def from_qapi(cls, id: str, data: Mapping[str, Any], registry: ChardevLookup) -> PipeChardev:
        return cls(id, data["device"], **chardev_kwargs(data, registry.loop))

    def _open(self) -> bool:
        try:
            inp = FileChannel.open(f"{self.path}.in", "r+")
        except OSError:
            inp = None
        out = None
        if inp is not None:
            try:
                out = FileChannel.open(f"{self.path}.out", "r+")
            except OSError:
                inp.close()
        if out is None:
            inp = out = FileChannel.open(self.path, "r+")
        assert inp is not None
        self._attach_channels(inp, out)
        return True
