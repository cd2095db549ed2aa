"""Fingerprint baselines scored on the same split as a fine-tuned model.

Molecules: Morgan fingerprints (radius 2, 2,048 bits); proteins: normalised 2-mer composition
(400 values). Regression: random forest and ridge; classification: random forest and logistic
regression.

Examples
--------
>>> from biomed_toolkit.mammal.baselines import morgan
>>> morgan(["CCO"]).shape
(1, 2048)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np

from biomed_toolkit.core.validation import check_int

AA20 = "ACDEFGHIKLMNPQRSTVWY"
KMERS: dict[str, int] = {"".join(p): i for i, p in enumerate(itertools.product(AA20, repeat=2))}

Kind = Literal["regression", "classification"]


def morgan(smiles: Sequence[str], n_bits: int = 2048, radius: int = 2) -> np.ndarray:
    """``[n, n_bits]`` Morgan fingerprint bits (a zero row where RDKit cannot parse the SMILES)."""
    n_bits = check_int(n_bits, "n_bits", where="baselines.morgan", example=2048)
    radius = check_int(radius, "radius", where="baselines.morgan", minimum=0, example=2)
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.zeros((len(smiles), n_bits), dtype=np.float32)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(str(s))
        if mol is not None:
            out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


def kmer_composition(seqs: Sequence[str]) -> np.ndarray:
    """``[n, 400]`` share of each amino-acid 2-mer in each sequence."""
    out = np.zeros((len(seqs), len(KMERS)), dtype=np.float32)
    for i, s in enumerate(seqs):
        for j in range(len(s) - 1):
            k = KMERS.get(s[j : j + 2])
            if k is not None:
                out[i, k] += 1
        out[i] /= max(1.0, out[i].sum())
    return out


def features(columns: dict[str, Sequence[str]]) -> np.ndarray:
    """Side-by-side features of the input columns: Morgan for SMILES-like names, 2-mers for sequences."""
    parts = []
    for name, values in columns.items():
        is_mol = any(k in name for k in ("smiles", "drug", "ligand", "molecule"))
        parts.append(morgan(list(values)) if is_mol else kmer_composition(list(values)))
    return np.hstack(parts)


def fingerprint_baselines(
    kind: Kind, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, seed: int = 0,
) -> dict[str, np.ndarray]:
    """Predictions (regression) or P(1) scores (classification) of two classical models.

    Examples
    --------
    >>> preds = fingerprint_baselines("regression", x_tr, y_tr, x_te)  # doctest: +SKIP
    >>> sorted(preds)  # doctest: +SKIP
    ['fingerprint random forest', 'fingerprint ridge']
    """
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression, RidgeCV

    if kind == "regression":
        rf = RandomForestRegressor(n_estimators=100, max_features=0.2, min_samples_leaf=2, n_jobs=1, random_state=seed)
        rf.fit(x_train, y_train)
        ridge = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(x_train, y_train)
        return {"fingerprint random forest": rf.predict(x_test), "fingerprint ridge": ridge.predict(x_test)}
    y = np.asarray(y_train).astype(int)
    if len(np.unique(y)) < 2:
        const = np.full(len(x_test), float(y[0]) if len(y) else 0.5)
        return {"fingerprint random forest": const, "fingerprint logistic": const}
    rf = RandomForestClassifier(n_estimators=100, max_features="sqrt", min_samples_leaf=1, n_jobs=1, random_state=seed)
    rf.fit(x_train, y)
    lr = LogisticRegression(C=0.1, max_iter=2000).fit(x_train, y)
    return {"fingerprint random forest": rf.predict_proba(x_test)[:, 1], "fingerprint logistic": lr.predict_proba(x_test)[:, 1]}


__all__ = ["AA20", "KMERS", "features", "fingerprint_baselines", "kmer_composition", "morgan"]
