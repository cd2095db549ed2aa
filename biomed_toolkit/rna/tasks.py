"""scanpy-style tools on AnnData with BMFM-RNA: embed, annotate, finetune, reference_map.

All tools take keyword-only options, write ``key_added`` fields, record their parameters (and the
model card and gene-match report when a model is used) in ``uns[key_added]``, return None with
``copy=False`` and a new AnnData with ``copy=True`` (the input is then left alone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ..core.log import get_logger, timed
from .metrics import get_rep
from .plotting import UNASSIGNED

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

log = get_logger(__name__)

__all__ = ["UNASSIGNED", "annotate", "embed", "finetune", "reference_map"]


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
def _target(adata: AnnData, copy: bool) -> AnnData:
    """The object to write into: a full copy with ``copy=True``, else ``adata`` itself."""
    if copy:
        if adata.isbacked:
            return adata.to_memory()
        return adata.copy()
    return adata


def _plain(value: Any) -> Any:
    """Values storable in ``adata.uns`` / h5ad (no None, no tuples, no numpy scalars)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value if v is not None]
        if items and all(isinstance(v, str) for v in items):
            return np.asarray(items, dtype=object)
        return items
    if isinstance(value, np.generic):
        return value.item()
    return value


def _card_dict(model: Any) -> dict[str, Any]:
    card = getattr(model, "card", None)
    if card is None:
        return {}
    return card.to_dict() if hasattr(card, "to_dict") else dict(card)


# --------------------------------------------------------------------------------------------
# reference mapping (no model needed)
# --------------------------------------------------------------------------------------------
def reference_map(
    adata_query: AnnData,
    adata_ref: AnnData,
    label_key: str,
    *,
    use_rep: str = "X_bmfm",
    k: int = 15,
    key_added: str | None = None,
    min_confidence: float = 0.0,
    metric: str = "cosine",
    copy: bool = False,
) -> AnnData | None:
    """Transfer labels from a reference to query cells by k nearest neighbours in an embedding.

    Each query cell takes the label with the largest distance-weighted vote among its ``k``
    nearest reference cells (weights ``exp(-d / mean d)`` per cell); the confidence is that
    label's share of the vote. Cells below ``min_confidence`` become ``"Unassigned"``.

    Parameters
    ----------
    adata_query
        Cells to label, with ``obsm[use_rep]``.
    adata_ref
        Labelled reference, with ``obsm[use_rep]`` (same model and dimension) and
        ``obs[label_key]``.
    label_key
        ``adata_ref.obs`` column with the labels to transfer.
    use_rep
        Embedding used by both (e.g. ``"X_bmfm"`` from :func:`embed`).
    k
        Neighbours that vote.
    key_added
        Name of the written fields (default ``f"{label_key}_ref"``).
    min_confidence
        Vote share below which a cell is ``"Unassigned"``.
    metric
        ``"cosine"`` or ``"euclidean"`` distance.
    copy
        Return a new AnnData instead of writing into ``adata_query``.

    Returns
    -------
    None, or a new AnnData with ``copy=True``. Writes into the query:

    ``obs[key_added]``
        Transferred label (categorical; ``"Unassigned"`` below ``min_confidence``).
    ``obs[f"{key_added}_confidence"]``
        Weighted vote share of that label, in [0, 1].
    ``uns[key_added]``
        ``params`` (label_key, use_rep, k, metric, min_confidence, n_ref).

    Examples
    --------
    >>> bt.tl.embed(ref); bt.tl.embed(query)  # doctest: +SKIP
    >>> bt.tl.reference_map(query, ref, "cell_type")  # doctest: +SKIP
    >>> query.obs["cell_type_ref"].value_counts()  # doctest: +SKIP
    """
    from sklearn.neighbors import NearestNeighbors

    if label_key not in adata_ref.obs:
        raise InputError(
            f"label_key {label_key!r} not in adata_ref.obs (columns: {list(adata_ref.obs.columns)})"
        )
    if metric not in ("cosine", "euclidean"):
        raise InputError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if not 0.0 <= min_confidence <= 1.0:
        raise InputError(f"min_confidence must lie in [0, 1], got {min_confidence}")
    key_added = key_added or f"{label_key}_ref"
    xq = get_rep(adata_query, use_rep)
    xr = get_rep(adata_ref, use_rep)
    if xq.shape[1] != xr.shape[1]:
        raise InputError(
            f"obsm[{use_rep!r}] has {xq.shape[1]} dimensions in the query but {xr.shape[1]} in the "
            "reference: embed both with the same model"
        )
    ref_labels = adata_ref.obs[label_key]
    ok = ref_labels.notna().to_numpy()
    if not ok.all():
        log.warning(f"{int((~ok).sum())} reference cells without {label_key!r} are left out")
    xr, ref_labels = xr[ok], ref_labels[ok].astype(str).to_numpy()
    k = int(min(k, len(ref_labels)))
    if k < 1:
        raise InputError("the reference has no labelled cell")
    classes, codes = np.unique(ref_labels, return_inverse=True)
    out = _target(adata_query, copy)
    with timed(log, f"mapping {adata_query.n_obs} query cells onto {len(ref_labels)} reference "
                    f"cells ({use_rep}, k={k})") as t:
        nn = NearestNeighbors(n_neighbors=k, metric=metric).fit(xr)
        dist, idx = nn.kneighbors(xq)
        scale = dist.mean(axis=1, keepdims=True)
        weights = np.exp(-dist / np.where(scale > 0, scale, 1.0))
        votes = np.zeros((xq.shape[0], len(classes)))
        np.add.at(votes, (np.repeat(np.arange(xq.shape[0]), k), codes[idx].ravel()), weights.ravel())
        votes /= votes.sum(axis=1, keepdims=True)
        best = votes.argmax(axis=1)
        conf = votes[np.arange(len(best)), best]
        labels = classes[best].astype(object)
        labels[conf < min_confidence] = UNASSIGNED
        cats = list(classes) + ([UNASSIGNED] if (conf < min_confidence).any() else [])
        out.obs[key_added] = pd.Categorical(labels, categories=cats)
        out.obs[f"{key_added}_confidence"] = conf.astype(np.float32)
        out.uns[key_added] = _plain({
            "params": {"label_key": label_key, "use_rep": use_rep, "k": k, "metric": metric,
                       "min_confidence": float(min_confidence), "n_ref": int(len(ref_labels))},
        })
        t.add(f"{key_added!r}, transferred label (adata.obs)")
        t.add(f"'{key_added}_confidence', vote share (adata.obs)")
        t.add(f"{key_added!r}, parameters (adata.uns)")
    return out if copy else None


# --------------------------------------------------------------------------------------------
# model resolution and provenance
# --------------------------------------------------------------------------------------------
def _model(model: Any) -> Any:
    """A loaded model: the embedded demo for None, ``bt.rna.load(x)`` for a name or path."""
    if model is None or isinstance(model, str) or hasattr(model, "__fspath__"):
        from .loading import load

        return load(model)
    if not hasattr(model, "tokenizer") or not hasattr(model, "config"):
        raise InputError(
            f"model must be a BMFM-RNA model from bt.rna.load(...), a name or a path; got "
            f"{type(model).__name__}"
        )
    return model


def _uns_safe(value: Any) -> Any:
    """Make nested provenance writable to h5ad: lists of dicts become JSON strings."""
    import json

    if isinstance(value, dict):
        return {str(k): _uns_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (dict, list, tuple)) for v in value) or any(v is None for v in value):
            return json.dumps(value, default=str)
        return _plain(list(value))
    if isinstance(value, np.generic):
        return value.item()
    return value


def _provenance(model: Any, params: dict[str, Any], report: Any = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"params": params, "model": _card_dict(model)}
    if report is not None:
        rec["gene_match"] = report.to_dict()
    return _uns_safe(rec)


# --------------------------------------------------------------------------------------------
# data-parallel inference through Lightning
# --------------------------------------------------------------------------------------------
def _distributed_inference(
    model: Any,
    adata: AnnData,
    *,
    accelerator: str | None,
    devices: Any,
    num_nodes: int,
    strategy: str,
    chunk_size: int,
    **inference_kwargs: Any,
) -> Any:
    """Run :func:`run_inference` on blocks of cells in several processes (``core.inference``).

    :func:`~biomed_toolkit.core.inference.distributed_predict` shares contiguous row blocks out
    to the processes and puts every row back in cell order, whether the processes were started
    by a script (``ddp``), a notebook (fork), ``ddp_spawn`` or a cluster launcher. Per-cell
    results do not depend on the shard (the tokenizer is chunk-invariant), so they equal the
    single-process ones.
    """
    from ..core.inference import distributed_predict
    from ..core.settings import settings
    from .inference import InferenceResult
    from .tokenize import match_genes

    if inference_kwargs.get("order", "official") == "random":
        raise InputError("order='random' is not supported with devices=: use the default order")
    progress = bool(inference_kwargs.pop("progress", True)) and settings.progress
    match = inference_kwargs.pop("match", None)
    if match is None:
        match = match_genes(adata, model, gene_symbols=inference_kwargs.get("gene_symbols"),
                            limit_genes=inference_kwargs.get("limit_genes", "protein_coding"),
                            layer=inference_kwargs.get("layer"), compute_coverage=True,
                            allow_non_integer=inference_kwargs.get("allow_non_integer", False),
                            log_summary=False)
    # a backed file is reopened by each process instead of being pickled
    source: Any = str(adata.filename) if adata.isbacked else adata
    out = distributed_predict(_BlockInference(model, source, match, chunk_size, inference_kwargs),
                              adata.n_obs, batch_size=chunk_size, module=model,
                              accelerator=accelerator, devices=devices or "auto",
                              num_nodes=num_nodes, strategy=strategy, progress=progress)
    emb = out.get("embeddings")
    probs = {key[len("label:"):]: value for key, value in out.items() if key.startswith("label:")}
    names = {lab: model.label_names(lab) for lab in probs}
    log.info(match.summary())
    first = emb if emb is not None else next(iter(probs.values()), None)
    empty = np.isnan(first).any(axis=1) if first is not None else None
    pooling = None
    if inference_kwargs.get("embeddings", True):
        from .inference import _resolve_pooling

        pooling = _resolve_pooling(model, inference_kwargs.get("pooling", "auto"))
    return InferenceResult(embeddings=emb, label_probabilities=probs, label_names=names,
                           report=match, empty=empty, pooling=pooling)


class _BlockInference:
    """``predict_fn`` of :func:`_distributed_inference`: the streaming inference on cells
    ``rows[0]..rows[-1]``. Picklable (for ``ddp_spawn``); a backed file is opened once per process."""

    def __init__(self, model: Any, source: Any, match: Any, chunk_size: int,
                 kwargs: dict[str, Any]) -> None:
        self.model = model
        self.source = source
        self.match = match
        self.chunk_size = chunk_size
        self.kwargs = kwargs
        self._adata: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_adata": None}

    def _data(self) -> Any:
        if self._adata is None:
            import anndata as ad

            src = self.source
            self._adata = ad.read_h5ad(src, backed="r") if isinstance(src, str) else src
        return self._adata

    def __call__(self, rows: Any) -> dict[str, np.ndarray]:
        from .inference import run_inference

        lo, hi = int(rows[0]), int(rows[-1]) + 1
        res = run_inference(self.model, self._data()[lo:hi], match=_shallow(self.match),
                            progress=False, chunk_size=self.chunk_size, **self.kwargs)
        out: dict[str, np.ndarray] = {}
        if res.embeddings is not None:
            out["embeddings"] = res.embeddings
        for lab, p in res.label_probabilities.items():
            out[f"label:{lab}"] = p
        return out


def _shallow(report: Any) -> Any:
    """A copy of a gene-match report whose coverage fields the shard may overwrite."""
    import copy

    return copy.copy(report)


def _infer(model: Any, adata: AnnData, *, accelerator: Any, devices: Any, num_nodes: int,
           strategy: str, **kwargs: Any) -> Any:
    from .inference import run_inference

    n_dev = devices if isinstance(devices, int) else (len(devices) if isinstance(devices, list)
                                                      else 1)
    if accelerator is None and devices is None and num_nodes == 1:
        return run_inference(model, adata, **kwargs)
    if n_dev * num_nodes <= 1 and strategy == "auto":
        if accelerator not in (None, "auto", "cpu"):
            from ..core.device import resolve_device

            model.to(resolve_device(accelerator))
        return run_inference(model, adata, **kwargs)
    chunk = int(kwargs.pop("chunk_size", 0)) or max(1, min(2048, -(-adata.n_obs // (4 * n_dev))))
    return _distributed_inference(model, adata, accelerator=accelerator, devices=devices,
                                  num_nodes=num_nodes, strategy=strategy, chunk_size=chunk,
                                  **kwargs)


# --------------------------------------------------------------------------------------------
# embed
# --------------------------------------------------------------------------------------------
def embed(
    adata: AnnData,
    model: Any = None,
    *,
    key_added: str = "X_bmfm",
    pooling: str = "auto",
    max_length: int = 1024,
    batch_size: int | str = "auto",
    seed: int = 0,
    layer: str | None = None,
    gene_symbols: str | None = None,
    accelerator: str | None = None,
    devices: Any = None,
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Embed cells with a BMFM-RNA model (encoder only), scanpy-style.

    Deterministic and chunk-invariant: batch size, chunking and the number of processes do not
    change the result beyond float rounding. Streams from backed (on-disk) AnnData.

    Parameters
    ----------
    adata
        Raw counts in ``X`` (or ``layers[layer]``); in memory or backed.
    model
        A model from ``bt.rna.load``, a name/path, or None for the embedded demo model.
    key_added
        ``obsm`` key of the embedding (and ``uns`` key of its provenance).
    pooling
        ``"auto"`` (the model's default), ``"first_token"``, ``"pooler"`` or ``"mean"``.
    max_length
        Tokens per cell (CLS + genes + SEP); cells with more expressed genes are truncated.
    batch_size
        Cells per forward pass or ``"auto"`` (memory-bounded).
    seed
        Seed of random gene order (only used with ``order="random"``) recorded for provenance.
    layer, gene_symbols
        Where the raw counts and the gene symbols are (default ``X`` and ``var_names``).
    accelerator, devices, num_nodes, strategy
        Set ``devices`` (e.g. 2) to run data-parallel through Lightning (cells sharded, results
        gathered in cell order). ``strategy="auto"`` picks ``ddp`` (a fork-based DDP inside a
        notebook); CPU processes use gloo.
    progress
        Show a progress bar.
    copy
        Return a new AnnData (the input is left alone) instead of writing into ``adata``.

    Returns
    -------
    None, or a new AnnData with ``copy=True``. Writes:

    ``obsm[key_added]``
        (n_cells, hidden) float32 embedding; NaN rows for cells without counts on model genes.
    ``uns[key_added]``
        ``params`` (pooling, max_length, batch_size, seed, ...), ``model`` (the model card:
        name, source, sha256, config) and ``gene_match`` (matched/unmatched/duplicated genes,
        share of counts covered, empty cells).

    Examples
    --------
    >>> import biomed_toolkit as bt
    >>> adata = bt.rna.pbmc68k_counts()  # doctest: +SKIP
    >>> bt.tl.embed(adata)  # doctest: +SKIP
    >>> adata.obsm["X_bmfm"].shape  # doctest: +SKIP
    """
    model = _model(model)
    out = _target(adata, copy)
    with timed(log, f"embedding {adata.n_obs:,} cells") as t:
        res = _infer(model, adata, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                     strategy=strategy, embeddings=True, labels=False, pooling=pooling,
                     max_length=max_length, batch_size=batch_size, seed=seed, layer=layer,
                     gene_symbols=gene_symbols, progress=progress)
        out.obsm[key_added] = res.embeddings
        params = {"pooling": res.pooling or pooling, "max_length": max_length,
                  "batch_size": str(batch_size), "seed": seed, "layer": layer,
                  "gene_symbols": gene_symbols, "n_cells": int(adata.n_obs),
                  "n_empty_cells": int(np.asarray(res.empty).sum()) if res.empty is not None else 0}
        out.uns[key_added] = _provenance(model, params, res.report)
        t.add(f"{key_added!r}, cell embeddings (adata.obsm)")
        t.add(f"{key_added!r}, parameters, model card and gene match (adata.uns)")
    return out if copy else None


# --------------------------------------------------------------------------------------------
# annotate
# --------------------------------------------------------------------------------------------
def _default_resolution(n_cells: int) -> float:
    """CellTypist's over-clustering resolution: finer for larger datasets."""
    for limit, res in ((5_000, 5.0), (20_000, 10.0), (40_000, 15.0), (100_000, 20.0),
                       (200_000, 25.0)):
        if n_cells < limit:
            return res
    return 30.0


def majority_vote(labels: np.ndarray, clusters: np.ndarray, *, min_prop: float = 0.0,
                  heterogeneous: str = "Heterogeneous") -> np.ndarray:
    """The most frequent label of each cluster, given to every cell of the cluster.

    A cluster whose dominant label covers less than ``min_prop`` of it reads ``heterogeneous``.
    """
    labels = np.asarray(labels).astype(str)
    clusters = np.asarray(clusters).astype(str)
    out = np.empty(len(labels), dtype=object)
    for c in np.unique(clusters):
        m = clusters == c
        vals, counts = np.unique(labels[m], return_counts=True)
        best = int(np.argmax(counts))
        out[m] = vals[best] if counts[best] / m.sum() >= min_prop else heterogeneous
    return out


def annotate(
    adata: AnnData,
    model: Any = None,
    *,
    label: str = "cell_type",
    key_added: str = "bmfm_cell_type",
    min_confidence: float = 0.5,
    majority_voting: bool = False,
    over_clustering: str | np.ndarray | None = None,
    min_prop: float = 0.0,
    use_rep: str | None = None,
    max_length: int = 1024,
    batch_size: int | str = "auto",
    layer: str | None = None,
    gene_symbols: str | None = None,
    accelerator: str | None = None,
    devices: Any = None,
    num_nodes: int = 1,
    strategy: str = "auto",
    seed: int = 0,
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    """Predict a label (e.g. cell type) per cell with confidence, as CellTypist does.

    Cells whose top probability is below ``min_confidence`` read ``"Unassigned"``. With
    ``majority_voting`` every cell of an over-cluster takes the cluster's most frequent label.

    Parameters
    ----------
    adata
        Raw counts in ``X`` (or ``layers[layer]``).
    model
        A model with a label head named ``label`` (e.g. from :func:`finetune`), a name/path, or
        None for the embedded demo model.
    label
        Label head to use (``model.config.label_names`` lists them).
    key_added
        Prefix of the written fields.
    min_confidence
        Probability below which a cell is ``"Unassigned"``.
    majority_voting
        Refine labels by majority vote over ``over_clustering``.
    over_clustering
        ``obs`` column or array of cluster ids; default: Leiden over-clustering (resolution as
        CellTypist: 5 below 5,000 cells, up to 30) on ``obsm[use_rep]`` or, when absent, on the
        model embedding computed in the same pass.
    min_prop
        Clusters whose dominant label covers less than this share read ``"Heterogeneous"``.
    use_rep
        Embedding for the default over-clustering (default ``"X_bmfm"`` when present).
    max_length, batch_size, layer, gene_symbols, accelerator, devices, num_nodes, strategy
        As in :func:`embed`.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    None, or a new AnnData with ``copy=True``. Writes:

    ``obs[key_added]``
        Predicted label (categorical), ``"Unassigned"`` below ``min_confidence`` or for cells
        without counts on model genes.
    ``obs[f"{key_added}_confidence"]``
        Top class probability (0 for empty cells).
    ``obs[f"{key_added}_raw"]``
        Top class before thresholding.
    ``obsm[f"{key_added}_probabilities"]``
        (n_cells, n_classes) class probabilities; columns in ``uns[key_added]["classes"]``.
    ``obs[f"{key_added}_over_clustering"]``, ``obs[f"{key_added}_majority_voting"]``
        With ``majority_voting``: clusters and their majority label.
    ``uns[key_added]``
        ``params``, ``classes``, ``model`` (card) and ``gene_match``.

    Examples
    --------
    >>> model = bt.tl.finetune(ref, "cell_type")  # doctest: +SKIP
    >>> bt.tl.annotate(query, model, majority_voting=True)  # doctest: +SKIP
    >>> query.obs[["bmfm_cell_type", "bmfm_cell_type_confidence"]].head()  # doctest: +SKIP
    """
    from .metrics import knn_graph, leiden_labels

    model = _model(model)
    if label not in model.config.label_names:
        raise InputError(
            f"the model has no label head {label!r} (heads: {model.config.label_names}); "
            f"fine-tune one with bt.tl.finetune(adata, {label!r})"
        )
    if not 0.0 <= min_confidence <= 1.0:
        raise InputError(f"min_confidence must lie in [0, 1], got {min_confidence}")
    clusters = None
    if majority_voting and over_clustering is not None:
        if isinstance(over_clustering, str):
            if over_clustering not in adata.obs:
                raise InputError(f"over_clustering {over_clustering!r} is not an adata.obs column")
            clusters = adata.obs[over_clustering].astype(str).to_numpy()
        else:
            clusters = np.asarray(over_clustering).astype(str)
            if len(clusters) != adata.n_obs:
                raise InputError(f"over_clustering has {len(clusters)} entries for {adata.n_obs} cells")
    if use_rep is None and "X_bmfm" in adata.obsm:
        use_rep = "X_bmfm"
    need_emb = majority_voting and clusters is None and use_rep is None
    out = _target(adata, copy)
    with timed(log, f"annotating {adata.n_obs:,} cells with label head {label!r}") as t:
        res = _infer(model, adata, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                     strategy=strategy, embeddings=need_emb, labels=[label],
                     max_length=max_length, batch_size=batch_size, seed=seed, layer=layer,
                     gene_symbols=gene_symbols, progress=progress)
        probs = res.label_probabilities[label]
        classes = np.asarray(res.label_names[label], dtype=object)
        empty = np.isnan(probs).any(axis=1)
        safe = np.where(empty[:, None], 0.0, probs)
        top = safe.argmax(axis=1)
        conf = np.where(empty, 0.0, safe[np.arange(len(top)), top]).astype(np.float32)
        raw = classes[top].copy()
        raw[empty] = UNASSIGNED
        lab = raw.copy()
        lab[conf < min_confidence] = UNASSIGNED
        cats = list(dict.fromkeys([*classes.tolist(), UNASSIGNED]))
        out.obs[key_added] = pd.Categorical(lab, categories=cats)
        out.obs[f"{key_added}_confidence"] = conf
        out.obs[f"{key_added}_raw"] = pd.Categorical(raw, categories=cats)
        out.obsm[f"{key_added}_probabilities"] = np.nan_to_num(probs).astype(np.float32)
        for f in (key_added, f"{key_added}_confidence", f"{key_added}_raw"):
            t.add(f"{f!r} (adata.obs)")
        t.add(f"'{key_added}_probabilities' (adata.obsm)")
        params: dict[str, Any] = {"label": label, "min_confidence": float(min_confidence),
                                  "majority_voting": bool(majority_voting),
                                  "max_length": max_length, "layer": layer,
                                  "gene_symbols": gene_symbols}
        if majority_voting:
            if clusters is None:
                x = get_rep(adata, use_rep) if use_rep is not None else res.embeddings
                ok = ~np.isnan(x).any(axis=1)
                resolution = _default_resolution(adata.n_obs)
                clusters = np.full(adata.n_obs, "empty", dtype=object)
                clusters[ok] = leiden_labels(knn_graph(x[ok], n_neighbors=15, seed=seed),
                                             resolution, seed=seed)
                params.update({"over_clustering": f"leiden on {use_rep or 'model embedding'}",
                               "resolution": resolution})
            else:
                params["over_clustering"] = (over_clustering if isinstance(over_clustering, str)
                                             else "array")
            voted = majority_vote(lab, clusters, min_prop=min_prop)
            out.obs[f"{key_added}_over_clustering"] = pd.Categorical(clusters)
            vcats = list(dict.fromkeys([*cats, *sorted(set(voted))]))
            out.obs[f"{key_added}_majority_voting"] = pd.Categorical(voted, categories=vcats)
            params["min_prop"] = float(min_prop)
            t.add(f"'{key_added}_over_clustering', '{key_added}_majority_voting' (adata.obs)")
        rec = _provenance(model, params, res.report)
        rec["classes"] = np.asarray(classes.tolist(), dtype=object)
        out.uns[key_added] = rec
        t.add(f"{key_added!r}, parameters, classes, model card and gene match (adata.uns)")
        n_un = int((lab == UNASSIGNED).sum())
        log.info(f"    {n_un:,} of {len(lab):,} cells Unassigned at min_confidence={min_confidence}")
    return out if copy else None


# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------
def _codes(adata: AnnData, key: str, what: str) -> tuple[np.ndarray, list[str]]:
    if key not in adata.obs:
        raise InputError(f"{what} {key!r} not in adata.obs (columns: {list(adata.obs.columns)})")
    col = adata.obs[key]
    if isinstance(col.dtype, pd.CategoricalDtype):
        classes = [str(c) for c in col.cat.categories if (col == c).any()]
    else:
        classes = sorted(col.dropna().astype(str).unique().tolist())
    index = {c: i for i, c in enumerate(classes)}
    codes = np.array([index.get(str(v), -100) if pd.notna(v) else -100 for v in col], dtype=np.int64)
    if len(classes) < 2:
        raise InputError(f"{what} adata.obs[{key!r}] needs at least two classes, found {classes}")
    return codes, classes


def _with_heads(base: Any, heads: list[Any], replaced: set[str]) -> Any:
    """A copy of ``base`` whose label heads are the kept old ones plus ``heads``."""
    from .configuration import BmfmRnaConfig
    from .modeling import BmfmRnaModel

    cfg_dict = base.config.to_dict()
    kept = [c for c in base.config.label_columns if c.name not in replaced]
    cfg_dict["label_columns"] = [c.to_dict() for c in [*kept, *heads]]
    cfg = BmfmRnaConfig.from_dict(cfg_dict)
    new = BmfmRnaModel(cfg)
    state = {k: v for k, v in base.state_dict().items()
             if not any(f"label_decoders.{name}." in k for name in replaced)}
    result = new.load_state_dict(state, strict=False)
    fresh = {f"label_decoders.{h.name}." for h in heads}
    bad_missing = [k for k in result.missing_keys if not any(f in k for f in fresh)]
    if bad_missing or result.unexpected_keys:
        from ..core.errors import CheckpointError

        raise CheckpointError(f"could not carry weights over: missing {bad_missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    new.tokenizer = base.tokenizer
    new.pooling = getattr(base, "pooling", cfg.pooling)
    new.label_dict = {k: dict(v) for k, v in (base.label_dict or {}).items() if k not in replaced}
    return new


def _freeze(model: Any, freeze_layers: int | str | list[str] | None) -> None:
    from ..core.finetune import freeze_layers as freeze

    if freeze_layers is None or freeze_layers == 0:
        return
    if isinstance(freeze_layers, int):
        names = {id(m): n for n, m in model.named_modules()}
        emb = names[id(model.backbone.input_embeddings)]
        blocks = names[id(model.backbone.blocks)]
        n_blocks = len(model.backbone.blocks)
        if not 0 < freeze_layers <= n_blocks:
            raise InputError(f"freeze_layers={freeze_layers}: the model has {n_blocks} layers")
        patterns = [f"{emb}.*", *[f"{blocks}.{i}.*" for i in range(freeze_layers)]]
    else:
        patterns = [freeze_layers] if isinstance(freeze_layers, str) else list(freeze_layers)
    freeze(model, patterns)


def _lora_targets(model: Any) -> list[str]:
    return ["query", "value"] if model.config.variant == "v1" else ["c_attn"]


def _merge_lora(model: Any) -> Any:
    """Fold LoRA adapters into plain weights so that ``save_pretrained``/``load`` just work."""
    from .modeling import BmfmRnaModel

    for module in model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "merge"):
            module.merge()
    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items()
             if "lora_" not in k}
    clean = BmfmRnaModel(model.config)
    clean.load_state_dict(state, strict=True)
    clean.tokenizer, clean.pooling, clean.label_dict = model.tokenizer, model.pooling, model.label_dict
    return clean


def _probe_init_head(model: Any, adata: AnnData, rows: np.ndarray, codes: np.ndarray,
                     label_key: str, *, max_length: int, layer: str | None,
                     gene_symbols: str | None, seed: int) -> None:
    """Linear-probe initialisation of a new head (LP-FT): fit a logistic regression on the
    frozen pooler output of the training cells and copy it into the head, so fine-tuning
    starts from the probe's accuracy instead of a random head."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from .inference import run_inference

    if model.backbone.pooler is None:
        return
    sub = adata[np.sort(rows)]
    res = run_inference(model, sub, embeddings=True, pooling="pooler", max_length=max_length,
                        layer=layer, gene_symbols=gene_symbols, progress=False)
    x, y = res.embeddings, codes[np.sort(rows)]
    ok = np.isfinite(x).all(axis=1) & (y >= 0)
    if len(np.unique(y[ok])) < 2:
        return
    clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed).fit(x[ok], y[ok])
    head = model.cls.label_predictions.predictions.label_decoders[label_key].decoder
    lin = head if isinstance(head, torch.nn.Linear) else head[-1]
    w = np.zeros(tuple(lin.weight.shape), dtype=np.float32)
    b = np.full(lin.weight.shape[0], -10.0, dtype=np.float32)  # classes absent from training
    coef = clf.coef_ if len(clf.classes_) > 2 else np.r_[-clf.coef_, clf.coef_] / 2
    icpt = clf.intercept_ if len(clf.classes_) > 2 else np.r_[-clf.intercept_, clf.intercept_] / 2
    w[clf.classes_] = coef
    b[clf.classes_] = icpt
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))


def finetune(
    adata: AnnData,
    label_key: str,
    model: Any = None,
    *,
    batch_key: str | None = None,
    max_epochs: int = 10,
    freeze_layers: int | str | list[str] | None = None,
    lora: bool = False,
    lora_rank: int = 8,
    val_fraction: float = 0.1,
    batch_size: int = 32,
    learning_rate: float = 1e-4,
    max_length: int = 1024,
    gradient_reversal: float = 1.0,
    batch_loss_weight: float = 0.1,
    early_stopping: bool | dict[str, Any] = True,
    head_init: str = "linear_probe",
    layer: str | None = None,
    gene_symbols: str | None = None,
    seed: int = 0,
    progress: bool = True,
    **train_kwargs: Any,
) -> Any:
    """Fine-tune a BMFM-RNA model to predict ``obs[label_key]``, in the notebook.

    A new label head named ``label_key`` (one class per value in ``adata``) is put on the pooler
    of a copy of ``model`` and trained with focal loss through ``bt.train.fit`` (progress bar,
    early stopping on ``val_loss``, checkpoints and resume, multi-device). The input model is
    not changed.

    Parameters
    ----------
    adata
        Raw counts in ``X`` (or ``layers[layer]``) and labels in ``obs[label_key]``
        (cells with a missing label are left out).
    label_key
        ``adata.obs`` column to learn; also the name of the new head.
    model
        Starting model (default: the embedded demo model), a name or a path.
    batch_key
        ``adata.obs`` column with batches: adds an adversarial head behind gradient reversal
        (coefficient ``gradient_reversal``, loss weight ``batch_loss_weight``) so that the
        embedding forgets the batch.
    max_epochs
        Upper bound on epochs (early stopping may end sooner).
    freeze_layers
        An int (freeze the embeddings and the first N transformer layers) or glob pattern(s)
        of parameter names.
    lora
        Train LoRA adapters (rank ``lora_rank``) on the attention projections plus the heads
        instead of all weights; adapters are merged into the returned model.
    val_fraction
        Stratified share of cells held out for ``val_loss`` (0 disables validation).
    batch_size, learning_rate, max_length
        Training settings.
    early_stopping
        True (patience 3 on ``val_loss``), False, or ``EarlyStopping`` arguments.
    head_init
        ``"linear_probe"`` (default: the new head starts as a logistic regression fitted on the
        frozen pooler output of the training cells, then everything is fine-tuned: LP-FT) or
        ``"random"``.
    layer, gene_symbols
        Where the raw counts and the gene symbols are.
    seed
        Seeds the split, the gene order and the training.
    progress
        Show a progress bar.
    **train_kwargs
        Passed to ``bt.train.fit``: ``accelerator``, ``devices``, ``num_nodes``,
        ``checkpoint_dir``, ``resume``, ...

    Returns
    -------
    The fine-tuned model, ready for :func:`annotate` (``label=label_key``) and
    ``save_pretrained``; ``model.history`` holds the training history (``bt.pl.training_history``),
    ``model.fit_result`` the :class:`~biomed_toolkit.core.train.FitResult` and
    ``model.split`` the train/validation cell indices.

    Examples
    --------
    >>> model = bt.tl.finetune(adata, "bulk_labels", max_epochs=5)  # doctest: +SKIP
    >>> bt.tl.annotate(query, model, label="bulk_labels")  # doctest: +SKIP
    >>> model.save_pretrained("my_model")  # doctest: +SKIP
    """
    import copy as _copy

    import torch
    from sklearn.model_selection import train_test_split
    from torch.utils.data import DataLoader, Subset

    from ..core.finetune import apply_lora
    from ..core.hub import ModelCard
    from ..core.train import fit
    from .configuration import LabelColumn
    from .io import check_counts, get_matrix, to_csr
    from .objectives import CellDataset, PretrainingCollator, RnaPretrainingModule
    from .tokenize import match_genes

    base = _model(model)
    codes, classes = _codes(adata, label_key, "label_key")
    heads = [LabelColumn(label_key, len(classes))]
    labels = {label_key: codes}
    label_dict = {label_key: {c: i for i, c in enumerate(classes)}}
    if batch_key is not None:
        if batch_key == label_key:
            raise InputError("batch_key must differ from label_key")
        bcodes, bclasses = _codes(adata, batch_key, "batch_key")
        heads.append(LabelColumn(batch_key, len(bclasses),
                                 gradient_reversal_coefficient=float(gradient_reversal)))
        labels[batch_key] = bcodes
        label_dict[batch_key] = {c: i for i, c in enumerate(bclasses)}
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val_fraction must lie in [0, 1), got {val_fraction}")

    with timed(log, f"fine-tuning a {label_key!r} head ({len(classes)} classes) on "
                    f"{adata.n_obs:,} cells"):
        new = _with_heads(_copy.deepcopy(base).cpu(), heads, {label_key, batch_key} - {None})
        new.label_dict.update(label_dict)
        _freeze(new, freeze_layers)
        if lora:
            new = apply_lora(new, _lora_targets(new), r=lora_rank, alpha=2 * lora_rank)
            for name, p in new.named_parameters():
                if "label_decoders" in name:
                    p.requires_grad_(True)
        match = match_genes(adata, new, gene_symbols=gene_symbols,
                            limit_genes=new.config.limit_genes, layer=layer, log_summary=True)
        matrix = get_matrix(adata, layer)
        counts = to_csr(matrix[:] if adata.isbacked else matrix)
        check_counts(counts.data, where="adata.X" if layer is None else f"adata.layers[{layer!r}]")
        labelled = np.flatnonzero(codes >= 0)
        n_val = int(round(val_fraction * len(labelled)))
        strat = codes[labelled]
        ok_strat = np.bincount(strat).min() >= 2 and n_val >= len(classes)
        if n_val:
            tr, va = train_test_split(labelled, test_size=n_val, random_state=seed,
                                      stratify=strat if ok_strat else None)
        else:
            tr, va = labelled, np.array([], dtype=np.int64)
        if head_init == "linear_probe":
            _probe_init_head(new, adata, tr, codes, label_key, max_length=max_length,
                             layer=layer, gene_symbols=gene_symbols, seed=seed)
        elif head_init != "random":
            raise InputError(f"head_init must be 'linear_probe' or 'random', got {head_init!r}")
        cls_ids = new.tokenizer.cls_token_ids(new.config.n_cls_tokens)

        def collator(s: int) -> Any:
            return PretrainingCollator(counts, match.column_token_ids, new.config.vocab_size,
                                       labels=labels, max_length=max_length, expose_zeros=False,
                                       wced=False, cls_ids=cls_ids, seed=s)

        cells = CellDataset(adata.n_obs)
        train_loader = DataLoader(Subset(cells, np.sort(tr).tolist()), batch_size=batch_size,
                                  shuffle=True, collate_fn=collator(seed),
                                  generator=torch.Generator().manual_seed(seed))
        val_loader = (DataLoader(Subset(cells, np.sort(va).tolist()), batch_size=batch_size,
                                 shuffle=False, collate_fn=collator(seed + 1)) if len(va) else None)
        steps = max(1, len(train_loader)) * max_epochs
        # a checkpoint per epoch by default: the vocabulary-sized tables make each one costly
        train_kwargs.setdefault("every_n_steps", max(1, len(train_loader)))
        module = RnaPretrainingModule(
            new.train(), objectives=("labels",), learning_rate=learning_rate,
            label_weights={batch_key: batch_loss_weight} if batch_key else None,
            warmup_steps=max(1, min(100, steps // 10)),
        )
        result = fit(module, train_loader, val_loader, max_epochs=max_epochs,
                     early_stopping=early_stopping if val_loader is not None else None,
                     seed=seed, progress=progress, **train_kwargs)
        trained = result.module.model
        if lora:
            trained = _merge_lora(trained)
        trained = trained.cpu().eval()
        for p in trained.parameters():
            p.requires_grad_(True)
        parent = _card_dict(base)
        trained.card = ModelCard(
            name=f"{parent.get('name', 'bmfm-rna')}+finetuned:{label_key}",
            family="bmfm-rna", source="finetuned", sha256=None,
            config=trained.config.to_dict(), task=f"annotation ({label_key})",
            extra={"parent": parent.get("name"), "parent_sha256": parent.get("sha256"),
                   "label_key": label_key, "batch_key": batch_key, "classes": classes,
                   "n_train": int(len(tr)), "n_val": int(len(va)), "lora": bool(lora),
                   "freeze_layers": freeze_layers, "max_epochs": max_epochs,
                   "global_step": int(result.global_step)},
        )
        trained.history = result.history
        trained.fit_result = result
        trained.split = {"train": np.sort(tr), "val": np.sort(va)}
    return trained
