"""3D conformer views: RDKit embedding and py3Dmol with the bundled 3Dmol.js (works offline).

Examples
--------
>>> from biomed_toolkit.mammal.plotting import molecule_3d
>>> view = molecule_3d("CCO")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biomed_toolkit.core.errors import InputError

from .molecules import _parse_mol

THREEDMOL_VERSION = "2.5.5"
"""Version of the bundled 3Dmol.js (npm package ``3dmol``), licence BSD-3-Clause."""

_STATIC = Path(__file__).resolve().parent.parent / "_static"
_THREEDMOL_FILE = _STATIC / "3Dmol-min.js"
# py3Dmol loads its script from this "URL"; we swap the loader for the inlined bundle.
_JS_SENTINEL = "__biomed_toolkit_bundled_3dmol__"


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
        v.addModel(self.molblock, "sdf")  # 3Dmol reads a molblock as "sdf"; it knows no "mol"
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
