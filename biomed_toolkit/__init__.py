"""biomed_toolkit: IBM biomedical foundation models (BMFM-RNA, MAMMAL, dual-view mammography)
in Jupyter, with scanpy-style tools, plots, widgets and training helpers.

>>> import biomed_toolkit as bt
>>> bt.settings.device = "auto"
>>> bt.hub.list_models()  # doctest: +SKIP

Sub-modules load on first attribute access so that ``import biomed_toolkit`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = {
    "hub": "biomed_toolkit.core.hub",
    "train": "biomed_toolkit.core.train",
    "tl": "biomed_toolkit.tl",
    "pl": "biomed_toolkit.pl",
    "widgets": "biomed_toolkit.widgets",
    "datasets": "biomed_toolkit.datasets",
    "rna": "biomed_toolkit.rna",
    "mammal": "biomed_toolkit.mammal",
    "mammo": "biomed_toolkit.mammo",
    "core": "biomed_toolkit.core",
}

#: Each model family's registry module (official checkpoints, allowed pickle classes). Core reads
#: this mapping instead of importing domains; a new family adds one line here.
FAMILY_REGISTRIES: dict[str, str] = {
    "bmfm-rna": "biomed_toolkit.rna.registry",
    "mammal": "biomed_toolkit.mammal.registry",
    "mammo": "biomed_toolkit.mammo.registry",
}

__all__ = [
    "settings", "__version__", "hub", "train", "tl", "pl", "widgets", "datasets", "rna", "mammal",
    "mammo", "core",
]

if TYPE_CHECKING:  # pragma: no cover
    from . import datasets, mammal, mammo, pl, rna, tl, widgets
    from .core import hub, train
    from .core.settings import settings


def __getattr__(name: str) -> Any:
    if name == "settings":
        from .core.settings import settings

        return settings
    if name in _SUBMODULES:
        module = importlib.import_module(_SUBMODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'biomed_toolkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
