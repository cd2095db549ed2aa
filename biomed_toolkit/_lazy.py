"""Lazy re-export of public names from the modules that define them (keeps imports light)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import Any


def lazy_exports(
    module_name: str, mapping: dict[str, str], *, submodules: Iterable[str] = ()
) -> tuple[Any, Any]:
    """Return ``(__getattr__, __dir__)`` for a package or facade module.

    ``mapping`` maps a public name to the module that defines it under the same name: a full
    module path, a submodule name of ``module_name`` (``"tokenize"``), or ``"module:attribute"``
    when the names differ. ``submodules`` become attributes too. Values are cached in the
    module's namespace after the first access.
    """
    submodules = frozenset(submodules)
    namespace = sys.modules[module_name].__dict__

    def _module(path: str) -> Any:
        full = path if path.startswith("biomed_toolkit") else f"{module_name}.{path}"
        return importlib.import_module(full)

    def __getattr__(name: str) -> Any:
        if name in submodules:
            value = _module(name)
        elif name in mapping:
            mod_name, _, attr = mapping[name].partition(":")
            value = getattr(_module(mod_name), attr or name)
        else:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(mapping) | submodules)

    return __getattr__, __dir__
