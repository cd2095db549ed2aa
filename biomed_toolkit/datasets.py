"""Real datasets that ship with the toolkit's dependencies (usable offline)."""

from __future__ import annotations

from ._lazy import lazy_exports

_EXPORTS = {
    "pbmc68k_counts": "biomed_toolkit.rna.datasets",
    "celltypist_sample": "biomed_toolkit.rna.datasets",
    "oligodendroglioma_counts": "biomed_toolkit.rna.datasets",
    "baron_pancreas_counts": "biomed_toolkit.rna.datasets",
    "kiba": "biomed_toolkit.mammal.datasets",
    "esol": "biomed_toolkit.mammal.datasets",
    "phantom_cases": "biomed_toolkit.mammo.datasets",
    "dicom_examples": "biomed_toolkit.mammo.datasets",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
