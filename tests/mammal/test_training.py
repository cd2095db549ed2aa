"""Fine-tuning through bt.train.fit: scalar regression, generation classification, LoRA."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from biomed_toolkit.core.errors import CheckpointError, InputError
from biomed_toolkit.mammal import MammalConfig, MammalModel, finetune, load, predict


@pytest.fixture()
def small_model(official_tokenizer):
    torch.manual_seed(0)
    cfg = MammalConfig.from_dict({"t5_config": {"vocab_size": 3600, "d_model": 32, "d_ff": 64, "d_kv": 8,
                                                "num_heads": 4, "num_layers": 1, "num_decoder_layers": 1,
                                                "dropout_rate": 0.0},
                                  "encoder_head_layers": [16], "encoder_head_dropout": 0.0})
    return MammalModel(cfg, official_tokenizer).eval()


@pytest.fixture(scope="module")
def solubility_rows():
    from biomed_toolkit.mammal import esol

    df = esol()
    return df.iloc[:48].reset_index(drop=True)


@pytest.mark.slow
def test_finetune_regression_learns_and_records_normalisation(small_model, solubility_rows, tmp_path):
    before = predict(small_model, "solubility", solubility_rows, progress=False)
    res = finetune(small_model, "solubility", solubility_rows, solubility_rows.iloc[:16], target="logS",
                   max_epochs=8, batch_size=16, learning_rate=3e-3, checkpoint_dir=tmp_path, progress=False, seed=0)
    assert res is not small_model and "solubility" not in small_model.config.normalization  # a new model
    assert {"train_loss", "val_loss", "val_rmse"} <= set(res.history.columns)
    stats = res.config.normalization["solubility"]
    assert stats["mean"] == pytest.approx(solubility_rows["logS"].mean())
    after = predict(res, "solubility", solubility_rows, progress=False)
    y = solubility_rows["logS"].to_numpy()
    rmse_before = float(((before["prediction"] - y) ** 2).mean() ** 0.5)
    rmse_after = float(((after["prediction"] - y) ** 2).mean() ** 0.5)
    assert rmse_after < rmse_before


@pytest.mark.slow
def test_finetune_generation_classification(small_model, solubility_rows, tmp_path):
    df = pd.DataFrame({"smiles": solubility_rows["smiles"], "label": (solubility_rows["logS"] > -2.5).astype(int)})
    res = finetune(small_model, "bbbp", df, df, max_epochs=6, batch_size=16, learning_rate=3e-3,
                   checkpoint_dir=tmp_path, progress=False, seed=0)
    val = res.history["val_loss"].dropna().to_numpy()
    assert val[-1] < val[0]
    out = predict(res, "bbbp", df, progress=False)
    # After training, the model answers <SENTINEL_ID_0><0|1>: every prediction is a label.
    assert set(out["prediction"]) <= {0, 1}
    assert out["probability"].between(0, 1).all()


@pytest.mark.slow
def test_finetune_lora_trains_only_adapters_and_head(small_model, solubility_rows, tmp_path):
    from biomed_toolkit.core.finetune import apply_lora

    base = {k: v.clone() for k, v in small_model.state_dict().items()}
    tuned = finetune(small_model, "solubility", solubility_rows, target="logS", lora=True, max_epochs=2,
                     batch_size=16, checkpoint_dir=tmp_path, progress=False, seed=0)
    # LoRA trained only the adapters (now merged into q / v) and the scalar head.
    now = tuned.state_dict()
    changed = {k for k in base if not torch.equal(now[k], base[k])}
    assert changed and all(k.endswith(("SelfAttention.q.weight", "SelfAttention.v.weight",
                                       "EncDecAttention.q.weight", "EncDecAttention.v.weight"))
                           or k.startswith("scalars_prediction_head") for k in changed), sorted(changed)
    assert any("SelfAttention.q.weight" in k for k in changed)
    assert all(torch.equal(v, base[k]) for k, v in small_model.state_dict().items())  # input unchanged
    before = predict(tuned, "solubility", solubility_rows.iloc[:8], progress=False)["prediction"]
    with pytest.raises(CheckpointError, match="merge_lora"):
        apply_lora(copy.deepcopy(tuned), ["q", "v"]).save_pretrained(tmp_path / "lora")
    tuned.save_pretrained(tmp_path / "merged")
    again = load(tmp_path / "merged", device="cpu")
    after = predict(again, "solubility", solubility_rows.iloc[:8], progress=False)["prediction"]
    np.testing.assert_allclose(after, before, atol=1e-4)


def test_finetune_rejects_bad_rows(small_model):
    df = pd.DataFrame({"smiles": ["CCO", "C1CC"], "logS": [0.1, 0.2]})
    with pytest.raises(InputError, match="row 1: PromptError"):
        finetune(small_model, "solubility", df, max_epochs=1)
