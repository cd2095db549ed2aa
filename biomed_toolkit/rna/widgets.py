"""``CellAnnotator``: an interactive UMAP to review and correct cell-type annotations.

The view is a plotly ``FigureWidget`` (ipywidgets 8, JupyterLab and the classic notebook).
Lasso/box selection or a click on a cell selects a group (a click selects every cell sharing the
clicked cell's label); the group's top marker genes are listed; the group can be relabelled; a
slider sets the confidence below which cells read "Unassigned"; every change is written back to
``adata.obs`` at once and can be undone. All of it is also reachable from Python
(``select``, ``relabel``, ``set_threshold``, ``undo``) so notebooks and tests can drive it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ..core.log import get_logger
from .plotting import UNASSIGNED, category_colors, coordinates_2d

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

log = get_logger(__name__)


def marker_genes(
    adata: AnnData,
    mask: np.ndarray,
    *,
    n_genes: int = 10,
    layer: str | None = None,
    use_raw: bool | None = None,
) -> pd.DataFrame:
    """Top genes of a group by mean difference against every other cell (fast, no test).

    Uses ``adata.raw`` when present (scanpy's log-normalised copy) unless ``use_raw=False``.
    Returns a DataFrame with ``gene``, ``mean_in``, ``mean_out``, ``diff``, ``frac_in``
    (share of group cells expressing the gene), best first.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() == 0:
        raise InputError("the selection is empty: select at least one cell")
    if use_raw is None:
        use_raw = adata.raw is not None and layer is None
    if use_raw:
        x, genes = adata.raw.X, adata.raw.var_names
    elif layer is not None:
        x, genes = adata.layers[layer], adata.var_names
    else:
        x, genes = adata.X, adata.var_names
    rest = ~mask

    def _mean(rows: np.ndarray) -> np.ndarray:
        if rows.sum() == 0:
            return np.zeros(x.shape[1])
        return np.asarray(x[rows].mean(axis=0)).ravel()

    def _frac(rows: np.ndarray) -> np.ndarray:
        block = x[rows]
        nz = (block > 0).sum(axis=0) if hasattr(block, "toarray") else (np.asarray(block) > 0).sum(0)
        return np.asarray(nz).ravel() / max(1, rows.sum())

    m_in, m_out = _mean(mask), _mean(rest)
    diff = m_in - m_out
    top = np.argsort(-diff, kind="stable")[:n_genes]
    return pd.DataFrame(
        {
            "gene": np.asarray(genes)[top],
            "mean_in": m_in[top],
            "mean_out": m_out[top],
            "diff": diff[top],
            "frac_in": _frac(mask)[top],
        }
    )


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
        ``"label"`` or ``"confidence"``.

    Attributes written to ``adata.obs``: ``obs[label_key]`` (current labels) and
    ``obs[f"{label_key}_manual"]`` (True where a label was set by hand).

    Examples
    --------
    >>> bt.tl.annotate(adata)  # doctest: +SKIP
    >>> ann = CellAnnotator(adata, basis="X_bmfm", label_key="bmfm_cell_type")  # doctest: +SKIP
    >>> ann  # shows the widget  # doctest: +SKIP
    >>> ann.select(np.flatnonzero(adata.obs["louvain"] == "3")); ann.relabel("NK")  # doctest: +SKIP
    >>> ann.undo()  # doctest: +SKIP
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
    ) -> None:
        import ipywidgets as w
        import plotly.graph_objects as go

        if label_key not in adata.obs:
            raise InputError(
                f"label_key {label_key!r} not in adata.obs (columns: {list(adata.obs.columns)}); "
                "run bt.tl.annotate(adata) first or pass label_key="
            )
        if color_by not in ("label", "confidence"):
            raise InputError(f"color_by must be 'label' or 'confidence', got {color_by!r}")
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
        self.history: list[dict[str, Any]] = []  # human-readable log of edits
        self.selection = np.zeros(0, dtype=np.int64)
        self.markers: pd.DataFrame | None = None
        self.color_by = color_by

        # widgets ------------------------------------------------------------------------
        self.figure = go.FigureWidget()
        self.figure.update_layout(
            template="simple_white", width=640, height=520, dragmode="lasso",
            margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"itemsizing": "constant"},
            xaxis={"showticklabels": False}, yaxis={"showticklabels": False},
            title=f"{label_key} on {self.basis}",
        )
        self.figure.add_trace(go.Scattergl(
            x=self.coords[:, 0], y=self.coords[:, 1], mode="markers", name="cells",
            showlegend=False, customdata=np.arange(adata.n_obs), text=adata.obs_names.to_numpy(),
            marker={"size": 5}, selected={"marker": {"opacity": 1.0}},
            unselected={"marker": {"opacity": 0.25}},
        ))
        self.points = self.figure.data[0]
        self.points.on_selection(self._on_selection)
        self.points.on_click(self._on_click)

        self.slider = w.FloatSlider(
            value=self._state.threshold, min=0.0, max=1.0, step=0.01,
            description="min confidence", continuous_update=False, readout_format=".2f",
            disabled=confidence_key is None, style={"description_width": "initial"},
        )
        self.slider.observe(self._on_slider, names="value")
        self.color_toggle = w.ToggleButtons(options=["label", "confidence"], value=color_by,
                                            disabled=confidence_key is None)
        self.color_toggle.observe(self._on_color, names="value")
        self.label_box = w.Combobox(placeholder="new label for the selection",
                                    options=self.categories(), ensure_option=False)
        self.relabel_button = w.Button(description="Relabel", button_style="primary")
        self.relabel_button.on_click(lambda _b: self.relabel(self.label_box.value))
        self.undo_button = w.Button(description="Undo", disabled=True, icon="undo")
        self.undo_button.on_click(lambda _b: self.undo())
        self.clear_button = w.Button(description="Clear selection")
        self.clear_button.on_click(lambda _b: self.select([]))
        self.info = w.HTML()
        self.marker_html = w.HTML()
        self.status = w.HTML()
        side = w.VBox(
            [self.info, self.marker_html, w.HBox([self.label_box, self.relabel_button]),
             w.HBox([self.clear_button, self.undo_button]), self.status],
            layout=w.Layout(width="380px", flex="0 0 380px"),
        )
        self._apply(write=True)
        from biomed_toolkit.core.widgets import figure_box

        # figure_box snapshots the figure for the page: take it after the first _apply, else a
        # page that connects later (Voila, a fresh notebook view) shows uncoloured points
        plot_box = figure_box(self.figure)
        # in a browser the Output grows to the row's width and squeezes the side panel to nothing
        plot_box.layout = w.Layout(width=f"{self.figure.layout.width + 10}px", flex="0 0 auto")
        # wrap: in a narrow notebook the side panel goes below the plot instead of being clipped
        row = w.HBox([plot_box, side], layout=w.Layout(flex_flow="row wrap"))
        self.widget = w.VBox([w.HBox([self.color_toggle, self.slider]), row])

    # ------------------------------------------------------------------------------------
    # state -> adata and view
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
        """Label names in use, plus those seen before (for the relabel box)."""
        cats = sorted(set(self._state.base.tolist()) - {UNASSIGNED})
        return cats

    def _write_obs(self) -> None:
        labels = self.labels
        cats = [c for c in pd.unique(np.concatenate([self.categories(), [UNASSIGNED]]))]
        self.adata.obs[self.label_key] = pd.Categorical(labels, categories=cats)
        self.adata.obs[f"{self.label_key}_manual"] = self._state.manual.copy()
        uns = self.adata.uns.get(self.label_key)
        if isinstance(uns, dict):
            uns.setdefault("params", {})["min_confidence"] = float(self._state.threshold)

    def _apply(self, *, write: bool = True) -> None:
        if write:
            self._write_obs()
        labels = self.labels
        with self.figure.batch_update():
            # legend-only traces (no points) so the single point trace keeps cell indices
            while len(self.figure.data) > 1:
                self.figure.data = self.figure.data[:1]
            if self.color_by == "confidence":
                self.points.marker.color = self.confidence
                self.points.marker.colorscale = "Viridis"
                self.points.marker.showscale = True
                self.points.marker.cmin, self.points.marker.cmax = 0.0, 1.0
                self.points.hovertemplate = "%{text}<br>confidence %{marker.color:.2f}<extra></extra>"
            else:
                cats = sorted(set(labels.tolist()) - {UNASSIGNED})
                if UNASSIGNED in labels:
                    cats.append(UNASSIGNED)
                cmap = category_colors(None, self.label_key, cats)
                self.points.marker.showscale = False
                self.points.marker.colorscale = None
                self.points.marker.color = [cmap[c] for c in labels]
                self.points.customdata = np.arange(len(labels))
                self.points.hovertext = labels
                self.points.hovertemplate = "%{text}<br>%{hovertext}<extra></extra>"
                import plotly.graph_objects as go

                self.figure.add_traces([
                    go.Scattergl(x=[None], y=[None], mode="markers", name=c,
                                 marker={"color": cmap[c], "size": 8}, hoverinfo="skip")
                    for c in cats
                ])
            self.points.selectedpoints = self.selection.tolist() if len(self.selection) else None
        self.label_box.options = self.categories()
        self.undo_button.disabled = not self._history
        n_un = int((labels == UNASSIGNED).sum())
        self.status.value = (
            f"<small>{len(labels)} cells; {n_un} Unassigned at confidence &lt; "
            f"{self._state.threshold:.2f}; {int(self._state.manual.sum())} set by hand</small>"
        )

    def _push(self) -> None:
        s = self._state
        self._history.append(_State(s.base.copy(), s.manual.copy(), s.threshold))

    # ------------------------------------------------------------------------------------
    # public handles
    # ------------------------------------------------------------------------------------
    def select(self, indices: Sequence[int] | np.ndarray) -> pd.DataFrame | None:
        """Select cells by position (as a lasso would) and list their top marker genes.

        Returns the marker table (None for an empty selection).
        """
        idx = np.unique(np.asarray(indices, dtype=np.int64).ravel())
        if idx.size and (idx.min() < 0 or idx.max() >= self.adata.n_obs):
            raise InputError(f"cell indices must lie in [0, {self.adata.n_obs}), got {idx.min()}..{idx.max()}")
        self.selection = idx
        if idx.size == 0:
            self.markers = None
            self.info.value = "<b>No selection.</b> Lasso, box-select or click a cell."
            self.marker_html.value = ""
            self.points.selectedpoints = None
            return None
        mask = np.zeros(self.adata.n_obs, dtype=bool)
        mask[idx] = True
        self.markers = marker_genes(self.adata, mask, n_genes=self.n_markers, layer=self.marker_layer)
        counts = pd.Series(self.labels[idx]).value_counts()
        comp = ", ".join(f"{k} ({v})" for k, v in counts.head(4).items())
        self.info.value = f"<b>{idx.size} cells selected</b><br><small>{comp}</small>"
        self.marker_html.value = self.markers.to_html(index=False, border=0, float_format="{:.3g}".format)
        self.points.selectedpoints = idx.tolist()
        return self.markers

    def relabel(self, name: str, indices: Sequence[int] | np.ndarray | None = None) -> None:
        """Give the selected cells (or ``indices``) the label ``name``; written to ``adata.obs``."""
        name = (name or "").strip()
        if not name:
            raise InputError("relabel needs a non-empty label name")
        idx = self.selection if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise InputError("nothing selected: select cells first (lasso, click or .select(indices))")
        self._push()
        self._state.base[idx] = name
        self._state.manual[idx] = True
        self.history.append({"action": "relabel", "label": name, "n_cells": int(idx.size)})
        log.info(f"relabelled {idx.size} cells as {name!r}")
        self._apply()

    def set_threshold(self, value: float) -> None:
        """Cells below this confidence (and not set by hand) read "Unassigned"."""
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise InputError(f"threshold must lie in [0, 1], got {value}")
        if self.confidence_key is None:
            raise InputError("no confidence column: pass confidence_key= to use the threshold")
        if value == self._state.threshold:
            return
        self._push()
        self._state.threshold = value
        self.history.append({"action": "threshold", "value": value})
        if self.slider.value != value:
            self.slider.unobserve(self._on_slider, names="value")
            self.slider.value = value
            self.slider.observe(self._on_slider, names="value")
        self._apply()

    def undo(self) -> bool:
        """Revert the last relabel or threshold change; False when there is nothing to undo."""
        if not self._history:
            return False
        self._state = self._history.pop()
        self.history.append({"action": "undo"})
        self.slider.unobserve(self._on_slider, names="value")
        self.slider.value = self._state.threshold
        self.slider.observe(self._on_slider, names="value")
        self._apply()
        return True

    def set_color(self, color_by: str) -> None:
        """Colour cells by ``"label"`` or ``"confidence"``."""
        if color_by not in ("label", "confidence"):
            raise InputError(f"color_by must be 'label' or 'confidence', got {color_by!r}")
        self.color_by = color_by
        if self.color_toggle.value != color_by:
            self.color_toggle.value = color_by
        self._apply(write=False)

    # ------------------------------------------------------------------------------------
    # widget callbacks
    # ------------------------------------------------------------------------------------
    def _on_selection(self, trace: Any, points: Any, selector: Any) -> None:
        self.select(points.point_inds)

    def _on_click(self, trace: Any, points: Any, selector: Any) -> None:
        if not points.point_inds:
            return
        label = self.labels[points.point_inds[0]]
        self.select(np.flatnonzero(self.labels == label))

    def _on_slider(self, change: dict[str, Any]) -> None:
        self.set_threshold(change["new"])

    def _on_color(self, change: dict[str, Any]) -> None:
        self.set_color(change["new"])

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        # a new view starts from the figure's snapshot, not from the edits sent since: refresh it
        self.figure._repr_mimebundle_()
        return self.widget._repr_mimebundle_(**kwargs)
