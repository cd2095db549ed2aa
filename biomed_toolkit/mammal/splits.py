"""Train / validation / test splits the way drug-discovery results are evaluated.

- ``"random"``: rows shuffled;
- ``"cold_drug"``: every molecule (canonical SMILES) in one split only;
- ``"cold_target"``: every protein sequence in one split only;
- ``"scaffold"``: Bemis-Murcko scaffolds, largest scaffold sets to training first (the
  MoleculeNet convention), so validation and test hold rarer chemotypes.

Examples
--------
>>> from biomed_toolkit.mammal.splits import split_labels
>>> split_labels({"smiles": ["CCO", "CCN", "c1ccccc1", "c1ccccc1O"]}, "scaffold").tolist()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from biomed_toolkit.core.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

Split = Literal["random", "cold_drug", "cold_target", "scaffold"]
SPLITS: tuple[str, ...] = get_args(Split)


def canonical_smiles(smiles: str) -> str:
    """RDKit canonical SMILES (the input itself when RDKit cannot parse it)."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(str(smiles))
    return Chem.MolToSmiles(mol) if mol is not None else str(smiles)


def murcko_scaffold(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES (``""`` for acyclic molecules)."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    mol = Chem.MolFromSmiles(str(smiles))
    if mol is None:
        return str(smiles)
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def _column(table: Mapping[str, Any], names: tuple[str, ...], what: str, split: str) -> list[Any]:
    for n in names:
        if n in table:
            return list(table[n])
    raise InputError(f"split={split!r} needs a {what} column (one of {list(names)}); got {list(table)}")


def split_labels(
    table: pd.DataFrame | Mapping[str, Sequence[Any]],
    split: Split,
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    smiles_column: tuple[str, ...] = ("smiles", "drug", "ligand", "molecule", "drug_smiles"),
    protein_column: tuple[str, ...] = ("protein", "target", "sequence", "aa_sequence", "target_sequence"),
) -> np.ndarray:
    """``"train"`` / ``"val"`` / ``"test"`` per row of ``table`` (a DataFrame or dict of columns).

    Raises
    ------
    InputError
        For an unknown split, a missing column, or a split that leaves validation or test empty.
    """
    from .datasets import split_by_group

    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise InputError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    n = len(next(iter(table.values()))) if isinstance(table, Mapping) else len(table)
    if split == "random":
        labels = split_by_group(np.arange(n), fractions=fractions, seed=seed)
    elif split == "cold_drug":
        groups = [canonical_smiles(s) for s in _column(table, smiles_column, "SMILES", split)]
        labels = split_by_group(groups, fractions=fractions, seed=seed)
    elif split == "cold_target":
        labels = split_by_group(_column(table, protein_column, "protein", split), fractions=fractions, seed=seed)
    else:
        scaffolds = [murcko_scaffold(s) for s in _column(table, smiles_column, "SMILES", split)]
        sets: dict[str, list[int]] = {}
        for i, sc in enumerate(scaffolds):
            sets.setdefault(sc, []).append(i)
        # Largest sets first; ties broken by a seeded shuffle so that seeds give other splits.
        rng = np.random.default_rng(seed)
        keys = list(sets)
        tie = dict(zip(keys, rng.permutation(len(keys)), strict=True))
        ordered = sorted(keys, key=lambda k: (-len(sets[k]), tie[k]))
        labels = np.empty(n, dtype=object)
        n_train, n_val = fractions[0] * n, fractions[1] * n
        size = {"train": 0, "val": 0}
        for k in ordered:
            m = len(sets[k])
            if size["train"] + m <= n_train or size["train"] == 0:
                part = "train"
            elif size["train"] + size["val"] + m <= n_train + n_val:
                part = "val"
            else:
                part = "test"
            labels[sets[k]] = part
            if part != "test":
                size[part] += m
    labels = np.asarray(labels, dtype=object)
    counts = {s: int((labels == s).sum()) for s in ("train", "val", "test")}
    if min(counts.values()) == 0:
        raise InputError(
            f"split={split!r} of {n} rows gives {counts}: too few rows or groups for a three-way split; "
            "use more data or another split")
    return labels


__all__ = ["SPLITS", "Split", "canonical_smiles", "murcko_scaffold", "split_labels"]
