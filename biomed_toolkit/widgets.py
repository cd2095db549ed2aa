"""Interactive notebook widgets (ipywidgets 8, plotly FigureWidget)."""

from __future__ import annotations

from ._lazy import lazy_exports

_EXPORTS = {
    "CellAnnotator": "biomed_toolkit.rna.widgets",
    "DrugTargetExplorer": "biomed_toolkit.mammal.widgets",
    "LesionMatcher": "biomed_toolkit.mammo.widgets",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
