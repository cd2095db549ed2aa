"""Parity with the official BMFM-RNA v2 (LLaMA-style) code on the fixture it wrote.

The fixture holds the Lightning ``.ckpt`` and the folder the official conversion script made from
it (config.json + model.safetensors + checkpoint_metadata.json), 5 real cells and the official
outputs at two sequence lengths (1024: every cell truncated; 2048: every cell padded).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import biomed_toolkit as bt
import biomed_toolkit.rna as rna
from biomed_toolkit.core.safe_pickle import load_checkpoint
from biomed_toolkit.rna.tokenize import encode_csr

from .test_fixture_parity import official_fixture

TOL = 1e-5
CASES = [(1024, ""), (2048, "L2048_")]
LAYOUTS = ["ckpt", "folder"]


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    return official_fixture(fixtures_dir, "bmfm_rna_v2_official_tiny")


@pytest.fixture(scope="module")
def models(fx):
    torch.set_num_threads(1)
    return {"ckpt": rna.load(fx["root"] / "ckpt" / "last.ckpt", device="cpu"),
            "folder": rna.load(fx["root"] / "model", device="cpu")}


def test_both_layouts_give_the_same_model(fx, models):
    a, b = models["ckpt"].state_dict(), models["folder"].state_dict()
    assert list(a) == list(b) and len(a) == 37
    for k in a:
        assert torch.equal(a[k], b[k]), k
    cfg = models["ckpt"].config
    assert cfg == models["folder"].config
    assert cfg.variant == "v2" and cfg.n_cls_tokens == 5 and cfg.intermediate_size == 256
    assert cfg.num_special_tokens == 36 and cfg.expression_encoder == "scale_adapt"
    assert {c.name: c.decode_from for c in cfg.label_columns} == fx["inputs"]["label_decode_from"]
    for m in models.values():
        assert m.pooling == "first_token"
        assert m.label_dict == fx["inputs"]["label_dict"]


def test_v2_checkpoint_keeps_the_pickled_attention_kind(fx):
    raw = load_checkpoint(fx["root"] / "ckpt" / "last.ckpt")
    mc = raw["hyper_parameters"]["model_config"]
    assert mc.cls_path == "bmfm_targets.models.predictive.llama.config.LlamaForMultiTaskConfig"
    assert mc.attention == "flex"  # the str-Enum stand-in keeps the REDUCE argument


@pytest.mark.parametrize(("max_length", "prefix"), CASES)
def test_inputs_are_bit_exact(fx, models, max_length, prefix):
    exp = fx["expected"]
    enc = rna.encode_cells(fx["adata"], models["folder"], padding="max_length", max_length=max_length)
    np.testing.assert_array_equal(enc.genes, exp[prefix + "input_ids_genes"])
    assert enc.expressions.dtype == np.float32
    np.testing.assert_array_equal(enc.expressions.view(np.uint32),
                                  exp[prefix + "input_ids_expressions"].view(np.uint32))
    np.testing.assert_array_equal(enc.attention_mask.astype(np.int64), exp[prefix + "attention_mask"])
    np.testing.assert_array_equal(enc.lengths, exp[prefix + "seq_lengths"])
    # each leading CLS token carries its own code -(id + 1)
    assert enc.expressions[0, :5].tolist() == [-4.0, -6.0, -7.0, -8.0, -9.0]
    # the numpy and the compiled engine agree bit for bit
    match = rna.match_genes(fx["adata"], models["folder"], log_summary=False)
    csr = sp.csr_matrix(fx["adata"].X)
    cls_ids = models["folder"].tokenizer.cls_token_ids(5)
    for engine in ("numpy", "numba"):
        e2 = encode_csr(csr, match.column_token_ids, max_length=max_length, cls_ids=cls_ids,
                        padding="max_length", engine=engine)
        np.testing.assert_array_equal(e2.expressions.view(np.uint32), enc.expressions.view(np.uint32))
        np.testing.assert_array_equal(e2.genes, enc.genes)


def test_scale_adapt_values_follow_the_official_arithmetic(fx, models):
    """float64 log1p(x / (sum + 1) * 1e4), one cast to float32: bit-exact against the recorded
    values, while a float32 pipeline (one ulp off on many values) moves the CLS state by O(1)."""
    enc = rna.encode_cells(fx["adata"], models["folder"], padding="max_length", max_length=2048)
    f32_differs = 0
    for i, cell in enumerate(fx["inputs"]["cells"]):
        want64 = np.asarray(cell["normalised_values_float64"], dtype=np.float64)
        n = len(want64)
        got = enc.expressions[i, 5:5 + n]
        np.testing.assert_array_equal(got.view(np.uint32), want64.astype(np.float32).view(np.uint32))
        counts = np.asarray(cell["raw_counts_after_filter"], dtype=np.float32)
        as_f32 = np.log1p(counts / (counts.sum(dtype=np.float32) + np.float32(1)) * np.float32(1e4))
        f32_differs += int((as_f32.astype(np.float32) != got).sum())
    assert f32_differs > 100  # the test would notice a float32 normalisation
    # the encoder's frequencies are the checkpoint's float32 basis, up to ~8.8e12 rad per unit
    basis = models["folder"].core.encoder.embeddings.expressions_embeddings.basis
    assert basis.dtype == torch.float32 and float(basis.max()) > 8e12
    # one ulp on one value changes that cell's CLS state measurably
    m = models["folder"]
    t = enc.to_torch()
    bumped = t["expressions"].clone()
    bumped[0, 5] = torch.nextafter(bumped[0, 5], torch.tensor(np.inf))
    with torch.no_grad():
        h0 = m.encode(t["genes"], t["expressions"], t["attention_mask"])[0][:, 0]
        h1 = m.encode(t["genes"], bumped, t["attention_mask"])[0][:, 0]
    assert float((h1[0] - h0[0]).abs().max()) > 1e-4
    assert torch.equal(h1[1:], h0[1:])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("max_length", "prefix"), CASES)
def test_every_output_matches(fx, models, layout, max_length, prefix):
    exp, wced = fx["expected"], fx["wced"]
    m = models[layout]
    enc = rna.encode_cells(fx["adata"], m, padding="max_length", max_length=max_length)
    with torch.no_grad():
        out = m(**enc.to_torch(), heads=("labels", "wced"), output_hidden_states=True)

    def close(got, key, ref=exp):
        np.testing.assert_allclose(got.numpy(), ref[prefix + key], atol=TOL, rtol=0, err_msg=key)

    close(out.cls_embedding, "cls_embedding")
    close(out.last_hidden_state[:, :5], "cls_embeddings")
    close(out.pooler_output, "pooler_output")
    assert set(out.label_logits) == set(fx["inputs"]["label_dict"])
    for name, logits in out.label_logits.items():
        close(logits, f"logits_{name}")
    close(out.wced.value, "wced_cls_value", wced)
    close(out.wced.is_zero, "wced_cls_is_zero", wced)
    if not prefix:
        close(out.last_hidden_state, "last_hidden_state")
        # official hidden_states are the block outputs (no embedding output)
        close(torch.stack([h[:, :16] for h in out.hidden_states[1:]]), "hidden_states_first16")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("max_length", "prefix"), CASES)
def test_tl_embed_equals_official_inference(fx, models, layout, max_length, prefix):
    adata = fx["adata"].copy()
    bt.tl.embed(adata, models[layout], max_length=max_length, progress=False)
    np.testing.assert_allclose(adata.obsm["X_bmfm"], fx["expected"][prefix + "inference_api_X_bmfm"],
                               atol=TOL, rtol=0)
    assert adata.uns["X_bmfm"]["params"]["pooling"] == "first_token"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("max_length", "case"), [(1024, "L1024"), (2048, "L2048")])
def test_annotate_names_the_official_classes(fx, models, layout, max_length, case):
    official = fx["inputs"]["official_run"][case]["inference_api_obs"]
    for label in ("cell_type_ontology_term_id", "tissue", "tissue_general"):
        adata = fx["adata"].copy()
        bt.tl.annotate(adata, models[layout], label=label, key_added="pred", min_confidence=0.0,
                       max_length=max_length, progress=False)
        assert adata.obs["pred"].astype(str).tolist() == official[f"bmfm_pred_{label}"], label
        assert list(adata.uns["pred"]["classes"]) == list(fx["inputs"]["label_dict"][label])
