"""Small models built in tests (no download, no training)."""

from __future__ import annotations

import torch


def fresh_model(genes, seed=0):
    """A tiny randomly initialised v1 model over ``genes``, ready for bt.tl tools."""
    from biomed_toolkit.core.hub import ModelCard
    from biomed_toolkit.rna.configuration import BmfmRnaConfig
    from biomed_toolkit.rna.modeling import BmfmRnaModel
    from biomed_toolkit.rna.tokenize import GeneTokenizer

    tok = GeneTokenizer.from_genes(list(genes))
    torch.manual_seed(seed)
    cfg = BmfmRnaConfig.v1(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, limit_genes=None)
    model = BmfmRnaModel(cfg).eval()
    model.tokenizer = tok
    model.card = ModelCard("tiny-test", "bmfm-rna", "test", None)
    model.pooling = "first_token"
    return model
