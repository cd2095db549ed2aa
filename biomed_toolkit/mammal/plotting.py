"""Notebook views for drug-target work: molecule grids, 3D conformers, protein tracks, score plots.

Heavy libraries (RDKit drawing, plotly, py3Dmol) are imported inside the functions so that
``import biomed_toolkit`` stays light.

Examples
--------
>>> from biomed_toolkit.mammal import plotting
>>> grid = plotting.molecules(["CCO", "c1ccccc1O"], legends=[5.1, 6.3])
>>> grid.n_valid
2
"""

from __future__ import annotations

import functools
import html
import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biomed_toolkit.core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import plotly.graph_objects as go

THREEDMOL_VERSION = "2.5.5"
"""Version of the bundled 3Dmol.js (npm package ``3dmol``), licence BSD-3-Clause."""

_STATIC = Path(__file__).with_name("_static")
_THREEDMOL_FILE = _STATIC / "3Dmol-min.js"
# py3Dmol loads its script from this "URL"; we swap the loader for the inlined bundle.
_JS_SENTINEL = "__biomed_toolkit_bundled_3dmol__"


# ----------------------------------------------------------------------------- shared helpers


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (not a terminal IPython or plain Python)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def _finish(fig: Any, show: bool, return_fig: bool) -> Any:
    """Apply the ``show=``/``return_fig=`` convention (display only inside a notebook)."""
    if show and not return_fig and _in_notebook():
        from IPython.display import display

        display(fig)
    return fig if return_fig else None


def _as_1d(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers; got {type(values).__name__}") from None
    if arr.ndim != 1:
        arr = arr.ravel() if arr.size == max(arr.shape, default=0) else arr
    if arr.ndim != 1:
        raise InputError(f"{what} must be one-dimensional, got shape {arr.shape}")
    return arr


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


# ----------------------------------------------------------------------------- 3D view


@functools.lru_cache(maxsize=1)
def bundled_3dmol_js() -> str:
    """Source of the bundled 3Dmol.js build (see ``_static/README.md``)."""
    if not _THREEDMOL_FILE.is_file():
        raise FileNotFoundError(
            f"the bundled 3Dmol.js is missing ({_THREEDMOL_FILE}); reinstall biomed_toolkit"
        )
    return _THREEDMOL_FILE.read_text(encoding="utf-8")


def _bundled_script_tag() -> str:
    """Inline ``<script>`` defining ``window.$3Dmol`` once per page, without network access."""
    js = bundled_3dmol_js().replace("</script", "<\\/script")
    # Hide AMD/CommonJS loaders (Jupyter classic ships require.js) so the UMD bundle
    # attaches $3Dmol to window instead of registering an anonymous module.
    return (
        "<script type='text/javascript'>\n"
        f"/* 3Dmol.js {THREEDMOL_VERSION} (BSD-3-Clause, University of Pittsburgh and contributors), "
        "bundled by biomed_toolkit */\n"
        "if (typeof window.$3Dmol === 'undefined') {\n"
        "(function(define, exports, module) {\n"
        f"{js}\n"
        "}).call(window);\n"
        "}\n"
        "window.$3Dmolpromise = Promise.resolve();\n"
        "</script>\n"
    )


_STYLES = {
    "stick": {"stick": {"radius": 0.15}},
    "ballstick": {"stick": {"radius": 0.12}, "sphere": {"scale": 0.25}},
    "sphere": {"sphere": {}},
    "line": {"line": {}},
}


@dataclass
class Molecule3DView:
    """A 3D conformer shown with py3Dmol and the bundled 3Dmol.js (works offline).

    Attributes
    ----------
    smiles
        The input molecule.
    molblock
        MDL molfile of the conformer (hydrogens included).
    forcefield
        ``"MMFF94"``, ``"UFF"`` (MMFF lacks parameters) or ``None`` (not optimised).
    converged
        Whether the force-field optimisation converged.
    energy
        Final force-field energy (kcal/mol) or ``None``.
    style, width, height
        Display options.
    """

    smiles: str
    molblock: str
    forcefield: str | None
    converged: bool
    energy: float | None
    style: str = "stick"
    width: int = 400
    height: int = 300

    @property
    def view(self) -> Any:
        """A fresh ``py3Dmol.view`` with the model and style (add your own calls, then ``to_html``)."""
        import py3Dmol

        v = py3Dmol.view(width=self.width, height=self.height, js=_JS_SENTINEL)
        v.addModel(self.molblock, "mol")
        v.setStyle(_STYLES[self.style])
        v.zoomTo()
        return v

    def to_html(self, view: Any = None) -> str:
        """Self-contained HTML: the inlined 3Dmol.js bundle plus the viewer script (no URLs).

        Parameters
        ----------
        view
            A ``py3Dmol.view`` obtained from :attr:`view` and changed by the caller; default the
            view built from this object's style.
        """
        v = self.view if view is None else view
        body = v._make_html()
        loader = f"loadScriptAsync('{_JS_SENTINEL}')"
        if loader not in body:
            raise RuntimeError(
                "py3Dmol produced HTML in an unexpected layout; build the view from Molecule3DView.view"
            )
        body = body.replace(loader, "Promise.resolve()")
        return _bundled_script_tag() + body

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_iframe(self) -> str:
        """The same page inside an ``<iframe srcdoc>``, for containers that do not run scripts
        set through ``innerHTML`` (an ipywidgets ``HTML`` value, for instance)."""
        page = f"<html><body style='margin:0'>{self.to_html()}</body></html>"
        return (
            f"<iframe class='bt-molecule-3d' srcdoc=\"{html.escape(page, quote=True)}\" "
            f"width='{self.width + 4}' height='{self.height + 4}' style='border:0' "
            f"title='3D conformer of {html.escape(self.smiles, quote=True)}'></iframe>"
        )

    def show(self) -> None:
        """Display the view in the notebook."""
        from IPython.display import HTML, display

        display(HTML(self.to_html()))

    def __repr__(self) -> str:
        ff = (
            f"{self.forcefield}, converged={self.converged}" if self.forcefield else "not optimised"
        )
        return f"Molecule3DView({self.smiles!r}, {ff}, style={self.style!r})"


def embed_conformer(
    smiles: str, *, seed: int | None = None, optimize: bool = True
) -> tuple[Any, str | None, bool, float | None]:
    """ETKDG conformer with hydrogens, optimised with MMFF94 (UFF when MMFF lacks parameters).

    Returns ``(mol, forcefield, converged, energy)``; raises :class:`InputError` when the SMILES
    is invalid or no conformer can be embedded.

    Examples
    --------
    >>> mol, ff, converged, energy = embed_conformer("CCO", seed=0)
    >>> ff, mol.GetNumConformers()
    ('MMFF94', 1)
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol, err = _parse_mol(smiles)
    if mol is None:
        raise InputError(f"cannot build a 3D view: {err}")
    mol = Chem.AddHs(Chem.RemoveHs(mol))
    if seed is None:
        from biomed_toolkit.core.settings import settings

        seed = settings.seed
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True  # helps large or strained ring systems
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise InputError(
                f"RDKit could not embed a 3D conformer for {smiles!r}; check stereochemistry or try "
                "another seed"
            )
    forcefield, converged, energy = None, False, None
    if optimize:
        if AllChem.MMFFHasAllMoleculeParams(mol):
            props = AllChem.MMFFGetMoleculeProperties(mol)
            ff = AllChem.MMFFGetMoleculeForceField(mol, props)
            forcefield = "MMFF94"
        else:
            ff = AllChem.UFFGetMoleculeForceField(mol)
            forcefield = "UFF"
        converged = ff.Minimize(maxIts=2000) == 0
        energy = float(ff.CalcEnergy())
    return mol, forcefield, converged, energy


def molecule_3d(
    smiles: str,
    *,
    style: str = "stick",
    width: int = 400,
    height: int = 300,
    seed: int | None = None,
    optimize: bool = True,
) -> Molecule3DView:
    """3D conformer of a molecule (RDKit ETKDG + MMFF94) shown with py3Dmol, offline.

    The produced HTML inlines the bundled 3Dmol.js build (3dmol ``2.5.5`` from npm, BSD-3-Clause)
    instead of loading it from a CDN, so it renders on air-gapped machines and in saved notebooks.

    Parameters
    ----------
    smiles
        The molecule.
    style
        ``"stick"``, ``"ballstick"``, ``"sphere"`` or ``"line"``.
    width, height
        Viewer size in pixels.
    seed
        Embedding seed (default ``bt.settings.seed``), so the same SMILES gives the same conformer.
    optimize
        Run the force-field optimisation.

    Returns
    -------
    Molecule3DView
        Shows itself in a notebook; ``.to_html()``, ``.molblock``, ``.view`` (py3Dmol).

    Examples
    --------
    >>> v = molecule_3d("CC(=O)Oc1ccccc1C(=O)O")
    >>> v.forcefield, "<script src" in v.to_html()
    ('MMFF94', False)
    """
    from rdkit import Chem

    if style not in _STYLES:
        raise InputError(f"unknown style {style!r}; choose one of {', '.join(_STYLES)}")
    mol, forcefield, converged, energy = embed_conformer(smiles, seed=seed, optimize=optimize)
    return Molecule3DView(
        smiles=smiles,
        molblock=Chem.MolToMolBlock(mol),
        forcefield=forcefield,
        converged=converged,
        energy=energy,
        style=style,
        width=int(width),
        height=int(height),
    )


# ----------------------------------------------------------------------------- protein track

RESIDUE_CLASSES: dict[str, tuple[str, str]] = {
    # class name -> (residue letters, colour)
    "hydrophobic": ("AVLIMC", "#f2c14e"),
    "aromatic": ("FWY", "#c98bdb"),
    "polar": ("STNQ", "#7fc97f"),
    "positive": ("KRH", "#5b8ff9"),
    "negative": ("DE", "#f05d5e"),
    "special": ("GP", "#b0b0b0"),
    "other": ("XBZUO", "#e8e8e8"),
}


def residue_class(residue: str) -> str:
    """Physico-chemical class of a one-letter residue (see ``RESIDUE_CLASSES``).

    Examples
    --------
    >>> residue_class("K")
    'positive'
    """
    for name, (letters, _) in RESIDUE_CLASSES.items():
        if residue in letters:
            return name
    return "other"


def protein(
    sequence: str,
    scores: Any = None,
    *,
    wrap: int = 60,
    title: str | None = None,
    colorscale: str = "RdBu_r",
    score_label: str = "score",
    show: bool = True,
    return_fig: bool = False,
) -> go.Figure | None:
    """Sequence track of a protein, one coloured cell per residue.

    Parameters
    ----------
    sequence
        One-letter amino-acid sequence.
    scores
        Optional per-residue values (attribution, conservation, ...); without them residues are
        coloured by class (hydrophobic, aromatic, polar, positive, negative, special). NaN cells
        are left grey.
    wrap
        Residues per row.
    title, colorscale, score_label
        Figure title, plotly colour scale for scores, and the score name in hover text.
    show, return_fig
        Display in the notebook; return the plotly figure.

    Returns
    -------
    plotly.graph_objects.Figure or None
        The figure when ``return_fig=True``. Hover shows position (1-based), residue, class and
        score.

    Examples
    --------
    >>> fig = protein("MKTAYIAKQR", scores=range(10), return_fig=True, show=False)
    >>> fig.data[0].type
    'heatmap'
    """
    import plotly.graph_objects as go

    from biomed_toolkit.mammal.prompts import check_protein

    check_protein(sequence)
    n = len(sequence)
    if wrap < 1:
        raise InputError(f"wrap must be at least 1, got {wrap}")
    vals = None
    if scores is not None:
        vals = _as_1d(list(scores) if not hasattr(scores, "__array__") else scores, "scores")
        if vals.shape[0] != n:
            raise InputError(
                f"got {vals.shape[0]} scores for a sequence of {n} residues; give one score per residue"
            )
    cols = min(wrap, n)
    rows = math.ceil(n / cols)
    names = list(RESIDUE_CLASSES)
    z = np.full((rows, cols), np.nan)
    text = np.full((rows, cols), "", dtype=object)
    custom = np.empty((rows, cols, 4), dtype=object)
    custom[:] = ""
    for i, res in enumerate(sequence):
        r, c = divmod(i, cols)
        cls = residue_class(res)
        z[r, c] = vals[i] if vals is not None else names.index(cls)
        text[r, c] = res
        score = "" if vals is None else (f"{vals[i]:.4g}" if np.isfinite(vals[i]) else "nan")
        custom[r, c] = [i + 1, res, cls, score]
    hover = "position %{customdata[0]}<br>residue %{customdata[1]} (%{customdata[2]})"
    if vals is not None:
        hover += f"<br>{html.escape(score_label)} %{{customdata[3]}}"
    hover += "<extra></extra>"
    if vals is None:
        k = len(names)
        colorscale_used: Any = []
        for j, name in enumerate(names):
            colorscale_used += [
                [j / k, RESIDUE_CLASSES[name][1]],
                [(j + 1) / k, RESIDUE_CLASSES[name][1]],
            ]
        heat = go.Heatmap(
            z=z,
            text=text,
            customdata=custom,
            texttemplate="%{text}",
            hovertemplate=hover,
            colorscale=colorscale_used,
            zmin=-0.5,
            zmax=k - 0.5,
            xgap=1,
            ygap=3,
            colorbar={"tickvals": list(range(k)), "ticktext": names, "title": "class"},
        )
    else:
        finite = vals[np.isfinite(vals)]
        zmid = 0.0 if finite.size and finite.min() < 0 < finite.max() else None
        heat = go.Heatmap(
            z=z,
            text=text,
            customdata=custom,
            texttemplate="%{text}",
            hovertemplate=hover,
            colorscale=colorscale,
            zmid=zmid,
            xgap=1,
            ygap=3,
            colorbar={"title": score_label},
        )
    fig = go.Figure(heat)
    fig.update_layout(
        title=title or f"protein ({n} residues)",
        height=110 + 34 * rows,
        plot_bgcolor="#f4f4f4",
        margin={"l": 50, "r": 20, "t": 50, "b": 30},
    )
    fig.update_xaxes(
        tickvals=list(range(0, cols, 10)),
        ticktext=[str(t + 1) for t in range(0, cols, 10)],
        showgrid=False,
    )
    fig.update_yaxes(
        tickvals=list(range(rows)),
        ticktext=[str(r * cols + 1) for r in range(rows)],
        autorange="reversed",
        showgrid=False,
    )
    return _finish(fig, show, return_fig)


def protein_html(sequence: str, *, wrap: int = 60, title: str | None = None) -> str:
    """A script-free HTML sequence track coloured by residue class (for widgets and reports).

    Examples
    --------
    >>> "residue 2 K (positive)" in protein_html("MKT")
    True
    """
    from biomed_toolkit.mammal.prompts import check_protein

    check_protein(sequence)
    colors = {name: color for name, (_, color) in RESIDUE_CLASSES.items()}
    rows = []
    for start in range(0, len(sequence), wrap):
        cells = "".join(
            f"<span title='residue {start + k + 1} {res} ({residue_class(res)})' "
            f"style='background:{colors[residue_class(res)]};display:inline-block;width:1.1em;"
            f"text-align:center'>{res}</span>"
            for k, res in enumerate(sequence[start : start + wrap])
        )
        rows.append(
            f"<div><span style='display:inline-block;width:3.5em;color:#888'>{start + 1}</span>{cells}</div>"
        )
    head = f"<div style='font-weight:bold'>{html.escape(title)}</div>" if title else ""
    legend = " ".join(
        f"<span style='background:{c};padding:0 4px'>{html.escape(n)}</span>"
        for n, c in colors.items()
    )
    return (
        f"<div class='bt-protein' style='font-family:monospace;font-size:12px;line-height:1.5'>{head}"
        f"{''.join(rows)}<div style='margin-top:4px;font-size:11px'>{legend}</div></div>"
    )


# ----------------------------------------------------------------------------- score plots


def _pair_arrays(pred: Any, measured: Any, data: Any) -> tuple[np.ndarray, np.ndarray, str, str]:
    if data is not None:
        for col in (pred, measured):
            if col not in data.columns:
                raise InputError(
                    f"column {col!r} is not in the data (columns: {list(data.columns)})"
                )
        return (
            _as_1d(data[pred], str(pred)),
            _as_1d(data[measured], str(measured)),
            str(pred),
            str(measured),
        )
    p = _as_1d(pred, "pred")
    m = _as_1d(measured, "measured")
    if p.shape[0] != m.shape[0]:
        raise InputError(
            f"pred has {p.shape[0]} values but measured has {m.shape[0]}; they must pair up"
        )
    return (
        p,
        m,
        getattr(pred, "name", None) or "predicted",
        getattr(measured, "name", None) or "measured",
    )


def affinity_metrics(pred: Any, measured: Any) -> dict[str, float]:
    """Pearson r, Spearman rho, RMSE and MAE over the pairs where both values are finite.

    Examples
    --------
    >>> round(affinity_metrics([1, 2, 3], [1, 2, 4])["rmse"], 4)
    0.5774
    """
    p, m, _, _ = _pair_arrays(pred, measured, None)
    ok = np.isfinite(p) & np.isfinite(m)
    p, m = p[ok], m[ok]
    n = int(ok.sum())
    out = {
        "n": float(n),
        "n_dropped": float((~ok).sum()),
        "pearson_r": math.nan,
        "spearman_rho": math.nan,
    }
    if n >= 2 and np.std(p) > 0 and np.std(m) > 0:
        from scipy.stats import spearmanr

        out["pearson_r"] = float(np.corrcoef(p, m)[0, 1])
        out["spearman_rho"] = float(spearmanr(p, m).statistic)
    out["rmse"] = float(np.sqrt(np.mean((p - m) ** 2))) if n else math.nan
    out["mae"] = float(np.mean(np.abs(p - m))) if n else math.nan
    return out


def affinity_scatter(
    pred: Any,
    measured: Any,
    *,
    data: pd.DataFrame | None = None,
    labels: Sequence[Any] | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    show: bool = True,
    return_fig: bool = False,
) -> go.Figure | None:
    """Predicted against measured affinity with the y = x line, Pearson r and RMSE.

    Parameters
    ----------
    pred, measured
        Values (arrays or Series of equal length), or column names of ``data``. Pairs with a NaN
        are dropped and counted in the title.
    data
        Optional DataFrame holding both columns.
    labels
        Hover label per point (e.g. compound id or SMILES).
    title, xlabel, ylabel
        Text; axis labels default to the Series/column names.
    show, return_fig
        Display in the notebook; return the plotly figure.

    Returns
    -------
    plotly.graph_objects.Figure or None
        The figure when ``return_fig=True``; ``fig.layout.meta`` holds the metrics
        (``n``, ``pearson_r``, ``spearman_rho``, ``rmse``, ``mae``).

    Examples
    --------
    >>> fig = affinity_scatter([5.0, 6.1, 7.2], [5.3, 6.0, 7.9], return_fig=True, show=False)
    >>> round(fig.layout.meta["pearson_r"], 3)
    0.966
    """
    import plotly.graph_objects as go

    p, m, pname, mname = _pair_arrays(pred, measured, data)
    metrics = affinity_metrics(p, m)
    ok = np.isfinite(p) & np.isfinite(m)
    hover = None
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(p):
            raise InputError(f"got {len(labels)} labels for {len(p)} points")
        hover = [str(lab) for lab, keep in zip(labels, ok) if keep]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=m[ok],
            y=p[ok],
            mode="markers",
            marker={"size": 7, "opacity": 0.75},
            text=hover,
            name="pairs",
            hovertemplate=(
                ("%{text}<br>" if hover else "")
                + "measured %{x:.3f}<br>predicted %{y:.3f}<extra></extra>"
            ),
        )
    )
    if ok.any():
        lo = float(min(p[ok].min(), m[ok].min()))
        hi = float(max(p[ok].max(), m[ok].max()))
        pad = 0.05 * (hi - lo or 1.0)
        fig.add_trace(
            go.Scatter(
                x=[lo - pad, hi + pad],
                y=[lo - pad, hi + pad],
                mode="lines",
                line={"dash": "dash", "color": "#888"},
                name="y = x",
                hoverinfo="skip",
            )
        )
    dropped = int(metrics["n_dropped"])
    summary = (
        f"Pearson r = {metrics['pearson_r']:.3f}, RMSE = {metrics['rmse']:.3f}, n = {int(metrics['n'])}"
        + (f" ({dropped} pairs with NaN dropped)" if dropped else "")
    )
    fig.update_layout(
        title=(f"{title}<br><sup>{summary}</sup>" if title else summary),
        xaxis_title=xlabel or mname,
        yaxis_title=ylabel or pname,
        meta={k: (int(v) if k.startswith("n") else v) for k, v in metrics.items()},
        width=520,
        height=480,
    )
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return _finish(fig, show, return_fig)


def score_distribution(
    scores: Any,
    *,
    data: pd.DataFrame | None = None,
    groups: Any = None,
    threshold: float | None = None,
    nbins: int = 40,
    title: str | None = None,
    xlabel: str | None = None,
    show: bool = True,
    return_fig: bool = False,
) -> go.Figure | None:
    """Histogram of scores (e.g. a virtual screen), optionally split by group, with a threshold.

    Parameters
    ----------
    scores
        Values, or a column name of ``data``. NaN values (failed rows) are dropped and counted.
    data
        Optional DataFrame holding ``scores`` (and ``groups``) columns.
    groups
        Optional group label per value (or a column of ``data``): one overlaid histogram each.
    threshold
        Draw a vertical line and report how many scores are at or above it.
    nbins, title, xlabel
        Histogram bins and text.
    show, return_fig
        Display in the notebook; return the plotly figure.

    Returns
    -------
    plotly.graph_objects.Figure or None
        The figure when ``return_fig=True``; ``fig.layout.meta`` holds ``n``, ``n_missing`` and
        ``n_above`` (with a threshold).

    Examples
    --------
    >>> fig = score_distribution([4.1, 5.5, 6.2, 7.0], threshold=6.0, return_fig=True, show=False)
    >>> fig.layout.meta["n_above"]
    2
    """
    import plotly.graph_objects as go

    name = xlabel
    if data is not None:
        if scores not in data.columns:
            raise InputError(
                f"column {scores!r} is not in the data (columns: {list(data.columns)})"
            )
        name = name or str(scores)
        if isinstance(groups, str):
            if groups not in data.columns:
                raise InputError(f"groups column {groups!r} is not in the data")
            groups = data[groups]
        scores = data[scores]
    values = _as_1d(scores, "scores")
    name = name or getattr(scores, "name", None) or "score"
    if groups is not None:
        groups = np.asarray(list(groups), dtype=object)
        if groups.shape[0] != values.shape[0]:
            raise InputError(f"got {groups.shape[0]} group labels for {values.shape[0]} scores")
    ok = np.isfinite(values)
    fig = go.Figure()
    if groups is None:
        fig.add_trace(go.Histogram(x=values[ok], nbinsx=nbins, name=name))
    else:
        for g in dict.fromkeys(groups[ok].tolist()):
            sel = ok & (groups == g)
            fig.add_trace(go.Histogram(x=values[sel], nbinsx=nbins, name=str(g), opacity=0.6))
        fig.update_layout(barmode="overlay")
    meta: dict[str, Any] = {"n": int(ok.sum()), "n_missing": int((~ok).sum())}
    subtitle = f"n = {meta['n']}" + (f", {meta['n_missing']} missing" if meta["n_missing"] else "")
    if threshold is not None:
        above = int((values[ok] >= threshold).sum())
        meta["n_above"] = above
        meta["threshold"] = float(threshold)
        fig.add_vline(x=float(threshold), line_dash="dash", line_color="#d62728")
        subtitle += f"; {above} at or above {threshold:g}"
    fig.update_layout(
        title=(f"{title}<br><sup>{subtitle}</sup>" if title else subtitle),
        xaxis_title=name,
        yaxis_title="count",
        meta=meta,
        height=380,
    )
    return _finish(fig, show, return_fig)


__all__ = [
    "THREEDMOL_VERSION",
    "Molecule3DView",
    "MoleculeGrid",
    "affinity_metrics",
    "affinity_scatter",
    "bundled_3dmol_js",
    "embed_conformer",
    "molecule_3d",
    "molecules",
    "protein",
    "protein_html",
    "residue_class",
    "score_distribution",
    "smiles_atom_spans",
    "token_scores_to_atoms",
]
