"""Loading official-layout checkpoints (planted v1 .ckpt with legacy names, v2 folder) and our own."""

from __future__ import annotations

import json
import sys
import types

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import biomed_toolkit.rna as rna
from biomed_toolkit.core.errors import CheckpointError
from biomed_toolkit.core.weights import save_safetensors
from biomed_toolkit.rna.configuration import BmfmRnaConfig, LabelColumn
from biomed_toolkit.rna.modeling import BmfmRnaModel

GENES = ["CD3E", "CD3D", "LYZ", "MS4A1", "CD14", "NKG7", "GNLY", "CD79A", "FCGR3A", "PPBP"]
WCED = {"wced": {"vocab_field": "genes", "logit_outputs": ["mse", "is_zero_bce"]}}


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
    return model.eval()


def cells() -> ad.AnnData:
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, size=(12, len(GENES))).astype(np.float32)
    X[X < 2] = 0
    a = ad.AnnData(sp.csr_matrix(X))
    a.var_names = GENES
    a.obs_names = [f"c{i}" for i in range(12)]
    return a


@pytest.fixture
def fake_bmfm_targets(monkeypatch):
    """Classes with the official module paths, so torch.save pickles them as the official code."""
    made = {}
    for mod_name, cls_name in [("bmfm_targets.config.model_config", "SCBertConfig"),
                               ("bmfm_targets.config.tokenization_config", "FieldInfo"),
                               ("bmfm_targets.config.tokenization_config", "LabelColumnInfo"),
                               ("bmfm_targets.config.training_config", "TrainerConfig")]:
        for part in ("bmfm_targets", "bmfm_targets.config", mod_name):
            if part not in sys.modules:
                monkeypatch.setitem(sys.modules, part, types.ModuleType(part))
        cls = type(cls_name, (), {"__module__": mod_name})
        setattr(sys.modules[mod_name], cls_name, cls)
        made[cls_name] = cls
    return made


def obj(cls, **state):
    o = cls()
    o.__dict__.update(state)
    return o


def test_official_v1_ckpt_with_legacy_names(tmp_path, fake_bmfm_targets):
    c = fake_bmfm_targets
    tok = rna.GeneTokenizer.from_genes(GENES)
    cfg = BmfmRnaConfig.v1(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=32,
                           decode_modes={"expressions": WCED},
                           label_columns=[LabelColumn("cell_type", 3),
                                          LabelColumn("donor_id", 2, gradient_reversal_coefficient=3.0)])
    ref = randomise(BmfmRnaModel(cfg), 1)
    fields = [
        obj(c["FieldInfo"], field_name="genes", vocab_size=tok.vocab_size, is_input=True,
            tokenization_strategy="tokenize", masked_output_modes=None, num_special_tokens=5),
        # legacy attribute names, as older bmfm_targets versions pickled them
        obj(c["FieldInfo"], field_name="expressions", vocab_size=55, is_input=True,
            tokenization_strategy="continuous_value_encoder", masked_output_modes=WCED,
            continuous_value_encoder_kwargs={"kind": "mlp_with_special_token_embedding",
                                             "zero_as_special_token": True},
            num_special_tokens=5),
    ]
    labels = [obj(c["LabelColumnInfo"], label_column_name="cell_type", output_size=3,
                  gradient_reversal_coefficient=None, classifier_depth=1),
              obj(c["LabelColumnInfo"], label_column_name="donor_id", output_size=2,
                  gradient_reversal_coefficient=3.0, classifier_depth=1)]
    mc = obj(c["SCBertConfig"], hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=32, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=2,
             position_embedding_type=None, fields=fields, label_columns=labels,
             output_attentions=False)
    tc = obj(c["TrainerConfig"], pooling_method="first_token", metrics=[{"name": "f1"}], batch_size=8)
    ckpt = {"epoch": 3, "global_step": 120, "optimizer_states": [{"state": {}}], "lr_schedulers": [],
            "state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()},
            "hyper_parameters": {"model_config": mc, "trainer_config": tc,
                                 "label_dict": {"cell_type": {"B": 0, "T": 1, "NK": 2},
                                                "donor_id": {"d1": 0, "d2": 1}}}}
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(ckpt, folder / "last.ckpt")
    tok.save_pretrained(folder)
    for path in (folder, folder / "last.ckpt"):
        m = rna.load(path, device="cpu")
        assert m.config.label_names == ["cell_type", "donor_id"]
        assert m.config.wced is not None and m.pooling == "first_token"
        for k, v in ref.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), k
        assert m.label_names("cell_type") == ["B", "T", "NK"]
        assert m.card.family == "bmfm-rna" and len(m.card.sha256) == 64
    X, rep = rna.embed_cells(m, cells(), progress=False)
    assert rep.n_matched == len(GENES) and np.isfinite(X).all()
    enc = rna.encode_cells(cells(), m)
    with torch.no_grad():
        want = ref(**enc.to_torch()).cls_embedding.numpy()
    np.testing.assert_allclose(X, want, atol=1e-6)


def test_unsafe_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {}, "hyper_parameters": {"model_config": Evil()}}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="refused"):
        rna.load(tmp_path / "x.ckpt", device="cpu")


def make_v2_folder(folder, seed=2):
    extra = tuple(f"[CLS_{k}]" for k in range(4)) + ("[S]", "[T]")
    tok = rna.GeneTokenizer.from_genes(GENES, extra_tokens=extra)
    enc_kwargs = {"kind": "scale_adapt", "n_sin_basis": 48, "basis_scale": 0.01, "trainable": False,
                  "zero_as_special_token": True}
    cfg = BmfmRnaConfig.v2(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, decode_modes={"expressions": WCED},
                           expression_encoder_kwargs={k: v for k, v in enc_kwargs.items() if k != "kind"},
                           label_columns=[LabelColumn("cell_type", 3)])
    ref = BmfmRnaModel(cfg)
    basis = ref.core.encoder.embeddings.expressions_embeddings.basis.clone()
    randomise(ref, seed)
    ref.core.encoder.embeddings.expressions_embeddings.basis.copy_(basis)
    folder.mkdir(parents=True)
    official_cfg = {
        "model_type": "scllama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "pad_token_id": 2, "layer_norm_eps": 1e-12, "position_embedding_type": None,
        "fields": [
            {"field_name": "genes", "vocab_size": tok.vocab_size, "is_input": True,
             "tokenization_strategy": "tokenize", "decode_modes": None, "num_special_tokens": 5},
            {"field_name": "expressions", "vocab_size": 55, "is_input": True,
             "tokenization_strategy": "continuous_value_encoder", "decode_modes": WCED,
             "encoder_kwargs": enc_kwargs, "num_special_tokens": 5},
        ],
        "label_columns": [{"label_column_name": "cell_type", "n_unique_values": 3,
                           "gradient_reversal_coefficient": None, "classifier_depth": 1}],
        "label_dict": {"cell_type": {"a": 0, "b": 1, "c": 2}},
    }
    (folder / "config.json").write_text(json.dumps(official_cfg))
    save_safetensors(ref.state_dict(), folder / "model.safetensors")
    tok.save_pretrained(folder)
    return ref, tok


def test_planted_v2_folder_loads_and_runs(tmp_path):
    ref, tok = make_v2_folder(tmp_path / "v2")
    m = rna.load(tmp_path / "v2", device="cpu")
    assert m.config.variant == "v2" and m.config.n_cls_tokens == 5
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    enc = rna.encode_cells(cells(), m)
    cls_ids = [3] + [tok.token_id(f"[CLS_{k}]") for k in range(4)]
    assert (enc.genes[:, :5] == np.asarray(cls_ids)).all()
    # each CLS token carries its own code -(id + 1), as the official v2 tokenizer writes it
    assert (enc.expressions[:, :5] == -(np.asarray(cls_ids, dtype=np.float32) + 1)).all()
    X, _ = rna.embed_cells(m, cells(), progress=False)
    with torch.no_grad():
        out = ref(**enc.to_torch(), heads=("labels", "wced"))
    np.testing.assert_allclose(X, out.cls_embedding.numpy(), atol=1e-6)
    probs = rna.predict_labels(m, cells(), progress=False)["cell_type"]
    assert probs[1] == ["a", "b", "c"]
    np.testing.assert_allclose(probs[0], torch.softmax(out.label_logits["cell_type"], -1).numpy(), atol=1e-6)
    # and our own save of it round-trips
    m.save_pretrained(tmp_path / "ours")
    back = rna.load(tmp_path / "ours", device="cpu")
    assert back.config == m.config
    X2, _ = rna.embed_cells(back, cells(), progress=False)
    np.testing.assert_array_equal(X, X2)


def test_errors_name_the_problem(tmp_path):
    ref, _ = make_v2_folder(tmp_path / "v2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no BMFM-RNA model"):
        rna.load(tmp_path / "empty", device="cpu")
    # wrong tokenizer for the weights
    import shutil

    shutil.rmtree(tmp_path / "v2" / "tokenizers")
    rna.GeneTokenizer.from_genes(GENES[:3]).save_pretrained(tmp_path / "v2")
    with pytest.raises(CheckpointError, match="tokenizer"):
        rna.load(tmp_path / "v2", device="cpu")


def test_default_load_is_the_embedded_demo():
    from biomed_toolkit.core import hub

    if not (hub.EMBEDDED_DIR / "bmfm_rna_demo" / "manifest.json").is_file():
        pytest.skip("embedded demo not built (scripts/train_rna_demo.py)")
    m = rna.load(device="cpu")
    assert m.card.name == "bmfm-rna-demo" and m.card.source == "embedded"
    assert m.pooling == "first_token" and "cell_type" in m.label_dict
    record = json.loads((hub.EMBEDDED_DIR / "bmfm_rna_demo" / "training_record.json").read_text())
    assert record["sha256"]["model.safetensors"] == m.card.sha256


@pytest.fixture(scope="module")
def demo():
    from biomed_toolkit.core import hub

    if not (hub.EMBEDDED_DIR / "bmfm_rna_demo" / "manifest.json").is_file():
        pytest.skip("embedded demo not built (scripts/train_rna_demo.py)")
    return rna.load(device="cpu")


def test_demo_predicts_pbmc_cell_types_above_chance(demo):
    pbmc = rna.pbmc68k_counts()[::3]
    probs, names = rna.predict_labels(demo, pbmc, progress=False)["cell_type"]
    pred = np.asarray(names)[probs.argmax(1)]
    truth = pbmc.obs["bulk_labels"].astype(str).to_numpy()
    majority = pbmc.obs["bulk_labels"].value_counts(normalize=True).max()
    assert (pred == truth).mean() > majority + 0.1
    X, rep = rna.embed_cells(demo, pbmc[:60], progress=False)
    assert X.shape == (60, demo.config.hidden_size) and np.isfinite(X).all()
    assert rep.n_matched == 690 and rep.fraction_counts_covered > 0.9


def test_embeddings_are_chunk_invariant_with_random_order_and_truncation(demo):
    pbmc = rna.pbmc68k_counts()[:120]
    kw = dict(order="random", seed=7, max_length=64, progress=False)
    X1, _ = rna.embed_cells(demo, pbmc, chunk_size=120, **kw)
    X2, _ = rna.embed_cells(demo, pbmc, chunk_size=17, batch_size=5, **kw)
    np.testing.assert_array_equal(X1, X2)
    X3, _ = rna.embed_cells(demo, pbmc, chunk_size=120, order="random", seed=8, max_length=64,
                            progress=False)
    assert not np.allclose(X1, X3)  # the seed decides which genes survive truncation


def _link_v1_fixture(folder, fixtures_dir):
    src = fixtures_dir / "bmfm_rna_official_tiny" / "ckpt"
    if not src.is_dir():
        pytest.skip("bmfm_rna_official_tiny fixture absent")
    folder.mkdir(parents=True)
    (folder / "last.ckpt").symlink_to(src / "last.ckpt")
    (folder / "tokenizers").symlink_to(src / "tokenizers")
    return folder


def test_read_depth_aware_checkpoint_is_refused(tmp_path, fixtures_dir, monkeypatch):
    """A loadable checkpoint is refused when it is the rda one: its [S]/[T] inputs are unknown."""
    import biomed_toolkit as bt
    from biomed_toolkit.core import hub
    from biomed_toolkit.rna.registry import UNREPRODUCIBLE

    rda = "ibm-research/biomed.rna.bert.110m.mlm.rda.v1"
    assert rda in UNREPRODUCIBLE
    ok = _link_v1_fixture(tmp_path / "any_name", fixtures_dir)
    assert isinstance(rna.load(ok, device="cpu"), BmfmRnaModel)
    monkeypatch.setattr(bt.settings, "cache_dir", tmp_path / "cache")
    monkeypatch.setattr(bt.settings, "offline", True)
    # refused before any download is attempted (offline it would otherwise be an OfflineError)
    with pytest.raises(CheckpointError, match=r"\[S\].*\[T\]"):
        rna.load("bmfm-rna-v1-mlm-rda")
    cached = _link_v1_fixture(hub._hub_cache_folder(rda), fixtures_dir)
    for name in ("bmfm-rna-v1-mlm-rda", rda, cached):
        with pytest.raises(CheckpointError, match=r"\[S\].*\[T\]"):
            rna.load(name, device="cpu")
        with pytest.raises(CheckpointError, match=r"\[S\].*\[T\]"):  # the class call too
            BmfmRnaModel.from_pretrained(name, device="cpu")
    row = bt.hub.list_models("bmfm-rna").set_index("name").loc["bmfm-rna-v1-mlm-rda"]
    assert row["verified"].startswith("refused")


def test_list_models_says_what_is_verified():
    import biomed_toolkit as bt
    from biomed_toolkit.rna.registry import MODELS

    df = bt.hub.list_models("bmfm-rna").set_index("name")
    assert "verified" in df.columns
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    for spec in MODELS:
        text = df.loc[spec.name, "verified"]
        assert text == spec.verified and text, spec.name
        if "fixture" in text.split(":")[0] or text.startswith("bmfm_rna"):
            fixture, test_file = text.split(" ")[0], text.rsplit("(", 1)[-1].rstrip(")")
            assert fixture.startswith("bmfm_rna") and (repo / test_file).is_file(), text
    proven = {n for n, t in df["verified"].items() if t.startswith("bmfm_rna")}
    assert proven == {"bmfm-rna-v1-wced-multitask", "bmfm-rna-v2-wced-multitask"}


def test_load_is_the_model_class_from_pretrained(tmp_path):
    ref, _ = make_v2_folder(tmp_path / "v2")
    a = rna.load(tmp_path / "v2", device="cpu")
    b = BmfmRnaModel.from_pretrained(tmp_path / "v2", device="cpu")
    assert type(a) is type(b) is BmfmRnaModel and a.config == b.config
    assert a.card.extra["format"] == "official v2 config.json + safetensors"
    folder = a.save_pretrained(tmp_path / "ours")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "label_dict.json",
                                                        "model.safetensors", "tokenizers"]
    back = BmfmRnaModel.from_pretrained(folder, device="cpu")
    assert back.card.extra["format"] == "biomed_toolkit folder"
    assert back.label_dict == a.label_dict and back.pooling == a.pooling
    # pooling lives in the config, so it is saved with it
    back.pooling = "pooler"
    assert back.config.pooling == "pooler"
    with pytest.raises(Exception, match="pooling must be one of"):
        back.pooling = "cls"
    # our own format keeps refusing unknown keys
    data = json.loads((folder / "config.json").read_text())
    data["not_a_field"] = 1
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not_a_field"):
        BmfmRnaModel.from_pretrained(folder, device="cpu")


def test_planted_v2_lightning_ckpt_with_attention_enum(tmp_path, fake_bmfm_targets, monkeypatch):
    """A v2 .ckpt pickles LlamaForMultiTaskConfig and the str Enum AttentionKind (a REDUCE call)."""
    import enum

    from biomed_toolkit.core.safe_pickle import PlainEnum, load_checkpoint

    c = fake_bmfm_targets
    classes = {}
    for mod_name, cls_name in [("bmfm_targets.models.predictive.llama.config", "LlamaForMultiTaskConfig"),
                               ("bmfm_targets.models.common.llama.constants", "AttentionKind")]:
        parts = mod_name.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        if cls_name == "AttentionKind":
            cls = enum.Enum(cls_name, {"FLEX": "flex", "SDPA": "sdpa"}, type=str, module=mod_name)
        else:
            cls = type(cls_name, (), {"__module__": mod_name})
        setattr(sys.modules[mod_name], cls_name, cls)
        classes[cls_name] = cls
    ref, tok = make_v2_folder(tmp_path / "v2")
    official = json.loads((tmp_path / "v2" / "config.json").read_text())
    fields = [obj(c["FieldInfo"], **f) for f in official["fields"]]
    labels = [obj(c["LabelColumnInfo"], decode_from=1, **col) for col in official["label_columns"]]
    mc = obj(classes["LlamaForMultiTaskConfig"], **{
        **{k: v for k, v in official.items() if k not in ("fields", "label_columns", "label_dict")},
        "fields": fields, "label_columns": labels, "attention": classes["AttentionKind"].FLEX})
    ckpt = {"state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()},
            "hyper_parameters": {"model_config": mc, "label_dict": official["label_dict"],
                                 "trainer_config": obj(c["TrainerConfig"], pooling_method="first_token")}}
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save(ckpt, folder / "last.ckpt")
    tok.save_pretrained(folder)
    raw = load_checkpoint(folder / "last.ckpt")
    att = raw["hyper_parameters"]["model_config"].attention
    assert isinstance(att, PlainEnum) and att == "flex"
    m = rna.load(folder, device="cpu")
    assert m.config.variant == "v2" and m.config.label_columns[0].decode_from == 1
    assert m.card.extra["format"] == "official v2 lightning ckpt"
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    enc = rna.encode_cells(cells(), m)
    with torch.no_grad():
        h = ref(**enc.to_torch()).last_hidden_state
        got = m(**enc.to_torch()).label_logits["cell_type"]
    want = ref.cls.label_predictions.predictions.label_decoders["cell_type"](h[:, 1])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert m.label_names("cell_type") == ["a", "b", "c"]
