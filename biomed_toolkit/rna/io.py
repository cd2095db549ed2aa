"""Reading count matrices from AnnData (in memory or backed) in CSR row chunks, with checks.

Every tool of ``bt.rna`` that reads counts goes through :func:`iter_csr_chunks` so that backed
AnnData, dense arrays and CSC matrices all behave the same, and so that count validation
(:func:`check_counts`) happens in exactly one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import scipy.sparse as sp

from biomed_toolkit.core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import h5py
    from anndata import AnnData
    from anndata.abc import CSCDataset, CSRDataset

    #: A cells x genes count matrix: dense, scipy sparse, or a backed AnnData dataset.
    CountMatrix: TypeAlias = np.ndarray | sp.spmatrix | sp.sparray | h5py.Dataset | CSRDataset | CSCDataset
    #: AnnData (in memory or backed) or a bare count matrix.
    CountData: TypeAlias = AnnData | CountMatrix

__all__ = ["check_counts", "get_matrix", "iter_csr_chunks", "n_rows", "row_block", "to_csr"]


def get_matrix(adata: CountData, layer: str | None = None) -> CountMatrix:
    """The matrix holding counts: ``adata.layers[layer]`` or ``adata.X``.

    A bare matrix (numpy array or scipy sparse) is returned unchanged.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> get_matrix(anndata.AnnData(np.ones((2, 3), dtype="float32"))).shape
    (2, 3)
    """
    if not hasattr(adata, "obs_names"):
        if layer is not None:
            raise InputError("layer= needs an AnnData; a bare matrix was given")
        return adata
    if layer is None:
        if adata.X is None:
            raise InputError("adata.X is empty: put raw counts in adata.X or pass layer='counts'")
        return adata.X
    if layer not in adata.layers:
        raise InputError(
            f"layer {layer!r} not found in adata.layers (available: {list(adata.layers.keys())})"
        )
    return adata.layers[layer]


def n_rows(matrix: CountMatrix) -> int:
    """Number of rows of a matrix-like object (also backed datasets)."""
    return int(matrix.shape[0])


def to_csr(block: CountMatrix, *, where: str = "the count matrix") -> sp.csr_matrix:
    """A CSR matrix with sorted indices for a block read from any matrix-like object.

    Never modifies ``block``: a copy is made when indices need sorting. float16 values (which
    scipy.sparse cannot hold) are cast to float32, exactly; an object array is cast to float64
    when every value is a number.

    Raises
    ------
    InputError
        For an array that is not 2-D, or an object array with non-numeric values (named by
        ``where``).
    """
    if sp.issparse(block):
        csr = block.tocsr() if block.format != "csr" else block
        if not csr.has_sorted_indices:
            csr = csr.copy()
            csr.sort_indices()
        return csr
    arr = np.asarray(block)
    if arr.ndim != 2:
        raise InputError(f"expected a 2-D cells x genes matrix, got shape {arr.shape}")
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)  # every float16 value is exact in float32
    elif arr.dtype.kind in "OUS":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"{where} has dtype {arr.dtype} with values that are not numbers ({exc}); "
                "BMFM-RNA needs raw counts: store them as numbers, e.g. "
                "adata.X = adata.X.astype('float32') after fixing the non-numeric entries"
            ) from None
    return sp.csr_matrix(arr)


def check_counts(
    data: np.ndarray, *, allow_non_integer: bool = False, where: str = "adata.X"
) -> None:
    """Raise :class:`InputError` unless ``data`` (stored values) looks like raw counts.

    Booleans and other non-number dtypes are always rejected (True/False are not counts),
    NaN/inf are always rejected, negative values always rejected, non-integers rejected unless
    ``allow_non_integer=True`` (for counts-like data such as rounded TPM or ambient-corrected
    counts).

    Examples
    --------
    >>> check_counts(np.array([1.0, 3.0]))
    >>> check_counts(np.array([0.5]), allow_non_integer=True)
    """
    if data.dtype.kind == "b":
        raise InputError(
            f"{where} holds booleans (True/False), not counts: BMFM-RNA needs raw counts. Pass the "
            "counts layer (layer='counts' or adata.raw.to_adata()), or cast with "
            "adata.X = adata.X.astype('float32') if the values really are 0/1 counts"
        )
    if data.dtype.kind not in "iuf":
        raise InputError(
            f"{where} has dtype {data.dtype}, not a number type: BMFM-RNA needs raw counts stored "
            "as integers or floats (e.g. adata.X = adata.X.astype('float32'))"
        )
    if data.size == 0:
        return
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            bad = data[~finite][0]
            raise InputError(
                f"{where} contains {int((~finite).sum())} non-finite value(s) (e.g. {bad}); "
                "BMFM-RNA needs raw counts: replace NaN/inf (e.g. with 0) or fix the upstream step"
            )
    if data.dtype.kind in "iuf" and (data < 0).any():
        raise InputError(
            f"{where} contains negative values (min {data.min()}): BMFM-RNA needs raw counts, "
            "not scaled/centred data; use the raw counts layer (layer='counts') or adata.raw"
        )
    if data.dtype.kind == "f" and not allow_non_integer:
        frac = data != np.floor(data)
        if frac.any():
            raise InputError(
                f"{where} contains non-integer values (e.g. {data[frac][0]:.4g}); BMFM-RNA "
                "normalises raw counts itself. Pass the raw counts (layer='counts' or "
                "adata.raw.to_adata()), or allow_non_integer=True for counts-like data such as "
                "rounded TPM"
            )


def iter_csr_chunks(
    adata: CountData,
    *,
    layer: str | None = None,
    chunk_size: int = 4096,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Yield ``(row_offset, csr_block)`` over the rows of the count matrix.

    Works on in-memory and backed AnnData (only ``chunk_size`` rows are in memory at once),
    dense arrays, CSR and CSC matrices.

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> [off for off, _ in iter_csr_chunks(sp.random(10, 4, format="csr"), chunk_size=4)]
    [0, 4, 8]
    """
    matrix = get_matrix(adata, layer)
    total = n_rows(matrix)
    stop = total if stop is None else min(stop, total)
    if sp.issparse(matrix) and matrix.format == "csc":
        # row slicing CSC is quadratic; convert once (in-memory only)
        matrix = matrix.tocsr()
    fast = sp.issparse(matrix) and matrix.format == "csr" and matrix.has_sorted_indices
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    for lo in range(start, stop, max(1, int(chunk_size))):
        hi = min(lo + int(chunk_size), stop)
        yield lo, (row_block(matrix, lo, hi) if fast else to_csr(matrix[lo:hi], where=where))


def row_block(csr: sp.csr_matrix, lo: int, hi: int) -> sp.csr_matrix:
    """Rows ``lo:hi`` of an in-memory CSR matrix without copying ``data``/``indices`` (views).

    The result must be treated as read-only.
    """
    a, b = int(csr.indptr[lo]), int(csr.indptr[hi])
    out = sp.csr_matrix((hi - lo, csr.shape[1]), dtype=csr.dtype)
    out.data = csr.data[a:b]
    out.indices = csr.indices[a:b]
    out.indptr = (csr.indptr[lo:hi + 1] - a).astype(csr.indptr.dtype, copy=False)
    out.has_sorted_indices = True
    return out
