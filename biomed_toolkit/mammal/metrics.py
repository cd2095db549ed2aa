"""Metrics drug-discovery people quote: Pearson, Spearman, RMSE, concordance index; AUROC, AUPRC.

Examples
--------
>>> from biomed_toolkit.mammal.metrics import regression_metrics
>>> round(regression_metrics([1, 2, 3, 4], [1.1, 1.9, 3.2, 3.8])["ci"], 3)
1.0
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from biomed_toolkit.core.errors import InputError


def as_1d(values: ArrayLike, what: str) -> np.ndarray:
    """``values`` as a 1-D float array; :class:`InputError` naming ``what`` otherwise."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers; got {type(values).__name__}") from None
    if arr.ndim != 1:
        arr = arr.ravel() if arr.size == max(arr.shape, default=0) else arr
    if arr.ndim != 1:
        raise InputError(f"{what} must be one-dimensional, got shape {arr.shape}")
    return arr


def _paired(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray, int]:
    y = as_1d(y, "measured")
    p = as_1d(p, "predicted")
    if y.shape[0] != p.shape[0]:
        raise InputError(f"{y.shape[0]} measured values but {p.shape[0]} predictions; they must pair up")
    ok = np.isfinite(y) & np.isfinite(p)
    return y[ok], p[ok], int((~ok).sum())


def concordance_index(measured: ArrayLike, predicted: ArrayLike) -> float:
    """Share of pairs with different measured values that the predictions order correctly (ties 0.5).

    Examples
    --------
    >>> concordance_index([1, 2, 3], [3, 2, 1])
    0.0
    """
    y, p, _ = _paired(measured, predicted)
    if len(y) < 2:
        return math.nan
    order = np.argsort(y, kind="stable")
    y, p = y[order], p[order]
    num = 0.0
    den = 0
    # O(n^2 / block) in blocks: fine for the held-out sets of a fine-tune (up to ~20k rows).
    for start in range(0, len(y), 2048):
        yi, pi = y[start : start + 2048, None], p[start : start + 2048, None]
        later = y[None, :] > yi
        dp = p[None, :] - pi
        num += float(((dp > 0) & later).sum() + 0.5 * ((dp == 0) & later).sum())
        den += int(later.sum())
    return num / den if den else math.nan


def regression_metrics(measured: ArrayLike, predicted: ArrayLike) -> dict[str, float]:
    """``n``, ``pearson``, ``spearman``, ``rmse``, ``mae`` and ``ci`` over pairs where both are finite.

    Examples
    --------
    >>> round(regression_metrics([1, 2, 3], [1, 2, 4])["rmse"], 4)
    0.5774
    """
    y, p, dropped = _paired(measured, predicted)
    out = {"n": float(len(y)), "n_dropped": float(dropped), "pearson": math.nan, "spearman": math.nan}
    if len(y) >= 2 and np.std(p) > 0 and np.std(y) > 0:
        from scipy.stats import spearmanr

        out["pearson"] = float(np.corrcoef(y, p)[0, 1])
        out["spearman"] = float(spearmanr(y, p).statistic)
    out["rmse"] = float(np.sqrt(np.mean((y - p) ** 2))) if len(y) else math.nan
    out["mae"] = float(np.mean(np.abs(y - p))) if len(y) else math.nan
    out["ci"] = concordance_index(y, p)
    return out


def classification_metrics(labels: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """``n``, ``auroc`` and ``auprc`` (average precision) of scores against 0/1 labels.

    Examples
    --------
    >>> classification_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])["auroc"]
    0.75
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s, dropped = _paired(labels, scores)
    out = {"n": float(len(y)), "n_dropped": float(dropped), "auroc": math.nan, "auprc": math.nan}
    if len(np.unique(y)) == 2:
        out["auroc"] = float(roc_auc_score(y, s))
        out["auprc"] = float(average_precision_score(y, s))
    return out


def affinity_metrics(pred: ArrayLike, measured: ArrayLike) -> dict[str, float]:
    """Pearson r, Spearman rho, RMSE and MAE over the pairs where both values are finite.

    Examples
    --------
    >>> round(affinity_metrics([1, 2, 3], [1, 2, 4])["rmse"], 4)
    0.5774
    """
    m = regression_metrics(measured, pred)
    return {"n": m["n"], "n_dropped": m["n_dropped"], "pearson_r": m["pearson"], "spearman_rho": m["spearman"],
            "rmse": m["rmse"], "mae": m["mae"]}


__all__ = ["affinity_metrics", "as_1d", "classification_metrics", "concordance_index", "regression_metrics"]
