"""Pretraining batches (zero exposure, MLM masking, WCED targets) and losses, trained through fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import biomed_toolkit.rna as rna
from biomed_toolkit.core.train import fit
from biomed_toolkit.rna.configuration import BmfmRnaConfig, LabelColumn
from biomed_toolkit.rna.modeling import BmfmRnaModel
from biomed_toolkit.rna.objectives import (
    CellDataset,
    PretrainingCollator,
    RnaPretrainingModule,
    focal_loss,
)
from biomed_toolkit.rna.tokenize import MASK_ID

WCED = {"wced": {"vocab_field": "genes", "logit_outputs": ["mse", "is_zero_bce"]}}


@pytest.fixture(scope="module")
def data():
    pbmc = rna.pbmc68k_counts()
    tok = rna.GeneTokenizer.from_genes(sorted(pbmc.var_names))
    rep = rna.match_genes(pbmc, tok, limit_genes=None)
    y = pbmc.obs["bulk_labels"].cat.codes.to_numpy().astype(np.int64)
    return pbmc, tok, rep, y


def test_zero_exposure_and_wced_targets(data):
    pbmc, tok, rep, y = data
    col = rep.column_token_ids
    coll = PretrainingCollator(pbmc.X, col, tok.vocab_size, max_length=400, seed=0)
    idx = [0, 1, 2, 3]
    b = coll(idx)
    X = pbmc.X[idx].toarray()
    expressed_any = set(col[np.flatnonzero(X.sum(0) > 0)])
    for r in range(4):
        L = int(b["attention_mask"][r].sum())
        ids = b["genes"][r, 1:L - 1].numpy()
        vals = b["expressions"][r, 1:L - 1].numpy()
        own = set(col[np.flatnonzero(X[r] > 0)])
        n_own = len(own)
        # expressed genes first, then zeros expressed elsewhere in the batch, then other zeros
        assert set(ids[:n_own]) == own and (vals[:n_own] > 0).all()
        assert (vals[n_own:] == 0).all() and len(set(ids)) == len(ids)
        rest = ids[n_own:]
        in_batch = np.array([g in expressed_any for g in rest])
        n_batch = len(expressed_any - own)
        assert in_batch[:n_batch].all() and not in_batch[n_batch:].any()
        assert L == 400  # filled up with zeros
        # WCED targets: the full cell, normalised over all its genes, 0 for unexpressed genes
        t = b["wced_targets"][r].numpy()
        total = X[r].sum()
        for j in np.flatnonzero(X[r] > 0)[:20]:
            assert t[col[j]] == pytest.approx(np.log1p(X[r, j] / (total + 1) * 1e4), rel=1e-6)
        assert (t[:5] == -100).all()  # specials are not genes of the record
        assert (t[col[X[r] == 0]] == 0).all()
        assert b["wced_in_input"][r].sum() == L - 2


def test_mlm_masking_rates(data):
    pbmc, tok, rep, _ = data
    coll = PretrainingCollator(pbmc.X, rep.column_token_ids, tok.vocab_size, max_length=256,
                               mlm=True, wced=False, seed=1)
    b = coll(list(range(64)))
    gt, et = b["mlm_gene_targets"], b["mlm_expression_targets"]
    mask = b["attention_mask"]
    eligible = mask.clone()
    eligible[:, 0] = False
    eligible[torch.arange(64), mask.sum(1) - 1] = False
    for tgt, stream, mval in ((gt, b["genes"], MASK_ID), (et, b["expressions"], -5.0)):
        chosen = tgt != -100
        assert not (chosen & ~eligible).any()  # CLS, SEP and PAD are never chosen
        rate = chosen.sum().item() / eligible.sum().item()
        assert 0.13 < rate < 0.17
        masked = (stream == mval) & chosen
        assert 0.92 < masked.sum().item() / chosen.sum().item() < 0.98
    # the two fields are chosen independently
    both = ((gt != -100) & (et != -100)).sum().item() / eligible.sum().item()
    assert 0.01 < both < 0.04


def test_focal_loss_reduces_to_cross_entropy():
    logits = torch.randn(8, 5)
    y = torch.tensor([0, 1, 2, 3, 4, 0, -100, 2])
    ce = torch.nn.functional.cross_entropy(logits, y, ignore_index=-100)
    assert torch.allclose(focal_loss(logits, y, gamma=0.0), ce)
    assert focal_loss(logits, y, gamma=2.0) < ce


@pytest.mark.slow
@pytest.mark.parametrize("objectives,decode", [
    (("wced", "labels"), {"expressions": WCED}),
    (("mlm",), {"genes": {"token_scores": {}}, "expressions": {"regression": {}, "is_zero": {}}}),
])
def test_training_reduces_loss_through_fit(data, tmp_path, objectives, decode):
    pbmc, tok, rep, y = data
    torch.manual_seed(0)
    cfg = BmfmRnaConfig.v1(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, decode_modes=decode,
                           label_columns=[LabelColumn("cell_type", int(y.max()) + 1)])
    model = BmfmRnaModel(cfg)
    n = 96
    coll = PretrainingCollator(pbmc.X[:n], rep.column_token_ids, tok.vocab_size, max_length=96,
                               labels={"cell_type": y[:n]}, mlm="mlm" in objectives,
                               wced="wced" in objectives, seed=0)
    loader = torch.utils.data.DataLoader(CellDataset(n), batch_size=32, shuffle=True,
                                         collate_fn=coll, generator=torch.Generator().manual_seed(0))
    module = RnaPretrainingModule(model, objectives=objectives, learning_rate=3e-3, warmup_steps=1)
    fixed = coll(list(range(32)))
    with torch.no_grad():
        before = module.losses(fixed)
    res = fit(module, loader, max_epochs=4, accelerator="cpu", devices=1, progress=False,
              checkpoint_dir=tmp_path / "ck", every_n_steps=10**6, seed=0, log_every_n_steps=1)
    model.eval()
    with torch.no_grad():
        after = module.losses(fixed)
    assert after["loss"] < 0.9 * before["loss"]
    assert "train_loss" in res.history.columns
    if "mlm" in objectives:
        assert {"mlm_genes_ce", "mlm_expressions_mse", "mlm_expressions_is_zero_bce"} <= set(after)
    else:
        assert {"wced_mse_input", "wced_bce_non_input", "cell_type_focal"} <= set(after)


def test_objective_needs_matching_heads(data):
    _, tok, _, _ = data
    cfg = BmfmRnaConfig.v1(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32)
    with pytest.raises(ValueError, match="wced"):
        RnaPretrainingModule(BmfmRnaModel(cfg), objectives=("wced",))
