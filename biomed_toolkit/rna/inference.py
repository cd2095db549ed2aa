"""Streaming BMFM-RNA inference: cell embeddings and label predictions.

Only the encoder (+ pooler and label heads when asked) runs: no WCED/MLM decoder, which is where
the official inference spends its time and memory. Rows are read in chunks (backed AnnData
works), encoded with the vectorised tokenizer, and batched by padded length so that a cell's
padding, and hence its embedding, depends only on the cell itself: results do not change with
chunk size, batch size or row order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.core.log import get_logger, timed

from .configuration import Pooling
from .io import check_counts, get_matrix, iter_csr_chunks
from .tokenize import GeneMatchReport, _CoverageAccumulator, encode_csr, match_genes

if TYPE_CHECKING:  # pragma: no cover
    from .modeling import BmfmRnaModel

__all__ = ["InferenceResult", "embed_cells", "predict_labels", "run_inference"]

log = get_logger(__name__)

_POOLINGS: tuple[str, ...] = Pooling.__args__
# attention scores kept under this many bytes per batch (B * heads * L * L * 4)
_ATTN_BUDGET = 192 * 2**20
_TOKEN_BUDGET = 16384
_BUCKET = 32


@dataclass
class InferenceResult:
    """What :func:`run_inference` computed.

    Attributes
    ----------
    embeddings
        (n_cells, H) float32 or None; NaN rows for empty cells.
    label_probabilities
        {label: (n_cells, n_classes) float32 softmax}; NaN rows for empty cells.
    label_names
        {label: class names in column order}.
    report
        The :class:`GeneMatchReport` (with counts coverage and empty cells filled in).
    empty
        (n_cells,) bool: cells with no counts on matched genes.
    pooling
        The pooling used for ``embeddings``.
    """

    embeddings: np.ndarray | None
    label_probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    label_names: dict[str, list[str]] = field(default_factory=dict)
    report: GeneMatchReport | None = None
    empty: np.ndarray | None = None
    pooling: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _resolve_pooling(model: BmfmRnaModel, pooling: str) -> str:
    if pooling == "auto":
        pooling = getattr(model, "pooling", None) or model.config.pooling
    if pooling in ("pooling_layer",):
        pooling = "pooler"
    if pooling not in _POOLINGS:
        raise InputError(f"pooling must be 'auto' or one of {_POOLINGS}, got {pooling!r}")
    if pooling == "pooler" and model.backbone.pooler is None:
        raise InputError("this model has no pooler: use pooling='first_token' or 'mean'")
    return pooling


#: ``max_length`` of models that do not say which length they were trained with
DEFAULT_MAX_LENGTH = 1024


def default_max_length(model: BmfmRnaModel, max_length: int | None) -> int:
    """``max_length`` as given, else the model's training length (``config.max_length``), else 1024.

    Examples
    --------
    >>> default_max_length(model, None)  # doctest: +SKIP
    256
    """
    if max_length is not None:
        return max_length
    return getattr(model.config, "max_length", None) or DEFAULT_MAX_LENGTH


def check_batch_size(batch_size: int | str, *, allow_auto: bool = True) -> int | str:
    """``batch_size`` as given when it is a positive int (or ``"auto"`` where allowed).

    Raises
    ------
    InputError
        For a bool, a float, zero, a negative number or any other string: these would give
        NaN outputs (-1) or a raw ``range()`` / ``int()`` error deep inside inference.
    """
    if allow_auto and isinstance(batch_size, str) and batch_size == "auto":
        return batch_size
    ok = isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, (bool, np.bool_))
    if not ok or int(batch_size) < 1:
        allowed = "a positive integer or 'auto'" if allow_auto else "a positive integer"
        raise InputError(
            f"batch_size must be {allowed} (cells per forward pass), got {batch_size!r}; "
            f"e.g. batch_size=32" + (" or leave the default 'auto'" if allow_auto else "")
        )
    return int(batch_size)


def _check_positive_int(value: int, name: str, minimum: int = 1) -> None:
    """Refuse a non-integer or too small ``name`` option before any cell is read."""
    from biomed_toolkit.core.validation import check_int

    check_int(value, name, where="bt.rna", minimum=minimum)


def _plan_batches(lengths: np.ndarray, max_length: int, batch_size: int | str, n_heads: int) -> list[tuple[int, np.ndarray]]:
    """Group cells by padded length (a function of the cell only) into batches."""
    padded = np.minimum(((lengths + _BUCKET - 1) // _BUCKET) * _BUCKET, max_length)
    order = np.argsort(padded, kind="stable")
    out: list[tuple[int, np.ndarray]] = []
    for width in np.unique(padded):
        idx = order[padded[order] == width]
        if batch_size == "auto":
            per = max(1, min(_TOKEN_BUDGET // int(width),
                             _ATTN_BUDGET // (4 * n_heads * int(width) ** 2)))
        else:
            per = int(batch_size)
        for s in range(0, len(idx), per):
            out.append((int(width), idx[s:s + per]))
    return out


def run_inference(
    model: BmfmRnaModel,
    adata: Any,
    *,
    embeddings: bool = True,
    labels: Any = False,
    pooling: str = "auto",
    max_length: int | None = None,
    batch_size: int | str = "auto",
    order: str = "official",
    seed: int = 0,
    gene_symbols: str | None = None,
    layer: str | None = None,
    limit_genes: str | None = "protein_coding",
    allow_non_integer: bool = False,
    chunk_size: int = 2048,
    progress: bool = True,
    match: GeneMatchReport | None = None,
    row_offset: int = 0,
) -> InferenceResult:
    """Embed cells and/or predict labels in one streaming pass (encoder only).

    Parameters
    ----------
    model
        A loaded BMFM-RNA model (:func:`biomed_toolkit.rna.load`).
    adata
        AnnData with raw counts (in memory or backed).
    embeddings
        Return cell embeddings.
    labels
        ``False`` (none), ``True`` (every label head without gradient reversal; adversarial heads
        such as donor_id are skipped, as in the official inference) or a list of label names.
    pooling
        ``"auto"`` (the model's default: ``"first_token"`` for WCED checkpoints, ``"pooler"`` for
        MLM ones), ``"first_token"`` (raw CLS state), ``"pooler"`` (tanh pooler) or ``"mean"``.
    max_length
        Tokens per cell incl. CLS/SEP; cells with more expressed genes are truncated. Default:
        the length the model was trained with (``model.config.max_length``), else 1024.
    batch_size
        Cells per forward pass, or ``"auto"`` (memory-bounded, by padded length).
    order, seed
        Gene order (see :func:`biomed_toolkit.rna.encode_cells`); only affects truncated cells.
    gene_symbols, layer, limit_genes, allow_non_integer
        See :func:`biomed_toolkit.rna.match_genes` and :func:`biomed_toolkit.rna.encode_cells`.
    chunk_size
        Rows read from ``adata`` at a time.
    progress
        Show a progress bar (also subject to ``bt.settings.progress``).
    match
        A precomputed gene match (skips matching).
    row_offset
        Global row index of ``adata``'s first row, when ``adata`` is a slice of a larger
        dataset (keeps ``order="random"`` identical to a run over the whole dataset).

    Returns
    -------
    InferenceResult
    """
    import torch

    from biomed_toolkit.core.progress import progress as pbar

    batch_size = check_batch_size(batch_size)
    max_length = default_max_length(model, max_length)
    # CLS + SEP + at least one gene
    _check_positive_int(max_length, "max_length", minimum=3)
    _check_positive_int(chunk_size, "chunk_size")
    cfg = model.config
    pooling = _resolve_pooling(model, pooling) if embeddings else None
    if labels is True:
        label_list = [c.name for c in cfg.label_columns if c.gradient_reversal_coefficient is None]
    elif labels is False or labels is None:
        label_list = []
    else:
        label_list = [labels] if isinstance(labels, str) else list(labels)
        known = cfg.label_names
        bad = [x for x in label_list if x not in known]
        if bad:
            raise InputError(f"model has no label head {bad}; heads: {known}")
    if labels is not False and labels is not None and not label_list:
        raise InputError("this model has no (non-adversarial) label heads to predict")
    if match is None:
        match = match_genes(adata, model, gene_symbols=gene_symbols, limit_genes=limit_genes,
                            compute_coverage=False, log_summary=False)
    matrix = get_matrix(adata, layer)
    n = int(matrix.shape[0])
    if matrix.shape[1] != len(match.column_token_ids):
        raise InputError(f"data has {matrix.shape[1]} genes, the gene match {len(match.column_token_ids)}")
    tok = model.tokenizer
    cls_ids = tok.cls_token_ids(cfg.n_cls_tokens)
    hidden = cfg.hidden_size
    emb = np.full((n, hidden), np.nan, dtype=np.float32) if embeddings else None
    probs = {lab: np.full((n, model.config.label_columns[cfg.label_names.index(lab)].n_classes),
                          np.nan, dtype=np.float32) for lab in label_list}
    empty = np.zeros(n, dtype=bool)
    acc = _CoverageAccumulator(match.column_token_ids)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    device = model.device
    was_training = model.training
    model.eval()
    name = getattr(getattr(model, "card", None), "name", "BMFM-RNA")
    with timed(log, f"running {name} on {n:,} cells"), torch.inference_mode():
        bar = pbar(total=n, desc="cells", enabled=None if progress else False)
        for off, csr in iter_csr_chunks(adata, layer=layer, chunk_size=chunk_size):
            check_counts(csr.data, allow_non_integer=allow_non_integer, where=where)
            acc.add(off, csr)
            enc = encode_csr(csr, match.column_token_ids, max_length=max_length, order=order,
                             seed=seed, cell_offset=row_offset + off, cls_ids=cls_ids, padding="longest",
                             pad_to_multiple_of=_BUCKET)
            empty[off:off + len(enc)] = enc.empty
            for width, idx in _plan_batches(enc.lengths, max_length, batch_size, cfg.num_attention_heads):
                idx = idx[~enc.empty[idx]]
                if len(idx) == 0:
                    continue
                g = torch.from_numpy(enc.genes[idx, :width]).to(device)
                x = torch.from_numpy(enc.expressions[idx, :width]).to(device)
                m = torch.from_numpy(enc.attention_mask[idx, :width]).to(device)
                h, _ = model.encode(g, x, m)
                rows = off + idx
                pooled = model.pool(h) if (label_list or pooling == "pooler") else None
                if emb is not None:
                    if pooling == "first_token":
                        v = h[:, 0]
                    elif pooling == "pooler":
                        v = pooled
                    else:
                        mm = m[:, 1:].unsqueeze(-1).to(h.dtype)
                        v = (h[:, 1:] * mm).sum(1) / mm.sum(1).clamp(min=1.0)
                    emb[rows] = v.float().cpu().numpy()
                if label_list:
                    logits = model.classify(h, label_list, pooler_output=pooled)
                    for lab, lg in logits.items():
                        probs[lab][rows] = torch.softmax(lg.float(), dim=-1).cpu().numpy()
            bar.update(len(enc))
        bar.close()
    if was_training:
        model.train()
    acc.finish(match, adata)
    log.info(match.summary())
    if empty.any():
        names = match.empty_cells or []
        log.warning(
            f"{int(empty.sum())} cells have no counts on matched genes and got NaN outputs "
            f"(e.g. {names[:5]}); filter them or check the gene match")
    return InferenceResult(
        embeddings=emb, label_probabilities=probs,
        label_names={lab: model.label_names(lab) for lab in label_list}, report=match,
        empty=empty, pooling=pooling,
        params={"max_length": max_length, "order": order, "seed": seed, "pooling": pooling,
                "limit_genes": limit_genes, "layer": layer, "gene_symbols": gene_symbols},
    )


def embed_cells(
    model: BmfmRnaModel,
    adata: Any,
    *,
    pooling: str = "auto",
    max_length: int | None = None,
    batch_size: int | str = "auto",
    seed: int = 0,
    progress: bool = True,
    **kwargs: Any,
) -> tuple[np.ndarray, GeneMatchReport]:
    """Cell embeddings from the encoder only (no decoder), streamed over row chunks.

    Deterministic and chunk-invariant. Empty cells get NaN rows (and a warning).

    Parameters
    ----------
    model
        A loaded BMFM-RNA model.
    adata
        AnnData with raw counts (in memory or backed).
    pooling
        ``"auto"``, ``"first_token"``, ``"pooler"`` or ``"mean"``.
    max_length, batch_size, seed, progress
        See :func:`run_inference`.
    **kwargs
        ``order``, ``gene_symbols``, ``layer``, ``limit_genes``, ``allow_non_integer``,
        ``chunk_size``, ``match`` (see :func:`run_inference`).

    Returns
    -------
    embeddings
        (n_cells, hidden) float32.
    report
        :class:`GeneMatchReport` incl. coverage and empty cells.

    Examples
    --------
    >>> import biomed_toolkit as bt
    >>> model = bt.rna.load()  # doctest: +SKIP
    >>> X, report = bt.rna.embed_cells(model, adata)  # doctest: +SKIP
    """
    res = run_inference(model, adata, embeddings=True, labels=False, pooling=pooling,
                        max_length=max_length, batch_size=batch_size, seed=seed,
                        progress=progress, **kwargs)
    assert res.embeddings is not None and res.report is not None
    return res.embeddings, res.report


def predict_labels(
    model: BmfmRnaModel,
    adata: Any,
    *,
    labels: Any = True,
    max_length: int | None = None,
    batch_size: int | str = "auto",
    seed: int = 0,
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Class probabilities of the model's label heads (encoder + pooler + heads only).

    Parameters
    ----------
    labels
        ``True`` for every non-adversarial head (e.g. cell_type, tissue; donor_id with gradient
        reversal is skipped), or a list of label names.

    Returns
    -------
    dict
        ``{label: (probabilities (n_cells, n_classes) float32, class names)}``; NaN rows for
        empty cells.

    Examples
    --------
    >>> out = bt.rna.predict_labels(model, adata)  # doctest: +SKIP
    >>> probs, names = out["cell_type"]  # doctest: +SKIP
    """
    res = run_inference(model, adata, embeddings=False, labels=labels, max_length=max_length,
                        batch_size=batch_size, seed=seed, progress=progress, **kwargs)
    return {lab: (res.label_probabilities[lab], res.label_names[lab]) for lab in res.label_probabilities}
