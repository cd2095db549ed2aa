"""Pretrain the embedded BMFM-RNA demo model (WCED + multitask cell_type) on real offline data.

Data: scanpy's pbmc68k_reduced with reconstructed raw counts (700 cells x 765 genes, labels
``bulk_labels``) and celltypist's unlabeled raw-count sample (559 cells x 32,786 genes).
Model: a small v1-style (post-LN BERT) network over the 19,283 HGNC protein-coding genes.
Writes ``biomed_toolkit/_models/bmfm_rna_demo/`` (config.json, model.safetensors, tokenizers/,
label_dict.json, training_record.json, manifest.json).

Run: ``python scripts/train_rna_demo.py`` (about 8 minutes on one CPU thread; the machine is shared, and one
thread avoids OpenMP contention).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

import biomed_toolkit.rna as rna
from biomed_toolkit.core import hub
from biomed_toolkit.core.train import fit
from biomed_toolkit.rna.configuration import BmfmRnaConfig, LabelColumn
from biomed_toolkit.rna.objectives import CellDataset, PretrainingCollator, RnaPretrainingModule

OUT = hub.EMBEDDED_DIR / "bmfm_rna_demo"
SEED = 20260101


def to_token_space(adata, tok, n_vocab):
    """CSR (cells x vocab) of raw counts, and the vocabulary ids measured in this dataset."""
    rep = rna.match_genes(adata, tok, compute_coverage=False)
    col = rep.column_token_ids
    X = adata.X.tocsr()
    coo = X.tocoo()
    keep = col[coo.col] >= 0
    M = sp.csr_matrix((coo.data[keep], (coo.row[keep], col[coo.col[keep]])), shape=(X.shape[0], n_vocab))
    M.sum_duplicates()
    M.sort_indices()
    return M, np.unique(col[col >= 0]), rep


def held_out_accuracy(model, pbmc, val_rows) -> float:
    """cell_type accuracy on held-out pbmc68k cells through bt.rna.predict_labels (defaults)."""
    held = pbmc[np.sort(val_rows)]
    probs, names = rna.predict_labels(model, held, progress=False)["cell_type"]
    pred = np.asarray(names)[probs.argmax(1)]
    # compare names: subsetting AnnData drops unused categories, so codes are not stable
    return float((pred == held.obs["bulk_labels"].astype(str).to_numpy()).mean())


def held_out_rows(n_pbmc: int) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return rng.choice(n_pbmc, size=n_pbmc // 10, replace=False)


def evaluate_only(out: Path) -> None:
    """Recompute the held-out accuracy of a built demo and update its training record."""
    model = rna.load(out, device="cpu")
    pbmc = rna.pbmc68k_counts()
    acc = held_out_accuracy(model, pbmc, held_out_rows(pbmc.n_obs))
    path = out / "training_record.json"
    record = json.loads(path.read_text())
    record["held_out_cell_type_accuracy"] = acc
    record["held_out_evaluated_by"] = "scripts/train_rna_demo.py --eval-only"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"held-out accuracy {acc:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    # inference feeds expressed genes only; training the tiny demo the same way (no zero
    # exposure) keeps its label head usable through bt.rna.predict_labels
    ap.add_argument("--expose-zeros", action="store_true")
    ap.add_argument("--eval-only", action="store_true",
                    help="only recompute the held-out accuracy of an existing build")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.eval_only:
        evaluate_only(args.out)
        return
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    t0 = time.time()

    genes = sorted(rna.protein_coding_symbols())
    tok = rna.GeneTokenizer.from_genes(genes)
    V = tok.vocab_size
    pbmc = rna.pbmc68k_counts()
    ct = rna.celltypist_sample()
    A, rec_a, rep_a = to_token_space(pbmc, tok, V)
    B, rec_b, rep_b = to_token_space(ct, tok, V)
    counts = sp.vstack([A, B]).tocsr()
    cell_record = np.r_[np.zeros(A.shape[0], int), np.ones(B.shape[0], int)]
    classes = list(pbmc.obs["bulk_labels"].cat.categories)
    y = np.r_[pbmc.obs["bulk_labels"].cat.codes.to_numpy().astype(np.int64),
              np.full(B.shape[0], -100, dtype=np.int64)]
    val_pbmc = held_out_rows(A.shape[0])
    is_val = np.zeros(counts.shape[0], dtype=bool)
    is_val[val_pbmc] = True
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)

    cfg = BmfmRnaConfig.v1(
        vocab_size=V, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=256, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0,
        decode_modes={"expressions": {"wced": {"vocab_field": "genes",
                                               "logit_outputs": ["mse", "is_zero_bce"]}}},
        label_columns=[LabelColumn("cell_type", len(classes))], pooling="first_token",
    )
    model = rna.BmfmRnaModel(cfg)
    ident = np.arange(V, dtype=np.int64)
    ident[:5] = -1
    common = dict(records=[rec_a, rec_b], cell_record=cell_record, labels={"cell_type": y},
                  max_length=args.max_length, expose_zeros=args.expose_zeros, wced=True, mlm=False)
    train_coll = PretrainingCollator(counts, ident, V, seed=SEED, **common)
    val_coll = PretrainingCollator(counts, ident, V, seed=SEED + 1, **common)

    class Subset(CellDataset):
        def __init__(self, idx):
            super().__init__(len(idx))
            self.idx = idx

        def __getitem__(self, i):
            return int(self.idx[i])

    g = torch.Generator().manual_seed(SEED)
    train_dl = torch.utils.data.DataLoader(Subset(train_idx), batch_size=args.batch_size, shuffle=True,
                                           collate_fn=train_coll, generator=g)
    val_dl = torch.utils.data.DataLoader(Subset(val_idx), batch_size=64, shuffle=False, collate_fn=val_coll)
    steps = args.epochs * len(train_dl)
    module = RnaPretrainingModule(model, objectives=("wced", "labels"), learning_rate=1e-3,
                                  warmup_steps=min(100, steps // 10), weight_decay=0.01)
    with tempfile.TemporaryDirectory() as ckdir:
        res = fit(module, train_dl, val_dl, max_epochs=args.epochs, accelerator="cpu", devices=1,
                  checkpoint_dir=ckdir, resume=False, progress=False, seed=SEED,
                  every_n_steps=10**9, log_every_n_steps=5)
    hist = res.history
    train_minutes = (time.time() - t0) / 60

    # label accuracy on held-out pbmc cells through the public inference path
    model.eval()
    model.tokenizer = tok
    model.label_dict = {"cell_type": {c: i for i, c in enumerate(classes)}}
    model.pooling = "first_token"
    acc = held_out_accuracy(model, pbmc, val_pbmc)

    if args.out.exists():
        shutil.rmtree(args.out)
    from biomed_toolkit.rna.loading import save_pretrained

    save_pretrained(model, args.out)
    for p in args.out.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)

    def col(name):
        if name not in hist.columns:
            return []
        s = hist[["step", name]].dropna() if "step" in hist.columns else hist[[name]].dropna()
        return [[int(r[0]), float(r[1])] for r in s.to_numpy()] if "step" in hist.columns else s[name].tolist()

    record = {
        "script": "scripts/train_rna_demo.py",
        "seed": SEED,
        "data": {
            "pbmc68k_reduced": {"cells": int(A.shape[0]), "genes": int(pbmc.n_vars),
                                "genes_in_vocab": rep_a.n_matched,
                                "counts": "round(expm1(raw.X) * n_counts / 1e4)",
                                "labels": "bulk_labels", "classes": classes,
                                "held_out_cells": int(len(val_idx))},
            "celltypist_sample": {"cells": int(B.shape[0]), "genes": int(ct.n_vars),
                                  "genes_in_vocab": rep_b.n_matched, "labels": None},
        },
        "vocabulary": "HGNC protein-coding symbols (19,283) + specials + [S], [T]",
        "config": cfg.to_dict(),
        "objectives": ["wced", "labels (focal, gamma 2)"],
        "max_length": args.max_length, "expose_zeros": args.expose_zeros, "batch_size": args.batch_size, "epochs": args.epochs,
        "steps": int(res.global_step), "learning_rate": 1e-3, "threads": args.threads,
        "wall_minutes": round(train_minutes, 2),
        "losses": {"train_loss": col("train_loss"), "val_loss": col("val_loss"),
                   "val_cell_type_accuracy": col("val_cell_type_accuracy")},
        "held_out_cell_type_accuracy": acc,
        "sha256": {"model.safetensors": hub.sha256_file(args.out / "model.safetensors")},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    (args.out / "training_record.json").write_text(json.dumps(record, indent=1) + "\n")
    hub.write_manifest(args.out, name="bmfm-rna-demo", family="bmfm-rna",
                       task="embedding, cell type (demo)",
                       description="tiny v1-style BMFM-RNA (4x64) pretrained with WCED + cell_type "
                                   "on pbmc68k_reduced counts and celltypist's sample; a demo, "
                                   "not a biological model")
    size = (args.out / "model.safetensors").stat().st_size / 2**20
    print(f"done: {res.global_step} steps, {train_minutes:.1f} min, held-out accuracy {acc:.3f}, "
          f"weights {size:.1f} MB")


if __name__ == "__main__":
    main()
