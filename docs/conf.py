"""Sphinx configuration: API reference built from the numpydoc docstrings."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("MPLBACKEND", "Agg")

project = "biomed_toolkit"
author = "biomed_toolkit authors"
release = "0.1.0"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
exclude_patterns = ["_build", "helper_brief.md", "architecture.md"]
html_theme = "alabaster"
suppress_warnings = ["ref.python", "docutils"]
nitpicky = False
napoleon_use_ivar = True
