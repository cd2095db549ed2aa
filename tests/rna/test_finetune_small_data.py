"""The small-data fine-tuning case of issue #12: ~100 training cells, 6 classes, a 10-cell
validation split, every other option at its default (real pbmc68k cells, held-out cells scored)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomed_toolkit.rna import tasks
from biomed_toolkit.rna.metrics import classification_metrics, expected_calibration_error
from biomed_toolkit.rna.training import (
    MIN_CELLS_TO_VALIDATE,
    MIN_VAL_CELLS,
    plan_recipe,
    validation_split,
)

from .helpers import fresh_model

TYPES = ["CD14+ Monocyte", "CD19+ B", "CD4+/CD25 T Reg", "CD8+ Cytotoxic T", "CD56+ NK",
         "Dendritic"]


@pytest.fixture(scope="module")
def split():
    from biomed_toolkit.rna.datasets import pbmc68k_counts

    counts = pbmc68k_counts()
    counts = counts[counts.obs["bulk_labels"].isin(TYPES).to_numpy()].copy()
    y = counts.obs["bulk_labels"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    train = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == t), 17, replace=False)
                                    for t in TYPES]))  # 102 cells: 92 train + 10 validation
    test = np.setdiff1d(np.arange(len(y)), train)
    return counts[train].copy(), counts[test].copy()


def test_recipe_budget_does_not_depend_on_data_size():
    small = plan_recipe(98, 10, 6, batch_size=32)
    assert small.steps >= 300 and not small.early_stopping and "too few" in small.reason
    big = plan_recipe(90_000, 10_000, 100, batch_size=32)
    assert big.early_stopping and big.min_steps == 300 and big.steps == 5000
    assert plan_recipe(98, MIN_VAL_CELLS, 6, batch_size=32).early_stopping
    # an explicit budget is honoured
    assert plan_recipe(98, 10, 6, batch_size=32, max_epochs=2).steps == 2 * 4


@pytest.mark.slow
def test_small_data_finetune_learns_with_defaults(split, tmp_path):
    train, test = split
    torch.set_num_threads(1)
    # a random encoder: what the model learns here comes from the recipe, not from pretraining
    base = fresh_model(train.var_names)
    # a 10-cell validation split (by default 10 cells would train: too few to stop or calibrate on)
    model = tasks.finetune(train, "bulk_labels", base, max_length=256, val_fraction=0.1,
                           checkpoint_dir=tmp_path / "ckpt", enable_progress_bar=False)
    rec = model.history.attrs["recipe"]
    assert rec["n_val"] == 10 and rec["n_train"] == 92
    # early stopping did not end the run after a handful of steps: the full budget ran
    assert not rec["early_stopping"] and rec["global_step"] == rec["steps"] >= 300
    # 10 validation cells are too few to fit a temperature on: it comes from the probe start's
    # out-of-fold predictions of the training cells
    assert not rec["temperature_fitted"] and rec["temperature_source"] == "cross-validation"
    assert rec["temperature"] != 1.0
    # the probe start's share of pooler features was cross-validated; the head keeps its probe
    # weights and the encoder beneath it is what trains
    assert set(rec["pooler_weight_cv"]) == {"0.0", "0.25", "0.5", "1.0"}
    assert rec["pooler_weight"] in (0.0, 0.25, 0.5, 1.0) and rec["head_learning_rate"] == 0.0
    moved = [k for k, v in base.state_dict().items()
             if "label_decoders" not in k and v.is_floating_point()
             and not torch.equal(v, model.state_dict()[k])]
    assert len(moved) > 10, moved
    tasks.annotate(test, model, label="bulk_labels", min_confidence=0.0, max_length=256,
                   progress=False)
    pred = test.obs["bmfm_cell_type"].astype(str).to_numpy()
    truth = test.obs["bulk_labels"].astype(str).to_numpy()
    m = classification_metrics(truth, pred)
    assert m["macro_f1"] > 0.5, m  # chance is ~0.17 for 6 classes
    assert len(set(pred)) >= 5
    probs = test.obsm["bmfm_cell_type_probabilities"]
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    conf = probs.max(axis=1)
    assert expected_calibration_error(conf, pred == truth) < 0.15
    # the expression path and the temperature are saved with the model
    model.save_pretrained(tmp_path / "ft")
    import biomed_toolkit as bt

    again = bt.rna.load(tmp_path / "ft", device="cpu")
    assert again.label_extras["bulk_labels"].temperature == pytest.approx(rec["temperature"])
    out = tasks.annotate(test, again, label="bulk_labels", min_confidence=0.0, max_length=256,
                         progress=False, copy=True)
    np.testing.assert_allclose(out.obsm["bmfm_cell_type_probabilities"], probs, atol=1e-5)


def test_rare_types_give_no_cells_to_validation():
    """Baron's pancreas pool has types of 1, 3 and 6 cells: a 10% validation split drawn over every
    cell took one of them away from training on some seeds (held-out macro-F1 0.85 against 0.93)."""
    from biomed_toolkit.rna.datasets import pbmc68k_counts
    from biomed_toolkit.rna.training import label_codes

    counts = pbmc68k_counts()
    codes, classes = label_codes(counts, "bulk_labels", "label_key")
    per_class = np.bincount(codes)
    rare = np.flatnonzero(per_class < MIN_CELLS_TO_VALIDATE)
    assert len(rare) and (per_class >= MIN_CELLS_TO_VALIDATE).sum() >= 2  # real rare types
    labelled = np.arange(len(codes))
    for seed in (0, 1, 2):
        tr, va = validation_split(codes, labelled, 70, seed=seed)
        assert len(va) == 70 and len(np.intersect1d(tr, va)) == 0
        assert np.array_equal(np.sort(np.r_[tr, va]), labelled)
        assert not np.isin(codes[va], rare).any()
        assert np.isin(np.flatnonzero(np.isin(codes, rare)), tr).all()
        # stratified over the other types: each within one cell of its share
        common = per_class >= MIN_CELLS_TO_VALIDATE
        share = per_class[common] / per_class[common].sum() * 70
        assert np.all(np.abs(np.bincount(codes[va], minlength=len(classes))[common] - share) <= 1)
    # no validation asked: every cell trains
    tr, va = validation_split(codes, labelled, 0)
    assert len(va) == 0 and np.array_equal(tr, labelled)
