"""Genetic perturbation prediction with BMFM-RNA (``bt.rna.perturbation``; the calls are also in ``bt.tl``).

Files by subject: ``configuration.py`` (:class:`PerturbationConfig`), ``modeling.py``
(:class:`PerturbationModel`, the network on the one lifecycle), ``loading.py`` (the earlier
two-file layout), ``data.py`` (panel expression, pseudobulk, flags), ``training.py``
(:func:`finetune_perturbation`), ``tasks.py`` (:func:`predict_perturbation`), ``metrics.py``
(:func:`perturbation_metrics`).

Examples
--------
>>> pm = bt.tl.finetune_perturbation(adata, "perturbation", max_epochs=3)  # doctest: +SKIP
>>> pm.save_pretrained("pm"); pm = PerturbationModel.from_pretrained("pm")  # doctest: +SKIP
>>> pred = bt.tl.predict_perturbation(ctrl, ["CD3E", "LYZ+S100A8"], pm)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings

import torch

from .configuration import PerturbationConfig
from .data import normalized_panel, pseudobulk
from .metrics import perturbation_metrics
from .modeling import PerturbationModel
from .tasks import predict_perturbation
from .training import finetune_perturbation


def load_perturbation_model(directory: str | os.PathLike, *,
                            device: str | torch.device | None = None) -> PerturbationModel:
    """Deprecated: use ``PerturbationModel.from_pretrained(directory, device=device)``."""
    warnings.warn("load_perturbation_model is deprecated: use PerturbationModel.from_pretrained",
                  FutureWarning, stacklevel=2)
    return PerturbationModel.from_pretrained(directory, device=device)


__all__ = [
    "PerturbationConfig",
    "PerturbationModel",
    "finetune_perturbation",
    "load_perturbation_model",
    "normalized_panel",
    "perturbation_metrics",
    "predict_perturbation",
    "pseudobulk",
]
