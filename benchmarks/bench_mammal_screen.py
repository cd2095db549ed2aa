"""Screening overhead over a bare encoder pass, at the demo's and at the official 458M size.

For each model: the wall time of ``bt.mammal.virtual_screen`` (prompt building, one tokenization
per prompt with validation, length batching, scalar read-out, ranking) against a bare encoder +
scalar-head pass over the same prompts tokenized beforehand in the same batches, on
1,250-residue target prompts. The two are interleaved ``--repeats`` times in one run; the ratio
uses the best time of each. Also: a file screen (SMILES in, Parquet parts out) with its peak
memory, to show memory is bounded by the chunk, not the library.

Run: ``python benchmarks/bench_mammal_screen.py [--sizes demo 458m] [--n-demo 512] [--n-full 16]``
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mammal_full_size import FIXTURE_TOKENIZER, PROTEIN  # noqa: E402

FULL_LENGTH = {"protein_max_len": 1250}  # whatever the model's default, score 1,250-residue prompts


def bare_pass(model, batches) -> None:
    with model.inference():
        for b in batches:
            h0 = model.run_encoder(b)[:, 0]
            model.scalars_prediction_head(h0)


def measure(model, smiles: list[str], batch_size: int, repeats: int) -> dict:
    import biomed_toolkit as bt
    from biomed_toolkit.mammal import prompts
    from biomed_toolkit.mammal.tasks import _default_kwargs, get_task

    kw = _default_kwargs(model, get_task("dti"), FULL_LENGTH)
    built = [prompts.dti(PROTEIN, s, **kw) for s in smiles]
    order = sorted(range(len(built)), key=lambda i: len(built[i]))
    tok = model.tokenizer
    batches = [tok([built[i] for i in order[j : j + batch_size]]) for j in range(0, len(order), batch_size)]
    screen_t, bare_t = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        bare_pass(model, batches)
        bare_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        bt.mammal.virtual_screen(model, PROTEIN, smiles, batch_size=batch_size, progress=False,
                                 prompt_kwargs=FULL_LENGTH)
        screen_t.append(time.perf_counter() - t)
    n_tokens = int(batches[0].lengths.float().mean())
    return {"molecules": len(smiles), "batch_size": batch_size, "prompt_tokens": n_tokens,
            "bare_seconds": round(min(bare_t), 2), "screen_seconds": round(min(screen_t), 2),
            "ratio": round(min(screen_t) / min(bare_t), 3), "molecules_per_s": round(len(smiles) / min(screen_t), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["demo", "458m"])
    ap.add_argument("--n-demo", type=int, default=512)
    ap.add_argument("--n-full", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--full-batch", type=int, default=8)
    ap.add_argument("--file-molecules", type=int, default=20000, help="molecules in the file screen (0: skip)")
    ap.add_argument("--chunk", type=int, default=5000, help="molecules per Parquet part in the file screen")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import biomed_toolkit as bt
    from biomed_toolkit.mammal.configuration import MammalConfig
    from biomed_toolkit.mammal.modeling import MammalModel
    from biomed_toolkit.mammal.tokenizer import Tokenizer

    bt.settings.progress = False
    lib = bt.mammal.kiba().smiles.drop_duplicates().tolist()
    out = {"threads": args.threads}
    demo = bt.mammal.load(device="cpu")
    if "demo" in args.sizes:
        smiles = (lib * (args.n_demo // len(lib) + 1))[: args.n_demo]
        out["demo"] = {"parameters": demo.num_parameters(), **measure(demo, smiles, 32, args.repeats)}
        print(json.dumps(out["demo"]), flush=True)
    if args.file_molecules:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "lib.smi"
            path.write_text("".join(f"{lib[i % len(lib)]}\n" for i in range(args.file_molecules)))
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            t = time.perf_counter()
            res = bt.mammal.screen_file(demo, PROTEIN, path, Path(tmp) / "out", chunk_size=args.chunk, batch_size=32,
                                        progress=False, prompt_kwargs=FULL_LENGTH)
            dt = time.perf_counter() - t
            out["file_screen_demo"] = {"molecules": res.n_molecules, "chunks": res.n_chunks, "seconds": round(dt, 1),
                                       "molecules_per_s": round(res.n_molecules / dt, 1),
                                       "peak_rss_mb_before": round(rss0),
                                       "peak_rss_mb_after": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
            print(json.dumps(out["file_screen_demo"]), flush=True)
    if "458m" in args.sizes:
        tok_dir = FIXTURE_TOKENIZER if FIXTURE_TOKENIZER.is_dir() else None
        tok = Tokenizer.from_pretrained(tok_dir) if tok_dir else demo.tokenizer
        full = MammalModel(MammalConfig(encoder_head_layers=[2048, 1024]), tok).eval()
        smiles = lib[: args.n_full]
        out["458m"] = {"parameters": full.num_parameters(), **measure(full, smiles, args.full_batch, args.repeats)}
        print(json.dumps(out["458m"]), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
