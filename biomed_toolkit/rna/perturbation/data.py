"""The data side of perturbation prediction: panel expression, pseudobulk, perturbation flags.

Expression is log-normalised as BMFM-RNA encodes it: ``log1p(count / (sum + 1) * 1e4)``, the sum
over every gene of the cell that the model keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ...core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from ..modeling import BmfmRnaModel


def _column_ids(adata: AnnData, model: BmfmRnaModel) -> np.ndarray:
    from ..tokenize import match_genes

    limit = getattr(getattr(model, "config", None), "limit_genes", "protein_coding")
    report = match_genes(adata, model, limit_genes=limit, compute_coverage=False, log_summary=False)
    return report.column_token_ids


def normalized_panel(adata: AnnData, genes: Sequence[str], model: BmfmRnaModel,
                     *, layer: str | None = None) -> np.ndarray:
    """Log-normalised expression ``log1p(count / (sum + 1) * 1e4)`` of ``genes`` (dense, float32).

    The sum runs over every gene of the cell that the model keeps (as BMFM-RNA encoding does).
    """
    from ..io import check_counts, iter_csr_chunks

    col_ids = _column_ids(adata, model)
    pos = pd.Index(adata.var_names).get_indexer(list(genes))
    missing = [g for g, p in zip(genes, pos) if p < 0]
    if missing:
        raise InputError(f"panel genes {missing[:10]} are not in adata.var_names")
    kept = col_ids >= 0
    out = np.empty((adata.n_obs, len(genes)), dtype=np.float32)
    for off, csr in iter_csr_chunks(adata, layer=layer, chunk_size=4096):
        check_counts(csr.data, where="adata.X" if layer is None else f"adata.layers[{layer!r}]")
        sums = np.asarray(csr[:, kept].sum(axis=1)).ravel().astype(np.float64)
        block = csr[:, pos].toarray().astype(np.float64)
        out[off:off + csr.shape[0]] = np.log1p(block / (sums[:, None] + 1.0) * 1e4)
    return out


def parse_perturbation(perturbation: str | Sequence[str]) -> list[str]:
    if isinstance(perturbation, str):
        return [g for g in perturbation.split("+") if g and g.lower() != "ctrl"]
    return [str(g) for g in perturbation]


def pseudobulk(adata: AnnData, genes: Sequence[str], model: BmfmRnaModel, *, groupby: str | None = None,
               layer: str | None = None) -> pd.DataFrame:
    """Mean log-normalised expression of ``genes`` per group (one row per group, or ``"all"``)."""
    x = normalized_panel(adata, genes, model, layer=layer)
    if groupby is None:
        return pd.DataFrame(x.mean(axis=0)[None, :], index=["all"], columns=list(genes))
    groups = adata.obs[groupby].astype(str).to_numpy()
    names = list(pd.unique(groups))
    return pd.DataFrame(np.stack([x[groups == g].mean(axis=0) for g in names]), index=names,
                        columns=list(genes))

def perturbation_flags(genes: Sequence[str], perturbed: Sequence[str]) -> np.ndarray:
    index = {g: i for i, g in enumerate(genes)}
    missing = [g for g in perturbed if g not in index]
    if missing:
        raise InputError(
            f"perturbed gene(s) {missing} are not in the model's gene panel; add them with genes= "
            "when fine-tuning"
        )
    f = np.zeros(len(genes), dtype=np.int64)
    f[[index[g] for g in perturbed]] = 1
    return f


def choose_panel(adata: AnnData, model: BmfmRnaModel, perturbed: Sequence[str], n_genes: int) -> list[str]:
    col_ids = _column_ids(adata, model)
    names = np.asarray(adata.var_names)
    kept = np.flatnonzero(col_ids >= 0)
    absent = [g for g in perturbed if g not in set(names[kept])]
    if absent:
        raise InputError(
            f"perturbed gene(s) {absent} are not among the data's genes known to the model "
            "vocabulary (check gene symbols, or limit_genes for non protein-coding genes)"
        )
    x = adata.X[:, kept]
    mean = np.asarray(x.mean(axis=0)).ravel()
    order = kept[np.argsort(-mean, kind="stable")]
    panel = list(dict.fromkeys([*perturbed, *names[order].tolist()]))
    return panel[:max(n_genes, len(set(perturbed)))]


__all__ = ["choose_panel", "normalized_panel", "parse_perturbation", "perturbation_flags", "pseudobulk"]
