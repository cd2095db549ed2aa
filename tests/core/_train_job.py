"""A small training job run in a subprocess by the tests (kill/resume and DDP)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import Dataset


class IndexedRegression(Dataset):
    """y = x @ w + noise, with the sample index returned so tests can see which rank saw what."""

    def __init__(self, n: int = 512, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.arange(1.0, 9.0) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class Regressor(L.LightningModule):
    def __init__(self, seen_dir: str | None = None, sleep: float = 0.0, dropout: float = 0.0,
                 ids_log: str | None = None, lr: float = 0.01, momentum: float = 0.0) -> None:
        super().__init__()
        self.net = torch.nn.Linear(8, 1)
        self.dropout = torch.nn.Dropout(dropout)
        self.seen: list[int] = []
        self.seen_dir = seen_dir
        self.sleep = sleep
        self.ids_log = ids_log
        self.lr = lr
        self.momentum = momentum

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        self.seen.extend(idx.tolist())
        if self.ids_log:  # which samples each optimizer step saw, one JSON line per step
            with open(self.ids_log, "a") as handle:
                handle.write(json.dumps({"step": int(self.global_step), "ids": idx.tolist()}) + "\n")
        if self.sleep:
            time.sleep(self.sleep)
        loss = torch.nn.functional.mse_loss(self.net(self.dropout(x)).squeeze(-1), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y))

    def on_train_end(self) -> None:
        if self.seen_dir:
            out = Path(self.seen_dir) / f"rank{self.global_rank}.json"
            weights = [float(v) for v in self.net.weight.detach().flatten()]
            out.write_text(json.dumps({"seen": self.seen, "weights": weights, "step": self.global_step}))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def main() -> None:
    mode, folder = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    from biomed_toolkit.core.train import fit

    if mode == "exact":
        # dropout and momentum: an exact resume needs the RNG and optimizer state too
        sleep = float(os.environ.get("JOB_SLEEP", "0"))
        folder = Path(folder)
        torch.manual_seed(0)
        module = Regressor(sleep=sleep, dropout=0.2, ids_log=str(folder / "ids.jsonl"), momentum=0.9)
        result = fit(module, IndexedRegression(), IndexedRegression(n=64, seed=1), max_epochs=3,
                     batch_size=16, checkpoint_dir=folder / "ckpt", every_n_steps=5, progress=False,
                     accelerator="cpu", seed=1)
        weights = [float(v).hex() for p in module.parameters() for v in p.detach().flatten()]
        result.history.to_csv(folder / "final_history.csv", index=False, float_format="%r")
        print(json.dumps({"global_step": result.global_step, "weights": weights}))
    elif mode == "ddp":
        fit(Regressor(seen_dir=folder), IndexedRegression(n=256), max_epochs=2, batch_size=16,
            checkpoint_dir=Path(folder) / "ckpt", progress=False, accelerator="cpu", devices=2,
            strategy="ddp", seed=3)


if __name__ == "__main__":
    main()
