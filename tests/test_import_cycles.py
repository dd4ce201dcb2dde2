"""No import cycles between the modules of iochannel.

The graph holds every ``import`` of an iochannel module, relative or
absolute, wherever it is written: at module level, inside a function (an
import deferred to break a cycle is still a cycle) and under ``if
TYPE_CHECKING:`` (a module that needs another's types to be read depends on
it as much as one that calls it).  Importing ``pkg.mod`` is an edge to
``pkg.mod``, not to ``pkg``.

A cycle fails the test with its modules in order.  Where two modules need
each other's types, the one lower down names what it uses as a
:class:`typing.Protocol` (``watch.Waitable``, ``chardev.AttachedFrontend``).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def module_files() -> dict[str, tuple[Path, bool]]:
    """Module name → (file, is a package) for every module under src/."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (path, package)
    return modules


def imports(name: str, path: Path, package: bool, known: set[str]) -> set[str]:
    """The iochannel modules that module *name* imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            for alias in node.names:
                # ``from pkg import mod`` imports the module; ``from mod import name`` the module.
                sub = f"{prefix}.{alias.name}"
                found.add(sub if sub in known else prefix)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first, unless they enclose this module.
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    for target in list(found):
        parts = target.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return (found & known) - own


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    known = set(modules)
    return {name: imports(name, path, pkg, known) for name, (path, pkg) in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_path(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle through the first module of *component*, to name in a message."""
    start = min(component)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    raise AssertionError(f"no cycle through {start}")


def test_graph_sees_relative_absolute_and_type_only_imports() -> None:
    graph = import_graph()
    assert "iochannel.chardev.options" in graph["iochannel.chardev.socket"]  # from .options
    assert "iochannel.chardev" in graph["iochannel.daemon.cli"]  # from ..chardev import
    assert "iochannel.chardev.chardev" in graph["iochannel.console._console"]  # under TYPE_CHECKING
    assert "iochannel._layers.websock" in graph["iochannel.console._console"]  # inside a function


def test_cycles_are_found_and_named() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_no_import_cycles() -> None:
    found = [" -> ".join(c) for c in cycles(import_graph())]
    assert not found, "import cycles: " + "; ".join(found)
