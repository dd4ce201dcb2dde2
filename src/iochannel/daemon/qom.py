"""The part of QEMU's object tree (QOM) that qemu-storage-daemon 7.2 shows.

``qom-list`` and ``qom-get`` answer for::

    /                 container: objects, chardevs
    /objects          container: one child<iothread> per iothread
    /objects/ID       iothread: its properties, as given to object-add
    /chardevs         container: one child<chardev-TYPE> per chardev
    /chardevs/ID      chardev-TYPE: type only

Paths resolve as QEMU resolves them: an absolute path ignores empty
components (``//objects/``); a partial path (``io0``) names the one object
whose path ends with it.  Errors have QEMU's class and text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..block.storage import Storage
from ..qmp import QMPError

__all__ = ["QomTree"]


@dataclass
class _Object:
    type: str
    #: name → (QOM type, value): qom-list shows the types, qom-get the values.
    props: dict[str, tuple[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.props = {"type": ("string", self.type), **self.props}


class QomTree:
    """Builds the tree from *storage* and the chardevs (id, type) *chardevs* lists."""

    def __init__(
        self, storage: Storage, chardevs: Callable[[], Iterable[tuple[str, str]]] = lambda: ()
    ) -> None:
        self.storage = storage
        self.chardevs = chardevs

    def _objects(self) -> dict[str, _Object]:
        tree: dict[str, _Object] = {}

        def container(path: str, children: dict[str, str]) -> None:
            props = {n: (f"child<{t}>", f"{path}/{n}") for n, t in children.items()}
            tree[path or "/"] = _Object("container", props)

        container("", {"objects": "container", "chardevs": "container"})
        container("/objects", {id: "iothread" for id in self.storage.iothreads})
        for id, values in self.storage.iothread_props.items():
            tree[f"/objects/{id}"] = _Object("iothread", {k: ("int", v) for k, v in values.items()})
        chardevs = {id: f"chardev-{kind}" for id, kind in self.chardevs()}
        container("/chardevs", chardevs)
        for id, kind in chardevs.items():
            tree[f"/chardevs/{id}"] = _Object(kind)
        return tree

    def _resolve(self, path: str) -> tuple[_Object | None, bool]:
        """The object at *path* (or None) and whether a partial path was ambiguous."""
        tree = self._objects()
        parts = [p for p in path.split("/") if p]
        if path.startswith("/"):
            return tree.get("/" + "/".join(parts) if parts else "/"), False
        suffix = "/" + "/".join(parts)
        found = [obj for p, obj in tree.items() if p.endswith(suffix)] if parts else []
        return (found[0] if len(found) == 1 else None), len(found) > 1

    def qom_list(self, path: str) -> list[dict[str, str]]:
        obj, ambiguous = self._resolve(path)
        if obj is None:
            if ambiguous:
                raise QMPError(f"Path '{path}' is ambiguous")
            raise QMPError(f"Device '{path}' not found", "DeviceNotFound")
        return [{"name": name, "type": kind} for name, (kind, _) in obj.props.items()]

    def qom_get(self, path: str, prop: str) -> Any:
        obj, _ = self._resolve(path)
        if obj is None:
            raise QMPError(f"Device '{path}' not found", "DeviceNotFound")
        if prop not in obj.props:
            raise QMPError(f"Property '{obj.type}.{prop}' not found")
        return obj.props[prop][1]
