"""Gene vocabularies, gene matching and vectorised cell encoding for BMFM-RNA.

The layout and arithmetic follow the official BMFM-RNA inference pipeline exactly:

* a cell is ``[CLS] g1 .. gn [SEP] [PAD]..`` over two parallel streams, gene token ids and one
  float per position;
* genes are kept when in the vocabulary (and protein-coding, the default ``limit_genes``);
* value ``log1p(count / (sum + 1) * 1e4)`` in float64, the sum over the kept genes of the cell,
  before truncation;
* special positions carry ``-(token_id + 1)`` in the value stream (CLS -4, SEP -2, PAD -3; the
  extra CLS tokens of v2 each their own code, ``[CLS_0]`` -6 .. ``[CLS_3]`` -9).

Encoding works on whole CSR chunks with numpy (no per-gene Python loop).
"""

from __future__ import annotations

import functools
import gzip
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp

from biomed_toolkit.core.errors import CheckpointError, GeneMatchError, InputError
from biomed_toolkit.core.log import get_logger

from .io import check_counts, get_matrix, iter_csr_chunks, to_csr

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .io import CountData
    from .modeling import BmfmRnaModel

__all__ = [
    "CLS_ID",
    "MASK_ID",
    "PAD_ID",
    "SEP_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "EncodedCells",
    "GeneMatchReport",
    "GeneTokenizer",
    "LimitGenes",
    "Order",
    "Padding",
    "encode_cells",
    "ensembl_to_symbol",
    "match_genes",
    "protein_coding_symbols",
]

log = get_logger(__name__)

SPECIAL_TOKENS = ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")
UNK_ID, SEP_ID, PAD_ID, CLS_ID, MASK_ID = range(5)
N_SPECIAL = len(SPECIAL_TOKENS)
_DATA = Path(__file__).resolve().parent / "data"
_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
#: Gene order inside a cell: the data's column order (official), seeded random, or by count.
Order = Literal["official", "random", "rank"]
#: Pad to the longest cell of the block, or to ``max_length`` (the official layout).
Padding = Literal["longest", "max_length"]
#: Gene filter of the released models' inference (None: every vocabulary gene).
LimitGenes = Literal["protein_coding"] | None
_ORDERS: tuple[str, ...] = Order.__args__
_PADDINGS: tuple[str, ...] = Padding.__args__


def special_value(token_id: int) -> float:
    """Value written in the expression stream for a special token: ``-(token_id + 1)``."""
    return -float(token_id + 1)


def special_values(token_ids: Sequence[int]) -> np.ndarray:
    """float32 expression codes of several special tokens, each its own ``-(id + 1)``.

    The leading CLS tokens of v2 models (``[CLS] [CLS_0] .. [CLS_3]``, ids 3, 5-8) carry
    -4, -6, -7, -8, -9, as the official tokenizer writes them (not -4 five times).
    """
    return -(np.asarray(token_ids, dtype=np.float32) + 1)


@functools.cache
def protein_coding_symbols() -> frozenset[str]:
    """The 19,283 HGNC protein-coding symbols used by the official ``limit_genes`` filter.

    Examples
    --------
    >>> "CD3E" in protein_coding_symbols()
    True
    """
    with open(_DATA / "hgnc_protein_coding_symbols.json") as fh:
        return frozenset(json.load(fh))


@functools.cache
def ensembl_to_symbol() -> dict[str, str]:
    """Human Ensembl gene id (no version) -> gene symbol, from GENCODE v44.

    Examples
    --------
    >>> ensembl_to_symbol()["ENSG00000167286"]
    'CD3D'
    """
    out: dict[str, str] = {}
    with gzip.open(_DATA / "gencode_v44_gene_id2name.csv.gz", "rt") as fh:
        next(fh)
        for line in fh:
            gid, name = line.rstrip("\n").split(",", 1)
            out[gid] = name
    return out


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------


def _word_level(vocab: Mapping[str, int], extra_special: Sequence[str] = ()) -> Any:
    """A WordLevel tokenizer laid out like the official BMFM-RNA field tokenizers."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    tok = Tokenizer(models.WordLevel(vocab=dict(vocab), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=False, strip_accents=None, lowercase=False
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    specials = [t for t in (*SPECIAL_TOKENS, *extra_special) if t in vocab]
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    return tok


def _load_field(folder: Path) -> Any:
    """One field's tokenizer; damaged files raise CheckpointError naming them."""
    try:
        return _read_field(folder)
    except InputError:
        raise
    except Exception as exc:  # the tokenizers library raises plain Exception; json ValueError
        raise CheckpointError(
            f"{folder}: the tokenizer files cannot be read ({type(exc).__name__}: {exc}); restore "
            "them from the original model") from exc


def _read_field(folder: Path) -> Any:
    from tokenizers import Tokenizer

    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    if (folder / "vocab.json").is_file():
        with open(folder / "vocab.json") as fh:
            vocab = json.load(fh)
    elif (folder / "vocab.txt").is_file():
        with open(folder / "vocab.txt") as fh:
            words = [w.rstrip("\n") for w in fh]
        vocab = {w: i for i, w in enumerate(w for w in words if w)}
    else:
        raise InputError(
            f"tokenizer folder {folder} has none of tokenizer.json, vocab.json, vocab.txt"
        )
    # tokens added after the vocabulary file (e.g. [S], [T] of v1) live in tokenizer_config.json
    if (folder / "tokenizer_config.json").is_file():
        with open(folder / "tokenizer_config.json") as fh:
            added = json.load(fh).get("added_tokens_decoder") or {}
        for tid, spec in sorted(added.items(), key=lambda kv: int(kv[0])):
            word = spec.get("content") if isinstance(spec, dict) else None
            if word and word not in vocab:
                if int(tid) != len(vocab):
                    raise InputError(f"{folder}: added token {word!r} has id {tid}, expected {len(vocab)}")
                vocab[word] = int(tid)
    extra = [w for w in vocab if w.startswith("[") and w.endswith("]")]
    return _word_level(vocab, extra)


class GeneTokenizer:
    """Multi-field gene tokenizer laid out like the official ``tokenizers/<field>/`` folders.

    Only the ``genes`` field drives encoding; the other fields (``expressions``, ...) are kept so
    that saving reproduces the official layout.

    Parameters
    ----------
    fields
        Field name -> ``tokenizers.Tokenizer`` (WordLevel).
    gene_field
        The field holding gene symbols.

    Examples
    --------
    >>> tok = GeneTokenizer.from_genes(["CD3E", "MS4A1", "LYZ"])
    >>> tok.gene_ids(["LYZ", "NOPE"]).tolist()
    [7, -1]
    """

    def __init__(self, fields: Mapping[str, Any], *, gene_field: str = "genes") -> None:
        if gene_field not in fields:
            raise InputError(f"tokenizer has no {gene_field!r} field (fields: {sorted(fields)})")
        self.fields = dict(sorted(fields.items()))
        self.gene_field = gene_field
        tok = self.fields[gene_field]
        vocab: dict[str, int] = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        special = {str(t.content) for t in tok.get_added_tokens_decoder().values() if t.special}
        special |= set(SPECIAL_TOKENS)
        self.special_tokens = {t: vocab[t] for t in special if t in vocab}
        for name, want in zip(SPECIAL_TOKENS, range(N_SPECIAL)):
            if vocab.get(name) != want:
                raise InputError(
                    f"gene tokenizer maps {name} to {vocab.get(name)}, expected {want}: "
                    "not a BMFM-RNA vocabulary"
                )
        self._id_to_token = np.empty(self.vocab_size, dtype=object)
        for t, i in vocab.items():
            self._id_to_token[i] = t
        genes = [(t, i) for t, i in vocab.items() if t not in special]
        import pandas as pd

        self._gene_index = pd.Index([t for t, _ in genes])
        self._gene_index_ids = np.asarray([i for _, i in genes], dtype=np.int64)
        self.n_cls_tokens = 1

    # construction / persistence ------------------------------------------------------------
    @classmethod
    def from_genes(
        cls, genes: Iterable[str], *, extra_tokens: Sequence[str] = ("[S]", "[T]")
    ) -> GeneTokenizer:
        """Build a new vocabulary: specials (ids 0-4), ``genes`` in order, then ``extra_tokens``.

        An ``expressions`` field (specials + "0".."49") is added as in the official layout.
        """
        words = list(dict.fromkeys(str(g) for g in genes))
        vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *words, *extra_tokens])}
        expr = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *map(str, range(50))])}
        return cls({"genes": _word_level(vocab, extra_tokens), "expressions": _word_level(expr)})

    @classmethod
    def from_pretrained(cls, path: str | Path) -> GeneTokenizer:
        """Load from a checkpoint folder holding ``tokenizers/``, that folder, or a ``.ckpt`` path.

        Each sub-folder is one field, read from ``tokenizer.json`` (WordLevel), else from
        ``vocab.json`` or ``vocab.txt``.
        """
        path = Path(path)
        if path.is_file():
            path = path.parent
        root = path / "tokenizers" if (path / "tokenizers").is_dir() else path
        folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if not folders:
            raise InputError(
                f"no tokenizer found under {path}: expected tokenizers/<field>/ folders "
                "(tokenizer.json or vocab.json/vocab.txt), as written next to official checkpoints"
            )
        return cls({p.name: _load_field(p) for p in folders})

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``directory/tokenizers/<field>/`` in the official layout; return that folder."""
        root = Path(directory) / "tokenizers"
        for name, tok in self.fields.items():
            d = root / name
            d.mkdir(parents=True, exist_ok=True)
            tok.save(str(d / "tokenizer.json"), pretty=True)
            vocab = tok.get_vocab(with_added_tokens=True)
            with open(d / "vocab.json", "w") as fh:
                json.dump(dict(sorted(vocab.items(), key=lambda kv: kv[1])), fh,
                          ensure_ascii=False, separators=(",", ":"))
            specials = {
                "cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]",
                "sep_token": "[SEP]", "unk_token": "[UNK]",
            }
            with open(d / "special_tokens_map.json", "w") as fh:
                json.dump(specials, fh, indent=2, sort_keys=True)
            config = {**specials, "do_lower_case": False, "tokenize_chinese_chars": False,
                      "tokenizer_class": "BertTokenizer", "clean_up_tokenization_spaces": True}
            with open(d / "tokenizer_config.json", "w") as fh:
                json.dump(config, fh, indent=2, sort_keys=True)
        return root

    # lookup --------------------------------------------------------------------------------
    @property
    def genes(self) -> list[str]:
        """Gene symbols of the vocabulary (no special tokens), in id order."""
        order = np.argsort(self._gene_index_ids)
        return [str(g) for g in np.asarray(self._gene_index)[order]]

    def gene_ids(self, names: Iterable[str]) -> np.ndarray:
        """Token id per name (exact, case-sensitive match), ``-1`` when not a vocabulary gene."""
        pos = self._gene_index.get_indexer(list(names))
        out = np.where(pos >= 0, self._gene_index_ids[np.maximum(pos, 0)], -1)
        return out.astype(np.int64)

    def token_id(self, token: str) -> int | None:
        """Id of any token (gene or special), ``None`` if absent."""
        return self.fields[self.gene_field].token_to_id(token)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Token strings for ids."""
        return [str(t) for t in self._id_to_token[np.asarray(list(ids), dtype=np.int64)]]

    def cls_token_ids(self, n: int | None = None) -> list[int]:
        """Leading CLS ids: ``[CLS]`` then ``[CLS_0]``, ``[CLS_1]``, ... (v2 models use 5)."""
        n = self.n_cls_tokens if n is None else n
        ids = [CLS_ID]
        for k in range(n - 1):
            tid = self.token_id(f"[CLS_{k}]")
            if tid is None:
                raise InputError(f"the gene vocabulary has no [CLS_{k}] token needed for {n} CLS")
            ids.append(tid)
        return ids

    def __len__(self) -> int:
        return self.vocab_size

    def __contains__(self, gene: object) -> bool:
        return isinstance(gene, str) and gene in self._gene_index

    def __repr__(self) -> str:
        return (f"GeneTokenizer(vocab_size={self.vocab_size}, genes={len(self._gene_index)}, "
                f"fields={list(self.fields)})")


def _as_tokenizer(obj: Any) -> GeneTokenizer:
    if isinstance(obj, GeneTokenizer):
        return obj
    tok = getattr(obj, "tokenizer", None)
    if isinstance(tok, GeneTokenizer):
        return tok
    raise InputError(f"expected a GeneTokenizer or a BMFM-RNA model with .tokenizer, got {type(obj)}")


# --------------------------------------------------------------------------------------------
# gene matching
# --------------------------------------------------------------------------------------------


@dataclass
class GeneMatchReport:
    """How the genes of a dataset map onto a model vocabulary.

    Attributes
    ----------
    n_genes
        Genes (columns) in the data.
    matched
        Input gene names kept (in the vocabulary, protein-coding when ``limit_genes`` says so,
        first occurrence of their token).
    unmatched
        Input names not in the vocabulary.
    not_protein_coding
        Input names in the vocabulary but dropped by ``limit_genes="protein_coding"``.
    duplicated
        Input names whose token was already taken by an earlier column (dropped).
    n_ensembl_mapped
        Names converted from Ensembl ids to symbols (GENCODE v44).
    fraction_counts_covered
        Share of all counts that fall on kept genes (None when not computed).
    n_cells, empty_cells
        Cells scanned and names of cells with no counts on kept genes (None when not computed).
    column_token_ids
        Token id per input column, ``-1`` when dropped (what encoding uses).
    """

    n_genes: int
    matched: list[str]
    unmatched: list[str]
    not_protein_coding: list[str]
    duplicated: list[str]
    n_ensembl_mapped: int
    vocab_size: int
    limit_genes: LimitGenes
    gene_source: str
    column_token_ids: np.ndarray = field(repr=False)
    fraction_counts_covered: float | None = None
    n_cells: int | None = None
    empty_cells: list[str] | None = None
    case_insensitive_hits: int = 0

    @property
    def n_matched(self) -> int:
        return len(self.matched)

    @property
    def n_unmatched(self) -> int:
        return len(self.unmatched)

    @property
    def n_duplicated(self) -> int:
        return len(self.duplicated)

    @property
    def n_empty_cells(self) -> int | None:
        return None if self.empty_cells is None else len(self.empty_cells)

    @property
    def fraction_matched(self) -> float:
        return self.n_matched / max(1, self.n_genes)

    def summary(self) -> str:
        """One line: matched / unmatched / dropped / duplicated counts and coverage."""
        parts = [f"matched {self.n_matched:,}/{self.n_genes:,} genes to the model vocabulary"]
        if self.unmatched:
            parts.append(f"{self.n_unmatched:,} not in vocabulary")
        if self.not_protein_coding:
            parts.append(f"{len(self.not_protein_coding):,} not protein-coding")
        if self.duplicated:
            parts.append(f"{self.n_duplicated:,} duplicated")
        if self.n_ensembl_mapped:
            parts.append(f"{self.n_ensembl_mapped:,} mapped from Ensembl ids")
        if self.fraction_counts_covered is not None:
            parts.append(f"{100 * self.fraction_counts_covered:.1f}% of counts covered")
        if self.empty_cells:
            parts.append(f"{len(self.empty_cells):,} cells without counts on matched genes")
        return ", ".join(parts)

    def to_dict(self, *, max_names: int = 50) -> dict[str, Any]:
        """Plain summary for ``adata.uns`` (name lists truncated to ``max_names``)."""
        return {
            "n_genes": self.n_genes,
            "n_matched": self.n_matched,
            "n_unmatched": self.n_unmatched,
            "n_not_protein_coding": len(self.not_protein_coding),
            "n_duplicated": self.n_duplicated,
            "n_ensembl_mapped": self.n_ensembl_mapped,
            "fraction_counts_covered": self.fraction_counts_covered,
            "n_cells": self.n_cells,
            "n_empty_cells": self.n_empty_cells,
            "limit_genes": self.limit_genes,
            "gene_source": self.gene_source,
            "unmatched": self.unmatched[:max_names],
            "duplicated": self.duplicated[:max_names],
            "empty_cells": (self.empty_cells or [])[:max_names],
        }

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        def row(k: str, v: Any) -> str:
            return f"<tr><td style='text-align:left'><b>{k}</b></td><td style='text-align:left'>{v}</td></tr>"

        def names(lst: list[str] | None) -> str:
            if not lst:
                return "&ndash;"
            shown = ", ".join(html.escape(x) for x in lst[:20])
            more = f" &hellip; (+{len(lst) - 20:,})" if len(lst) > 20 else ""
            return f"<span style='font-family:monospace'>{shown}{more}</span>"

        pct = 100 * self.fraction_matched
        bar = (f"<div style='width:240px;background:#eee;height:10px'><div style='width:{pct:.1f}%;"
               f"background:#3a7;height:10px'></div></div>")
        cov = ("not computed" if self.fraction_counts_covered is None
               else f"{100 * self.fraction_counts_covered:.1f}%")
        rows = [
            row("matched", f"{self.n_matched:,} / {self.n_genes:,} ({pct:.1f}%) {bar}"),
            row("counts covered", cov),
            row("not in vocabulary", f"{self.n_unmatched:,}: {names(self.unmatched)}"),
            row("not protein-coding", f"{len(self.not_protein_coding):,}: {names(self.not_protein_coding)}"),
            row("duplicated", f"{self.n_duplicated:,}: {names(self.duplicated)}"),
            row("Ensembl ids mapped", f"{self.n_ensembl_mapped:,}"),
            row("genes read from", html.escape(self.gene_source)),
        ]
        if self.empty_cells is not None:
            rows.append(row("empty cells", f"{len(self.empty_cells):,}: {names(self.empty_cells)}"))
        return ("<table><caption style='text-align:left'><b>Gene match report</b> "
                f"(vocabulary {self.vocab_size:,}, limit_genes={self.limit_genes})</caption>"
                + "".join(rows) + "</table>")


def _input_gene_names(adata: Any, gene_symbols: str | None, genes: Sequence[str] | None) -> tuple[list[str], str]:
    if genes is not None:
        return [str(g) for g in genes], "genes="
    if not hasattr(adata, "var_names"):
        raise InputError("a bare matrix needs genes= (one gene name per column)")
    if gene_symbols is None:
        return [str(g) for g in adata.var_names], "var_names"
    if gene_symbols not in adata.var.columns:
        raise InputError(
            f"gene_symbols={gene_symbols!r} is not a column of adata.var "
            f"(columns: {list(adata.var.columns)})"
        )
    return [str(g) for g in adata.var[gene_symbols].astype(str)], f"var[{gene_symbols!r}]"


def match_genes(
    adata: CountData,
    model_or_tokenizer: GeneTokenizer | BmfmRnaModel,
    *,
    gene_symbols: str | None = None,
    genes: Sequence[str] | None = None,
    limit_genes: LimitGenes = "protein_coding",
    layer: str | None = None,
    compute_coverage: bool = True,
    allow_non_integer: bool = False,
    chunk_size: int = 8192,
    log_summary: bool = True,
    ignore_case: bool = True,
) -> GeneMatchReport:
    """Match the genes of ``adata`` to a model vocabulary.

    Symbols match exactly first (case-sensitive, like the official WordLevel tokenizer); names
    left unmatched then match ignoring case (``Cd3e`` -> ``CD3E``, logged as a warning) unless
    ``ignore_case=False``. Ensembl ids (``ENSG...``, with or without version) are mapped to
    symbols first. With ``limit_genes="protein_coding"`` (the official inference default) only
    HGNC protein-coding genes are kept. When several columns map to one token, the first is kept
    (an exact match always wins over a case-insensitive one). When the kept genes carry less than
    half of the counts, a warning says so (log and :class:`UserWarning`).

    Parameters
    ----------
    adata
        AnnData (in memory or backed) or a matrix together with ``genes=``.
    model_or_tokenizer
        A BMFM-RNA model (with ``.tokenizer``) or a :class:`GeneTokenizer`.
    gene_symbols
        Column of ``adata.var`` holding the gene names; default ``var_names``.
    genes
        Gene names per column (for bare matrices).
    limit_genes
        ``"protein_coding"`` or ``None`` (keep every vocabulary gene).
    layer
        Layer holding the raw counts (for coverage), default ``adata.X``.
    compute_coverage
        Scan the counts once (chunked) for the fraction of counts covered and empty cells.
    allow_non_integer
        Accept non-integer counts-like values during that scan.
    ignore_case
        Match names left unmatched by the exact pass ignoring case (a vocabulary gene that
        differs from another only by case is never matched this way).

    Returns
    -------
    GeneMatchReport
        Also logged as one line.

    Raises
    ------
    GeneMatchError
        When no gene matches.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> tok = GeneTokenizer.from_genes(["CD3E", "LYZ"])
    >>> ad = anndata.AnnData(np.ones((2, 3), dtype="float32"))
    >>> ad.var_names = ["CD3E", "ENSG00000090382", "FOO"]
    >>> match_genes(ad, tok, log_summary=False).matched
    ['CD3E', 'ENSG00000090382']
    """
    tok = _as_tokenizer(model_or_tokenizer)
    names, source = _input_gene_names(adata, gene_symbols, genes)
    symbols = list(names)
    n_ens = 0
    table = None
    for i, nm in enumerate(names):
        if nm.startswith("ENS") and _ENSEMBL_RE.match(nm):
            table = ensembl_to_symbol() if table is None else table
            sym = table.get(nm.split(".", 1)[0])
            if sym is not None:
                symbols[i] = sym
                n_ens += 1
    ids = tok.gene_ids(symbols)
    n_case = 0
    if ignore_case and (ids < 0).any():
        by_upper: dict[str, str | None] = {}
        for g in tok.genes:
            # None marks an upper-case form shared by two vocabulary genes: ambiguous
            by_upper[g.upper()] = None if g.upper() in by_upper else g
        taken = set(ids[ids >= 0].tolist())
        examples = []
        for i in np.flatnonzero(ids < 0):
            gene = by_upper.get(symbols[i].upper())
            tid = -1 if gene is None else int(tok.gene_ids([gene])[0])
            if tid < 0 or tid in taken:
                continue
            symbols[i], ids[i] = gene, tid
            n_case += 1
            if len(examples) < 3:
                examples.append(f"{names[i]} -> {gene}")
        if n_case:
            log.warning(
                f"{n_case:,} of {len(names):,} genes in {source} match the model vocabulary only "
                f"when ignoring case (e.g. {', '.join(examples)}). If this is not human data, map "
                "the genes to human orthologs first; pass ignore_case=False to match exactly")
    unmatched = [names[i] for i in np.flatnonzero(ids < 0)]
    not_pc: list[str] = []
    if limit_genes == "protein_coding":
        pc = protein_coding_symbols()
        drop = np.array([i >= 0 and s not in pc for i, s in zip(ids, symbols)], dtype=bool)
        not_pc = [names[i] for i in np.flatnonzero(drop)]
        ids = np.where(drop, -1, ids)
    elif limit_genes is not None:
        raise InputError(f"limit_genes must be 'protein_coding' or None, got {limit_genes!r}")
    dup: list[str] = []
    valid = np.flatnonzero(ids >= 0)
    if len(valid):
        _, first = np.unique(ids[valid], return_index=True)
        later = np.setdiff1d(np.arange(len(valid)), first)
        dup = [names[i] for i in valid[later]]
        ids[valid[later]] = -1
    matched = [names[i] for i in np.flatnonzero(ids >= 0)]
    hits = n_case
    if unmatched and not ignore_case:
        upper = {g.upper() for g in tok._gene_index}
        hits = sum(1 for i in np.flatnonzero(tok.gene_ids(symbols) < 0) if symbols[i].upper() in upper)
    report = GeneMatchReport(
        n_genes=len(names), matched=matched, unmatched=unmatched, not_protein_coding=not_pc,
        duplicated=dup, n_ensembl_mapped=n_ens, vocab_size=tok.vocab_size,
        limit_genes=limit_genes, gene_source=source, column_token_ids=ids,
        case_insensitive_hits=hits,
    )
    if not matched:
        hint = ""
        if hits:
            hint = (f" {hits} genes match when ignoring case: is this mouse data? Map to human "
                    "symbols first")
        elif n_ens == 0 and gene_symbols is None and hasattr(adata, "var"):
            hint = (" If var_names are not gene symbols, pass gene_symbols='<column of adata.var"
                    f" with symbols>' (columns: {list(adata.var.columns)})")
        raise GeneMatchError(
            f"none of the {len(names)} genes in {source} (e.g. {names[:3]}) matches the model "
            f"vocabulary of {tok.vocab_size} tokens.{hint}"
        )
    if compute_coverage and (hasattr(adata, "obs_names") or sp.issparse(adata) or isinstance(adata, np.ndarray)):
        update_coverage(report, adata, layer=layer, allow_non_integer=allow_non_integer,
                        chunk_size=chunk_size)
    if log_summary:
        log.info(report.summary())
        warn_low_coverage(report)
    return report


#: Share of the counts below which the matched genes are reported as too few.
LOW_COVERAGE = 0.5


def warn_low_coverage(report: GeneMatchReport, *, threshold: float = LOW_COVERAGE) -> bool:
    """Warn (log and :class:`UserWarning`) when the matched genes carry < ``threshold`` of the counts.

    Returns whether it warned; a report without computed coverage never warns.
    """
    import warnings

    cov = report.fraction_counts_covered
    if cov is None or cov >= threshold:
        return False
    msg = (f"the {report.n_matched:,} genes of {report.gene_source} matched to the model (of "
           f"{report.n_genes:,}) carry only {100 * cov:.1f}% of the counts, so results rest on a "
           "small part of each cell. Check that the names are human gene symbols (or pass "
           "gene_symbols='<adata.var column with symbols>'), map other species to human "
           "orthologs, and see report.unmatched for the genes left out")
    log.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)
    return True


class _CoverageAccumulator:
    def __init__(self, col_ids: np.ndarray) -> None:
        self.kept = col_ids >= 0
        self.total = 0.0
        self.covered = 0.0
        self.empty: list[int] = []
        self.n = 0

    def add(self, offset: int, csr: sp.csr_matrix, row_sums_kept: np.ndarray | None = None) -> None:
        data = csr.data.astype(np.float64, copy=False)
        self.total += float(data.sum())
        if row_sums_kept is None:
            mask = self.kept[csr.indices]
            rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
            row_sums_kept = np.bincount(rows[mask], weights=data[mask], minlength=csr.shape[0])
        self.covered += float(row_sums_kept.sum())
        self.empty.extend((offset + np.flatnonzero(row_sums_kept <= 0)).tolist())
        self.n += csr.shape[0]

    def finish(self, report: GeneMatchReport, adata: CountData) -> None:
        report.fraction_counts_covered = self.covered / self.total if self.total > 0 else 0.0
        report.n_cells = self.n
        obs = getattr(adata, "obs_names", None)
        report.empty_cells = [str(obs[i]) if obs is not None else str(i) for i in self.empty]


def update_coverage(
    report: GeneMatchReport,
    adata: CountData,
    *,
    layer: str | None = None,
    allow_non_integer: bool = False,
    chunk_size: int = 8192,
) -> GeneMatchReport:
    """Fill ``fraction_counts_covered``, ``n_cells`` and ``empty_cells`` with one chunked scan."""
    acc = _CoverageAccumulator(report.column_token_ids)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    for off, csr in iter_csr_chunks(adata, layer=layer, chunk_size=chunk_size):
        check_counts(csr.data, allow_non_integer=allow_non_integer, where=where)
        acc.add(off, csr)
    acc.finish(report, adata)
    return report


# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------


@dataclass
class EncodedCells:
    """Model inputs for a block of cells (numpy arrays, one row per cell).

    Attributes
    ----------
    genes
        (n, L) int64 token ids: CLS token(s), genes, SEP, PAD.
    expressions
        (n, L) float32 normalised values; specials carry ``-(id + 1)``.
    attention_mask
        (n, L) bool, True on CLS, genes and SEP.
    lengths
        (n,) int64 used length per cell (incl. CLS and SEP).
    n_expressed
        (n,) int64 nonzero kept genes per cell before truncation (0 = empty cell).
    """

    genes: np.ndarray
    expressions: np.ndarray
    attention_mask: np.ndarray
    lengths: np.ndarray
    n_expressed: np.ndarray

    def __len__(self) -> int:
        return int(self.genes.shape[0])

    @property
    def empty(self) -> np.ndarray:
        """Boolean mask of cells without any kept nonzero gene."""
        return self.n_expressed == 0

    def __getitem__(self, idx: Any) -> EncodedCells:
        return EncodedCells(self.genes[idx], self.expressions[idx], self.attention_mask[idx],
                            self.lengths[idx], self.n_expressed[idx])

    def to_torch(self, device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
        """``{"genes", "expressions", "attention_mask"}`` as torch tensors."""
        import torch

        return {
            "genes": torch.from_numpy(self.genes).to(device),
            "expressions": torch.from_numpy(self.expressions).to(device),
            "attention_mask": torch.from_numpy(self.attention_mask).to(device),
        }

    def official_input_ids(self) -> np.ndarray:
        """The official stacked ``input_ids`` (n, 2, L) float32 (genes, expressions)."""
        return np.stack([self.genes.astype(np.float32), self.expressions], axis=1)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def cell_gene_keys(seed: int, cell_index: np.ndarray, token: np.ndarray) -> np.ndarray:
    """Pseudo-random sort keys depending only on (seed, cell index, token id).

    This is what makes random gene order independent of chunking and batch composition.
    """
    with np.errstate(over="ignore"):
        s = _mix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        c = _mix64(cell_index.astype(np.uint64) ^ s)
        return _mix64(c ^ (token.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)))


def _round_up(x: int, m: int) -> int:
    return ((x + m - 1) // m) * m if m > 1 else x


def _use_writable_numba_cache(numba: Any) -> None:
    """Send numba's on-disk cache to ``bt.settings.cache_dir / "numba"`` if ours is read-only.

    numba caches next to the source (``__pycache__``); in a read-only site-packages that fails, so
    the compiled kernels would be rebuilt in every kernel and worker. A user's ``NUMBA_CACHE_DIR``
    wins. Must run before the ``cache=True`` functions are decorated (numba picks the folder then).
    """
    import os
    import tempfile

    if numba.config.CACHE_DIR:
        return
    pycache = Path(__file__).resolve().parent / "__pycache__"
    try:
        pycache.mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=pycache):
            return
    except OSError:
        pass
    from biomed_toolkit.core.settings import settings

    folder = settings.cache_dir / "numba"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # pragma: no cover - numba falls back to its user-wide cache folder
        return
    numba.config.CACHE_DIR = os.fspath(folder)
    # worker processes started with "spawn" read the same folder
    os.environ.setdefault("NUMBA_CACHE_DIR", os.fspath(folder))


@functools.cache
def _numba_kernels() -> Any:
    """JIT-compiled per-row encoder (one pass over the stored entries); None without numba.

    The kernels are cached on disk (``cache=True``): a new kernel or worker process loads them
    instead of compiling (about 4 s). The helpers ``mix`` and ``key_order`` are bound as module
    globals, not closure cells: numba keys its cache on the pickled closure, and a jitted function
    pickles with a per-process id, so a closure over them would miss the cache in every process.
    """
    global mix, key_order
    try:
        import numba
    except ImportError:  # pragma: no cover - numba ships with scanpy
        return None
    _use_writable_numba_cache(numba)

    @numba.njit(cache=True, nogil=True)
    def mix(x):  # pragma: no cover - compiled
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    @numba.njit(cache=True, nogil=True)
    def key_order(keys, c, counts, perm):  # pragma: no cover - compiled
        """Indices of keys[:c] in ascending order: bucket by the top bits, then insertion sort.

        The keys are uniform and distinct, so this is O(c) on average (same order as argsort).
        """
        bits = 1
        while (1 << bits) < c:
            bits += 1
        nb = 1 << bits
        shift = np.uint64(64 - bits)
        counts[: nb + 1] = 0
        for k in range(c):
            counts[np.int64(keys[k] >> shift) + 1] += 1
        for b in range(nb):
            counts[b + 1] += counts[b]
        for k in range(c):
            b = np.int64(keys[k] >> shift)
            perm[counts[b]] = k
            counts[b] += 1
        for i in range(1, c):
            cur = perm[i]
            kc = keys[cur]
            j = i - 1
            while j >= 0 and keys[perm[j]] > kc:
                perm[j + 1] = perm[j]
                j -= 1
            perm[j + 1] = cur
        return perm[:c]

    @numba.njit(cache=True, nogil=True)
    def pad(lengths, genes, expr, mask, width):  # pragma: no cover - compiled
        for r in range(len(lengths)):
            end = lengths[r]
            for k in range(width):
                mask[r, k] = k < end
            for k in range(end, width):
                genes[r, k] = 2
                expr[r, k] = -3.0

    @numba.njit(cache=True, nogil=True)
    def fill(indptr, indices, data, col2tok, counts, max_genes, cls_ids, cls_values, add_sep,
             order, seed_key, cell_offset, genes, expr, lengths):  # pragma: no cover
        n_cls = len(cls_ids)
        max_nnz = 0
        for r in range(len(indptr) - 1):
            max_nnz = max(max_nnz, indptr[r + 1] - indptr[r])
        buf_tok = np.empty(max_nnz, dtype=np.int64)
        buf_val = np.empty(len(buf_tok), dtype=np.float64)
        buf_key = np.empty(len(buf_tok), dtype=np.uint64)
        buf_perm = np.empty(len(buf_tok), dtype=np.int64)
        nb = 2
        while nb < max_nnz:
            nb *= 2
        buf_counts = np.empty(nb + 1, dtype=np.int64)
        # per-cell memo of the normalised value of small integer counts (most entries of
        # scRNA data): same arithmetic, far fewer log1p calls
        memo = np.empty(256, dtype=np.float32)
        stamp = np.full(256, -1, dtype=np.int64)
        for r in range(len(indptr) - 1):
            c = 0
            total = 0.0
            for j in range(indptr[r], indptr[r + 1]):
                t = col2tok[indices[j]]
                v = np.float64(data[j])
                if t >= 0 and v != 0:
                    buf_tok[c] = t
                    buf_val[c] = v
                    total += v
                    c += 1
            counts[r] = c
            m = min(c, max_genes)
            if order == 0:
                perm = np.empty(0, dtype=np.int64)
            elif order == 1:
                ck = mix(np.uint64(r + cell_offset) ^ seed_key)
                for k in range(c):
                    buf_key[k] = mix(ck ^ (np.uint64(buf_tok[k]) * np.uint64(0x9E3779B97F4A7C15)))
                perm = key_order(buf_key, c, buf_counts, buf_perm)
            else:
                perm = np.argsort(-buf_val[:c], kind="mergesort")
            for k in range(n_cls):
                genes[r, k] = cls_ids[k]
                expr[r, k] = cls_values[k]
            denom = total + 1.0
            for k in range(m):
                p = k if order == 0 else perm[k]
                genes[r, n_cls + k] = buf_tok[p]
                v = buf_val[p]
                iv = int(v) if v < 256.0 else -1
                if iv >= 0 and v == iv:
                    if stamp[iv] != r:
                        memo[iv] = np.float32(np.log1p(v / denom * 10000.0))
                        stamp[iv] = r
                    expr[r, n_cls + k] = memo[iv]
                else:
                    expr[r, n_cls + k] = np.float32(np.log1p(v / denom * 10000.0))
            end = n_cls + m
            if add_sep:
                genes[r, end] = 1
                expr[r, end] = -2.0
                end += 1
            lengths[r] = end

    return fill, pad


def encode_csr(
    csr: sp.csr_matrix,
    column_token_ids: np.ndarray,
    *,
    max_length: int = 1024,
    order: Order = "official",
    seed: int = 0,
    cell_offset: int = 0,
    cls_ids: Sequence[int] = (CLS_ID,),
    add_sep: bool = True,
    padding: Padding = "longest",
    pad_to_multiple_of: int = 16,
    engine: Literal["auto", "numba", "numpy"] = "auto",
) -> EncodedCells:
    """Encode a CSR block (cells x input genes) given the column -> token map.

    Low-level: no count checks. See :func:`encode_cells`. ``engine``: ``"auto"`` (compiled
    kernel when numba is importable), ``"numba"`` or ``"numpy"``; both give identical arrays.
    """
    if order not in _ORDERS:
        raise InputError(f"order must be one of {_ORDERS}, got {order!r}")
    n = csr.shape[0]
    n_cls = len(cls_ids)
    max_genes = max_length - n_cls - int(add_sep)
    if max_genes < 1:
        raise InputError(f"max_length={max_length} leaves no room for genes")
    if padding not in _PADDINGS:
        raise InputError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    kernels = _numba_kernels() if engine in ("auto", "numba") else None
    if kernels is not None:
        fill, pad = kernels
        col2tok = np.ascontiguousarray(column_token_ids, dtype=np.int64)
        counts = np.empty(n, dtype=np.int64)
        lengths = np.empty(n, dtype=np.int64)
        genes = np.empty((n, max_length), dtype=np.int64)
        expr = np.empty((n, max_length), dtype=np.float32)
        seed_key = _mix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        fill(csr.indptr, csr.indices, csr.data, col2tok, counts, max_genes,
             np.asarray(cls_ids, dtype=np.int64), special_values(cls_ids), bool(add_sep),
             _ORDERS.index(order), seed_key, int(cell_offset), genes, expr, lengths)
        if padding == "max_length":
            width = max_length
        else:
            width = min(max_length, _round_up(int(lengths.max(initial=n_cls + 1)), pad_to_multiple_of))
            # views of the first `width` columns: no copy of the (large) buffers
            genes, expr = genes[:, :width], expr[:, :width]
        mask = np.empty((n, width), dtype=np.bool_)
        pad(lengths, genes, expr, mask, width)
        out_len = lengths
        return EncodedCells(genes, expr, mask, out_len, counts)
    if engine not in ("auto", "numpy"):
        raise InputError(f"engine must be 'auto', 'numba' or 'numpy', got {engine!r}")
    indptr = csr.indptr
    tok = column_token_ids[csr.indices]
    vals = csr.data
    keep = tok >= 0
    if vals.dtype.kind == "f" or vals.dtype.kind in "iu":
        keep &= vals != 0
    row_nnz = np.diff(indptr)
    rows = np.repeat(np.arange(n, dtype=np.int64), row_nnz)
    if not keep.all():
        tok, vals, rows = tok[keep], vals[keep], rows[keep]
    counts = np.bincount(rows, minlength=n).astype(np.int64)
    vals64 = vals.astype(np.float64)
    sums = np.bincount(rows, weights=vals64, minlength=n)
    starts = np.cumsum(counts) - counts
    if order == "random":
        key = cell_gene_keys(seed, rows + cell_offset, tok)
        perm = np.lexsort((key, rows))
        tok, vals64, rows = tok[perm], vals64[perm], rows[perm]
    elif order == "rank":
        perm = np.lexsort((-vals64, rows))  # stable: ties keep column order
        tok, vals64, rows = tok[perm], vals64[perm], rows[perm]
    pos = np.arange(len(tok), dtype=np.int64) - starts[rows]
    trunc = pos < max_genes
    if not trunc.all():
        tok, vals64, rows, pos = tok[trunc], vals64[trunc], rows[trunc], pos[trunc]
    # official arithmetic: float64 log1p(x / (sum + 1) * 1e4), then float32
    norm = np.log1p(vals64 / (sums[rows] + 1.0) * 10000.0).astype(np.float32)
    used = np.minimum(counts, max_genes)
    lengths = n_cls + used + int(add_sep)
    if padding == "max_length":
        width = max_length
    elif padding == "longest":
        width = min(max_length, _round_up(int(lengths.max(initial=n_cls + 1)), pad_to_multiple_of))
    else:
        raise InputError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    genes = np.full((n, width), PAD_ID, dtype=np.int64)
    expr = np.full((n, width), special_value(PAD_ID), dtype=np.float32)
    genes[:, :n_cls] = np.asarray(cls_ids, dtype=np.int64)
    expr[:, :n_cls] = special_values(cls_ids)
    flat = rows * width + n_cls + pos
    genes.ravel()[flat] = tok
    expr.ravel()[flat] = norm
    if add_sep:
        ar = np.arange(n)
        genes[ar, lengths - 1] = SEP_ID
        expr[ar, lengths - 1] = special_value(SEP_ID)
    mask = np.arange(width)[None, :] < lengths[:, None]
    return EncodedCells(genes, expr, mask, lengths.astype(np.int64), counts)


def encode_cells(
    data: CountData,
    tokenizer: GeneTokenizer | BmfmRnaModel,
    *,
    max_length: int = 1024,
    order: Order = "official",
    seed: int = 0,
    gene_symbols: str | None = None,
    genes: Sequence[str] | None = None,
    layer: str | None = None,
    limit_genes: LimitGenes = "protein_coding",
    match: GeneMatchReport | None = None,
    allow_non_integer: bool = False,
    padding: Padding = "longest",
    pad_to_multiple_of: int = 16,
    n_cls_tokens: int | None = None,
    cell_offset: int = 0,
) -> EncodedCells:
    """Encode raw counts into BMFM-RNA model inputs, vectorised over a CSR matrix.

    Parameters
    ----------
    data
        AnnData (raw counts in ``X`` or ``layers[layer]``), or a cells x genes matrix (scipy
        sparse or numpy) together with ``genes=``.
    tokenizer
        :class:`GeneTokenizer` or a model with ``.tokenizer`` (its CLS count is then used).
    max_length
        Sequence length including CLS and SEP; longer cells are truncated.
    order
        ``"official"`` (column order of the data, as the official inference), ``"random"``
        (pseudo-random per cell from ``seed`` and the cell's row index; chunk-invariant) or
        ``"rank"`` (highest count first). Order only decides which genes survive truncation:
        the models have no position embeddings.
    seed
        Seed of ``order="random"``.
    gene_symbols, genes, limit_genes
        See :func:`match_genes`.
    match
        A precomputed :class:`GeneMatchReport` (skips matching).
    allow_non_integer
        Accept non-integer counts-like values (e.g. rounded TPM). NaN and negatives are always
        rejected.
    padding
        ``"longest"`` (pad to the longest cell, rounded up to ``pad_to_multiple_of``) or
        ``"max_length"`` (the official layout).
    n_cls_tokens
        Leading CLS tokens (1 for v1, 5 for v2); default from the model/tokenizer.
    cell_offset
        Row index of the first cell (keeps random order chunk-invariant).

    Returns
    -------
    EncodedCells
        Empty cells (no kept nonzero gene) are flagged in ``.empty`` and logged.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> tok = GeneTokenizer.from_genes(["CD3E", "LYZ"])
    >>> enc = encode_cells(sp.csr_matrix(np.array([[3.0, 1.0]])), tok, genes=["CD3E", "LYZ"])
    >>> enc.genes[0, :4].tolist()
    [3, 5, 6, 1]
    """
    tok = _as_tokenizer(tokenizer)
    if n_cls_tokens is None:
        cfg = getattr(tokenizer, "config", None)
        n_cls_tokens = getattr(cfg, "n_cls_tokens", None) or tok.n_cls_tokens
    if match is None:
        match = match_genes(data, tok, gene_symbols=gene_symbols, genes=genes,
                            limit_genes=limit_genes, compute_coverage=False, log_summary=False)
    matrix = get_matrix(data, layer)
    if matrix.shape[1] != len(match.column_token_ids):
        raise InputError(
            f"data has {matrix.shape[1]} genes but the gene match covers "
            f"{len(match.column_token_ids)}"
        )
    csr = to_csr(matrix[:] if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)) else matrix)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_counts(csr.data, allow_non_integer=allow_non_integer, where=where)
    enc = encode_csr(
        csr, match.column_token_ids, max_length=max_length, order=order, seed=seed,
        cell_offset=cell_offset, cls_ids=tok.cls_token_ids(n_cls_tokens), padding=padding,
        pad_to_multiple_of=pad_to_multiple_of,
    )
    n_empty = int(enc.empty.sum())
    if n_empty:
        log.warning(f"{n_empty} of {len(enc)} cells have no counts on matched genes")
    return enc
