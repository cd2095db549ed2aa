"""``perturbation_metrics``: pseudobulk Pearson, delta-Pearson and MAE of predicted perturbations."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...core.errors import InputError

Profiles = pd.DataFrame | pd.Series | np.ndarray


def perturbation_metrics(pred: Profiles, truth: Profiles, control: Profiles) -> pd.DataFrame:
    """Pseudobulk Pearson, delta-Pearson and MAE of predicted against observed perturbations.

    Parameters
    ----------
    pred, truth
        DataFrames (perturbations x genes; aligned on index and columns) or arrays of the same
        shape (1-D = one perturbation).
    control
        Control pseudobulk: a Series/1-D array over the same genes (or a one-row DataFrame).

    Returns
    -------
    DataFrame with one row per perturbation and columns ``pearson`` (pred vs truth),
    ``delta_pearson`` (pred - control vs truth - control), ``mae``.

    Examples
    --------
    >>> import numpy as np
    >>> c = np.array([1.0, 2.0, 3.0, 4.0])
    >>> perturbation_metrics(c + [1, 0, 0, 0], c + [2, 0, 0, 0], c)["delta_pearson"].item()
    1.0
    """
    if isinstance(pred, pd.DataFrame) and isinstance(truth, pd.DataFrame):
        common_rows = [i for i in pred.index if i in truth.index]
        common_cols = [c for c in pred.columns if c in truth.columns]
        if not common_rows or not common_cols:
            raise InputError("pred and truth share no perturbation (index) or gene (column)")
        index = common_rows
        p = pred.loc[common_rows, common_cols].to_numpy(dtype=float)
        t = truth.loc[common_rows, common_cols].to_numpy(dtype=float)
        if isinstance(control, pd.DataFrame):
            control = control.iloc[0]
        c = (control[common_cols] if isinstance(control, pd.Series) else np.asarray(control))
        c = np.asarray(c, dtype=float)
    else:
        p, t = np.atleast_2d(np.asarray(pred, float)), np.atleast_2d(np.asarray(truth, float))
        c = np.asarray(control.iloc[0] if isinstance(control, pd.DataFrame) else control, float)
        index = list(pred.index) if isinstance(pred, pd.DataFrame) else list(range(len(p)))
    if p.shape != t.shape or c.shape[-1] != p.shape[1]:
        raise InputError(f"shapes differ: pred {p.shape}, truth {t.shape}, control {c.shape}")

    def _r(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(), b - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / den) if den > 0 else float("nan")

    rows = [{"pearson": _r(pi, ti), "delta_pearson": _r(pi - c, ti - c),
             "mae": float(np.abs(pi - ti).mean())} for pi, ti in zip(p, t)]
    return pd.DataFrame(rows, index=pd.Index(index, name="perturbation"))


__all__ = ["perturbation_metrics"]
