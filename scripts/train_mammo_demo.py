"""Train the embedded demo matcher (biomed_toolkit/_models/mammo_siamese_demo).

Three stages on the hard dual-view phantom (look-alikes, spiculated / ill-defined masses,
lesions hidden in one view, different compression per view), all with fixed seeds:

1. the candidate detector (heatmap network, focal loss on random 96 mm crops, one-cycle
   learning rate);
2. the Siamese patch matcher on pairs of the detector's candidates plus the true positions;
3. the calibrated fusion (logistic regression on the Siamese logit, depth difference along the
   posterior nipple line and the detector logits) on separate calibration seeds.

Seed ranges are kept apart and written into training_record.json: training 0-9,999,
validation 50,000-50,999, calibration 60,000-60,999; benchmarks and tests use >= 90,000.
CPU, one thread by default; writes config.json, model.safetensors, training_record.json and
manifest.json (sha256).

    nice -n 10 python scripts/train_mammo_demo.py [--out DIR] [--train-cases 400] [--threads 1]

The committed demo: ``python scripts/train_mammo_demo.py --threads 1`` (the defaults below).
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
from biomed_toolkit.mammo.configuration import SiameseConfig
from biomed_toolkit.mammo.datasets import phantom_cases
from biomed_toolkit.mammo.evaluation import candidate_recall, evaluate
from biomed_toolkit.mammo.modeling import DEMO_NAME, SiameseMatcher
from biomed_toolkit.mammo.training import (
    DetectorDataset,
    DetectorLightning,
    PairDataset,
    SiameseLightning,
    fit_fusion,
)

TRAIN_START, VAL_START, CALIB_START, TEST_START = 0, 50_000, 60_000, 90_000
#: The demo's architecture where it differs from SiameseConfig's defaults (the first demo's):
#: a wider, deeper detector with batch norm.
DEMO_CONFIG = {"detector_channels": (16, 16, 16, 16, 16),
               "detector_dilations": (1, 2, 4, 8, 1), "detector_norm": True}


def distribution_kwargs(seed: int) -> dict:
    """Training distribution: density over all of a-d and noise vary from case to case."""
    rng = np.random.default_rng(seed + 7)
    return {"density": float(rng.uniform(0.05, 0.65)), "noise": float(rng.uniform(0.01, 0.03))}


def _display_path(path: Path) -> str:
    """Repository-relative path when inside the repository (records stay machine-neutral)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        return path.resolve().relative_to(repo).as_posix()
    except ValueError:
        return str(path)


def make_cases(seeds):
    return [phantom_cases([s], **distribution_kwargs(s))[0] for s in seeds]


def _last(hist, col):
    if col not in hist:
        return None
    vals = hist[col].dropna()
    return float(vals.iloc[-1]) if len(vals) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(hub.EMBEDDED_DIR / "mammo_siamese_demo"))
    ap.add_argument("--train-cases", type=int, default=400)
    ap.add_argument("--val-cases", type=int, default=30)
    ap.add_argument("--calib-cases", type=int, default=60)
    ap.add_argument("--det-epochs", type=int, default=10)
    ap.add_argument("--det-crops", type=int, default=8, help="detector crops per view and epoch")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--detector-from", default=None,
                    help="reuse the detector of a folder this script wrote with the same --seed, "
                    "--train-cases, --det-epochs and --det-crops (stage 1 is deterministic; saves "
                    "its time)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    t0 = time.time()
    train_seeds = list(range(TRAIN_START + args.seed, TRAIN_START + args.seed + args.train_cases))
    val_seeds = list(range(VAL_START + args.seed, VAL_START + args.seed + args.val_cases))
    calib_seeds = list(range(CALIB_START + args.seed, CALIB_START + args.seed + args.calib_cases))
    assert max(train_seeds) < VAL_START and max(calib_seeds) < TEST_START
    train_cases, val_cases = make_cases(train_seeds), make_cases(val_seeds)
    print(f"phantoms: {time.time() - t0:.0f} s", flush=True)
    config = SiameseConfig(**DEMO_CONFIG)
    torch.manual_seed(args.seed)
    model = SiameseMatcher(config)
    ckpt = Path(tempfile.mkdtemp(prefix="bt_mammo_train_"))

    # 1. detector
    t1 = time.time()
    det_train = DetectorDataset(train_cases, seed=args.seed, crops_per_view=args.det_crops)
    det_record: dict = {"epochs": args.det_epochs, "crops": len(det_train)}
    if args.detector_from:
        previous = SiameseMatcher.from_pretrained(args.detector_from, device="cpu")
        model.detector.load_state_dict(previous.detector.state_dict())
        old = json.loads((Path(args.detector_from) / "training_record.json").read_text())
        det_record = {**old["detector"], "reused_from": "an earlier run of this script "
                      "(same seed, train cases and detector epochs)"}
    else:
        det_val = DetectorDataset(val_cases[:10], seed=args.seed + 1, crops_per_view=4)
        det_result = fit(DetectorLightning(model, learning_rate=args.lr, one_cycle=True),
                         det_train, det_val,
                         max_epochs=args.det_epochs, batch_size=32, accelerator="auto",
                         seed=args.seed, progress=False, checkpoint_dir=ckpt / "det", resume=False)
        det_record.update({"global_step": det_result.global_step,
                           "final_train_loss": _last(det_result.history, "train_loss_epoch"),
                           "final_val_loss": _last(det_result.history, "val_loss")})
    model.eval()
    rec = candidate_recall(val_cases, model, max_candidates=10)
    t_det = time.time() - t1
    print(f"detector: {t_det:.0f} s, validation recall@10 {rec['recall']:.3f}", flush=True)

    # 2. Siamese on the detector's candidates
    t2 = time.time()
    train_ds = PairDataset(train_cases, model=model, seed=args.seed, neg_per_pos=3)
    val_ds = PairDataset(val_cases, model=model, seed=args.seed + 1, neg_per_pos=3)
    print(f"pairs: {len(train_ds)} train ({int(train_ds.y.sum())} positive), {len(val_ds)} val",
          flush=True)
    model.detector.requires_grad_(False)
    model.train()
    model.detector.eval()
    result = fit(SiameseLightning(model, learning_rate=args.lr, seed=args.seed), train_ds, val_ds,
                 max_epochs=args.epochs, batch_size=args.batch_size, accelerator="auto",
                 seed=args.seed, progress=False, checkpoint_dir=ckpt / "siamese", resume=False)
    model.requires_grad_(True)
    model.eval()
    t_siam = time.time() - t2

    # 3. calibrated fusion on separate seeds
    t3 = time.time()
    calib_cases = make_cases(calib_seeds)
    fusion = fit_fusion(model, calib_cases)
    t_fus = time.time() - t3
    print(f"fusion: {json.dumps(fusion)}", flush=True)

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    metrics = evaluate(val_cases, ["fused", "siamese", "template", "geometric"], model=model)
    cols = ["method", "roc_auc", "top1_accuracy", "top1_accuracy_detected", "candidate_recall"]
    print(metrics[cols].to_string(), flush=True)
    hist = result.history
    record = {
        "name": DEMO_NAME,
        "script": "scripts/train_mammo_demo.py",
        "args": {**vars(args), "out": _display_path(out)},
        "seed_ranges": {
            "train": [train_seeds[0], train_seeds[-1]],
            "validation": [val_seeds[0], val_seeds[-1]],
            "calibration": [calib_seeds[0], calib_seeds[-1]],
            "test (benchmarks, tests)": f">= {TEST_START}",
            "note": "disjoint: training, validation and calibration seeds never reach the test range",
        },
        "config": config.to_dict(),
        "phantom_distribution": "hard phantom (look-alikes, margins, one-view lesions, "
        "compression 0.45-0.7 per view), density U(0.05, 0.65), noise U(0.01, 0.03), "
        "2-4 lesions, 512x416",
        "detector": {**det_record, "seconds": round(t_det, 1) if not args.detector_from
                     else det_record.get("seconds"), "validation_recall_at_10": rec},
        "siamese": {"epochs": args.epochs, "n_train_pairs": len(train_ds),
                    "n_train_positive": int(train_ds.y.sum()), "n_val_pairs": len(val_ds),
                    "global_step": result.global_step, "seconds": round(t_siam, 1),
                    "final_val_loss": _last(hist, "val_loss"),
                    "final_val_auc": _last(hist, "val_auc")},
        "fusion": {**fusion, "seconds": round(t_fus, 1)},
        "seconds_total": round(time.time() - t0, 1),
        "validation_metrics": json.loads(metrics.to_json(orient="records")),
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
    }
    (out / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    manifest = hub.write_manifest(
        out, name=DEMO_NAME, family="mammo", task="dual-view lesion matching",
        description="Candidate detector + Siamese patch matcher (CC vs MLO) + calibrated fusion, "
        "trained on synthetic dual-view phantoms; a demo, not for clinical use",
    )
    shutil.rmtree(ckpt, ignore_errors=True)
    print(f"wrote {out} sha256 {manifest['sha256']}  total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
