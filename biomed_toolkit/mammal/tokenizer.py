"""MAMMAL modular tokenizer: reads the official tokenizer folder, errors instead of silent ``<UNK>``.

The folder holds ``config.yaml`` (the sub-tokenizers, their JSON files and ids) and one Hugging
Face ``tokenizers`` JSON per sub-tokenizer. Special tokens (``<...>``, ids below 500) are shared
by every sub-tokenizer. See :mod:`biomed_toolkit.mammal.prompts` for the prompt syntax.

Examples
--------
>>> tok = Tokenizer.from_pretrained("path/to/tokenizer")  # doctest: +SKIP
>>> batch = tok([prompts.ppi("MKT", "MAD")])  # doctest: +SKIP
>>> batch.input_ids.shape  # doctest: +SKIP
torch.Size([1, 17])
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from biomed_toolkit.core.errors import CheckpointError, PromptError
from biomed_toolkit.core.log import get_logger
from biomed_toolkit.core.validation import check_int

from .prompts import SCALAR_TYPES, parse

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = get_logger(__name__)

SCALAR_FILL = -1000.0  # the official value where a position holds no scalar
_CACHE_MAX = 200_000


@dataclass
class Batch:
    """Tokenized prompts as tensors (all ``[batch, length]``).

    Attributes
    ----------
    input_ids
        int64 token ids, right-padded with ``<PAD>``.
    attention_mask
        bool, True at real tokens.
    scalars_values
        float32 input scalars, -1000.0 where a position holds none.
    scalars_valid_mask
        bool, True at ``<SCALAR>`` positions.
    prompts
        The prompt strings.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    scalars_values: torch.Tensor
    scalars_valid_mask: torch.Tensor
    prompts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real (non-pad) tokens per prompt."""
        return self.attention_mask.sum(dim=1)

    def to(self, device: str | torch.device) -> Batch:
        """Copy of the batch with every tensor on ``device``."""
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.scalars_values.to(device),
            self.scalars_valid_mask.to(device),
            list(self.prompts),
        )

    def __getitem__(self, idx: int | slice) -> Batch:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Batch(
            self.input_ids[idx],
            self.attention_mask[idx],
            self.scalars_values[idx],
            self.scalars_valid_mask[idx],
            list(self.prompts[idx]),
        )


@dataclass
class _SubTokenizer:
    name: str
    tokenizer_id: int
    file: str
    hf: Any  # tokenizers.Tokenizer
    raw: str
    kind: str  # "wordlevel" | "bpe" | "other"
    vocab: dict[str, int]
    split_re: re.Pattern[str] | None
    per_char: bool
    unk_id: int | None
    info: dict[str, Any]


class Tokenizer:
    """The MAMMAL modular tokenizer.

    Parameters
    ----------
    sub_tokenizers
        Loaded sub-tokenizers (use :meth:`from_pretrained`).
    config
        The parsed ``config.yaml``.

    Examples
    --------
    >>> tok = Tokenizer.from_pretrained("model/tokenizer")  # doctest: +SKIP
    >>> tok.decode(tok("<@TOKENIZER-TYPE=AA>MKT<EOS>").input_ids[0])  # doctest: +SKIP
    'MKT<EOS>'
    """

    def __init__(self, sub_tokenizers: list[_SubTokenizer], config: dict[str, Any]) -> None:
        if not sub_tokenizers:
            raise PromptError("a tokenizer needs at least one sub-tokenizer")
        self._subs = {s.name: s for s in sub_tokenizers}
        self._first = sub_tokenizers[0]
        self.config = config
        specials: dict[str, int] = {}
        for s in sub_tokenizers:
            for t in json.loads(s.raw).get("added_tokens", []):
                specials.setdefault(t["content"], int(t["id"]))
        self.special_tokens: dict[str, int] = specials
        self._id_to_token: dict[int, str] = {}
        for s in sub_tokenizers:
            for tok, i in s.vocab.items():
                self._id_to_token.setdefault(int(i), tok)
        for tok, i in specials.items():
            self._id_to_token[i] = tok
        self._id_owner: dict[int, str] = {}
        for s in sub_tokenizers:
            for tok, i in s.vocab.items():
                if tok not in specials:
                    self._id_owner.setdefault(int(i), s.name)
        for name in ("<PAD>", "<EOS>", "<UNK>", "<SCALAR>"):
            if name not in specials:
                raise PromptError(f"the tokenizer has no {name} special token; is this a MAMMAL tokenizer folder?")
        self.pad_id = specials["<PAD>"]
        self.eos_id = specials["<EOS>"]
        self.unk_id = specials["<UNK>"]
        self.scalar_id = specials["<SCALAR>"]
        self._cache: dict[tuple[Any, ...], tuple[tuple[int, ...], tuple[float, ...] | None]] = {}
        self._rng = random.Random(0)
        # Vocabulary gaps already reported (valid SMILES characters a small vocabulary lacks).
        self._warned_unknown: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a tokenizer folder (``config.yaml`` + sub-tokenizer JSONs).

        Parameters
        ----------
        path
            The folder, or a model folder that has a ``tokenizer/`` sub-folder.

        Examples
        --------
        >>> tok = Tokenizer.from_pretrained("model/tokenizer")  # doctest: +SKIP
        """
        import yaml
        from tokenizers import Tokenizer as HFTokenizer

        folder = Path(path)
        if not (folder / "config.yaml").is_file() and (folder / "tokenizer" / "config.yaml").is_file():
            folder = folder / "tokenizer"
        cfg_file = folder / "config.yaml"
        if not cfg_file.is_file():
            raise PromptError(
                f"no MAMMAL tokenizer in {folder}: config.yaml is missing (expected config.yaml plus "
                "one tokenizers JSON per sub-tokenizer)"
            )
        try:
            config = yaml.safe_load(cfg_file.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:  # tags, syntax, encoding
            raise CheckpointError(
                f"{cfg_file} is not a readable tokenizer configuration ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else exc!r}); restore it from the original "
                "model") from None
        infos = config.get("tokenizers_info", []) if isinstance(config, dict) else None
        if not isinstance(infos, list) or not all(
                isinstance(i, dict) and "name" in i and (i.get("modular_json_path") or i.get("json_path"))
                for i in infos):
            raise CheckpointError(
                f"{cfg_file} must be a mapping whose 'tokenizers_info' lists sub-tokenizers with a "
                "name and a json_path; restore it from the original model")
        subs = []
        for info in infos:
            # The official loader keeps only the basename of each path and joins it to the folder.
            fname = os.path.basename(str(info.get("modular_json_path") or info["json_path"]))
            file = folder / fname
            if not file.is_file():
                raise PromptError(f"sub-tokenizer {info['name']}: {fname} is missing from {folder}")
            raw = file.read_text()
            try:
                hf = HFTokenizer.from_str(raw)
            except Exception as exc:  # the tokenizers library raises plain Exception
                raise CheckpointError(
                    f"{file} is not a readable tokenizer file ({exc}); restore it from the original "
                    "model") from None
            subs.append(_make_sub(info, fname, raw, hf))
        return cls(subs, config)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.yaml`` and the sub-tokenizer JSONs (unchanged bytes) into ``path``.

        Examples
        --------
        >>> tok.save_pretrained("my_model/tokenizer")  # doctest: +SKIP
        """
        import yaml

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        for s in self._subs.values():
            (folder / s.file).write_text(s.raw)
        (folder / "config.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        return folder

    # ------------------------------------------------------------------ properties

    @property
    def sub_tokenizers(self) -> list[str]:
        """Names of the sub-tokenizers, in ``config.yaml`` order."""
        return list(self._subs)

    @property
    def vocab_size(self) -> int:
        """Largest id + 1 (ids have holes)."""
        return max(self._id_to_token) + 1

    def token_to_id(self, token: str, sub_tokenizer: str | None = None) -> int:
        """Id of a special token, or of a regular token of ``sub_tokenizer``."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        subs = [self._subs[sub_tokenizer]] if sub_tokenizer else list(self._subs.values())
        for s in subs:
            if token in s.vocab:
                return s.vocab[token]
        raise PromptError(f"unknown token {token!r}")

    def id_to_token(self, idx: int) -> str:
        """Token string of an id (``<@TOKEN_MISSING-id>`` for ids in the gaps)."""
        return self._id_to_token.get(int(idx), f"<@TOKEN_MISSING-{int(idx)}>")

    def __repr__(self) -> str:
        subs = ", ".join(f"{s.name}({len(s.vocab)})" for s in self._subs.values())
        return f"Tokenizer({subs}; {len(self.special_tokens)} special tokens, vocab_size={self.vocab_size})"

    # ------------------------------------------------------------------ encoding

    def encode_one(
        self, prompt: str, *, strict: bool = True, scalars: Mapping[str, Any] | None = None
    ) -> tuple[list[int], list[float] | None]:
        """Ids and per-position scalar values (``None`` if the prompt has no scalar) of one prompt."""
        ids: list[int] = []
        vals: list[float] | None = None
        for seg in parse(prompt).segments:
            key = (strict, seg.tokenizer_type, seg.max_len, seg.text)
            hit = None if (seg.trunc_mode == "RAND" or seg.tokenizer_type == "SCALARS_FROM_DICT") else self._cache.get(key)
            if hit is None:
                seg_ids, seg_vals = self._encode_segment(seg, strict=strict, scalars=scalars)
                if seg.max_len is not None and len(seg_ids) > seg.max_len:
                    start = 0
                    if seg.trunc_mode == "RAND":
                        start = self._rng.randint(0, len(seg_ids) - seg.max_len)
                    seg_ids = seg_ids[start : start + seg.max_len]
                    if seg_vals is not None:
                        seg_vals = seg_vals[start : start + seg.max_len]
                hit = (tuple(seg_ids), None if seg_vals is None else tuple(seg_vals))
                if seg.trunc_mode != "RAND" and seg.tokenizer_type != "SCALARS_FROM_DICT":
                    if len(self._cache) >= _CACHE_MAX:
                        self._cache.clear()
                    self._cache[key] = hit
            if hit[1] is not None and vals is None:
                vals = [SCALAR_FILL] * len(ids)
            ids.extend(hit[0])
            if vals is not None:
                vals.extend(hit[1] if hit[1] is not None else (SCALAR_FILL,) * len(hit[0]))
        if not prompt.endswith("<EOS>"):
            tail = prompt[-30:]
            raise PromptError(
                f"prompt does not end with <EOS> (it ends with {tail!r} at character {len(prompt)}); "
                "append '<EOS>'"
            )
        return ids, vals

    def _encode_segment(
        self, seg: Any, *, strict: bool, scalars: Mapping[str, Any] | None
    ) -> tuple[list[int], list[float] | None]:
        if seg.tokenizer_type in SCALAR_TYPES:
            values = seg.scalar_values(dict(scalars) if scalars else None)
            return [self.scalar_id] * len(values), list(values)
        sub = self._subs.get(seg.tokenizer_type)
        if sub is None:
            raise PromptError(
                f"unknown tokenizer type {seg.tokenizer_type!r} in the meta token before character "
                f"{seg.start}; this tokenizer has {self.sub_tokenizers} and {list(SCALAR_TYPES)}"
            )
        if not strict:
            # The official behaviour: the sub-tokenizer encodes the whole piece, unknowns -> <UNK>.
            return list(sub.hf.encode(seg.text, add_special_tokens=False).ids), None
        out: list[int] = []
        specials = self.special_tokens
        for kind, text, pos in seg.pieces():
            if kind == "special":
                idx = specials.get(text)
                if idx is None:
                    raise PromptError(
                        f"unknown special token {text!r} at character {pos}; it is not in the "
                        f"tokenizer's {len(specials)} shared special tokens (check the spelling; "
                        "strict=False maps it to <UNK> as the official tokenizer does)"
                    )
                out.append(idx)
            elif seg.tokenizer_type == "SMILES":
                out.extend(self._encode_smiles(sub, text, pos))
            else:
                out.extend(self._encode_text(sub, text, pos))
        return out, None

    def _encode_smiles(self, sub: _SubTokenizer, text: str, pos: int) -> list[int]:
        """A SMILES run: RDKit-valid SMILES are accepted even where the vocabulary lacks a character.

        A character that RDKit accepts but the sub-tokenizer does not know (``*`` or the ``a`` of
        ``[Na+]`` in a small vocabulary) becomes ``<UNK>`` as in the official tokenizer, with one
        warning per character; a SMILES that RDKit refuses raises, naming the character by its
        position in the SMILES and in the prompt.
        """
        for k, c in enumerate(text):
            # RDKit stops reading at a space and would accept "CC O" as "CC": refuse it first.
            if c.isspace() or not c.isascii() or not c.isprintable():
                raise _smiles_error(text, k, pos, "a SMILES is printable ASCII without spaces; remove it")
        unknown: list[tuple[str, int]] = []
        ids = self._encode_text(sub, text, pos, unknown=unknown)
        _check_smiles_run(text, pos, unknown)
        for token, _k in unknown:
            if (sub.name, token) not in self._warned_unknown:
                self._warned_unknown.add((sub.name, token))
                log.warning(
                    f"the {sub.name} vocabulary of this tokenizer has no token for {token!r} (in the valid SMILES "
                    f"{text!r}); it is encoded as <UNK> as the official tokenizer does, so the model sees less of "
                    "such molecules (reported once per character)"
                )
        return ids

    def _encode_text(
        self, sub: _SubTokenizer, text: str, pos: int, *, unknown: list[tuple[str, int]] | None = None
    ) -> list[int]:
        """Ids of a text run; an unknown token raises, or with ``unknown`` becomes ``<UNK>`` and is listed there."""
        vocab = sub.vocab
        unk = sub.unk_id if sub.unk_id is not None else self.unk_id

        def missing(token: str, k: int) -> int:
            if unknown is None:
                raise _bad_token(sub, token, pos + k)
            unknown.append((token, k))
            return unk

        if sub.per_char:
            try:
                return [vocab[c] for c in text]
            except KeyError:
                pass
            out = []
            for i, c in enumerate(text):
                if c.isspace():
                    continue
                idx = vocab.get(c)
                out.append(missing(c, i) if idx is None or c in self.special_tokens else idx)
            return out
        if sub.split_re is not None and sub.kind == "wordlevel":
            out = []
            for m in sub.split_re.finditer(text):
                idx = vocab.get(m.group(0))
                out.append(missing(m.group(0), m.start()) if idx is None else idx)
            return out
        enc = sub.hf.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        if sub.unk_id is not None:
            for j, idx in enumerate(ids):
                if idx == sub.unk_id:
                    a, b = enc.offsets[j]
                    missing(text[a:b], a)
        return ids

    def __call__(
        self,
        prompts: str | Sequence[str],
        *,
        max_seq_len: int | None = None,
        padding: str = "auto",
        strict: bool = True,
        scalars: Sequence[Mapping[str, Any] | None] | Mapping[str, Any] | None = None,
    ) -> Batch:
        """Tokenize prompts into a :class:`Batch`.

        Parameters
        ----------
        prompts
            One prompt or a list of prompts; each must end with ``<EOS>``.
        max_seq_len
            Right-truncate every prompt to this many tokens.
        padding
            ``"auto"`` (to ``max_seq_len`` when given, as the official tokenizer does, else to the
            longest prompt), ``"longest"`` or ``"max_length"``.
        strict
            Raise :class:`PromptError` on unknown special tokens, residues or genes and on SMILES
            that RDKit cannot parse (naming the token and its position). A valid SMILES with a
            character the vocabulary lacks (``*``, or ``a`` of ``[Na+]`` in a small vocabulary) is
            encoded with ``<UNK>`` there, as the official tokenizer does, and reported once.
            ``False`` keeps the official behaviour throughout (unknown -> ``<UNK>``, no RDKit check).
        scalars
            Values for ``SCALARS_FROM_DICT`` segments: one mapping for all prompts or one per prompt.

        Returns
        -------
        Batch

        Examples
        --------
        >>> tok(["<@TOKENIZER-TYPE=AA>MKT<EOS>"], max_seq_len=8).input_ids.shape  # doctest: +SKIP
        torch.Size([1, 8])
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Iterable):
            raise PromptError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
        prompts = list(prompts)
        if not prompts:
            raise PromptError("no prompt given")
        check_int(max_seq_len, "max_seq_len", where="Tokenizer", allow_none=True, error=PromptError, example=512)
        if isinstance(scalars, str | bytes) or not isinstance(scalars, Mapping | Sequence | None):
            raise PromptError(
                f"scalars must be a mapping {{name: values}} or one mapping per prompt, got {type(scalars).__name__}"
            )
        if padding not in ("auto", "longest", "max_length"):
            raise PromptError(f"padding={padding!r}; use 'auto', 'longest' or 'max_length'")
        if padding == "max_length" and max_seq_len is None:
            raise PromptError("padding='max_length' needs max_seq_len")
        per_prompt = scalars if isinstance(scalars, Sequence) and not isinstance(scalars, str) else None
        if per_prompt is not None and len(per_prompt) != len(prompts):
            raise PromptError(f"got {len(per_prompt)} scalars mappings for {len(prompts)} prompts")
        encoded: list[tuple[list[int], list[float] | None]] = []
        for i, p in enumerate(prompts):
            sc = per_prompt[i] if per_prompt is not None else scalars
            try:
                encoded.append(self.encode_one(p, strict=strict, scalars=sc))  # type: ignore[arg-type]
            except PromptError as exc:
                if len(prompts) > 1:
                    raise PromptError(f"prompt {i}: {exc}") from None
                raise
        return self.pad(encoded, prompts, max_seq_len=max_seq_len, padding=padding)

    def pad(
        self,
        encoded: Sequence[tuple[Sequence[int], Sequence[float] | None]],
        prompts: Sequence[str] = (),
        *,
        max_seq_len: int | None = None,
        padding: str = "longest",
    ) -> Batch:
        """A :class:`Batch` from :meth:`encode_one` results (prompts tokenized once, padded later).

        Examples
        --------
        >>> batch = tok.pad([tok.encode_one(p) for p in prompts])  # doctest: +SKIP
        """
        check_int(max_seq_len, "max_seq_len", where="Tokenizer.pad", allow_none=True, error=PromptError, example=512)
        if padding not in ("auto", "longest", "max_length"):
            raise PromptError(f"padding={padding!r}; use 'auto', 'longest' or 'max_length'")
        if not encoded:
            raise PromptError("Tokenizer.pad: nothing to pad; pass the encode_one results of at least one prompt")
        rows: list[Sequence[int]] = []
        svals: dict[int, Sequence[float]] = {}
        for i, (ids, vals) in enumerate(encoded):
            if max_seq_len is not None and len(ids) > max_seq_len:
                ids = ids[:max_seq_len]
                if vals is not None:
                    vals = vals[:max_seq_len]
            rows.append(ids)
            if vals is not None:
                svals[i] = vals
        lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        if max_seq_len is not None and padding in ("auto", "max_length"):
            width = int(max_seq_len)
        else:
            width = int(lens.max())
        flat = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(lens.sum()))
        mask = np.arange(width)[None, :] < lens[:, None]
        ids_arr = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        ids_arr[mask] = flat
        values = np.full((len(rows), width), SCALAR_FILL, dtype=np.float32)
        valid = np.zeros((len(rows), width), dtype=bool)
        for i, v in svals.items():
            arr = np.asarray(v, dtype=np.float32)
            values[i, : len(arr)] = arr
            valid[i, : len(arr)] = ids_arr[i, : len(arr)] == self.scalar_id
        valid &= mask
        return Batch(
            torch.from_numpy(ids_arr),
            torch.from_numpy(mask),
            torch.from_numpy(values),
            torch.from_numpy(valid),
            list(prompts),
        )

    # ------------------------------------------------------------------ decoding / inspection

    def decode(self, ids: Any, *, skip_pad: bool = True, skip_special: bool = False) -> str | list[str]:
        """Token ids back to text (a list of texts for a 2-D input).

        Ids in the vocabulary gaps print as ``<@TOKEN_MISSING-id>`` like the official decoder.

        Examples
        --------
        >>> tok.decode([512, 510, 519, 5])  # doctest: +SKIP
        'MKT<EOS>'
        """
        if isinstance(ids, torch.Tensor | np.ndarray):
            ids = ids.tolist()
        if ids and isinstance(ids[0], list | tuple):
            return [self.decode(r, skip_pad=skip_pad, skip_special=skip_special) for r in ids]  # type: ignore[misc]
        parts = []
        for i in ids:
            i = int(i)
            if skip_pad and i == self.pad_id:
                continue
            tok = self.id_to_token(i)
            if skip_special and tok in self.special_tokens:
                continue
            parts.append(tok)
        return "".join(parts)

    def token_breakdown(
        self, prompt: str, *, strict: bool = True, scalars: Mapping[str, Any] | None = None
    ) -> pd.DataFrame:
        """One row per token of ``prompt``: what it is, its id and which sub-tokenizer made it.

        Returns
        -------
        pandas.DataFrame
            Columns ``position`` (token index), ``token``, ``id``, ``sub_tokenizer``, ``kind``
            (``special``/``regular``/``scalar``), ``scalar`` (value or NaN), ``segment`` (index of
            the prompt segment) and ``truncated`` (True if ``@MAX-LEN`` dropped it).

        Examples
        --------
        >>> tok.token_breakdown(prompts.ppi("MKT", "MAD")).head()  # doctest: +SKIP
        """
        import pandas as pd

        self.encode_one(prompt, strict=strict, scalars=scalars)  # validates the whole prompt first
        rows = []
        pos = 0
        for si, seg in enumerate(parse(prompt).segments):
            seg_ids, seg_vals = self._encode_segment(seg, strict=strict, scalars=scalars)
            keep = len(seg_ids) if seg.max_len is None else min(seg.max_len, len(seg_ids))
            for k, idx in enumerate(seg_ids):
                tok = self.id_to_token(idx)
                kind = "scalar" if seg_vals is not None else ("special" if tok in self.special_tokens else "regular")
                truncated = k >= keep
                rows.append(
                    {
                        "position": -1 if truncated else pos,
                        "token": tok,
                        "id": int(idx),
                        "sub_tokenizer": seg.tokenizer_type,
                        "kind": kind,
                        "scalar": float(seg_vals[k]) if seg_vals is not None else float("nan"),
                        "segment": si,
                        "truncated": truncated,
                    }
                )
                if not truncated:
                    pos += 1
        # RAND-truncated segments are shown as if RIGHT-truncated (their window is random).
        return pd.DataFrame(rows)


def _check_smiles_run(text: str, pos: int, unknown: Sequence[tuple[str, int]] = ()) -> None:
    """RDKit check of a SMILES run at prompt character ``pos``; ``unknown`` lists tokens outside the vocabulary.

    Messages name positions in the SMILES (from its first character) and in the prompt.
    """
    from .prompts import smiles_problem

    problem = smiles_problem(text)
    if problem is None:
        return
    reason, k = problem
    if unknown:
        # A character the vocabulary lacks in a SMILES that RDKit refuses is the likelier culprit.
        _token, j = unknown[0]
        raise _smiles_error(
            text, j, pos, f"the SMILES sub-tokenizer has no such token and RDKit cannot parse the SMILES ({reason})"
        )
    where = (
        f"near {text[k]!r} at position {k} of the SMILES (at character {pos + k} of the prompt)"
        if k is not None
        else f"(the SMILES starts at character {pos} of the prompt)"
    )
    raise PromptError(f"invalid SMILES {text!r} ({reason}) {where}; fix the SMILES, or strict=False skips this RDKit check")


def _smiles_error(text: str, k: int, pos: int, why: str) -> PromptError:
    """Error for character ``k`` of the SMILES ``text`` that starts at prompt character ``pos``."""
    return PromptError(
        f"invalid SMILES character {text[k]!r} at character {pos + k} of the prompt, position {k} of the SMILES "
        f"{text!r}: {why}"
    )


def _bad_token(sub: _SubTokenizer, token: str, pos: int) -> PromptError:
    what = {"AA": "residue", "SMILES": "SMILES character", "GENE": "gene", "CELL_ATTRIBUTES": "cell attribute"}.get(
        sub.name, "token"
    )
    hint = ""
    if sub.name == "AA" and token.upper() != token:
        hint = " (residues are upper case)"
    return PromptError(
        f"invalid {what} {token!r} at character {pos}: the {sub.name} sub-tokenizer has no such token{hint}; "
        "strict=False maps it to <UNK> as the official tokenizer does"
    )


def _make_sub(info: dict[str, Any], fname: str, raw: str, hf: Any) -> _SubTokenizer:
    d = json.loads(raw)
    model = d.get("model", {})
    mtype = str(model.get("type", "")).lower()
    kind = "wordlevel" if mtype == "wordlevel" else ("bpe" if mtype == "bpe" else "other")
    specials = {t["content"] for t in d.get("added_tokens", [])}
    vocab_all = model.get("vocab") if isinstance(model.get("vocab"), dict) else {}
    vocab = {k: int(v) for k, v in vocab_all.items() if k not in specials}
    split_re = None
    per_char = False
    pre = d.get("pre_tokenizer")
    if kind == "wordlevel" and d.get("normalizer") is None and pre is not None:
        pats = _split_patterns(pre)
        if pats is not None:
            # The '<.*?>' alternative only matters for unknown specials, which strict mode rejects.
            pattern = "|".join(pats)
            stripped = [p for p in pattern.split("|") if p != "<.*?>"]
            if stripped == ["\\S"]:
                per_char = True
            split_re = re.compile("|".join(stripped))
    unk = model.get("unk_token")
    unk_id = vocab_all.get(unk) if unk is not None else None
    return _SubTokenizer(
        info["name"], int(info.get("tokenizer_id", 0)), fname, hf, raw, kind, vocab, split_re, per_char, unk_id, info
    )


def _split_patterns(pre: dict[str, Any]) -> list[str] | None:
    """Regexes of an ``invert`` Split pre-tokenizer (possibly inside a Sequence), else None."""
    items = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(items) != 1:
        return None
    p = items[0]
    if p.get("type") != "Split" or not p.get("invert") or p.get("behavior") != "Removed":
        return None
    rx = p.get("pattern", {}).get("Regex")
    return [rx] if rx else None


__all__ = ["SCALAR_FILL", "Batch", "Tokenizer"]
