"""Dual-view mammography: DICOM reading, a dual-view phantom, candidates, matching, views.

Attributes load lazily, so ``import biomed_toolkit`` stays light (no torch / napari / plotly).

>>> import biomed_toolkit as bt
>>> case = bt.mammo.phantom(0, n_lesions=3)
>>> matches = bt.mammo.match(case)  # calibrated fusion of Siamese, geometry and detector
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
    "detector_input": "candidates",
    "breast_geometry": "geometry",
    "case_geometry": "geometry",
    "BreastGeometry": "geometry",
    "match": "matching",
    "assign": "matching",
    "evaluate_matches": "evaluation",
    "evaluate": "evaluation",
    "froc_curve": "evaluation",
    "candidate_recall": "evaluation",
    "load": "modeling",
    "SiameseMatcher": "modeling",
    "SiameseConfig": "configuration",
    "SiameseLightning": "training",
    "DetectorLightning": "training",
    "PairDataset": "training",
    "DetectorDataset": "training",
    "fit_fusion": "training",
    "finetune": "training",
    "show_napari": "napari_view",
    "screenshot_to_notebook": "napari_view",
    "mammo_pair": "plotting",
    "mammo_froc": "plotting",
    "LesionMatcher": "widgets",
    "phantom_cases": "datasets",
    "dicom_test_file": "datasets",
    "dicom_examples": "datasets",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
