"""Notebook views for drug-target work, one module per subject.

- :mod:`.molecules`: 2D molecule grids and token-to-atom attribution;
- :mod:`.view3d`: 3D conformers with the bundled 3Dmol.js;
- :mod:`.protein`: protein sequence tracks (residue chemistry, per-residue scores);
- :mod:`.scores`: affinity scatter and score distributions (metrics in :mod:`..metrics`).

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

from ..metrics import affinity_metrics
from .molecules import MoleculeGrid, molecules, smiles_atom_spans, token_scores_to_atoms
from .protein import protein, protein_html, residue_class
from .scores import affinity_scatter, score_distribution
from .view3d import _JS_SENTINEL as _JS_SENTINEL  # the loader swap the tests check
from .view3d import _STATIC as _STATIC  # the bundled 3Dmol.js and its licence
from .view3d import (
    THREEDMOL_VERSION,
    Molecule3DView,
    bundled_3dmol_js,
    embed_conformer,
    molecule_3d,
)

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
