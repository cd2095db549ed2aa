"""MAMMAL tokenizer throughput against a naive per-prompt reference, measured in the same run.

The reference encodes every segment with the Hugging Face sub-tokenizer (as the official op
does) and builds one tensor per prompt before padding. Target: >= 25,000 fixture PPI prompts/s
on one core (the official op does about 11,000/s), and DTI prompts with 1,000-residue proteins
at a proportionate rate (25,000 x 51 / 1,032 tokens ~ 1,240/s).

Run: ``python benchmarks/bench_mammal_tokenizer.py [--n 20000]`` (needs ../shared/fixtures).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from biomed_toolkit.mammal import Tokenizer, prompts
from biomed_toolkit.mammal.prompts import parse

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "mammal_official_tiny"
AA = "ACDEFGHIKLMNPQRSTVWY"


def naive(tok: Tokenizer, batch: list[str]) -> torch.Tensor:
    rows = []
    for p in batch:
        ids: list[int] = []
        for seg in parse(p).segments:
            sub = tok._subs[seg.tokenizer_type]
            seg_ids = sub.hf.encode(seg.text, add_special_tokens=False).ids
            if seg.max_len is not None:
                seg_ids = seg_ids[: seg.max_len]
            ids.extend(seg_ids)
        rows.append(torch.tensor(ids))
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.pad_id)


def rate(fn, items: list[str], chunk: int = 1000) -> float:
    t = time.perf_counter()
    for i in range(0, len(items), chunk):
        fn(items[i : i + chunk])
    return len(items) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import os

    os.environ["RAYON_NUM_THREADS"] = "1"
    tok = Tokenizer.from_pretrained(FIXTURE / "tokenizer")
    import json

    cases = {c["name"]: c for c in json.loads((FIXTURE / "cases.json").read_text())["cases"]}
    fixture_ppi = [cases["ppi"]["prompt"]] * args.n
    rng = random.Random(0)

    def prot(n: int) -> str:
        return "".join(rng.choice(AA) for _ in range(n))

    distinct_ppi = [prompts.ppi(prot(20), prot(20)) for _ in range(args.n)]
    smiles = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CCN(CC)CCNC(=O)c1ccc(N)cc1", "c1ccccc1O"]
    n_dti = max(200, args.n // 20)
    dti_long = [prompts.dti(prot(1000), smiles[i % 4]) for i in range(n_dti)]

    rows = []
    for name, items in [
        ("fixture PPI prompt (repeated)", fixture_ppi),
        ("distinct PPI prompts (20+20 aa)", distinct_ppi),
        ("DTI, 1000-residue proteins", dti_long),
    ]:
        tok._cache.clear()
        ref = rate(lambda b: naive(tok, b), items)
        tok._cache.clear()
        ours = rate(lambda b: tok(b), items)
        tok._cache.clear()
        ours_nc = rate(lambda b: (tok._cache.clear(), tok(b)), items)
        rows.append((name, ours, ours_nc, ref))
    print(f"{'workload':36s} {'ours/s':>10s} {'no-cache/s':>11s} {'naive/s':>10s} {'ratio':>7s}")
    for name, ours, nc, ref in rows:
        print(f"{name:36s} {ours:10.0f} {nc:11.0f} {ref:10.0f} {ours / ref:7.2f}x")
    ppi = rows[0][1]
    print(f"\nfixture PPI: {ppi:.0f} prompts/s (target >= 25,000): {'PASS' if ppi >= 25000 else 'FAIL'}")
    need = 25000 * 51 / 1032
    print(f"DTI 1000 aa: {rows[2][1]:.0f} prompts/s (proportionate target >= {need:.0f}): "
          f"{'PASS' if rows[2][1] >= need else 'FAIL'}")


if __name__ == "__main__":
    main()
