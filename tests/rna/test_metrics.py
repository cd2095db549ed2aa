"""integration_metrics and classification metrics on pbmc68k_reduced (real data)."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.rna import metrics as m


@pytest.fixture(scope="module")
def pbmc():
    adata = sc.datasets.pbmc68k_reduced()
    rng = np.random.default_rng(0)
    adata.obs["batch"] = np.where(rng.random(adata.n_obs) < 0.5, "a", "b")
    # a representation where the two batches are pushed apart: batch metrics must drop
    shift = np.where(adata.obs["batch"].to_numpy() == "a", 0.0, 8.0)[:, None]
    adata.obsm["X_shifted"] = adata.obsm["X_pca"] + shift
    adata.obsm["X_noise"] = rng.normal(size=(adata.n_obs, 20))
    return adata


def test_integration_metrics_ranks_representations(pbmc):
    df = m.integration_metrics(pbmc, ["X_pca", "X_noise", "X_shifted"], "bulk_labels", "batch",
                               resolutions=(0.4, 0.8, 1.2))
    assert list(df.index) == ["X_pca", "X_noise", "X_shifted"]
    for col in m.METRIC_COLUMNS:
        assert col in df.columns
    pca, noise, shifted = df.loc["X_pca"], df.loc["X_noise"], df.loc["X_shifted"]
    # real structure beats noise on every bio-conservation metric
    for col in ("nmi", "ari", "knn_f1", "linear_f1", "graph_connectivity"):
        assert pca[col] > noise[col] + 0.1, col
    assert pca["asw_label"] > noise["asw_label"] + 0.05
    # label probes on PCA of pbmc68k_reduced are well above chance (10 classes)
    assert pca["linear_f1"] > 0.45 and pca["knn_f1"] > 0.45
    # random batch labels mix well on PCA; a batch shift is detected
    assert pca["asw_batch"] > 0.85
    assert shifted["asw_batch"] < pca["asw_batch"] - 0.1
    assert 0.0 <= pca["nmi"] <= 1.0 and -1 <= pca["ari"] <= 1
    assert pca["resolution"] in (0.4, 0.8, 1.2)


def test_integration_metrics_without_batch_and_single_key(pbmc):
    df = m.integration_metrics(pbmc, "X_pca", "bulk_labels", resolutions=(0.8,))
    assert df.shape[0] == 1
    assert np.isnan(df.loc["X_pca", "asw_batch"]) and np.isnan(df.loc["X_pca", "batch_correction"])


def test_integration_metrics_errors(pbmc):
    with pytest.raises(InputError, match="X_missing"):
        m.integration_metrics(pbmc, ["X_missing"], "bulk_labels")
    with pytest.raises(InputError, match="not found in adata.obs"):
        m.integration_metrics(pbmc, ["X_pca"], "no_such_column")


def test_graph_connectivity_and_asw_on_known_structure():
    import scipy.sparse as sp

    # two labels; label "a" split in two disconnected halves, "b" fully connected
    labels = np.array(["a"] * 4 + ["b"] * 4)
    g = sp.lil_matrix((8, 8))
    for i, j in [(0, 1), (2, 3), (4, 5), (5, 6), (6, 7)]:
        g[i, j] = g[j, i] = 1
    assert m.graph_connectivity(g.tocsr(), labels) == pytest.approx((0.5 + 1.0) / 2)
    x = np.r_[np.zeros((4, 2)), np.full((4, 2), 10.0)] + np.random.default_rng(0).normal(0, 0.1, (8, 2))
    assert m.asw_label(x, labels) > 0.95


def test_classification_metrics():
    out = m.classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "c"])
    assert out["accuracy"] == pytest.approx(0.75)
    # per-class F1: a 2/3, b 2/3, c 1
    assert out["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
