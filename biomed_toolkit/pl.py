"""Plots (``bt.pl.*``): ``show=``, ``return_fig=``; nothing is written to disk unless asked."""

from __future__ import annotations

from ._lazy import lazy_exports

_EXPORTS = {
    "training_history": "biomed_toolkit.core.plotting",
    "embedding": "biomed_toolkit.rna.plotting",
    "confusion": "biomed_toolkit.rna.plotting",
    "gene_match": "biomed_toolkit.rna.plotting",
    "integration_metrics": "biomed_toolkit.rna.plotting",
    "molecules": "biomed_toolkit.mammal.plotting",
    "molecule_3d": "biomed_toolkit.mammal.plotting",
    "protein": "biomed_toolkit.mammal.plotting",
    "affinity_scatter": "biomed_toolkit.mammal.plotting",
    "score_distribution": "biomed_toolkit.mammal.plotting",
    "mammo_pair": "biomed_toolkit.mammo.plotting",
    "mammo_froc": "biomed_toolkit.mammo.plotting",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
