"""Embedding throughput and memory of bt.rna.embed_cells, against references measured in the same run.

1. Fixture checkpoint (official tiny v1, 94,911-gene vocabulary), 400 cells with ~450 expressed
   genes: ``embed_cells`` (encoder only, length-bucketed batches) versus the official inference
   path (pad to 1,024, batch 8, WCED transform + decoder over every position and the whole
   vocabulary). Cells/s and peak memory (each path in its own process).
2. Achieved GFLOP/s of the encoder on a v1-110M-shaped model (768 x 12, random weights) versus
   plain torch matmuls of exactly the same shapes (target >= 50%).

Run: ``python benchmarks/bench_rna_embed.py`` (needs ../shared/fixtures for part 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from _common import best_of, current_rss_mb  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "bmfm_rna_official_tiny"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_cells(tok, n_cells: int, expressed: int, seed: int = 0):
    import anndata as ad
    import scipy.sparse as sp

    import biomed_toolkit.rna as rna

    pc = sorted(set(tok.genes) & rna.protein_coding_symbols())
    rng = np.random.default_rng(seed)
    genes = list(rng.choice(pc, size=3000, replace=False))
    rows = []
    for _ in range(n_cells):
        k = int(rng.integers(expressed - 50, expressed + 50))
        cols = np.sort(rng.choice(len(genes), k, replace=False))
        vals = rng.negative_binomial(1, 0.4, size=k) + 1
        rows.append(sp.csr_matrix((vals.astype(np.float32), cols, [0, k]), shape=(1, len(genes))))
    a = ad.AnnData(sp.vstack(rows).tocsr())
    a.var_names = genes
    return a


def child(mode: str, args: argparse.Namespace) -> dict:
    import torch

    import biomed_toolkit.rna as rna
    from biomed_toolkit.core.settings import settings

    torch.set_num_threads(1)
    settings.progress = False
    settings.verbosity = 1
    model = rna.load(FIXTURE / "ckpt" / "last.ckpt", device="cpu")
    adata = make_cells(model.tokenizer, args.cells, args.expressed)
    base = current_rss_mb()
    if mode == "ours":
        rna.embed_cells(model, adata[:16], progress=False)  # warm-up (kernel compile)
        t = time.perf_counter()
        X, _ = rna.embed_cells(model, adata, progress=False)
        dt = time.perf_counter() - t
        return {"cells": args.cells, "seconds": dt, "cells_per_s": args.cells / dt,
                "peak_mb": rss_mb(), "base_mb": base, "emb": X[:4].tolist()}
    # official-like: max_length padding, batch 8, transform + WCED decoder at every position
    n = args.official_cells
    enc = rna.encode_cells(adata[:n], model, padding="max_length", max_length=1024)
    lm = model.cls.predictions.predictions
    dec = lm.decoder.field_decoders["expressions_wced"]
    t = time.perf_counter()
    first = None
    with torch.no_grad():
        for s in range(0, n, args.official_batch):
            b = {k: v[s:s + args.official_batch] for k, v in enc.to_torch().items()}
            out = model(**b, heads=("labels",))
            logits = dec(lm.transform(out.last_hidden_state))
            logits = logits.view(*logits.shape[:2], -1, 2)
            if first is None:
                first = out.cls_embedding[:4].tolist()
            del logits
    dt = time.perf_counter() - t
    return {"cells": n, "seconds": dt, "cells_per_s": n / dt, "peak_mb": rss_mb(), "base_mb": base,
            "emb": first}


def flops_part(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    from biomed_toolkit.rna.configuration import BmfmRnaConfig
    from biomed_toolkit.rna.modeling import BmfmRnaModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = BmfmRnaConfig.v1(vocab_size=19_290, hidden_size=768, num_hidden_layers=12,
                           num_attention_heads=12, intermediate_size=3072)
    model = BmfmRnaModel(cfg).eval()
    B, W = args.flops_batch, args.flops_width
    genes = torch.randint(5, 19_000, (B, W))
    expr = torch.rand(B, W) * 5 + 0.1
    mask = torch.ones(B, W, dtype=torch.bool)
    H, inter, nh, L = 768, 3072, 12, 12
    T = B * W
    flops = L * (2 * T * (4 * H * H + 2 * H * inter) + 2 * 2 * B * W * W * H)

    def ours():
        with torch.inference_mode():
            model.encode(genes, expr, mask)

    x = torch.randn(T, H)
    w_h, w_i, w_o = torch.randn(H, H), torch.randn(inter, H), torch.randn(H, inter)
    q = torch.randn(B * nh, W, H // nh)

    def matmuls():
        with torch.inference_mode():
            for _ in range(L):
                for _ in range(4):
                    F.linear(x, w_h)
                h = F.linear(x, w_i)
                F.linear(h, w_o)
                s = torch.bmm(q, q.transpose(1, 2))
                torch.bmm(s, q)

    ours()
    matmuls()
    t_ours, t_mm = best_of(ours), best_of(matmuls)
    g_ours, g_mm = flops / t_ours / 1e9, flops / t_mm / 1e9
    print(f"\nencoder GFLOP/s, v1-110M shape (768 x 12 layers), batch {B} x {W} tokens, "
          f"{args.threads} thread(s)")
    print(f"  embed encoder      {g_ours:8.1f} GFLOP/s  ({t_ours:.2f} s)")
    print(f"  plain matmuls      {g_mm:8.1f} GFLOP/s  ({t_mm:.2f} s), same shapes")
    print(f"  ratio              {g_ours / g_mm:8.2f}  (target >= 0.50: {'met' if g_ours >= 0.5 * g_mm else 'NOT met'})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default=None)
    ap.add_argument("--cells", type=int, default=400)
    ap.add_argument("--expressed", type=int, default=450)
    ap.add_argument("--official-cells", type=int, default=16)
    ap.add_argument("--official-batch", type=int, default=8)
    ap.add_argument("--flops-batch", type=int, default=4)
    ap.add_argument("--flops-width", type=int, default=480)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-official", action="store_true")
    args = ap.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(child(args.mode, args)))
        return
    if FIXTURE.is_dir():
        results = {}
        modes = ["ours"] + ([] if args.skip_official else ["official"])
        for mode in modes:
            cmd = [sys.executable, __file__, "--mode", mode] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                if k not in ("mode", "skip_official") and v is not None]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[mode] = json.loads(out.split("RESULT ", 1)[1])
        o = results["ours"]
        print(f"fixture checkpoint, {args.cells} cells x ~{args.expressed} expressed genes, 1 thread")
        print(f"  embed_cells         {o['cells_per_s']:10.1f} cells/s  peak RSS {o['peak_mb']:8.0f} MB "
              f"(+{o['peak_mb'] - o['base_mb']:.0f} MB over the loaded model and data)")
        if "official" in results:
            f = results["official"]
            print(f"  official-like path  {f['cells_per_s']:10.2f} cells/s  peak RSS {f['peak_mb']:8.0f} MB "
                  f"(+{f['peak_mb'] - f['base_mb']:.0f} MB), {f['cells']} cells, batch {args.official_batch}, "
                  "WCED over every position")
            ratio = o["cells_per_s"] / f["cells_per_s"]
            same = np.allclose(np.asarray(o["emb"]), np.asarray(f["emb"]), atol=1e-5)
            print(f"  speed-up x{ratio:.0f} (target >= 100); embeddings identical: {same}; "
                  f"peak < 1 GB: {o['peak_mb'] < 1024}")
    else:
        print(f"fixture not found at {FIXTURE}: skipping the checkpoint comparison")
    flops_part(args)


if __name__ == "__main__":
    main()
