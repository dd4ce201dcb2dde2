"""Sphinx configuration: the guides are Markdown (MyST), the reference comes from the docstrings."""

from __future__ import annotations

import importlib.metadata

project = "iochannel"
author = "iochannel maintainers"
release = importlib.metadata.version("iochannel")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

# The docstrings are the reference: every public name, as the package exports it.
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
napoleon_google_docstring = False

html_theme = "furo"
html_title = f"iochannel {release}"
