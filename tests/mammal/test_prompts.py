"""Prompt parsing and builders (no fixture needed)."""

from __future__ import annotations

import pytest

from biomed_toolkit.core.errors import PromptError
from biomed_toolkit.mammal import prompts


def test_parse_meta_tokens_and_options():
    p = prompts.dti("MKTAYIAKQR", "CC(=O)Oc1ccccc1C(=O)O", protein_max_len=20, smiles_max_len=32)
    parsed = prompts.parse(p)
    assert [s.tokenizer_type for s in parsed.segments] == ["AA", "AA", "SMILES"]
    assert [s.max_len for s in parsed.segments] == [None, 20, 32]
    assert parsed.segments[0].text == "<MASK>"
    # Segment offsets point into the prompt.
    for s in parsed.segments:
        assert p[s.start : s.start + len(s.text)] == s.text
    text = repr(parsed)
    assert "SMILES" in text and "max_len=32" in text


def test_parse_trunc_mode_and_scalars():
    parsed = prompts.parse("<@TOKENIZER-TYPE=AA@MAX-LEN=4@TRUNC-MODE=RAND>MKTAYI<@TOKENIZER-TYPE=SCALARS_LITERALS>0.5,-2e-1<EOS>")
    assert parsed.segments[0].trunc_mode == "RAND"
    seg = parsed.segments[1]
    assert seg.is_scalar
    # The <EOS> belongs to the scalar segment's text in the raw grammar; literals exclude specials.
    assert prompts.parse_scalar_literals("0.5,-2e-1") == [0.5, -0.2]


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("MKT<EOS>", "must start with a meta token"),
        ("<@TOKENIZER-TYPE=AA@MAX-LEN=0>M<EOS>", "MAX-LEN"),
        ("<@TOKENIZER-TYPE=AA@TRUNC-MODE=LEFT>M<EOS>", "TRUNC-MODE"),
        ("<@TOKENIZER-TYPE=AA>M<@TOKENIZER_TYPE=AA>K<EOS>", "malformed meta token"),
    ],
)
def test_parse_errors(bad, needle):
    with pytest.raises(PromptError, match=needle):
        prompts.parse(bad)


def test_invalid_residue_named_with_position():
    with pytest.raises(PromptError, match=r"'J' at position 3"):
        prompts.ppi("MKTJA", "MAD")
    with pytest.raises(PromptError, match=r"'k' at position 1.*upper case"):
        prompts.tcr_epitope("MkT", "GILGFVFTL")


def test_invalid_smiles_named_with_position():
    with pytest.raises(PromptError, match=r"near character 2 \('X'\)"):
        prompts.dti("MKT", "CCXC")
    with pytest.raises(PromptError, match="extra open parentheses"):
        prompts.molecule_property("CC(C", "BBBP")
    with pytest.raises(PromptError, match="unknown molecule property task"):
        prompts.molecule_property("CCO", "NOT_A_TASK")


def test_builders_match_official_templates(cases):
    by_name = {c["name"]: c["prompt"] for c in cases}
    assert prompts.ppi("MADQLTEEQIAEFKEAFSLF", "MSSKLLLAGLDIERVLAEKN") == by_name["ppi"]
    assert (
        prompts.dti("MKTAYIAKQRQISFVKSHFSRQ", "CC(=O)Oc1ccccc1C(=O)O", protein_max_len=20, smiles_max_len=32)
        == by_name["dti"]
    )
    assert prompts.molecule_property("CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "bbbp") == by_name["bbbp"]


def test_cell_type_from_genes_and_anndata():
    import anndata as ad
    import numpy as np

    assert prompts.cell_type(["CD3E", "MS4A1"]).endswith("[CD3E][MS4A1]<EOS>")
    X = np.array([[0.0, 5.0, 1.0, 5.0], [2.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    adata = ad.AnnData(X)
    adata.var_names = ["GA", "GB", "GC", "GD"]
    out = prompts.cell_type(adata)
    assert out[0].endswith("[GB][GD][GC]<EOS>")  # top bin first, ties by name, zero dropped
    assert out[1].endswith("[GA]<EOS>")
    assert prompts.cell_type(adata, cell=0) == out[0]
    assert adata.X[0, 0] == 0.0  # input untouched
    with pytest.raises(PromptError, match="invalid gene symbol"):
        prompts.cell_type(["CD3E", "bad gene"])
