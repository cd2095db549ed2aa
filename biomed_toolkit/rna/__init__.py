"""BMFM-RNA: tokenization, models, loading, inference and pretraining (``bt.rna``).

Names are imported lazily (torch is only imported when a model-related name is used), so
``import biomed_toolkit`` stays fast. To add a public name, add one line to ``_LAZY``:
``"public_name": "submodule"`` (the attribute of the same name in ``biomed_toolkit.rna.<submodule>``).
"""

from __future__ import annotations

from .._lazy import lazy_exports

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
    "oligodendroglioma_counts": "datasets",
    "held_out_split": "datasets",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
