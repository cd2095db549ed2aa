"""Plots: matplotlib and plotly outputs on pbmc68k_reduced."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.rna import plotting as pl


@pytest.fixture(scope="module")
def pbmc():
    return sc.datasets.pbmc68k_reduced()


def test_embedding_matplotlib_categorical_and_gene(pbmc):
    import matplotlib.pyplot as plt

    fig = pl.embedding(pbmc, "X_umap", color=["bulk_labels", "CD79A"], return_fig=True)
    ax0, ax1 = fig.axes[0], fig.axes[1]
    # one scatter per category, colours taken from scanpy's uns palette
    assert len(ax0.collections) == pbmc.obs["bulk_labels"].nunique()
    legend = [t.get_text() for t in ax0.get_legend().get_texts()]
    assert set(legend) == set(pbmc.obs["bulk_labels"].cat.categories)
    first = pbmc.obs["bulk_labels"].cat.categories[0]
    got = matplotlib.colors.to_hex(ax0.collections[0].get_facecolor()[0])
    assert got == matplotlib.colors.to_hex(pbmc.uns["bulk_labels_colors"][0])
    assert legend[0] == first
    assert ax1.get_title() == "CD79A"
    plt.close(fig)
    ax = pl.embedding(pbmc, "umap", color="n_counts", show=False)
    assert ax.get_title() == "n_counts"
    plt.close("all")


def test_embedding_computes_and_caches_umap(pbmc):
    adata = pbmc[:200].copy()
    rng = np.random.default_rng(0)
    adata.obsm["X_bmfm"] = adata.obsm["X_pca"] + rng.normal(0, 0.01, adata.obsm["X_pca"].shape)
    fig = pl.embedding(adata, "X_bmfm", color="bulk_labels", interactive=True, return_fig=True)
    assert "X_umap_bmfm" in adata.obsm and adata.obsm["X_umap_bmfm"].shape == (200, 2)
    first = adata.obsm["X_umap_bmfm"].copy()
    # plotly: one trace per category, all points present
    assert sum(len(tr.x) for tr in fig.data) == 200
    assert {tr.name for tr in fig.data} == set(adata.obs["bulk_labels"].astype(str))
    pl.embedding(adata, "X_bmfm", color="bulk_labels", show=False)
    np.testing.assert_array_equal(adata.obsm["X_umap_bmfm"], first)  # reused, not recomputed
    with pytest.raises(InputError, match="not found in adata.obsm"):
        pl.embedding(adata, "X_nope", show=False)
    with pytest.raises(InputError, match="neither an adata.obs column nor a gene"):
        pl.embedding(adata, "X_umap", color="NOT_A_GENE", show=False)


def test_confusion(pbmc):
    adata = pbmc.copy()
    pred = adata.obs["bulk_labels"].astype(str).to_numpy().copy()
    pred[:50] = "Dendritic"
    adata.obs["pred"] = pred
    table = pl.confusion_table(adata.obs["bulk_labels"], adata.obs["pred"])
    np.testing.assert_allclose(table.sum(axis=1).to_numpy(), 1.0)
    assert table.loc["Dendritic", "Dendritic"] == pytest.approx(1.0)
    counts = pl.confusion_table(adata.obs["bulk_labels"], adata.obs["pred"], normalize=None)
    assert counts.to_numpy().sum() == adata.n_obs
    fig = pl.confusion(adata, "bulk_labels", "pred", return_fig=True)
    assert fig.axes[0].get_xlabel().startswith("pred")
    with pytest.raises(InputError):
        pl.confusion(adata, "bulk_labels", "missing", show=False)


def test_gene_match_plot_from_dict_and_report():
    report = {"n_genes": 100, "n_matched": 80, "n_unmatched": 12, "n_not_protein_coding": 3,
              "n_duplicated": 5, "fraction_counts_covered": 0.9}
    fig = pl.gene_match({"gene_match": report}, return_fig=True)
    widths = sorted(int(p.get_width()) for p in fig.axes[0].patches)
    assert widths == [3, 5, 12, 80]
    assert "80 of 100" in fig.axes[0].get_title()
    assert fig.axes[1].patches[0].get_height() == pytest.approx(0.9)
    # a real GeneMatchReport from the tokenizer
    from biomed_toolkit.rna.datasets import pbmc68k_counts
    from biomed_toolkit.rna.tokenize import GeneTokenizer, match_genes

    adata = pbmc68k_counts()[:50].copy()
    tok = GeneTokenizer.from_genes(list(adata.var_names[:600]) + ["CD3E"])
    rep = match_genes(adata, tok, limit_genes=None, log_summary=False)
    fig = pl.gene_match(rep, return_fig=True)
    widths = sorted(int(p.get_width()) for p in fig.axes[0].patches)
    assert widths == sorted([rep.n_matched, rep.n_unmatched, 0, rep.n_duplicated])
    assert rep.n_matched == 600
    with pytest.raises(InputError):
        pl.gene_match(42, show=False)


def test_integration_metrics_plot():
    df = pd.DataFrame({"nmi": [0.6, 0.2], "ari": [0.5, 0.1], "asw_batch": [np.nan, np.nan]},
                      index=pd.Index(["X_pca", "X_noise"], name="representation"))
    ax = pl.integration_metrics(df, show=False)
    assert len(ax.patches) == 4  # 2 metrics (all-NaN column skipped) x 2 representations
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["X_pca", "X_noise"]
    with pytest.raises(InputError):
        pl.integration_metrics(df, metrics=["linear_f1"], show=False)
