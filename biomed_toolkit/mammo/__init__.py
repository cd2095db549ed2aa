"""Dual-view mammography: DICOM reading, a dual-view phantom, candidates, matching, views.

Attributes load lazily, so ``import biomed_toolkit`` stays light (no torch / napari / plotly).

>>> import biomed_toolkit as bt
>>> case = bt.mammo.phantom(0, n_lesions=3)
>>> matches = bt.mammo.match(case, method="template")
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "MammoImage": "io",
    "Case": "io",
    "ModalityWarning": "io",
    "read": "io",
    "read_case": "io",
    "phantom": "phantom",
    "write_dicom": "phantom",
    "detect_candidates": "candidates",
    "extract_patches": "candidates",
    "label_candidates": "candidates",
    "estimate_nipple": "candidates",
    "match": "matching",
    "assign": "matching",
    "evaluate_matches": "evaluation",
    "evaluate": "evaluation",
    "load": "modeling",
    "SiameseMatcher": "modeling",
    "SiameseConfig": "modeling",
    "SiameseLightning": "modeling",
    "PairDataset": "modeling",
    "finetune": "modeling",
    "show_napari": "napari_view",
    "screenshot_to_notebook": "napari_view",
    "mammo_pair": "plotting",
    "LesionMatcher": "widgets",
    "phantom_cases": "datasets",
    "dicom_test_file": "datasets",
    "dicom_examples": "datasets",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
