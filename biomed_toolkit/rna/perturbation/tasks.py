"""``predict_perturbation``: pseudobulk expression of control cells after in-silico perturbations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ...core.errors import InputError
from ...core.log import get_logger, timed
from .data import normalized_panel, parse_perturbation, perturbation_flags
from .modeling import PerturbationModel

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

log = get_logger(__name__)


def predict_perturbation(
    adata_control: AnnData,
    perturbations: Sequence[str | Sequence[str]] | Mapping[str, Sequence[str]],
    model: PerturbationModel,
    *,
    n_cells: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    layer: str | None = None,
) -> pd.DataFrame:
    """Predict pseudobulk expression after each perturbation of the control cells.

    Parameters
    ----------
    adata_control
        Control cells (raw counts).
    perturbations
        Gene names (``"GENE"`` or ``"GENE1+GENE2"``), lists of genes, or a dict name -> genes.
    model
        A :class:`PerturbationModel` (from :func:`finetune_perturbation` or
        ``PerturbationModel.from_pretrained``).
    n_cells
        Use a random subset of this many control cells (``seed``); default all.
    batch_size
        Cells per forward pass.

    Returns
    -------
    DataFrame (perturbations x panel genes) of predicted mean log-normalised expression.
    Compare with :func:`pseudobulk` of real perturbed cells through :func:`perturbation_metrics`.

    Examples
    --------
    >>> pred = predict_perturbation(ctrl, ["CD3E", "LYZ+S100A8"], pm)  # doctest: +SKIP
    """
    if not isinstance(model, PerturbationModel):
        raise InputError(
            "model has no perturbation head: fine-tune one first with "
            "bt.rna.perturbation.finetune_perturbation(adata, perturbation_key, model)"
        )
    if isinstance(perturbations, Mapping):
        items = [(str(k), list(v)) for k, v in perturbations.items()]
    else:
        items = [(p if isinstance(p, str) else "+".join(p), parse_perturbation(p)) for p in perturbations]
    if not items:
        raise InputError("perturbations is empty")
    x = normalized_panel(adata_control, model.genes, model.base, layer=layer)
    if n_cells is not None and n_cells < len(x):
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), n_cells, replace=False))]
    model.eval()
    dev = next(model.parameters()).device
    rows = []
    with timed(log, f"predicting {len(items)} perturbations on {len(x)} control cells"), \
            torch.no_grad():
        for _name, genes in items:
            flag = torch.from_numpy(perturbation_flags(model.genes, genes))
            total = np.zeros(len(model.genes))
            for lo in range(0, len(x), batch_size):
                e = torch.from_numpy(x[lo:lo + batch_size]).to(dev)
                f = flag.to(dev).unsqueeze(0).expand(len(e), -1)
                total += model.predict_expression(e, f).double().sum(0).cpu().numpy()
            rows.append(total / len(x))
    return pd.DataFrame(np.stack(rows), index=[n for n, _ in items], columns=model.genes)


__all__ = ["predict_perturbation"]
