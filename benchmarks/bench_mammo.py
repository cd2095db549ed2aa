"""Dual-view matching and detection-pipeline benchmark on unseen phantom seeds.

50 cases (seeds 90,000-90,049; training used 0-9,999, validation 50,000+, calibration 60,000+)
of the hard phantom over all densities (a, b, c, d in turn). Prints, for the default calibrated
fusion, the Siamese network alone, template matching (NCC), the geometric depth prior and
Siamese x geometric: pair ROC-AUC, top-1 pair accuracy, candidate recall at <= 10 candidates per
view, lesion sensitivity at 0.25 / 0.5 / 1 / 2 false positives per image for the detector alone
and after matching-based false-positive reduction; then the time of one full two-view case at
2,000 x 1,600 pixels (geometry + detection + patches + scoring + assignment) on one thread, as
a ratio to a reference op (a 2,000 x 1,600 float32 Gaussian filter, sigma 4) timed in the same
run. Targets (issue #13): top-1 >= 0.85, AUC >= 0.97, recall >= 0.95, FP reduction +0.10 at
0.5 FP/image, < 1 s per case.

    nice -n 10 python benchmarks/bench_mammo.py [--cases 50] [--json out.json] [--froc froc.png]
        [--model FOLDER]
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
from biomed_toolkit.mammo.evaluation import candidate_recall, evaluate
from biomed_toolkit.mammo.matching import match
from biomed_toolkit.mammo.modeling import load
from biomed_toolkit.mammo.phantom import phantom

HELD_OUT = 90_000
METHODS = ["fused", "siamese", "template", "geometric", "siamese+geometric"]


def _median_time(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def test_cases(n: int):
    """``n`` unseen cases, densities a, b, c, d in turn."""
    return [phantom_cases([HELD_OUT + i], density="abcd"[i % 4])[0] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--froc", default=None, help="write the FROC figure here (PNG)")
    ap.add_argument("--model", default=None, help="a matcher folder (default: the embedded demo)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 220)
    pd.set_option("display.max_columns", 30)

    model = load(args.model, device="cpu")
    cases = test_cases(args.cases)
    df = evaluate(cases, METHODS, model=model, return_curves=True)
    print(f"\n== {args.cases} unseen hard-phantom cases (densities a-d), 512 x 416 px ==")
    cols = ["method", "roc_auc", "top1_accuracy", "top1_accuracy_detected", "candidate_recall",
            "candidates_per_view"]
    print(df[cols].round(3).to_string(index=False))
    sens = ["method"] + [f"sens@{f:g}fp{s}" for f in (0.25, 0.5, 1, 2) for s in ("", "_matched")]
    print("\nlesion sensitivity at FP/image (detector alone | with matching-based FP reduction)")
    print(df[sens].round(3).to_string(index=False))
    fused = df.set_index("method").loc["fused"]
    gain = fused["sens@0.5fp_matched"] - fused["sens@0.5fp"]
    print(f"\nFP reduction gain at 0.5 FP/image (fused): {gain:+.3f} (target >= +0.10)")
    by_density = {}
    for d in "abcd":
        sub = [c for i, c in enumerate(cases) if "abcd"[i % 4] == d]
        r = candidate_recall(sub, model, max_candidates=10)
        by_density[d] = r["recall"]
    print("candidate recall by density:", {k: round(v, 3) for k, v in by_density.items()})
    # Headroom of the ranking: how many more lesions the next 10 peaks per view hold.
    at20 = candidate_recall(cases, model, max_candidates=20)["recall"]
    print(f"candidate recall at 20 per view: {at20:.3f} (at 10: {fused['candidate_recall']:.3f})")
    results = {"cases": args.cases, "seeds": [HELD_OUT, HELD_OUT + args.cases - 1],
               "metrics": json.loads(df.to_json(orient="records")),
               "fp_reduction_gain_at_0.5": gain, "recall_by_density": by_density,
               "candidate_recall_at_20": at20}
    if args.froc:
        import matplotlib

        matplotlib.use("Agg")
        from biomed_toolkit.mammo.plotting import mammo_froc

        curves = {k: v for k, v in df.attrs["froc"].items() if k in ("detector", "fused")}
        mammo_froc(curves, save=args.froc, show=False)

    # Speed at full detector size, one thread.
    big = phantom(HELD_OUT + 999, n_lesions=3, shape=(2000, 1600))
    img = big.cc.pixels
    t_ref = _median_time(lambda: ndi.gaussian_filter(img, 4.0), repeats=5)
    match(big, model)  # warm-up
    t_case = _median_time(lambda: match(big, model))
    t_tmpl = _median_time(lambda: match(big, model, method="template"))
    print(f"\n== speed, two views of 2000 x 1600 px, {args.threads} thread(s) ==")
    print(f"reference op (gaussian_filter 2000x1600, sigma 4): {t_ref * 1000:.0f} ms")
    print(f"default (fused) case: {t_case:.2f} s = {t_case / t_ref:.1f} x reference "
          f"(target < 1 s: {'met' if t_case < 1 else 'NOT met'})")
    print(f"template case: {t_tmpl:.2f} s = {t_tmpl / t_ref:.1f} x reference")
    results["speed"] = {"reference_s": t_ref, "fused_case_s": t_case,
                        "fused_ratio": t_case / t_ref, "template_case_s": t_tmpl,
                        "template_ratio": t_tmpl / t_ref}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)


if __name__ == "__main__":
    main()
