"""Full-size readiness: the official 458M MAMMAL architecture with random weights.

Reports load time (from a ``save_pretrained`` folder, as users load a real checkpoint), peak
memory, DTI scoring throughput at batch 1 / 8 / 32 (1,250-residue protein + drug SMILES, the
official DTI prompt), and the time and peak memory of one LoRA training step. The same script
runs on a GPU unchanged (``--device cuda``; scoring under bf16/fp16 autocast there).

Run: ``python benchmarks/bench_mammal_full_size.py [--device auto] [--batches 1 8 32] [--threads 1]``
(on the shared 2-core CPU machine one batch of 32 full-length prompts takes many minutes; pass
fewer batch sizes there).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import current_rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_TOKENIZER = ROOT.parent / "shared" / "fixtures" / "mammal_official_tiny" / "tokenizer"
# A real kinase-length target (1,250 residues) and a drug-like ligand.
PROTEIN = ("MSTAVLENPGLGRKLSDFGQETSYIEDNCNQNGAISLIFSLKEEVGALAKVLRLFEENDINLTHIESRPSRLKKDEYEFFTHLDKRSLPALTNIIKILRHDIGATVHELSRDKKKDTVPWFPRTIQELDRFANQILSYGAELDADHPGFKDPVYRARRKQFADIAYNYRHGQPIPRVEYMEEEKKTWGTVFKTLKSLYKTHACYEYNHIFPLLEKYCGFHEDNIPQLEDVSQFLQTCTGFRLRPVAGLLSSRDFLGGLAFRVFHCTQYIRHGSKPMYTPEPDICHELLGHVPLFSDRSFAQFSQEIGLASLGAPDEYIEKLATIYWFTVEFGLCKEGDSIKAYGAGLLSSFGELQYCLSDKPKLLPLELEKTACQEYSVTEFQPLYYVAESFSDAKEKVRTFAATIPRPFSVRYDPYTQRVEVLDNTQQLKILADSINSEVGILCNALQKIKS" * 4)[:1250]
SMILES = "CC1=C(C=C(C=C1)NC(=O)C2=CC=C(C=C2)CN3CCN(CC3)C)NC4=NC=CC(=N4)C5=CN=CC=C5"


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8, 32])
    ap.add_argument("--lora-batch", type=int, default=1, help="prompts in the LoRA training step (0: skip it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="keep the random 458M folder here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from biomed_toolkit.core.device import resolve_device
    from biomed_toolkit.mammal import prompts
    from biomed_toolkit.mammal.configuration import MammalConfig
    from biomed_toolkit.mammal.modeling import MammalModel
    from biomed_toolkit.mammal.tasks import _autocast
    from biomed_toolkit.mammal.tokenizer import Tokenizer

    device = resolve_device(args.device)
    tok_dir = FIXTURE_TOKENIZER if FIXTURE_TOKENIZER.is_dir() else ROOT / "biomed_toolkit" / "_models" / "mammal_demo" / "tokenizer"
    tok = Tokenizer.from_pretrained(tok_dir)
    report: dict = {"device": str(device), "threads": args.threads, "tokenizer": str(tok_dir.name)}

    # The official sizes (compat/mammal.md): T5 v1.1-base, encoder head 768 -> 2048 -> 1024 -> vocab.
    cfg = MammalConfig(encoder_head_layers=[2048, 1024], encoder_head_dropout=0.2)
    t = time.perf_counter()
    model = MammalModel(cfg, tok)
    report["build_seconds"] = round(time.perf_counter() - t, 1)
    report["parameters"] = model.num_parameters()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="mammal458m_"))
    t = time.perf_counter()
    model.save_pretrained(folder)
    report["save_seconds"] = round(time.perf_counter() - t, 1)
    report["safetensors_mb"] = round((folder / "model.safetensors").stat().st_size / 2**20)
    del model
    rss0 = current_rss_mb()
    t = time.perf_counter()
    model = MammalModel.from_pretrained(folder, device=device)
    report["load_seconds"] = round(time.perf_counter() - t, 1)
    report["rss_after_load_mb"] = round(current_rss_mb())
    report["rss_before_load_mb"] = round(rss0)
    print(json.dumps(report), flush=True)

    prompt = prompts.dti(PROTEIN, SMILES)
    n_tokens = len(tok.encode_one(prompt)[0])
    report["prompt_tokens"] = n_tokens
    report["scoring"] = []
    with model.inference():
        for bs in args.batches:
            batch = tok([prompt] * bs).to(device)
            reset_peak(device)
            t = time.perf_counter()
            with _autocast(device):
                h0 = model.run_encoder(batch)[:, 0]
                model.scalars_prediction_head(h0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            row = {"batch": bs, "seconds": round(dt, 2), "prompts_per_s": round(bs / dt, 3),
                   "tokens_per_s": round(bs * n_tokens / dt), "peak_mb": round(peak_mb(device))}
            report["scoring"].append(row)
            print(json.dumps(row), flush=True)

    if args.lora_batch > 0:
        report["lora_step"] = lora_step(model, tok, prompt, args.lora_batch, device)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(report, indent=1))
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)


def lora_step(model, tok, prompt: str, n: int, device: torch.device) -> dict:
    """Time and peak memory of one LoRA step (q/v adapters of rank 8 + the scalar head)."""
    from biomed_toolkit.core.finetune import apply_lora
    from biomed_toolkit.mammal.tasks import _autocast

    model.train()
    model = apply_lora(model, ["q", "v"], r=8, alpha=16, modules_to_save=None)
    for p in model.scalars_prediction_head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = tok([prompt] * n).to(device)
    y = torch.zeros(n, device=device)
    reset_peak(device)
    t = time.perf_counter()
    with _autocast(device):
        pred = model.scalars_prediction_head(model.run_encoder(batch)[:, 0])[:, 0]
        loss = torch.nn.functional.mse_loss(pred.float(), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"batch": n, "seconds": round(time.perf_counter() - t, 1), "peak_mb": round(peak_mb(device)),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}


if __name__ == "__main__":
    main()
