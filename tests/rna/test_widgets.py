"""CellAnnotator driven from Python on pbmc68k_reduced."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scanpy as sc

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.rna.widgets import CellAnnotator, marker_genes


@pytest.fixture()
def adata():
    a = sc.datasets.pbmc68k_reduced()
    a.obs["pred"] = a.obs["bulk_labels"].astype(str)
    a.obs["pred_confidence"] = np.random.default_rng(0).uniform(size=a.n_obs)
    return a


def test_marker_genes_of_nk_cluster(adata):
    nk = (adata.obs["bulk_labels"] == "CD56+ NK").to_numpy()
    table = marker_genes(adata, nk, n_genes=10)
    assert len(table) == 10
    assert {"NKG7", "GNLY"} & set(table["gene"].head(5))
    assert (np.diff(table["diff"].to_numpy()) <= 0).all()


def test_widget_select_relabel_threshold_undo(adata):
    import ipywidgets
    import plotly.graph_objects as go

    ann = CellAnnotator(adata, basis="X_umap", label_key="pred")
    assert isinstance(ann.figure, go.FigureWidget)
    assert isinstance(ann.widget, ipywidgets.VBox)
    points = ann.figure.data[0]
    assert len(points.x) == adata.n_obs
    legend = {tr.name for tr in ann.figure.data[1:]}
    assert legend == set(adata.obs["bulk_labels"].astype(str))
    original = adata.obs["pred"].astype(str).to_numpy().copy()

    b_cells = np.flatnonzero(adata.obs["bulk_labels"] == "CD19+ B")
    markers = ann.select(b_cells)
    assert {"CD79A", "CD79B", "MS4A1", "CD74"} & set(markers["gene"])
    assert list(ann.figure.data[0].selectedpoints) == b_cells.tolist()

    ann.relabel("B cell")
    assert (adata.obs["pred"].iloc[b_cells] == "B cell").all()
    assert adata.obs["pred_manual"].sum() == len(b_cells)
    assert "B cell" in {tr.name for tr in ann.figure.data[1:]}

    ann.set_threshold(0.5)
    conf = adata.obs["pred_confidence"].to_numpy()
    expected_un = (conf < 0.5) & ~adata.obs["pred_manual"].to_numpy()
    assert ((adata.obs["pred"] == "Unassigned").to_numpy() == expected_un).all()
    assert ann.slider.value == 0.5
    assert "Unassigned" in {tr.name for tr in ann.figure.data[1:]}

    # slider drives the same code path
    ann.slider.value = 0.8
    assert ann.threshold == 0.8
    assert ann.undo() and ann.threshold == 0.5
    assert ann.undo() and ann.threshold == 0.0
    assert ann.undo()  # relabel undone
    np.testing.assert_array_equal(adata.obs["pred"].astype(str).to_numpy(), original)
    assert not adata.obs["pred_manual"].any()
    assert not ann.undo()


def test_widget_click_selects_group_and_confidence_colouring(adata):
    ann = CellAnnotator(adata, label_key="pred", color_by="confidence")
    assert ann.figure.data[0].marker.showscale
    np.testing.assert_allclose(ann.figure.data[0].marker.color, adata.obs["pred_confidence"])
    ann._on_click(ann.figure.data[0], SimpleNamespace(point_inds=[0]), None)
    first = adata.obs["pred"].iloc[0]
    assert len(ann.selection) == int((adata.obs["pred"] == first).sum())
    ann._on_selection(ann.figure.data[0], SimpleNamespace(point_inds=[3, 1, 2]), None)
    assert ann.selection.tolist() == [1, 2, 3]
    ann.set_color("label")
    assert not ann.figure.data[0].marker.showscale


def test_widget_errors(adata):
    with pytest.raises(InputError, match="run bt.tl.annotate"):
        CellAnnotator(adata, label_key="missing")
    ann = CellAnnotator(adata, label_key="pred")
    with pytest.raises(InputError, match="nothing selected"):
        ann.relabel("x")
    with pytest.raises(InputError):
        ann.set_threshold(1.5)
    with pytest.raises(InputError):
        ann.select([adata.n_obs])
    no_conf = adata.copy()
    del no_conf.obs["pred_confidence"]
    ann2 = CellAnnotator(no_conf, label_key="pred")
    assert ann2.slider.disabled
    with pytest.raises(InputError, match="no confidence"):
        ann2.set_threshold(0.3)


def test_widget_on_annotate_output(fixtures_dir):
    import biomed_toolkit as bt
    from biomed_toolkit.rna import tasks
    from biomed_toolkit.rna.datasets import pbmc68k_counts

    adata = pbmc68k_counts()[:80].copy()
    model = bt.rna.load(fixtures_dir / "bmfm_rna_official_tiny" / "ckpt" / "last.ckpt",
                        device="cpu")
    tasks.annotate(adata, model, min_confidence=0.5, progress=False)
    ann = CellAnnotator(adata, basis="X_umap")  # label_key default: bmfm_cell_type
    assert ann.threshold == 0.5 and ann.confidence_key == "bmfm_cell_type_confidence"
    np.testing.assert_array_equal(ann.labels, adata.obs["bmfm_cell_type"].astype(str))
    ann.set_threshold(0.0)  # every cell shows its top class again
    np.testing.assert_array_equal(adata.obs["bmfm_cell_type"].astype(str),
                                  adata.obs["bmfm_cell_type_raw"].astype(str))
    assert adata.uns["bmfm_cell_type"]["params"]["min_confidence"] == 0.0
    ann.undo()
    assert ((adata.obs["bmfm_cell_type"] == "Unassigned").to_numpy()
            == (adata.obs["bmfm_cell_type_confidence"] < 0.5).to_numpy()).all()


def test_widget_page_snapshot_matches_state(adata):
    # a browser view that connects after the kernel ran (Voila, reopened notebook) is drawn from
    # the FigureWidget's snapshot (_widget_data), not from the edits streamed before it connected
    ann = CellAnnotator(adata, label_key="pred")
    snapshot = ann.figure._widget_data
    assert len(snapshot) == len(ann.figure.data) == 1 + adata.obs["pred"].nunique()
    assert list(snapshot[0]["marker"]["color"]) == list(ann.figure.data[0].marker.color)
    ann.set_color("confidence")
    ann._repr_mimebundle_()  # displaying the annotator again refreshes the snapshot
    assert ann.figure._widget_data[0]["marker"]["showscale"] is True
