"""Score plots: predicted against measured affinity, and the distribution of screening scores.

The metrics themselves are in :mod:`biomed_toolkit.mammal.metrics`.

Examples
--------
>>> from biomed_toolkit.mammal.plotting import score_distribution
>>> fig = score_distribution([4.1, 5.5, 6.2, 7.0], threshold=6.0, return_fig=True)
>>> fig.layout.meta["n_above"]
2
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from biomed_toolkit.core.display import finish
from biomed_toolkit.core.errors import InputError

from ..metrics import as_1d as _as_1d

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import plotly.graph_objects as go

from ..metrics import affinity_metrics

# ----------------------------------------------------------------------------- score plots


def _pair_arrays(pred: Any, measured: Any, data: Any) -> tuple[np.ndarray, np.ndarray, str, str]:
    if data is not None:
        for col in (pred, measured):
            if col not in data.columns:
                raise InputError(
                    f"column {col!r} is not in the data (columns: {list(data.columns)})"
                )
        return (
            _as_1d(data[pred], str(pred)),
            _as_1d(data[measured], str(measured)),
            str(pred),
            str(measured),
        )
    p = _as_1d(pred, "pred")
    m = _as_1d(measured, "measured")
    if p.shape[0] != m.shape[0]:
        raise InputError(
            f"pred has {p.shape[0]} values but measured has {m.shape[0]}; they must pair up"
        )
    return (
        p,
        m,
        getattr(pred, "name", None) or "predicted",
        getattr(measured, "name", None) or "measured",
    )


def affinity_scatter(
    pred: Any,
    measured: Any,
    *,
    data: pd.DataFrame | None = None,
    labels: Sequence[Any] | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | os.PathLike | None = None,
) -> go.Figure | None:
    """Predicted against measured affinity with the y = x line, Pearson r and RMSE.

    Parameters
    ----------
    pred, measured
        Values (arrays or Series of equal length), or column names of ``data``. Pairs with a NaN
        are dropped and counted in the title.
    data
        Optional DataFrame holding both columns.
    labels
        Hover label per point (e.g. compound id or SMILES).
    title, xlabel, ylabel
        Text; axis labels default to the Series/column names.
    show, return_fig, save
        The toolkit's display rule (:func:`biomed_toolkit.core.display.finish`): shown by
        default; ``return_fig=True`` returns the figure unshown; ``show=False`` returns it too;
        ``save`` writes it (HTML or an image) first.

    Returns
    -------
    plotly.graph_objects.Figure or None
        The figure when ``return_fig=True``; ``fig.layout.meta`` holds the metrics
        (``n``, ``pearson_r``, ``spearman_rho``, ``rmse``, ``mae``).

    Examples
    --------
    >>> fig = affinity_scatter([5.0, 6.1, 7.2], [5.3, 6.0, 7.9], return_fig=True, show=False)
    >>> round(fig.layout.meta["pearson_r"], 3)
    0.966
    """
    import plotly.graph_objects as go

    p, m, pname, mname = _pair_arrays(pred, measured, data)
    metrics = affinity_metrics(p, m)
    ok = np.isfinite(p) & np.isfinite(m)
    hover = None
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(p):
            raise InputError(f"got {len(labels)} labels for {len(p)} points")
        hover = [str(lab) for lab, keep in zip(labels, ok) if keep]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=m[ok],
            y=p[ok],
            mode="markers",
            marker={"size": 7, "opacity": 0.75},
            text=hover,
            name="pairs",
            hovertemplate=(
                ("%{text}<br>" if hover else "")
                + "measured %{x:.3f}<br>predicted %{y:.3f}<extra></extra>"
            ),
        )
    )
    if ok.any():
        lo = float(min(p[ok].min(), m[ok].min()))
        hi = float(max(p[ok].max(), m[ok].max()))
        pad = 0.05 * (hi - lo or 1.0)
        fig.add_trace(
            go.Scatter(
                x=[lo - pad, hi + pad],
                y=[lo - pad, hi + pad],
                mode="lines",
                line={"dash": "dash", "color": "#888"},
                name="y = x",
                hoverinfo="skip",
            )
        )
    dropped = int(metrics["n_dropped"])
    summary = (
        f"Pearson r = {metrics['pearson_r']:.3f}, RMSE = {metrics['rmse']:.3f}, n = {int(metrics['n'])}"
        + (f" ({dropped} pairs with NaN dropped)" if dropped else "")
    )
    fig.update_layout(
        title=(f"{title}<br><sup>{summary}</sup>" if title else summary),
        xaxis_title=xlabel or mname,
        yaxis_title=ylabel or pname,
        meta={k: (int(v) if k.startswith("n") else v) for k, v in metrics.items()},
        width=520,
        height=480,
    )
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return finish(fig, show=show, return_fig=return_fig, save=save)


def score_distribution(
    scores: Any,
    *,
    data: pd.DataFrame | None = None,
    groups: Any = None,
    threshold: float | None = None,
    nbins: int = 40,
    title: str | None = None,
    xlabel: str | None = None,
    show: bool | None = None,
    return_fig: bool = False,
    save: str | os.PathLike | None = None,
) -> go.Figure | None:
    """Histogram of scores (e.g. a virtual screen), optionally split by group, with a threshold.

    Parameters
    ----------
    scores
        Values, or a column name of ``data``. NaN values (failed rows) are dropped and counted.
    data
        Optional DataFrame holding ``scores`` (and ``groups``) columns.
    groups
        Optional group label per value (or a column of ``data``): one overlaid histogram each.
    threshold
        Draw a vertical line and report how many scores are at or above it.
    nbins, title, xlabel
        Histogram bins and text.
    show, return_fig, save
        The toolkit's display rule (:func:`biomed_toolkit.core.display.finish`): shown by
        default; ``return_fig=True`` returns the figure unshown; ``show=False`` returns it too;
        ``save`` writes it (HTML or an image) first.

    Returns
    -------
    plotly.graph_objects.Figure or None
        The figure when ``return_fig=True``; ``fig.layout.meta`` holds ``n``, ``n_missing`` and
        ``n_above`` (with a threshold).

    Examples
    --------
    >>> fig = score_distribution([4.1, 5.5, 6.2, 7.0], threshold=6.0, return_fig=True, show=False)
    >>> fig.layout.meta["n_above"]
    2
    """
    import plotly.graph_objects as go

    name = xlabel
    if data is not None:
        if scores not in data.columns:
            raise InputError(
                f"column {scores!r} is not in the data (columns: {list(data.columns)})"
            )
        name = name or str(scores)
        if isinstance(groups, str):
            if groups not in data.columns:
                raise InputError(f"groups column {groups!r} is not in the data")
            groups = data[groups]
        scores = data[scores]
    values = _as_1d(scores, "scores")
    name = name or getattr(scores, "name", None) or "score"
    if groups is not None:
        groups = np.asarray(list(groups), dtype=object)
        if groups.shape[0] != values.shape[0]:
            raise InputError(f"got {groups.shape[0]} group labels for {values.shape[0]} scores")
    ok = np.isfinite(values)
    fig = go.Figure()
    if groups is None:
        fig.add_trace(go.Histogram(x=values[ok], nbinsx=nbins, name=name))
    else:
        for g in dict.fromkeys(groups[ok].tolist()):
            sel = ok & (groups == g)
            fig.add_trace(go.Histogram(x=values[sel], nbinsx=nbins, name=str(g), opacity=0.6))
        fig.update_layout(barmode="overlay")
    meta: dict[str, Any] = {"n": int(ok.sum()), "n_missing": int((~ok).sum())}
    subtitle = f"n = {meta['n']}" + (f", {meta['n_missing']} missing" if meta["n_missing"] else "")
    if threshold is not None:
        above = int((values[ok] >= threshold).sum())
        meta["n_above"] = above
        meta["threshold"] = float(threshold)
        fig.add_vline(x=float(threshold), line_dash="dash", line_color="#d62728")
        subtitle += f"; {above} at or above {threshold:g}"
    fig.update_layout(
        title=(f"{title}<br><sup>{subtitle}</sup>" if title else subtitle),
        xaxis_title=name,
        yaxis_title="count",
        meta=meta,
        height=380,
    )
    return finish(fig, show=show, return_fig=return_fig, save=save)
