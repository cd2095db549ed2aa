"""Input validation of the public MAMMAL calls (issue #15): valid input accepted, bad input refused
with the package's errors at entry, and fuzz tests that only the package's errors come out.

The fuzz tests (hypothesis) run ``BT_FUZZ_EXAMPLES`` examples per target (default 300, a few
seconds each). A nightly-size run::

    BT_FUZZ_EXAMPLES=10000 python -m pytest tests/mammal/test_validation.py -k fuzz

They use the demo model's tokenizer (shipped in the package) and, when the shared fixture is
there, the official tiny checkpoint's tokenizer.
"""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from biomed_toolkit.core.errors import BiomedToolkitError, InputError, PromptError
from biomed_toolkit.mammal import Tokenizer, prompts

DEMO_TOKENIZER = Path(__file__).resolve().parents[2] / "biomed_toolkit" / "_models" / "mammal_demo" / "tokenizer"
OFFICIAL_TOKENIZER = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "mammal_official_tiny" / "tokenizer"
FUZZ_EXAMPLES = int(os.environ.get("BT_FUZZ_EXAMPLES", "300"))
PROTEIN = "MKTAYIAKQRQISFVKSHFSRQ"
# Valid SMILES the issue found refused: a salt, a dummy atom, a two-digit ring closure.
VALID = ["[Na+].[Cl-]", "*CC", "C%10CC%10"]


@cache
def _demo_tokenizer() -> Tokenizer:
    return Tokenizer.from_pretrained(DEMO_TOKENIZER)


@cache
def _tokenizers() -> tuple[Tokenizer, ...]:
    found = [_demo_tokenizer()]
    if (OFFICIAL_TOKENIZER / "config.yaml").is_file():
        found.append(Tokenizer.from_pretrained(OFFICIAL_TOKENIZER))
    return tuple(found)


@pytest.fixture(scope="module")
def demo_model():
    from biomed_toolkit.mammal import load

    return load(device="cpu")


# ----------------------------------------------------------------------------- 1. valid SMILES


@pytest.mark.parametrize("smiles", VALID)
def test_valid_smiles_pass_every_builder(smiles):
    assert prompts.check_smiles(smiles) == smiles
    for p in (prompts.dti(PROTEIN, smiles), prompts.molecule_property(smiles, "BBBP"), prompts.solubility(smiles),
              prompts.molecule_regression(smiles), prompts.molecule_classification(smiles)):
        assert f"<SEQUENCE_NATURAL_START>{smiles}<SEQUENCE_NATURAL_END>" in p


@pytest.mark.parametrize("smiles", VALID)
def test_valid_smiles_tokenize_like_the_official_tokenizer(smiles):
    """Strict mode accepts them with the official ids: characters outside a vocabulary are <UNK>."""
    for tok in _tokenizers():
        p = prompts.dti(PROTEIN, smiles)
        strict = tok(p).input_ids
        official = tok(p, strict=False).input_ids
        assert strict.tolist() == official.tolist()


def test_small_vocabulary_gap_is_reported_once(bt_log):
    tok = Tokenizer.from_pretrained(DEMO_TOKENIZER)  # a fresh one: nothing reported yet
    assert "a" not in tok._subs["SMILES"].vocab  # the demo vocabulary has no 'a' (of [Na+])
    for _ in range(2):
        tok(prompts.dti(PROTEIN, "[Na+].[Cl-]"))
        tok(prompts.dti(PROTEIN, "CC[Na]"))
    notes = [r.getMessage() for r in bt_log.records if "no token for 'a'" in r.getMessage()]
    assert len(notes) == 1 and "[Na+].[Cl-]" in notes[0] and "<UNK>" in notes[0]


def test_valid_smiles_are_scored_by_predict(demo_model):
    import biomed_toolkit as bt

    out = bt.mammal.predict(demo_model, "dti", {"protein": [PROTEIN] * 3, "smiles": VALID}, progress=False)
    assert out["error"].isna().all(), out["error"].tolist()
    assert np.isfinite(out["prediction"]).all() and out["smiles"].tolist() == VALID


def test_invalid_smiles_positions_count_from_the_smiles():
    tok = _demo_tokenizer()
    p = prompts.dti(PROTEIN, "CCO").replace("CCO", "CC(C")
    start = p.index("CC(C")
    with pytest.raises(PromptError, match=rf"near '\(' at position 2 of the SMILES \(at character {start + 2} of"):
        tok(p)
    p = prompts.dti(PROTEIN, "CCO").replace("CCO", "CC?O")
    start = p.index("CC?O")
    with pytest.raises(PromptError, match=rf"'\?' at character {start + 2} of the prompt, position 2 of the SMILES"):
        tok(p)
    # RDKit stops at a space: "CC O" must not pass as "CC".
    with pytest.raises(PromptError, match="position 2 of the SMILES 'CC O'"):
        tok(prompts.dti(PROTEIN, "CCO").replace("CCO", "CC O"))
    with pytest.raises(PromptError, match=r"near character 2 \('\('\)"):
        prompts.dti(PROTEIN, "CC(C")
    with pytest.raises(PromptError, match="position 2 of SMILES"):
        prompts.solubility("CC\x00O")


# ----------------------------------------------------------------------------- 2. parser and scalars


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "1e3", "12a", "", "0", "9" * 5000, "-1"])
def test_max_len_takes_ascii_digits_only(value):
    with pytest.raises(PromptError, match="MAX-LEN=.* at character 0 must be a positive integer"):
        prompts.parse(f"<@TOKENIZER-TYPE=AA@MAX-LEN={value}>MKT<EOS>")
    assert prompts.parse("<@TOKENIZER-TYPE=AA@MAX-LEN=12>MKT<EOS>").segments[0].max_len == 12


def test_lone_surrogate_is_a_prompt_error():
    with pytest.raises(PromptError, match="character 21"):
        prompts.parse("<@TOKENIZER-TYPE=AA>M\ud800<EOS>")


@pytest.mark.parametrize(
    "values, needle",
    [
        (["abc"], r"value 0 is 'abc' \(str\), not a number"),
        ([1.0, 10**400], r"value 1 is 1000.*must be finite"),
        ([0.5, 1e39], r"value 1 is 1e\+39: beyond the float32 range"),
        ([float("nan")], "value 0 is nan: input scalars must be finite"),
        ([-math.inf], "value 0 is -inf"),
        ("1,2", "must be numbers, got str"),
        ([], "is empty"),
        ([True], r"True \(bool\), not a number"),
        (None, "a number or a list of numbers"),
        ({"a": 1}, "must be numbers, got dict"),
    ],
)
def test_scalars_builder_raises_prompt_errors(values, needle):
    with pytest.raises(PromptError, match=needle):
        prompts.scalars(values)


def test_scalars_builder_accepts_numbers_and_round_trips():
    built = prompts.scalars(np.array([1, 2.5, -3e38], dtype=np.float64))
    seg = prompts.parse(built + "<@TOKENIZER-TYPE=AA><EOS>").segments[0]
    assert seg.scalar_values() == [1.0, 2.5, -3e38]
    assert prompts.scalars(np.float32(0.25)).endswith(">0.25")


@pytest.mark.parametrize(
    "text, offset, needle",
    [
        ("0.5,1e39", 4, r"is 1e\+39: beyond the float32 range"),
        ("0.5,nan", 4, "is not a number"),
        ("inf", 0, "is not a number"),
        ("1,2,1e999", 4, "is inf: input scalars must be finite"),
        ("1_0", 0, "is not a number"),
        ("\u0663", 0, "is not a number"),
    ],
)
def test_scalar_literals_name_the_position(text, offset, needle):
    head = "<@TOKENIZER-TYPE=SCALARS_LITERALS>"
    p = f"{head}{text}<@TOKENIZER-TYPE=AA><EOS>"
    bad = text[offset:].split(",")[0]
    needle = rf"SCALARS_LITERALS value '{bad}' at character {len(head) + offset} {needle}"
    with pytest.raises(PromptError, match=needle):
        prompts.parse(p).segments[0].scalar_values()
    with pytest.raises(PromptError, match=needle):
        _demo_tokenizer()(p)


def test_scalar_literals_before_a_special_token_get_a_hint():
    with pytest.raises(PromptError, match="runs to the next meta token"):
        _demo_tokenizer()("<@TOKENIZER-TYPE=SCALARS_LITERALS>0.5<EOS>")


@pytest.mark.parametrize(
    "value, needle",
    [([1e39], "beyond the float32 range"), ([float("nan")], "must be finite"), (["abc"], "not a number"),
     ("0.5", "must be numbers, got str"), ([], "is empty")],
)
def test_scalars_from_dict_are_checked(value, needle):
    p = "<@TOKENIZER-TYPE=AA><MASK><@TOKENIZER-TYPE=SCALARS_FROM_DICT>dose<@TOKENIZER-TYPE=AA>MKT<EOS>"
    with pytest.raises(PromptError, match=rf"entry 'dose' \(segment at character 61\).*{needle}"):
        _demo_tokenizer()(p, scalars={"dose": value})
    b = _demo_tokenizer()(p, scalars={"dose": np.array([3e38, -1.5])})
    assert b.scalars_values[0, 1:3].tolist() == pytest.approx([3e38, -1.5], rel=1e-6)
    assert np.isfinite(b.scalars_values.numpy()).all()


def test_tokenizer_call_options_are_checked():
    tok = _demo_tokenizer()
    for bad in (-1, 0, 2.5, "8"):
        with pytest.raises(PromptError, match="max_seq_len must be an integer >= 1 or None"):
            tok("<@TOKENIZER-TYPE=AA>MKT<EOS>", max_seq_len=bad)
    with pytest.raises(PromptError, match="prompts must be a str or a list of str"):
        tok(None)
    with pytest.raises(PromptError, match="scalars must be a mapping"):
        tok("<@TOKENIZER-TYPE=AA>MKT<EOS>", scalars=5)


# ----------------------------------------------------------------------------- 3. numeric options at entry


@pytest.mark.parametrize("value", [-1, 0, 2.5, True, "8", None])
def test_predict_refuses_bad_batch_size(demo_model, value):
    import biomed_toolkit as bt

    with pytest.raises(InputError, match=r"mammal.predict: batch_size must be an integer >= 1, got"):
        bt.mammal.predict(demo_model, "dti", {"protein": [PROTEIN], "smiles": ["CCO"]}, batch_size=value)


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("max_new_tokens", 0, "max_new_tokens must be an integer >= 1"),
        ("num_workers", -1, "num_workers must be an integer >= 0"),
        ("num_nodes", 0, "num_nodes must be an integer >= 1"),
        ("prompt_kwargs", {"protein_max_len": -3}, "protein_max_len must be an integer >= 1"),
        ("prompt_kwargs", {"protein_max_len": "abc"}, "protein_max_len must be an integer >= 1"),
        ("prompt_kwargs", {"max_len": 64}, r"no prompt option 'max_len' \(given, or from the model's config.*its options are \['protein_max_len'"),
        ("prompt_kwargs", 5, "prompt_kwargs must be a dict"),
    ],
)
def test_predict_refuses_bad_options(demo_model, option, value, needle):
    import biomed_toolkit as bt

    with pytest.raises(InputError, match=needle):
        bt.mammal.predict(demo_model, "dti", {"protein": [PROTEIN], "smiles": ["CCO"]}, **{option: value})


def test_predict_refuses_columns_of_different_lengths(demo_model):
    import biomed_toolkit as bt

    with pytest.raises(InputError, match=r"different lengths \{'protein': 1, 'smiles': 2\}"):
        bt.mammal.predict(demo_model, "dti", {"protein": [PROTEIN], "smiles": ["CCO", "CCN"]})


def test_generate_and_builders_refuse_bad_counts(demo_model):
    with pytest.raises(InputError, match="MammalModel.generate: max_new_tokens"):
        demo_model.generate(prompts.solubility("CCO"), max_new_tokens=0)
    with pytest.raises(InputError, match="MammalModel.generate: num_beams"):
        demo_model.generate(prompts.solubility("CCO"), num_beams=-2)
    with pytest.raises(PromptError, match="prompts.dti: smiles_max_len must be an integer >= 1"):
        prompts.dti(PROTEIN, "CCO", smiles_max_len="abc")
    with pytest.raises(PromptError, match="prompts.molecule_property: max_len"):
        prompts.molecule_property("CCO", "BBBP", max_len=0)
    with pytest.raises(PromptError, match="prompts.rank_genes: n_bins"):
        prompts.rank_genes([1.0, 2.0], ["A", "B"], n_bins=0)
    with pytest.raises(PromptError, match="prompts.cell_type: max_genes"):
        prompts.cell_type(["A", "B"], max_genes=-1)  # genes[:-1] silently dropped the last gene


def test_other_public_counts_are_checked(demo_model):
    from biomed_toolkit.mammal.baselines import morgan
    from biomed_toolkit.mammal.widgets import DrugTargetExplorer

    with pytest.raises(InputError, match="baselines.morgan: n_bits must be an integer >= 1"):
        morgan(["CCO"], n_bits=0)
    with pytest.raises(InputError, match="baselines.morgan: radius must be an integer >= 0"):
        morgan(["CCO"], radius=-1)
    tok = _demo_tokenizer()
    with pytest.raises(PromptError, match="Tokenizer.pad: nothing to pad"):
        tok.pad([])
    with pytest.raises(PromptError, match="Tokenizer.pad: max_seq_len"):
        tok.pad([tok.encode_one("<@TOKENIZER-TYPE=AA>MKT<EOS>")], max_seq_len=-1)
    with pytest.raises(InputError, match="DrugTargetExplorer: batch_size must be an integer >= 1"):
        DrugTargetExplorer(demo_model, batch_size=0)


def test_screen_file_refuses_bad_options_before_writing(demo_model, tmp_path):
    from biomed_toolkit.mammal.screening import ScreenResult, screen_file

    lib = tmp_path / "lib.smi"
    lib.write_text("CCO\nCCN\n")
    for option, value in (("chunk_size", 0), ("batch_size", -1), ("num_workers", -1),
                          ("prompt_kwargs", {"smiles_max_len": 0})):
        out = tmp_path / f"out_{option}"
        with pytest.raises(InputError, match=option if option != "prompt_kwargs" else "smiles_max_len"):
            screen_file(demo_model, PROTEIN, lib, out, **{option: value})
        assert not out.exists()
    with pytest.raises(InputError, match="ScreenResult.top: k must be an integer >= 1"):
        ScreenResult(tmp_path, 0, 0, []).top(0)


@pytest.mark.parametrize(
    "option, value",
    [("batch_size", 0), ("max_epochs", -1), ("lora_rank", 0), ("learning_rate", float("nan")),
     ("learning_rate", -1e-3), ("max_seq_len", 0), ("seed", -1), ("fractions", (0.8, "a", 0.1)),
     ("prompt_kwargs", {"max_len": 0})],
)
def test_finetune_refuses_bad_options(demo_model, option, value):
    from biomed_toolkit.mammal import finetune

    table = pd.DataFrame({"smiles": ["CCO", "CCN", "CCC", "CCCl"] * 5, "y": np.arange(20.0)})
    with pytest.raises(InputError, match=option if option != "prompt_kwargs" else "max_len"):
        finetune(demo_model, "molecule_regression", table, **{option: value})


def test_finetune_refuses_a_non_numeric_target_and_a_list_table(demo_model):
    from biomed_toolkit.mammal import finetune

    table = pd.DataFrame({"smiles": ["CCO", "CCN"] * 5, "y": ["high", "low"] * 5})
    with pytest.raises(InputError, match="target column 'y' must hold numbers"):
        finetune(demo_model, "molecule_regression", table)
    with pytest.raises(InputError, match="table must be a pandas DataFrame"):
        finetune(demo_model, "molecule_regression", [("CCO", 1.0)])


# ----------------------------------------------------------------------------- 4. virtual_screen


def test_virtual_screen_refuses_a_string_and_bad_top_k(demo_model):
    import biomed_toolkit as bt

    with pytest.raises(InputError, match=r"got the single string 'CCO'.*pass \['CCO'\] for one item"):
        bt.mammal.virtual_screen(demo_model, PROTEIN, "CCO")
    with pytest.raises(InputError, match="smiles_list must be a list"):
        bt.mammal.virtual_screen(demo_model, PROTEIN, 5)
    for k in (-1, 0, 1.5, "3"):
        with pytest.raises(InputError, match="top_k must be an integer >= 1 or None"):
            bt.mammal.virtual_screen(demo_model, PROTEIN, ["CCO", "CCN", "CCC"], top_k=k)
    with pytest.raises(InputError, match="virtual_screen: batch_size"):
        bt.mammal.virtual_screen(demo_model, PROTEIN, ["CCO"], batch_size=-1)
    hits = bt.mammal.virtual_screen(demo_model, PROTEIN, ("CCO", "CCN", "CCC"), top_k=2, progress=False)
    assert hits["rank"].tolist() == [1, 2] and set(hits["smiles"]) <= {"CCO", "CCN", "CCC"}
    full = bt.mammal.virtual_screen(demo_model, PROTEIN, pd.Series(["CCO", "CCN", "CCC"]), progress=False)
    assert len(full) == 3 and full["prediction"].is_monotonic_decreasing


# ----------------------------------------------------------------------------- 5. fuzz


def _fuzz(**kwargs):
    from hypothesis import HealthCheck, settings

    return settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], **kwargs)


def _options_strategy():
    """The ``@KEY=VALUE`` tail of a meta token, with fuzzed keys and values."""
    from hypothesis import strategies as st

    option_value = st.one_of(
        st.sampled_from(["12", "0", "\u00b2", "\u0661\u0662", "1\u00b2", "1e3", "", "-1", "9" * 12, " 5", "RAND"]),
        # ASCII digits mixed with other Unicode digits: superscripts, Arabic-Indic, Devanagari, a fraction
        st.text(alphabet="0123456789\u00b2\u00b3\u00b9\u2075\u0663\u0968\u00bd-+.e ", min_size=1, max_size=4),
        st.text(max_size=3),
        st.integers(min_value=-5, max_value=10**12).map(str), st.sampled_from(["RIGHT", "RAND", "rand", "LEFT"]),
    )
    option = st.tuples(st.sampled_from(["MAX-LEN", "TRUNC-MODE", "max-len", "FOO"]), option_value)
    return st.lists(option, min_size=1, max_size=2).map(lambda opts: "".join(f"@{k}={v}" for k, v in opts))


def _prompt_strategy():
    """Prompts made of meta tokens (with fuzzed options), special tokens, residues, SMILES, numbers and noise."""
    from hypothesis import strategies as st

    meta = st.builds(
        lambda name, opts, close: f"<@TOKENIZER-TYPE={name}{opts}{close}",
        st.sampled_from(["AA", "SMILES", "SCALARS_LITERALS", "SCALARS_FROM_DICT", "GENE", "NOPE", "aa", ""]),
        _options_strategy(), st.sampled_from([">", ">", ">", "", "<"]),
    )
    pieces = st.sampled_from([
        "<@", "<", ">", "@", "=", ",", "<EOS>", "<MASK>", "<SEQUENCE_NATURAL_START>", "<SEQUENCE_NATURAL_END>",
        "<MOLECULAR_ENTITY>", "<NOT_A_TOKEN>", "MKTAYIAK", "CCO", "[Na+]", "*", "%10", "c1ccccc1", "C(", "0.5",
        "1e39", "nan", "-", "\u00b2", "\u0663", "12", "[CD3E]", "dose", " ", "\t", "\x00", "\u00e9",
    ])
    return st.lists(st.one_of(meta, pieces, st.text(max_size=4)), max_size=12).map("".join)


def test_fuzz_prompt_parser():
    from hypothesis import given

    @_fuzz()
    @given(_prompt_strategy(), _options_strategy())
    def check(text, options):
        for prompt in (text, "<@TOKENIZER-TYPE=AA>" + text, f"<@TOKENIZER-TYPE=AA{options}>MKT<EOS>"):
            try:
                parsed = prompts.parse(prompt)
            except PromptError:
                continue
            for s in parsed.segments:
                assert prompt[s.start : s.start + len(s.text)] == s.text
                assert s.max_len is None or s.max_len >= 1

    check()


def test_fuzz_scalar_builders():
    from hypothesis import given
    from hypothesis import strategies as st

    value = st.one_of(st.floats(), st.floats(width=32), st.integers(min_value=-(10**60), max_value=10**60),
                      st.booleans(), st.none(), st.text(max_size=5))
    values = st.one_of(st.lists(value, max_size=6), value, st.text(max_size=8))

    @_fuzz()
    @given(values, st.text(alphabet="0123456789.eE+-, nainf_\u00b2<>", max_size=20))
    def check(vals, literal):
        try:
            built = prompts.scalars(vals)
        except PromptError:
            pass
        else:
            got = prompts.parse(built + "<@TOKENIZER-TYPE=AA><EOS>").segments[0].scalar_values()
            want = [float(v) for v in (vals if isinstance(vals, list) else [vals])]
            assert got == want and all(abs(v) <= prompts.FLOAT32_MAX for v in got)
        try:
            out = prompts.parse_scalar_literals(literal, 7)
        except PromptError:
            pass
        else:
            assert all(math.isfinite(v) and abs(v) <= prompts.FLOAT32_MAX for v in out)
        seg = prompts.parse("<@TOKENIZER-TYPE=SCALARS_FROM_DICT>x<@TOKENIZER-TYPE=AA><EOS>").segments[0]
        try:
            out = seg.scalar_values({"x": vals})
        except PromptError:
            pass
        else:
            assert all(math.isfinite(v) and abs(v) <= prompts.FLOAT32_MAX for v in out)

    check()


def test_fuzz_tokenizer():
    from hypothesis import given
    from hypothesis import strategies as st

    smiles_text = st.text(alphabet="CNOcn()[]=#+-.%*123456789@/\\aHlS<> ?", max_size=16)
    built = st.builds(lambda s: prompts.dti(PROTEIN, "CCO").replace("CCO", s) if s else "", smiles_text)
    literals = st.lists(st.one_of(st.floats(), st.integers(-(10**40), 10**40)), min_size=1, max_size=3).map(
        lambda v: "<@TOKENIZER-TYPE=AA><MASK><@TOKENIZER-TYPE=SCALARS_LITERALS>" + ",".join(map(str, v))
        + "<@TOKENIZER-TYPE=AA>MKT<EOS>")
    from_dict = st.just("<@TOKENIZER-TYPE=AA><MASK><@TOKENIZER-TYPE=SCALARS_FROM_DICT>dose<@TOKENIZER-TYPE=AA>MKT<EOS>")
    any_prompt = st.one_of(built, literals, from_dict,
                           _prompt_strategy().map(lambda t: "<@TOKENIZER-TYPE=AA>" + t + "<EOS>"), _prompt_strategy())
    scalars = st.one_of(st.none(), st.dictionaries(st.sampled_from(["dose", "x"]),
                                                   st.lists(st.floats(), max_size=3), min_size=1, max_size=2))

    @_fuzz()
    @given(any_prompt, scalars, st.sampled_from(range(len(_tokenizers()))), st.one_of(st.none(), st.integers(-2, 40)))
    def check(prompt, sc, which, max_seq_len):
        tok = _tokenizers()[which]
        try:
            batch = tok(prompt, scalars=sc, max_seq_len=max_seq_len)
        except BiomedToolkitError as exc:
            assert isinstance(exc, PromptError), type(exc)
            return
        assert batch.input_ids.shape[0] == 1
        assert np.isfinite(batch.scalars_values.numpy()).all()
        # strict mode refuses or agrees with the official behaviour; it never changes ids
        assert tok(prompt, scalars=sc, max_seq_len=max_seq_len, strict=False).input_ids.tolist() == \
            batch.input_ids.tolist()

    check()
