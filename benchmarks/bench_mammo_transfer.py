"""Transfer learning between phantom distributions, measured.

Source: the embedded demo (trained on density 0.05-0.65, noise 0.01-0.03). Target: dense, noisy
breasts (density 0.6, noise 0.05). On held-out target cases we compare the demo as is, the demo
fine-tuned on a few target cases (``bt.mammo.finetune``) and the same network trained from
scratch on the same cases with the same budget.

    python benchmarks/bench_mammo_transfer.py [--train 20] [--test 20] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pandas as pd
import torch

from biomed_toolkit.core.train import fit
from biomed_toolkit.mammo.datasets import phantom_cases
from biomed_toolkit.mammo.evaluation import evaluate
from biomed_toolkit.mammo.modeling import SiameseMatcher, load
from biomed_toolkit.mammo.training import PairDataset, SiameseLightning, finetune

TARGET = {"density": 0.6, "noise": 0.05}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", type=int, default=20)
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 200)

    demo = load(device="cpu")
    train = phantom_cases(range(80_000, 80_000 + args.train), **TARGET)
    test = phantom_cases(range(91_000, 91_000 + args.test), **TARGET)
    rows = []

    def score(name, model, seconds):
        df = evaluate(test, ["siamese"], model=model)
        r = df.iloc[0]
        rows.append({"model": name, "roc_auc": r["roc_auc"], "top1_accuracy": r["top1_accuracy"],
                     "top1_accuracy_detected": r["top1_accuracy_detected"],
                     "train_s": seconds})

    score("demo, no adaptation", demo, 0.0)
    t0 = time.time()
    tuned = finetune(demo, train, max_epochs=args.epochs, learning_rate=1e-3, batch_size=128)
    score(f"demo fine-tuned on {args.train} target cases", tuned, time.time() - t0)
    t0 = time.time()
    head = finetune(demo, train, max_epochs=args.epochs, learning_rate=1e-3, batch_size=128,
                    freeze="branch.*")
    score("demo, head only fine-tuned", head, time.time() - t0)
    t0 = time.time()
    torch.manual_seed(0)
    scratch = SiameseMatcher(demo.config)
    scratch.detector.load_state_dict(demo.detector.state_dict())  # same candidates
    scratch.fusion.load_state_dict(demo.fusion.state_dict())
    ds = PairDataset(train, model=demo, seed=0)
    with tempfile.TemporaryDirectory() as ckpt:
        fit(SiameseLightning(scratch, learning_rate=3e-3), ds, max_epochs=args.epochs,
            batch_size=128, seed=0, progress=False, resume=False, checkpoint_dir=ckpt)
    scratch.eval()
    score(f"from scratch on {args.train} target cases", scratch, time.time() - t0)
    template = evaluate(test, ["template", "geometric"], model=demo).set_index("method")
    for m in ("template", "geometric"):
        rows.append({"model": m, "roc_auc": template.loc[m, "roc_auc"],
                     "top1_accuracy": template.loc[m, "top1_accuracy"],
                     "top1_accuracy_detected": template.loc[m, "top1_accuracy_detected"],
                     "train_s": 0.0})
    print(f"target distribution {TARGET}; {args.test} held-out target cases")
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
