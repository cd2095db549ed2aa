"""BMFM-RNA: tokenization, models, loading, inference and pretraining (``bt.rna``).

Names are imported lazily (torch is only imported when a model-related name is used), so
``import biomed_toolkit`` stays fast. To add a public name, add one line to ``_LAZY``:
``"public_name": "submodule"`` (the attribute of the same name in ``biomed_toolkit.rna.<submodule>``).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    # tokenize.py
    "GeneTokenizer": "tokenize",
    "GeneMatchReport": "tokenize",
    "EncodedCells": "tokenize",
    "match_genes": "tokenize",
    "encode_cells": "tokenize",
    "protein_coding_symbols": "tokenize",
    "ensembl_to_symbol": "tokenize",
    # configuration.py / modeling.py
    "BmfmRnaConfig": "configuration",
    "LabelColumn": "configuration",
    "BmfmRnaModel": "modeling",
    "BmfmRnaOutput": "modeling",
    "WcedOutput": "modeling",
    # loading.py
    "load": "loading",
    # inference.py
    "embed_cells": "inference",
    "predict_labels": "inference",
    "run_inference": "inference",
    "InferenceResult": "inference",
    # objectives.py
    "RnaPretrainingModule": "objectives",
    "PretrainingCollator": "objectives",
    # datasets.py
    "pbmc68k_counts": "datasets",
    "celltypist_sample": "datasets",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'biomed_toolkit.rna' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
