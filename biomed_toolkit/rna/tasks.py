"""scanpy-style tools on AnnData with BMFM-RNA: embed, annotate, finetune, reference_map.

All tools take keyword-only options, write ``key_added`` fields, record their parameters (and the
model card and gene-match report when a model is used) in ``uns[key_added]``, return None with
``copy=False`` and a new AnnData with ``copy=True`` (the input is then left alone). Options are
checked before any cell is read, and every field is written only once the whole call has
succeeded: a call that fails leaves ``adata`` as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ..core.log import get_logger, timed
from .inference import check_batch_size, default_max_length
from .metrics import get_rep
from .plotting import UNASSIGNED
from .tokenize import warn_low_coverage
from .training import (
    calibrated_probabilities,
    finetune,  # noqa: F401  (bt.tl.finetune lives in rna/training.py)
)

if TYPE_CHECKING:  # pragma: no cover
    import os

    from anndata import AnnData

    from ..core.device import Devices
    from .modeling import BmfmRnaModel


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


def _check_target(adata: AnnData, copy: bool) -> None:
    """Refuse, before any work, a target the results could not be written into."""
    if not copy and adata.is_view and adata.isbacked:
        raise InputError(
            "adata is a view of a backed (on-disk) AnnData, which cannot take new fields: pass "
            "copy=True to get an in-memory AnnData with the results, or load the cells first "
            "with adata = adata.to_memory()"
        )


_MISSING = object()


def _commit(out: AnnData, *, obs: dict[str, Any] | None = None,
            obsm: dict[str, np.ndarray] | None = None, uns: dict[str, Any] | None = None) -> None:
    """Write every result field into ``out``; if any write fails, put the earlier fields back.

    Called once per tool, after everything was computed, so a failing call changes nothing.
    """
    saved: list[tuple[str, str, Any]] = []
    try:
        for attr, fields in (("obs", obs), ("obsm", obsm), ("uns", uns)):
            for key, value in (fields or {}).items():
                store = getattr(out, attr)
                saved.append((attr, key, store.get(key, _MISSING)))
                store[key] = value
    except BaseException:
        for attr, key, old in reversed(saved):
            store = getattr(out, attr)
            if old is not _MISSING:
                store[key] = old
            elif key in store:
                del store[key]
        raise


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
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k (neighbours that vote) must be a positive integer, got {k!r}")
    _check_target(adata_query, copy)
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
        _commit(out, obs={key_added: pd.Categorical(labels, categories=cats),
                          f"{key_added}_confidence": conf.astype(np.float32)},
                uns={key_added: _plain({
                    "params": {"label_key": label_key, "use_rep": use_rep, "k": k,
                               "metric": metric, "min_confidence": float(min_confidence),
                               "n_ref": int(len(ref_labels))},
                })})
        t.add(f"{key_added!r}, transferred label (adata.obs)")
        t.add(f"'{key_added}_confidence', vote share (adata.obs)")
        t.add(f"{key_added!r}, parameters (adata.uns)")
    return out if copy else None


# --------------------------------------------------------------------------------------------
# model resolution and provenance
# --------------------------------------------------------------------------------------------
def _model(model: BmfmRnaModel | str | os.PathLike | None) -> BmfmRnaModel:
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
    devices: Devices,
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


def _infer(model: Any, adata: AnnData, *, accelerator: Any, devices: Devices, num_nodes: int,
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
    model: BmfmRnaModel | str | os.PathLike | None = None,
    *,
    key_added: str = "X_bmfm",
    pooling: str = "auto",
    max_length: int | None = None,
    batch_size: int | str = "auto",
    seed: int = 0,
    layer: str | None = None,
    gene_symbols: str | None = None,
    accelerator: str | None = None,
    devices: Devices = None,
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
        Default: the length the model was trained with (``model.config.max_length``), else 1024.
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
    check_batch_size(batch_size)
    _check_target(adata, copy)
    model = _model(model)
    max_length = default_max_length(model, max_length)
    with timed(log, f"embedding {adata.n_obs:,} cells") as t:
        res = _infer(model, adata, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                     strategy=strategy, embeddings=True, labels=False, pooling=pooling,
                     max_length=max_length, batch_size=batch_size, seed=seed, layer=layer,
                     gene_symbols=gene_symbols, progress=progress)
        warn_low_coverage(res.report)
        params = {"pooling": res.pooling or pooling, "max_length": max_length,
                  "batch_size": str(batch_size), "seed": seed, "layer": layer,
                  "gene_symbols": gene_symbols, "n_cells": int(adata.n_obs),
                  "n_empty_cells": int(np.asarray(res.empty).sum()) if res.empty is not None else 0}
        out = _target(adata, copy)
        _commit(out, obsm={key_added: res.embeddings},
                uns={key_added: _provenance(model, params, res.report)})
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
    model: BmfmRnaModel | str | os.PathLike | None = None,
    *,
    label: str = "cell_type",
    key_added: str = "bmfm_cell_type",
    min_confidence: float = 0.5,
    majority_voting: bool = False,
    over_clustering: str | np.ndarray | None = None,
    min_prop: float = 0.0,
    use_rep: str | None = None,
    max_length: int | None = None,
    batch_size: int | str = "auto",
    layer: str | None = None,
    gene_symbols: str | None = None,
    accelerator: str | None = None,
    devices: Devices = None,
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
    max_length = default_max_length(model, max_length)
    if label not in model.config.label_names:
        raise InputError(
            f"the model has no label head {label!r} (heads: {model.config.label_names}); "
            f"fine-tune one with bt.tl.finetune(adata, {label!r})"
        )
    if not 0.0 <= min_confidence <= 1.0:
        raise InputError(f"min_confidence must lie in [0, 1], got {min_confidence}")
    if not 0.0 <= min_prop <= 1.0:
        raise InputError(f"min_prop must lie in [0, 1], got {min_prop}")
    check_batch_size(batch_size)
    _check_target(adata, copy)
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
    with timed(log, f"annotating {adata.n_obs:,} cells with label head {label!r}") as t:
        res = _infer(model, adata, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                     strategy=strategy, embeddings=need_emb, labels=[label],
                     max_length=max_length, batch_size=batch_size, seed=seed, layer=layer,
                     gene_symbols=gene_symbols, progress=progress)
        warn_low_coverage(res.report)
        # the fine-tuned head's expression path and temperature (see training.finetune)
        probs = calibrated_probabilities(model, label, res.label_probabilities[label], adata,
                                         res.report.column_token_ids, layer=layer)
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
        obs: dict[str, Any] = {key_added: pd.Categorical(lab, categories=cats),
                               f"{key_added}_confidence": conf,
                               f"{key_added}_raw": pd.Categorical(raw, categories=cats)}
        obsm = {f"{key_added}_probabilities": np.nan_to_num(probs).astype(np.float32)}
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
                if ok.sum() >= 2:
                    clusters[ok] = leiden_labels(knn_graph(x[ok], n_neighbors=15, seed=seed),
                                                 resolution, seed=seed)
                else:  # one cell has no neighbours: it is its own cluster (vote = its label)
                    clusters[ok] = "0"
                params.update({"over_clustering": f"leiden on {use_rep or 'model embedding'}",
                               "resolution": resolution})
            else:
                params["over_clustering"] = (over_clustering if isinstance(over_clustering, str)
                                             else "array")
            voted = majority_vote(lab, clusters, min_prop=min_prop)
            obs[f"{key_added}_over_clustering"] = pd.Categorical(clusters)
            vcats = list(dict.fromkeys([*cats, *sorted(set(voted))]))
            obs[f"{key_added}_majority_voting"] = pd.Categorical(voted, categories=vcats)
            params["min_prop"] = float(min_prop)
            t.add(f"'{key_added}_over_clustering', '{key_added}_majority_voting' (adata.obs)")
        rec = _provenance(model, params, res.report)
        rec["classes"] = np.asarray(classes.tolist(), dtype=object)
        out = _target(adata, copy)
        _commit(out, obs=obs, obsm=obsm, uns={key_added: rec})
        t.add(f"{key_added!r}, parameters, classes, model card and gene match (adata.uns)")
        n_un = int((lab == UNASSIGNED).sum())
        log.info(f"    {n_un:,} of {len(lab):,} cells Unassigned at min_confidence={min_confidence}")
    return out if copy else None
