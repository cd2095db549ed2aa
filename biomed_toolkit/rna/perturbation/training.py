"""Training a perturbation head: the Lightning module, the paired data and ``finetune_perturbation``.

Target: the perturbed cell's log-normalised expression of every panel gene, paired with a random
control cell; loss: MSE on nonzero targets + is-zero BCE.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ...core.errors import InputError
from ...core.finetune import finetune_doc
from ...core.log import get_logger, timed
from .data import choose_panel, normalized_panel, parse_perturbation, perturbation_flags
from .modeling import PerturbationModel

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from ...core.device import Devices
    from ..modeling import BmfmRnaModel

log = get_logger(__name__)


class PerturbationModule(L.LightningModule):
    """Lightning wrapper: MSE on nonzero targets + is-zero BCE; logs train/val loss."""

    def __init__(self, model: PerturbationModel, lr: float = 1e-3, weight_decay: float = 0.01) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        value, is_zero = self.model(batch["expressions"], batch["flags"])
        target = batch["target"]
        nz = target > 0
        mse = ((value - target) ** 2)[nz].mean() if nz.any() else value.sum() * 0
        bce = nn.functional.binary_cross_entropy_with_logits(is_zero, (~nz).float())
        return mse + bce, mse

    def training_step(self, batch: dict[str, torch.Tensor], _idx: int) -> torch.Tensor:
        loss, mse = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], _idx: int) -> None:
        loss, mse = self._loss(batch)
        n = len(batch["target"])
        self.log("val_loss", loss, prog_bar=True, batch_size=n)
        self.log("val_mse", mse, batch_size=n)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)


class PairDataset(Dataset):
    """Items: a random control cell's panel expression, the flags and a perturbed cell's target."""

    def __init__(self, control: np.ndarray, target: np.ndarray, flags: np.ndarray,
                 pairs: np.ndarray) -> None:
        self.control, self.target, self.flags, self.pairs = control, target, flags, pairs

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"expressions": torch.from_numpy(self.control[self.pairs[i]]),
                "flags": torch.from_numpy(self.flags[i]),
                "target": torch.from_numpy(self.target[i])}


@finetune_doc
def finetune_perturbation(
    adata: AnnData,
    perturbation_key: str,
    model: BmfmRnaModel | None = None,
    *,
    control: str = "control",
    genes: Sequence[str] | None = None,
    n_genes: int = 256,
    max_epochs: int = 5,
    learning_rate: float = 1e-3,
    batch_size: int = 16,
    lora: bool = False,
    lora_rank: int = 8,
    freeze: int | str | list[str] | None = None,
    val_fraction: float = 0.1,
    accelerator: str = "auto",
    devices: Devices = "auto",
    num_nodes: int = 1,
    early_stopping: bool | dict[str, Any] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    seed: int = 0,
    **trainer_kwargs: Any,
) -> PerturbationModel:
    """Train a perturbation head on cells of ``adata`` (raw counts), on the fine-tuning contract
    shared by every family (:func:`biomed_toolkit.core.finetune.finetune_model`).

    Parameters
    ----------
    adata
        Control and perturbed cells; ``obs[perturbation_key]`` holds ``control`` or the perturbed
        gene(s) (``"GENE"`` or ``"GENE1+GENE2"``).
    perturbation_key
        ``adata.obs`` column naming each cell's perturbation.
    model
        A BMFM-RNA model (default: the embedded model); copied, never changed in place.
    control
        Value of ``obs[perturbation_key]`` for control cells.
    genes
        Gene panel to predict (default: perturbed genes + the ``n_genes`` most expressed).
    val_fraction
        Share of perturbed cells held out for ``val_loss``.
    seed
        Pairs each perturbed cell with a random control cell, splits and seeds the training.
    {finetune_parameters}

    ``freeze="encoder"`` trains only the perturbation embedding and the head.

    Returns
    -------
    A new PerturbationModel with ``.history``, ``.fit_result``, ``.card`` and ``.genes``.

    Examples
    --------
    >>> pm = finetune_perturbation(adata, "perturbation", model, max_epochs=3)  # doctest: +SKIP
    >>> pred = predict_perturbation(adata[adata.obs.perturbation == "control"], ["CD3E"], pm)  # doctest: +SKIP
    """
    from ...core.finetune import finetune_model
    from ..loading import load

    if perturbation_key not in adata.obs:
        raise InputError(f"{perturbation_key!r} not in adata.obs (columns: {list(adata.obs.columns)})")
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    is_ctrl = labels == control
    if not is_ctrl.any():
        raise InputError(f"no control cells: no obs[{perturbation_key!r}] == {control!r}")
    if is_ctrl.all():
        raise InputError("no perturbed cells: every cell is a control")
    base = load() if model is None else model
    perts = sorted(set(labels[~is_ctrl]))
    perturbed_genes = sorted({g for p in perts for g in parse_perturbation(p)})
    panel = list(genes) if genes is not None else choose_panel(adata, base, perturbed_genes, n_genes)
    max_len = base.config.n_cls_tokens + len(panel) + 1
    log.info(f"perturbation panel: {len(panel)} genes ({max_len} tokens per cell), "
             f"{len(perts)} perturbations, {int(is_ctrl.sum())} control cells")
    x = normalized_panel(adata, panel, base)
    ctrl_x = x[is_ctrl]
    pert_idx = np.flatnonzero(~is_ctrl)
    flags = np.stack([perturbation_flags(panel, parse_perturbation(labels[i])) for i in pert_idx])
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, len(ctrl_x), size=len(pert_idx))
    order = rng.permutation(len(pert_idx))
    n_val = int(round(val_fraction * len(order)))
    val, tr = order[:n_val], order[n_val:]
    train_ds = PairDataset(ctrl_x, x[pert_idx[tr]], flags[tr], pairs[tr])
    val_ds = PairDataset(ctrl_x, x[pert_idx[val]], flags[val], pairs[val]) if n_val else None
    if freeze == "encoder":
        freeze = "base.*"
    with timed(log, f"fine-tuning a perturbation head on {len(tr)} perturbed cells"):
        pm = finetune_model(
            PerturbationModel.from_base(base.cpu(), panel),
            lambda m: PerturbationModule(m, lr=learning_rate), train_ds, val_ds,
            max_epochs=max_epochs, batch_size=batch_size, lora=lora, lora_rank=lora_rank,
            trainable=("perturbation_embeddings", "head."), freeze=freeze,
            accelerator=accelerator, devices=devices, num_nodes=num_nodes,
            early_stopping=early_stopping, checkpoint_dir=checkpoint_dir, resume=resume,
            progress=progress, seed=seed, task="perturbation",
            card_extra={"genes": len(panel), "perturbations": perts}, **trainer_kwargs)
    return pm


__all__ = ["PairDataset", "PerturbationModule", "finetune_perturbation"]
