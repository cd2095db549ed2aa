"""Input validation of the bt.tl / bt.rna entry points (issue #15, RNA part).

Each group of the issue has its tests: a failing call leaves the user's AnnData unchanged,
gene matching ignores case when exact matching leaves genes out and warns on low coverage,
continuous labels are refused for classification, and X / batch_size / backed views are
checked before any cell is read. Models are tiny random ones over the dataset's genes.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import biomed_toolkit as bt
from biomed_toolkit.core.errors import GeneMatchError, InputError
from biomed_toolkit.rna import tasks
from biomed_toolkit.rna.tokenize import GeneTokenizer, match_genes
from biomed_toolkit.rna.training import label_codes

from .helpers import fresh_model

CLASSES = ["B", "Mono", "NK"]


@pytest.fixture(scope="module")
def cells():
    """40 pbmc68k cells with raw counts (dense float32 X) and a 3-class label."""
    from biomed_toolkit.rna.datasets import pbmc68k_counts

    torch.set_num_threads(1)
    full = pbmc68k_counts()
    out = full[:40].copy()
    out.X = np.asarray(out.X.toarray() if sp.issparse(out.X) else out.X, dtype=np.float32)
    out.obs["ct"] = np.asarray(CLASSES * 14)[:40]
    return out


@pytest.fixture(scope="module")
def model(cells):
    """A tiny model over the genes of ``cells`` with a 3-class ``cell_type`` head."""
    from biomed_toolkit.rna.configuration import LabelColumn
    from biomed_toolkit.rna.training import with_heads

    m = with_heads(fresh_model(list(cells.var_names)), [LabelColumn("cell_type", 3)], set())
    m.label_dict["cell_type"] = {c: i for i, c in enumerate(CLASSES)}
    return m.eval()


def _fields(adata: ad.AnnData) -> tuple:
    return (list(adata.obs.columns), list(adata.obsm.keys()), sorted(adata.uns.keys()))


# ------------------------------------------------------------------------------------------
# 1. nothing is written into adata until the whole call has succeeded
# ------------------------------------------------------------------------------------------
def test_annotate_one_cell_with_majority_voting(cells, model):
    one = cells[:1].copy()
    tasks.annotate(one, model, majority_voting=True)
    # a single cell is its own over-cluster: the vote keeps its label
    assert one.obs["bmfm_cell_type_majority_voting"].astype(str).iloc[0] == \
        one.obs["bmfm_cell_type"].astype(str).iloc[0]
    assert one.obsm["bmfm_cell_type_probabilities"].shape == (1, 3)


def test_failed_annotate_leaves_adata_unchanged(cells, model):
    adata = cells[:10].copy()
    before = _fields(adata)
    # fails after inference, when the over-clustering embedding is looked up
    with pytest.raises(InputError):
        tasks.annotate(adata, model, majority_voting=True, use_rep="X_missing")
    assert _fields(adata) == before
    # fails during inference (non-count values met while streaming)
    adata.X = adata.X * 0.5
    for call in (lambda: tasks.annotate(adata, model), lambda: tasks.embed(adata, model)):
        with pytest.raises(InputError, match="non-integer"):
            call()
        assert _fields(adata) == before


def test_failed_reference_map_leaves_query_unchanged(cells):
    ref, query = cells[:20].copy(), cells[20:].copy()
    ref.obsm["X_bmfm"] = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    query.obsm["X_bmfm"] = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    before = _fields(query)
    for bad in ({"k": 0}, {"k": "5"}, {"min_confidence": 2.0}, {"metric": "manhattan"}):
        with pytest.raises(InputError):
            tasks.reference_map(query, ref, "ct", **bad)
        assert _fields(query) == before
    tasks.reference_map(query, ref, "ct", k=5)
    assert query.obs["ct_ref"].notna().all()


def test_commit_puts_earlier_fields_back_when_a_write_fails(cells):
    adata = cells[:5].copy()
    adata.obs["keep"] = 1
    old = adata.obs["keep"].copy()
    with pytest.raises(ValueError):
        # the obsm value has the wrong number of rows: anndata refuses it after the obs writes
        tasks._commit(adata, obs={"keep": np.arange(5), "new": np.zeros(5)},
                      obsm={"bad": np.zeros((3, 2))})
    assert "new" not in adata.obs and "bad" not in adata.obsm
    assert (adata.obs["keep"] == old).all()


# ------------------------------------------------------------------------------------------
# 2. gene matching: case-insensitive fallback, low-coverage warning
# ------------------------------------------------------------------------------------------
def test_other_case_var_names_match_and_embed_the_same(cells, model):
    exact = tasks.embed(cells, model, copy=True)
    ref = exact.obsm["X_bmfm"]
    low = cells.copy()
    low.var_names = [g.lower() if i % 100 else g for i, g in enumerate(cells.var_names)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # full coverage: no low-coverage warning
        out = tasks.embed(low, model, copy=True)
    np.testing.assert_array_equal(out.obsm["X_bmfm"], ref)
    gm = out.uns["X_bmfm"]["gene_match"]
    assert gm["n_unmatched"] == 0
    assert gm["n_matched"] == exact.uns["X_bmfm"]["gene_match"]["n_matched"] > 600


def test_low_coverage_warns_in_log_and_warnings(cells, model, caplog):
    adata = cells.copy()
    adata.var_names = [g if i < 6 else f"NOPE{i}" for i, g in enumerate(cells.var_names)]
    with pytest.warns(UserWarning, match=r"genes of var_names matched to the model \(of 765\) carry only \d+\.\d% of the counts"):
        tasks.embed(adata, model)
    assert any("carry only" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert adata.uns["X_bmfm"]["gene_match"]["fraction_counts_covered"] < 0.5
    # the fine-tuning match warns too (match_genes with coverage and the summary line)
    with pytest.warns(UserWarning, match="carry only"):
        match_genes(adata, model)


def test_exact_match_wins_over_case_insensitive_one():
    tok = GeneTokenizer.from_genes(["CD3E", "LYZ", "Abc", "ABC"])
    adata = ad.AnnData(np.ones((2, 5), dtype=np.float32))
    adata.var_names = ["cd3e", "CD3E", "lyz", "aBC", "Abc"]
    rep = match_genes(adata, tok, limit_genes=None, log_summary=False)
    # CD3E exactly (so cd3e gets nothing); lyz by case; aBC is ambiguous (Abc and ABC differ
    # only by case); Abc exactly
    assert rep.matched == ["CD3E", "lyz", "Abc"]
    assert rep.unmatched == ["cd3e", "aBC"]
    assert rep.case_insensitive_hits == 1


def test_ignore_case_false_keeps_the_mouse_hint():
    tok = GeneTokenizer.from_genes(["CD3E", "LYZ"])
    adata = ad.AnnData(sp.csr_matrix(np.ones((2, 2), dtype=np.float32)))
    adata.var_names = ["Cd3e", "Lyz"]
    with pytest.raises(GeneMatchError, match="ignoring case"):
        match_genes(adata, tok, ignore_case=False)
    assert match_genes(adata, tok, log_summary=False).matched == ["Cd3e", "Lyz"]


# ------------------------------------------------------------------------------------------
# 3. continuous labels are refused for classification
# ------------------------------------------------------------------------------------------
def test_continuous_float_label_is_refused(cells, model):
    adata = cells.copy()
    adata.obs["age"] = np.linspace(20.5, 80.5, adata.n_obs)
    with pytest.raises(InputError, match=r"continuous values .* bin it") as err:
        label_codes(adata, "age", "label_key")
    assert "'age'" in str(err.value) and "pd.cut" in str(err.value)
    with pytest.raises(InputError, match="continuous"):
        tasks.finetune(adata, "age", model, max_steps=1, progress=False)


def test_more_classes_than_half_the_cells_is_refused(cells):
    adata = cells.copy()
    adata.obs["cell_id"] = [f"c{i}" for i in range(adata.n_obs)]
    with pytest.raises(InputError, match="more classes than half the cells"):
        label_codes(adata, "cell_id", "label_key")
    adata.obs["sixty"] = np.arange(adata.n_obs).astype(float)  # integer-valued floats, one per cell
    with pytest.raises(InputError, match="more classes than half"):
        label_codes(adata, "sixty", "batch_key")


def test_categorical_like_labels_still_accepted(cells):
    adata = cells.copy()
    adata.obs["flag"] = np.where(np.arange(adata.n_obs) % 2, 1.0, 0.0)
    adata.obs.loc[adata.obs_names[0], "flag"] = np.nan  # a missing label is left out, not refused
    codes, classes = label_codes(adata, "flag", "label_key")
    assert classes == ["0.0", "1.0"] and codes[0] == -100 and set(codes[1:]) == {0, 1}
    codes, classes = label_codes(adata, "ct", "label_key")
    assert classes == sorted(CLASSES)


# ------------------------------------------------------------------------------------------
# 4. X dtype, batch_size and backed views
# ------------------------------------------------------------------------------------------
def test_boolean_x_is_not_counts(cells, model):
    adata = cells[:10].copy()
    adata.X = adata.X > 0
    before = _fields(adata)
    with pytest.raises(InputError, match="booleans"):
        tasks.embed(adata, model)
    adata.X = sp.csr_matrix(adata.X)
    with pytest.raises(InputError, match="booleans"):
        bt.rna.embed_cells(model, adata)
    assert _fields(adata) == before


def test_float16_and_numeric_object_x_embed_like_float32(cells, model):
    adata = cells[:10].copy()
    ref = tasks.embed(adata, model, copy=True).obsm["X_bmfm"]
    for dtype in (np.float16, object):
        other = adata.copy()
        other.X = adata.X.astype(dtype)
        np.testing.assert_array_equal(tasks.embed(other, model, copy=True).obsm["X_bmfm"], ref)


def test_non_numeric_object_x_is_refused(cells, model):
    adata = cells[:4].copy()
    x = adata.X.astype(object)
    x[0, 0] = "three"
    adata.X = x
    with pytest.raises(InputError, match="adata.X has dtype object .* not numbers"):
        tasks.embed(adata, model)
    assert "X_bmfm" not in adata.obsm


@pytest.mark.parametrize("bad", [-1, 0, "big", 2.5, True, None])
def test_bad_batch_size_refused_at_every_entry_point(cells, model, bad):
    adata = cells[:8].copy()
    before = _fields(adata)
    calls = {
        "embed": lambda: tasks.embed(adata, model, batch_size=bad),
        "annotate": lambda: tasks.annotate(adata, model, batch_size=bad),
        "embed_cells": lambda: bt.rna.embed_cells(model, adata, batch_size=bad),
        "predict_labels": lambda: bt.rna.predict_labels(model, adata, batch_size=bad),
        "finetune": lambda: tasks.finetune(adata, "ct", model, batch_size=bad, max_steps=1),
    }
    for name, call in calls.items():
        with pytest.raises(InputError, match="batch_size must be a positive integer"):
            call()
        assert _fields(adata) == before, name


def test_good_batch_sizes_still_work(cells, model):
    adata = cells[:8].copy()
    a = tasks.embed(adata, model, batch_size=np.int64(3), copy=True).obsm["X_bmfm"]
    b = tasks.embed(adata, model, batch_size="auto", copy=True).obsm["X_bmfm"]
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="max_length must be an integer >= 3"):
        tasks.embed(adata, model, max_length=0)


def test_view_of_backed_anndata(cells, model, tmp_path):
    path = tmp_path / "cells.h5ad"
    cells.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        view = backed[5:15]
        with pytest.raises(InputError, match="view of a backed .* copy=True"):
            tasks.embed(view, model)
        with pytest.raises(InputError, match="view of a backed"):
            tasks.annotate(view, model)
        out = tasks.embed(view, model, copy=True)
        ref = tasks.embed(cells[5:15].copy(), model, copy=True)
        np.testing.assert_allclose(out.obsm["X_bmfm"], ref.obsm["X_bmfm"], atol=1e-5, rtol=0)
        # the backed object itself (not a view) takes the fields in memory, as before
        tasks.embed(backed, model)
        assert backed.obsm["X_bmfm"].shape == (cells.n_obs, model.config.hidden_size)
    finally:
        backed.file.close()
