"""Dual-view matching benchmark on held-out phantom seeds.

Prints, for the Siamese demo, template matching (NCC and Euclidean), the geometric prior and
Siamese x geometric: pair ROC-AUC, top-1 accuracy, lesion sensitivity at 0.5 / 1 / 2 false
positives per image without and with matching; then the time of one full two-view case at
2,000 x 1,600 pixels (detection + patches + scoring + assignment) as a ratio to a reference op
(a 2,000 x 1,600 float32 Gaussian filter, sigma 4) timed in the same run. Target: < 2 s per case.

    python benchmarks/bench_mammo.py [--cases 30] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from biomed_toolkit.mammo.datasets import phantom_cases
from biomed_toolkit.mammo.evaluation import evaluate, evaluate_matches
from biomed_toolkit.mammo.matching import match
from biomed_toolkit.mammo.modeling import load
from biomed_toolkit.mammo.phantom import phantom

HELD_OUT = 90_000  # training used seeds 0-99 and 50000-50029


def _median_time(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)

    model = load()
    results = {}
    for label, kw in (("mixed density (0.25)", {"density": 0.25}),
                      ("fatty (a)", {"density": "a"}),
                      ("dense (c)", {"density": "c"})):
        cases = phantom_cases(range(HELD_OUT, HELD_OUT + args.cases), **kw)
        df = evaluate(cases, ["siamese", "template", "geometric", "siamese+geometric"], model=model)
        print(f"\n== {label}: {args.cases} held-out cases, 512 x 416 px ==")
        cols = ["method", "roc_auc", "top1_accuracy", "top1_accuracy_detected",
                "sens@0.5fp", "sens@0.5fp_matched", "sens@1fp", "sens@1fp_matched",
                "sens@2fp", "sens@2fp_matched", "match_s_per_case"]
        print(df[cols].round(3).to_string(index=False))
        results[label] = json.loads(df.to_json(orient="records"))
    # Euclidean template matching (the paper's baseline) on the mixed set.
    cases = phantom_cases(range(HELD_OUT, HELD_OUT + args.cases), density=0.25)
    eu = [evaluate_matches(c, match(c, method="template", metric="euclidean")) for c in cases]
    rec, tot = map(sum, zip(*eu))
    print(f"\ntemplate (Euclidean) top-1: {rec}/{tot} = {rec / tot:.3f}")
    results["template_euclidean_top1"] = rec / tot

    # Speed at full detector size.
    big = phantom(HELD_OUT + 999, n_lesions=3, shape=(2000, 1600))
    img = big.cc.pixels
    t_ref = _median_time(lambda: ndi.gaussian_filter(img, 4.0), repeats=5)
    match(big, model, method="siamese")  # warm-up
    t_case = _median_time(lambda: match(big, model, method="siamese"))
    t_tmpl = _median_time(lambda: match(big, method="template"))
    print(f"\n== speed, two views of 2000 x 1600 px, {args.threads} threads ==")
    print(f"reference op (gaussian_filter 2000x1600, sigma 4): {t_ref * 1000:.0f} ms")
    print(f"siamese case: {t_case:.2f} s = {t_case / t_ref:.1f} x reference "
          f"(target < 2 s: {'met' if t_case < 2 else 'NOT met'})")
    print(f"template case: {t_tmpl:.2f} s = {t_tmpl / t_ref:.1f} x reference")
    results["speed"] = {"reference_s": t_ref, "siamese_case_s": t_case,
                        "siamese_ratio": t_case / t_ref, "template_case_s": t_tmpl,
                        "template_ratio": t_tmpl / t_ref}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
