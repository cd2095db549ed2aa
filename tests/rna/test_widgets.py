"""CellAnnotator driven from Python on pbmc68k_reduced."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
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
    before = (list(adata.obs.columns), adata.uns["rank_genes_groups"]["params"].copy())
    table = marker_genes(adata, nk, n_genes=10)
    assert len(table) == 10
    assert {"NKG7", "GNLY"} & set(table["gene"].head(5))
    assert (np.diff(table["score"].to_numpy()) <= 0).all()
    # scanpy's own numbers for the same two groups (logFC, BH-adjusted p)
    ref = adata.copy()
    ref.obs["g"] = pd.Categorical(np.where(nk, "selection", "rest"))
    sc.tl.rank_genes_groups(ref, "g", groups=["selection"], reference="rest", method="t-test")
    expected = sc.get.rank_genes_groups_df(ref, group="selection").head(10)
    assert table["gene"].tolist() == expected["names"].tolist()
    np.testing.assert_allclose(table["logfoldchange"], expected["logfoldchanges"], rtol=1e-4)
    np.testing.assert_allclose(table["pval_adj"], expected["pvals_adj"], rtol=1e-4)
    assert (table["pval_adj"].head(3) < 1e-5).all() and (table["logfoldchange"].head(3) > 1).all()
    assert (table["frac_in"] >= 0).all() and (table["frac_in"] <= 1).all()
    with pytest.raises(InputError, match="no rest"):
        marker_genes(adata, np.ones(adata.n_obs, bool))
    assert (list(adata.obs.columns), adata.uns["rank_genes_groups"]["params"]) == before


def test_marker_genes_on_raw_counts_are_log_normalised_first():
    from biomed_toolkit.rna.datasets import pbmc68k_counts

    counts = pbmc68k_counts()[:300].copy()
    nk = (counts.obs["bulk_labels"] == "CD56+ NK").to_numpy()
    table = marker_genes(counts, nk, n_genes=5)
    assert {"NKG7", "GNLY", "GZMB", "PRF1", "CTSW"} & set(table["gene"])
    assert (table["logfoldchange"] > 0).all() and (table["logfoldchange"] < 15).all()


def test_widget_select_relabel_threshold_undo(adata):
    import ipywidgets
    import plotly.graph_objects as go

    ann = CellAnnotator(adata, basis="X_umap", label_key="pred")
    assert isinstance(ann.figure, go.Figure)
    assert ann.view in ann.widget.children[1].children
    assert isinstance(ann.widget, ipywidgets.VBox)
    cells = _cell_traces(ann)
    assert sum(len(tr.x) for tr in cells) == adata.n_obs
    legend = {tr.name for tr in cells}
    assert legend == set(adata.obs["bulk_labels"].astype(str))
    # legend entries are the real point traces: hiding one hides exactly its cells
    for tr in cells:
        assert (adata.obs["pred"].iloc[list(tr.customdata)] == tr.name).all()
    original = adata.obs["pred"].astype(str).to_numpy().copy()

    b_cells = np.flatnonzero(adata.obs["bulk_labels"] == "CD19+ B")
    markers = ann.select(b_cells)
    assert {"CD79A", "CD79B", "MS4A1", "CD74"} & set(markers["gene"])
    assert _highlight(ann) == b_cells.tolist()
    assert f"{len(b_cells)} cells selected" in ann.info.value
    assert "CD79A" in ann.marker_html.value or "CD74" in ann.marker_html.value

    ann.relabel("B cell")
    assert (adata.obs["pred"].iloc[b_cells] == "B cell").all()
    assert adata.obs["pred_manual"].sum() == len(b_cells)
    assert "B cell" in {tr.name for tr in _cell_traces(ann)}
    # the panel shows the new counts at once; the highlight still rings the same cells
    assert f"B cell ({len(b_cells)})" in ann.info.value
    assert _highlight(ann) == b_cells.tolist()

    ann.set_threshold(0.5)
    conf = adata.obs["pred_confidence"].to_numpy()
    expected_un = (conf < 0.5) & ~adata.obs["pred_manual"].to_numpy()
    assert ((adata.obs["pred"] == "Unassigned").to_numpy() == expected_un).all()
    assert ann.slider.value == 0.5
    assert "Unassigned" in {tr.name for tr in _cell_traces(ann)}

    # slider drives the same code path; ticks in quick succession are one undo step
    ann.slider.value = 0.6
    ann.slider.value = 0.7
    ann.slider.value = 0.8
    assert ann.threshold == 0.8
    assert ann.undo() and ann.threshold == 0.0
    assert ann.undo()  # relabel undone
    np.testing.assert_array_equal(adata.obs["pred"].astype(str).to_numpy(), original)
    assert not adata.obs["pred_manual"].any()
    assert not ann.undo()


def _cell_traces(ann):
    return [tr for tr in ann.figure.data if tr.name != "selection"]


def _highlight(ann):
    (sel,) = [tr for tr in ann.figure.data if tr.name == "selection"]
    assert len(sel.x) == len(sel.customdata)
    return sorted(int(c) for c in sel.customdata)


def test_widget_click_selects_group_and_confidence_colouring(adata):
    ann = CellAnnotator(adata, label_key="pred", color_by="confidence")
    points = ann.figure.data[0]
    assert points.marker.showscale and points.marker.colorbar.title.text == "confidence"
    np.testing.assert_allclose(points.marker.color, adata.obs["pred_confidence"])
    ann._on_click(points, SimpleNamespace(point_inds=[0]), None)
    first = adata.obs["pred"].iloc[0]
    assert len(ann.selection) == int((adata.obs["pred"] == first).sum())
    ann._on_selection(points, SimpleNamespace(point_inds=[3, 1, 2]), None)
    assert ann.selection.tolist() == [1, 2, 3]
    ann.set_color("label")
    assert not any(tr.marker.showscale for tr in ann.figure.data)
    assert _highlight(ann) == [1, 2, 3]


def test_bridge_events_are_the_only_selection_path(adata):
    ann = CellAnnotator(adata, label_key="pred")
    ann._on_event({"type": "select", "cells": [5, 3, 4], "seq": 1})
    assert ann.selection.tolist() == [3, 4, 5] == _highlight(ann)
    assert "3 cells selected" in ann.info.value
    # a click selects the clicked cell's label group, shift-click only that cell
    ann._on_event({"type": "click", "cells": [7], "shift": False})
    group = np.flatnonzero(adata.obs["pred"].to_numpy() == adata.obs["pred"].iloc[7])
    assert ann.selection.tolist() == group.tolist() == _highlight(ann)
    ann._on_event({"type": "click", "cells": [7], "shift": True})
    assert ann.selection.tolist() == [7] == _highlight(ann)
    # Enter in the label box relabels exactly the ringed cells
    ann._on_event({"type": "select", "cells": [10, 11], "seq": 2})
    ann._on_event({"type": "submit", "name": "relabel", "value": "mine"})
    assert (adata.obs["pred"] == "mine").sum() == 2 and adata.obs["pred"].iloc[10] == "mine"
    ann._on_event({"type": "key", "key": "Escape"})
    assert ann.selection.size == 0 and _highlight(ann) == [] and "No selection" in ann.info.value
    assert ann.figure.layout.selections == ()  # plotly's own outline is removed too
    ann._on_event({"type": "key", "key": "u"})
    assert (adata.obs["pred"] != "mine").all()
    ann._on_event({"type": "key", "key": "b"})
    assert ann.figure.layout.dragmode == "select"
    seen = []
    ann.on_change(lambda a: seen.append(a.selection.tolist()))
    ann._on_event({"type": "clear"})
    assert seen == [[]]


def test_colour_by_obs_column_and_gene(adata):
    ann = CellAnnotator(adata, label_key="pred")
    ann.set_color("louvain")
    assert {tr.name for tr in _cell_traces(ann)} == set(adata.obs["louvain"].astype(str))
    ann.set_color("n_genes")
    (tr,) = _cell_traces(ann)
    assert tr.marker.colorbar.title.text == "n_genes"
    np.testing.assert_allclose(tr.marker.color, adata.obs["n_genes"].to_numpy(float))
    ann.set_color("NKG7")  # a gene of adata.raw
    (tr,) = _cell_traces(ann)
    np.testing.assert_allclose(tr.marker.color, adata.raw[:, "NKG7"].X.toarray().ravel()
                               if hasattr(adata.raw.X, "toarray") else adata.raw[:, "NKG7"].X.ravel())
    assert "NKG7 on X_umap" in ann.figure.layout.title.text
    with pytest.raises(InputError, match="neither"):
        ann.set_color("not-a-gene")
    ann.color_box.value = "not-a-gene"  # typed in the box: reported, nothing breaks
    assert "neither" in ann.message.value


def test_legend_hidden_category_stays_hidden_after_relabel(adata):
    ann = CellAnnotator(adata, label_key="pred")
    nk = next(tr for tr in _cell_traces(ann) if tr.name == "CD56+ NK")
    nk.visible = "legendonly"  # what a legend click does
    ann.select([0, 1])
    ann.relabel("x")
    assert next(tr for tr in _cell_traces(ann) if tr.name == "CD56+ NK").visible == "legendonly"


def test_exports_write_what_is_shown(adata, tmp_path, monkeypatch):
    ann = CellAnnotator(adata, label_key="pred")
    ann.select([2, 4, 6])
    ann.relabel("reviewed")
    ann.select([4, 6, 8])
    df = ann.to_dataframe()
    assert len(df) == adata.n_obs and df["selected"].sum() == 3
    assert df.loc[df["selected"], "cell"].tolist() == adata.obs_names[[4, 6, 8]].tolist()
    assert (df["label"].to_numpy() == adata.obs["pred"].astype(str).to_numpy()).all()
    assert ann.to_dataframe(selected_only=True)["label"].tolist() == [
        "reviewed", "reviewed", adata.obs["pred"].iloc[8]]
    path = ann.export_csv(tmp_path / "out.csv")
    back = pd.read_csv(path)
    assert back["label"].tolist() == df["label"].tolist()
    assert back["selected"].sum() == 3 and "wrote 700 rows (3 selected)" in ann.message.value
    monkeypatch.chdir(tmp_path)
    ann.export_button.click()  # the button writes the default file in the working directory
    assert pd.read_csv(tmp_path / "pred_annotations.csv")["selected"].sum() == 3
    key = ann.export_to_adata()
    assert key == "pred_selected" and adata.obs[key].sum() == 3 and adata.obs[key].iloc[8]


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
    # the view's snapshot, not from the edits streamed before it connected
    ann = CellAnnotator(adata, label_key="pred")
    snapshot = ann.view.figure["data"]
    assert len(snapshot) == len(ann.figure.data) == 1 + adata.obs["pred"].nunique()
    assert snapshot[0]["marker"]["color"] == ann.figure.data[0].marker.color
    assert len(snapshot[-1]["x"]) == 0  # nothing ringed, and the panel says so
    assert "No selection" in ann.info.value
    ann.set_color("confidence")
    ann._repr_mimebundle_()  # displaying the annotator again refreshes the snapshot
    assert ann.view.figure["data"][0]["marker"]["showscale"] is True


def test_selection_updates_send_only_the_highlight(adata):
    ann = CellAnnotator(adata, label_key="pred")
    n0 = len(ann.view.sent_bytes)
    ann.select(np.arange(50))
    sent = ann.view.sent_bytes[n0:]
    # two small messages (dim the cells, ring the selection), not the 700 cells again
    assert len(sent) == 2 and sum(sent) < 5_000, sent


def test_log_lines_are_normal_output_inside_a_kernel(adata, monkeypatch, capsys):
    # the widgets log (e.g. "relabelled ... cells"); in a notebook that must be stdout, which
    # Jupyter shows as normal output, not stderr (pink boxes); in a terminal it stays stderr
    import biomed_toolkit.core.display as display

    ann = CellAnnotator(adata, label_key="pred")
    ann.select([0, 1])
    monkeypatch.setattr(display, "in_notebook", lambda: False)
    ann.relabel("a")
    out = capsys.readouterr()
    assert "relabelled 2 cells as 'a'" in out.err and "relabelled" not in out.out
    monkeypatch.setattr(display, "in_notebook", lambda: True)
    ann.relabel("b")
    out = capsys.readouterr()
    assert "relabelled 2 cells as 'b'" in out.out and "relabelled" not in out.err
