"""Candidates, patches, the three matchers, assignment and evaluation on phantoms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.candidates import (
    detect_candidates,
    estimate_nipple,
    extract_patches,
    label_candidates,
)
from biomed_toolkit.mammo.evaluation import evaluate, evaluate_matches, froc_sensitivity
from biomed_toolkit.mammo.matching import assign, candidates_of, match, template_scores
from biomed_toolkit.mammo.phantom import phantom


@pytest.fixture(scope="module")
def easy_cases():
    # Fatty breasts, clear masses: the detector and matchers must do well here. (The phantom's
    # defaults now add look-alikes, ill-defined / spiculated margins and one-view lesions, #13;
    # "clear masses" turns them off.)
    return [phantom(s, n_lesions=3, density="a", calcification_fraction=0.0, shape=(384, 312),
                    lookalikes=0, margins=("circumscribed",), one_view_fraction=0.0)
            for s in range(200, 205)]


def test_detector_finds_clear_masses(easy_cases):
    hit, total = 0, 0
    for case in easy_cases:
        for v in ("cc", "mlo"):
            c = detect_candidates(case.view(v), max_candidates=10)
            assert list(c["score"]) == sorted(c["score"], reverse=True)
            assert c["view"].eq(v.upper()).all()
            lab = label_candidates(case, v, c)
            hit += len(set(lab[lab >= 0]))
            total += int(case.lesions[f"in_{v}"].sum())
    assert hit / total >= 0.75


def test_detector_is_resolution_independent():
    small = phantom(31, n_lesions=2, density="a", shape=(384, 312), calcification_fraction=0)
    big = phantom(31, n_lesions=2, density="a", shape=(1152, 936), calcification_fraction=0)
    for case in (small, big):
        c = detect_candidates(case.cc, max_candidates=8)
        assert (label_candidates(case, "cc", c) >= 0).sum() >= 1


def test_nipple_estimate_close_to_truth(easy_cases):
    for case in easy_cases[:3]:
        for v in ("cc", "mlo"):
            r, c = estimate_nipple(case.view(v))
            tr, tc = case.nipple[v]
            sp = case.view(v).mm_per_pixel
            assert np.hypot(r - tr, c - tc) * sp < 12


def test_patches_shape_and_centering():
    img = np.zeros((200, 200), np.float32)
    img[95:106, 95:106] = 1.0
    p = extract_patches(img, np.array([[100.0, 100.0], [100.0, 40.0]]), size_mm=20,
                        out_size=16, normalize="none")
    assert p.shape == (2, 16, 16)
    assert p[0, 7:9, 7:9].mean() > 0.9 and p[1].max() == 0
    both = extract_patches(img, np.array([[100.0, 100.0]]), normalize="both", out_size=16)
    assert both.shape == (1, 2, 16, 16)
    assert abs(both[0, 0].mean()) < 1e-4


def test_template_scores_prefer_identical_patches():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 8, 8))
    p = template_scores(a, a + 0.05 * rng.normal(size=a.shape))
    assert (p.argmax(axis=1) == np.arange(4)).all()
    e = template_scores(a, a, metric="euclidean")
    assert np.allclose(np.diag(e), 1.0) and (e.argmax(axis=1) == np.arange(4)).all()
    with pytest.raises(InputError):
        template_scores(a, a, metric="cosine")


def test_assignment_allows_unmatched():
    prob = np.array([[0.9, 0.8, 0.1], [0.85, 0.2, 0.1], [0.1, 0.2, 0.3]])
    pairs = assign(prob, threshold=0.5)
    # Greedy would take (0, 0) and leave row 1 alone; the optimum pairs 0-1 and 1-0.
    assert sorted(pairs) == [(0, 1), (1, 0)]
    assert assign(prob, threshold=0.95) == []


def test_match_table_and_geometric_beats_chance(easy_cases):
    case = easy_cases[0]
    m = match(case, method="geometric")
    cands = candidates_of(m)
    assert len(m) == len(cands["cc"]) * len(cands["mlo"])
    assert m["probability"].between(0, 1).all()
    assigned = m[m["assigned"]]
    assert assigned["cc_id"].is_unique and assigned["mlo_id"].is_unique
    assert (assigned["probability"] > 0.5).all()
    assert (m.groupby("cc_id")["rank_cc"].min() == 1).all()
    # attrs survive concatenation (plain data, not DataFrames)
    pd.concat([m, m])
    rec, n_true = evaluate_matches(case, m)
    assert n_true == 3 and 0 <= rec <= 3
    with pytest.raises(InputError, match="Case"):
        match(case.cc, method="template")
    with pytest.raises(InputError, match="method"):
        match(case, method="magic")


def test_evaluate_table(easy_cases):
    df = evaluate(easy_cases, ["template", "geometric"])
    assert list(df["method"]) == ["template", "geometric"]
    for col in ["roc_auc", "top1_accuracy", "sens@0.5fp", "sens@1fp", "sens@2fp",
                "sens@2fp_matched", "match_s_per_case"]:
        assert col in df
    geo = df.set_index("method").loc["geometric"]
    assert geo["roc_auc"] > 0.75  # far above chance (0.5)
    assert geo["top1_accuracy"] > 0.3
    assert df["sens@2fp"].iloc[0] >= df["sens@0.5fp"].iloc[0]
    per = evaluate(easy_cases[:2], "geometric", per_case=True)
    assert len(per) == 2 and set(per["case_id"]) == {c.case_id for c in easy_cases[:2]}


def test_froc_sensitivity_by_hand():
    # Two images; lesion 0 found at score 5 in image 1, FP at 4 and 1; image 2 has one lesion
    # missed and a FP at 3.
    images = [
        (np.array([5.0, 4.0, 1.0]), np.array([0, -1, -1]), {0}),
        (np.array([3.0]), np.array([-1]), {1}),
    ]
    s = froc_sensitivity(images, (0.5, 1.0, 2.0))
    assert s[0.5] == 0.5 and s[1.0] == 0.5 and s[2.0] == 0.5
    assert froc_sensitivity([(np.array([2.0]), np.array([0]), {0})], (0.5,))[0.5] == 1.0
