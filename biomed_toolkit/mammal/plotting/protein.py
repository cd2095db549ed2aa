"""Protein sequence tracks coloured by residue chemistry or per-residue scores.

Examples
--------
>>> from biomed_toolkit.mammal.plotting import residue_class
>>> residue_class("K")
'positive'
"""

from __future__ import annotations

import html
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from biomed_toolkit.core.display import finish
from biomed_toolkit.core.errors import InputError

from ..metrics import as_1d as _as_1d

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go


# ----------------------------------------------------------------------------- protein track

RESIDUE_CLASSES: dict[str, tuple[str, str]] = {
    # class name -> (residue letters, colour)
    "hydrophobic": ("AVLIMC", "#f2c14e"),
    "aromatic": ("FWY", "#c98bdb"),
    "polar": ("STNQ", "#7fc97f"),
    "positive": ("KRH", "#5b8ff9"),
    "negative": ("DE", "#f05d5e"),
    "special": ("GP", "#b0b0b0"),
    "other": ("XBZUO", "#e8e8e8"),
}


def residue_class(residue: str) -> str:
    """Physico-chemical class of a one-letter residue (see ``RESIDUE_CLASSES``).

    Examples
    --------
    >>> residue_class("K")
    'positive'
    """
    for name, (letters, _) in RESIDUE_CLASSES.items():
        if residue in letters:
            return name
    return "other"


def protein(
    sequence: str,
    scores: Any = None,
    *,
    wrap: int = 60,
    title: str | None = None,
    colorscale: str = "RdBu_r",
    score_label: str = "score",
    show: bool | None = None,
    return_fig: bool = False,
    save: str | os.PathLike | None = None,
) -> go.Figure | None:
    """Sequence track of a protein, one coloured cell per residue.

    Parameters
    ----------
    sequence
        One-letter amino-acid sequence.
    scores
        Optional per-residue values (attribution, conservation, ...); without them residues are
        coloured by class (hydrophobic, aromatic, polar, positive, negative, special). NaN cells
        are left grey.
    wrap
        Residues per row.
    title, colorscale, score_label
        Figure title, plotly colour scale for scores, and the score name in hover text.
    show, return_fig, save
        The toolkit's display rule (:func:`biomed_toolkit.core.display.finish`): shown by
        default; ``return_fig=True`` returns the figure unshown; ``show=False`` returns it too;
        ``save`` writes it (HTML or an image) first.

    Returns
    -------
    plotly.graph_objects.Figure or None
        The figure when ``return_fig=True``. Hover shows position (1-based), residue, class and
        score.

    Examples
    --------
    >>> fig = protein("MKTAYIAKQR", scores=range(10), return_fig=True, show=False)
    >>> fig.data[0].type
    'heatmap'
    """
    import plotly.graph_objects as go

    from biomed_toolkit.mammal.prompts import check_protein

    check_protein(sequence)
    n = len(sequence)
    if wrap < 1:
        raise InputError(f"wrap must be at least 1, got {wrap}")
    vals = None
    if scores is not None:
        vals = _as_1d(list(scores) if not hasattr(scores, "__array__") else scores, "scores")
        if vals.shape[0] != n:
            raise InputError(
                f"got {vals.shape[0]} scores for a sequence of {n} residues; give one score per residue"
            )
    cols = min(wrap, n)
    rows = math.ceil(n / cols)
    names = list(RESIDUE_CLASSES)
    z = np.full((rows, cols), np.nan)
    text = np.full((rows, cols), "", dtype=object)
    custom = np.empty((rows, cols, 4), dtype=object)
    custom[:] = ""
    for i, res in enumerate(sequence):
        r, c = divmod(i, cols)
        cls = residue_class(res)
        z[r, c] = vals[i] if vals is not None else names.index(cls)
        text[r, c] = res
        score = "" if vals is None else (f"{vals[i]:.4g}" if np.isfinite(vals[i]) else "nan")
        custom[r, c] = [i + 1, res, cls, score]
    hover = "position %{customdata[0]}<br>residue %{customdata[1]} (%{customdata[2]})"
    if vals is not None:
        hover += f"<br>{html.escape(score_label)} %{{customdata[3]}}"
    hover += "<extra></extra>"
    if vals is None:
        k = len(names)
        colorscale_used: Any = []
        for j, name in enumerate(names):
            colorscale_used += [
                [j / k, RESIDUE_CLASSES[name][1]],
                [(j + 1) / k, RESIDUE_CLASSES[name][1]],
            ]
        heat = go.Heatmap(
            z=z,
            text=text,
            customdata=custom,
            texttemplate="%{text}",
            hovertemplate=hover,
            colorscale=colorscale_used,
            zmin=-0.5,
            zmax=k - 0.5,
            xgap=1,
            ygap=3,
            colorbar={"tickvals": list(range(k)), "ticktext": names, "title": "class"},
        )
    else:
        finite = vals[np.isfinite(vals)]
        zmid = 0.0 if finite.size and finite.min() < 0 < finite.max() else None
        heat = go.Heatmap(
            z=z,
            text=text,
            customdata=custom,
            texttemplate="%{text}",
            hovertemplate=hover,
            colorscale=colorscale,
            zmid=zmid,
            xgap=1,
            ygap=3,
            colorbar={"title": score_label},
        )
    fig = go.Figure(heat)
    fig.update_layout(
        title=title or f"protein ({n} residues)",
        height=110 + 34 * rows,
        plot_bgcolor="#f4f4f4",
        margin={"l": 50, "r": 20, "t": 50, "b": 30},
    )
    fig.update_xaxes(
        tickvals=list(range(0, cols, 10)),
        ticktext=[str(t + 1) for t in range(0, cols, 10)],
        showgrid=False,
    )
    fig.update_yaxes(
        tickvals=list(range(rows)),
        ticktext=[str(r * cols + 1) for r in range(rows)],
        autorange="reversed",
        showgrid=False,
    )
    return finish(fig, show=show, return_fig=return_fig, save=save)


def protein_html(sequence: str, *, wrap: int = 60, title: str | None = None) -> str:
    """A script-free HTML sequence track coloured by residue class (for widgets and reports).

    Examples
    --------
    >>> "residue 2 K (positive)" in protein_html("MKT")
    True
    """
    from biomed_toolkit.mammal.prompts import check_protein

    check_protein(sequence)
    colors = {name: color for name, (_, color) in RESIDUE_CLASSES.items()}
    rows = []
    for start in range(0, len(sequence), wrap):
        cells = "".join(
            f"<span title='residue {start + k + 1} {res} ({residue_class(res)})' "
            f"style='background:{colors[residue_class(res)]};display:inline-block;width:1.1em;"
            f"text-align:center'>{res}</span>"
            for k, res in enumerate(sequence[start : start + wrap])
        )
        rows.append(
            f"<div style='white-space:nowrap'><span style='display:inline-block;width:3.5em;"
            f"color:#888'>{start + 1}</span>{cells}</div>"
        )
    head = f"<div style='font-weight:bold'>{html.escape(title)}</div>" if title else ""
    legend = " ".join(
        f"<span style='background:{c};padding:0 4px'>{html.escape(n)}</span>"
        for n, c in colors.items()
    )
    return (
        f"<div class='bt-protein' style='font-family:monospace;font-size:12px;line-height:1.5;"
        f"overflow-x:auto'>{head}"
        f"{''.join(rows)}<div style='margin-top:4px;font-size:11px'>{legend}</div></div>"
    )
