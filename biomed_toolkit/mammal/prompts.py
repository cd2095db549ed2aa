"""MAMMAL prompt syntax: a parser into segments and builders for the known tasks.

A prompt is a string such as::

    <@TOKENIZER-TYPE=AA><MASK><@TOKENIZER-TYPE=AA@MAX-LEN=1250><MOLECULAR_ENTITY>...<EOS>

Meta tokens ``<@TOKENIZER-TYPE=NAME[@MAX-LEN=n][@TRUNC-MODE=RIGHT|RAND]>`` switch the
sub-tokenizer until the next meta token and produce no token themselves. Every other ``<...>``
is a special token shared by all sub-tokenizers. ``SCALARS_LITERALS`` segments hold
comma-separated numbers (one ``<SCALAR>`` token each); ``SCALARS_FROM_DICT`` segments hold a
name looked up in the ``scalars`` mapping passed to the tokenizer.

Examples
--------
>>> from biomed_toolkit.mammal import prompts
>>> p = prompts.ppi("MADQLTEEQIAEFKEAFSLF", "MSSKLLLAGLDIERVLAEKN")
>>> prompts.parse(p).segments[0].tokenizer_type
'AA'
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from biomed_toolkit.core.errors import PromptError
from biomed_toolkit.core.validation import check_int, short_repr

# The meta token grammar; options are @KEY=VALUE pairs after the tokenizer type.
META_RE = re.compile(r"<@TOKENIZER-TYPE=([A-Za-z0-9_]+)((?:@[A-Za-z_-]+=[^@<>]*)*)>")
SPECIAL_RE = re.compile(r"<[^<>]*>")
_OPTION_RE = re.compile(r"@([A-Za-z_-]+)=([^@<>]*)")

SCALAR_TYPES = ("SCALARS_LITERALS", "SCALARS_FROM_DICT")
# Input scalars become float32 tensors: a larger magnitude would turn into inf (and NaN outputs).
FLOAT32_MAX = 3.4028234663852886e38
# One SCALARS_LITERALS value: a plain ASCII decimal number (no '_', no 'nan' / 'inf').
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
# MAX-LEN values are token counts; more digits than this cannot be a real limit.
_MAX_LEN_DIGITS = 9
TRUNC_MODES = ("RIGHT", "RAND")

# Residue letters of the AA sub-tokenizer (every capital except J): the 20 standard amino
# acids plus X (unknown), B/Z (ambiguous), U (selenocysteine), O (pyrrolysine).
RESIDUES = frozenset("ABCDEFGHIKLMNOPQRSTUVWXYZ")

# Official de-normalisation of the DTI (BindingDB pKd) scalar head.
DTI_PKD_MEAN = 5.79384684128215
DTI_PKD_STD = 1.33808027428196

# Molecule-property task tokens known to the public tokenizer.
MOLECULE_TASKS = (
    "BBBP",
    "TOXICITY",
    "FDA_APPR",
    "HIV_ACTIVITY",
    "SOLUBILITY",
)


@dataclass(frozen=True)
class Segment:
    """One piece of a prompt handled by a single sub-tokenizer.

    Attributes
    ----------
    tokenizer_type
        Sub-tokenizer name (``AA``, ``SMILES``, ``GENE``, ``SCALARS_LITERALS``, ...).
    text
        The raw text of the piece (special tokens included).
    start
        Character offset of ``text`` in the prompt (after the meta token).
    max_len
        ``@MAX-LEN`` of the meta token (truncate this piece to that many tokens), or ``None``.
    trunc_mode
        ``"RIGHT"`` (keep the start) or ``"RAND"`` (random window); ``RIGHT`` by default.
    """

    tokenizer_type: str
    text: str
    start: int
    max_len: int | None = None
    trunc_mode: str = "RIGHT"

    @property
    def is_scalar(self) -> bool:
        return self.tokenizer_type in SCALAR_TYPES

    def pieces(self) -> list[tuple[str, str, int]]:
        """Split into ``(kind, text, char_position)`` with kind ``"special"`` or ``"text"``."""
        out: list[tuple[str, str, int]] = []
        pos = 0
        for m in SPECIAL_RE.finditer(self.text):
            if m.start() > pos:
                out.append(("text", self.text[pos : m.start()], self.start + pos))
            out.append(("special", m.group(0), self.start + m.start()))
            pos = m.end()
        if pos < len(self.text):
            out.append(("text", self.text[pos:], self.start + pos))
        return out

    def scalar_values(self, scalars: dict[str, Any] | None = None) -> list[float]:
        """Values of a scalar segment (literals parsed, or looked up by name in ``scalars``)."""
        if self.tokenizer_type == "SCALARS_LITERALS":
            return parse_scalar_literals(self.text, self.start)
        if self.tokenizer_type == "SCALARS_FROM_DICT":
            key = self.text.strip()
            if scalars is None or key not in scalars:
                known = sorted(scalars) if scalars else []
                raise PromptError(
                    f"SCALARS_FROM_DICT segment at character {self.start} names {key!r}, but no "
                    f"such entry was passed (got {known}); pass scalars={{{key!r}: [..]}}"
                )
            return scalar_list(scalars[key], f"SCALARS_FROM_DICT entry {key!r} (segment at character {self.start})")
        raise PromptError(f"segment {self.tokenizer_type} at character {self.start} holds no scalars")


def scalar_value(value: object, where: str) -> float:
    """One input scalar as a float, refused unless it is a finite number within the float32 range.

    Parameters
    ----------
    value
        A Python / NumPy number or a 0-d array / tensor (strings and booleans are refused).
    where
        What the value is, for the message (``"scalars value 2"``).

    Raises
    ------
    PromptError
        Not a number, NaN / inf, or beyond +-3.4e38 (it would become inf in float32).

    Examples
    --------
    >>> scalar_value(0.5, "value 0")
    0.5
    """
    v = value
    if hasattr(v, "ndim") and getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        v = v.item()  # a 0-d NumPy array or torch tensor
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        raise PromptError(
            f"{where} is {short_repr(value)} ({type(value).__name__}), not a number; pass a float such as 0.5"
        )
    try:
        f = float(v)
    except OverflowError:  # an int with hundreds of digits
        f = math.inf
    if not math.isfinite(f):
        raise PromptError(f"{where} is {short_repr(value)}: input scalars must be finite; drop or replace it")
    if abs(f) > FLOAT32_MAX:
        raise PromptError(
            f"{where} is {short_repr(value)}: beyond the float32 range (+-3.4e38) of MAMMAL's input scalars, it would "
            "become inf; rescale it (e.g. log10)"
        )
    return f


def scalar_list(values: object, where: str) -> list[float]:
    """A number or a sequence / array of numbers as floats, each checked by :func:`scalar_value`.

    Examples
    --------
    >>> scalar_list([1, 2.5], "scalars")
    [1.0, 2.5]
    """
    if isinstance(values, str | bytes | Mapping):
        raise PromptError(
            f"{where} must be numbers, got {type(values).__name__} {short_repr(values)}; pass e.g. [0.5, 1.2]"
        )
    if isinstance(values, numbers.Real) or (hasattr(values, "ndim") and getattr(values, "ndim", None) == 0):
        items: list[object] = [values]
    elif isinstance(values, Iterable):
        items = list(values.ravel()) if hasattr(values, "ravel") else list(values)
    else:
        raise PromptError(f"{where} must be a number or a list of numbers, got {type(values).__name__}")
    if not items:
        raise PromptError(f"{where} is empty; give at least one number")
    return [scalar_value(v, f"{where}, value {i}") for i, v in enumerate(items)]


def parse_scalar_literals(text: str, start: int = 0) -> list[float]:
    """Parse ``"0.5,1.5"`` into floats; raise :class:`PromptError` naming a bad value and its position.

    ``start`` is the character offset of ``text`` in the prompt; positions in messages count from
    the start of the prompt.

    Examples
    --------
    >>> parse_scalar_literals("0.5,-2e-1")
    [0.5, -0.2]
    """
    values: list[float] = []
    pos = 0
    for part in text.split(","):
        s = part.strip()
        where = f"SCALARS_LITERALS value {part!r} at character {start + pos}"
        if not _NUMBER_RE.fullmatch(s):
            hint = (
                "; a SCALARS_LITERALS segment runs to the next meta token: put e.g. <@TOKENIZER-TYPE=AA> "
                "after the numbers, before any <...> token"
                if "<" in part
                else ""
            )
            raise PromptError(
                f"{where} is not a number; write comma-separated decimal numbers such as 0.5,1.2{hint}"
            )
        values.append(scalar_value(float(s), where))
        pos += len(part) + 1
    return values


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt split into :class:`Segment` s (see :func:`parse`)."""

    prompt: str
    segments: tuple[Segment, ...] = field(default_factory=tuple)

    def special_tokens(self) -> list[tuple[str, int]]:
        """All ``<...>`` special tokens with their character positions."""
        return [(t, p) for s in self.segments if not s.is_scalar for k, t, p in s.pieces() if k == "special"]

    def __repr__(self) -> str:
        lines = [f"ParsedPrompt({len(self.segments)} segments, {len(self.prompt)} chars)"]
        for i, s in enumerate(self.segments):
            opts = []
            if s.max_len is not None:
                opts.append(f"max_len={s.max_len}")
            if s.trunc_mode != "RIGHT":
                opts.append(f"trunc={s.trunc_mode}")
            text = s.text if len(s.text) <= 70 else s.text[:40] + " ... " + s.text[-25:]
            lines.append(f"  [{i}] {s.tokenizer_type:<17} {' '.join(opts):<13} @{s.start:<5} {text}")
        return "\n".join(lines)


def parse(prompt: str) -> ParsedPrompt:
    """Split a prompt into segments at its meta tokens.

    Parameters
    ----------
    prompt
        A MAMMAL prompt. It must start with a ``<@TOKENIZER-TYPE=...>`` meta token.

    Returns
    -------
    ParsedPrompt
        ``.segments`` in prompt order; empty segments (two meta tokens in a row) are kept.

    Raises
    ------
    PromptError
        Text before the first meta token, a malformed meta token, a bad ``MAX-LEN`` or an
        unknown ``TRUNC-MODE``.

    Examples
    --------
    >>> parse("<@TOKENIZER-TYPE=AA@MAX-LEN=5>MKT<EOS>").segments[0].max_len
    5
    """
    if not isinstance(prompt, str):
        raise PromptError(f"a prompt must be a str, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot reach the tokenizers library
        raise PromptError(
            f"the prompt holds an invalid character {prompt[exc.start]!r} at character {exc.start} "
            "(a lone surrogate, not text); remove it"
        ) from None
    matches = list(META_RE.finditer(prompt))
    if not matches or matches[0].start() != 0:
        lead = prompt[: matches[0].start()] if matches else prompt
        raise PromptError(
            f"prompt must start with a meta token such as <@TOKENIZER-TYPE=AA>; it starts with "
            f"{lead[:40]!r} at character 0"
        )
    # A "<@" that is not a well-formed meta token is almost always a typo.
    for m in re.finditer(r"<@", prompt):
        if not any(mm.start() == m.start() for mm in matches):
            end = prompt.find(">", m.start())
            bad = prompt[m.start() : end + 1 if end >= 0 else m.start() + 40]
            raise PromptError(
                f"malformed meta token {bad!r} at character {m.start()}; expected "
                "<@TOKENIZER-TYPE=NAME[@MAX-LEN=n][@TRUNC-MODE=RIGHT|RAND]>"
            )
    segments = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(prompt)
        max_len = None
        trunc = "RIGHT"
        for key, value in _OPTION_RE.findall(m.group(2)):
            key = key.upper()
            if key == "MAX-LEN":
                # isdecimal() alone takes non-ASCII digits ('\u0663'); isdigit() even '\u00b2', which int() refuses.
                if not (value.isascii() and value.isdecimal()) or len(value) > _MAX_LEN_DIGITS or int(value) < 1:
                    raise PromptError(
                        f"MAX-LEN={short_repr(value)} at character {m.start()} must be a positive integer written with "
                        f"ASCII digits 0-9 (at most {_MAX_LEN_DIGITS} digits), e.g. @MAX-LEN=256"
                    )
                max_len = int(value)
            elif key == "TRUNC-MODE":
                if value.upper() not in TRUNC_MODES:
                    raise PromptError(
                        f"TRUNC-MODE={value!r} at character {m.start()} is unknown; use one of {TRUNC_MODES}"
                    )
                trunc = value.upper()
            else:
                raise PromptError(
                    f"unknown meta option @{key} at character {m.start()}; known: @MAX-LEN, @TRUNC-MODE"
                )
        segments.append(Segment(m.group(1), prompt[m.end() : end], m.end(), max_len, trunc))
    return ParsedPrompt(prompt, tuple(segments))


# ----------------------------------------------------------------------------- validation


def check_protein(seq: str, *, what: str = "protein") -> str:
    """Return ``seq`` if every character is a residue letter, else raise naming the first bad one.

    Examples
    --------
    >>> check_protein("MKTAYIAK")
    'MKTAYIAK'
    """
    if not isinstance(seq, str) or not seq:
        raise PromptError(f"{what} sequence must be a non-empty string, got {seq!r}")
    for i, c in enumerate(seq):
        if c not in RESIDUES:
            hint = " (use upper case)" if c.upper() in RESIDUES else ""
            raise PromptError(
                f"invalid residue {c!r} at position {i} of the {what} sequence{hint}; "
                f"allowed letters: {''.join(sorted(RESIDUES))}"
            )
    return seq


def check_smiles(smiles: str, *, what: str = "SMILES") -> str:
    """Return ``smiles`` if RDKit parses it, else raise naming the offending character.

    Examples
    --------
    >>> check_smiles("CCO")
    'CCO'
    """
    if not isinstance(smiles, str) or not smiles.strip():
        raise PromptError(f"{what} must be a non-empty string, got {smiles!r}")
    for i, c in enumerate(smiles):
        if c.isspace() or c in "<>" or not c.isascii() or not c.isprintable():
            raise PromptError(
                f"invalid character {c!r} at position {i} of {what} {smiles!r}: a SMILES is printable ASCII "
                "without spaces or <>; remove it"
            )
    problem = smiles_problem(smiles)
    if problem is not None:
        reason, pos = problem
        where = f", near character {pos} ({smiles[pos]!r})" if pos is not None else ""
        raise PromptError(f"invalid {what} {smiles!r}: RDKit cannot parse it ({reason}){where}")
    return smiles


def smiles_problem(smiles: str) -> tuple[str, int | None] | None:
    """``None`` if RDKit parses ``smiles``, else ``(reason, character index or None)``."""
    mol, log = _rdkit_parse(smiles)
    if mol is not None:
        return None
    m = re.search(r"around position (\d+)", log)
    reason = re.search(
        r"(?:SMILES Parse Error: |\] )((?:syntax|extra|unclosed|Can't|Explicit|non-ring|duplicate)[^\n]*)", log
    )
    why = reason.group(1).split(" while parsing")[0].strip() if reason else "unparsable"
    pos = max(0, min(int(m.group(1)) - 1, len(smiles) - 1)) if m else None
    return why, pos


def _rdkit_parse(smiles: str) -> tuple[Any, str]:
    """Parse with RDKit, capturing its log so that errors can be reported with positions."""
    import contextlib
    import io

    from rdkit import Chem, rdBase

    buf = io.StringIO()
    rdBase.LogToPythonStderr()
    with contextlib.redirect_stderr(buf):
        mol = Chem.MolFromSmiles(smiles)
    return mol, buf.getvalue()


# ----------------------------------------------------------------------------- builders


def _max_len(value: object, name: str, builder: str) -> int:
    """A ``@MAX-LEN`` option of a builder: an integer >= 1 (``int("abc")`` would raise raw)."""
    return check_int(value, name, where=f"prompts.{builder}", error=PromptError, example=256)


_PROTEIN = "<MOLECULAR_ENTITY><MOLECULAR_ENTITY_GENERAL_PROTEIN><SEQUENCE_NATURAL_START>{}<SEQUENCE_NATURAL_END>"


def dti(protein: str, smiles: str, *, protein_max_len: int = 1250, smiles_max_len: int = 256) -> str:
    """Drug-target interaction (pKd regression) prompt; the answer is read at ``<MASK>`` (position 0).

    Examples
    --------
    >>> dti("MKTAYIAK", "CCO").startswith("<@TOKENIZER-TYPE=AA><MASK>")
    True
    """
    check_protein(protein, what="target protein")
    check_smiles(smiles, what="drug SMILES")
    return (
        f"<@TOKENIZER-TYPE=AA><MASK><@TOKENIZER-TYPE=AA@MAX-LEN={_max_len(protein_max_len, 'protein_max_len', 'dti')}>"
        + _PROTEIN.format(protein)
        + f"<@TOKENIZER-TYPE=SMILES@MAX-LEN={_max_len(smiles_max_len, 'smiles_max_len', 'dti')}>"
        "<MOLECULAR_ENTITY><MOLECULAR_ENTITY_SMALL_MOLECULE><SEQUENCE_NATURAL_START>"
        f"{smiles}<SEQUENCE_NATURAL_END><EOS>"
    )


def ppi(a: str, b: str) -> str:
    """Protein-protein interaction prompt; a trained model answers ``<SENTINEL_ID_0><1><EOS>`` if they bind.

    Examples
    --------
    >>> ppi("MKT", "MAD").count("<MOLECULAR_ENTITY_GENERAL_PROTEIN>")
    2
    """
    check_protein(a, what="first protein")
    check_protein(b, what="second protein")
    return (
        "<@TOKENIZER-TYPE=AA><BINDING_AFFINITY_CLASS><SENTINEL_ID_0>"
        + _PROTEIN.format(a)
        + _PROTEIN.format(b)
        + "<EOS>"
    )


def molecule_property(smiles: str, task: str, *, max_len: int = 2100) -> str:
    """Molecule property classification prompt (``task`` in BBBP, TOXICITY, FDA_APPR, ...).

    Examples
    --------
    >>> "<BBBP>" in molecule_property("CCO", "bbbp")
    True
    """
    t = str(task).upper()
    if t not in MOLECULE_TASKS:
        raise PromptError(f"unknown molecule property task {task!r}; known: {', '.join(MOLECULE_TASKS)}")
    check_smiles(smiles)
    return (
        f"<@TOKENIZER-TYPE=SMILES><MOLECULAR_ENTITY><MOLECULAR_ENTITY_SMALL_MOLECULE><{t}><SENTINEL_ID_0>"
        f"<@TOKENIZER-TYPE=SMILES@MAX-LEN={_max_len(max_len, 'max_len', 'molecule_property')}><SEQUENCE_NATURAL_START>{smiles}"
        "<SEQUENCE_NATURAL_END><EOS>"
    )


def solubility(smiles: str, *, max_len: int = 256) -> str:
    """Encoder-only solubility regression prompt (scalar head read at ``<MASK>``, position 0).

    Examples
    --------
    >>> solubility("CCO").startswith("<@TOKENIZER-TYPE=SMILES><MASK>")
    True
    """
    check_smiles(smiles)
    return (
        "<@TOKENIZER-TYPE=SMILES><MASK><SOLUBILITY>"
        f"<@TOKENIZER-TYPE=SMILES@MAX-LEN={_max_len(max_len, 'max_len', 'solubility')}>"
        "<MOLECULAR_ENTITY><MOLECULAR_ENTITY_SMALL_MOLECULE><SEQUENCE_NATURAL_START>"
        f"{smiles}<SEQUENCE_NATURAL_END><EOS>"
    )


def molecule_regression(smiles: str, *, max_len: int = 256) -> str:
    """Encoder-only prompt for any scalar property of a molecule (``<REGRESSION>`` task token).

    The scalar head is read at ``<MASK>`` (position 0); fine-tune it on your own values with
    ``bt.mammal.finetune(model, "molecule_regression", table)``.

    Examples
    --------
    >>> molecule_regression("CCO").startswith("<@TOKENIZER-TYPE=SMILES><MASK><REGRESSION>")
    True
    """
    check_smiles(smiles)
    return (
        "<@TOKENIZER-TYPE=SMILES><MASK><REGRESSION>"
        f"<@TOKENIZER-TYPE=SMILES@MAX-LEN={_max_len(max_len, 'max_len', 'molecule_regression')}>"
        "<MOLECULAR_ENTITY><MOLECULAR_ENTITY_SMALL_MOLECULE><SEQUENCE_NATURAL_START>"
        f"{smiles}<SEQUENCE_NATURAL_END><EOS>"
    )


def molecule_classification(smiles: str, *, max_len: int = 2100) -> str:
    """Prompt for any binary label of a molecule (``<BINARY>`` task token, answer ``<0>``/``<1>``).

    Examples
    --------
    >>> "<BINARY><SENTINEL_ID_0>" in molecule_classification("CCO")
    True
    """
    check_smiles(smiles)
    return (
        "<@TOKENIZER-TYPE=SMILES><MOLECULAR_ENTITY><MOLECULAR_ENTITY_SMALL_MOLECULE><BINARY><SENTINEL_ID_0>"
        f"<@TOKENIZER-TYPE=SMILES@MAX-LEN={_max_len(max_len, 'max_len', 'molecule_classification')}><SEQUENCE_NATURAL_START>{smiles}"
        "<SEQUENCE_NATURAL_END><EOS>"
    )


def tcr_epitope(tcr: str, epitope: str) -> str:
    """TCR beta chain - epitope binding prompt (answer ``<SENTINEL_ID_0><0|1><EOS>``).

    Examples
    --------
    >>> "<MOLECULAR_ENTITY_EPITOPE>" in tcr_epitope("CASSLGQAYEQYF", "GILGFVFTL")
    True
    """
    check_protein(tcr, what="TCR beta")
    check_protein(epitope, what="epitope")
    return (
        "<@TOKENIZER-TYPE=AA><BINDING_AFFINITY_CLASS><SENTINEL_ID_0>"
        f"<MOLECULAR_ENTITY><MOLECULAR_ENTITY_TCR_BETA_VDJ><SEQUENCE_NATURAL_START>{tcr}<SEQUENCE_NATURAL_END>"
        f"<MOLECULAR_ENTITY><MOLECULAR_ENTITY_EPITOPE><SEQUENCE_NATURAL_START>{epitope}<SEQUENCE_NATURAL_END>"
        "<EOS>"
    )


def scalars(values: Iterable[float]) -> str:
    """A ``SCALARS_LITERALS`` segment for ``values`` (append it inside a prompt).

    Examples
    --------
    >>> scalars([0.5, 1.5])
    '<@TOKENIZER-TYPE=SCALARS_LITERALS>0.5,1.5'

    Raises
    ------
    PromptError
        ``values`` is empty or a string, or a value is not a number, not finite or beyond the
        float32 range (the message names its index).
    """
    vals = scalar_list(values, "scalars")
    return "<@TOKENIZER-TYPE=SCALARS_LITERALS>" + ",".join(repr(v) for v in vals)


def rank_genes(values: Sequence[float], genes: Sequence[str], *, n_bins: int = 10, max_genes: int = 1260) -> list[str]:
    """Order expressed genes as MAMMAL's cell-type task does: by expression bin, then by name.

    Non-expressed genes are dropped; expression is split into ``n_bins`` equal-width bins of the
    expressed values (highest bin first); ties inside a bin are broken alphabetically.

    Examples
    --------
    >>> rank_genes([0, 5, 1, 5], ["A", "B", "C", "D"], n_bins=2)
    ['B', 'D', 'C']
    """
    import numpy as np

    n_bins = check_int(n_bins, "n_bins", where="prompts.rank_genes", error=PromptError)
    max_genes = check_int(max_genes, "max_genes", where="prompts.rank_genes", error=PromptError)
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.shape[0] != len(genes):
        raise PromptError(f"got {v.shape[0]} expression values for {len(genes)} genes")
    idx = np.flatnonzero(v > 0)
    if idx.size == 0:
        raise PromptError("the cell has no expressed gene; cannot build a cell-type prompt")
    ev = v[idx]
    lo, hi = float(ev.min()), float(ev.max())
    bins = np.zeros(idx.size, dtype=int) if hi <= lo else np.minimum((ev - lo) / (hi - lo) * n_bins, n_bins - 1).astype(int)
    order = sorted(range(idx.size), key=lambda i: (-bins[i], str(genes[idx[i]])))
    return [str(genes[idx[i]]) for i in order[:max_genes]]


def cell_type(
    adata_or_ranked_genes: Any,
    *,
    cell: int | str | None = None,
    layer: str | None = None,
    gene_symbols: str | None = None,
    n_bins: int = 10,
    max_genes: int = 1260,
) -> str | list[str]:
    """Cell-type prompt(s) from ranked gene symbols or from an AnnData.

    Parameters
    ----------
    adata_or_ranked_genes
        A list of gene symbols already ranked, or an AnnData (``X`` or ``layer`` expression).
    cell
        With AnnData: one cell (index or obs name) gives one prompt; ``None`` gives one per cell.
    layer, gene_symbols
        Expression layer and a ``var`` column with symbols (default ``var_names``).
    n_bins, max_genes
        Ranking: expression bins and the gene cap (official 1260).

    Returns
    -------
    str or list of str
        ``<@TOKENIZER-TYPE=GENE><MOLECULAR_ENTITY><MOLECULAR_ENTITY_CELL_GENE_EXPRESSION_RANKED>[G1][G2]...<EOS>``

    Examples
    --------
    >>> cell_type(["CD3E", "MS4A1"])
    '<@TOKENIZER-TYPE=GENE><MOLECULAR_ENTITY><MOLECULAR_ENTITY_CELL_GENE_EXPRESSION_RANKED>[CD3E][MS4A1]<EOS>'
    """
    head = "<@TOKENIZER-TYPE=GENE><MOLECULAR_ENTITY><MOLECULAR_ENTITY_CELL_GENE_EXPRESSION_RANKED>"
    check_int(n_bins, "n_bins", where="prompts.cell_type", error=PromptError)
    check_int(max_genes, "max_genes", where="prompts.cell_type", error=PromptError)

    def build(genes: Sequence[str]) -> str:
        for i, g in enumerate(genes):
            if not isinstance(g, str) or not g or any(c in g for c in "[]<> \t\n"):
                raise PromptError(f"invalid gene symbol {g!r} at position {i}")
        return head + "".join(f"[{g}]" for g in genes[:max_genes]) + "<EOS>"

    if isinstance(adata_or_ranked_genes, list | tuple):
        return build(list(adata_or_ranked_genes))
    adata = adata_or_ranked_genes
    if not hasattr(adata, "obs_names") or not hasattr(adata, "var_names"):
        raise PromptError(
            f"cell_type expects a list of gene symbols or an AnnData, got {type(adata).__name__}"
        )
    import numpy as np

    genes = list(adata.var[gene_symbols]) if gene_symbols else list(adata.var_names)
    X = adata.layers[layer] if layer else adata.X

    def row(i: int) -> np.ndarray:
        r = X[i]
        r = r.toarray() if hasattr(r, "toarray") else np.asarray(r)
        return np.asarray(r).ravel()

    if cell is not None:
        i = adata.obs_names.get_loc(cell) if isinstance(cell, str) else int(cell)
        return build(rank_genes(row(i), genes, n_bins=n_bins, max_genes=max_genes))
    return [build(rank_genes(row(i), genes, n_bins=n_bins, max_genes=max_genes)) for i in range(adata.n_obs)]


__all__ = [
    "DTI_PKD_MEAN",
    "DTI_PKD_STD",
    "MOLECULE_TASKS",
    "RESIDUES",
    "ParsedPrompt",
    "Segment",
    "cell_type",
    "check_protein",
    "check_smiles",
    "dti",
    "molecule_classification",
    "molecule_property",
    "molecule_regression",
    "parse",
    "parse_scalar_literals",
    "ppi",
    "rank_genes",
    "scalars",
    "solubility",
    "tcr_epitope",
]
