"""Tokenization throughput of bt.rna.encode_cells vs a per-cell reference, same run, one core.

Data: synthetic raw counts over the 19,283 HGNC protein-coding genes, 1,500 expressed genes per
cell (negative-binomial counts), so every cell fills 1,024 tokens. The reference encodes each
cell on its own (filter, normalise, look up ids, pad), like a per-record dataset pipeline.

Run: ``python benchmarks/bench_rna_tokenize.py [--cells 40000]``
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from _common import best_of  # noqa: E402

import biomed_toolkit.rna as rna  # noqa: E402
from biomed_toolkit.rna.io import iter_csr_chunks  # noqa: E402
from biomed_toolkit.rna.tokenize import encode_csr  # noqa: E402

TARGET = 50_000


def make_counts(n_cells: int, genes: list[str], nnz: int, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    base = [np.sort(rng.choice(len(genes), nnz, replace=False)) for _ in range(256)]
    idx = np.concatenate([base[i % 256] for i in range(n_cells)]).astype(np.int32)
    data = (rng.negative_binomial(1, 0.4, size=n_cells * nnz) + 1).astype(np.float32)
    indptr = np.arange(n_cells + 1, dtype=np.int64) * nnz
    return sp.csr_matrix((data, idx, indptr), shape=(n_cells, len(genes)))


def reference_encode(X: sp.csr_matrix, names: np.ndarray, vocab: dict, pc: frozenset, max_length: int):
    """Per-cell encoding (what a per-record dataset does), for comparison only."""
    out_g = np.full((X.shape[0], max_length), 2, dtype=np.int64)
    out_e = np.full((X.shape[0], max_length), -3.0, dtype=np.float32)
    for r in range(X.shape[0]):
        row = X.getrow(r)
        g = names[row.indices]
        keep = np.array([x in vocab and x in pc for x in g], dtype=bool)
        g, v = g[keep], row.data[keep].astype(np.float64)
        norm = np.log1p(v / (v.sum() + 1) * 1e4)[: max_length - 2]
        ids = [vocab[x] for x in g[: max_length - 2]]
        out_g[r, 0], out_e[r, 0] = 3, -4.0
        out_g[r, 1:len(ids) + 1] = ids
        out_e[r, 1:len(ids) + 1] = norm
        out_g[r, len(ids) + 1], out_e[r, len(ids) + 1] = 1, -2.0
    return out_g, out_e


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=40_000)
    ap.add_argument("--expressed", type=int, default=1500)
    ap.add_argument("--chunk", type=int, default=4096)
    args = ap.parse_args()
    genes = sorted(rna.protein_coding_symbols())
    tok = rna.GeneTokenizer.from_genes(genes)
    X = make_counts(args.cells, genes, args.expressed)
    rep = rna.match_genes(X, tok, genes=genes, compute_coverage=False, log_summary=False)
    col = rep.column_token_ids
    encode_csr(X[:8], col)  # compile / load the kernel once

    def run(order: str, engine: str = "auto", n: int | None = None) -> None:
        n = args.cells if n is None else n
        for s, block in iter_csr_chunks(X, chunk_size=args.chunk, stop=n):
            encode_csr(block, col, max_length=1024, order=order, cell_offset=s, engine=engine)

    rows = []
    for order in ("official", "random", "rank"):
        dt = best_of(lambda o=order: run(o))
        rows.append((f"encode_cells order={order}", args.cells / dt))
    n_np = min(args.cells, 8192)
    rows.append(("numpy engine order=official", n_np / best_of(lambda: run("official", "numpy", n_np))))
    n_ref = 300
    names = np.asarray(genes, dtype=object)
    vocab = {g: int(i) for g, i in zip(genes, tok.gene_ids(genes))}
    pc = rna.protein_coding_symbols()
    ref_rate = n_ref / best_of(lambda: reference_encode(X[:n_ref], names, vocab, pc, 1024), 1)
    rows.append(("per-cell reference", ref_rate))

    # identical outputs (checked on the reference's cells)
    enc = encode_csr(X[:n_ref], col, max_length=1024, padding="max_length")
    rg, re_ = reference_encode(X[:n_ref], names, vocab, pc, 1024)
    assert np.array_equal(enc.genes, rg) and np.array_equal(enc.expressions, re_)

    print(f"tokenization, {args.cells:,} cells x {args.expressed} expressed genes -> 1,024 tokens, one core")
    for name, rate in rows:
        print(f"  {name:32s} {rate:12,.0f} cells/s   x{rate / ref_rate:8.1f} vs per-cell reference")
    official = rows[0][1]
    print(f"  target {TARGET:,} cells/s: {'met' if official >= TARGET else 'NOT met'} "
          f"({official / TARGET:.2f} of target); outputs identical to the reference")


if __name__ == "__main__":
    main()
