"""Cell-type annotation on every labelled real data set: BMFM-RNA against linear baselines.

For each data set of ``bt.rna.datasets.LABELLED_DATASETS`` the cells of its fixed held-out split
(``obs["split"] == "test"``, never seen by the embedded model's pretraining) are the test cells;
training sets of several sizes are stratified draws from the ``"train"`` cells, one per seed.
Methods, all trained on the same cells and scored on the same test cells:

- ``PCA + LR``: log-normalised counts (1e4, log1p), standardised, PCA(50) fitted on the training
  cells, logistic regression.
- ``CellTypist-style``: ``celltypist.train`` (SGD logistic regression on log-normalised, scaled
  expression of all genes) when celltypist is installed, else the same recipe with scikit-learn.
- ``probe``: the default model's zero-shot embedding (``bt.tl.embed``) + logistic regression.
- ``finetune``: ``bt.tl.finetune`` with its defaults, then ``bt.tl.annotate``.
- ``finetune lora``: the same with ``lora=True``.
- ``finetune no path`` (``--ablation``): the same without the expression path.

Columns: accuracy, macro-F1, ECE (15 bins; for methods with probabilities), wall time of the
train + predict step and the peak RSS increase during it. Results go to a CSV and a markdown
table (mean +- sd over seeds). Usage::

    python benchmarks/bench_rna_annotation.py [--sizes 100,300,full] [--seeds 0,1,2]
        [--datasets pbmc68k_counts,...] [--methods pca,celltypist,probe,finetune,lora]
        [--ablation] [--out benchmarks/results/rna_annotation]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import current_rss_mb  # noqa: E402

METHODS = ("pca", "celltypist", "probe", "finetune", "lora")
NAMES = {"pca": "PCA(50) + LR", "celltypist": "CellTypist-style LR", "probe": "default model probe",
         "finetune": "finetune (defaults)", "lora": "finetune lora=True",
         "nopath": "finetune, no expression path"}


def log_normalise(counts):
    import scipy.sparse as sp

    x = sp.csr_matrix(counts, dtype=np.float64)
    sums = np.asarray(x.sum(axis=1)).ravel()
    x = sp.diags(1e4 / np.maximum(sums, 1)) @ x
    x.data = np.log1p(x.data)
    return x.tocsr()


class PeakRSS:
    """Peak resident memory above the starting level while the block runs (sampled, MB)."""

    def __enter__(self):
        self.start = self.peak = current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, current_rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())
        self.mb = self.peak - self.start


def pca_lr(x_tr, y_tr, x_te, seed):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(min(50, x_tr.shape[0] - 1, x_tr.shape[1]))
    clf = make_pipeline(StandardScaler(), PCA(k, random_state=seed), LogisticRegression(max_iter=3000))
    clf.fit(x_tr.toarray(), y_tr)
    return clf.classes_, clf.predict_proba(x_te.toarray())


def celltypist_style(x_tr, y_tr, x_te, genes, seed):
    try:
        import anndata as ad
        import celltypist

        tr = ad.AnnData(x_tr.astype(np.float32), obs=pd.DataFrame({"y": y_tr}))
        tr.var_names = genes
        te = ad.AnnData(x_te.astype(np.float32))
        te.var_names = genes
        model = celltypist.train(tr, labels="y", use_SGD=True, feature_selection=False,
                                 check_expression=False, max_iter=1000, n_jobs=1)
        pred = celltypist.annotate(te, model=model, majority_voting=False)
        prob = pred.probability_matrix
        classes = np.asarray(prob.columns, dtype=str)
        # celltypist's probabilities are one-vs-rest sigmoids: normalise them for the ECE
        p = np.nan_to_num(prob.to_numpy(dtype=np.float64))
        total = p.sum(axis=1, keepdims=True)
        return classes, np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / p.shape[1])
    except ImportError:
        from sklearn.linear_model import SGDClassifier
        from sklearn.preprocessing import StandardScaler

        sc_ = StandardScaler().fit(x_tr.toarray())
        clf = SGDClassifier(loss="log_loss", alpha=1e-4, max_iter=1000, random_state=seed)
        clf.fit(np.clip(sc_.transform(x_tr.toarray()), -10, 10), y_tr)
        return clf.classes_, clf.predict_proba(np.clip(sc_.transform(x_te.toarray()), -10, 10))


def probe(e_tr, y_tr, e_te):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(e_tr, y_tr)
    return clf.classes_, clf.predict_proba(e_te)


def finetuned(bt, model, train, test, seed, **kw):
    ft = bt.tl.finetune(train, "cell_type", model, seed=seed, progress=False, **kw)
    bt.tl.annotate(test, ft, label="cell_type", min_confidence=0.0, progress=False)
    classes = np.asarray(test.uns["bmfm_cell_type"]["classes"], dtype=str)
    return classes, test.obsm["bmfm_cell_type_probabilities"], ft


def score(truth, classes, probs):
    from biomed_toolkit.rna.metrics import classification_metrics, expected_calibration_error

    top = probs.argmax(axis=1)
    pred = np.asarray(classes)[top]
    out = classification_metrics(truth, pred)
    conf = probs[np.arange(len(top)), top]
    out["ece"] = expected_calibration_error(conf, pred == np.asarray(truth))
    out["n_predicted_classes"] = int(len(set(pred)))
    return out


def _ece_at(truth, classes, probs, temperature):
    """ECE of ``softmax(temperature * log probs)``: undoes a fitted temperature."""
    z = temperature * np.log(np.clip(probs, 1e-30, None))
    z -= z.max(axis=1, keepdims=True)
    q = np.exp(z)
    return score(truth, classes, q / q.sum(axis=1, keepdims=True))["ece"]


def draw(y_pool, n, seed):
    """Stratified draw of ``n`` of the pool (every class kept with at least one cell)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y_pool))
    if n >= len(idx):
        return idx
    classes, counts = np.unique(y_pool, return_counts=True)
    strat = y_pool if counts.min() >= 2 else None
    keep, _ = train_test_split(idx, train_size=n, random_state=seed, stratify=strat)
    missing = [c for c in classes if c not in set(y_pool[keep])]
    extra = [np.flatnonzero(y_pool == c)[0] for c in missing]
    return np.sort(np.r_[keep, extra]).astype(int)


def run(args) -> pd.DataFrame:
    import torch

    import biomed_toolkit as bt
    from biomed_toolkit.rna.datasets import LABELLED_DATASETS, labelled_dataset

    torch.set_num_threads(1)
    bt.settings.progress = False
    names = args.datasets.split(",") if args.datasets else list(LABELLED_DATASETS)
    methods = args.methods.split(",") + (["nopath"] if args.ablation else [])
    overrides = json.loads(args.finetune_kwargs)
    model = bt.rna.load(args.model, device="cpu")
    print(f"model: {model.card.name} (sha256 {model.card.sha256})", flush=True)
    rows = []
    for name in names:
        adata = labelled_dataset(name)
        adata.obs["cell_type"] = adata.obs["cell_type"].astype(str)
        test_mask = (adata.obs["split"] == "test").to_numpy()
        pool = np.flatnonzero(~test_mask)
        te = np.flatnonzero(test_mask)
        y = adata.obs["cell_type"].to_numpy()
        x = log_normalise(adata.X)
        genes = list(adata.var_names)
        print(f"\n{name}: {adata.n_obs} cells, {adata.n_vars} genes, {len(set(y))} types; "
              f"pool {len(pool)}, test {len(te)}", flush=True)
        emb = None
        if "probe" in methods:
            bt.tl.embed(adata, model, progress=False)
            emb = adata.obsm["X_bmfm"]
        sizes = [len(pool) if s == "full" else int(s) for s in args.sizes.split(",")]
        for n in sorted(set(min(s, len(pool)) for s in sizes)):
            for seed in [int(s) for s in args.seeds.split(",")]:
                tr = pool[draw(y[pool], n, seed)]
                for m in methods:
                    extra = {}
                    with PeakRSS() as mem:
                        t = time.perf_counter()
                        if m == "pca":
                            classes, p = pca_lr(x[tr], y[tr], x[te], seed)
                        elif m == "celltypist":
                            classes, p = celltypist_style(x[tr], y[tr], x[te], genes, seed)
                        elif m == "probe":
                            classes, p = probe(emb[tr], y[tr], emb[te])
                        else:
                            kw = {"lora": True} if m == "lora" else (
                                {"expression_path": False} if m == "nopath" else {})
                            kw.update(overrides)
                            classes, p, ft = finetuned(bt, model, adata[tr].copy(),
                                                       adata[te].copy(), seed, **kw)
                            t_fit = float(ft.recipe["temperature"])
                            extra = {"steps": ft.recipe["global_step"],
                                     "temperature": t_fit,
                                     # the same model before calibration (T = 1): p ~ softmax(T log p)
                                     "ece_uncalibrated": _ece_at(y[te], classes, p, t_fit),
                                     "non_default": json.dumps(overrides) if overrides else ""}
                        secs = time.perf_counter() - t
                    row = {"dataset": name, "n_train": len(tr), "seed": seed,
                           "method": NAMES[m], **score(y[te], classes, p), "seconds": secs,
                           "peak_mb": mem.mb, **extra}
                    rows.append(row)
                    print("  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in row.items()), flush=True)
                    pd.DataFrame(rows).to_csv(args.out + ".csv", index=False)
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> str:
    """Markdown table: mean +- sd over seeds, PCA + LR's macro-F1 beside each row."""
    g = df.groupby(["dataset", "n_train", "method"], sort=False)
    agg = g.agg(seeds=("seed", "nunique"), accuracy=("accuracy", "mean"),
                macro_f1=("macro_f1", "mean"), macro_f1_sd=("macro_f1", "std"),
                min_macro_f1=("macro_f1", "min"), ece=("ece", "mean"),
                seconds=("seconds", "mean"), peak_mb=("peak_mb", "max")).reset_index()
    # the gap to PCA + LR on the same split, worst seed
    ref = df[df["method"] == NAMES["pca"]].set_index(["dataset", "n_train", "seed"])["macro_f1"]
    gap = df.join(ref.rename("ref"), on=["dataset", "n_train", "seed"])
    gap["gap"] = gap["macro_f1"] - gap["ref"]
    worst = gap.groupby(["dataset", "n_train", "method"], sort=False)["gap"].min().rename(
        "worst_gap_vs_pca")
    agg = agg.join(worst, on=["dataset", "n_train", "method"])
    lines = ["| data set | train cells | method | seeds | accuracy | macro-F1 (sd) | worst seed "
             "vs PCA+LR | ECE | seconds | peak MB |", "|" + "---|" * 10]
    for r in agg.itertuples():
        sd = 0.0 if np.isnan(r.macro_f1_sd) else r.macro_f1_sd
        lines.append(f"| {r.dataset} | {r.n_train} | {r.method} | {r.seeds} | {r.accuracy:.3f} | "
                     f"{r.macro_f1:.3f} ({sd:.3f}) | {r.worst_gap_vs_pca:+.3f} | {r.ece:.3f} | "
                     f"{r.seconds:.1f} | {r.peak_mb:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="bt.rna.load name or path (default: embedded)")
    ap.add_argument("--datasets", default=None, help="comma list (default: every labelled one)")
    ap.add_argument("--sizes", default="100,300,full")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--ablation", action="store_true", help="also finetune without the path")
    ap.add_argument("--finetune-kwargs", default="{}",
                    help='JSON of bt.tl.finetune options that replace defaults (recorded per row), '
                         'e.g. \'{"max_steps": 20}\' on a slow machine')
    ap.add_argument("--out", default="benchmarks/results/rna_annotation")
    ap.add_argument("--summarise", action="store_true", help="only print the table of --out.csv")
    args = ap.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(args.out + ".csv") if args.summarise else run(args)
    table = summarise(df)
    Path(args.out + ".md").write_text(table + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
