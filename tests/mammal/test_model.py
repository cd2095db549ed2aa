"""Numerical parity of MammalModel with the official outputs, and checkpoint formats."""

from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pytest
import torch

from biomed_toolkit.core.errors import CheckpointError
from biomed_toolkit.mammal import MammalConfig, MammalModel, load

ATOL = RTOL = 1e-4


def _close(got: torch.Tensor, want: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got.detach().cpu().numpy(), want, atol=ATOL, rtol=RTOL, err_msg=what)


def test_structure_untied_head_shared_embedding(tiny_model):
    t5 = tiny_model.t5_model
    assert t5.encoder.embed_tokens is t5.shared and t5.decoder.embed_tokens is t5.shared
    assert t5.lm_head.weight.data_ptr() != t5.shared.weight.data_ptr()
    assert not torch.equal(t5.lm_head.weight, t5.shared.weight)
    assert t5.config.scale_decoder_outputs is False
    names = [n for n, _ in tiny_model.encoder_head.classifier.named_children()]
    assert names == ["0", "1", "2", "3", "4", "5", "6"]  # Dropout modules take slots 2 and 5
    assert tiny_model.card.sha256 and tiny_model.card.family == "mammal"


def test_encoder_heads_and_teacher_forcing_parity(tiny_model, cases, expected):
    for case in cases:
        n = case["name"]
        batch = tiny_model.encode(case["prompt"], max_seq_len=case["max_seq_len"])
        with torch.no_grad():
            out = tiny_model.encoder_only(batch)
            _close(out.last_hidden_state[0], expected[f"{n}.encoder_last_hidden_state"], f"{n} hidden")
            _close(out.logits[0], expected[f"{n}.encoder_head_logits"], f"{n} encoder head")
            _close(out.scalars[0], expected[f"{n}.scalars_head_logits"], f"{n} scalar head")
            dec = torch.from_numpy(expected[f"{n}.teacher_forced_decoder_input_ids"])
            tf = tiny_model.forward_teacher_forced(batch, dec)
            _close(tf.logits[0], expected[f"{n}.teacher_forced_logits"], f"{n} teacher forced")


def test_greedy_generation_parity(tiny_model, cases, expected):
    for case in cases:
        n = case["name"]
        res = tiny_model.generate(case["prompt"], max_new_tokens=5, max_seq_len=case["max_seq_len"], output_scores=True)
        assert res.ids[0].tolist() == expected[f"{n}.generated_ids"].tolist(), n
        assert res.texts[0] == case["decoded_generated"]
        _close(res.scores[0], expected[f"{n}.generate_scores"], f"{n} scores")
        _close(res.probabilities(1)[0], expected[f"{n}.generate_probs"][1], f"{n} probs")
        picked = expected[f"{n}.generate_probs"][np.arange(5), expected[f"{n}.generated_ids"]]
        _close(res.token_probabilities[0], picked, f"{n} token probabilities")


def test_input_scalars_change_the_output(tiny_model, cases):
    case = next(c for c in cases if c["name"] == "scalars")
    a = tiny_model.generate(case["prompt"], max_new_tokens=5, max_seq_len=32)
    b = tiny_model.generate(case["prompt"].replace("0.5,1.5", "40.0,-30.0"), max_new_tokens=5, max_seq_len=32)
    assert a.ids.tolist() != b.ids.tolist()


def test_batched_equals_single(tiny_model, cases, expected):
    batch = tiny_model.encode([c["prompt"] for c in cases])
    with torch.no_grad():
        out = tiny_model.encoder_only(batch)
    for i, case in enumerate(cases):
        n = case["name"]
        k = int(expected[f"{n}.attention_mask"].sum())
        _close(out.last_hidden_state[i, :k], expected[f"{n}.encoder_last_hidden_state"][:k], n)
    res = tiny_model.generate(batch, max_new_tokens=5)
    for i, case in enumerate(cases):
        assert res.ids[i].tolist() == expected[f"{case['name']}.generated_ids"].tolist()


def test_save_pretrained_roundtrip_bit_identical(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    again = load(tmp_path / "m", device="cpu")
    a, b = tiny_model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert again.config.to_dict() == tiny_model.config.to_dict()
    assert again.tokenizer is not None and again.tokenizer.sub_tokenizers == tiny_model.tokenizer.sub_tokenizers
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert sum(name in keys for name in ("t5_model.shared.weight", "t5_model.encoder.embed_tokens.weight",
                                         "t5_model.decoder.embed_tokens.weight")) == 1


@pytest.mark.parametrize("stored_as", ["t5_model.shared.weight", "t5_model.encoder.embed_tokens.weight"])
def test_shared_table_under_any_name(mammal_fixture, tiny_model, tmp_path, stored_as):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(mammal_fixture / "model" / "model.safetensors"))
    sd[stored_as] = sd.pop("t5_model.decoder.embed_tokens.weight")
    folder = tmp_path / "m"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    shutil.copy(mammal_fixture / "model" / "config.json", folder / "config.json")
    model = load(folder, device="cpu")
    assert torch.equal(model.t5_model.decoder.embed_tokens.weight, tiny_model.t5_model.shared.weight)
    assert model.tokenizer is None  # none next to it; prompts then need an external tokenizer


def test_missing_lm_head_is_an_error(mammal_fixture, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(mammal_fixture / "model" / "model.safetensors"))
    del sd["t5_model.lm_head.weight"]
    (tmp_path / "m").mkdir()
    save_file(sd, str(tmp_path / "m" / "model.safetensors"))
    shutil.copy(mammal_fixture / "model" / "config.json", tmp_path / "m" / "config.json")
    with pytest.raises(CheckpointError, match="lm_head"):
        load(tmp_path / "m", device="cpu")


def _fake_official_config_class():
    """A stand-in for mammal.model.MammalConfig so that torch.save pickles that class path."""
    mod = types.ModuleType("mammal.model")

    class MammalConfig:  # noqa: D401 - pickled by reference only
        pass

    MammalConfig.__module__ = "mammal.model"
    MammalConfig.__qualname__ = "MammalConfig"
    mod.MammalConfig = MammalConfig
    return mod, MammalConfig


def test_planted_lightning_ckpt_loads_through_restricted_unpickler(mammal_fixture, tiny_model, cases, expected, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    sd = load_file(str(mammal_fixture / "model" / "model.safetensors"))
    cfg = json.loads((mammal_fixture / "model" / "config.json").read_text())
    mod, cls = _fake_official_config_class()
    monkeypatch.setitem(sys.modules, "mammal", types.ModuleType("mammal"))
    monkeypatch.setitem(sys.modules, "mammal.model", mod)
    pickled_cfg = cls()
    pickled_cfg.__dict__.update(cfg)
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"_model.{k}": v for k, v in sd.items()},
        "hyper_parameters": {"model_config": pickled_cfg, "lr": 1e-4},
    }
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(ckpt, folder / "last.ckpt")
    shutil.copytree(mammal_fixture / "tokenizer", folder / "tokenizer")
    monkeypatch.delitem(sys.modules, "mammal.model")  # the official class is not importable at load
    model = load(folder / "last.ckpt", device="cpu")
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    case = cases[0]
    res = model.generate(case["prompt"], max_new_tokens=5)
    assert res.ids[0].tolist() == expected["ppi.generated_ids"].tolist()
    # Without any config the architecture is inferred from the shapes.
    del ckpt["hyper_parameters"]
    torch.save(ckpt, folder / "noconf.ckpt")
    inferred = load(folder / "noconf.ckpt", device="cpu")
    assert inferred.config.t5_config["num_heads"] == 4 and inferred.config.encoder_head_layers == [32, 16]
    assert inferred.generate(case["prompt"], max_new_tokens=5).ids[0].tolist() == res.ids[0].tolist()


def test_malicious_ckpt_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    torch.save({"state_dict": {}, "hyper_parameters": {"x": Evil()}}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused"):
        load(tmp_path / "evil.ckpt", device="cpu")


def test_config_ignores_unknown_keys_and_builds_tiny_model():
    cfg = MammalConfig.from_dict({"t5_config": {"d_model": 16, "d_ff": 32, "d_kv": 4, "num_heads": 4,
                                                "num_layers": 1, "num_decoder_layers": 1, "vocab_size": 600,
                                                "brand_new_key": 1}, "encoder_head_layers": [8],
                                  "encoder_head_dropout": 0.0, "future_option": True})
    model = MammalModel(cfg)
    assert [n for n, _ in model.encoder_head.classifier.named_children()] == ["0", "1", "2"]
    assert model.t5_model.lm_head.weight.data_ptr() != model.t5_model.shared.weight.data_ptr()
