"""Parity with the official BMFM-RNA code on the fixture it wrote (checkpoint, inputs, outputs)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import torch

import biomed_toolkit.rna as rna

TOL = 1e-5  # measured: <= 2.2e-6 (WCED), see registry "verified"


def official_fixture(fixtures_dir, name):
    """A fixture written by the official code: its cells, expected outputs and recorded inputs."""
    root = fixtures_dir / name
    if not root.is_dir():
        pytest.skip(f"{name} fixture absent")
    return {
        "root": root,
        "adata": ad.read_h5ad(root / "cells.h5ad"),
        "expected": dict(np.load(root / "expected.npz")),
        "wced": dict(np.load(root / "expected_wced_cls.npz")),
        "inputs": json.loads((root / "inputs.json").read_text()),
    }


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    return official_fixture(fixtures_dir, "bmfm_rna_official_tiny")


@pytest.fixture(scope="module")
def model(fx):
    return rna.load(fx["root"] / "ckpt" / "last.ckpt", device="cpu")


def test_tokenizer_reproduces_recorded_inputs(fx, model):
    enc = rna.encode_cells(fx["adata"], model, padding="max_length", max_length=1024)
    exp = fx["expected"]
    np.testing.assert_array_equal(enc.genes, exp["input_ids_genes"])
    np.testing.assert_array_equal(enc.expressions, exp["input_ids_expressions"])
    np.testing.assert_array_equal(enc.attention_mask.astype(np.int64), exp["attention_mask"])
    np.testing.assert_array_equal(enc.lengths, exp["seq_lengths"])
    for i, cell in enumerate(fx["inputs"]["cells"]):
        n = len(cell["genes_after_filtering"])
        assert model.tokenizer.decode(enc.genes[i, 1:n + 1]) == cell["genes_after_filtering"]
        # float64 values of the official pipeline, cast to float32, exactly
        want = np.asarray(cell["log_normalized_expressions"], dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(enc.expressions[i, 1:n + 1], want)


def test_gene_match_report_on_fixture(fx, model):
    rep = rna.match_genes(fx["adata"], model)
    assert rep.n_matched == 35 and rep.n_genes == 40
    assert rep.unmatched == ["NOT_A_GENE_XYZ"]
    assert sorted(rep.not_protein_coding) == ["MALAT1", "NEAT1", "SNHG1", "XIST"]
    counts = np.asarray(fx["inputs"]["raw_counts_dense_cells_by_genes"], dtype=float)
    kept = rep.column_token_ids >= 0
    assert rep.fraction_counts_covered == pytest.approx(counts[:, kept].sum() / counts.sum())
    assert rep.empty_cells == []
    assert "matched 35/40" in rep.summary()
    assert "NOT_A_GENE_XYZ" in rep._repr_html_()


def test_forward_matches_official_outputs(fx, model):
    exp, wced = fx["expected"], fx["wced"]
    enc = rna.encode_cells(fx["adata"], model, padding="max_length")
    with torch.no_grad():
        out = model(**enc.to_torch(), heads=("labels", "wced"), output_hidden_states=True)
    np.testing.assert_allclose(out.cls_embedding.numpy(), exp["cls_embedding"], atol=TOL, rtol=0)
    np.testing.assert_allclose(out.pooler_output.numpy(), exp["pooler_output"], atol=TOL, rtol=0)
    hs = np.stack([h[:, :28].numpy() for h in out.hidden_states])
    np.testing.assert_allclose(hs, exp["hidden_states_used_positions"], atol=TOL, rtol=0)
    assert set(out.label_logits) == set(fx["inputs"]["label_names_in_state_dict_order"])
    for name, logits in out.label_logits.items():
        np.testing.assert_allclose(logits.numpy(), exp[f"logits_{name}"], atol=TOL, rtol=0)
    np.testing.assert_allclose(out.wced.value.numpy(), wced["wced_cls_value"], atol=TOL, rtol=0)
    np.testing.assert_allclose(out.wced.is_zero.numpy(), wced["wced_cls_is_zero"], atol=TOL, rtol=0)
    sub = exp["wced_subset_vocab_ids"]
    np.testing.assert_allclose(out.wced.value.numpy()[:, sub], exp["wced_subset_used_positions"][:, 0, :, 0],
                               atol=TOL, rtol=0)


def test_embed_cells_matches_official_inference_api(fx, model):
    X, report = rna.embed_cells(model, fx["adata"], progress=False)
    assert model.pooling == "first_token"
    np.testing.assert_allclose(X, fx["expected"]["inference_api_X_bmfm"], atol=TOL, rtol=0)
    assert report.n_matched == 35
    # chunk- and batch-invariant, bit for bit
    X2, _ = rna.embed_cells(model, fx["adata"], chunk_size=2, batch_size=1, progress=False)
    np.testing.assert_array_equal(X, X2)


def test_predict_labels_matches_official_predictions(fx, model):
    out = rna.predict_labels(model, fx["adata"], progress=False)
    assert {"cell_type", "tissue", "tissue_general"} <= set(out)
    assert "donor_id" not in out  # adversarial head skipped, as the official inference does
    for label, obs_key in (("cell_type", "bmfm_pred_cell_type"), ("tissue", "bmfm_pred_tissue"),
                           ("tissue_general", "bmfm_pred_tissue_general")):
        probs, names = out[label]
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        pred = [names[i] for i in probs.argmax(1)]
        assert pred == fx["inputs"]["inference_api_obs"][obs_key]
        logits = torch.from_numpy(fx["expected"][f"logits_{label}"])
        np.testing.assert_allclose(probs, torch.softmax(logits, -1).numpy(), atol=TOL)


def test_save_pretrained_round_trip_bit_identical(fx, model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    back = rna.load(tmp_path / "m", device="cpu")
    a, b = model.state_dict(), back.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert back.label_dict == model.label_dict and back.pooling == "first_token"
    assert back.tokenizer.vocab_size == model.tokenizer.vocab_size
    assert back.config == model.config
    # and the saved folder saves to identical bytes again
    back.save_pretrained(tmp_path / "m2")
    for rel in ("config.json", "model.safetensors", "label_dict.json", "tokenizers/genes/tokenizer.json"):
        assert (tmp_path / "m" / rel).read_bytes() == (tmp_path / "m2" / rel).read_bytes(), rel
    X1, _ = rna.embed_cells(model, fx["adata"], progress=False)
    X2, _ = rna.embed_cells(back, fx["adata"], progress=False)
    np.testing.assert_array_equal(X1, X2)


def test_state_dict_names_are_official(fx, model):
    manifest = json.loads((fx["root"] / "state_dict_manifest.json").read_text())
    official = [t["key"][len("model."):] for t in manifest["tensors"]]
    assert list(model.state_dict()) == official
    sd = model.state_dict()
    for t in manifest["tensors"]:
        assert list(sd[t["key"][len("model."):]].shape) == t["shape"]
