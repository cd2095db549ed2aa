"""bt.tl.embed streams backed (on-disk) AnnData: same result as in memory, never loads X whole.

Data: 3,000 cells resampled from the real pbmc68k_reduced counts (binomial thinning so cells
differ), written to h5ad and reopened with ``backed="r"``; model: the embedded demo.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import biomed_toolkit as bt
from biomed_toolkit.rna import inference

N_CELLS = 3000
MAX_LENGTH = 64  # keeps the test fast; streaming does not depend on it


@pytest.fixture(scope="module")
def backed_path(tmp_path_factory):
    from biomed_toolkit.rna.datasets import pbmc68k_counts

    src = pbmc68k_counts()
    rng = np.random.default_rng(0)
    rows = src.X[rng.integers(0, src.n_obs, N_CELLS)].tocsr()
    rows.data = rng.binomial(rows.data.astype(np.int64), 0.8).astype(np.float32)
    rows.eliminate_zeros()
    a = ad.AnnData(X=rows, var=src.var[[]].copy())
    a.obs_names = [f"c{i}" for i in range(N_CELLS)]
    path = tmp_path_factory.mktemp("backed") / "cells.h5ad"
    a.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return bt.rna.load()


def test_backed_embed_streams_and_equals_in_memory(backed_path, model, monkeypatch):
    from biomed_toolkit.rna.tasks import embed

    mem = ad.read_h5ad(backed_path)
    embed(mem, model, max_length=MAX_LENGTH, progress=False)

    blocks: list[tuple[int, int, bool]] = []
    real_iter = inference.iter_csr_chunks

    def spy(adata, **kw):
        for off, csr in real_iter(adata, **kw):
            blocks.append((off, csr.shape[0], sp.issparse(csr)))
            yield off, csr

    def no_to_memory(self, *a, **k):
        raise AssertionError("embed loaded the backed AnnData into memory")

    monkeypatch.setattr(inference, "iter_csr_chunks", spy)
    monkeypatch.setattr(ad.AnnData, "to_memory", no_to_memory)
    backed = ad.read_h5ad(backed_path, backed="r")
    try:
        embed(backed, model, max_length=MAX_LENGTH, progress=False)
        # still on disk: file open, X never materialised as an in-memory matrix
        assert backed.isbacked and backed.file.is_open
        assert backed._X is None
        assert not isinstance(backed.X, (np.ndarray, sp.spmatrix, sp.sparray))
        got = backed.obsm["X_bmfm"]
    finally:
        backed.file.close()
    # read in bounded row blocks covering every cell once, in order
    assert [b[0] for b in blocks] == list(range(0, N_CELLS, 2048))
    assert max(b[1] for b in blocks) < N_CELLS and sum(b[1] for b in blocks) == N_CELLS
    want = mem.obsm["X_bmfm"]
    assert got.shape == (N_CELLS, model.config.hidden_size) and got.dtype == np.float32
    assert not np.isnan(want).any()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert backed.uns["X_bmfm"]["params"]["n_cells"] == N_CELLS
