"""ChardevRegistry: the named chardevs of one program, managed as QMP manages QEMU's.

:meth:`ChardevRegistry.add` takes a spec (QMP ``chardev-add`` arguments) or a
``-chardev`` string, builds the chardev through the factory registered for
its type, opens it and keeps it under its id.  ``mux=on`` builds
``<id>-base`` plus a mux ``<id>`` over it; ``mux-be-id=H`` makes the new
chardev a member of hub ``H``.

Busy rules: a chardev attached to a frontend, or used by a mux or a hub
(its :attr:`~iochannel.chardev.Chardev.owner`), cannot be removed; a mux or
hub cannot be hot-swapped.  :meth:`change` builds the replacement first, so a
failure leaves the old chardev untouched, and rolls back when the frontend's
``be_change`` refuses.

Backends: each backend class declares its types with
:func:`~iochannel.chardev.options.register_backend`; the registry builds a
spec through the factory of its type's schema, ``factory(id, data, registry)
-> Chardev``, where *data* is the validated ``backend.data`` (defaults filled
in, common keys ``logfile``, ``logappend`` and ``closed-writes*`` included)
and *registry* is this registry as a
:class:`~iochannel.chardev.options.ChardevLookup`.  A factory returns the
chardev unopened; the registry opens it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, final

from .chardev import Chardev, ChardevBusyError, ChardevError
from .options import (
    ChardevRef,
    backend_names,
    parse_chardev,
    parse_legacy,
    schema,
    validate_spec,
)
from .ringbuf import RingbufChardev

__all__ = ["ChardevRegistry"]


@final
class ChardevRegistry:
    """Chardevs by id, with QMP's management operations (see module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self._chardevs: dict[str, Chardev] = {}
        #: Objects that specs name (``tls-creds``, ``tls-authz``), by id.
        self.objects: dict[str, object] = {}

    # ---- lookup ---------------------------------------------------------

    def get(self, id: str) -> Chardev | None:
        return self._chardevs.get(id)

    def __contains__(self, id: object) -> bool:
        return id in self._chardevs

    def __len__(self) -> int:
        return len(self._chardevs)

    def _find(self, id: str) -> Chardev:
        chr = self._chardevs.get(id)
        if chr is None:
            raise ChardevError(f"Chardev '{id}' not found")
        return chr

    # ---- creation ---------------------------------------------------------

    def add(self, spec: Mapping[str, Any] | str) -> Chardev:
        """``chardev-add``: build, open and register a chardev; returns it.

        With ``mux=on`` the mux is returned (its backend is ``<id>-base``).
        """
        checked = parse_chardev(spec) if isinstance(spec, str) else validate_spec(spec)
        id = checked["id"]
        names = [id, f"{id}-base"] if checked.get("mux") else [id]
        for name in names:
            if name in self._chardevs:
                raise ChardevError(f"Chardev with id '{name}' already exists")
        hub = None
        if "mux-be-id" in checked:
            hub = self._chardevs.get(checked["mux-be-id"])
            if hub is None or not hasattr(hub, "add_member"):
                raise ChardevError(
                    f"chardev: mux-be device can't be found by id '{checked['mux-be-id']}'"
                )
        if checked.get("mux"):
            base = self._build(f"{id}-base", checked["backend"])
            self._chardevs[base.id] = base
            try:
                mux = self._build(id, {"type": "mux", "data": {"chardev": base.id}})
            except BaseException:
                del self._chardevs[base.id]
                base.close()
                raise
            self._chardevs[id] = mux
            return mux
        chr = self._build(id, checked["backend"])
        if hub is not None:
            try:
                hub.add_member(chr)  # type: ignore[attr-defined]
            except BaseException:
                chr.close()
                raise
        self._chardevs[id] = chr
        return chr

    def chardev_add(self, spec: Mapping[str, Any] | str) -> dict[str, str]:
        """QMP's ``chardev-add`` reply: ``{"pty": path}`` for a pty, else ``{}``."""
        chr = self.add(spec)
        pty = getattr(chr, "pty_path", None)
        return {"pty": pty} if isinstance(pty, str) else {}

    def new(self, label: str, text: str) -> Chardev:
        """A chardev from a legacy string (``-serial`` syntax), as ``qemu_chr_new``.

        ``chardev:ID`` returns the existing chardev ``ID``.
        """
        spec = parse_legacy(text, label)
        if isinstance(spec, ChardevRef):
            return self._find(spec.id)
        return self.add(spec)

    def adopt(self, other: ChardevRegistry) -> None:
        """Move every chardev of *other* (built and opened there) into this registry.

        A caller can so build several chardevs apart and commit them at once,
        or drop them all with ``other.close()``.
        """
        clash = sorted(set(self._chardevs) & set(other._chardevs))
        if clash:
            raise ChardevError(f"Chardev with id '{clash[0]}' already exists")
        self._chardevs.update(other._chardevs)
        other._chardevs.clear()

    def _build(self, id: str, backend: Mapping[str, Any]) -> Chardev:
        """Create and open a chardev (not registered); nothing is left behind on failure."""
        chr = schema(backend["type"]).build(id, backend["data"], self)
        try:
            chr.open()
        except BaseException:
            chr.close()
            raise
        return chr

    # ---- management ---------------------------------------------------------

    def remove(self, id: str) -> None:
        """``chardev-remove``: close and forget a chardev that nothing uses."""
        chr = self._find(id)
        if chr.busy:
            raise ChardevBusyError(f"Chardev '{id}' is busy")
        del self._chardevs[id]
        chr.close()

    def change(self, id: str, backend: Mapping[str, Any] | str) -> Chardev:
        """``chardev-change``: replace chardev *id* by a new backend; returns the new chardev.

        *backend* is a spec's ``backend`` (``{"type", "data"}``) or a
        ``-chardev`` string without ``id``.
        """
        old = self._find(id)
        if old.multiplexer:
            raise ChardevError(f"Chardev '{id}' is a {old.type_name}: it cannot be hot-swapped")
        if old.owner is not None:
            raise ChardevBusyError(f"Chardev '{id}' is used by a mux or a hub")
        fe = old.frontends[0] if old.frontends else None
        if fe is not None and fe._be_change is None:
            raise ChardevError("Chardev user does not support chardev hotswap")
        if isinstance(backend, str):
            spec = parse_chardev(f"{backend},id={id}")
        else:
            spec = validate_spec({"id": id, "backend": backend})
        if spec.get("mux") or "mux-be-id" in spec:
            raise ChardevError(f"Chardev '{id}' cannot be changed into a mux or a hub member")
        if schema(spec["backend"]["type"]).multiplexer:
            raise ChardevError(f"Chardev '{id}' cannot be changed into a {spec['backend']['type']}")
        new = self._build(id, spec["backend"])
        if fe is not None and not fe._swap(new):
            new.close()
            raise ChardevError(f"Chardev '{id}' change failed")
        self._chardevs[id] = new
        old.close()
        return new

    def send_break(self, id: str) -> None:
        """``chardev-send-break``."""
        self._find(id).send_break()

    def query(self) -> list[dict[str, Any]]:
        """``query-chardev``: label, filename and whether a frontend has it open."""
        return [
            {
                "label": id,
                "filename": chr.filename,
                "frontend-open": any(fe.frontend_open for fe in chr.frontends),
            }
            for id, chr in self._chardevs.items()
        ]

    @staticmethod
    def backends() -> list[str]:
        """``query-chardev-backends``: the type names that can be built here."""
        return backend_names()

    def _ringbuf(self, id: str) -> RingbufChardev:
        chr = self._chardevs.get(id)
        if chr is None:
            raise ChardevError(f"Device '{id}' not found")
        if not isinstance(chr, RingbufChardev):
            raise ChardevError(f"{id} is not a ringbuf device")
        return chr

    def ringbuf_write(self, id: str, data: str, format: str = "utf8") -> None:
        """``ringbuf-write``: store *data* as if the frontend wrote it."""
        self._ringbuf(id).inject(data, format)

    def ringbuf_read(self, id: str, size: int, format: str = "utf8") -> str:
        """``ringbuf-read``: take up to *size* bytes."""
        return self._ringbuf(id).read(size, format)

    def close(self) -> None:
        """Close every chardev: users (muxes, hubs) before the chardevs they use."""
        while self._chardevs:
            users = {id(chr.owner) for chr in self._chardevs.values()}
            free = [k for k, chr in self._chardevs.items() if id(chr) not in users]
            # A cycle cannot be built through the registry; close the rest anyway.
            for key in free or list(self._chardevs):
                self._chardevs.pop(key).close()

    def __enter__(self) -> ChardevRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
