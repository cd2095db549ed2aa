"""The linear-probe start of fine-tuning: the folded weights are the logistic regression they come
from, and cross-validation decides how much the start leans on the encoder (real pbmc68k cells)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomed_toolkit.rna.configuration import LabelColumn
from biomed_toolkit.rna.training import (
    _head_linear,
    choose_pooler_weight,
    cross_validate_probe,
    expression_features,
    probe_init,
    with_heads,
)

from .helpers import fresh_model

TYPES = ["CD14+ Monocyte", "CD19+ B", "CD56+ NK", "CD8+ Cytotoxic T", "Dendritic"]


@pytest.fixture(scope="module")
def cells():
    from biomed_toolkit.rna.datasets import pbmc68k_counts

    counts = pbmc68k_counts()
    y_all = counts.obs["bulk_labels"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(y_all == t), 24, replace=False)
                                  for t in TYPES]))
    sub = counts[idx].copy()
    y = np.searchsorted(TYPES, y_all[idx])
    genes = np.arange(sub.n_vars)  # token ids of the columns (one per gene, in order)
    x = expression_features(sub.X, genes, genes)
    return sub, x, y


def test_probe_start_with_pooler_weight_zero_is_pca_plus_lr(cells):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sub, x, y = cells
    model = with_heads(fresh_model(sub.var_names), [LabelColumn("ct", len(TYPES))], {"ct"})
    pooled = np.random.default_rng(1).normal(size=(len(y), 32))
    pw, pb = probe_init(model, "ct", x, pooled, y, len(TYPES), pooler_weight=0.0)
    lin = _head_linear(model, "ct")
    assert torch.count_nonzero(lin.weight) == 0 and torch.count_nonzero(lin.bias) == 0
    dense = x.toarray()
    ref = make_pipeline(StandardScaler(), PCA(50, random_state=0),
                        LogisticRegression(max_iter=3000)).fit(dense, y)
    z = dense @ pw + pb
    np.testing.assert_allclose(z - z.mean(axis=1, keepdims=True),
                               ref.decision_function(dense), atol=2e-3)


def test_probe_start_folds_the_pooler_block_into_the_head(cells):
    sub, x, y = cells
    model = with_heads(fresh_model(sub.var_names), [LabelColumn("ct", len(TYPES))], {"ct"})
    rng = np.random.default_rng(2)
    pooled = rng.normal(size=(len(y), 32)) + 3.0 * np.eye(32)[y]  # carries the labels
    pw, pb = probe_init(model, "ct", x, pooled, y, len(TYPES), pooler_weight=1.0)
    lin = _head_linear(model, "ct")
    with torch.no_grad():
        head = lin(torch.as_tensor(pooled, dtype=torch.float32)).numpy()
    pred = (x.toarray() @ pw + pb + head).argmax(axis=1)
    assert (pred == y).mean() > 0.95
    assert torch.count_nonzero(lin.weight) > 0


def test_cross_validation_lets_informative_encoder_features_in(cells):
    _, x, y = cells
    rng = np.random.default_rng(3)
    # pooler features that carry the labels, an expression path of noise: the start must lean
    # on the encoder (with the real path and these features, weight 0 would lose ~0.3 macro-F1)
    signal = rng.normal(size=(len(y), 64)) + 2.5 * np.eye(64)[y]
    w, scores = choose_pooler_weight(rng.normal(size=x.shape), signal, y)
    assert set(scores) == {0.0, 0.25, 0.5, 1.0}
    assert w == 1.0 and scores[1.0] > scores[0.0] + 0.3
    # the real path next to the same features: still no reason to leave the encoder out
    w, scores = choose_pooler_weight(x.toarray(), signal, y)
    assert w > 0.0 and scores[w] >= scores[0.0]
    # nothing to choose between
    assert choose_pooler_weight(None, signal, y) == (1.0, {})
    assert choose_pooler_weight(x.toarray(), None, y) == (1.0, {})


def test_cross_validation_keeps_a_class_of_one_cell_in_every_fit(cells):
    """A class with one training cell (pbmc68k at 100 cells, Baron at 100) used to switch the
    cross-validation off, and with it the temperature: the cell now joins every fold's fit."""
    _, x, y = cells
    dense = x.toarray()
    y1 = y.copy()
    y1[7] = len(TYPES)  # a sixth type with a single cell
    rng = np.random.default_rng(4)
    signal = rng.normal(size=(len(y), 16)) + 2.0 * np.eye(16)[y1]
    cv = cross_validate_probe(dense, signal, y1, (0.0, 1.0))
    assert cv is not None and 7 not in cv.rows and len(cv.rows) == len(y) - 1
    assert cv.log_proba[1.0].shape == (len(y) - 1, len(TYPES) + 1)
    # every held-out cell got a prediction, and the lone class was learnt (it has a probability)
    lp = cv.log_proba[1.0]
    assert np.all(lp.max(axis=1) > -30.0) and np.all(lp[:, len(TYPES)] > -30.0)
    assert (lp.argmax(axis=1) == y1[cv.rows]).mean() > 0.8
    # two classes of one cell each among two of several: still a cross-validation
    y2 = np.where(np.isin(y, [2, 3, 4]), 2, y)
    y2[[0, 1]] = [3, 4]
    assert np.bincount(y2)[3:].tolist() == [1, 1]
    assert cross_validate_probe(dense, signal, y2, (0.0,)) is not None
    # one class left with two cells or more: nothing to hold out against
    y3 = np.zeros_like(y)
    y3[:2] = [1, 2]
    assert cross_validate_probe(dense, signal, y3, (0.0,)) is None
