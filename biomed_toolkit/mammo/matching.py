"""Matching candidates across CC and MLO: template (NCC / Euclidean), geometric prior, Siamese.

Every matcher produces a probability matrix ``P[i, j]`` (CC candidate i, MLO candidate j); an
assignment step then picks at most one partner per candidate, maximising the sum of
``P - threshold`` so that candidates whose best probability stays below ``threshold`` remain
unmatched.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.candidates import detect_candidates, estimate_nipple, extract_patches
from biomed_toolkit.mammo.io import Case

__all__ = [
    "METHODS",
    "match",
    "score_matrix",
    "candidates_of",
    "reassign",
    "assign",
    "template_scores",
    "geometric_scores",
    "MATCH_COLUMNS",
]

METHODS = ("siamese", "template", "geometric", "siamese+geometric")
MATCH_COLUMNS = [
    "cc_id", "mlo_id", "probability", "assigned", "rank_cc", "rank_mlo",
    "cc_row", "cc_col", "cc_score", "cc_radius_px", "mlo_row", "mlo_col", "mlo_score",
    "mlo_radius_px",
]
#: Standard deviation (mm) of the difference of nipple distances between views for one lesion.
GEOMETRIC_SIGMA_MM = 7.0


def template_scores(
    cc_patches: np.ndarray, mlo_patches: np.ndarray, *, metric: str = "ncc", tau: float = 0.12
) -> np.ndarray:
    """Template-matching probabilities between two stacks of patches.

    ``metric="ncc"``: normalised cross-correlation mapped to [0, 1] as ``(1 + ncc) / 2``
    (patches are z-scored here). ``metric="euclidean"``: RMS intensity difference ``d`` of the
    raw patches mapped to ``exp(-(d / tau)^2)``.
    """
    a = cc_patches.reshape(len(cc_patches), -1).astype(np.float64)
    b = mlo_patches.reshape(len(mlo_patches), -1).astype(np.float64)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    if metric == "ncc":
        za = (a - a.mean(1, keepdims=True)) / (a.std(1, keepdims=True) + 1e-6)
        zb = (b - b.mean(1, keepdims=True)) / (b.std(1, keepdims=True) + 1e-6)
        ncc = za @ zb.T / a.shape[1]
        return np.clip((1.0 + ncc) / 2.0, 0.0, 1.0)
    if metric == "euclidean":
        d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
        rms = np.sqrt(np.clip(d2, 0, None) / a.shape[1])
        return np.exp(-((rms / tau) ** 2))
    raise InputError(f"metric must be 'ncc' or 'euclidean', got {metric!r}")


def _nipple(case: Case, view: str) -> tuple[float, float]:
    if case.nipple is not None and view in case.nipple:
        return case.nipple[view]
    return estimate_nipple(case.view(view))


def geometric_scores(
    case: Case, cc: pd.DataFrame, mlo: pd.DataFrame, *, sigma_mm: float = GEOMETRIC_SIGMA_MM
) -> np.ndarray:
    """Geometric prior: same distance to the nipple along the nipple / chest-wall axis.

    With the chest wall on the left in both views that axis is horizontal, so the distance is
    ``(nipple column - candidate column) * spacing``; the score is
    ``exp(-(d_cc - d_mlo)^2 / (2 sigma^2))``.
    """
    if len(cc) == 0 or len(mlo) == 0:
        return np.zeros((len(cc), len(mlo)))
    d = {}
    for name, cands in (("cc", cc), ("mlo", mlo)):
        sp = case.view(name).mm_per_pixel or 0.5
        _, ncol = _nipple(case, name)
        d[name] = (ncol - cands["col"].to_numpy(dtype=np.float64)) * sp
    diff = d["cc"][:, None] - d["mlo"][None, :]
    return np.exp(-(diff**2) / (2 * sigma_mm**2))


def assign(prob: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one assignment that leaves candidates unmatched.

    Maximises the sum of ``prob - threshold`` over chosen pairs (Hungarian algorithm on the
    positive part), so no pair below ``threshold`` is ever chosen.
    """
    from scipy.optimize import linear_sum_assignment

    if prob.size == 0:
        return []
    gain = np.clip(prob - threshold, 0.0, None)
    r, c = linear_sum_assignment(gain, maximize=True)
    return [(int(i), int(j)) for i, j in zip(r, c) if gain[i, j] > 0]


def score_matrix(
    case: Case,
    cc: pd.DataFrame,
    mlo: pd.DataFrame,
    *,
    method: str = "siamese",
    model: Any = None,
    metric: str = "ncc",
) -> np.ndarray:
    """Probability matrix (len(cc), len(mlo)) of one matcher."""
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if method == "geometric":
        return geometric_scores(case, cc, mlo)
    if method == "template":
        kind = "zscore" if metric == "ncc" else "none"
        pa = extract_patches(case.cc, cc, normalize=kind)
        pb = extract_patches(case.mlo, mlo, normalize=kind)
        return template_scores(pa, pb, metric=metric)
    if model is None:
        from biomed_toolkit.mammo.modeling import load

        model = load()
    p = model.score_candidates(case, cc, mlo)
    if method == "siamese+geometric":
        g = geometric_scores(case, cc, mlo)
        p = np.sqrt(p * g)  # geometric mean: both must agree
    return p


def match(
    case: Case,
    model: Any = None,
    method: str = "siamese",
    *,
    threshold: float = 0.5,
    max_candidates: int = 12,
    candidates: dict[str, pd.DataFrame] | None = None,
    metric: str = "ncc",
) -> pd.DataFrame:
    """Match lesion candidates between the CC and MLO views of one case.

    Parameters
    ----------
    case
        A :class:`Case` (from :func:`read_case` or :func:`phantom`).
    model
        A :class:`SiameseMatcher` for ``method="siamese"`` (the embedded demo when None).
    method
        ``"siamese"``, ``"template"`` (``metric="ncc"`` or ``"euclidean"``), ``"geometric"``
        (nipple-distance prior) or ``"siamese+geometric"``.
    threshold
        Pairs below this probability are never assigned.
    max_candidates
        Candidates per view (when ``candidates`` is not given).
    candidates
        Precomputed ``{"cc": df, "mlo": df}`` from :func:`detect_candidates`.
    metric
        Template-matching metric.

    Returns
    -------
    pandas.DataFrame
        One row per (CC candidate, MLO candidate) pair, columns ``cc_id, mlo_id,
        probability, assigned`` (chosen by the assignment), ``rank_cc`` / ``rank_mlo`` (rank of
        the pair among the candidate's partners, 1 = best), candidate positions and scores.
        ``df.attrs`` holds ``method``, ``threshold`` and the candidate tables
        (``cc_candidates``, ``mlo_candidates``), so unmatched candidates are kept.

    Examples
    --------
    >>> case = bt.mammo.phantom(0)
    >>> m = bt.mammo.match(case, method="template")
    >>> m[m.assigned].head()  # doctest: +SKIP
    """
    if not isinstance(case, Case):
        raise InputError(
            f"match needs a Case (bt.mammo.read_case or bt.mammo.phantom), got {type(case).__name__}"
        )
    if candidates is None:
        cc = detect_candidates(case.cc, max_candidates=max_candidates, view="CC")
        mlo = detect_candidates(case.mlo, max_candidates=max_candidates, view="MLO")
    else:
        try:
            cc, mlo = candidates["cc"], candidates["mlo"]
        except (KeyError, TypeError) as e:
            raise InputError("candidates must be a dict {'cc': DataFrame, 'mlo': DataFrame}") from e
    prob = score_matrix(case, cc, mlo, method=method, model=model, metric=metric)
    return pairs_frame(prob, cc, mlo, threshold=threshold, method=method)


def pairs_frame(
    prob: np.ndarray, cc: pd.DataFrame, mlo: pd.DataFrame, *, threshold: float, method: str
) -> pd.DataFrame:
    """Long table of all pairs from a probability matrix (see :func:`match`)."""
    n, m = prob.shape
    ii, jj = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    chosen = set(assign(prob, threshold))
    rank_cc = (-prob).argsort(axis=1).argsort(axis=1) + 1 if m else np.zeros((n, 0), int)
    rank_mlo = (-prob).argsort(axis=0).argsort(axis=0) + 1 if n else np.zeros((0, m), int)
    df = pd.DataFrame(
        {
            "cc_id": cc["cand_id"].to_numpy()[ii] if n else np.zeros(0, int),
            "mlo_id": mlo["cand_id"].to_numpy()[jj] if m else np.zeros(0, int),
            "probability": prob.ravel().astype(np.float64),
            "assigned": [(int(i), int(j)) in chosen for i, j in zip(ii, jj)],
            "rank_cc": rank_cc.ravel() if n and m else np.zeros(0, int),
            "rank_mlo": rank_mlo.ravel() if n and m else np.zeros(0, int),
            "cc_row": cc["row"].to_numpy()[ii] if n else np.zeros(0),
            "cc_col": cc["col"].to_numpy()[ii] if n else np.zeros(0),
            "cc_score": cc["score"].to_numpy()[ii] if n else np.zeros(0),
            "cc_radius_px": cc["radius_px"].to_numpy()[ii] if n else np.zeros(0),
            "mlo_row": mlo["row"].to_numpy()[jj] if m else np.zeros(0),
            "mlo_col": mlo["col"].to_numpy()[jj] if m else np.zeros(0),
            "mlo_score": mlo["score"].to_numpy()[jj] if m else np.zeros(0),
            "mlo_radius_px": mlo["radius_px"].to_numpy()[jj] if m else np.zeros(0),
        },
        columns=MATCH_COLUMNS,
    )
    # Plain dicts (not DataFrames) in attrs so pandas can compare / copy them (e.g. in concat).
    df.attrs.update(
        {"method": method, "threshold": float(threshold),
         "cc_candidates": cc.to_dict("list"), "mlo_candidates": mlo.to_dict("list")}
    )
    return df


def reassign(matches: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """A copy of a :func:`match` result with the assignment redone at another threshold."""
    out = matches.copy()
    if len(out) == 0:
        out.attrs["threshold"] = float(threshold)
        return out
    ci = {c: i for i, c in enumerate(pd.unique(out["cc_id"]))}
    mi = {c: i for i, c in enumerate(pd.unique(out["mlo_id"]))}
    prob = np.zeros((len(ci), len(mi)))
    r = out["cc_id"].map(ci).to_numpy()
    c = out["mlo_id"].map(mi).to_numpy()
    prob[r, c] = out["probability"].to_numpy()
    chosen = set(assign(prob, threshold))
    out["assigned"] = [(int(a), int(b)) in chosen for a, b in zip(r, c)]
    out.attrs["threshold"] = float(threshold)
    return out


def candidates_of(matches: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The candidate tables a :func:`match` result was built from (incl. unmatched ones)."""
    out = {}
    for v in ("cc", "mlo"):
        rec = matches.attrs.get(f"{v}_candidates")
        if rec is None:
            # Rebuild from the pair rows (loses candidates of a view without any pair).
            cols = {"cand_id": f"{v}_id", "row": f"{v}_row", "col": f"{v}_col",
                    "score": f"{v}_score", "radius_px": f"{v}_radius_px"}
            df = matches[list(cols.values())].drop_duplicates(f"{v}_id")
            out[v] = df.rename(columns={b: a for a, b in cols.items()}).reset_index(drop=True)
        else:
            out[v] = pd.DataFrame(rec)
    return out
