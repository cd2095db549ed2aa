"""Peak memory and throughput of ``bt.tl.embed`` on a large backed (on-disk) counts file.

Generates (once, cached under ``--workdir``) an h5ad of ``--n-cells`` raw-count cells over the
protein-coding genes of the embedded demo model's vocabulary: CSR float32, ~1,000-2,000 expressed
genes per cell, gene choice from a log-normal gene-abundance profile and counts from a negative
binomial with a per-cell size factor. The file is written chunk by chunk with h5py, so the
generator never holds the whole matrix.

Each measurement runs in its own process (peak RSS is per process):

* ``backed``: ``anndata.read_h5ad(path, backed="r")`` then ``bt.tl.embed`` on all cells;
* ``memory``: the first ``--ref-cells`` cells loaded in memory, then ``bt.tl.embed`` (the
  in-run reference).

Peak RSS is the kernel's ``VmHWM`` of ``/proc/self/status`` (read by a sampling thread, which
also records ``VmRSS``); ``getrusage(RUSAGE_SELF).ru_maxrss`` is printed too but survives
``execve``, so it may include the parent's peak at fork time. Results are printed as ratios against the reference. Target: 200,000
cells under 3 GB peak, i.e. memory that does not grow with the number of cells.

Run: ``python benchmarks/bench_rna_backed_embed.py --n-cells 200000 --workdir /tmp/bt_backed``
(``--max-length`` trades tokens per cell for time; it does not change what is held in memory
per cell).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

CHUNK = 5000  # cells generated and written per step


# --------------------------------------------------------------------------------------------
# generator
# --------------------------------------------------------------------------------------------
def vocab_genes() -> list[str]:
    """Protein-coding genes of the embedded demo model (what ``embed`` matches by default)."""
    import biomed_toolkit.rna as rna

    model = rna.load()
    pc = rna.protein_coding_symbols()
    return sorted(g for g in model.tokenizer.genes if g in pc)


def _chunk(rng: np.random.Generator, n: int, cdf: np.ndarray, mu: np.ndarray,
           lo: int, hi: int):
    """CSR pieces of ``n`` cells: ~lo..hi distinct genes per cell, negative-binomial counts."""
    n_genes = len(cdf)
    draws = rng.integers(int(lo * 1.15), int(hi * 1.15), size=n)  # with-replacement draws
    rows = np.repeat(np.arange(n, dtype=np.int64), draws)
    genes = np.searchsorted(cdf, rng.random(rows.size), side="right").clip(0, n_genes - 1)
    key = np.unique(rows * n_genes + genes)  # sorted: row-major CSR order, distinct genes
    r, g = key // n_genes, (key % n_genes).astype(np.int32)
    size = rng.lognormal(0.0, 0.4, size=n)
    mean = mu[g] * size[r]
    p = 2.0 / (2.0 + mean)  # NB with dispersion r=2 and the given mean; +1 keeps it expressed
    data = (rng.negative_binomial(2, p) + 1).astype(np.float32)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
    return data, g, indptr


def generate(path: Path, n_cells: int, seed: int = 0) -> None:
    """Write a raw-count h5ad of ``n_cells`` chunk by chunk (low memory)."""
    import anndata as ad
    import h5py
    import pandas as pd

    genes = vocab_genes()
    rng = np.random.default_rng(seed)
    weight = rng.lognormal(0.0, 1.5, size=len(genes))
    cdf = np.cumsum(weight / weight.sum())
    mu = 0.5 + 4.0 * weight / weight.max() * 20  # abundant genes get larger counts
    tmp = path.with_suffix(".part")
    obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(n_cells)], dtype=object))
    var = pd.DataFrame(index=pd.Index(genes, dtype=object))
    ad.AnnData(obs=obs, var=var).write_h5ad(tmp)
    with h5py.File(tmp, "a") as f:
        if "X" in f:
            del f["X"]
        grp = f.create_group("X")
        grp.attrs["encoding-type"] = "csr_matrix"
        grp.attrs["encoding-version"] = "0.1.0"
        grp.attrs["shape"] = (n_cells, len(genes))
        kw = {"maxshape": (None,), "chunks": (1 << 18,)}
        d_data = grp.create_dataset("data", shape=(0,), dtype="float32", **kw)
        d_ind = grp.create_dataset("indices", shape=(0,), dtype="int32", **kw)
        d_ptr = grp.create_dataset("indptr", shape=(n_cells + 1,), dtype="int64")
        nnz = 0
        for lo in range(0, n_cells, CHUNK):
            n = min(CHUNK, n_cells - lo)
            data, ind, ptr = _chunk(rng, n, cdf, mu, 1000, 2000)
            d_data.resize((nnz + data.size,))
            d_ind.resize((nnz + data.size,))
            d_data[nnz:] = data
            d_ind[nnz:] = ind
            d_ptr[lo:lo + n + 1] = ptr + nnz
            nnz += data.size
    tmp.rename(path)


# --------------------------------------------------------------------------------------------
# measurement (child process)
# --------------------------------------------------------------------------------------------
class PeakSampler(threading.Thread):
    """Samples VmRSS/VmHWM of /proc/self/status (VmHWM is the kernel's own peak)."""

    def __init__(self, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.peak_rss = 0.0
        self.hwm = 0.0
        self._halt = threading.Event()

    @staticmethod
    def read() -> dict[str, float]:
        out = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS", "VmHWM")):
                    k, v = line.split(":")
                    out[k] = float(v.split()[0]) / 1024  # MB
        return out

    def run(self) -> None:
        while not self._halt.is_set():
            s = self.read()
            self.peak_rss = max(self.peak_rss, s.get("VmRSS", 0.0))
            self.hwm = max(self.hwm, s.get("VmHWM", 0.0))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        s = self.read()
        self.hwm = max(self.hwm, s.get("VmHWM", 0.0))


def child(args: argparse.Namespace) -> dict:
    import anndata as ad
    import torch

    import biomed_toolkit as bt
    from biomed_toolkit.core.settings import settings

    torch.set_num_threads(1)
    settings.progress = False
    sampler = PeakSampler()
    sampler.start()
    model = bt.rna.load()
    if args.mode == "backed":
        adata = ad.read_h5ad(args.path, backed="r")
    else:
        backed = ad.read_h5ad(args.path, backed="r")
        adata = backed[: args.ref_cells].to_memory()
        backed.file.close()
    warm = ad.AnnData(adata.X[:8] if args.mode == "backed" else adata.X[:8], var=adata.var)
    bt.tl.embed(warm, model, max_length=args.max_length, progress=False)  # kernel warm-up
    base = PeakSampler.read()["VmRSS"]
    t = time.perf_counter()
    bt.tl.embed(adata, model, max_length=args.max_length, progress=False)
    dt = time.perf_counter() - t
    sampler.stop()
    emb = adata.obsm["X_bmfm"]
    info = {
        "mode": args.mode, "cells": int(adata.n_obs), "seconds": dt, "cells_per_s": adata.n_obs / dt,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vm_hwm_mb": sampler.hwm, "sampled_rss_mb": sampler.peak_rss, "rss_before_embed_mb": base,
        "isbacked": bool(adata.isbacked), "nan_rows": int(np.isnan(emb).any(axis=1).sum()),
        "head": emb[:3, :4].tolist(),
    }
    return info


def run_child(args: argparse.Namespace, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--path", str(args.path),
           "--max-length", str(args.max_length), "--ref-cells", str(args.ref_cells)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{mode} run failed")
    return json.loads(out.stdout.split("RESULT ", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-cells", type=int, default=200_000)
    ap.add_argument("--ref-cells", type=int, default=20_000,
                    help="cells of the in-memory reference run (first rows of the same file)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--workdir", default=None,
                    help="folder caching the generated file (default: a temp folder)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.mode = args.child
        print("RESULT " + json.dumps(child(args)))
        return
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "bt_bench_backed")
    workdir.mkdir(parents=True, exist_ok=True)
    args.path = workdir / f"counts_{args.n_cells}.h5ad"
    if not args.path.exists():
        t = time.perf_counter()
        generate(args.path, args.n_cells)
        print(f"generated {args.path} in {time.perf_counter() - t:.0f} s "
              f"({args.path.stat().st_size / 2**30:.2f} GiB on disk)")
    args.ref_cells = min(args.ref_cells, args.n_cells)
    import anndata as ad

    a = ad.read_h5ad(args.path, backed="r")
    nnz = a.file["X"]["indptr"][-1]
    print(f"file: {a.n_obs:,} cells x {a.n_vars:,} genes, {nnz / a.n_obs:,.0f} expressed genes "
          f"per cell on average, max_length={args.max_length}, 1 torch thread")
    a.file.close()
    ref = run_child(args, "memory")
    big = run_child(args, "backed")
    print(f"{'run':<28}{'cells':>9}{'cells/s':>10}{'ru_maxrss':>11}{'VmHWM':>9}{'before':>9}")
    for name, r in ((f"in memory ({ref['cells']:,}, ref)", ref), (f"backed ({big['cells']:,})", big)):
        print(f"{name:<28}{r['cells']:>9,}{r['cells_per_s']:>10.1f}{r['ru_maxrss_mb'] / 1024:>9.2f}GB"
              f"{r['vm_hwm_mb'] / 1024:>7.2f}GB{r['rss_before_embed_mb'] / 1024:>7.2f}GB")
    # VmHWM is the child's own peak; ru_maxrss survives execve, so it can show the parent's
    # (generator) peak inherited at fork time and only bounds the child's from above
    peak_big = big["vm_hwm_mb"] / 1024
    peak_ref = ref["vm_hwm_mb"] / 1024
    same = np.allclose(np.asarray(ref["head"]), np.asarray(big["head"]), atol=1e-5)
    print(f"peak-memory (VmHWM) ratio backed/reference: {peak_big / peak_ref:.2f} "
          f"for {big['cells'] / ref['cells']:.0f}x the cells")
    print(f"throughput ratio backed/reference:          {big['cells_per_s'] / ref['cells_per_s']:.2f}")
    print(f"backed AnnData still backed after embed: {big['isbacked']}; NaN rows: {big['nan_rows']}; "
          f"first rows equal to the in-memory run: {same}")
    print(f"peak (VmHWM) {peak_big:.2f} GB, ru_maxrss {big['ru_maxrss_mb'] / 1024:.2f} GB for {big['cells']:,} cells: target < 3 GB "
          f"{'met' if peak_big < 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
