"""Matching candidates across CC and MLO: the calibrated fusion (default), Siamese, template
(NCC / Euclidean) and geometric baselines.

Every matcher produces a probability matrix ``P[i, j]`` (CC candidate i, MLO candidate j); an
assignment step then picks at most one partner per candidate, maximising the sum of
``P - threshold`` so that candidates whose best probability stays below ``threshold`` remain
unmatched ("no counterpart").

The default, ``method="fused"``, is a logistic regression on the Siamese logit, the difference
of the two candidates' depths (distance perpendicular to the chest-wall line: the pectoral edge
in MLO, the image edge in CC, both read from the pixels) and the detector's logits, fitted on
training-seed phantoms and stored in the model (``model.fusion``), so its probabilities are
calibrated.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.candidates import DetectorMethod, detect_candidates, extract_patches
from biomed_toolkit.mammo.geometry import BreastGeometry, case_geometry
from biomed_toolkit.mammo.io import Case, MammoImage, check_finite_pixels

if TYPE_CHECKING:
    from biomed_toolkit.mammo.modeling import SiameseMatcher

__all__ = [
    "METHODS",
    "Method",
    "TemplateMetric",
    "match",
    "score_matrix",
    "candidates_of",
    "reassign",
    "assign",
    "template_scores",
    "geometric_scores",
    "pair_features",
    "siamese_logits",
    "case_candidates",
    "MATCH_COLUMNS",
]

#: Matchers: the calibrated fusion (default) and the baselines.
Method = Literal["fused", "siamese", "template", "geometric", "siamese+geometric"]
METHODS: tuple[str, ...] = ("fused", "siamese", "template", "geometric", "siamese+geometric")
TemplateMetric = Literal["ncc", "euclidean"]
MATCH_COLUMNS = [
    "cc_id", "mlo_id", "probability", "assigned", "rank_cc", "rank_mlo",
    "cc_row", "cc_col", "cc_score", "cc_radius_px", "mlo_row", "mlo_col", "mlo_score",
    "mlo_radius_px",
]
#: Standard deviation (mm) of the difference of depths between views for one lesion.
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


def _depths(geometry: dict[str, BreastGeometry], cc: pd.DataFrame, mlo: pd.DataFrame):
    out = {}
    for name, cands in (("cc", cc), ("mlo", mlo)):
        g = geometry[name]
        d = g.depth_mm(cands["row"].to_numpy(float), cands["col"].to_numpy(float))
        out[name] = (d, d / max(g.nipple_depth_mm, 1.0))
    return out


def geometric_scores(
    case: Case, cc: pd.DataFrame, mlo: pd.DataFrame, *, sigma_mm: float = GEOMETRIC_SIGMA_MM,
    geometry: dict[str, BreastGeometry] | None = None,
) -> np.ndarray:
    """Geometric prior: the same depth in both views, ``exp(-(d_cc - d_mlo)^2 / (2 sigma^2))``.

    Depth is the distance perpendicular to the chest-wall line read from the pixels: the image
    edge in CC, the pectoral edge in MLO (:func:`~biomed_toolkit.mammo.geometry.breast_geometry`).
    """
    if len(cc) == 0 or len(mlo) == 0:
        return np.zeros((len(cc), len(mlo)))
    geometry = geometry or case_geometry(case)
    d = _depths(geometry, cc, mlo)
    diff = d["cc"][0][:, None] - d["mlo"][0][None, :]
    return np.exp(-(diff**2) / (2 * sigma_mm**2))


def _model_patches(model: SiameseMatcher, image: MammoImage, cands: pd.DataFrame) -> np.ndarray:
    c = model.config
    kind = "both" if c.in_channels == 2 else "zscore"
    p = extract_patches(image, cands, size_mm=c.patch_mm, out_size=c.patch_size, normalize=kind)
    return p if p.ndim == 4 else p[:, None]


def siamese_logits(model: SiameseMatcher, case: Case, cc: pd.DataFrame,
                   mlo: pd.DataFrame) -> np.ndarray:
    """Siamese logit of every (CC candidate, MLO candidate) pair, on one thread.

    A few dozen tiny patches: extra intra-op threads only add synchronisation cost.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return model.pair_logits(_model_patches(model, case.cc, cc), _model_patches(model, case.mlo, mlo))
    finally:
        torch.set_num_threads(threads)


def _det_logit(cands: pd.DataFrame) -> np.ndarray:
    s = cands["score"].to_numpy(float)
    if len(s) and (cands["kind"] == "learned").all():
        p = np.clip(s, 1e-4, 1 - 1e-4)
        return np.log(p / (1 - p))
    return s


def pair_features(
    geometry: dict[str, BreastGeometry], cc: pd.DataFrame, mlo: pd.DataFrame,
    siamese_logit: np.ndarray, features: tuple[str, ...],
) -> np.ndarray:
    """The fusion's pair features, (len(cc), len(mlo), len(features)), in ``features`` order."""
    n, m = len(cc), len(mlo)
    d = _depths(geometry, cc, mlo)
    diff = d["cc"][0][:, None] - d["mlo"][0][None, :]
    rel = d["cc"][1][:, None] - d["mlo"][1][None, :]
    dcc, dmlo = _det_logit(cc), _det_logit(mlo)
    table = {
        "siamese_logit": siamese_logit,
        "abs_depth_diff_mm": np.abs(diff) / 10.0,
        "sq_depth_diff": (diff / 10.0) ** 2,
        "abs_rel_depth_diff": np.abs(rel) * 10.0,
        "det_logit_cc": np.broadcast_to(dcc[:, None], (n, m)),
        "det_logit_mlo": np.broadcast_to(dmlo[None, :], (n, m)),
    }
    return np.stack([np.asarray(table[f], float).reshape(n, m) for f in features], axis=-1)


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
    method: Method = "fused",
    model: SiameseMatcher | None = None,
    metric: TemplateMetric = "ncc",
    geometry: dict[str, BreastGeometry] | None = None,
) -> np.ndarray:
    """Probability matrix (len(cc), len(mlo)) of one matcher."""
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if method == "geometric":
        return geometric_scores(case, cc, mlo, geometry=geometry)
    if method == "template":
        kind = "zscore" if metric == "ncc" else "none"
        pa = extract_patches(case.cc, cc, normalize=kind)
        pb = extract_patches(case.mlo, mlo, normalize=kind)
        return template_scores(pa, pb, metric=metric)
    if model is None:
        from biomed_toolkit.mammo.modeling import load

        model = load()
    logit = siamese_logits(model, case, cc, mlo)
    if method == "fused":
        if logit.size == 0:
            return logit
        geometry = geometry or case_geometry(case)
        return model.fuse(pair_features(geometry, cc, mlo, logit, model.config.fusion_features))
    p = 1.0 / (1.0 + np.exp(-logit))
    if method == "siamese+geometric":
        g = geometric_scores(case, cc, mlo, geometry=geometry)
        p = np.sqrt(p * g)  # geometric mean: both must agree
    return p


def case_candidates(
    case: Case, model: SiameseMatcher | None = None, *, max_candidates: int = 10,
    detector: DetectorMethod = "learned", geometry: dict[str, BreastGeometry] | None = None,
) -> dict[str, pd.DataFrame]:
    """Candidates of both views: ``{"cc": df, "mlo": df}`` (see :func:`detect_candidates`)."""
    if detector == "learned" and model is None:
        from biomed_toolkit.mammo.modeling import load

        model = load()
    geometry = geometry or case_geometry(case)
    return {v: detect_candidates(case.view(v), max_candidates=max_candidates, view=v.upper(),
                                 model=model if detector == "learned" else None,
                                 method=detector, geometry=geometry[v])
            for v in ("cc", "mlo")}


def match(
    case: Case,
    model: SiameseMatcher | None = None,
    method: Method = "fused",
    *,
    threshold: float = 0.5,
    max_candidates: int = 10,
    candidates: dict[str, pd.DataFrame] | None = None,
    metric: TemplateMetric = "ncc",
    detector: DetectorMethod = "learned",
) -> pd.DataFrame:
    """Match lesion candidates between the CC and MLO views of one case.

    Parameters
    ----------
    case
        A :class:`Case` (from :func:`read_case` or :func:`phantom`).
    model
        A :class:`~biomed_toolkit.mammo.modeling.SiameseMatcher` (the embedded demo when None):
        its detector finds the candidates, its Siamese network and fusion score the pairs.
    method
        ``"fused"`` (default: calibrated fusion of the Siamese logit, the depth difference
        along the posterior nipple line and the detector scores), ``"siamese"``, ``"template"``
        (``metric="ncc"`` or ``"euclidean"``), ``"geometric"`` (depth prior) or
        ``"siamese+geometric"`` (geometric mean of the two).
    threshold
        Pairs below this probability are never assigned (a candidate may stay without a
        counterpart).
    max_candidates
        Candidates per view (when ``candidates`` is not given).
    candidates
        Precomputed ``{"cc": df, "mlo": df}`` from :func:`detect_candidates`.
    metric
        Template-matching metric.
    detector
        ``"learned"`` (the model's heatmap detector) or ``"log"`` (blob baseline).

    Returns
    -------
    pandas.DataFrame
        One row per (CC candidate, MLO candidate) pair, columns ``cc_id, mlo_id,
        probability, assigned`` (chosen by the one-to-one assignment), ``rank_cc`` /
        ``rank_mlo`` (rank of the pair among the candidate's partners, 1 = best), candidate
        positions and scores. ``df.attrs`` holds ``method``, ``threshold`` and the candidate
        tables (``cc_candidates``, ``mlo_candidates``), so unmatched candidates are kept.

    Examples
    --------
    >>> case = bt.mammo.phantom(0)
    >>> m = bt.mammo.match(case)
    >>> m[m.assigned].head()  # doctest: +SKIP
    """
    if not isinstance(case, Case):
        raise InputError(
            f"match needs a Case (bt.mammo.read_case or bt.mammo.phantom), got {type(case).__name__}"
        )
    if method not in METHODS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    for name in ("cc", "mlo"):
        check_finite_pixels(case.view(name).pixels, f"case.{name} ({case.view(name).name})")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not (
            0.0 <= threshold <= 1.0):
        raise InputError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, numbers.Integral) or (
            max_candidates < 1):
        raise InputError(f"max_candidates must be an integer >= 1, got {max_candidates!r}")
    needs_model = detector == "learned" or method not in ("template", "geometric")
    if model is None and needs_model:
        from biomed_toolkit.mammo.modeling import load

        model = load()
    geometry = case_geometry(case)
    if candidates is None:
        cands = case_candidates(case, model, max_candidates=max_candidates, detector=detector,
                                geometry=geometry)
        cc, mlo = cands["cc"], cands["mlo"]
    else:
        try:
            cc, mlo = candidates["cc"], candidates["mlo"]
        except (KeyError, TypeError) as e:
            raise InputError("candidates must be a dict {'cc': DataFrame, 'mlo': DataFrame}") from e
    prob = score_matrix(case, cc, mlo, method=method, model=model, metric=metric, geometry=geometry)
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
