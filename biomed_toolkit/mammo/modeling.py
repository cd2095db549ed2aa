"""The Siamese patch matcher (following Perek et al., 2018) and its training on phantoms.

A CC patch and an MLO patch go through the same small CNN (shared weights); the two
embeddings form a joint pair representation ``[a, b, |a - b|, a * b]`` that a comparison head
turns into the probability that both patches show the same lesion. Layer sizes and patch size
here are our own choices (the paper's are not known to us).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from biomed_toolkit.core.errors import CheckpointError, InputError
from biomed_toolkit.mammo.candidates import (
    detect_candidates,
    extract_patches,
    label_candidates,
)
from biomed_toolkit.mammo.datasets import phantom_cases
from biomed_toolkit.mammo.io import Case

__all__ = [
    "SiameseConfig",
    "SiameseMatcher",
    "MatchOutput",
    "PairDataset",
    "SiameseLightning",
    "build_pairs",
    "load",
    "finetune",
    "DEMO_NAME",
]

DEMO_NAME = "mammo-demo"
FAMILY = "mammo"


@dataclass
class SiameseConfig:
    """Architecture and patch geometry of a :class:`SiameseMatcher`."""

    in_channels: int = 2  # z-scored patch + centred display intensity
    patch_size: int = 24
    patch_mm: float = 32.0
    channels: tuple[int, ...] = (16, 32, 64)
    convs_per_stage: int = 1
    embed_dim: int = 64
    hidden: int = 64
    dropout: float = 0.1
    model_type: str = "mammo-siamese"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiameseConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise CheckpointError(f"config.json has keys SiameseConfig does not know: {unknown}")
        if "channels" in known:
            known["channels"] = tuple(known["channels"])
        return cls(**known)


@dataclass
class MatchOutput:
    """Output of :meth:`SiameseMatcher.forward`."""

    logits: torch.Tensor
    probabilities: torch.Tensor
    embeddings: tuple[torch.Tensor, torch.Tensor] = field(repr=False, default=None)  # type: ignore[assignment]


class SiameseMatcher(nn.Module):
    """Shared-weight CNN branches, a joint pair representation and a comparison head.

    Examples
    --------
    >>> model = bt.mammo.load()
    >>> case = bt.mammo.phantom(3)
    >>> matches = bt.mammo.match(case, model)
    """

    def __init__(self, config: SiameseConfig | None = None) -> None:
        super().__init__()
        self.config = config or SiameseConfig()
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
        self.card = None

    # -- forward -----------------------------------------------------------------------------
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

    @torch.no_grad()
    def score_candidates(self, case: Case, cc: pd.DataFrame, mlo: pd.DataFrame) -> np.ndarray:
        """Match probability for every (CC candidate, MLO candidate) pair."""
        if len(cc) == 0 or len(mlo) == 0:
            return np.zeros((len(cc), len(mlo)))
        # A few dozen tiny patches: extra intra-op threads only add synchronisation cost
        # (10x slower on a loaded machine), so score them on one thread.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._score(case, cc, mlo)
        finally:
            torch.set_num_threads(threads)

    def _score(self, case: Case, cc: pd.DataFrame, mlo: pd.DataFrame) -> np.ndarray:
        pa = self._patches(case.cc, cc)
        pb = self._patches(case.mlo, mlo)
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        ea = self.embed(torch.from_numpy(pa).to(dev))
        eb = self.embed(torch.from_numpy(pb).to(dev))
        n, m = len(ea), len(eb)
        logits = self.compare(ea[:, None, :].expand(n, m, -1).reshape(n * m, -1),
                              eb[None, :, :].expand(n, m, -1).reshape(n * m, -1))
        self.train(was)
        return torch.sigmoid(logits).reshape(n, m).cpu().numpy().astype(np.float64)

    def _patches(self, image, cands) -> np.ndarray:
        c = self.config
        kind = "both" if c.in_channels == 2 else "zscore"
        p = extract_patches(image, cands, size_mm=c.patch_mm, out_size=c.patch_size, normalize=kind)
        return p if p.ndim == 4 else p[:, None]

    # -- persistence -------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
        from biomed_toolkit.core.weights import save_safetensors

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        save_safetensors(self, d / "model.safetensors")
        return d

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike | None = None, *, device: Any = "cpu"
    ) -> SiameseMatcher:
        """Load the embedded demo (``None`` or ``"mammo-demo"``), a registry name or a folder."""
        from biomed_toolkit.core import hub
        from biomed_toolkit.core.weights import load_state_dict, read_safetensors

        if name_or_path is None:
            spec = hub.default_model(FAMILY)
            resolved = hub.resolve(spec.name, family=FAMILY)
        else:
            resolved = hub.resolve(name_or_path, family=FAMILY)
        folder = resolved.path
        if folder.is_file():
            folder = folder.parent
        cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
        for p in (cfg_path, w_path):
            if not p.exists():
                raise CheckpointError(
                    f"{folder} is not a Siamese matcher folder: {p.name} is missing (expected "
                    "config.json + model.safetensors written by save_pretrained)"
                )
        config = SiameseConfig.from_dict(json.loads(cfg_path.read_text()))
        model = cls(config)
        tensors, _ = read_safetensors(w_path)
        load_state_dict(model, tensors, source=str(w_path))
        model.eval()
        model.card = hub.make_card(
            resolved.name if resolved.spec else str(folder), FAMILY, resolved.source, folder,
            config=config.to_dict(), task="dual-view lesion matching",
        )
        from biomed_toolkit.core.device import resolve_device

        return model.to(resolve_device(device))


def load(name_or_path: str | os.PathLike | None = None, *, device: Any = "cpu") -> SiameseMatcher:
    """Load a Siamese matcher; the embedded demo when no name is given.

    Examples
    --------
    >>> model = bt.mammo.load()
    >>> model.card.name
    'mammo-demo'
    """
    return SiameseMatcher.from_pretrained(name_or_path, device=device)


# ----------------------------------------------------------------------------------------------
# training data


def build_pairs(
    case: Case,
    *,
    config: SiameseConfig | None = None,
    max_candidates: int = 12,
    neg_per_pos: int = 4,
    gt_jitter: int = 2,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch pairs with labels from one phantom case, with hard negatives.

    Positives: detected candidates on the same lesion in both views, plus patches at the true
    projected positions (jittered by up to 2 mm). Negatives: every lesion patch against the
    other view's candidates on other lesions or on normal tissue (the hard ones: they passed
    the detector), topped up with false-positive pairs.

    Returns
    -------
    (cc_patches, mlo_patches, labels): float32 arrays (N, C, S, S) x 2 and (N,).
    """
    config = config or SiameseConfig()
    rng = rng or np.random.default_rng(0)
    helper = SiameseMatcher.__new__(SiameseMatcher)
    helper.config = config
    cands, labs = {}, {}
    for v in ("cc", "mlo"):
        d = detect_candidates(case.view(v), max_candidates=max_candidates, view=v.upper())
        cands[v], labs[v] = d, label_candidates(case, v, d)
    les = case.lesions[case.lesions["in_cc"] & case.lesions["in_mlo"]]
    sp = {v: case.view(v).mm_per_pixel for v in ("cc", "mlo")}
    # Ground-truth positions (with jitter) as extra candidates labelled with their lesion.
    for v in ("cc", "mlo"):
        rows = []
        for _ in range(gt_jitter):
            j = rng.uniform(-2.0, 2.0, size=(len(les), 2)) / sp[v]
            rows.append(pd.DataFrame({"row": les[f"{v}_row"].to_numpy() + j[:, 0],
                                      "col": les[f"{v}_col"].to_numpy() + j[:, 1]}))
        gt = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame({"row": [], "col": []})
        gt_lab = np.tile(les["lesion_id"].to_numpy(), gt_jitter)
        cands[v] = pd.concat([cands[v][["row", "col"]], gt], ignore_index=True)
        labs[v] = np.concatenate([labs[v], gt_lab])
    pa = helper._patches(case.cc, cands["cc"])
    pb = helper._patches(case.mlo, cands["mlo"])
    la, lb = labs["cc"], labs["mlo"]
    pos = [(i, j) for i in range(len(la)) for j in range(len(lb)) if la[i] >= 0 and la[i] == lb[j]]
    hard = [(i, j) for i in range(len(la)) for j in range(len(lb))
            if (la[i] >= 0 or lb[j] >= 0) and la[i] != lb[j]]
    easy = [(i, j) for i in range(len(la)) for j in range(len(lb)) if la[i] < 0 and lb[j] < 0]
    n_neg = max(neg_per_pos * len(pos), 8)
    n_hard = min(len(hard), (3 * n_neg) // 4)
    neg = [hard[k] for k in rng.choice(len(hard), n_hard, replace=False)] if n_hard else []
    n_easy = min(len(easy), n_neg - len(neg))
    neg += [easy[k] for k in rng.choice(len(easy), n_easy, replace=False)] if n_easy else []
    pairs = pos + neg
    y = np.array([1.0] * len(pos) + [0.0] * len(neg), dtype=np.float32)
    if not pairs:
        s = config.patch_size
        empty = np.zeros((0, config.in_channels, s, s), np.float32)
        return empty, empty.copy(), y
    ii = np.array([p[0] for p in pairs])
    jj = np.array([p[1] for p in pairs])
    return pa[ii], pb[jj], y


class PairDataset(torch.utils.data.Dataset):
    """(cc_patch, mlo_patch, label) triples built from phantom cases (see :func:`build_pairs`)."""

    def __init__(self, cases: Sequence[Case], *, config: SiameseConfig | None = None,
                 seed: int = 0, **pair_kwargs: Any) -> None:
        rng = np.random.default_rng(seed)
        parts = [build_pairs(c, config=config, rng=rng, **pair_kwargs) for c in cases]
        self.a = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        self.b = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        self.y = torch.from_numpy(np.concatenate([p[2] for p in parts]))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.a[i], self.b[i], self.y[i]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Independent random flips / 90-degree turns and intensity jitter per patch."""
    n = x.shape[0]
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for r in range(4):
        sel = k == r
        if sel.any():
            out[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    out[flip] = out[flip].flip(-1)
    scale = 1.0 + 0.1 * torch.randn(n, 1, 1, 1, generator=gen)
    return out * scale + 0.05 * torch.randn(out.shape, generator=gen)


try:
    import lightning as _L

    _Base = _L.LightningModule
except ImportError:  # pragma: no cover - lightning is a hard dependency
    _Base = nn.Module


class SiameseLightning(_Base):
    """LightningModule training a :class:`SiameseMatcher` with binary cross-entropy.

    Logs ``train_loss``, ``val_loss`` and ``val_auc``.
    """

    def __init__(self, model: SiameseMatcher | None = None, *, lr: float = 2e-3,
                 weight_decay: float = 1e-4, augment: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.model = model or SiameseMatcher()
        self.lr, self.weight_decay, self.augment = lr, weight_decay, augment
        self._gen = torch.Generator().manual_seed(seed)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.loss_fn = nn.BCEWithLogitsLoss()

    def training_step(self, batch, batch_idx):
        a, b, y = batch
        if self.augment:
            a, b = _augment(a, self._gen), _augment(b, self._gen)
        out = self.model(a, b)
        loss = self.loss_fn(out.logits, y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        a, b, y = batch
        out = self.model(a, b)
        loss = self.loss_fn(out.logits, y)
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=len(y))
        self._val.append((out.probabilities.detach().cpu(), y.detach().cpu()))
        return loss

    def on_validation_epoch_end(self):
        if not self._val:
            return
        p = torch.cat([v[0] for v in self._val]).numpy()
        y = torch.cat([v[1] for v in self._val]).numpy()
        self._val.clear()
        if len(np.unique(y)) == 2:
            from sklearn.metrics import roc_auc_score

            self.log("val_auc", float(roc_auc_score(y, p)), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return opt


def finetune(
    model: SiameseMatcher | str | None = None,
    cases: Sequence[Case] | None = None,
    *,
    val_cases: Sequence[Case] | None = None,
    phantom_kwargs: dict[str, Any] | None = None,
    n_cases: int = 40,
    seed: int = 0,
    max_epochs: int = 4,
    lr: float = 1e-3,
    batch_size: int = 128,
    freeze_branch: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[SiameseMatcher, Any]:
    """Adapt a Siamese matcher (the demo by default) to another phantom distribution or your data.

    Parameters
    ----------
    model
        Starting model, a name / folder, or None for the embedded demo.
    cases
        Training cases with ground truth; when None, ``n_cases`` phantoms are generated with
        ``phantom_kwargs`` (e.g. ``{"density": "d", "noise": 0.05}``) from seeds ``seed, ...``.
    val_cases
        Optional validation cases (``val_loss`` / ``val_auc`` in the history).
    freeze_branch
        Train only the comparison head (transfer with very few cases).
    max_epochs, lr, batch_size, checkpoint_dir, progress
        Passed to :func:`biomed_toolkit.core.train.fit`; checkpoints are kept only when
        ``checkpoint_dir`` is given.

    Returns
    -------
    (SiameseMatcher, FitResult)
        The fine-tuned model (a copy; the input model is not changed) and the training result.

    Examples
    --------
    >>> model, result = bt.mammo.finetune(phantom_kwargs={"density": "d"}, n_cases=20)  # doctest: +SKIP
    """
    import copy
    import tempfile

    from biomed_toolkit.core.finetune import freeze_layers
    from biomed_toolkit.core.train import fit

    if model is None or isinstance(model, str | os.PathLike):
        model = load(model)
    if not isinstance(model, SiameseMatcher):
        raise InputError(f"model must be a SiameseMatcher, a name or a folder, got {type(model).__name__}")
    model = copy.deepcopy(model)
    model.card = None
    if cases is None:
        cases = phantom_cases(range(seed, seed + n_cases), **(phantom_kwargs or {}))
    if any(c.lesions is None for c in cases):
        raise InputError("finetune needs cases with ground truth (case.lesions)")
    train_ds = PairDataset(cases, config=model.config, seed=seed)
    val_ds = PairDataset(val_cases, config=model.config, seed=seed + 1) if val_cases else None
    # Lightning keeps the modules' train/eval mode: set it here (a frozen branch stays in eval,
    # so its BatchNorm statistics are frozen too).
    model.train()
    if freeze_branch:
        freeze_layers(model, ["branch.*"])
        model.branch.eval()
    module = SiameseLightning(model, lr=lr, seed=seed)
    # Without a checkpoint_dir the checkpoints go to a temporary folder removed afterwards.
    tmp = None if checkpoint_dir is not None else tempfile.TemporaryDirectory(prefix="bt_mammo_ft_")
    try:
        result = fit(module, train_ds, val_ds, max_epochs=max_epochs, batch_size=batch_size,
                     accelerator="cpu", seed=seed, progress=progress,
                     checkpoint_dir=checkpoint_dir if tmp is None else tmp.name, resume=False)
    finally:
        if tmp is not None:
            tmp.cleanup()
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return model, result
