"""Tools on AnnData in scanpy's style (``bt.tl.*``): results go into ``obs``/``obsm``/``uns``."""

from __future__ import annotations

from ._lazy import lazy_exports

_EXPORTS = {
    "embed": "biomed_toolkit.rna.tasks",
    "annotate": "biomed_toolkit.rna.tasks",
    "finetune": "biomed_toolkit.rna.training",
    "reference_map": "biomed_toolkit.rna.tasks",
    "integration_metrics": "biomed_toolkit.rna.metrics",
    "predict_perturbation": "biomed_toolkit.rna.perturbation",
    "finetune_perturbation": "biomed_toolkit.rna.perturbation",
    "perturbation_metrics": "biomed_toolkit.rna.perturbation",
    "majority_vote": "biomed_toolkit.rna.tasks",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
