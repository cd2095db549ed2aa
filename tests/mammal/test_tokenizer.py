"""Tokenizer parity with the official ModularTokenizerOp outputs stored in the fixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biomed_toolkit.core.errors import PromptError
from biomed_toolkit.mammal import Tokenizer, prompts

FIELDS = ("input_ids", "attention_mask", "scalars_values", "scalars_valid_mask")


@pytest.mark.parametrize("strict", [True, False])
def test_fixture_ids_masks_scalars_exact(official_tokenizer, cases, expected, strict):
    for case in cases:
        batch = official_tokenizer(case["prompt"], max_seq_len=case["max_seq_len"], strict=strict)
        for field in FIELDS:
            got = getattr(batch, field)[0].numpy()
            want = expected[f"{case['name']}.{field}"]
            assert got.dtype == want.dtype, (case["name"], field)
            np.testing.assert_array_equal(got, want, err_msg=f"{case['name']}.{field}")


def test_batch_of_all_cases_pads_to_longest(official_tokenizer, cases, expected):
    batch = official_tokenizer([c["prompt"] for c in cases])
    assert batch.input_ids.shape[0] == len(cases)
    for i, case in enumerate(cases):
        want = expected[f"{case['name']}.input_ids"]
        n = int(expected[f"{case['name']}.attention_mask"].sum())
        np.testing.assert_array_equal(batch.input_ids[i, :n].numpy(), want[:n])
        assert not batch.attention_mask[i, n:].any()
        assert (batch.input_ids[i, n:] == 1).all()


def test_decode_matches_official(official_tokenizer, cases, expected):
    for case in cases:
        ids = expected[f"{case['name']}.input_ids"]
        assert official_tokenizer.decode(ids) == case["decoded_input"].replace("<PAD>", "")
        assert official_tokenizer.decode(expected[f"{case['name']}.generated_ids"]) == case["decoded_generated"]


def test_unknown_special_token_raises_with_position(official_tokenizer):
    p = "<@TOKENIZER-TYPE=AA><MASK><NOT_A_TOKEN>MKT<EOS>"
    with pytest.raises(PromptError, match=r"unknown special token '<NOT_A_TOKEN>' at character 26"):
        official_tokenizer(p)
    # Official behaviour on request: silently <UNK> (id 0).
    ids = official_tokenizer(p, strict=False).input_ids[0].tolist()
    assert ids == [4, 0, 512, 510, 519, 5]


def test_invalid_residue_and_smiles_raise(official_tokenizer):
    with pytest.raises(PromptError, match=r"invalid residue 'J' at character 28"):
        official_tokenizer("<@TOKENIZER-TYPE=AA><MASK>MKJ<EOS>")
    assert official_tokenizer("<@TOKENIZER-TYPE=AA><MASK>MKJ<EOS>", strict=False).input_ids[0].tolist() == [4, 512, 510, 0, 5]
    with pytest.raises(PromptError, match=r"invalid SMILES character '\?' at character 26"):
        official_tokenizer("<@TOKENIZER-TYPE=SMILES>CC?O<EOS>")
    with pytest.raises(PromptError, match=r"invalid SMILES 'CC\(C'.*at character 26 of the prompt"):
        official_tokenizer("<@TOKENIZER-TYPE=SMILES>CC(C<EOS>")
    assert official_tokenizer("<@TOKENIZER-TYPE=SMILES>CC(C<EOS>", strict=False).input_ids[0, -1].item() == 5


def test_missing_eos_raises(official_tokenizer):
    with pytest.raises(PromptError, match="does not end with <EOS>"):
        official_tokenizer("<@TOKENIZER-TYPE=AA><MASK>MKT")
    with pytest.raises(PromptError, match="prompt 1: .*<EOS>"):
        official_tokenizer(["<@TOKENIZER-TYPE=AA>M<EOS>", "<@TOKENIZER-TYPE=AA>M"])


def test_unknown_tokenizer_type(official_tokenizer):
    with pytest.raises(PromptError, match="unknown tokenizer type 'PROTEIN'"):
        official_tokenizer("<@TOKENIZER-TYPE=PROTEIN>MKT<EOS>")


def test_truncation_and_padding_modes(official_tokenizer):
    p = prompts.ppi("MKTAYIAKQR", "MADQLTEEQI")
    full = official_tokenizer(p)
    n = full.input_ids.shape[1]
    cut = official_tokenizer(p, max_seq_len=10)
    assert cut.input_ids.shape == (1, 10)
    assert torch.equal(cut.input_ids[0], full.input_ids[0, :10])
    padded = official_tokenizer(p, max_seq_len=n + 7)
    assert padded.input_ids.shape == (1, n + 7) and int(padded.attention_mask.sum()) == n
    longest = official_tokenizer([p, "<@TOKENIZER-TYPE=AA>M<EOS>"], max_seq_len=n + 7, padding="longest")
    assert longest.input_ids.shape == (2, n)


def test_scalars_from_python_and_rand_truncation(official_tokenizer):
    p = "<@TOKENIZER-TYPE=AA><MASK><@TOKENIZER-TYPE=SCALARS_FROM_DICT>dose<@TOKENIZER-TYPE=AA>MKT<EOS>"
    b = official_tokenizer(p, scalars={"dose": [0.25, 3.0]})
    assert b.input_ids[0].tolist() == [4, 305, 305, 512, 510, 519, 5]
    assert b.scalars_values[0, 1:3].tolist() == [0.25, 3.0]
    assert b.scalars_valid_mask[0].tolist() == [False, True, True, False, False, False, False]
    with pytest.raises(PromptError, match="names 'dose'"):
        official_tokenizer(p)
    r = official_tokenizer("<@TOKENIZER-TYPE=AA@MAX-LEN=3@TRUNC-MODE=RAND>MKTAYIAK<@TOKENIZER-TYPE=AA><EOS>")
    window = r.input_ids[0, :3].tolist()
    seq = [512, 510, 519, 501, 524, 509, 501, 510]
    assert any(seq[i : i + 3] == window for i in range(len(seq) - 2))


def test_token_breakdown(official_tokenizer, cases, expected):
    case = next(c for c in cases if c["name"] == "dti")
    df = official_tokenizer.token_breakdown(case["prompt"])
    kept = df[~df["truncated"]]
    n = int(expected["dti.attention_mask"].sum())
    assert kept["id"].tolist() == expected["dti.input_ids"][:n].tolist()
    assert kept["position"].tolist() == list(range(n))
    assert set(df["sub_tokenizer"]) == {"AA", "SMILES"}
    assert df["truncated"].sum() == 6  # the protein tail and its <SEQUENCE_NATURAL_END>
    assert df.loc[df["token"] == "<MASK>", "kind"].item() == "special"
    sc = official_tokenizer.token_breakdown(next(c for c in cases if c["name"] == "scalars")["prompt"])
    assert sc.loc[sc["kind"] == "scalar", "scalar"].tolist() == [0.5, 1.5]


def test_save_pretrained_roundtrip(official_tokenizer, cases, tmp_path):
    official_tokenizer.save_pretrained(tmp_path / "tok")
    again = Tokenizer.from_pretrained(tmp_path / "tok")
    for case in cases:
        a = official_tokenizer(case["prompt"], max_seq_len=case["max_seq_len"])
        b = again(case["prompt"], max_seq_len=case["max_seq_len"])
        assert torch.equal(a.input_ids, b.input_ids)


def test_missing_folder_errors(tmp_path):
    with pytest.raises(PromptError, match="config.yaml is missing"):
        Tokenizer.from_pretrained(tmp_path)
