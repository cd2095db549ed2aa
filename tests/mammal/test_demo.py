"""The embedded demo model: loads by default, matches its manifest, reproduces its recorded metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

import biomed_toolkit as bt  # noqa: F401 - the public entry point must import
from biomed_toolkit.core.hub import EMBEDDED_DIR, sha256_file
from biomed_toolkit.mammal import load, predict, prompts
from biomed_toolkit.mammal.datasets import demo_splits

DEMO = EMBEDDED_DIR / "mammal_demo"


@pytest.fixture(scope="module")
def demo():
    if not (DEMO / "model.safetensors").is_file():
        pytest.fail("the embedded demo is missing: run scripts/train_mammal_demo.py")
    return load(device="cpu")


@pytest.fixture(scope="module")
def record():
    return json.loads((DEMO / "training_record.json").read_text())


def test_default_load_is_the_demo(demo, record):
    assert demo.card.name == "mammal-demo" and demo.card.source == "embedded"
    assert demo.card.sha256 == sha256_file(DEMO / "model.safetensors") == record["sha256"]["model.safetensors"]
    assert demo.tokenizer is not None and demo.tokenizer.sub_tokenizers == ["AA", "SMILES"]
    # Same special-token layout as the official tokenizer: prompts are identical.
    st = demo.tokenizer.special_tokens
    assert (st["<MASK>"], st["<EOS>"], st["<SENTINEL_ID_0>"], st["<SCALAR>"], st["<BBBP>"]) == (4, 5, 57, 305, 314)
    assert demo.tokenizer.token_to_id("M", "AA") == 512
    assert demo.t5_model.lm_head.weight.data_ptr() != demo.t5_model.shared.weight.data_ptr()


def test_recorded_solubility_metrics_reproduce(demo, record):
    _, e = demo_splits(record["seed"])
    test = e[e.split == "test"]
    assert len(test) == record["test_metrics"]["solubility"]["n"]
    pred = predict(demo, "esol", test, progress=False)["prediction"].to_numpy()
    r = float(np.corrcoef(test.logS.to_numpy(), pred)[0, 1])
    assert r == pytest.approx(record["test_metrics"]["solubility"]["pearson"], abs=1e-4)
    assert r > 0.5  # it learned something real


def test_kiba_split_has_unseen_ligands_and_model_beats_mean(demo, record):
    k, _ = demo_splits(record["seed"])
    train, test = k[k.split == "train"], k[k.split == "test"]
    assert not set(train.ligand_id) & set(test.ligand_id)
    sub = test.iloc[::6]
    out = predict(demo, "dti", sub, progress=False)
    assert out["error"].isna().all()
    y, p = sub.affinity.to_numpy(), out["prediction"].to_numpy()
    assert np.sqrt(np.mean((y - p) ** 2)) < np.sqrt(np.mean((y - train.affinity.mean()) ** 2))


def test_demo_generates_and_saves(demo, tmp_path):
    res = demo.generate(prompts.solubility("CCO"), max_new_tokens=3)
    assert res.ids.shape == (1, 3) and np.all(np.isfinite(res.token_probabilities.numpy()[~np.isnan(res.token_probabilities.numpy())]))
    demo.save_pretrained(tmp_path / "copy")
    again = load(tmp_path / "copy", device="cpu")
    assert again.config.normalization == demo.config.normalization
