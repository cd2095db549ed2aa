"""Task read-outs against the official outputs, bad-row handling, virtual screening."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammal import TASKS, predict, prompts, virtual_screen

CAFFEINE = "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"


def test_registry_lists_tasks_with_builders():
    for name in ("dti", "ppi", "bbbp", "clintox", "tcr", "solubility", "esol", "generate"):
        t = TASKS[name]
        assert t.kind in ("regression", "classification", "generation")
        assert callable(t.build) and t.inputs
    assert TASKS["dti"].default_norm == (prompts.DTI_PKD_MEAN, prompts.DTI_PKD_STD)
    with pytest.raises(InputError, match="unknown MAMMAL task"):
        predict(None, "nope", [])


def test_bbbp_probability_is_the_official_readout(tiny_model, expected):
    df = predict(tiny_model, "bbbp", [CAFFEINE, "CC(C", "CCO"], progress=False)
    assert list(df.columns) == ["smiles", "prediction", "probability", "answer", "error"]
    # The official score: softmax probability of <1> (id 45) at generation step 1.
    assert df.loc[0, "probability"] == pytest.approx(float(expected["bbbp.generate_probs"][1, 45]), abs=1e-4)
    # This random model's step-1 token is neither <0> nor <1>.
    assert expected["bbbp.generated_ids"][1] not in (44, 45) and df.loc[0, "prediction"] == -1
    assert df.loc[0, "error"] is None and df.loc[2, "error"] is None
    assert "extra open parentheses" in df.loc[1, "error"] and np.isnan(df.loc[1, "probability"])


def test_ppi_probability_matches_fixture(tiny_model, expected):
    a, b = "MADQLTEEQIAEFKEAFSLF", "MSSKLLLAGLDIERVLAEKN"
    df = predict(tiny_model, "ppi", pd.DataFrame({"a": [a, "MKJ"], "b": [b, "MKT"]}), progress=False)
    assert df.loc[0, "probability"] == pytest.approx(float(expected["ppi.generate_probs"][1, 45]), abs=1e-4)
    assert "'J' at position 2" in df.loc[1, "error"]


def test_dti_denormalises_the_scalar_head(tiny_model, cases):
    case = next(c for c in cases if c["name"] == "dti")
    df = predict(
        tiny_model, "dti", {"target": ["MKTAYIAKQRQISFVKSHFSRQ"], "smiles": ["CC(=O)Oc1ccccc1C(=O)O"]},
        prompt_kwargs={"protein_max_len": 20, "smiles_max_len": 32}, progress=False,
    )
    want = case["scalars_head_logit_at_position_0"] * prompts.DTI_PKD_STD + prompts.DTI_PKD_MEAN
    assert df.loc[0, "prediction"] == pytest.approx(want, abs=1e-4)


def test_model_normalisation_overrides_default(tiny_model):
    inputs = {"protein": ["MKTAYIAKQR"], "smiles": ["CCO"]}
    base = predict(tiny_model, "dti", inputs, progress=False).loc[0, "prediction"]
    raw = (base - prompts.DTI_PKD_MEAN) / prompts.DTI_PKD_STD
    tiny_model.config.normalization["dti"] = {"mean": 10.0, "std": 2.0}
    try:
        got = predict(tiny_model, "dti", inputs, progress=False).loc[0, "prediction"]
    finally:
        del tiny_model.config.normalization["dti"]
    assert got == pytest.approx(raw * 2.0 + 10.0, abs=1e-4)


def test_inputs_validation(tiny_model):
    with pytest.raises(InputError, match="needs a column 'smiles'"):
        predict(tiny_model, "bbbp", pd.DataFrame({"mol": ["CCO"]}), progress=False)
    with pytest.raises(InputError, match="needs 2 values per row"):
        predict(tiny_model, "ppi", ["MKT"], progress=False)


def test_generate_task(tiny_model, cases, expected):
    df = predict(tiny_model, "generate", [cases[0]["prompt"], "no meta token<EOS>"], max_new_tokens=5, progress=False)
    assert df.loc[0, "answer"] == cases[0]["decoded_generated"]
    assert 0 < df.loc[0, "mean_token_probability"] <= 1
    assert "meta token" in df.loc[1, "error"]


def test_virtual_screen_ranks_and_keeps_going(tiny_model):
    rng = np.random.default_rng(0)
    frags = ["C", "CC", "O", "N", "c1ccccc1", "C(=O)O", "CN", "OC"]
    library = ["".join(rng.choice(frags, size=3)) for _ in range(120)] + ["not_a_smiles"]
    target = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
    hits = virtual_screen(tiny_model, target, library, batch_size=32, progress=False)
    assert len(hits) == len(library) and hits["rank"].tolist() == list(range(1, len(library) + 1))
    preds = hits["prediction"].to_numpy()
    ok = ~np.isnan(preds)
    assert ok.sum() == len(library) - 1 and np.all(np.diff(preds[ok]) <= 0)
    assert hits.iloc[-1]["smiles"] == "not_a_smiles" and hits.iloc[-1]["error"]
    top = virtual_screen(tiny_model, target, library[:10], top_k=3, progress=False)
    assert len(top) == 3
