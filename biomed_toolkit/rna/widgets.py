"""``CellAnnotator``: an interactive UMAP to review and correct cell-type annotations.

The view is a live plotly view (``biomed_toolkit.core.widgets.plot_view``: ipywidgets 8,
JupyterLab, the classic notebook, Voila) that receives only what changed.

One source of truth: :attr:`CellAnnotator.selection` (the selected cells, in Python) is the only
selection. The highlight on the plot (the ringed "selection" trace), the side panel (counts,
composition, marker genes) and every action (relabel, clear, export) are drawn from it. Lasso and
box gestures and clicks reach Python as one message each (not through the plotly
``FigureWidget``'s shared hover/click/selection field, where a hover right after mouse-up used to
overwrite the selection); after each gesture plotly's own outline is removed, so what is ringed is
exactly what is selected and the next lasso can start anywhere.

A lasso/box selects the cells inside; a click selects every cell sharing the clicked cell's label
(shift-click: only that cell); a click on empty space or Escape clears. A slider sets the
confidence below which cells read "Unassigned"; cells can be coloured by their label, confidence,
any ``obs`` column or a gene; the marker genes of the selection against the rest come from
``scanpy.tl.rank_genes_groups`` (log fold-change, adjusted p). Every change is written back to
``adata.obs`` at once and can be undone; selection and labels can be exported to the AnnData, a
DataFrame or a CSV file. All of it is reachable from Python (``select``, ``relabel``,
``set_threshold``, ``set_color``, ``undo``, ``clear``, ``to_dataframe``, ``export_csv``).

Keyboard (mouse over the widget): ``Escape`` clears, ``r`` relabels with the text in the label
box (Enter in the box does the same), ``u`` / ``ctrl+z`` undoes, ``l`` / ``b`` switch lasso /
box selection.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ..core.log import get_logger
from ..core.widgets import write_csv
from .plotting import UNASSIGNED, category_colors, coordinates_2d

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

log = get_logger(__name__)

MarkerMethod = Literal["t-test", "t-test_overestim_var", "wilcoxon", "logreg"]
SELECTION_TRACE = "selection"
# threshold changes closer together than this are one undo step (a slider being dragged)
_COALESCE_SECONDS = 2.0
_KEYS = ("Escape", "r", "u", "ctrl+z", "l", "b")


def _expression(adata: AnnData, *, layer: str | None, use_raw: bool | None) -> tuple[Any, pd.Index]:
    if use_raw is None:
        use_raw = adata.raw is not None and layer is None
    if use_raw:
        if adata.raw is None:
            raise InputError("use_raw=True but adata.raw is None")
        return adata.raw.X, adata.raw.var_names
    if layer is not None:
        if layer not in adata.layers:
            raise InputError(f"layer {layer!r} not in adata.layers ({list(adata.layers)})")
        return adata.layers[layer], adata.var_names
    return adata.X, adata.var_names


def _looks_like_counts(x: Any) -> bool:
    """True when ``x`` holds raw integer counts (then it is log-normalised before testing)."""
    sample = x[: min(200, x.shape[0])]
    values = sample.data if hasattr(sample, "data") and hasattr(sample, "toarray") else np.asarray(
        sample).ravel()
    values = np.asarray(values, dtype=np.float64)
    return bool(values.size) and bool(np.all(values == np.round(values))) and values.max() > 30


def marker_genes(
    adata: AnnData,
    mask: np.ndarray,
    *,
    n_genes: int = 10,
    layer: str | None = None,
    use_raw: bool | None = None,
    method: MarkerMethod = "t-test",
) -> pd.DataFrame:
    """Marker genes of the cells in ``mask`` against every other cell (scanpy's test).

    Runs ``scanpy.tl.rank_genes_groups`` (``method``; scanpy's default t-test) on a light copy
    holding only the expression matrix and a two-group column, so ``adata`` is not modified.
    Uses ``adata.raw`` when present (scanpy's log-normalised copy) unless ``use_raw=False``;
    raw integer counts are normalised to 10,000 per cell and log1p-transformed first, as
    ``rank_genes_groups`` expects log data.

    Returns
    -------
    DataFrame with ``gene``, ``score``, ``logfoldchange``, ``pval``, ``pval_adj``
    (Benjamini-Hochberg), ``frac_in`` and ``frac_out`` (share of cells expressing the gene in /
    out of the group), best first (``n_genes`` rows).
    """
    import anndata as ad
    import scanpy as sc

    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (adata.n_obs,):
        raise InputError(f"mask must have one entry per cell ({adata.n_obs}), got {mask.shape}")
    if mask.sum() == 0:
        raise InputError("the selection is empty: select at least one cell")
    if mask.all():
        raise InputError("every cell is selected: there is no rest to compare against")
    if min(mask.sum(), (~mask).sum()) < 2:
        raise InputError("marker statistics need at least 2 cells in the selection and in the rest")
    x, genes = _expression(adata, layer=layer, use_raw=use_raw)
    group = pd.Categorical(np.where(mask, "selection", "rest"), categories=["selection", "rest"])
    tmp = ad.AnnData(X=x, obs=pd.DataFrame({"group": group}, index=adata.obs_names.astype(str)),
                     var=pd.DataFrame(index=np.asarray(genes).astype(str)))
    if _looks_like_counts(tmp.X):
        tmp.X = tmp.X.astype(np.float32)
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
    sc.tl.rank_genes_groups(tmp, "group", groups=["selection"], reference="rest", method=method,
                            n_genes=n_genes, pts=True)
    df = sc.get.rank_genes_groups_df(tmp, group="selection").head(n_genes)
    out = pd.DataFrame({
        "gene": df["names"].astype(str).to_numpy(),
        "score": df["scores"].to_numpy(dtype=np.float64),
        "logfoldchange": (df["logfoldchanges"].to_numpy(dtype=np.float64)
                          if "logfoldchanges" in df else np.nan),
        "pval": df["pvals"].to_numpy(dtype=np.float64) if "pvals" in df else np.nan,
        "pval_adj": df["pvals_adj"].to_numpy(dtype=np.float64) if "pvals_adj" in df else np.nan,
        "frac_in": df["pct_nz_group"].to_numpy(dtype=np.float64) if "pct_nz_group" in df else np.nan,
        "frac_out": (df["pct_nz_reference"].to_numpy(dtype=np.float64)
                     if "pct_nz_reference" in df else np.nan),
    })
    return out


@dataclass
class _State:
    base: np.ndarray  # label before the threshold (model label or manual relabel)
    manual: np.ndarray  # True where a person set the label (never thresholded)
    threshold: float


class CellAnnotator:
    """Interactive review of cell labels on a UMAP (or any 2-D embedding).

    Parameters
    ----------
    adata
        Annotated data with labels in ``obs[label_key]`` (e.g. from ``bt.tl.annotate``).
    basis
        2-D ``obsm`` key, or an embedding (e.g. ``"X_bmfm"``) whose UMAP is computed and cached.
    label_key
        ``obs`` column with the labels; rewritten on every change.
    confidence_key
        ``obs`` column with confidences in [0, 1] (default ``f"{label_key}_confidence"`` when
        present). Without it the slider is disabled.
    raw_label_key
        ``obs`` column with labels before thresholding (default ``f"{label_key}_raw"`` when
        present, else ``label_key``).
    threshold
        Initial confidence threshold (default: the one recorded in ``uns[label_key]``, else 0).
    n_markers
        Marker genes listed for a selection.
    color_by
        ``"label"``, ``"confidence"``, any ``obs`` column or a gene name.
    marker_layer
        Layer to test marker genes on (default ``adata.raw`` when present, else ``X``).
    marker_method
        ``rank_genes_groups`` method.

    Attributes
    ----------
    selection
        Positions of the selected cells (sorted); the only selection the widget knows.
    markers
        Marker table of the selection (``None`` when nothing is selected).

    Written to ``adata.obs``: ``obs[label_key]`` (current labels) and
    ``obs[f"{label_key}_manual"]`` (True where a label was set by hand);
    :meth:`export_to_adata` adds ``obs[f"{label_key}_selected"]``.

    Examples
    --------
    >>> bt.tl.annotate(adata)  # doctest: +SKIP
    >>> ann = CellAnnotator(adata, basis="X_bmfm", label_key="bmfm_cell_type")  # doctest: +SKIP
    >>> ann  # shows the widget  # doctest: +SKIP
    >>> ann.select(np.flatnonzero(adata.obs["louvain"] == "3")); ann.relabel("NK")  # doctest: +SKIP
    >>> ann.undo()  # doctest: +SKIP
    >>> ann.to_dataframe().head()  # doctest: +SKIP
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        basis: str = "X_umap",
        label_key: str = "bmfm_cell_type",
        confidence_key: str | None = None,
        raw_label_key: str | None = None,
        threshold: float | None = None,
        n_markers: int = 10,
        color_by: str = "label",
        marker_layer: str | None = None,
        marker_method: MarkerMethod = "t-test",
    ) -> None:
        import ipywidgets as w
        import plotly.graph_objects as go

        if label_key not in adata.obs:
            raise InputError(
                f"label_key {label_key!r} not in adata.obs (columns: {list(adata.obs.columns)}); "
                "run bt.tl.annotate(adata) first or pass label_key="
            )
        self.adata = adata
        self.label_key = label_key
        if confidence_key is None and f"{label_key}_confidence" in adata.obs:
            confidence_key = f"{label_key}_confidence"
        if confidence_key is not None and confidence_key not in adata.obs:
            raise InputError(f"confidence_key {confidence_key!r} not in adata.obs")
        self.confidence_key = confidence_key
        if raw_label_key is None:
            raw_label_key = f"{label_key}_raw" if f"{label_key}_raw" in adata.obs else label_key
        self.raw_label_key = raw_label_key
        self.n_markers = int(n_markers)
        self.marker_layer = marker_layer
        self.marker_method: MarkerMethod = marker_method
        self.coords, self.basis = coordinates_2d(adata, basis)
        self.confidence = (
            adata.obs[confidence_key].to_numpy(dtype=np.float64)
            if confidence_key is not None
            else np.ones(adata.n_obs)
        )
        if threshold is None:
            rec = adata.uns.get(label_key, {})
            threshold = float(rec.get("params", {}).get("min_confidence", 0.0)) if isinstance(
                rec, dict) else 0.0
        manual_key = f"{label_key}_manual"
        manual = (
            adata.obs[manual_key].to_numpy(dtype=bool) if manual_key in adata.obs
            else np.zeros(adata.n_obs, dtype=bool)
        )
        base = adata.obs[raw_label_key].astype(str).to_numpy().copy()
        base[manual] = adata.obs[label_key].astype(str).to_numpy()[manual]
        self._state = _State(base=base, manual=manual, threshold=float(threshold))
        self._history: list[_State] = []
        self._last_push: tuple[str, float] = ("", 0.0)
        self.history: list[dict[str, Any]] = []  # human-readable log of edits
        self.selection = np.zeros(0, dtype=np.int64)
        self.markers: pd.DataFrame | None = None
        self._callbacks: list[Callable[[CellAnnotator], None]] = []
        self._check_color(color_by)
        self.color_by = color_by
        self._hidden: set[str] = set()

        # widgets ------------------------------------------------------------------------
        self._layout = go.Layout(
            template="simple_white", width=640, height=520, dragmode="lasso",
            margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"itemsizing": "constant"},
            xaxis={"showticklabels": False}, yaxis={"showticklabels": False},
            title=f"{label_key} on {self.basis}", uirevision="keep",
        )
        self.view: Any = None
        self.slider = w.FloatSlider(
            value=self._state.threshold, min=0.0, max=1.0, step=0.01,
            description="min confidence", continuous_update=False, readout_format=".2f",
            disabled=confidence_key is None, style={"description_width": "initial"},
        )
        self.slider.observe(self._on_slider, names="value")
        colour_options = ["label"] + (["confidence"] if confidence_key else []) + [
            str(c) for c in adata.obs.columns if c not in (label_key, confidence_key)]
        self.color_box = w.Combobox(
            value=color_by, options=colour_options, description="colour by",
            placeholder="label, an obs column or a gene", ensure_option=False,
            continuous_update=False, style={"description_width": "initial"},
        )
        self.color_box.observe(self._on_color, names="value")
        self.label_box = w.Combobox(placeholder="new label for the selection",
                                    options=self.categories(), ensure_option=False)
        self.label_box.add_class("bt-submit-relabel")  # Enter relabels (event bridge)
        self.relabel_button = w.Button(description="Relabel", button_style="primary",
                                       tooltip="label the selected cells (r, or Enter in the box)")
        self.relabel_button.on_click(lambda _b: self._guarded(self.relabel, self.label_box.value))
        self.undo_button = w.Button(description="Undo", disabled=True, icon="undo",
                                    tooltip="undo the last relabel / threshold change (u)")
        self.undo_button.on_click(lambda _b: self.undo())
        self.clear_button = w.Button(description="Clear selection", tooltip="Escape")
        self.clear_button.on_click(lambda _b: self.clear())
        self.export_button = w.Button(description="Export CSV", icon="download",
                                      tooltip="labels and selection to a CSV file")
        self.export_button.on_click(lambda _b: self._guarded(self.export_csv))
        self.export_to_adata_button = w.Button(description="Selection to obs",
                                               tooltip=f"obs['{label_key}_selected']")
        self.export_to_adata_button.on_click(lambda _b: self._guarded(self.export_to_adata))
        self.info = w.HTML()
        self.marker_html = w.HTML()
        self.status = w.HTML()
        self.message = w.HTML()
        side = w.VBox(
            [self.info, self.marker_html, w.HBox([self.label_box, self.relabel_button]),
             w.HBox([self.clear_button, self.undo_button]),
             w.HBox([self.export_button, self.export_to_adata_button]), self.status, self.message,
             w.HTML("<small style='color:#777'>keys: Esc clear, r relabel, u undo, "
                    "l lasso, b box</small>")],
            layout=w.Layout(width="400px", flex="0 0 400px"),
        )
        self._draw_cells()
        self._show_panel()
        from biomed_toolkit.core.widgets import event_bridge

        self.view.layout = w.Layout(width="650px", flex="0 0 auto")
        # wrap: in a narrow notebook the side panel goes below the plot instead of being clipped
        row = w.HBox([self.view, side], layout=w.Layout(flex_flow="row wrap"))
        self.widget = w.VBox([w.HBox([self.color_box, self.slider]), row])
        # keys and Enter in the label box (the plot's own gestures come through the view)
        self.bridge = event_bridge(self.widget, self._on_event, keys=_KEYS)
        self.widget.children = (*self.widget.children, self.bridge)

    @property
    def figure(self) -> Any:
        """The plotly figure as the page draws it (a ``go.Figure``, updated with the page)."""
        return self.view.fig

    # ------------------------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        """Current labels (after the threshold; manual labels are never thresholded)."""
        s = self._state
        out = s.base.copy()
        low = (self.confidence < s.threshold) & ~s.manual
        out[low] = UNASSIGNED
        return out

    @property
    def threshold(self) -> float:
        return self._state.threshold

    def categories(self) -> list[str]:
        """Label names in use (for the relabel box)."""
        return sorted(set(self._state.base.tolist()) - {UNASSIGNED})

    def on_change(self, callback: Callable[[CellAnnotator], None]) -> None:
        """Call ``callback(annotator)`` after every change of selection, labels or threshold."""
        self._callbacks.append(callback)

    def _changed(self) -> None:
        for cb in self._callbacks:
            cb(self)

    def _write_obs(self) -> None:
        labels = self.labels
        cats = list(pd.unique(np.concatenate([self.categories(), [UNASSIGNED]])))
        self.adata.obs[self.label_key] = pd.Categorical(labels, categories=cats)
        self.adata.obs[f"{self.label_key}_manual"] = self._state.manual.copy()
        uns = self.adata.uns.get(self.label_key)
        if isinstance(uns, dict):
            uns.setdefault("params", {})["min_confidence"] = float(self._state.threshold)

    def _push(self, kind: str) -> None:
        now = time.monotonic()
        last_kind, last_time = self._last_push
        self._last_push = (kind, now)
        if kind == "threshold" and last_kind == "threshold" and now - last_time < _COALESCE_SECONDS:
            return  # one slider movement, one undo step
        s = self._state
        self._history.append(_State(s.base.copy(), s.manual.copy(), s.threshold))

    # ------------------------------------------------------------------------------------
    # drawing (everything from the state above)
    # ------------------------------------------------------------------------------------
    def _check_color(self, color_by: str) -> None:
        if color_by in ("label", "confidence") and not (
                color_by == "confidence" and self.confidence_key is None):
            return
        if color_by in self.adata.obs.columns:
            return
        names = self.adata.raw.var_names if self.adata.raw is not None else self.adata.var_names
        if color_by in names or color_by in self.adata.var_names:
            return
        raise InputError(
            f"color_by {color_by!r} is neither 'label', 'confidence' (needs a confidence column), "
            "an adata.obs column nor a gene name"
        )

    def _color_values(self) -> tuple[str, np.ndarray, str]:
        """(``"categorical"`` | ``"continuous"``, values, title) of the current colouring."""
        c = self.color_by
        if c == "label":
            return "categorical", self.labels, self.label_key
        if c == "confidence":
            return "continuous", self.confidence, "confidence"
        if c in self.adata.obs.columns:
            col = self.adata.obs[c]
            if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or col.dtype == bool:
                return "categorical", col.astype(str).to_numpy(), c
            return "continuous", col.to_numpy(dtype=np.float64), c
        use_raw = self.adata.raw is not None and c in self.adata.raw.var_names
        x, genes = _expression(self.adata, layer=None, use_raw=use_raw)
        col = x[:, int(np.flatnonzero(np.asarray(genes) == c)[0])]
        col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
        return "continuous", np.asarray(col, dtype=np.float64).ravel(), c

    def _draw_cells(self) -> None:
        """(Re)build the cell traces: one per category (real legend entries) or one coloured."""
        import plotly.graph_objects as go

        # legend clicks hide categories in the browser: keep them hidden across redraws
        for tr in self.figure.data if self.view is not None else ():
            if tr.name != SELECTION_TRACE and tr.visible == "legendonly":
                self._hidden.add(tr.name)
            elif tr.name in self._hidden and tr.visible is not False:
                self._hidden.discard(tr.name)
        kind, values, title = self._color_values()
        names = self.adata.obs_names.to_numpy()
        labels = self.labels
        common = {"mode": "markers", "hovertemplate": "%{text}<extra>%{meta}</extra>",
                  "selected": {"marker": {"opacity": 1.0}},
                  "unselected": {"marker": {"opacity": 1.0}}}
        traces = []
        if kind == "categorical":
            cats = sorted(set(values.tolist()) - {UNASSIGNED})
            if UNASSIGNED in values:
                cats.append(UNASSIGNED)
            key = self.label_key if self.color_by == "label" else title
            cmap = category_colors(self.adata if self.color_by != "label" else None, key, cats)
            for cat in cats:
                idx = np.flatnonzero(values == cat)
                traces.append(go.Scattergl(
                    x=self.coords[idx, 0], y=self.coords[idx, 1], name=cat,
                    customdata=idx.astype(np.int32),  # plotly.js has no int64 arrays
                    text=[f"{n}<br>{lab}" for n, lab in zip(names[idx], labels[idx])],
                    meta=cat, marker={"size": 5, "color": cmap[cat]},
                    visible="legendonly" if cat in self._hidden else True, **common,
                ))
        else:
            finite = values[np.isfinite(values)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            if self.color_by == "confidence":
                lo, hi = 0.0, 1.0
            traces.append(go.Scattergl(
                x=self.coords[:, 0], y=self.coords[:, 1], name="cells", showlegend=False,
                customdata=np.arange(self.adata.n_obs, dtype=np.int32),
                text=[f"{n}<br>{lab}<br>{title} {v:.3g}" for n, lab, v in zip(names, labels, values)],
                meta=title,
                marker={"size": 5, "color": values, "colorscale": "Viridis", "cmin": lo,
                        "cmax": hi, "showscale": True,
                        "colorbar": {"title": {"text": title, "side": "right"}, "thickness": 12}},
                **common,
            ))
        idx = self.selection
        for tr in traces:
            tr.marker.opacity = 0.35 if idx.size else 1.0
        sel = go.Scattergl(
            x=self.coords[idx, 0], y=self.coords[idx, 1], name=SELECTION_TRACE, mode="markers",
            showlegend=False, hoverinfo="skip", customdata=idx.astype(np.int32),
            marker={"size": 9, "color": "rgba(0,0,0,0)", "line": {"color": "black", "width": 1.5}},
        )
        fig = go.Figure(data=[*traces, sel], layout=self._layout)
        fig.layout.title = (f"{self.label_key} on {self.basis}" if self.color_by == "label"
                            else f"{title} on {self.basis}")
        if self.view is None:
            from biomed_toolkit.core.widgets import plot_view

            self.view = plot_view(fig, handler=self._on_event, skip_trace=SELECTION_TRACE,
                                  config={"displaylogo": False, "scrollZoom": True})
        else:
            fig.layout.dragmode = self.figure.layout.dragmode
            self.view.react(fig)

    def _draw_selection(self) -> None:
        """Ring exactly the selected cells; remove plotly's own outline; dim the rest."""
        idx = self.selection
        n = len(self.figure.data) - 1  # the selection trace is the last one
        self.view.update({"marker.opacity": [0.35 if idx.size else 1.0]}, traces=range(n))
        self.view.update({"x": [self.coords[idx, 0]], "y": [self.coords[idx, 1]],
                          "customdata": [idx.astype(np.int32)]},
                         {"selections": []}, traces=[n])

    def _show_panel(self) -> None:
        labels = self.labels
        idx = self.selection
        if idx.size == 0:
            self.info.value = ("<b>No selection.</b> Lasso, box-select or click a cell "
                               "(shift-click: one cell).")
            self.marker_html.value = ""
        else:
            counts = pd.Series(labels[idx]).value_counts()
            comp = ", ".join(f"{html.escape(str(k))} ({v})" for k, v in counts.head(4).items())
            self.info.value = (f"<b class='bt-selected-count'>{idx.size} cells selected</b>"
                               f"<br><small>{comp}</small>")
            if self.markers is None:
                self.marker_html.value = (
                    "<small>(marker genes need at least 2 cells in the selection and in the "
                    "rest)</small>")
            else:
                shown = self.markers[["gene", "logfoldchange", "pval_adj", "frac_in"]].rename(
                    columns={"logfoldchange": "log2FC", "pval_adj": "adj. p", "frac_in": "in sel."})
                self.marker_html.value = (
                    f"<small>markers vs the rest ({self.marker_method}, scanpy)</small>"
                    + shown.to_html(index=False, border=0, float_format="{:.3g}".format))
        self.label_box.options = self.categories()
        self.undo_button.disabled = not self._history
        n_un = int((labels == UNASSIGNED).sum())
        self.status.value = (
            f"<small>{len(labels)} cells; {n_un} Unassigned at confidence &lt; "
            f"{self._state.threshold:.2f}; {int(self._state.manual.sum())} set by hand</small>"
        )

    def _refresh_markers(self) -> None:
        idx = self.selection
        if min(idx.size, self.adata.n_obs - idx.size) < 2:
            self.markers = None
            return
        mask = np.zeros(self.adata.n_obs, dtype=bool)
        mask[idx] = True
        self.markers = marker_genes(self.adata, mask, n_genes=self.n_markers,
                                    layer=self.marker_layer, method=self.marker_method)

    # ------------------------------------------------------------------------------------
    # public handles
    # ------------------------------------------------------------------------------------
    def select(self, indices: Sequence[int] | np.ndarray) -> pd.DataFrame | None:
        """Select cells by position (as a lasso would) and list their top marker genes.

        Replaces the selection. Returns the marker table (None for an empty selection).
        """
        idx = np.unique(np.asarray(indices, dtype=np.int64).ravel())
        if idx.size and (idx.min() < 0 or idx.max() >= self.adata.n_obs):
            raise InputError(f"cell indices must lie in [0, {self.adata.n_obs}), got {idx.min()}..{idx.max()}")
        self.selection = idx
        self._refresh_markers()
        self._draw_selection()
        self._show_panel()
        self._changed()
        return self.markers

    def clear(self) -> None:
        """Empty the selection (the highlight goes with it)."""
        self.select([])

    def relabel(self, name: str, indices: Sequence[int] | np.ndarray | None = None) -> None:
        """Give the selected cells (or ``indices``) the label ``name``; written to ``adata.obs``."""
        name = (name or "").strip()
        if not name:
            raise InputError("relabel needs a non-empty label name")
        idx = self.selection if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise InputError("nothing selected: select cells first (lasso, click or .select(indices))")
        self._push("relabel")
        self._state.base[idx] = name
        self._state.manual[idx] = True
        self.history.append({"action": "relabel", "label": name, "n_cells": int(idx.size)})
        log.info(f"relabelled {idx.size} cells as {name!r}")
        self._after_edit()

    def _after_edit(self) -> None:
        self._write_obs()
        self._draw_cells()
        self._show_panel()
        self._changed()

    def set_threshold(self, value: float) -> None:
        """Cells below this confidence (and not set by hand) read "Unassigned".

        Changes closer together than two seconds (a slider being moved) are one undo step.
        """
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise InputError(f"threshold must lie in [0, 1], got {value}")
        if self.confidence_key is None:
            raise InputError("no confidence column: pass confidence_key= to use the threshold")
        if value == self._state.threshold:
            return
        self._push("threshold")
        self._state.threshold = value
        self.history.append({"action": "threshold", "value": value})
        self._set_slider(value)
        self._after_edit()

    def _set_slider(self, value: float) -> None:
        if self.slider.value != value:
            self.slider.unobserve(self._on_slider, names="value")
            self.slider.value = value
            self.slider.observe(self._on_slider, names="value")

    def undo(self) -> bool:
        """Revert the last relabel or threshold change; False when there is nothing to undo."""
        if not self._history:
            return False
        self._state = self._history.pop()
        self._last_push = ("undo", time.monotonic())
        self.history.append({"action": "undo"})
        self._set_slider(self._state.threshold)
        self._after_edit()
        return True

    def set_color(self, color_by: str) -> None:
        """Colour cells by ``"label"``, ``"confidence"``, an ``obs`` column or a gene."""
        self._check_color(color_by)
        self.color_by = color_by
        if self.color_box.value != color_by:
            self.color_box.unobserve(self._on_color, names="value")
            self.color_box.value = color_by
            self.color_box.observe(self._on_color, names="value")
        self._draw_cells()

    # ------------------------------------------------------------------------------------
    # export
    # ------------------------------------------------------------------------------------
    def to_dataframe(self, *, selected_only: bool = False) -> pd.DataFrame:
        """Labels as shown (one row per cell, or per selected cell): ``cell``, ``label``,
        ``manual``, ``selected``, the confidence and the 2-D coordinates."""
        labels = self.labels
        sel = np.zeros(self.adata.n_obs, dtype=bool)
        sel[self.selection] = True
        df = pd.DataFrame({
            "cell": self.adata.obs_names.astype(str),
            "label": labels,
            "manual": self._state.manual.copy(),
            "selected": sel,
        })
        if self.confidence_key is not None:
            df["confidence"] = self.confidence
        df[f"{self.basis}_1"], df[f"{self.basis}_2"] = self.coords[:, 0], self.coords[:, 1]
        return df[sel].reset_index(drop=True) if selected_only else df

    def export_csv(self, path: str | os.PathLike | None = None, *,
                   selected_only: bool = False) -> Path:
        """Write :meth:`to_dataframe` to ``path`` (default ``"<label_key>_annotations.csv"``)."""
        path = Path(path if path is not None else f"{self.label_key}_annotations.csv")
        df = self.to_dataframe(selected_only=selected_only)
        write_csv(df, path)
        self.message.value = (f"<small>wrote {len(df)} rows ({int(df['selected'].sum())} "
                              f"selected) to {html.escape(str(path))}</small>")
        log.info(f"wrote {len(df)} cells to {path}")
        return path

    def export_to_adata(self, key: str | None = None) -> str:
        """Store the selection as a boolean ``obs`` column (default ``f"{label_key}_selected"``).

        Labels are in ``obs[label_key]`` already (written on every change). Returns the key.
        """
        key = key or f"{self.label_key}_selected"
        sel = np.zeros(self.adata.n_obs, dtype=bool)
        sel[self.selection] = True
        self.adata.obs[key] = sel
        self._write_obs()
        self.message.value = (f"<small>adata.obs['{html.escape(key)}']: {int(sel.sum())} cells "
                              "selected</small>")
        return key

    # ------------------------------------------------------------------------------------
    # widget callbacks
    # ------------------------------------------------------------------------------------
    def _guarded(self, action: Callable[..., Any], *args: Any) -> None:
        """Run a button action; show an input error in the panel instead of losing it."""
        try:
            action(*args)
        except InputError as err:
            self.message.value = f"<span style='color:#a94442'>{html.escape(str(err))}</span>"
        else:
            if action is not self.export_csv and action is not self.export_to_adata:
                self.message.value = ""

    def _on_event(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "select":
            self.select(msg.get("cells") or [])
        elif kind == "click":
            cells = [int(c) for c in msg.get("cells") or []]
            if cells:
                self._on_click_cell(cells[0], single=bool(msg.get("shift")))
        elif kind == "clear":
            self.clear()
        elif kind == "submit" and msg.get("name") == "relabel":
            value = str(msg.get("value", ""))
            self.label_box.value = value
            self._guarded(self.relabel, value)
        elif kind == "key":
            self._on_key(str(msg.get("key", "")))
        elif kind == "visible":  # a legend click in the page: remember it for redraws
            shown = dict(zip(msg.get("traces", []), msg.get("visible", [])))
            for tr in self.figure.data:
                if tr.name in shown:
                    tr.visible = shown[tr.name]

    def _on_key(self, key: str) -> None:
        if key == "Escape":
            self.clear()
        elif key == "r":
            self._guarded(self.relabel, self.label_box.value)
        elif key in ("u", "ctrl+z"):
            self.undo()
        elif key in ("l", "b"):
            self.view.update(relayout={"dragmode": "lasso" if key == "l" else "select"})

    def _on_click_cell(self, cell: int, *, single: bool = False) -> None:
        if single:
            self.select([cell])
        else:
            labels = self.labels
            self.select(np.flatnonzero(labels == labels[cell]))

    # plotly's callback signature (point indices within ``trace``), for scripted use
    def _on_selection(self, trace: Any, points: Any, selector: Any) -> None:
        self.select(np.asarray(trace.customdata, dtype=np.int64)[list(points.point_inds)])

    def _on_click(self, trace: Any, points: Any, selector: Any) -> None:
        if points.point_inds:
            self._on_click_cell(int(np.asarray(trace.customdata)[points.point_inds[0]]))

    def _on_slider(self, change: dict[str, Any]) -> None:
        self.set_threshold(change["new"])

    def _on_color(self, change: dict[str, Any]) -> None:
        self._guarded(self.set_color, str(change["new"]))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        # a new view starts from the figure's snapshot, not from the edits sent since: refresh it
        self.view.snapshot()
        return self.widget._repr_mimebundle_(**kwargs)
