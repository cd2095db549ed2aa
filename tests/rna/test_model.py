"""BmfmRnaModel v1/v2: heads, invariances, gradient reversal, config round trip."""

from __future__ import annotations

import pytest
import torch

from biomed_toolkit.rna.configuration import BmfmRnaConfig, LabelColumn
from biomed_toolkit.rna.modeling import BmfmRnaModel

WCED = {"expressions": {"wced": {"vocab_field": "genes", "logit_outputs": ["mse", "is_zero_bce"]}}}
MLM = {"genes": {"token_scores": {}}, "expressions": {"regression": {}, "is_zero": {}}}
LABELS = [LabelColumn("cell_type", 4), LabelColumn("donor_id", 3, gradient_reversal_coefficient=2.0)]


def small(variant: str, decode=WCED, **kw) -> BmfmRnaModel:
    torch.manual_seed(0)
    maker = BmfmRnaConfig.v1 if variant == "v1" else BmfmRnaConfig.v2
    cfg = maker(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                decode_modes=decode, label_columns=LABELS, **({"intermediate_size": 64} if variant == "v1" else {}), **kw)
    m = BmfmRnaModel(cfg).eval()
    with torch.no_grad():  # larger random weights than the init so outputs depend on inputs
        for p in m.parameters():
            if p.ndim == 2:
                p.normal_(0, 1 / p.shape[1] ** 0.5)
    return m


def batch(n_cls=1, n_genes=(6, 3), width=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    genes = torch.full((len(n_genes), width), 2, dtype=torch.long)
    expr = torch.full((len(n_genes), width), -3.0)
    mask = torch.zeros(len(n_genes), width, dtype=torch.bool)
    for i, n in enumerate(n_genes):
        genes[i, :n_cls] = 3
        expr[i, :n_cls] = -4.0
        genes[i, n_cls:n_cls + n] = torch.randperm(40, generator=g)[:n] + 5
        expr[i, n_cls:n_cls + n] = torch.rand(n, generator=g) * 5 + 0.5
        genes[i, n_cls + n] = 1
        expr[i, n_cls + n] = -2.0
        mask[i, :n_cls + n + 1] = True
    return genes, expr, mask


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_heads_only_when_asked(variant):
    m = small(variant)
    n_cls = m.config.n_cls_tokens
    g, x, a = batch(n_cls)
    out = m(g, x, a)  # default: label heads + CLS-only WCED, never the per-position MLM decoder
    assert out.last_hidden_state.shape == (2, 16, 32) and out.pooler_output.shape == (2, 32)
    assert out.wced.value.shape == (2, 50) and out.mlm_logits is None
    assert set(out.label_logits) == {"cell_type", "donor_id"}
    bare = m(g, x, a, heads=None)
    assert bare.wced is None and bare.label_logits == {} and bare.mlm_logits is None
    assert out.label_logits["cell_type"].shape == (2, 4)
    out = m(g, x, a, heads=("wced",))
    assert out.wced.value.shape == (2, 50) and out.wced.is_zero.shape == (2, 50)
    assert out.label_logits == {}
    # WCED decodes the CLS state only
    torch.testing.assert_close(m.decode_wced(out.cls_embedding).value, out.wced.value)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_padding_and_gene_order_do_not_change_cell_outputs(variant):
    m = small(variant)
    n_cls = m.config.n_cls_tokens
    g, x, a = batch(n_cls, width=16)
    g2, x2, a2 = batch(n_cls, width=40)
    with torch.no_grad():
        o1, o2 = m(g, x, a), m(g2, x2, a2)
        torch.testing.assert_close(o1.cls_embedding, o2.cls_embedding, atol=1e-5, rtol=0)
        # no position embeddings: permuting the genes leaves the CLS unchanged
        perm = torch.arange(16)
        perm[n_cls:n_cls + 6] = perm[n_cls:n_cls + 6].flip(0)
        o3 = m(g[:, perm], x[:, perm], a[:, perm])
        torch.testing.assert_close(o1.cls_embedding[0], o3.cls_embedding[0], atol=1e-5, rtol=0)
        # but expression values matter
        x4 = x.clone()
        x4[0, n_cls] += 1.0
        assert (m(g, x4, a).cls_embedding[0] - o1.cls_embedding[0]).abs().max() > 1e-3


def test_zero_and_special_values_use_special_embeddings():
    m = small("v1")
    enc = m.scbert.embeddings.expressions_embeddings
    x = torch.tensor([[0.0, -5.0, 1.0]])
    h = enc(x)
    table = enc.special_token_embeddings.weight
    expect0 = enc.dense_2(enc.activation(table[-1]))
    expect_mask = enc.dense_2(enc.activation(table[4]))
    torch.testing.assert_close(h[0, 0], expect0)
    torch.testing.assert_close(h[0, 1], expect_mask)


def test_gradient_reversal_flips_gradient_of_adversarial_head():
    m = small("v1").train()
    g, x, a = batch()
    pooled = m(g, x, a).pooler_output.detach().requires_grad_(True)
    heads = m.cls.label_predictions.predictions.label_decoders
    heads["donor_id"](pooled).sum().backward()
    grad_rev = pooled.grad.clone()
    pooled.grad = None
    heads["donor_id"].decoder[1](pooled).sum().backward()
    torch.testing.assert_close(grad_rev, -2.0 * pooled.grad)


def test_mlm_heads_and_state_dict_names():
    m = small("v1", decode=MLM)
    g, x, a = batch()
    out = m(g, x, a, heads=("mlm", "labels"))
    assert out.mlm_logits["genes_token_scores"].shape == (2, 16, 50)
    assert out.mlm_logits["expressions_regression"].shape == (2, 16)
    names = set(m.state_dict())
    assert "cls.predictions.predictions.decoder.field_decoders.genes_token_scores.weight" in names
    assert "cls.label_predictions.predictions.label_decoders.donor_id.decoder.1.weight" in names
    assert "cls.label_predictions.predictions.label_decoders.cell_type.decoder.weight" in names
    v2 = set(small("v2").state_dict())
    assert "core.encoder.blocks.0.rms_1.scale" not in v2  # first block has no first norm
    for k in ("core.encoder.blocks.1.rms_1.scale", "core.encoder.blocks.0.attn.c_attn.weight",
              "core.encoder.blocks.0.mlp.c_fc2.weight", "core.pooler.dense.weight",
              "core.encoder.embeddings.expressions_embeddings.dense.weight"):
        assert k in v2
    assert not any(k.endswith(".bias") for k in v2 if ".blocks." in k)


def test_config_round_trip_and_presets():
    cfg = small("v2").config
    assert cfg.n_cls_tokens == 5 and cfg.intermediate_size == 256  # int(8*32/3) -> 256
    assert BmfmRnaConfig.v2().intermediate_size == 1024
    again = BmfmRnaConfig.from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ValueError, match="variant"):
        BmfmRnaConfig(variant="v3")


def test_label_heads_decode_from_their_token_position():
    """v2 heads with ``decode_from`` read the raw hidden state there; the others the pooler."""
    labels = [LabelColumn("cell_type", 4, decode_from=1), LabelColumn("tissue", 3, decode_from=2),
              LabelColumn("batch", 2)]
    torch.manual_seed(0)
    cfg = BmfmRnaConfig.v2(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           decode_modes=WCED, label_columns=labels)
    m = BmfmRnaModel(cfg).eval()
    g, x, a = batch(n_cls=5)
    with torch.no_grad():
        out = m(g, x, a)
        decs = m.cls.label_predictions.predictions.label_decoders
        h = out.last_hidden_state
        torch.testing.assert_close(out.label_logits["cell_type"], decs["cell_type"](h[:, 1]), rtol=0, atol=0)
        torch.testing.assert_close(out.label_logits["tissue"], decs["tissue"](h[:, 2]), rtol=0, atol=0)
        torch.testing.assert_close(out.label_logits["batch"], decs["batch"](out.pooler_output), rtol=0, atol=0)
        assert not torch.allclose(decs["cell_type"](h[:, 1]), decs["cell_type"](out.pooler_output))
        # the same logits without a precomputed pooler output
        again = m.classify(h, ["batch", "cell_type"])
        assert torch.equal(again["batch"], out.label_logits["batch"])
    with pytest.raises(ValueError, match="position 5"):
        BmfmRnaConfig.v2(vocab_size=50, hidden_size=32, num_attention_heads=4,
                         label_columns=[LabelColumn("x", 2, decode_from=5)])


def test_each_leading_cls_token_carries_its_own_code():
    import numpy as np
    import scipy.sparse as sp

    from biomed_toolkit.rna.tokenize import encode_csr, special_values

    assert special_values([3, 5, 6, 7, 8]).tolist() == [-4.0, -6.0, -7.0, -8.0, -9.0]
    csr = sp.csr_matrix(np.array([[2.0, 0.0, 5.0], [1.0, 1.0, 0.0]]))
    cols = np.array([40, 41, 42])
    for engine in ("numpy", "numba"):
        enc = encode_csr(csr, cols, max_length=12, cls_ids=(3, 5, 6, 7, 8), engine=engine)
        assert enc.genes[:, :5].tolist() == [[3, 5, 6, 7, 8]] * 2
        assert enc.expressions[:, :5].tolist() == [[-4.0, -6.0, -7.0, -8.0, -9.0]] * 2
