"""The dual-view matcher's networks: Siamese patch matcher (following Perek et al., 2018),
candidate heatmap detector and the calibrated fusion layer.

A CC patch and an MLO patch go through the same small CNN (shared weights); the two
embeddings form a joint pair representation ``[a, b, |a - b|, a * b]`` that a comparison head
turns into the logit that both patches show the same lesion. Layer sizes and patch size are our
own choices (the paper's are not known to us). The same checkpoint carries the candidate
detector (a dilated fully convolutional network giving a lesion logit per millimetre) and a
logistic fusion of the Siamese logit with geometric and detector features, fitted on
training-seed phantoms, so ``bt.mammo.match(case)`` needs one model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from biomed_toolkit.core.model import BaseModel
from biomed_toolkit.mammo.configuration import FUSION_FEATURES, SiameseConfig

__all__ = ["SiameseConfig", "SiameseMatcher", "CandidateNet", "MatchOutput", "load", "DEMO_NAME",
           "FUSION_FEATURES"]

DEMO_NAME = "mammo-demo"
FAMILY = "mammo"


@dataclass
class MatchOutput:
    """Output of :meth:`SiameseMatcher.forward`."""

    logits: torch.Tensor
    probabilities: torch.Tensor
    embeddings: tuple[torch.Tensor, torch.Tensor] = field(repr=False, default=None)  # type: ignore[assignment]


class CandidateNet(nn.Module):
    """Dilated fully convolutional heatmap network: (N, C, H, W) on the 2 mm grid -> lesion
    logits (N, 1, H, W); ``dilations`` default to 1, 2, 4, ... per layer."""

    def __init__(self, in_channels: int, channels: tuple[int, ...],
                 dilations: tuple[int, ...] | None = None, norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        dilations = dilations or tuple(2**i for i in range(len(channels)))
        for cout, d in zip(channels, dilations, strict=True):
            layers.append(nn.Conv2d(cin, cout, 3, padding=d, dilation=d))
            if norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(cin, 1, 1)
        nn.init.constant_(self.out.bias, -4.0)  # lesions are rare: start near p = 0.02

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class SiameseMatcher(BaseModel):
    """Shared-weight CNN branches, a joint pair representation and a comparison head, plus the
    candidate detector and the fusion layer.

    Examples
    --------
    >>> model = bt.mammo.load()
    >>> case = bt.mammo.phantom(3)
    >>> matches = bt.mammo.match(case, model)
    """

    config_class = SiameseConfig
    family = FAMILY

    def __init__(self, config: SiameseConfig | None = None) -> None:
        super().__init__(config or SiameseConfig())
        c = self.config
        layers: list[nn.Module] = []
        cin = c.in_channels
        for cout in c.channels:
            for _ in range(c.convs_per_stage):
                layers += [
                    nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                ]
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.branch = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(cin, c.embed_dim))
        self.head = nn.Sequential(
            nn.Linear(4 * c.embed_dim, c.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(c.dropout),
            nn.Linear(c.hidden, 1),
        )
        self.detector = CandidateNet(c.detector_in, c.detector_channels, c.detector_dilations,
                                     c.detector_norm)
        self.fusion = nn.Linear(len(c.fusion_features), 1)
        with torch.no_grad():  # untrained fusion = the Siamese logit alone
            self.fusion.weight.zero_()
            self.fusion.bias.zero_()
            if "siamese_logit" in c.fusion_features:
                self.fusion.weight[0, c.fusion_features.index("siamese_logit")] = 1.0

    def task_description(self) -> str:
        return "dual-view lesion matching"

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        """Branch embedding of a batch of patches (N, C, S, S)."""
        return self.branch(patches)

    def compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits of the comparison head for paired embeddings."""
        joint = torch.cat([a, b, (a - b).abs(), a * b], dim=-1)
        return self.head(joint).squeeze(-1)

    def forward(self, cc_patches: torch.Tensor, mlo_patches: torch.Tensor) -> MatchOutput:
        a, b = self.embed(cc_patches), self.embed(mlo_patches)
        logits = self.compare(a, b)
        return MatchOutput(logits=logits, probabilities=torch.sigmoid(logits), embeddings=(a, b))

    def pair_logits(self, cc_patches: np.ndarray, mlo_patches: np.ndarray) -> np.ndarray:
        """Siamese logit of every (CC patch, MLO patch) pair: an (n, m) float64 array."""
        n, m = len(cc_patches), len(mlo_patches)
        if n == 0 or m == 0:
            return np.zeros((n, m))
        with self.inference():
            dev = self.device
            ea = self.embed(torch.from_numpy(cc_patches).to(dev))
            eb = self.embed(torch.from_numpy(mlo_patches).to(dev))
            logits = self.compare(ea[:, None, :].expand(n, m, -1).reshape(n * m, -1),
                                  eb[None, :, :].expand(n, m, -1).reshape(n * m, -1))
        return logits.reshape(n, m).float().cpu().numpy().astype(np.float64)

    def fuse(self, features: np.ndarray) -> np.ndarray:
        """Calibrated pair probabilities from stacked features (..., n_features)."""
        w = self.fusion.weight.detach().cpu().numpy().astype(np.float64)[0]
        b = float(self.fusion.bias.detach().cpu().numpy()[0])
        z = features @ w + b
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def load(name_or_path: str | os.PathLike | None = None, *,
         device: str | torch.device | None = None) -> SiameseMatcher:
    """Load a matcher (the embedded demo when no name is given); ``device=None`` follows
    ``bt.settings.device``.

    Examples
    --------
    >>> model = bt.mammo.load()
    >>> model.card.name
    'mammo-demo'
    """
    return SiameseMatcher.from_pretrained(name_or_path, device=device)
