import os
import pickle

import pytest
import torch

from biomed_toolkit.core.errors import CheckpointError
from biomed_toolkit.core.safe_pickle import PlainConfig, load_checkpoint


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_shell_command_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _RunsShell(marker)}}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned2"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_RunsShell(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_official_bmfm_checkpoint_reads_into_plain_configs(fixtures_dir):
    ckpt = load_checkpoint(fixtures_dir / "bmfm_rna_official_tiny" / "ckpt" / "last.ckpt")
    hp = ckpt["hyper_parameters"]
    config = hp["model_config"]
    assert isinstance(config, PlainConfig)
    assert config.cls_path.endswith("SCBertConfig")
    assert config.hidden_size == 32 and config.num_hidden_layers == 2
    fields = [f.field_name for f in config.fields]
    assert fields == ["genes", "expressions"]
    assert config.fields[1].encoder_kwargs["kind"] == "mlp_with_special_token_embedding"
    assert hp["label_dict"]["cell_type"] == {"B cell": 0, "T cell": 1, "monocyte": 2}
    sd = ckpt["state_dict"]
    assert len(sd) == 58
    assert sd["model.scbert.embeddings.genes_embeddings.weight"].shape == (94911, 32)


def test_legacy_attribute_names_are_renamed():
    from biomed_toolkit.core.safe_pickle import register_allowed

    cls = register_allowed("bmfm_targets.config.tokenization_config.FieldInfo")
    obj = cls.__new__(cls)
    obj.__setstate__({"field_name": "expressions", "masked_output_modes": ["mse"]})
    assert obj.decode_modes == ["mse"] and not hasattr(obj, "masked_output_modes")


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
