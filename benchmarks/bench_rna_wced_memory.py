"""Peak memory of one WCED training step: decoding the CLS only versus decoding every token.

Batch 32, 19,290-token (protein-coding) vocabulary, a v2-width (384) 4-layer model. "every
token" decodes all positions (B x L x V x 2 outputs, as the official decoder head does) and then
uses the CLS position for the loss; "CLS only" decodes the CLS state alone (what
RnaPretrainingModule does). Each mode runs in its own process; the same loss value is checked.

Run: ``python benchmarks/bench_rna_wced_memory.py [--length 256]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from _common import current_rss_mb  # noqa: E402


def child(mode: str, args: argparse.Namespace) -> dict:
    import torch

    from biomed_toolkit.rna.configuration import BmfmRnaConfig
    from biomed_toolkit.rna.modeling import BmfmRnaModel
    from biomed_toolkit.rna.objectives import _masked_bce, _masked_mse

    torch.set_num_threads(1)
    torch.manual_seed(0)
    V, B, L = args.vocab, args.batch, args.length
    cfg = BmfmRnaConfig.v1(vocab_size=V, hidden_size=384, num_hidden_layers=4, num_attention_heads=6,
                           intermediate_size=1024, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0,
                           decode_modes={"expressions": {"wced": {"vocab_field": "genes",
                                                                  "logit_outputs": ["mse", "is_zero_bce"]}}})
    model = BmfmRnaModel(cfg).train()
    genes = torch.randint(5, V, (B, L))
    genes[:, 0] = 3
    expr = torch.rand(B, L) * 5
    mask = torch.ones(B, L, dtype=torch.bool)
    target = torch.where(torch.rand(B, V) < 0.3, torch.rand(B, V) * 5, torch.zeros(B, V))
    present = torch.ones(B, V, dtype=torch.bool)
    base = current_rss_mb()
    t = time.perf_counter()
    out = model(genes, expr, mask, heads=())
    lm = model.cls.predictions.predictions
    dec = lm.decoder.field_decoders["expressions_wced"]
    if mode == "cls":
        w = model.decode_wced(out.last_hidden_state[:, 0])
        value, is_zero = w.value, w.is_zero
    else:
        full = dec(lm.transform(out.last_hidden_state)).view(B, L, V, 2)
        value, is_zero = full[:, 0, :, 0], full[:, 0, :, 1]
    loss = _masked_mse(value, target, present & (target > 0)) + _masked_bce(is_zero, target == 0, present)
    loss.backward()
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"loss": float(loss), "peak_mb": peak, "base_mb": base, "seconds": dt}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=19_290)
    args = ap.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(child(args.mode, args)))
        return
    res = {}
    for mode in ("cls", "every"):
        cmd = [sys.executable, __file__, "--mode", mode, f"--batch={args.batch}",
               f"--length={args.length}", f"--vocab={args.vocab}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        res[mode] = json.loads(out.split("RESULT ", 1)[1])
    print(f"one WCED training step, batch {args.batch}, length {args.length}, vocabulary {args.vocab:,}")
    for mode, name in (("cls", "CLS-only decode"), ("every", "every-token decode")):
        r = res[mode]
        print(f"  {name:20s} peak RSS {r['peak_mb']:8.0f} MB  (+{r['peak_mb'] - r['base_mb']:7.0f} MB "
              f"for the step)  {r['seconds']:.2f} s  loss {r['loss']:.6f}")
    c, e = res["cls"], res["every"]
    print(f"  step memory ratio every/CLS: x{(e['peak_mb'] - e['base_mb']) / max(1.0, c['peak_mb'] - c['base_mb']):.1f}; "
          f"same loss: {abs(c['loss'] - e['loss']) < 1e-4 * max(1.0, abs(c['loss']))}")


if __name__ == "__main__":
    main()
