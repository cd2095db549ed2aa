"""Which cells a model was pretrained on: fingerprints of the embedded model's pretraining cells
(real pbmc68k and Baron pancreas cells), saved with the model, and what fine-tuning does with
them."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import biomed_toolkit as bt
from biomed_toolkit.rna.seen_cells import (
    PRETRAINING_CELLS_NAME,
    cell_fingerprints,
    seen_in_pretraining,
)


@pytest.fixture(scope="module")
def model():
    return bt.rna.load(None, device="cpu")


@pytest.fixture(scope="module")
def pbmc():
    return bt.datasets.pbmc68k_counts()


def _seen(model, adata):
    rep = bt.rna.match_genes(adata, model, log_summary=False)
    return seen_in_pretraining(model, adata.X, rep.column_token_ids)


def test_fingerprints_follow_the_cell_not_the_layout():
    rng = np.random.default_rng(0)
    x = sp.random(50, 30, density=0.3, random_state=1, format="csr") * 20
    x.data = np.ceil(x.data)
    ids = np.arange(30) + 100
    ids[[3, 7]] = -1  # two genes the model does not read
    f = cell_fingerprints(x, ids)
    assert len(np.unique(f)) == 50  # distinct cells, distinct prints
    perm = rng.permutation(30)
    np.testing.assert_array_equal(cell_fingerprints(x[:, perm], ids[perm]), f)
    y = x.tolil()
    y[:, 3] = 99  # an unread gene changes nothing
    np.testing.assert_array_equal(cell_fingerprints(y.tocsr(), ids), f)
    z = x.toarray()
    j = [c for c in np.flatnonzero(z[0]) if ids[c] >= 0][0]
    z[0, j] += 1  # one more count in one cell changes only that cell
    g = cell_fingerprints(z, ids)
    assert g[0] != f[0] and np.array_equal(g[1:], f[1:])


def test_the_embedded_model_knows_its_pretraining_cells(model, pbmc):
    seen = _seen(model, pbmc)
    # exactly the "train" cells of the fixed split, none of the held-out ones
    np.testing.assert_array_equal(seen, (pbmc.obs["split"] == "train").to_numpy())
    # whatever the gene order
    assert _seen(model, pbmc[:, ::-1].copy()).sum() == seen.sum()
    # a data set it never saw
    assert not _seen(model, bt.datasets.baron_pancreas_counts()[:300].copy()).any()


def test_pretraining_cells_are_saved_with_the_model(model, pbmc, tmp_path):
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / PRETRAINING_CELLS_NAME).is_file()
    again = bt.rna.load(tmp_path / "m", device="cpu")
    np.testing.assert_array_equal(again.pretraining_cells, model.pretraining_cells)


@pytest.mark.slow
def test_finetune_does_not_cross_validate_on_memorised_cells(model, pbmc, tmp_path):
    torch.set_num_threads(1)
    y = pbmc.obs["cell_type"].astype(str)
    common = y.isin(y.value_counts().index[:4]).to_numpy()
    cells = pbmc[common & (pbmc.obs["split"] == "train").to_numpy()][:60].copy()
    ft = bt.tl.finetune(cells, "cell_type", model, max_steps=1, progress=False,
                        checkpoint_dir=tmp_path / "ckpt")
    rec = ft.recipe
    # the encoder's features of these cells are memorised: no cross-validation of its share
    assert rec["n_train_seen_in_pretraining"] == 60
    assert rec["pooler_weight"] == 0.25 and rec["pooler_weight_cv"] == {}
    # 6 validation cells could neither stop the run nor calibrate: every cell trains, and the
    # temperature comes from the probe start's out-of-fold predictions
    assert rec["n_val"] == 0 and rec["n_train"] == 60
    assert rec["temperature_source"] == "cross-validation"
    assert ft.label_extras["cell_type"].temperature == rec["temperature"] != 1.0
    # the fine-tuned model keeps the list, so it is saved with it
    np.testing.assert_array_equal(ft.pretraining_cells, model.pretraining_cells)
