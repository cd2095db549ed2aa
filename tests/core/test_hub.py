import json

import pytest
import torch

import biomed_toolkit as bt
from biomed_toolkit.core import hub
from biomed_toolkit.core.errors import CheckpointError, InputError, OfflineError
from biomed_toolkit.core.weights import load_state_dict, read_safetensors, save_safetensors


def test_registry_lists_official_checkpoints_with_columns():
    df = bt.hub.list_models()
    assert list(df.columns[:7]) == ["name", "family", "task", "parameters", "source", "location", "cached"]
    official = df[df.source == "hub"]
    assert "ibm/biomed.omics.bl.sm.ma-ted-458m" in set(official.location)
    assert "ibm-research/biomed.rna.bert.110m.wced.multitask.v1" in set(official.location)
    for task in ("dti", "bbbp", "clintox", "tcr"):
        assert (official.family.eq("mammal") & official.task.eq(task)).any(), task
    assert set(bt.hub.list_models("mammo").family) <= {"mammo"}


def test_resolve_local_folder_and_unknown_name(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    resolved = hub.resolve(tmp_path)
    assert resolved.source == "local" and resolved.path == tmp_path.resolve()
    with pytest.raises(InputError, match="Known names"):
        hub.resolve("no-such-model")


def test_offline_hub_id_says_which_files_go_where(tmp_path):
    bt.settings.cache_dir = tmp_path
    bt.settings.offline = True
    with pytest.raises(OfflineError) as info:
        hub.resolve("mammal-dti-bindingdb-pkd")
    message = str(info.value)
    assert "model.safetensors" in message and str(tmp_path) in message


def test_hub_id_resolves_from_a_local_folder_laid_out_like_the_hub(tmp_path):
    bt.settings.cache_dir = tmp_path
    bt.settings.offline = True
    # Hugging Face cache layout: models--org--name/{refs/main, snapshots/<rev>/...}
    repo = tmp_path / "hf" / "models--ibm--biomed.omics.bl.sm.ma-ted-458m"
    snapshot = repo / "snapshots" / "abc123"
    (snapshot / "tokenizer").mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"t5_config": {}}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    resolved = hub.resolve("mammal-base")
    assert resolved.source == "cache"
    assert (resolved.path / "config.json").exists()
    assert resolved.spec is not None and resolved.spec.family == "mammal"
    row = bt.hub.list_models().set_index("name").loc["mammal-base"]
    assert bool(row.cached) is True
    # our own flat cache folder works too
    flat = tmp_path / "models" / "ibm--biomed.omics.bl.sm.ma-ted-458m.moleculenet_bbbp"
    flat.mkdir(parents=True)
    (flat / "config.json").write_text("{}")
    assert hub.resolve("ibm/biomed.omics.bl.sm.ma-ted-458m.moleculenet_bbbp").path == flat


def test_embedded_manifest_checksum_is_verified(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "EMBEDDED_DIR", tmp_path)
    folder = tmp_path / "tiny_demo"
    folder.mkdir()
    model = torch.nn.Linear(3, 2)
    save_safetensors(model, folder / "model.safetensors")
    data = hub.write_manifest(folder, name="tiny-demo", family="mammo", task="matching")
    assert data["parameters"] == 8
    resolved = hub.resolve("tiny-demo")
    assert resolved.source == "embedded"
    assert hub.default_model("mammo").name == "tiny-demo"
    card = hub.make_card("tiny-demo", "mammo", "embedded", folder, {"a": 1}, task="matching")
    assert card.sha256 == data["sha256"]["model.safetensors"]
    assert card.to_dict()["config"] == {"a": 1}
    (folder / "model.safetensors").write_bytes(b"corrupted")
    hub._sha_cache.clear()
    with pytest.raises(CheckpointError, match="corrupt"):
        hub.resolve("tiny-demo")


def test_safetensors_shared_tensors_and_strict_loading(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Embedding(5, 4)
            self.b = torch.nn.Linear(4, 5, bias=False)
            self.b.weight = self.a.weight

    model = Tied()
    path = save_safetensors(model, tmp_path / "m.safetensors")
    tensors, meta = read_safetensors(path)
    assert torch.equal(tensors["a.weight"], tensors["b.weight"])
    assert sum(1 for k in meta if k.startswith("alias:")) == 1
    fresh = Tied()
    load_state_dict(fresh, tensors)
    assert torch.equal(fresh.a.weight, model.a.weight)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_state_dict(torch.nn.Linear(4, 6), {"weight": torch.zeros(5, 4), "bias": torch.zeros(6)})
    with pytest.raises(CheckpointError, match="missing"):
        load_state_dict(torch.nn.Linear(4, 5), {"weight": torch.zeros(5, 4)})


def test_weights_file_is_the_main_weights_not_a_side_file(tmp_path):
    from biomed_toolkit.core.hub import weights_file

    for name in ("label_heads.safetensors", "model.safetensors", "a.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    assert weights_file(tmp_path).name == "model.safetensors"
    (tmp_path / "model.safetensors").unlink()
    assert weights_file(tmp_path).name == "label_heads.safetensors"
