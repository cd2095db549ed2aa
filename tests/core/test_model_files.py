"""Damaged model files give the package's CheckpointError naming the file, never a raw library error.

The named cases (malformed safetensors headers, broken or list-valued ``config.json``, an
unreadable embedded manifest) are checked one by one; hypothesis then mutates the bytes of a
small saved model folder (``model.safetensors`` and ``config.json``) and asserts that loading it
either works or raises a :class:`~biomed_toolkit.core.errors.BiomedToolkitError`.

CI runs ``BT_FUZZ_EXAMPLES`` examples per fuzz target (default 300, ~30 s each on 2 cores).
Nightly size::

    BT_FUZZ_EXAMPLES=10000 python -m pytest tests/core/test_model_files.py -k fuzz

(2,000 examples: safetensors bytes pass; config.json bytes found an unknown ``hidden_act``
reaching a raw ValueError, now refused by ``BmfmRnaConfig``: see the test below.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from biomed_toolkit.core.errors import BiomedToolkitError, CheckpointError
from tests.fuzzing import mutate

FUZZ_EXAMPLES = int(os.environ.get("BT_FUZZ_EXAMPLES", "300"))
GENES = ["CD3E", "LYZ", "MS4A1", "NKG7", "GNLY", "CD14"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny BMFM-RNA model saved with save_pretrained (config.json + model.safetensors + extras)."""
    from tests.rna.helpers import fresh_model

    out = tmp_path_factory.mktemp("model") / "tiny"
    fresh_model(GENES).save_pretrained(out)
    return out


def _copy(folder: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(folder, dest)
    return dest


def _load(path: Path):
    import biomed_toolkit as bt

    return bt.rna.load(path, device="cpu")


def _with_header(raw: bytes, header: bytes) -> bytes:
    """The safetensors bytes ``raw`` with their JSON header replaced by ``header``."""
    n = struct.unpack("<Q", raw[:8])[0]
    return struct.pack("<Q", len(header)) + header + raw[8 + n:]


# ------------------------------------------------------------------------------------------
# named cases
# ------------------------------------------------------------------------------------------
def test_intact_folder_loads(folder):
    model = _load(folder)
    assert model.config.hidden_size == 32 and model.tokenizer.vocab_size > len(GENES)


@pytest.mark.parametrize("case", ["huge_length", "not_json", "list", "bad_offsets", "bad_dtype",
                                  "empty", "truncated"])
def test_malformed_safetensors_names_the_file(folder, tmp_path, case):
    d = _copy(folder, tmp_path / "m")
    st = d / "model.safetensors"
    raw = st.read_bytes()
    bad = {
        "huge_length": struct.pack("<Q", 2**62) + raw[8:],
        "not_json": _with_header(raw, b"{not json"),
        "list": _with_header(raw, b"[1, 2]"),
        "bad_offsets": _with_header(raw, json.dumps(
            {"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 10**9]}}).encode()),
        "bad_dtype": _with_header(raw, json.dumps(
            {"x": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}).encode()),
        "empty": b"",
        "truncated": raw[: len(raw) // 2],
    }[case]
    st.write_bytes(bad)
    with pytest.raises(CheckpointError) as err:
        _load(d)
    msg = str(err.value)
    assert str(st) in msg and "not a readable safetensors file" in msg and "Fix:" in msg


@pytest.mark.parametrize("text", ['{"hidden_size": ', "[1, 2]", "null", '"abc"', "\udcff"])
def test_broken_or_non_object_config_json(folder, tmp_path, text):
    d = _copy(folder, tmp_path / "m")
    (d / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match="config.json"):  # the file is named
        _load(d)


def test_invalid_json_config_names_the_file(folder, tmp_path):
    d = _copy(folder, tmp_path / "m")
    (d / "config.json").write_text('{"hidden_size": ')
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        _load(d)


@pytest.mark.parametrize(("key", "value"), [("hidden_size", -32), ("num_hidden_layers", 0),
                                          ("hidden_dropout_prob", 1.5), ("layer_norm_eps", 0)])
def test_out_of_range_sizes_in_config_are_checkpoint_errors(folder, tmp_path, key, value):
    """Found by the config.json fuzz at 10,000 examples: a negative width reached torch."""
    d = _copy(folder, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=key):
        _load(d)


def test_unknown_activation_in_config_is_a_checkpoint_error(folder, tmp_path):
    d = _copy(folder, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_act"] = "gdlu"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="hidden_act"):
        _load(d)


@pytest.mark.parametrize("text", ['{"cell_type": ', '[1, 2]', '{"cell_type": {"B": "one"}}'])
def test_damaged_label_dict_is_a_checkpoint_error(folder, tmp_path, text):
    d = _copy(folder, tmp_path / "m")
    (d / "label_dict.json").write_text(text)
    with pytest.raises(CheckpointError, match="label_dict.json"):
        _load(d)


def test_damaged_tokenizer_file_is_a_checkpoint_error(folder, tmp_path):
    d = _copy(folder, tmp_path / "m")
    files = sorted((d / "tokenizers").rglob("tokenizer.json"))
    assert files, "the saved folder has tokenizer.json files"
    files[0].write_text('{"model": {"type": "WordLevel", "vocab": ')
    with pytest.raises(CheckpointError, match="tokenizer"):
        _load(d)


def test_unreadable_embedded_manifest_is_a_checkpoint_error(tmp_path, monkeypatch):
    from biomed_toolkit.core import hub

    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / hub.MANIFEST).write_text('{"name": "x", ')
    monkeypatch.setattr(hub, "EMBEDDED_DIR", tmp_path)
    with pytest.raises(CheckpointError, match=r"manifest\.json is not a readable model manifest"):
        hub.registry()
    (tmp_path / "demo" / hub.MANIFEST).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="reinstall"):
        hub.registry()


def test_write_manifest_on_damaged_weights_names_the_file(folder, tmp_path):
    from biomed_toolkit.core.hub import write_manifest

    d = _copy(folder, tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors"):
        write_manifest(d, name="x", family="bmfm-rna", task="t", description="d")


# ------------------------------------------------------------------------------------------
# fuzz: mutated bytes give a package error (or load), never anything else
# ------------------------------------------------------------------------------------------
def _mutations(header_len: int | None = None):
    from hypothesis import strategies as st

    flips = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                     min_size=1, max_size=4)
    kinds = [
        st.tuples(st.just("flip"), flips),
        st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
        st.tuples(st.just("insert"), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=32))),
        st.tuples(st.just("replace"), st.binary(max_size=512)),
    ]
    if header_len is not None:
        # most of the file is tensor data; aim half of the flips at the length and JSON header
        kinds.append(st.tuples(st.just("flip_header"), flips))
    return st.one_of(*kinds)


def _small_enough(config_bytes: bytes) -> bool:
    """False for a config asking for a network far bigger than the test machine should build.

    A mutation can turn ``"hidden_size": 32`` into ``329999``; building that is an allocation
    test, not a file-format one, so such examples are skipped.
    """
    try:
        data = json.loads(config_bytes)
    except ValueError:
        return True
    if not isinstance(data, dict):
        return True

    def num(key: str) -> int:
        v = data.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else 0

    h, layers = num("hidden_size"), num("num_hidden_layers")
    params = (layers * (4 * h * h + 2 * h * num("intermediate_size")) + num("vocab_size") * h
              + num("expression_hidden_size") * h + num("n_cls_tokens") * h)
    return params < 5_000_000 and all(num(k) < 100_000 for k in data)


def _fuzz_target(folder: Path, work: Path, name: str, mutation, header_end: int = 0) -> None:
    from hypothesis import assume

    d = _copy(folder, work / "m")
    target = d / name
    data = mutate(target.read_bytes(), mutation, header_end)
    if name == "config.json":
        assume(_small_enough(data))
    target.write_bytes(data)
    with contextlib.suppress(BiomedToolkitError):  # anything else fails the example
        _load(d)


def test_fuzz_safetensors_bytes(folder, tmp_path_factory):
    from hypothesis import HealthCheck, given, settings

    raw = (folder / "model.safetensors").read_bytes()
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    work = tmp_path_factory.mktemp("fuzz_st")

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(_mutations(header_end))
    def check(mutation):
        _fuzz_target(folder, work, "model.safetensors", mutation, header_end)

    check()


def test_fuzz_config_json_bytes(folder, tmp_path_factory):
    from hypothesis import HealthCheck, given, settings

    work = tmp_path_factory.mktemp("fuzz_cfg")

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.filter_too_much])
    @given(_mutations())
    def check(mutation):
        _fuzz_target(folder, work, "config.json", mutation)

    check()


@pytest.mark.parametrize("text", ["!!python/object/apply:os.system ['echo hi']\n", "a: !foo 1\n",
                                  "a: [\n", "- 1\n", "tokenizers_info: [{json_path: x.json}]\n"])
def test_damaged_mammal_tokenizer_yaml_is_a_checkpoint_error(tmp_path, text):
    """YAML tags, syntax errors and wrong shapes in the MAMMAL tokenizer's config.yaml."""
    import shutil

    from biomed_toolkit.core import hub
    from biomed_toolkit.mammal.modeling import MammalModel

    folder = tmp_path / "mammal"
    shutil.copytree(hub.default_model("mammal").path, folder)
    (folder / "tokenizer" / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="config.yaml"):
        MammalModel.from_pretrained(folder, device="cpu")
