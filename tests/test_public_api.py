"""The public surface: what each public package exports is deliberate.

``iochannel`` and ``iochannel.console`` are built from private modules
(``iochannel._core``, ``_transports``, ``_layers``, ``_parsers`` and
``console._*``) and re-export their public names; the other packages are
public with their modules.  This test pins each package's ``__all__`` to
``tests/public_api.txt``: a name added or removed fails it until the file
says so, so a change of the public API is always a decision.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
from pathlib import Path

import pytest

import iochannel

#: The public surface, one ``package.name`` per line.
SURFACE_FILE = Path(__file__).with_name("public_api.txt")
PACKAGES = (
    "iochannel",
    "iochannel.block",
    "iochannel.chardev",
    "iochannel.console",
    "iochannel.crypto",
    "iochannel.daemon",
    "iochannel.errors",
    "iochannel.qmp",
    "iochannel.testing",
    "iochannel.vhost_user",
    "iochannel.web",
)


#: The modules and packages directly under ``iochannel`` that are public.
PUBLIC_CHILDREN = {
    "__main__",
    "block",
    "chardev",
    "console",
    "crypto",
    "daemon",
    "errors",
    "nbd",
    "qmp",
    "testing",
    "vhost_user",
    "web",
}

#: Packages whose namespace is exactly their ``__all__`` (they only re-export).
REEXPORTING = ("iochannel", "iochannel.console")


def test_every_other_module_under_the_root_is_private() -> None:
    children = {info.name for info in pkgutil.iter_modules(iochannel.__path__)}
    public = {name for name in children if not name.startswith("_") or name == "__main__"}
    assert public == PUBLIC_CHILDREN


def test_the_packages_export_the_surface_on_file() -> None:
    """A change of the public API changes tests/public_api.txt in the same commit."""
    exported = sorted(f"{p}.{n}" for p in PACKAGES for n in importlib.import_module(p).__all__)
    on_file = SURFACE_FILE.read_text().split()
    added = sorted(set(exported) - set(on_file))
    removed = sorted(set(on_file) - set(exported))
    assert not added and not removed, f"exported, not on file: {added}; on file, gone: {removed}"
    assert len(set(exported)) == len(exported), "a name is listed twice in an __all__"


@pytest.mark.parametrize("package", PACKAGES)
def test_all_names_what_is_there(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert not name.startswith("_")
        assert hasattr(module, name), f"{package}.__all__ names {name}, which is not there"


@pytest.mark.parametrize("package", REEXPORTING)
def test_a_reexporting_package_exports_everything_it_holds(package: str) -> None:
    """A public name imported into the package but left out of __all__ is a leak."""
    module = importlib.import_module(package)
    held = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name not in ("annotations",)
    }
    assert held == set(module.__all__)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_class_and_function_states_its_contract(package: str) -> None:
    """The reference is generated from docstrings: each public name needs its own."""
    module = importlib.import_module(package)
    missing = []
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            own = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
            if not (own or "").strip():
                missing.append(name)
    assert not missing, f"{package}: no docstring for {missing}"
