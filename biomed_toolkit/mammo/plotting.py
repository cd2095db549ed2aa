"""Plotly view of a case: CC and MLO side by side, candidates, matched pairs, probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.io import Case
from biomed_toolkit.mammo.matching import candidates_of

__all__ = ["mammo_pair", "build_pair_figure", "display_image"]

GAP = 20  # pixels between the two views on the shared canvas


def display_image(pixels: np.ndarray, max_side: int = 512) -> tuple[np.ndarray, int]:
    """Block-averaged copy for display and its integer factor."""
    f = max(1, int(np.ceil(max(pixels.shape) / max_side)))
    if f == 1:
        return pixels, 1
    h, w = (pixels.shape[0] // f) * f, (pixels.shape[1] // f) * f
    return pixels[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3)), f


def _offset(case: Case) -> float:
    return float(case.cc.shape[1] + GAP)


def build_pair_figure(
    case: Case,
    matches: pd.DataFrame | None,
    *,
    threshold: float = 0.5,
    show_truth: bool = True,
    max_side: int = 512,
    widget: bool = False,
    height: int = 520,
) -> Any:
    """The figure behind :func:`mammo_pair` (a ``FigureWidget`` when ``widget=True``)."""
    import plotly.graph_objects as go

    fig = go.FigureWidget() if widget else go.Figure()
    off = _offset(case)
    for img, x0, name in ((case.cc, 0.0, "CC"), (case.mlo, off, "MLO")):
        small, f = display_image(img.pixels, max_side)
        fig.add_trace(go.Heatmap(
            z=small, x0=x0 + (f - 1) / 2, dx=f, y0=(f - 1) / 2, dy=f, colorscale="gray",
            zmin=0, zmax=1, showscale=False, hoverinfo="skip", name=f"{name} image",
        ))
    if show_truth and case.lesions is not None and len(case.lesions):
        les = case.lesions
        for v, x0 in (("cc", 0.0), ("mlo", off)):
            sub = les[les[f"in_{v}"]]
            fig.add_trace(go.Scatter(
                x=sub[f"{v}_col"] + x0, y=sub[f"{v}_row"], mode="markers",
                marker={"symbol": "circle-open", "size": 18, "color": "limegreen",
                        "line": {"width": 2}},
                name=f"truth {v.upper()}", hovertext=[f"lesion {i} ({k})" for i, k in
                                                      zip(sub["lesion_id"], sub["kind"])],
                hoverinfo="text",
            ))
    if matches is not None:
        cands = candidates_of(matches)
        best = {
            "cc": matches.groupby("cc_id")["probability"].max() if len(matches) else pd.Series(),
            "mlo": matches.groupby("mlo_id")["probability"].max() if len(matches) else pd.Series(),
        }
        for v, x0, color in (("cc", 0.0, "#ff7f0e"), ("mlo", off, "#1f77b4")):
            c = cands[v]
            bp = best[v].reindex(c["cand_id"]).fillna(0.0).to_numpy()
            fig.add_trace(go.Scatter(
                x=c["col"] + x0, y=c["row"], mode="markers",
                marker={"symbol": "x", "size": 9, "color": color},
                name=f"{v.upper()} candidates",
                customdata=np.stack([c["cand_id"], bp], axis=1) if len(c) else None,
                hovertext=[f"{v.upper()} candidate {i}<br>detector score {s:.2f}<br>"
                           f"best match p={p:.2f}"
                           for i, s, p in zip(c["cand_id"], c["score"], bp)],
                hoverinfo="text",
            ))
        pairs = matches[matches["assigned"] & (matches["probability"] >= threshold)]
        xs, ys, mx, my, texts = [], [], [], [], []
        for r in pairs.itertuples():
            xs += [r.cc_col, r.mlo_col + off, None]
            ys += [r.cc_row, r.mlo_row, None]
            mx.append((r.cc_col + r.mlo_col + off) / 2)
            my.append((r.cc_row + r.mlo_row) / 2)
            texts.append(f"CC {r.cc_id} - MLO {r.mlo_id}<br>p = {r.probability:.3f}")
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "yellow", "width": 2},
                                 name=f"pairs (p >= {threshold:g})", hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=mx, y=my, mode="markers",
                                 marker={"size": 8, "color": "yellow", "symbol": "diamond"},
                                 hovertext=texts, hoverinfo="text", name="pair probability",
                                 showlegend=False))
    H = max(case.cc.shape[0], case.mlo.shape[0])
    W = off + case.mlo.shape[1]
    method = matches.attrs.get("method", "") if matches is not None else ""
    fig.update_layout(
        title=f"{case.case_id}: {case.cc.name} | {case.mlo.name}"
        + (f"  ({method}, threshold {threshold:g})" if method else ""),
        xaxis={"range": [0, W], "showgrid": False, "zeroline": False, "visible": False,
               "constrain": "domain"},
        yaxis={"range": [H, 0], "showgrid": False, "zeroline": False, "visible": False,
               "scaleanchor": "x"},
        height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": -0.02}, plot_bgcolor="black",
    )
    return fig


def mammo_pair(
    case: Case,
    matches: pd.DataFrame | None = None,
    *,
    threshold: float = 0.5,
    show_truth: bool = True,
    max_side: int = 512,
    show: bool = True,
    return_fig: bool = False,
) -> Any:
    """Both views side by side: candidates as markers, matched pairs joined by lines.

    Parameters
    ----------
    case
        A :class:`Case`.
    matches
        Output of :func:`match` (None: images and ground truth only).
    threshold
        Draw the assigned pairs with probability at least this.
    show_truth
        Circle the phantom's true lesions.
    max_side
        Images are block-averaged to at most this many pixels a side for display.
    show, return_fig
        Show the figure / return it (plotly ``Figure``).

    Returns
    -------
    plotly.graph_objects.Figure or None

    Examples
    --------
    >>> case = bt.mammo.phantom(0)
    >>> bt.pl.mammo_pair(case, bt.mammo.match(case, method="template"), threshold=0.6)  # doctest: +SKIP
    """
    if not isinstance(case, Case):
        raise InputError(f"mammo_pair needs a Case, got {type(case).__name__}")
    fig = build_pair_figure(case, matches, threshold=threshold, show_truth=show_truth,
                            max_side=max_side)
    if show:
        fig.show()
    if return_fig:
        return fig
    return None
