"""Training the dual-view matcher on phantoms: detector heatmaps, Siamese pairs, calibrated
fusion, and ``finetune`` on the toolkit's one fine-tuning contract."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.core.finetune import finetune_doc, finetune_model
from biomed_toolkit.mammo.candidates import detect_candidates, detector_input, label_candidates
from biomed_toolkit.mammo.configuration import SiameseConfig
from biomed_toolkit.mammo.datasets import phantom_cases
from biomed_toolkit.mammo.geometry import case_geometry
from biomed_toolkit.mammo.io import Case
from biomed_toolkit.mammo.matching import _model_patches, pair_features, siamese_logits
from biomed_toolkit.mammo.modeling import SiameseMatcher, load

__all__ = [
    "PairDataset",
    "DetectorDataset",
    "SiameseLightning",
    "DetectorLightning",
    "build_pairs",
    "fit_fusion",
    "finetune",
]

try:
    import lightning as _L

    _Base = _L.LightningModule
except ImportError:  # pragma: no cover - lightning is a hard dependency
    _Base = nn.Module


# ----------------------------------------------------------------------------------------------
# detector data


def detector_target(case: Case, view: str, shape: tuple[int, int], f: int) -> np.ndarray:
    """Heatmap target on the detector grid: a Gaussian peak (1 at the centre) per lesion."""
    v = view.lower()
    sp = case.view(v).mm_per_pixel * f
    out = np.zeros(shape, np.float32)
    les = case.lesions[case.lesions[f"in_{v}"]]
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    for r, c, rad in zip(les[f"{v}_row"], les[f"{v}_col"], les[f"{v}_radius_px"]):
        # Peak on the nearest cell (exactly 1 there: the focal loss's positives).
        r1, c1 = round((r + 0.5) / f - 0.5), round((c + 0.5) / f - 0.5)
        sd = max(2.0, 0.25 * rad * case.view(v).mm_per_pixel) / sp
        out = np.maximum(out, np.exp(-((rr - r1) ** 2 + (cc - c1) ** 2) / (2 * sd**2)))
    return out


class DetectorDataset(torch.utils.data.Dataset):
    """Random crops (input channels, heatmap target, breast interior) of phantom views.

    ``crop`` is in detector cells (2 mm: 48 cells = 96 mm).

    Half the crops are centred near a lesion, half anywhere in the breast; crop ``i`` is a
    deterministic function of ``(seed, i)``.
    """

    def __init__(self, cases: Sequence[Case], *, crop: int = 48, crops_per_view: int = 16,
                 seed: int = 0) -> None:
        self.items = []
        for case in cases:
            geo = case_geometry(case)
            for v in ("cc", "mlo"):
                x, inner, f, _ = detector_input(case.view(v), geo[v])
                y = detector_target(case, v, x.shape[1:], f)
                pad = [(0, max(0, crop - x.shape[1])), (0, max(0, crop - x.shape[2]))]
                x = np.pad(x, [(0, 0), *pad])
                y, inner = np.pad(y, pad), np.pad(inner, pad)
                les = case.lesions[case.lesions[f"in_{v}"]]
                centres = np.stack([(les[f"{v}_row"] + 0.5) / f - 0.5,
                                    (les[f"{v}_col"] + 0.5) / f - 0.5], 1) if len(les) else None
                self.items.append((x, y, inner, centres))
        self.crop, self.per_view, self.seed = crop, crops_per_view, seed

    def __len__(self) -> int:
        return len(self.items) * self.per_view

    def __getitem__(self, i: int):
        x, y, inner, centres = self.items[i // self.per_view]
        rng = np.random.default_rng((self.seed, i))
        h, w = y.shape
        k = self.crop
        if centres is not None and rng.random() < 0.5:
            r, c = centres[rng.integers(len(centres))] + rng.uniform(-k / 3, k / 3, 2)
        else:
            rr, cc = np.nonzero(inner) if inner.any() else (np.array([h // 2]), np.array([w // 2]))
            j = rng.integers(len(rr))
            r, c = rr[j], cc[j]
        r0 = int(np.clip(r - k // 2, 0, h - k))
        c0 = int(np.clip(c - k // 2, 0, w - k))
        sl = (slice(r0, r0 + k), slice(c0, c0 + k))
        xs = x[:, sl[0], sl[1]]
        ys, ms = y[sl], inner[sl]
        if rng.random() < 0.5:  # vertical flip keeps the chest wall on the left
            xs, ys, ms = xs[:, ::-1], ys[::-1], ms[::-1]
        return (torch.from_numpy(np.ascontiguousarray(xs)),
                torch.from_numpy(np.ascontiguousarray(ys)),
                torch.from_numpy(np.ascontiguousarray(ms.astype(np.float32))))


def _focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor):
    """Penalty-reduced focal loss (CenterNet) over the breast interior."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = (target >= 0.99).float()
    neg = 1.0 - pos
    lp = -torch.log(p) * (1 - p) ** 2 * pos
    ln = -torch.log(1 - p) * p**2 * (1 - target) ** 4 * neg
    n_pos = pos.sum().clamp(min=1.0)
    return ((lp + ln) * weight).sum() / n_pos


class DetectorLightning(_Base):
    """LightningModule training the matcher's candidate detector on heatmap targets.

    ``one_cycle=True`` anneals the learning rate with a one-cycle schedule over the whole fit
    (15% warm-up to ``learning_rate``, then cosine decay), stepped per batch.
    """

    def __init__(self, model: SiameseMatcher, *, learning_rate: float = 3e-3,
                 weight_decay: float = 1e-4, one_cycle: bool = False) -> None:
        super().__init__()
        self.model = model
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.one_cycle = one_cycle

    def training_step(self, batch, batch_idx):
        x, y, m = batch
        logits = self.model.detector(x)[:, 0]
        loss = _focal_heatmap_loss(logits, y, m)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, m = batch
        loss = _focal_heatmap_loss(self.model.detector(x)[:, 0], y, m)
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=len(y))
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.detector.parameters(), lr=self.learning_rate,
                                weight_decay=self.weight_decay)
        if not self.one_cycle:
            return opt
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.learning_rate, pct_start=0.15,
            total_steps=max(1, int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ----------------------------------------------------------------------------------------------
# pair data


def build_pairs(
    case: Case,
    *,
    config: SiameseConfig | None = None,
    model: SiameseMatcher | None = None,
    max_candidates: int = 10,
    neg_per_pos: int = 4,
    gt_jitter: int = 2,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch pairs with labels from one phantom case, with hard negatives.

    Candidates come from ``model``'s learned detector when given (else the blob baseline).
    Positives: candidates on the same lesion in both views, plus patches at the true projected
    positions (jittered by up to 2 mm). Negatives: every lesion patch against the other view's
    candidates on other lesions or on normal tissue and look-alikes (the hard ones: they passed
    the detector), topped up with false-positive pairs.

    Returns
    -------
    (cc_patches, mlo_patches, labels): float32 arrays (N, C, S, S) x 2 and (N,).
    """
    config = config or (model.config if model is not None else SiameseConfig())
    rng = rng or np.random.default_rng(0)
    helper = model if model is not None else SiameseMatcher(config)
    cands, labs = {}, {}
    geo = case_geometry(case) if model is not None else None
    for v in ("cc", "mlo"):
        d = detect_candidates(case.view(v), max_candidates=max_candidates, view=v.upper(),
                              model=model, geometry=geo[v] if geo else None)
        cands[v], labs[v] = d, label_candidates(case, v, d)
    les = case.lesions[case.lesions["in_cc"] & case.lesions["in_mlo"]]
    sp = {v: case.view(v).mm_per_pixel for v in ("cc", "mlo")}
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
    pa = _model_patches(helper, case.cc, cands["cc"])
    pb = _model_patches(helper, case.mlo, cands["mlo"])
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


class SiameseLightning(_Base):
    """LightningModule training a :class:`SiameseMatcher` with binary cross-entropy.

    Logs ``train_loss``, ``val_loss`` and ``val_auc``.
    """

    def __init__(self, model: SiameseMatcher | None = None, *, learning_rate: float = 2e-3,
                 weight_decay: float = 1e-4, augment: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.model = model or SiameseMatcher()
        self.learning_rate, self.weight_decay, self.augment = learning_rate, weight_decay, augment
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
        params = [p for n, p in self.model.named_parameters()
                  if p.requires_grad and n.startswith(("branch.", "head."))]
        return torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)


# ----------------------------------------------------------------------------------------------
# calibrated fusion


def fusion_table(model: SiameseMatcher, cases: Sequence[Case], *,
                 max_candidates: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Pair features and labels (1: both candidates on the same lesion) over cases."""
    xs, ys = [], []
    feats = model.config.fusion_features
    for case in cases:
        geo = case_geometry(case)
        cc, mlo = (detect_candidates(case.view(v), max_candidates=max_candidates, view=v.upper(),
                                     model=model, geometry=geo[v]) for v in ("cc", "mlo"))
        if len(cc) == 0 or len(mlo) == 0:
            continue
        la, lb = label_candidates(case, "cc", cc), label_candidates(case, "mlo", mlo)
        logit = siamese_logits(model, case, cc, mlo)
        xs.append(pair_features(geo, cc, mlo, logit, feats).reshape(-1, len(feats)))
        ys.append(((la[:, None] >= 0) & (la[:, None] == lb[None, :])).ravel())
    if not xs:
        raise InputError("no case gave candidates in both views: cannot fit the fusion")
    return np.concatenate(xs), np.concatenate(ys).astype(int)


def fit_fusion(model: SiameseMatcher, cases: Sequence[Case], *, max_candidates: int = 10,
               C: float = 1.0) -> dict[str, Any]:
    """Fit the logistic fusion on cases (in place) and return its coefficients and fit quality.

    The features are standardised for the fit and the scaling is folded back into
    ``model.fusion`` (weights per raw feature), so the stored layer is all inference needs.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    X, y = fusion_table(model, cases, max_candidates=max_candidates)
    if len(np.unique(y)) < 2:
        raise InputError("the fusion needs both matching and non-matching pairs")
    mu, sd = X.mean(0), X.std(0) + 1e-9
    lr = LogisticRegression(C=C, max_iter=2000).fit((X - mu) / sd, y)
    w = lr.coef_[0] / sd
    b = float(lr.intercept_[0] - np.sum(lr.coef_[0] * mu / sd))
    with torch.no_grad():
        model.fusion.weight.copy_(torch.tensor(w[None, :], dtype=model.fusion.weight.dtype))
        model.fusion.bias.fill_(b)
    p = model.fuse(X)
    return {"features": list(model.config.fusion_features), "weights": w.tolist(), "bias": b,
            "n_pairs": int(len(y)), "n_positive": int(y.sum()),
            "train_auc": float(roc_auc_score(y, p)), "train_log_loss": float(log_loss(y, p)),
            "train_brier": float(brier_score_loss(y, p))}


# ----------------------------------------------------------------------------------------------
# fine-tuning (the toolkit's one contract)


@finetune_doc
def finetune(
    model: SiameseMatcher | str | None = None,
    cases: Sequence[Case] | None = None,
    *,
    val_cases: Sequence[Case] | None = None,
    phantom_kwargs: dict[str, Any] | None = None,
    n_cases: int = 40,
    seed: int = 0,
    max_epochs: int = 4,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    freeze: int | str | Sequence[str] | None = None,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    num_nodes: int = 1,
    early_stopping: bool | dict[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = False,
    refit_fusion: bool = True,
    **trainer_kwargs: Any,
) -> SiameseMatcher:
    """Adapt a matcher (the demo by default) to another phantom distribution or your data.

    The Siamese branches and head train on patch pairs of ``cases`` (candidates from the
    model's detector, plus the true positions); the fusion is then refitted on the same cases
    so the returned probabilities stay calibrated.

    Parameters
    ----------
    model
        Starting model, a name / folder, or None for the embedded demo.
    cases
        Training cases with ground truth; when None, ``n_cases`` phantoms are generated with
        ``phantom_kwargs`` (e.g. ``{"density": "d", "noise": 0.05}``) from seeds ``seed, ...``.
    val_cases
        Optional validation cases (``val_loss`` / ``val_auc`` in the history).
    phantom_kwargs, n_cases, seed
        The generated training set (and the random seed of pairs and training).
    refit_fusion
        Refit the logistic fusion on ``cases`` after training.
    {finetune_parameters}

    Returns
    -------
    SiameseMatcher
        A new fine-tuned model (the input model is not changed) with ``.history`` and
        ``.fit_result``; a frozen branch (``freeze="branch.*"``) keeps its BatchNorm statistics.

    Examples
    --------
    >>> tuned = bt.mammo.finetune(phantom_kwargs={"density": "d"}, n_cases=20)  # doctest: +SKIP
    >>> tuned.history.tail()  # doctest: +SKIP
    """
    import tempfile

    if model is None or isinstance(model, str | os.PathLike):
        model = load(model, device="cpu")
    if not isinstance(model, SiameseMatcher):
        raise InputError(f"model must be a SiameseMatcher, a name or a folder, got {type(model).__name__}")
    if cases is None:
        cases = phantom_cases(range(seed, seed + n_cases), **(phantom_kwargs or {}))
    if any(c.lesions is None for c in cases):
        raise InputError("finetune needs cases with ground truth (case.lesions)")
    model = model.cpu()
    train_ds = PairDataset(cases, model=model, seed=seed)
    val_ds = PairDataset(val_cases, model=model, seed=seed + 1) if val_cases else None
    patterns = [freeze] if isinstance(freeze, str) else freeze

    def make_module(copy: SiameseMatcher) -> SiameseLightning:
        # Modules whose parameters are all frozen stay in eval mode, so a frozen branch keeps
        # its BatchNorm statistics (Lightning keeps the modules' train/eval mode).
        copy.detector.eval()
        for child in copy.children():
            params = list(child.parameters())
            if params and not any(p.requires_grad for p in params):
                child.eval()
        return SiameseLightning(copy, learning_rate=learning_rate, seed=seed)

    tmp = None if checkpoint_dir is not None else tempfile.TemporaryDirectory(prefix="bt_mammo_ft_")
    try:
        tuned = finetune_model(
            model, make_module, train_ds, val_ds, max_epochs=max_epochs, batch_size=batch_size,
            freeze=patterns, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
            early_stopping=early_stopping, checkpoint_dir=checkpoint_dir if tmp is None else tmp.name,
            resume=resume, progress=progress, seed=seed, task="dual-view lesion matching",
            **trainer_kwargs)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if refit_fusion:
        fit_fusion(tuned, cases)
    return tuned
