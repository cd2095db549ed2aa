"""Figures of the mammography domain: the two-view pair view (plotly) and the FROC curves of the
detection pipeline (matplotlib). Both follow the toolkit's one display rule
(:func:`biomed_toolkit.core.display.finish`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomed_toolkit.core.display import finish
from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.io import Case
from biomed_toolkit.mammo.matching import candidates_of

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["mammo_pair", "mammo_froc", "build_pair_figure", "display_image"]

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
) -> go.Figure:
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
        both = les[les["in_cc"] & les["in_mlo"]]
        xs, ys = [], []
        for r in both.itertuples():
            xs += [r.cc_col, r.mlo_col + off, None]
            ys += [r.cc_row, r.mlo_row, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="true pairs", hoverinfo="skip",
                                 line={"color": "limegreen", "width": 1.5, "dash": "dot"}))
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
    show: bool | None = None,
    return_fig: bool = False,
    save: str | os.PathLike | None = None,
) -> go.Figure | None:
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
        Circle the phantom's true lesions and join the true pairs (dotted green).
    max_side
        Images are block-averaged to at most this many pixels a side for display.
    show, return_fig, save
        The toolkit's display rule (:func:`biomed_toolkit.core.display.finish`).

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
    return finish(fig, show=show, return_fig=return_fig, save=save)


def mammo_froc(
    results: pd.DataFrame | Mapping[str, Mapping[str, Sequence[float]]],
    *,
    fp_rates: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
    max_fp: float = 4.0,
    title: str | None = "Detection pipeline: FROC",
    ax: Any = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | os.PathLike | None = None,
) -> Any:
    """FROC curves: lesion sensitivity against false positives per image, detector alone and
    after matching-based false-positive reduction.

    Parameters
    ----------
    results
        ``bt.mammo.evaluate(..., return_curves=True)`` (curves in ``attrs["froc"]``) or a dict
        ``{label: {"fp_per_image": [...], "sensitivity": [...]}}``.
    fp_rates
        FP rates marked on the curves (the operating points the benchmark reports).
    max_fp
        Right end of the x axis.
    title
        Axis title.
    ax, show, return_fig, save
        The toolkit's display rule (:func:`biomed_toolkit.core.display.finish`).

    Examples
    --------
    >>> df = bt.mammo.evaluate(cases, ["fused", "siamese"], return_curves=True)  # doctest: +SKIP
    >>> bt.pl.mammo_froc(df)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    curves = results.attrs.get("froc") if isinstance(results, pd.DataFrame) else results
    if not curves:
        raise InputError("no FROC curves: pass bt.mammo.evaluate(..., return_curves=True) or a "
                         "dict {label: {'fp_per_image': [...], 'sensitivity': [...]}}")
    fig = ax.figure if ax is not None else plt.figure(figsize=(5.5, 4.0))
    axis = ax if ax is not None else fig.add_subplot(111)
    for label, curve in curves.items():
        fp = np.asarray(curve["fp_per_image"], float)
        sens = np.asarray(curve["sensitivity"], float)
        order = np.argsort(fp, kind="stable")
        fp, sens = fp[order], np.maximum.accumulate(sens[order])
        name = "detector alone" if label == "detector" else f"with matching ({label})"
        line = axis.step(fp, sens, where="post", label=name,
                         lw=2.2 if label == "detector" else 1.6,
                         ls="--" if label == "detector" else "-")[0]
        at = [float(sens[fp <= f + 1e-12].max()) if (fp <= f + 1e-12).any() else 0.0
              for f in fp_rates]
        axis.plot(fp_rates, at, "o", color=line.get_color(), ms=4)
    axis.set_xscale("log")
    axis.set_xlim(min(fp_rates) / 2, max_fp)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("false positives per image")
    axis.set_ylabel("lesion sensitivity")
    axis.grid(alpha=0.3, which="both")
    axis.legend(loc="lower right", fontsize=8)
    if title:
        axis.set_title(title)
    return finish(fig, show=show, return_fig=return_fig, ax=ax, save=save)
