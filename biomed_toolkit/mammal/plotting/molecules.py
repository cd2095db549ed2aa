"""2D molecule grids and token-to-atom attribution (which atoms a prompt's SMILES tokens cover).

Examples
--------
>>> from biomed_toolkit.mammal.plotting import molecules
>>> molecules(["CCO", "c1ccccc1O"], legends=[5.1, 6.3]).n_valid
2
"""

from __future__ import annotations

import html
import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biomed_toolkit.core.errors import InputError

from ..metrics import as_1d as _as_1d


def _svg_body(svg: str) -> str:
    """Drop the XML declaration so an SVG can be nested or inlined in HTML."""
    return re.sub(r"^\s*<\?xml[^>]*\?>\s*", "", svg)



# ----------------------------------------------------------------------------- SMILES helpers

# Atoms in SMILES order: bracket atoms, two-letter organic atoms, then one-letter ones.
_ATOM_RE = re.compile(r"\[[^\]]*\]|Br|Cl|[BCNOSPFI]|[bcnops]|\*")
# Ring-bond labels such as %12 must be skipped so their digits are not mistaken for atoms.
_SMILES_SCAN_RE = re.compile(r"%\d\d|" + _ATOM_RE.pattern)


def smiles_atom_spans(smiles: str) -> list[tuple[int, int]]:
    """Character span ``(start, end)`` of every atom of ``smiles``, in RDKit's atom order.

    RDKit numbers atoms in the order they appear in the SMILES string (explicit ``[H]`` atoms
    included before hydrogens are removed).

    Examples
    --------
    >>> smiles_atom_spans("C[NH3+]Cl")
    [(0, 1), (1, 7), (7, 9)]
    """
    return [
        (m.start(), m.end())
        for m in _SMILES_SCAN_RE.finditer(smiles)
        if not m.group(0).startswith("%")
    ]


def _parse_mol(smiles: str) -> tuple[Any, str | None]:
    """RDKit molecule (explicit H kept, so indices follow :func:`smiles_atom_spans`) or an error."""
    from rdkit import Chem, RDLogger

    if not isinstance(smiles, str) or not smiles.strip():
        return None, f"empty or non-text SMILES {smiles!r}"
    RDLogger.DisableLog("rdApp.*")
    try:
        params = Chem.SmilesParserParams()
        params.removeHs = False
        mol = Chem.MolFromSmiles(smiles, params)
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is not None:
        return mol, None
    # Let the prompt validator phrase the error (it names the position RDKit reports).
    try:
        from biomed_toolkit.core.errors import PromptError
        from biomed_toolkit.mammal.prompts import check_smiles

        check_smiles(smiles)
    except PromptError as err:
        return None, str(err)
    except Exception:  # pragma: no cover - validator missing or changed
        pass
    return None, f"invalid SMILES {smiles!r}: RDKit cannot parse it"


def _token_table(tokens: Any) -> tuple[list[str], np.ndarray]:
    """Tokens and scores from a DataFrame (``token`` + score column) or ``(token, score)`` pairs."""
    import pandas as pd

    if isinstance(tokens, pd.DataFrame):
        df = tokens
        sub = next(
            (c for c in ("sub-tokenizer", "sub_tokenizer", "tokenizer") if c in df.columns), None
        )
        if sub is not None and (df[sub].astype(str).str.upper() == "SMILES").any():
            df = df[df[sub].astype(str).str.upper() == "SMILES"]
        score_col = next(
            (c for c in ("score", "attribution", "importance", "weight") if c in df.columns), None
        )
        if "token" not in df.columns or score_col is None:
            raise InputError(
                "a token attribution table needs a 'token' column and a 'score' (or 'attribution') "
                f"column; got columns {list(tokens.columns)}"
            )
        return [str(t) for t in df["token"]], df[score_col].to_numpy(dtype=np.float64)
    pairs = list(tokens)
    if not all(isinstance(p, tuple | list) and len(p) == 2 for p in pairs):
        raise InputError("token attributions must be a DataFrame or a list of (token, score) pairs")
    return [str(t) for t, _ in pairs], np.asarray([float(s) for _, s in pairs], dtype=np.float64)


def token_scores_to_atoms(smiles: str, tokens: Any, scores: Any = None) -> np.ndarray:
    """Spread per-token scores of a SMILES tokenization onto its atoms.

    Special tokens (``<...>``) are ignored; the remaining tokens must spell ``smiles`` in order
    (a prompt's tokens may hold more text around it). An atom takes the mean score of the tokens
    that overlap its characters; atoms covered by no token (after truncation) get NaN.

    Parameters
    ----------
    smiles
        The molecule.
    tokens
        Token strings, or a DataFrame with ``token`` and ``score`` columns (e.g. a token breakdown
        with an added score column; rows of other sub-tokenizers are dropped), or
        ``(token, score)`` pairs.
    scores
        Scores, one per token, when ``tokens`` is a list of strings.

    Returns
    -------
    numpy.ndarray
        One score per atom in RDKit's atom order (explicit ``[H]`` atoms included).

    Examples
    --------
    >>> token_scores_to_atoms("CCO", ["C", "CO"], [1.0, 3.0]).tolist()
    [1.0, 3.0, 3.0]
    """
    if scores is None:
        toks, vals = _token_table(tokens)
    else:
        toks = [str(t) for t in tokens]
        vals = _as_1d(scores, "token scores")
        if len(toks) != len(vals):
            raise InputError(
                f"got {len(toks)} tokens but {len(vals)} scores; give one score per token"
            )
    keep = [i for i, t in enumerate(toks) if not (t.startswith("<") and t.endswith(">"))]
    text = "".join(toks[i] for i in keep)
    offset = text.find(smiles)
    if offset < 0:
        # A truncated SMILES segment holds only a prefix of the molecule.
        if text and smiles.startswith(text):
            offset = 0
        else:
            raise InputError(
                f"the tokens do not spell the SMILES {smiles!r} (they spell {text[:80]!r}); "
                "pass the tokens of this molecule"
            )
    starts = []
    pos = -offset
    for i in keep:
        starts.append((pos, pos + len(toks[i]), vals[i]))
        pos += len(toks[i])
    spans = smiles_atom_spans(smiles)
    out = np.full(len(spans), np.nan)
    for a, (s, e) in enumerate(spans):
        hits = [v for (ts, te, v) in starts if ts < e and te > s]
        if hits:
            out[a] = float(np.mean(hits))
    return out


def _scores_for_mol(mol: Any, smiles: str, scores: Any) -> np.ndarray:
    """Per-atom scores of ``mol`` (explicit-H indexing) from per-atom or per-token input."""
    import pandas as pd

    n = mol.GetNumAtoms()
    if isinstance(scores, pd.DataFrame) or (
        isinstance(scores, Sequence) and scores and isinstance(scores[0], tuple | list)
    ):
        return token_scores_to_atoms(smiles, scores)
    arr = _as_1d(scores, "atom_scores")
    if arr.shape[0] != n:
        heavy = sum(1 for a in mol.GetAtoms() if a.GetAtomicNum() != 1)
        if arr.shape[0] == heavy:  # scores given for the drawn (heavy) atoms only
            full = np.full(n, np.nan)
            full[[a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() != 1]] = arr
            return full
        raise InputError(
            f"atom_scores for {smiles!r} has {arr.shape[0]} values but the molecule has {n} atoms; "
            "give one score per atom, or a token table (DataFrame with 'token' and 'score')"
        )
    return arr


def _score_colors(values: np.ndarray) -> dict[int, tuple[float, float, float]]:
    """Blue-white-red for signed scores, white-red for non-negative ones."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {}
    scale = float(np.max(np.abs(finite))) or 1.0
    signed = bool((finite < 0).any())
    colors = {}
    for i, v in enumerate(values):
        if not np.isfinite(v):
            continue
        t = float(v) / scale
        if t >= 0:
            colors[i] = (1.0, 1.0 - 0.75 * t, 1.0 - 0.75 * t)
        elif signed:
            colors[i] = (1.0 + 0.75 * t, 1.0 + 0.75 * t, 1.0)
    return colors


# ----------------------------------------------------------------------------- 2D grid


@dataclass
class MoleculeGrid:
    """A grid of 2D depictions; shows itself in a notebook (``_repr_html_``).

    Attributes
    ----------
    smiles, legends, errors
        Per cell: the input, the caption, and ``None`` or why the SMILES could not be drawn.
    cells
        One SVG string per cell.
    n_cols, size
        Layout: columns, and ``(width, height)`` of one cell in pixels.
    """

    smiles: list[str]
    legends: list[str]
    errors: list[str | None]
    cells: list[str]
    n_cols: int
    size: tuple[int, int]
    atom_scores: list[np.ndarray | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cells)

    @property
    def n_valid(self) -> int:
        """Number of molecules drawn (cells without an error)."""
        return sum(e is None for e in self.errors)

    def to_svg(self) -> str:
        """One SVG holding every cell (nested ``<svg>`` elements, class ``bt-mol`` or ``bt-error``)."""
        w, h = self.size
        n_cols = max(1, min(self.n_cols, len(self.cells) or 1))
        n_rows = max(1, math.ceil(len(self.cells) / n_cols))
        parts = [
            f"<svg xmlns='http://www.w3.org/2000/svg' version='1.1' class='bt-molecule-grid' "
            f"width='{w * n_cols}px' height='{h * n_rows}px' viewBox='0 0 {w * n_cols} {h * n_rows}'>"
        ]
        for i, cell in enumerate(self.cells):
            x, y = (i % n_cols) * w, (i // n_cols) * h
            parts.append(re.sub(r"^<svg\b", f"<svg x='{x}' y='{y}'", _svg_body(cell), count=1))
        parts.append("</svg>")
        return "\n".join(parts)

    def to_html(self) -> str:
        """HTML holding the grid SVG (no script, no external resource)."""
        return f"<div class='bt-molecule-grid' style='overflow-x:auto'>{self.to_svg()}</div>"

    def _repr_html_(self) -> str:
        return self.to_html()

    def save(self, path: str | Path) -> Path:
        """Write the grid to ``path`` (``.svg`` or ``.html``)."""
        path = Path(path)
        if path.suffix.lower() not in (".svg", ".html", ".htm"):
            raise InputError(f"cannot save a molecule grid as {path.suffix!r}; use .svg or .html")
        path.write_text(
            self.to_svg() if path.suffix.lower() == ".svg" else self.to_html(), encoding="utf-8"
        )
        return path

    def __repr__(self) -> str:
        bad = len(self) - self.n_valid
        return f"MoleculeGrid({len(self)} cells, {self.n_valid} drawn, {bad} invalid, {self.n_cols} columns)"


def _error_cell(smiles: str, error: str, legend: str, size: tuple[int, int]) -> str:
    w, h = size
    shown = smiles if len(smiles) <= 28 else smiles[:25] + "..."
    reason = error.split(": ", 1)[-1]
    # Wrap to the cell: about 6 px per character, 15 px per line above the legend.
    lines = textwrap.wrap(reason, max(10, (w - 16) // 6))[: max(1, (h - 82) // 15 + 1)]
    texts = "".join(
        f"<text x='8' y='{62 + 15 * k}' font-size='11' fill='#7a1f1f' font-family='sans-serif'>"
        f"{html.escape(t)}</text>"
        for k, t in enumerate(lines)
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' class='bt-cell bt-error' width='{w}px' height='{h}px' "
        f"viewBox='0 0 {w} {h}'><title>{html.escape(error)}</title>"
        f"<rect x='1' y='1' width='{w - 2}' height='{h - 2}' fill='#fdecec' stroke='#d9534f'/>"
        f"<text x='8' y='22' font-size='13' font-weight='bold' fill='#a94442' font-family='sans-serif'>"
        f"invalid SMILES</text>"
        f"<text x='8' y='42' font-size='11' fill='#333' font-family='monospace'>{html.escape(shown)}</text>"
        f"{texts}"
        f"<text x='{w / 2}' y='{h - 8}' font-size='12' text-anchor='middle' fill='#333' "
        f"font-family='sans-serif'>{html.escape(legend)}</text></svg>"
    )


def _highlight_atoms(mol: Any, spec: Any, smiles: str) -> list[int]:
    from rdkit import Chem

    if spec is None:
        return []
    if isinstance(spec, str):
        patt = Chem.MolFromSmarts(spec)
        if patt is None:
            raise InputError(f"highlight={spec!r} is not a valid SMARTS pattern")
        return sorted({i for match in mol.GetSubstructMatches(patt) for i in match})
    atoms = [int(i) for i in spec]
    n = mol.GetNumAtoms()
    bad = [i for i in atoms if not 0 <= i < n]
    if bad:
        raise InputError(
            f"highlight atom index {bad[0]} is out of range for {smiles!r} ({n} atoms)"
        )
    return atoms


def _per_molecule(value: Any, n: int, what: str) -> list[Any]:
    """Broadcast a highlight/atom-score argument to one entry per molecule."""
    if value is None:
        return [None] * n
    if isinstance(value, str):
        return [value] * n
    import pandas as pd

    if isinstance(value, pd.DataFrame):
        if n != 1:
            raise InputError(f"{what} as a single table only fits one molecule; pass a list of {n}")
        return [value]
    items = list(value)
    if items and all(isinstance(v, int | np.integer) for v in items):
        return [items] * n if what == "highlight" else _single(items, n, what)
    if items and all(isinstance(v, float | int | np.floating | np.integer) for v in items):
        return _single(items, n, what)
    if items and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in items):
        return _single(items, n, what)  # (token, score) pairs of one molecule
    if len(items) != n:
        raise InputError(
            f"{what} has {len(items)} entries for {n} molecules; give one per molecule"
        )
    return items


def _single(items: list[Any], n: int, what: str) -> list[Any]:
    if n != 1:
        raise InputError(
            f"{what} looks like values for one molecule but there are {n}; pass a list with one entry per molecule"
        )
    return [items]


def _legend_text(value: Any, name: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = f"{float(value):.2f}" if isinstance(value, float | np.floating) else str(value)
    return f"{name} {text}" if name else text


def molecules(
    smiles_or_df: Any,
    *,
    legends: Sequence[Any] | None = None,
    highlight: Any = None,
    atom_scores: Any = None,
    smiles_col: str = "smiles",
    legend_col: str | None = None,
    n_cols: int = 4,
    size: tuple[int, int] = (220, 180),
) -> MoleculeGrid:
    """Grid of 2D molecule depictions (RDKit SVG) with legends and atom highlights.

    Parameters
    ----------
    smiles_or_df
        A SMILES string, a list/Series of SMILES (or RDKit molecules), or a DataFrame with a
        ``smiles_col`` column.
    legends
        One caption per molecule; numbers are shown with two decimals (e.g. predicted pKd).
    highlight
        Atoms to highlight: a SMARTS pattern (every match in every molecule), a list of atom
        indices (all molecules), or one such entry per molecule.
    atom_scores
        Colour atoms by an attribution: per molecule either one value per atom, or a per-token
        table (DataFrame with ``token`` and ``score`` columns, or ``(token, score)`` pairs) which
        is mapped onto atoms (:func:`token_scores_to_atoms`). Red is positive, blue negative.
    smiles_col, legend_col
        DataFrame columns with the SMILES and with the legend values (the column name is
        prefixed, e.g. ``"pKd 6.21"``).
    n_cols
        Cells per row.
    size
        ``(width, height)`` of one cell in pixels.

    Returns
    -------
    MoleculeGrid
        Shows itself in a notebook; ``.to_svg()``, ``.to_html()``, ``.errors``. Invalid SMILES get
        an error cell naming the problem instead of raising.

    Examples
    --------
    >>> grid = molecules(["CCO", "c1ccccc1O", "C1CC"], legends=[5.2, 6.8, 4.0], highlight="[OX2H]")
    >>> grid.n_valid, grid.errors[2] is not None
    (2, True)
    """
    import pandas as pd
    from rdkit import Chem
    from rdkit.Chem.Draw import rdMolDraw2D

    if n_cols < 1:
        raise InputError(f"n_cols must be at least 1, got {n_cols}")
    w, h = (int(size[0]), int(size[1]))
    legend_name = None
    if isinstance(smiles_or_df, pd.DataFrame):
        df = smiles_or_df
        if smiles_col not in df.columns:
            raise InputError(
                f"no column {smiles_col!r} in the DataFrame (columns: {list(df.columns)}); pass smiles_col="
            )
        items = list(df[smiles_col])
        if legend_col is not None:
            if legend_col not in df.columns:
                raise InputError(
                    f"legend_col {legend_col!r} is not a column (columns: {list(df.columns)})"
                )
            if legends is None:
                legends = list(df[legend_col])
                legend_name = legend_col
    elif isinstance(smiles_or_df, str | Chem.Mol):
        items = [smiles_or_df]
    else:
        items = list(smiles_or_df)
    n = len(items)
    if legends is None:
        legend_list = [""] * n
    else:
        legends = list(legends)
        if len(legends) != n:
            raise InputError(f"got {len(legends)} legends for {n} molecules; give one per molecule")
        legend_list = [_legend_text(v, legend_name) for v in legends]
    highlights = _per_molecule(highlight, n, "highlight")
    scores = _per_molecule(atom_scores, n, "atom_scores")

    cells, errors, smiles_out, score_out = [], [], [], []
    for i, item in enumerate(items):
        if isinstance(item, Chem.Mol):
            mol, err, smi = Chem.Mol(item), None, Chem.MolToSmiles(item)
        else:
            smi = (
                "" if item is None or (isinstance(item, float) and math.isnan(item)) else str(item)
            )
            mol, err = _parse_mol(smi)
        smiles_out.append(smi)
        if mol is None:
            errors.append(err)
            cells.append(_error_cell(smi, err or "invalid SMILES", legend_list[i], (w, h)))
            score_out.append(None)
            continue
        atom_vals = None if scores[i] is None else _scores_for_mol(mol, smi, scores[i])
        hl = _highlight_atoms(mol, highlights[i], smi)
        # Carry scores and highlights through hydrogen removal as atom properties.
        for a in mol.GetAtoms():
            a.SetIntProp("bt_idx", a.GetIdx())
        draw_mol = Chem.RemoveHs(mol, sanitize=False) if mol.GetNumAtoms() > 1 else mol
        old_to_new = {a.GetIntProp("bt_idx"): a.GetIdx() for a in draw_mol.GetAtoms()}
        atom_colors: dict[int, tuple[float, float, float]] = {}
        if atom_vals is not None:
            atom_colors = {
                old_to_new[k]: c for k, c in _score_colors(atom_vals).items() if k in old_to_new
            }
        hl_atoms = [old_to_new[k] for k in hl if k in old_to_new]
        for k in hl_atoms:
            atom_colors.setdefault(k, (1.0, 0.78, 0.3))
        hl_set = set(hl_atoms)
        bonds = [
            b.GetIdx()
            for b in draw_mol.GetBonds()
            if b.GetBeginAtomIdx() in hl_set and b.GetEndAtomIdx() in hl_set
        ]
        drawer = rdMolDraw2D.MolDraw2DSVG(w, h)
        rdMolDraw2D.PrepareAndDrawMolecule(
            drawer,
            draw_mol,
            legend=legend_list[i],
            highlightAtoms=sorted(atom_colors),
            highlightAtomColors=atom_colors,
            highlightBonds=bonds,
            highlightBondColors={b: (1.0, 0.78, 0.3) for b in bonds},
        )
        drawer.FinishDrawing()
        svg = _svg_body(drawer.GetDrawingText())
        # A <title> gives a hover tooltip and keeps the SMILES/legend searchable (glyphs are paths).
        tip = html.escape(smi + (f" | {legend_list[i]}" if legend_list[i] else ""))
        svg = re.sub(
            r"^<svg\b([^>]*)>",
            lambda m, tip=tip: f"<svg class='bt-cell bt-mol'{m.group(1)}><title>{tip}</title>",
            svg,
            count=1,
        )
        cells.append(svg)
        errors.append(None)
        score_out.append(atom_vals)
    return MoleculeGrid(smiles_out, legend_list, errors, cells, int(n_cols), (w, h), score_out)
