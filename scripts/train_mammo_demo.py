"""Train the embedded demo Siamese matcher (biomed_toolkit/_models/mammo_siamese_demo).

Phantom pairs with hard negatives, fixed seeds, CPU with 2 threads; under 10 minutes on the
shared 2-core machine (see training_record.json for the measured time).
Writes config.json, model.safetensors, training_record.json and manifest.json (sha256).

    python scripts/train_mammo_demo.py [--out DIR] [--train-cases 100] [--epochs 3]
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
import torch

from biomed_toolkit.core import hub
from biomed_toolkit.core.train import fit
from biomed_toolkit.mammo.evaluation import evaluate
from biomed_toolkit.mammo.modeling import (
    DEMO_NAME,
    PairDataset,
    SiameseConfig,
    SiameseLightning,
    SiameseMatcher,
    phantom_cases,
)

TRAIN_SEEDS = range(0, 100_000)  # train seeds start at 0; validation at 50_000; held-out >= 90_000
VAL_OFFSET = 50_000


def distribution_kwargs(seed: int) -> dict:
    """Training distribution: density and noise vary from case to case."""
    rng = np.random.default_rng(seed + 7)
    return {"density": float(rng.uniform(0.1, 0.5)), "noise": float(rng.uniform(0.01, 0.03))}


def _display_path(path: Path) -> str:
    """Repository-relative path when inside the repository (records stay machine-neutral)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        return path.resolve().relative_to(repo).as_posix()
    except ValueError:
        return str(path)


def make_cases(seeds):
    return [phantom_cases([s], **distribution_kwargs(s))[0] for s in seeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(hub.EMBEDDED_DIR / "mammo_siamese_demo"))
    ap.add_argument("--train-cases", type=int, default=100)
    ap.add_argument("--val-cases", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    t0 = time.time()
    train_seeds = list(range(args.seed, args.seed + args.train_cases))
    val_seeds = list(range(VAL_OFFSET + args.seed, VAL_OFFSET + args.seed + args.val_cases))
    train_cases = make_cases(train_seeds)
    val_cases = make_cases(val_seeds)
    config = SiameseConfig()
    train_ds = PairDataset(train_cases, config=config, seed=args.seed, neg_per_pos=3)
    val_ds = PairDataset(val_cases, config=config, seed=args.seed + 1, neg_per_pos=3)
    t_data = time.time() - t0
    print(f"data: {len(train_ds)} train pairs ({int(train_ds.y.sum())} positive), "
          f"{len(val_ds)} val pairs, {t_data:.0f} s", flush=True)

    torch.manual_seed(args.seed)
    model = SiameseMatcher(config)
    module = SiameseLightning(model, lr=args.lr, seed=args.seed)
    ckpt = Path(tempfile.mkdtemp(prefix="bt_mammo_train_"))
    result = fit(module, train_ds, val_ds, max_epochs=args.epochs, batch_size=args.batch_size,
                 accelerator="cpu", seed=args.seed, progress=False, checkpoint_dir=ckpt,
                 resume=False)
    t_train = time.time() - t0 - t_data
    model.eval()
    hist = result.history
    epoch_rows = hist.dropna(subset=["val_loss"]) if "val_loss" in hist else hist
    print(epoch_rows.tail(3).to_string(), flush=True)

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    metrics = evaluate(val_cases, ["siamese", "template", "geometric"], model=model)
    cols = ["method", "roc_auc", "top1_accuracy", "top1_accuracy_detected"]
    print(metrics[cols].to_string(), flush=True)
    record = {
        "name": DEMO_NAME,
        "script": "scripts/train_mammo_demo.py",
        "args": {**vars(args), "out": _display_path(out)},
        "train_seeds": [train_seeds[0], train_seeds[-1]],
        "val_seeds": [val_seeds[0], val_seeds[-1]],
        "phantom_distribution": "density U(0.1, 0.5), noise U(0.01, 0.03), 2-4 lesions, 512x416",
        "n_train_pairs": len(train_ds),
        "n_train_positive": int(train_ds.y.sum()),
        "n_val_pairs": len(val_ds),
        "epochs": args.epochs,
        "global_step": result.global_step,
        "seconds_data": round(t_data, 1),
        "seconds_train": round(t_train, 1),
        "seconds_total": round(time.time() - t0, 1),
        "final_val_loss": float(epoch_rows["val_loss"].iloc[-1]) if "val_loss" in epoch_rows else None,
        "final_val_auc": float(epoch_rows["val_auc"].dropna().iloc[-1])
        if "val_auc" in epoch_rows and epoch_rows["val_auc"].notna().any() else None,
        "validation_metrics": json.loads(metrics.to_json(orient="records")),
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
    }
    (out / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    manifest = hub.write_manifest(
        out, name=DEMO_NAME, family="mammo", task="dual-view lesion matching",
        description="Siamese patch matcher (CC vs MLO) trained on synthetic dual-view phantoms; "
        "a demo, not for clinical use",
    )
    shutil.rmtree(ckpt, ignore_errors=True)
    print(f"wrote {out} sha256 {manifest['sha256']}  total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
