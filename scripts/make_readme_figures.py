"""Write the README figures (one per domain) from the embedded demo models, offline.

Usage: python scripts/make_readme_figures.py [--out docs/figures]

Writes ``rna_umap.png`` (cells embedded and annotated by the BMFM-RNA demo), ``drug_target.png``
(MAMMAL demo predictions on unseen KIBA ligands, with the top molecules drawn by RDKit) and
``mammo_pair.png`` (a typical phantom case matched by the default matcher). Everything is drawn with
matplotlib and RDKit, so no browser or plotly image export is needed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DPI = 110


def rna_figure(out: Path) -> Path:
    """UMAP of the demo embedding, coloured by FACS label and by the demo's annotation."""
    import biomed_toolkit as bt

    adata = bt.datasets.pbmc68k_counts()
    model = bt.rna.load()
    bt.tl.embed(adata, model, progress=False)
    bt.tl.annotate(adata, model, min_confidence=0.5, progress=False)
    fig = bt.pl.embedding(adata, "X_bmfm", color=["bulk_labels", "bmfm_cell_type"], show=False,
                          return_fig=True)
    fig.suptitle("BMFM-RNA demo: pbmc68k embedded (bt.tl.embed) and annotated (bt.tl.annotate)",
                 fontsize=11, y=1.03)
    path = out / "rna_umap.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _molecule_grid(smiles: list[str], legends: list[str]):
    from rdkit import Chem
    from rdkit.Chem import Draw

    mols = [Chem.MolFromSmiles(s) for s in smiles]
    image = Draw.MolsToGridImage(mols, molsPerRow=3, subImgSize=(230, 190), legends=legends)
    return np.asarray(image)


def mammal_figure(out: Path) -> Path:
    """Predicted against measured KIBA score on unseen ligands, and the best-scored molecules."""
    from scipy.stats import pearsonr

    import biomed_toolkit as bt
    from biomed_toolkit.mammal.datasets import demo_splits

    model = bt.mammal.load()
    kiba, _ = demo_splits()
    test = kiba[kiba.split == "test"].sample(150, random_state=0).reset_index(drop=True)
    pred = bt.mammal.predict(model, "dti", test[["protein", "smiles"]], progress=False)
    test["predicted"] = pred["prediction"].to_numpy()
    ok = test["predicted"].notna()
    r = pearsonr(test.loc[ok, "predicted"], test.loc[ok, "affinity"]).statistic
    top = test[ok].drop_duplicates("smiles").nlargest(6, "predicted")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1, 1.5]})
    ax = axes[0]
    ax.scatter(test.loc[ok, "affinity"], test.loc[ok, "predicted"], s=14, alpha=0.7)
    lo = float(min(test.loc[ok, "affinity"].min(), test.loc[ok, "predicted"].min()))
    hi = float(max(test.loc[ok, "affinity"].max(), test.loc[ok, "predicted"].max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    ax.set(xlabel="measured KIBA score", ylabel="predicted (MAMMAL demo)",
           title=f"{int(ok.sum())} drug-target pairs, unseen ligands (r = {r:.2f})")
    axes[1].imshow(_molecule_grid(top["smiles"].tolist(),
                                  [f"pred {v:.2f}" for v in top["predicted"]]))
    axes[1].set_title("best-scored ligands (bt.pl.molecules)")
    axes[1].axis("off")
    fig.tight_layout()
    path = out / "drug_target.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def mammo_figure(out: Path) -> Path:
    """Both views of a typical phantom case (the benchmark's second unseen seed, not picked for its
    result), candidates, the true pairs and the pairs the default matcher assigns."""
    import biomed_toolkit as bt
    from biomed_toolkit.mammo.matching import candidates_of

    case = bt.datasets.phantom_cases([90_001], density="b")[0]
    matches = bt.mammo.match(case)
    gap = 20
    off = case.cc.shape[1] + gap
    canvas = np.zeros((max(case.cc.shape[0], case.mlo.shape[0]), off + case.mlo.shape[1]))
    canvas[: case.cc.shape[0], : case.cc.shape[1]] = case.cc.pixels
    canvas[: case.mlo.shape[0], off:] = case.mlo.pixels

    fig, ax = plt.subplots(figsize=(9, 5.4))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
    cands = candidates_of(matches)
    ax.scatter(cands["cc"]["col"], cands["cc"]["row"], marker="x", color="#ff7f0e", s=30,
               label="CC candidates")
    ax.scatter(cands["mlo"]["col"] + off, cands["mlo"]["row"], marker="x", color="#1f77b4", s=30,
               label="MLO candidates")
    les = case.lesions
    for view, x0 in (("cc", 0), ("mlo", off)):
        sub = les[les[f"in_{view}"]]
        ax.scatter(sub[f"{view}_col"] + x0, sub[f"{view}_row"], s=260, facecolors="none",
                   edgecolors="limegreen", linewidths=1.5,
                   label="true lesions" if view == "cc" else None)
    both = les[les["in_cc"] & les["in_mlo"]]
    for i, row in enumerate(both.itertuples()):
        ax.plot([row.cc_col, row.mlo_col + off], [row.cc_row, row.mlo_row], color="limegreen",
                lw=1.0, ls=":", label="true pair" if i == 0 else None)
    pairs = matches[matches["assigned"] & (matches["probability"] >= 0.5)]
    for i, row in enumerate(pairs.itertuples()):
        ax.plot([row.cc_col, row.mlo_col + off], [row.cc_row, row.mlo_row], color="yellow", lw=1.2,
                label="matched pair" if i == 0 else None)
        ax.text((row.cc_col + row.mlo_col + off) / 2, (row.cc_row + row.mlo_row) / 2 - 4,
                f"{row.probability:.2f}", color="yellow", fontsize=8, ha="center")
    found, total = bt.mammo.evaluate_matches(case, matches)
    ax.set_title(f"{case.case_id}: CC | MLO, default matcher ({found} of {total} true pairs top-1)")
    ax.axis("off")
    ax.legend(loc="lower center", ncol=4, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    path = out / "mammo_pair.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the reference machine is shared; one thread avoids contention
    args.out.mkdir(parents=True, exist_ok=True)
    for make in (rna_figure, mammal_figure, mammo_figure):
        start = time.perf_counter()
        path = make(args.out)
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
