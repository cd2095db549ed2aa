"""A small scoring model and dataset shared by the inference tests and their script jobs."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class Items(Dataset):
    """Random feature vectors (float32, seeded) of variable count."""

    def __init__(self, n: int = 37, dim: int = 6, seed: int = 0) -> None:
        self.x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


class Scorer(torch.nn.Module):
    """Two outputs per item: a score and a 3-wide embedding (seeded weights)."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.net(x)
        return {"score": h[:, 0], "embedding": h[:, 1:]}


class ScoreFn:
    """Picklable ``predict_fn`` (for spawn): runs the model on the batch, on the model's device."""

    def __init__(self, model: Scorer) -> None:
        self.model = model

    def __call__(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(batch.to(next(self.model.parameters()).device))


def square_index(batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """``predict_fn`` for an index range: the index and its square, plus the process id."""
    import os

    return {"index": batch, "square": batch * batch, "pid": torch.full_like(batch, os.getpid())}
