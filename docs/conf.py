"""Sphinx configuration: the guides are Markdown (MyST), the reference comes from the docstrings."""

from __future__ import annotations

import glob
import importlib.metadata
import os
from typing import Any

from docutils.nodes import Element
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.ext import intersphinx

project = "iochannel"
author = "iochannel maintainers"
release = importlib.metadata.version("iochannel")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

# The docstrings are the reference: every public name, as the package exports it.
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"

# Every cross-reference must resolve (a broken one is a warning, and warnings
# are errors).  The standard library's names resolve through the inventory of
# Debian's python3-doc, read from disk: the build needs no network.
_stdlib = sorted(glob.glob("/usr/share/doc/python3*/html/objects.inv"))
if _stdlib:
    intersphinx_mapping = {"python": ("https://docs.python.org/3", _stdlib[-1])}
    nitpicky = True
elif os.environ.get("CI"):
    raise RuntimeError("the standard library's objects.inv is missing: install python3-doc")
else:
    print("docs: python3-doc is not installed, so cross-references are not checked")
nitpick_ignore = [
    # Buffer is typing_extensions' before 3.12 and absent from 3.11's inventory.
    ("py:class", "typing_extensions.Buffer"),
    ("py:class", "collections.abc.Buffer"),
    # Documented as classes only from 3.12 on.
    ("py:class", "re.Pattern"),
    ("py:class", "re.Match"),
]
nitpick_ignore_regex = [
    # Private helpers and type variables in public signatures have no page.
    ("py:.*", r"(.*\.)?_[A-Z]\w*(\.\w+)?"),
    ("py:.*", r"iochannel\..*\.(T|AnyText)"),
    # Internal types that show in a signature: the base every layer shares, what
    # a watch needs of a channel, the handshakes WebsockChannel.server/client make.
    ("py:class", r"iochannel\._layers\.layer\.LayerChannel"),
    ("py:class", r"iochannel\._core\.watch\.Waitable"),
    ("py:class", r"iochannel\._layers\.websock_handshake\.(Server|Client)Handshake"),
]

html_theme = "furo"
html_title = f"iochannel {release}"


def _public_stdlib_name(
    app: Sphinx, env: BuildEnvironment, node: Element, contnode: Element
) -> Any:
    """Resolve ``asyncio.events.X`` (where annotations say X is defined) as ``asyncio.X``."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("asyncio.events."):
        return None
    node["reftarget"] = "asyncio." + target.removeprefix("asyncio.events.")
    return intersphinx.missing_reference(app, env, node, contnode)


def setup(app: Sphinx) -> None:
    app.connect("missing-reference", _public_stdlib_name)
