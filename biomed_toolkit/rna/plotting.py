"""Plots of cell embeddings, annotation results, gene matching and integration metrics.

Every function follows scanpy: ``color=``, ``show=`` (display now) and ``return_fig=`` (give the
figure back). ``embedding(..., interactive=True)`` draws with plotly, everything else with
matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ..core.log import get_logger, timed

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

log = get_logger(__name__)

UNASSIGNED = "Unassigned"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _palette(n: int) -> list[str]:
    """Distinct hex colours (tab20 then a hue circle for more categories)."""
    import matplotlib as mpl

    if n <= 10:
        cmap = mpl.colormaps["tab10"]
        return [mpl.colors.to_hex(cmap(i)) for i in range(n)]
    if n <= 20:
        cmap = mpl.colormaps["tab20"]
        return [mpl.colors.to_hex(cmap(i)) for i in range(n)]
    cmap = mpl.colormaps["hsv"]
    return [mpl.colors.to_hex(cmap(i / n)) for i in range(n)]


def category_colors(adata: AnnData | None, key: str, categories: Sequence[str]) -> dict[str, str]:
    """Colour per category: scanpy's ``uns[f"{key}_colors"]`` when it fits, else a palette.

    ``"Unassigned"`` is always light grey.
    """
    colors: list[str] | None = None
    if adata is not None:
        stored = adata.uns.get(f"{key}_colors")
        col = adata.obs.get(key)
        if (
            stored is not None
            and col is not None
            and hasattr(col, "cat")
            and len(stored) == len(col.cat.categories)
        ):
            lookup = dict(zip(col.cat.categories.astype(str), list(stored)))
            if all(c in lookup for c in categories if c != UNASSIGNED):
                colors = [lookup.get(c, "#d3d3d3") for c in categories]
    if colors is None:
        colors = _palette(len(categories))
    out = dict(zip(categories, colors))
    if UNASSIGNED in out:
        out[UNASSIGNED] = "#d3d3d3"
    return out


def _finish_mpl(fig: Any, axes: Any, show: bool | None, return_fig: bool) -> Any:
    import matplotlib.pyplot as plt

    if return_fig:
        return fig
    if show is None or show:
        plt.show()
        return None
    return axes


def _finish_plotly(fig: Any, show: bool | None, return_fig: bool) -> Any:
    if return_fig:
        return fig
    if show is None or show:
        fig.show()
        return None
    return fig


def coordinates_2d(
    adata: AnnData, basis: str, *, n_neighbors: int = 15, seed: int = 0
) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``basis``: itself when 2-D, else a UMAP of it cached in ``obsm``.

    The UMAP of ``obsm[basis]`` is stored as ``obsm[f"X_umap_{name}"]`` (``name`` = basis without
    its ``X_`` prefix) with its parameters in ``uns[f"umap_{name}"]``, and reused next time.
    Returns ``(coords, key)``.
    """
    if basis not in adata.obsm:
        alt = f"X_{basis}"
        if alt in adata.obsm:
            basis = alt
        else:
            raise InputError(
                f"basis {basis!r} not found in adata.obsm (available: {sorted(adata.obsm.keys())});"
                " run bt.tl.embed(adata) or sc.tl.umap(adata) first"
            )
    x = np.asarray(adata.obsm[basis])
    if x.ndim == 2 and x.shape[1] == 2:
        return x.astype(np.float64), basis
    name = basis[2:] if basis.startswith("X_") else basis
    key = f"X_umap_{name}"
    params = {"basis": basis, "n_neighbors": int(n_neighbors), "seed": int(seed)}
    cached = adata.uns.get(f"umap_{name}", {})
    if key in adata.obsm and dict(cached.get("params", {})) == params:
        return np.asarray(adata.obsm[key], dtype=np.float64), key
    import anndata as ad
    import scanpy as sc

    with timed(log, f"computing UMAP of {basis!r} ({adata.n_obs} cells)") as t:
        tmp = ad.AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32))
        tmp.obsm["rep"] = np.asarray(x, dtype=np.float32)
        sc.pp.neighbors(
            tmp, use_rep="rep", n_neighbors=min(n_neighbors, adata.n_obs - 1), random_state=seed
        )
        sc.tl.umap(tmp, random_state=seed)
        adata.obsm[key] = tmp.obsm["X_umap"]
        adata.uns[f"umap_{name}"] = {"params": params}
        t.add(f"{key!r}, UMAP coordinates (adata.obsm)")
        t.add(f"'umap_{name}', parameters (adata.uns)")
    return np.asarray(adata.obsm[key], dtype=np.float64), key


def _color_values(adata: AnnData, color: str | None) -> tuple[str, Any]:
    """``("none"|"categorical"|"continuous", values)`` of an obs column or a gene."""
    if color is None:
        return "none", None
    if color in adata.obs:
        col = adata.obs[color]
        if isinstance(col.dtype, pd.CategoricalDtype) or col.dtype == object or col.dtype == bool:
            return "categorical", col.astype(str).to_numpy()
        return "continuous", col.to_numpy(dtype=np.float64)
    if color in adata.var_names:
        x = adata[:, color].X
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        return "continuous", np.asarray(x).ravel().astype(np.float64)
    raise InputError(
        f"color {color!r} is neither an adata.obs column nor a gene in adata.var_names "
        f"(obs columns: {list(adata.obs.columns)})"
    )


def _categories(adata: AnnData, color: str, values: np.ndarray) -> list[str]:
    col = adata.obs.get(color)
    if col is not None and isinstance(col.dtype, pd.CategoricalDtype):
        cats = [str(c) for c in col.cat.categories if str(c) in set(values)]
    else:
        cats = sorted(set(values.tolist()))
    if UNASSIGNED in cats:  # grey group last so it never hides the labels
        cats = [c for c in cats if c != UNASSIGNED] + [UNASSIGNED]
    return cats


# --------------------------------------------------------------------------------------------
# embedding
# --------------------------------------------------------------------------------------------
def embedding(
    adata: AnnData,
    basis: str = "X_bmfm",
    *,
    color: str | Sequence[str] | None = None,
    interactive: bool = False,
    size: float | None = None,
    title: str | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
    show: bool | None = None,
    return_fig: bool = False,
) -> Any:
    """Scatter plot of cells in a 2-D embedding, coloured by obs columns or genes.

    When ``obsm[basis]`` has more than two dimensions (e.g. ``X_bmfm``), its UMAP is computed
    once and cached in ``obsm[f"X_umap_{name}"]``.

    Parameters
    ----------
    adata
        Annotated data.
    basis
        ``adata.obsm`` key (``"X_umap"``, ``"X_bmfm"``, ...; ``"umap"`` also finds ``X_umap``).
    color
        ``adata.obs`` column(s) or gene name(s); one panel each.
    interactive
        Plotly figure (hover, zoom, legend toggles) instead of matplotlib.
    size
        Marker size (default from the number of cells).
    title
        Panel title (default the colour key).
    n_neighbors, seed
        UMAP parameters when a UMAP has to be computed.
    show
        Display the figure now (default True).
    return_fig
        Return the figure (matplotlib ``Figure`` or plotly ``Figure``).

    Returns
    -------
    The figure when ``return_fig``; the axes (matplotlib) or figure (plotly) when ``show=False``;
    else None. Writes ``obsm[f"X_umap_{name}"]`` and ``uns[f"umap_{name}"]`` when a UMAP had
    to be computed.

    Examples
    --------
    >>> import scanpy as sc
    >>> adata = sc.datasets.pbmc68k_reduced()
    >>> fig = embedding(adata, "X_umap", color="bulk_labels", return_fig=True)  # doctest: +SKIP
    """
    coords, key = coordinates_2d(adata, basis, n_neighbors=n_neighbors, seed=seed)
    colors = [color] if color is None or isinstance(color, str) else list(color)
    if size is None:
        size = float(max(2.0, min(30.0, 120000 / max(adata.n_obs, 1) ** 1.2)))
    if interactive:
        return _finish_plotly(
            _embedding_plotly(adata, coords, key, colors, size, title), show, return_fig
        )
    return _embedding_mpl(adata, coords, key, colors, size, title, show, return_fig)


def _embedding_mpl(adata, coords, key, colors, size, title, show, return_fig):
    import matplotlib.pyplot as plt

    n = len(colors)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.4), squeeze=False)
    axes = axes[0]
    for ax, c in zip(axes, colors):
        kind, values = _color_values(adata, c)
        if kind == "categorical":
            cats = _categories(adata, c, values)
            cmap = category_colors(adata, c, cats)
            for cat in cats:
                m = values == cat
                ax.scatter(coords[m, 0], coords[m, 1], s=size, c=cmap[cat], label=cat,
                           linewidths=0, rasterized=True)
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                      fontsize="small", markerscale=max(1.0, 20 / size) ** 0.5)
        elif kind == "continuous":
            order = np.argsort(values, kind="stable")  # high values drawn on top
            sc_ = ax.scatter(coords[order, 0], coords[order, 1], s=size, c=values[order],
                             cmap="viridis", linewidths=0, rasterized=True)
            fig.colorbar(sc_, ax=ax, fraction=0.04)
        else:
            ax.scatter(coords[:, 0], coords[:, 1], s=size, c="#4c72b0", linewidths=0,
                       rasterized=True)
        name = key[2:] if key.startswith("X_") else key
        ax.set_xlabel(f"{name}1")
        ax.set_ylabel(f"{name}2")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title or (c if c is not None else key))
    fig.tight_layout()
    return _finish_mpl(fig, axes if n > 1 else axes[0], show, return_fig)


def _embedding_plotly(adata, coords, key, colors, size, title):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = len(colors)
    titles = [title or (c if c is not None else key) for c in colors]
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles)
    hover = adata.obs_names.to_numpy()
    msize = max(2.0, size**0.5 * 1.5)
    for i, c in enumerate(colors, start=1):
        kind, values = _color_values(adata, c)
        if kind == "categorical":
            cats = _categories(adata, c, values)
            cmap = category_colors(adata, c, cats)
            for cat in cats:
                m = values == cat
                fig.add_trace(
                    go.Scattergl(x=coords[m, 0], y=coords[m, 1], mode="markers", name=cat,
                                 legendgroup=f"{c}:{cat}", showlegend=True, text=hover[m],
                                 marker={"size": msize, "color": cmap[cat]},
                                 hovertemplate=f"%{{text}}<br>{c}: {cat}<extra></extra>"),
                    row=1, col=i,
                )
        elif kind == "continuous":
            fig.add_trace(
                go.Scattergl(x=coords[:, 0], y=coords[:, 1], mode="markers", text=hover,
                             marker={"size": msize, "color": values, "colorscale": "Viridis",
                                     "showscale": True},
                             name=str(c), showlegend=False,
                             hovertemplate=f"%{{text}}<br>{c}: %{{marker.color:.3g}}<extra></extra>"),
                row=1, col=i,
            )
        else:
            fig.add_trace(
                go.Scattergl(x=coords[:, 0], y=coords[:, 1], mode="markers", text=hover,
                             marker={"size": msize}, name="cells", showlegend=False),
                row=1, col=i,
            )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(template="simple_white", width=max(520, 480 * n), height=460,
                      legend={"itemsizing": "constant"})
    return fig


# --------------------------------------------------------------------------------------------
# confusion
# --------------------------------------------------------------------------------------------
def confusion_table(truth: Sequence[Any], pred: Sequence[Any], normalize: str | None = "true"
                    ) -> pd.DataFrame:
    """Confusion matrix as a DataFrame (rows: truth, columns: prediction).

    ``normalize="true"`` divides each row by its total (recall on the diagonal), ``"pred"``
    each column, ``None`` keeps counts.
    """
    table = pd.crosstab(pd.Series(np.asarray(truth).astype(str), name="truth"),
                        pd.Series(np.asarray(pred).astype(str), name="prediction"))
    if normalize == "true":
        table = table.div(table.sum(axis=1), axis=0)
    elif normalize == "pred":
        table = table.div(table.sum(axis=0), axis=1)
    elif normalize is not None:
        raise InputError(f"normalize must be 'true', 'pred' or None, got {normalize!r}")
    return table


def confusion(
    adata: AnnData,
    truth: str,
    pred: str,
    *,
    normalize: str | None = "true",
    annotate_cells: bool = True,
    show: bool | None = None,
    return_fig: bool = False,
) -> Any:
    """Heat map of true labels (rows) against predicted labels (columns).

    Parameters
    ----------
    adata
        Annotated data holding both columns.
    truth, pred
        ``adata.obs`` columns with the reference and the predicted labels.
    normalize
        ``"true"`` (rows sum to 1), ``"pred"`` (columns sum to 1) or None (counts).
    annotate_cells
        Write the value in each cell of the heat map.
    show, return_fig
        As in scanpy.

    Returns
    -------
    The figure when ``return_fig``, the axes when ``show=False``, else None.

    Examples
    --------
    >>> confusion(adata, "bulk_labels", "bmfm_cell_type")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    for key in (truth, pred):
        if key not in adata.obs:
            raise InputError(f"{key!r} not found in adata.obs (columns: {list(adata.obs.columns)})")
    table = confusion_table(adata.obs[truth], adata.obs[pred], normalize=normalize)
    h, w = table.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * w + 2.5, 1.0 + 0.45 * h + 1.5))
    im = ax.imshow(table.to_numpy(dtype=float), cmap="Blues", aspect="auto",
                   vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(w), table.columns, rotation=60, ha="right")
    ax.set_yticks(range(h), table.index)
    ax.set_xlabel(f"{pred} (prediction)")
    ax.set_ylabel(f"{truth} (truth)")
    if annotate_cells:
        vals = table.to_numpy(dtype=float)
        top = np.nanmax(vals) if vals.size else 1.0
        for i in range(h):
            for j in range(w):
                v = vals[i, j]
                txt = f"{v:.2f}" if normalize else f"{int(v)}"
                ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                        color="white" if v > 0.6 * top else "black")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return _finish_mpl(fig, ax, show, return_fig)


# --------------------------------------------------------------------------------------------
# gene match report
# --------------------------------------------------------------------------------------------
def _report_dict(report: Any) -> dict[str, Any]:
    if isinstance(report, Mapping):
        d = dict(report)
    elif hasattr(report, "to_dict"):
        d = dict(report.to_dict())
    elif hasattr(report, "__dict__"):
        d = dict(vars(report))
    else:
        raise InputError(
            "report must be a GeneMatchReport (from bt.rna.match_genes) or the dict stored in "
            "adata.uns[key]['gene_match']"
        )
    if "gene_match" in d and isinstance(d["gene_match"], Mapping):
        d = dict(d["gene_match"])
    return d


def _count(d: Mapping[str, Any], name: str) -> int:
    for key in (f"n_{name}", name):
        if key in d:
            v = d[key]
            if isinstance(v, (int, np.integer, float, np.floating)):
                return int(v)
            return len(v)
    return 0


def gene_match(
    report: Any,
    *,
    show: bool | None = None,
    return_fig: bool = False,
) -> Any:
    """Bar chart of a gene-match report: matched, unmatched and duplicated genes, and the share
    of counts the matched genes carry.

    Parameters
    ----------
    report
        A ``GeneMatchReport`` (``bt.rna.match_genes(adata, model)``) or the dict stored in
        ``adata.uns["X_bmfm"]["gene_match"]``.
    show, return_fig
        As in scanpy.

    Returns
    -------
    The figure when ``return_fig``, the axes when ``show=False``, else None.

    Examples
    --------
    >>> gene_match(adata.uns["X_bmfm"]["gene_match"])  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    d = _report_dict(report)
    names = ["matched", "unmatched", "not_protein_coding", "duplicated"]
    labels = ["matched", "not in vocabulary", "not protein-coding", "duplicated"]
    counts = [_count(d, n) for n in names]
    n_genes = int(d.get("n_genes", sum(counts)))
    frac = d.get("fraction_counts_covered")
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.2), gridspec_kw={"width_ratios": [3, 1.3]})
    ax = axes[0]
    colors = ["#55a868", "#c44e52", "#dd8452", "#8172b2"]
    bars = ax.barh(labels[::-1], counts[::-1], color=colors[::-1])
    for b, v in zip(bars, counts[::-1]):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v:,}", va="center")
    ax.set_xlabel("genes")
    ax.set_title(f"genes kept for the model: {counts[0]:,} of {n_genes:,}")
    ax.set_xlim(0, max(counts + [1]) * 1.25)
    ax2 = axes[1]
    if frac is not None:
        frac = float(frac)
        ax2.bar(["counts"], [frac], color="#55a868")
        ax2.bar(["counts"], [1 - frac], bottom=[frac], color="#d3d3d3")
        ax2.text(0, frac / 2, f"{100 * frac:.1f}%", ha="center", va="center", color="white")
        ax2.set_ylim(0, 1)
        ax2.set_title("share of counts kept")
    else:
        ax2.axis("off")
    fig.tight_layout()
    return _finish_mpl(fig, axes, show, return_fig)


# --------------------------------------------------------------------------------------------
# integration metrics
# --------------------------------------------------------------------------------------------
def integration_metrics(
    df: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    show: bool | None = None,
    return_fig: bool = False,
) -> Any:
    """Grouped bar chart of ``bt.tl.integration_metrics`` (one colour per representation).

    Parameters
    ----------
    df
        The DataFrame returned by ``bt.tl.integration_metrics`` (index = representation).
    metrics
        Columns to show (default every metric column present and not all NaN).
    show, return_fig
        As in scanpy.

    Returns
    -------
    The figure when ``return_fig``, the axes when ``show=False``, else None.

    Examples
    --------
    >>> df = bt.tl.integration_metrics(adata, ["X_pca", "X_bmfm"], "bulk_labels")  # doctest: +SKIP
    >>> integration_metrics(df)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    from .metrics import METRIC_COLUMNS

    if metrics is None:
        metrics = [m for m in METRIC_COLUMNS if m in df.columns and df[m].notna().any()]
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise InputError(f"metrics {missing} not in the DataFrame (columns: {list(df.columns)})")
    if not metrics:
        raise InputError("no metric column to plot: pass the DataFrame of bt.tl.integration_metrics")
    values = df[list(metrics)].astype(float)
    n_rep = len(values.index)
    width = 0.8 / max(n_rep, 1)
    x = np.arange(len(metrics))
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(metrics) * max(1, n_rep / 2), 3.6))
    colors = _palette(n_rep)
    for i, rep in enumerate(values.index):
        ax.bar(x + (i - (n_rep - 1) / 2) * width, values.loc[rep].to_numpy(), width,
               label=str(rep), color=colors[i])
    ax.set_xticks(x, metrics, rotation=30, ha="right")
    ax.set_ylim(min(0.0, float(np.nanmin(values.to_numpy())) - 0.05), 1.0)
    ax.set_ylabel("score (higher is better)")
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return _finish_mpl(fig, ax, show, return_fig)
