"""Scoring matchers and the detection pipeline against phantom ground truth."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.candidates import DetectorMethod, label_candidates
from biomed_toolkit.mammo.geometry import case_geometry
from biomed_toolkit.mammo.io import Case
from biomed_toolkit.mammo.matching import (
    Method,
    candidates_of,
    case_candidates,
    pairs_frame,
    score_matrix,
)

if TYPE_CHECKING:
    from biomed_toolkit.mammo.modeling import SiameseMatcher

__all__ = ["evaluate_matches", "evaluate", "froc_sensitivity", "froc_curve",
           "rescore_with_matches", "candidate_recall", "FP_RATES"]

FP_RATES = (0.25, 0.5, 1.0, 2.0)


def _true_lesions(case: Case) -> pd.DataFrame:
    if case.lesions is None:
        raise InputError(
            f"case {case.case_id!r} has no ground truth (case.lesions is None): evaluation needs "
            "phantom cases from bt.mammo.phantom"
        )
    les = case.lesions
    return les[les["in_cc"] & les["in_mlo"]]


def evaluate_matches(case: Case, matches: pd.DataFrame) -> tuple[int, int]:
    """Count the true lesion pairs recovered as the top-1 match.

    A lesion visible in both views counts as recovered when one of the CC candidates on it has,
    as its most probable MLO partner, an MLO candidate on the same lesion. Lesions the detector
    missed in either view count as not recovered.

    Parameters
    ----------
    case
        A phantom :class:`Case` (with ``lesions``).
    matches
        The output of :func:`match` for this case.

    Returns
    -------
    tuple of int
        ``(recovered_top1, n_true_pairs)``.

    Examples
    --------
    >>> case = bt.mammo.phantom(0)
    >>> bt.mammo.evaluate_matches(case, bt.mammo.match(case, method="geometric"))  # doctest: +SKIP
    (2, 3)
    """
    true = _true_lesions(case)
    n_true = len(true)
    if n_true == 0 or len(matches) == 0:
        return 0, n_true
    cands = candidates_of(matches)
    lab_cc = dict(zip(cands["cc"]["cand_id"], label_candidates(case, "cc", cands["cc"])))
    lab_mlo = dict(zip(cands["mlo"]["cand_id"], label_candidates(case, "mlo", cands["mlo"])))
    top = matches[matches["rank_cc"] == 1]
    recovered = set()
    for cid, mid in zip(top["cc_id"], top["mlo_id"]):
        a, b = lab_cc.get(cid, -1), lab_mlo.get(mid, -1)
        if a >= 0 and a == b:
            recovered.add(int(a))
    recovered &= set(int(x) for x in true["lesion_id"])
    return len(recovered), n_true


def rescore_with_matches(
    scores: np.ndarray, best_prob: np.ndarray, *, floor: float = 0.3
) -> np.ndarray:
    """Down-weight candidates without a counterpart: ``score * (floor + (1 - floor) * p)``.

    ``scores`` should be non-negative (the learned detector's probabilities); ``p`` is the
    candidate's best pair probability in the other view.
    """
    return np.asarray(scores) * (floor + (1.0 - floor) * np.asarray(best_prob))


def froc_curve(images: Sequence[tuple[np.ndarray, np.ndarray, set]]) -> pd.DataFrame:
    """The FROC curve: lesion sensitivity against false positives per image.

    Parameters
    ----------
    images
        Per image: ``(scores, lesion_ids)`` of its candidates (lesion id -1 = false positive)
        and the set of lesion ids present in that image.

    Returns
    -------
    pandas.DataFrame
        ``threshold, fp_per_image, sensitivity``, one row per distinct score (descending).
    """
    n_img = len(images)
    n_les = sum(len(p) for _, _, p in images)
    cols = ["threshold", "fp_per_image", "sensitivity"]
    if n_img == 0 or n_les == 0:
        return pd.DataFrame(columns=cols)
    allscores = np.unique(np.concatenate([s for s, _, _ in images if len(s)] or [np.zeros(0)]))
    thresholds = np.concatenate([allscores[::-1], [-np.inf]]) if len(allscores) else [np.inf]
    rows = []
    for t in thresholds:
        fp, tp = 0, 0
        for s, lab, present in images:
            keep = s >= t
            fp += int(np.sum(keep & (lab < 0)))
            tp += len(set(lab[keep & (lab >= 0)].tolist()) & present)
        rows.append((float(t), fp / n_img, tp / n_les))
    return pd.DataFrame(rows, columns=cols)


def froc_sensitivity(
    images: Sequence[tuple[np.ndarray, np.ndarray, set]], fp_rates: Sequence[float] = FP_RATES
) -> dict[float, float]:
    """Lesion sensitivity at fixed false positives per image (see :func:`froc_curve`).

    Returns
    -------
    dict
        ``{fp_rate: sensitivity}`` (the best sensitivity with at most that many FP / image).
    """
    curve = froc_curve(images)
    if len(curve) == 0:
        return {f: float("nan") for f in fp_rates}
    out = {}
    for f in fp_rates:
        ok = curve.loc[curve["fp_per_image"] <= f + 1e-12, "sensitivity"]
        out[f] = float(ok.max()) if len(ok) else 0.0
    return out


def candidate_recall(
    cases: Sequence[Case], model: SiameseMatcher | None = None, *, max_candidates: int = 10,
    detector: DetectorMethod = "learned",
) -> dict[str, Any]:
    """Fraction of true lesions (per view) hit by one of the view's candidates.

    Returns
    -------
    dict
        ``recall``, ``n_lesion_views``, ``mean_candidates_per_view``, ``max_candidates_per_view``
        and ``recall_by_kind`` (mass / calcification).
    """
    hit, total, counts = 0, 0, []
    by_kind: dict[str, list[int]] = {}
    for case in cases:
        cands = case_candidates(case, model, max_candidates=max_candidates, detector=detector)
        for v in ("cc", "mlo"):
            lab = label_candidates(case, v, cands[v])
            counts.append(len(cands[v]))
            les = _present(case, v)
            found = set(lab[lab >= 0].tolist())
            for lid, kind in zip(les["lesion_id"], les["kind"]):
                h = int(lid in found)
                hit += h
                total += 1
                by_kind.setdefault(kind, [0, 0])
                by_kind[kind][0] += h
                by_kind[kind][1] += 1
    return {"recall": hit / total if total else float("nan"), "n_lesion_views": total,
            "mean_candidates_per_view": float(np.mean(counts)) if counts else 0.0,
            "max_candidates_per_view": int(max(counts)) if counts else 0,
            "recall_by_kind": {k: v[0] / v[1] for k, v in by_kind.items()}}


def _present(case: Case, v: str) -> pd.DataFrame:
    return case.lesions[case.lesions[f"in_{v}"]]


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def evaluate(
    cases: Sequence[Case],
    method: Method | Sequence[Method] = "fused",
    *,
    model: SiameseMatcher | None = None,
    max_candidates: int = 10,
    threshold: float = 0.5,
    fp_rates: Sequence[float] = FP_RATES,
    per_case: bool = False,
    detector: DetectorMethod = "learned",
    return_curves: bool = False,
) -> pd.DataFrame:
    """Full metrics table of one or several matchers on phantom cases.

    Candidates are detected once per case and shared by all methods.

    Parameters
    ----------
    cases
        Phantom cases (with ground truth).
    method
        A method name or a list of them (see :func:`match`).
    model
        The matcher (embedded demo when None): detector, Siamese network and fusion.
    max_candidates, threshold, detector
        As in :func:`match`.
    fp_rates
        False positives per image at which sensitivity is reported.
    per_case
        Return one row per (method, case) instead of one per method.
    return_curves
        Also put the FROC curves in ``df.attrs["froc"]``: ``{"detector": curve, method: curve}``
        (:func:`froc_curve` tables as dicts of lists), for :func:`bt.pl.mammo_froc`.

    Returns
    -------
    pandas.DataFrame
        One row per method: ``method, n_cases, n_true_pairs, top1_recovered, top1_accuracy``
        (recovered / true pairs), ``top1_accuracy_detected`` (over pairs whose lesion was
        detected in both views), ``roc_auc`` (pair level: a pair is positive when both
        candidates sit on the same lesion), ``n_pos_pairs, n_neg_pairs``, ``sens@{f}fp``
        (detection alone) and ``sens@{f}fp_matched`` (scores down-weighted for candidates
        without a counterpart) for each FP rate, ``candidate_recall`` (true lesions per view
        hit by a candidate), ``candidates_per_view``, ``detect_s_per_case`` and
        ``match_s_per_case`` (seconds).

    Examples
    --------
    >>> cases = [bt.mammo.phantom(s) for s in range(100, 105)]
    >>> bt.mammo.evaluate(cases, ["template", "geometric"])  # doctest: +SKIP
    """
    methods = [method] if isinstance(method, str) else list(method)
    if not cases:
        raise InputError("evaluate needs at least one case")
    if model is None and (detector == "learned" or any(
            m not in ("template", "geometric") for m in methods)):
        from biomed_toolkit.mammo.modeling import load

        model = load()
    prepared = []
    t_detect = 0.0
    hits, n_lesion_views, n_cands = 0, 0, []
    for case in cases:
        _true_lesions(case)
        t0 = time.perf_counter()
        geo = case_geometry(case)
        cands = case_candidates(case, model, max_candidates=max_candidates, detector=detector,
                                geometry=geo)
        cc, mlo = cands["cc"], cands["mlo"]
        t_detect += time.perf_counter() - t0
        lab = {"cc": label_candidates(case, "cc", cc), "mlo": label_candidates(case, "mlo", mlo)}
        for v in ("cc", "mlo"):
            present = set(_present(case, v)["lesion_id"].tolist())
            hits += len(present & set(lab[v][lab[v] >= 0].tolist()))
            n_lesion_views += len(present)
            n_cands.append(len(cands[v]))
        prepared.append((case, cc, mlo, lab, geo))
    recall = hits / n_lesion_views if n_lesion_views else float("nan")
    curves: dict[str, Any] = {}
    rows = []
    for meth in methods:
        ys, ps = [], []
        rec_total, true_total, det_total = 0, 0, 0
        froc_plain, froc_matched = [], []
        t_match = 0.0
        case_rows = []
        for case, cc, mlo, lab, geo in prepared:
            t0 = time.perf_counter()
            prob = score_matrix(case, cc, mlo, method=meth, model=model, geometry=geo)
            pairs = pairs_frame(prob, cc, mlo, threshold=threshold, method=meth)
            dt = time.perf_counter() - t0
            t_match += dt
            rec, n_true = evaluate_matches(case, pairs)
            true_ids = set(_true_lesions(case)["lesion_id"].tolist())
            detected = true_ids & set(lab["cc"][lab["cc"] >= 0].tolist()) & set(
                lab["mlo"][lab["mlo"] >= 0].tolist()
            )
            rec_total += rec
            true_total += n_true
            det_total += len(detected)
            if prob.size:
                y = (lab["cc"][:, None] >= 0) & (lab["cc"][:, None] == lab["mlo"][None, :])
                ys.append(y.ravel())
                ps.append(prob.ravel())
            for v, cands, best in (
                ("cc", cc, prob.max(axis=1) if prob.size else np.zeros(len(cc))),
                ("mlo", mlo, prob.max(axis=0) if prob.size else np.zeros(len(mlo))),
            ):
                present = set(case.lesions.loc[case.lesions[f"in_{v}"], "lesion_id"].tolist())
                s = cands["score"].to_numpy()
                froc_plain.append((s, lab[v], present))
                froc_matched.append((rescore_with_matches(s, best), lab[v], present))
            if per_case:
                case_rows.append({"method": meth, "case_id": case.case_id, "n_true_pairs": n_true,
                                  "top1_recovered": rec, "detected_pairs": len(detected),
                                  "match_s": dt})
        if per_case:
            rows.extend(case_rows)
            continue
        y = np.concatenate(ys) if ys else np.zeros(0, bool)
        p = np.concatenate(ps) if ps else np.zeros(0)
        row = {
            "method": meth,
            "n_cases": len(prepared),
            "n_true_pairs": true_total,
            "top1_recovered": rec_total,
            "top1_accuracy": rec_total / true_total if true_total else float("nan"),
            "top1_accuracy_detected": rec_total / det_total if det_total else float("nan"),
            "roc_auc": _roc_auc(y, p),
            "n_pos_pairs": int(y.sum()),
            "n_neg_pairs": int((~y).sum()),
        }
        plain = froc_sensitivity(froc_plain, fp_rates)
        matched = froc_sensitivity(froc_matched, fp_rates)
        if return_curves:
            curves.setdefault("detector", froc_curve(froc_plain).to_dict("list"))
            curves[meth] = froc_curve(froc_matched).to_dict("list")
        for f in fp_rates:
            row[f"sens@{f:g}fp"] = plain[f]
            row[f"sens@{f:g}fp_matched"] = matched[f]
        row["candidate_recall"] = recall
        row["candidates_per_view"] = float(np.mean(n_cands)) if n_cands else 0.0
        row["detect_s_per_case"] = t_detect / len(prepared)
        row["match_s_per_case"] = t_match / len(prepared)
        rows.append(row)
    df = pd.DataFrame(rows)
    if return_curves:
        df.attrs["froc"] = curves
    return df
