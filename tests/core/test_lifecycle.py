"""The one model lifecycle: every registered family through load -> save_pretrained -> load.

Each family's embedded default must come back from its own folder bit-equal (weights, outputs,
config), with a card and on the requested device; every family's fine-tune call speaks the same
keyword names and every model restores its train/eval state after ``inference()``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

import biomed_toolkit as bt
from biomed_toolkit.core.config import BaseConfig
from biomed_toolkit.core.device import resolve_device
from biomed_toolkit.core.errors import CheckpointError
from biomed_toolkit.core.model import MODEL_CLASSES, BaseModel

# Which module defines each family's model class (tests may name domains; core may not).
FAMILY_MODULES = {
    "bmfm-rna": "biomed_toolkit.rna.modeling",
    "mammal": "biomed_toolkit.mammal.modeling",
    "mammo": "biomed_toolkit.mammo.modeling",
}


def _rna_outputs(model: Any) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    n_special = model.config.num_special_tokens
    genes = torch.randint(n_special, model.config.vocab_size, (2, 12), generator=gen)
    genes[:, 0] = model.tokenizer.cls_token_ids(1)[0]
    expressions = torch.rand(2, 12, generator=gen) * 3
    out = model(genes, expressions, torch.ones(2, 12))
    tensors = [out.last_hidden_state]
    if out.pooler_output is not None:
        tensors.append(out.pooler_output)
    tensors += list((out.label_logits or {}).values())
    return tensors


def _mammal_outputs(model: Any) -> list[torch.Tensor]:
    batch = model.encode(["<@TOKENIZER-TYPE=AA><MOLECULAR_ENTITY><MOLECULAR_ENTITY_GENERAL_PROTEIN>"
                          "<SEQUENCE_NATURAL_START>MKTAYIAKQR<SEQUENCE_NATURAL_END><EOS>"],
                         strict=False)
    return [model.run_encoder(batch.to(model.device))]


def _mammo_outputs(model: Any) -> list[torch.Tensor]:
    c = model.config
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, c.in_channels, c.patch_size, c.patch_size, generator=gen)
    b = torch.randn(3, c.in_channels, c.patch_size, c.patch_size, generator=gen)
    return [model(a, b).logits]


OUTPUTS: dict[str, Callable[[Any], list[torch.Tensor]]] = {
    "bmfm-rna": _rna_outputs, "mammal": _mammal_outputs, "mammo": _mammo_outputs,
}

# The keyword names every family's fine-tune call shares (issue #11).
CONTRACT = {"max_epochs", "learning_rate", "batch_size", "freeze", "accelerator", "devices",
            "num_nodes", "early_stopping", "checkpoint_dir", "resume", "progress"}
LORA = {"lora", "lora_rank"}


def _model_class(family: str) -> type[BaseModel]:
    importlib.import_module(FAMILY_MODULES[family])
    return MODEL_CLASSES[family]


def test_every_family_has_one_model_class() -> None:
    for family in bt.hub.families():
        cls = _model_class(family)
        assert issubclass(cls, BaseModel) and cls.family == family
        assert issubclass(cls.config_class, BaseConfig)
    assert set(MODEL_CLASSES) == set(bt.hub.families())


@pytest.mark.parametrize("family", list(FAMILY_MODULES))
def test_load_save_load_is_exact(family: str, tmp_path: Any) -> None:
    cls = _model_class(family)
    model = cls.from_pretrained()
    assert isinstance(model, cls) and not model.training
    assert model.device == resolve_device(None)
    assert model.card is not None and model.card.family == family and model.card.sha256
    model = model.to("cpu")
    with model.inference():
        before = OUTPUTS[family](model)
    folder = model.save_pretrained(tmp_path / family)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    again = cls.from_pretrained(folder, device="cpu")
    assert again.card.source == "local" and again.card.family == family
    assert again.config.to_dict() == model.config.to_dict()
    ours, theirs = model.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    with again.inference():
        after = OUTPUTS[family](again)
    for x, y in zip(before, after, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("family", list(FAMILY_MODULES))
def test_inference_restores_train_state(family: str) -> None:
    model = _model_class(family).from_pretrained(device="cpu")
    model.train()
    with model.inference():
        assert not model.training and not torch.is_grad_enabled()
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("family", list(FAMILY_MODULES))
def test_a_folder_of_another_family_is_refused(family: str, tmp_path: Any) -> None:
    others = [f for f in FAMILY_MODULES if f != family]
    other = _model_class(others[0]).from_pretrained(device="cpu")
    folder = other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError):
        _model_class(family).from_pretrained(folder, device="cpu")


def _finetune_calls() -> dict[str, Callable[..., Any]]:
    return {"bt.tl.finetune": bt.tl.finetune,
            "bt.tl.finetune_perturbation": bt.tl.finetune_perturbation,
            "bt.mammal.finetune": bt.mammal.finetune,
            "bt.mammo.finetune": bt.mammo.finetune}


@pytest.mark.parametrize("name", list(_finetune_calls()))
def test_finetune_calls_share_one_contract(name: str) -> None:
    fn = _finetune_calls()[name]
    params = inspect.signature(fn).parameters
    missing = CONTRACT - set(params)
    assert not missing, f"{name} lacks {sorted(missing)}"
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), name
    for old in ("lr", "lora_r", "freeze_layers", "freeze_branch", "freeze_encoder"):
        assert old not in params, f"{name} still takes {old!r}"
    if name != "bt.mammo.finetune":  # a CNN: no attention / linear projections worth adapting
        assert set(params) >= LORA, name
    assert "{finetune_parameters}" not in (fn.__doc__ or "")
    assert "learning_rate" in (fn.__doc__ or "")
