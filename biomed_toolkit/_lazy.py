"""Lazy re-export of public names from the modules that define them (keeps imports light)."""

from __future__ import annotations

import importlib
from typing import Any


def lazy_exports(module_name: str, mapping: dict[str, str]) -> tuple[Any, Any]:
    """Return ``(__getattr__, __dir__)`` for a facade module.

    ``mapping`` maps a public name to the module that defines it under the same name, or to
    ``"module:attribute"`` when the names differ.
    """

    def __getattr__(name: str) -> Any:
        target = mapping.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        mod_name, _, attr = target.partition(":")
        value = getattr(importlib.import_module(mod_name), attr or name)
        return value

    def __dir__() -> list[str]:
        return sorted(mapping)

    return __getattr__, __dir__
