"""Real single-cell count data available offline (shipped inside scanpy and celltypist)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biomed_toolkit.core.errors import InputError

__all__ = ["celltypist_sample", "pbmc68k_counts"]


def pbmc68k_counts() -> Any:
    """scanpy's ``pbmc68k_reduced`` with raw counts reconstructed (700 cells x 765 genes).

    ``adata.raw.X`` there holds ``log1p(count / n_counts * 1e4)``; counts are recovered as
    ``round(expm1(raw.X) * n_counts / 1e4)``. Only the 765 genes of ``raw`` exist, so these are
    the counts of those genes (not whole transcriptomes). ``obs`` (``bulk_labels``, ``louvain``,
    ...) and ``obsm`` (``X_pca``, ``X_umap``) are kept.

    Returns
    -------
    AnnData with CSR float32 integer counts in ``X`` and ``layers["counts"]``.

    Examples
    --------
    >>> import biomed_toolkit as bt
    >>> adata = bt.rna.pbmc68k_counts()  # doctest: +SKIP
    >>> adata.shape  # doctest: +SKIP
    (700, 765)
    """
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    src = sc.datasets.pbmc68k_reduced()
    raw = src.raw.X
    raw = raw.toarray() if sp.issparse(raw) else np.asarray(raw)
    n_counts = src.obs["n_counts"].to_numpy(dtype=np.float64)[:, None]
    counts = np.round(np.expm1(raw.astype(np.float64)) * n_counts / 1e4).astype(np.float32)
    X = sp.csr_matrix(counts)
    out = ad.AnnData(X=X, obs=src.obs.copy(), var=src.raw.var.copy())
    out.var_names = src.raw.var_names.astype(str)
    for key in ("X_pca", "X_umap"):
        if key in src.obsm:
            out.obsm[key] = np.asarray(src.obsm[key])
    out.layers["counts"] = X.copy()
    out.uns["source"] = ("scanpy.datasets.pbmc68k_reduced, counts = round(expm1(raw.X) * "
                         "n_counts / 1e4)")
    return out


def _celltypist_sample_path() -> Path:
    try:
        import celltypist
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("celltypist_sample() needs the celltypist package (pip install celltypist)") from exc
    path = Path(celltypist.__file__).resolve().parent / "data" / "samples" / "sample_cell_by_gene.csv"
    if not path.is_file():
        raise InputError(f"celltypist's sample file is missing: {path}")
    return path


def celltypist_sample() -> Any:
    """celltypist's raw-count demo sample (cells x genes, 10x-style gene symbols), unlabeled.

    Returns
    -------
    AnnData with CSR float32 counts in ``X`` and ``layers["counts"]``.

    Examples
    --------
    >>> adata = bt.rna.celltypist_sample()  # doctest: +SKIP
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    df = pd.read_csv(_celltypist_sample_path(), index_col=0)
    X = sp.csr_matrix(df.to_numpy(dtype=np.float32))
    out = ad.AnnData(X=X, obs=pd.DataFrame(index=df.index.astype(str)),
                     var=pd.DataFrame(index=df.columns.astype(str)))
    out.var_names_make_unique()
    out.layers["counts"] = X.copy()
    out.uns["source"] = "celltypist/data/samples/sample_cell_by_gene.csv"
    return out
