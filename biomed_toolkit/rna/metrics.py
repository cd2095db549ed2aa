"""Integration and classification metrics for cell representations (scIB-style).

``integration_metrics`` compares any set of representations (``X_pca``, ``X_bmfm``, ...) on the same
cells: clustering agreement with the labels (NMI, ARI), silhouettes (ASW label, ASW batch), graph
connectivity and how well a kNN or linear classifier recovers the labels (macro-F1, stratified CV).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ..core.log import get_logger, timed

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

log = get_logger(__name__)

DEFAULT_RESOLUTIONS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0)
METRIC_COLUMNS = (
    "nmi",
    "ari",
    "asw_label",
    "asw_batch",
    "graph_connectivity",
    "knn_f1",
    "linear_f1",
    "bio_conservation",
    "batch_correction",
)


def get_rep(adata: AnnData, use_rep: str) -> np.ndarray:
    """Dense float array of ``adata.obsm[use_rep]`` (or ``adata.X`` for ``"X"``).

    Raises an :class:`InputError` naming the available keys when ``use_rep`` is missing.
    """
    if use_rep == "X":
        x = adata.X
    elif use_rep in adata.obsm:
        x = adata.obsm[use_rep]
    else:
        raise InputError(
            f"representation {use_rep!r} not found in adata.obsm (available: "
            f"{sorted(adata.obsm.keys())}); compute it first, e.g. bt.tl.embed(adata) for "
            f"'X_bmfm' or sc.pp.pca(adata) for 'X_pca'"
        )
    if hasattr(x, "toarray"):
        x = x.toarray()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != adata.n_obs:
        raise InputError(f"representation {use_rep!r} has shape {x.shape}, expected (n_obs, dim)")
    if not np.isfinite(x).all():
        raise InputError(f"representation {use_rep!r} contains NaN or infinite values")
    return x


def _labels(adata: AnnData, key: str, what: str) -> np.ndarray:
    if key not in adata.obs:
        raise InputError(
            f"{what} {key!r} not found in adata.obs (columns: {list(adata.obs.columns)})"
        )
    values = adata.obs[key]
    if values.isna().any():
        raise InputError(
            f"{what} adata.obs[{key!r}] has {int(values.isna().sum())} missing values; "
            "drop or fill those cells first"
        )
    return values.astype(str).to_numpy()


def knn_graph(x: np.ndarray, n_neighbors: int = 15, seed: int = 0) -> Any:
    """Connectivities (sparse, symmetric) of the UMAP-style kNN graph scanpy builds."""
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(np.zeros((x.shape[0], 1), dtype=np.float32))
    tmp.obsm["rep"] = x.astype(np.float32)
    n_neighbors = int(min(n_neighbors, max(2, x.shape[0] - 1)))
    sc.pp.neighbors(tmp, use_rep="rep", n_neighbors=n_neighbors, random_state=seed)
    return tmp.obsp["connectivities"]


def leiden_labels(graph: Any, resolution: float, seed: int = 0) -> np.ndarray:
    """Leiden clusters of a sparse adjacency matrix (igraph + leidenalg, as scanpy does)."""
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(np.zeros((graph.shape[0], 1), dtype=np.float32))
    tmp.obsp["connectivities"] = graph
    tmp.uns["neighbors"] = {"connectivities_key": "connectivities", "params": {}}
    sc.tl.leiden(
        tmp,
        resolution=resolution,
        random_state=seed,
        key_added="c",
        flavor="igraph",
        n_iterations=2,
        directed=False,
    )
    return tmp.obs["c"].astype(str).to_numpy()


def best_clustering(
    graph: Any,
    labels: np.ndarray,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    seed: int = 0,
) -> tuple[float, float, float, np.ndarray]:
    """Leiden over a resolution sweep; keeps the one with the best NMI (as scIB does).

    Returns ``(nmi, ari, resolution, clusters)``.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    best: tuple[float, float, float, np.ndarray] | None = None
    for res in resolutions:
        clusters = leiden_labels(graph, res, seed=seed)
        nmi = float(normalized_mutual_info_score(labels, clusters))
        if best is None or nmi > best[0]:
            ari = float(adjusted_rand_score(labels, clusters))
            best = (nmi, ari, float(res), clusters)
    assert best is not None
    return best


def asw_label(x: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of the labels, rescaled to [0, 1] (1 = tight, well separated labels)."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float((silhouette_score(x, labels, metric="euclidean") + 1.0) / 2.0)


def asw_batch(x: np.ndarray, labels: np.ndarray, batches: np.ndarray) -> float:
    """scIB batch ASW: within each label, ``1 - |silhouette(batch)|`` averaged (1 = well mixed)."""
    from sklearn.metrics import silhouette_samples

    scores = []
    for lab in np.unique(labels):
        mask = labels == lab
        b = batches[mask]
        n_b = len(np.unique(b))
        if n_b < 2 or n_b >= mask.sum():
            continue
        s = silhouette_samples(x[mask], b)
        scores.append(float(np.mean(1.0 - np.abs(s))))
    return float(np.mean(scores)) if scores else float("nan")


def graph_connectivity(graph: Any, labels: np.ndarray) -> float:
    """Mean over labels of the largest connected component's share of that label's cells."""
    from scipy.sparse.csgraph import connected_components

    shares = []
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        sub = graph[idx][:, idx]
        _, comp = connected_components(sub, directed=False)
        shares.append(np.bincount(comp).max() / len(idx))
    return float(np.mean(shares))


def _cv_splits(labels: np.ndarray, n_splits: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    counts = pd.Series(labels).value_counts()
    k = int(min(n_splits, max(2, counts.max())))
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)


def probe_f1(
    x: np.ndarray,
    labels: np.ndarray,
    *,
    kind: str = "linear",
    n_splits: int = 5,
    n_neighbors: int = 15,
    seed: int = 0,
) -> float:
    """Macro-F1 of a kNN or a logistic-regression probe, stratified cross-validation."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "linear":
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    elif kind == "knn":
        clf = KNeighborsClassifier(n_neighbors=min(n_neighbors, max(1, len(labels) // 5)))
    else:
        raise InputError(f"probe kind must be 'linear' or 'knn', got {kind!r}")
    with warnings.catch_warnings():
        # classes rarer than n_splits only trigger a warning; their F1 still counts
        warnings.simplefilter("ignore", UserWarning)
        pred = cross_val_predict(clf, x, labels, cv=_cv_splits(labels, n_splits, seed))
    return float(f1_score(labels, pred, average="macro"))


def classification_metrics(truth: Sequence[Any], pred: Sequence[Any]) -> dict[str, float]:
    """Accuracy and macro-F1 of predicted labels.

    Examples
    --------
    >>> classification_metrics(["a", "b", "b"], ["a", "b", "a"])["accuracy"]  # doctest: +ELLIPSIS
    0.666...
    """
    from sklearn.metrics import accuracy_score, f1_score

    truth = np.asarray(truth).astype(str)
    pred = np.asarray(pred).astype(str)
    return {
        "accuracy": float(accuracy_score(truth, pred)),
        "macro_f1": float(f1_score(truth, pred, average="macro", labels=np.unique(truth))),
    }


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], *,
                               n_bins: int = 15) -> float:
    """Expected calibration error of top-class confidences: the cell-weighted mean over
    ``n_bins`` equal-width confidence bins of ``|accuracy - mean confidence|``.

    Examples
    --------
    >>> expected_calibration_error([0.9, 0.9, 0.6, 0.6], [True, True, True, False])
    0.1
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if conf.shape != ok.shape or conf.size == 0:
        raise InputError(f"need as many confidences as outcomes, got {conf.shape} and {ok.shape}")
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    err = 0.0
    for b in np.unique(bins):
        m = bins == b
        err += m.sum() * abs(ok[m].mean() - conf[m].mean())
    return round(float(err / conf.size), 12)


def accuracy_at_coverage(confidence: Sequence[float], correct: Sequence[bool], *,
                         coverages: Sequence[float] = (1.0, 0.9, 0.8, 0.7, 0.5)) -> pd.DataFrame:
    """Accuracy of the most confident share of cells, for each coverage (selective prediction),
    with the confidence threshold that keeps that share.

    Examples
    --------
    >>> accuracy_at_coverage([0.9, 0.8, 0.6, 0.3], [True, True, False, False],
    ...                      coverages=(1.0, 0.5))["accuracy"].tolist()
    [0.5, 1.0]
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    order = np.argsort(-conf, kind="stable")
    rows = []
    for c in coverages:
        k = max(1, int(round(c * len(conf))))
        keep = order[:k]
        rows.append({"coverage": float(c), "n_cells": k, "accuracy": float(ok[keep].mean()),
                     "min_confidence": float(conf[keep].min())})
    return pd.DataFrame(rows)


def integration_metrics(
    adata: AnnData,
    use_rep: str | Sequence[str],
    label_key: str,
    batch_key: str | None = None,
    *,
    n_neighbors: int = 15,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    n_splits: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """scIB-style metrics of one or more representations, one row per representation.

    Parameters
    ----------
    adata
        Annotated data with the representations in ``obsm`` (or ``"X"``).
    use_rep
        One key or a list of keys of ``adata.obsm``, e.g. ``["X_pca", "X_bmfm"]``.
    label_key
        ``adata.obs`` column with the cell labels (biological signal to conserve).
    batch_key
        ``adata.obs`` column with batches; without it ``asw_batch`` and ``batch_correction``
        are NaN.
    n_neighbors
        Neighbours of the kNN graph (clustering, connectivity) and of the kNN probe.
    resolutions
        Leiden resolutions swept; the clustering with the best NMI is kept (as scIB does).
    n_splits
        Folds of the stratified cross-validation of the kNN and linear probes.
    seed
        Random seed of graph, clustering and folds.

    Returns
    -------
    DataFrame indexed by representation with columns

    ``nmi``, ``ari``
        Agreement of the best Leiden clustering with the labels (``resolution`` column: which).
    ``asw_label``
        Label silhouette rescaled to [0, 1].
    ``asw_batch``
        ``1 - |batch silhouette|`` within labels (NaN without ``batch_key``).
    ``graph_connectivity``
        Mean share of each label's cells in its largest connected kNN component.
    ``knn_f1``, ``linear_f1``
        Macro-F1 of a kNN and a logistic-regression probe (stratified CV).
    ``bio_conservation``, ``batch_correction``
        Means of (nmi, ari, asw_label) and of (asw_batch, graph_connectivity).

    Examples
    --------
    >>> import scanpy as sc
    >>> adata = sc.datasets.pbmc68k_reduced()
    >>> df = integration_metrics(adata, ["X_pca"], "bulk_labels")  # doctest: +SKIP
    """
    reps = [use_rep] if isinstance(use_rep, str) else list(use_rep)
    if not reps:
        raise InputError("use_rep is empty: give at least one adata.obsm key, e.g. 'X_pca'")
    labels = _labels(adata, label_key, "label_key")
    batches = _labels(adata, batch_key, "batch_key") if batch_key is not None else None
    if len(np.unique(labels)) < 2:
        raise InputError(f"adata.obs[{label_key!r}] has a single label: metrics need at least two")
    rows = []
    with timed(log, f"computing integration metrics of {reps} on {adata.n_obs} cells"):
        for rep in reps:
            x = get_rep(adata, rep)
            graph = knn_graph(x, n_neighbors=n_neighbors, seed=seed)
            nmi, ari, res, _ = best_clustering(graph, labels, resolutions, seed=seed)
            row: dict[str, Any] = {
                "representation": rep,
                "nmi": nmi,
                "ari": ari,
                "resolution": res,
                "asw_label": asw_label(x, labels),
                "asw_batch": asw_batch(x, labels, batches) if batches is not None else np.nan,
                "graph_connectivity": graph_connectivity(graph, labels),
                "knn_f1": probe_f1(x, labels, kind="knn", n_splits=n_splits,
                                   n_neighbors=n_neighbors, seed=seed),
                "linear_f1": probe_f1(x, labels, kind="linear", n_splits=n_splits, seed=seed),
            }
            row["bio_conservation"] = float(np.mean([row["nmi"], row["ari"], row["asw_label"]]))
            row["batch_correction"] = (
                float(np.mean([row["asw_batch"], row["graph_connectivity"]]))
                if batches is not None
                else np.nan
            )
            rows.append(row)
    return pd.DataFrame(rows).set_index("representation")
