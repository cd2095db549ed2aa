"""Fine-tuning MAMMAL through ``bt.train.fit``: encoder-only scalar regression and
generation-based classification, optionally with LoRA.

Examples
--------
>>> import biomed_toolkit as bt
>>> model = bt.mammal.load()  # doctest: +SKIP
>>> result = bt.mammal.finetune(model, "solubility", train_df, val_df, max_epochs=2)  # doctest: +SKIP
>>> bt.pl.training_history(result.history)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.core.log import get_logger

from .tasks import _rows, build_prompts, get_task
from .tokenizer import Batch, Tokenizer

log = get_logger(__name__)


class PromptDataset(Dataset):
    """``(prompt, target)`` pairs; targets are floats (regression) or 0/1 labels."""

    def __init__(self, prompts: Sequence[str], targets: Sequence[float]) -> None:
        if len(prompts) != len(targets):
            raise InputError(f"{len(prompts)} prompts but {len(targets)} targets")
        self.prompts = list(prompts)
        self.targets = [float(t) for t in targets]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> tuple[str, float]:
        return self.prompts[i], self.targets[i]


class Collator:
    """Tokenizes a list of ``(prompt, target)`` into ``{"batch": Batch, "y": tensor}`` (picklable)."""

    def __init__(self, tokenizer: Tokenizer, max_seq_len: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len

    def __call__(self, items: list[tuple[str, float]]) -> dict[str, Any]:
        prompts = [p for p, _ in items]
        b = self.tokenizer(prompts, max_seq_len=self.max_seq_len, padding="longest")
        return {"batch": b, "y": torch.tensor([t for _, t in items], dtype=torch.float32)}


def _to(batch: dict[str, Any], device: torch.device) -> tuple[Batch, torch.Tensor]:
    return batch["batch"].to(device), batch["y"].to(device)


class _Base(L.LightningModule):
    def __init__(self, model: Any, *, lr: float, weight_decay: float, warmup_steps: int) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if not self.warmup_steps:
            return opt
        warm = max(1, int(self.warmup_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return {"batch": batch["batch"].to(device), "y": batch["y"].to(device)}


class ScalarRegressionModule(_Base):
    """Encoder-only regression: the scalar head at ``position`` (``<MASK>``) against normalised targets.

    Logs ``train_loss`` (MSE on normalised targets), ``val_loss``, ``val_rmse`` and ``val_pearson``
    (de-normalised units).

    Parameters
    ----------
    model
        A :class:`~biomed_toolkit.mammal.modeling.MammalModel` with a scalar head.
    mean, std
        Normalisation of the targets (predictions are ``head * std + mean``).

    Examples
    --------
    >>> module = ScalarRegressionModule(model, mean=-3.0, std=2.0)  # doctest: +SKIP
    """

    def __init__(
        self, model: Any, *, mean: float = 0.0, std: float = 1.0, position: int = 0, lr: float = 1e-4,
        weight_decay: float = 0.01, warmup_steps: int = 0,
    ) -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
        if model.scalars_prediction_head is None:
            raise InputError("the model has no scalars_prediction_head; it cannot be trained for regression")
        self.mean, self.std, self.position = float(mean), float(std), int(position)
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def predict_normalised(self, b: Batch) -> torch.Tensor:
        h = self.model.run_encoder(b)[:, self.position]
        return self.model.scalars_prediction_head(h)[:, 0]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        b, y = batch["batch"], batch["y"]
        loss = torch.nn.functional.mse_loss(self.predict_normalised(b), (y - self.mean) / self.std)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b, y = batch["batch"], batch["y"]
        p = self.predict_normalised(b)
        self.log("val_loss", torch.nn.functional.mse_loss(p, (y - self.mean) / self.std), prog_bar=True, batch_size=len(y))
        self._val.append((p.detach().cpu() * self.std + self.mean, y.detach().cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        p = torch.cat([a for a, _ in self._val]).double()
        y = torch.cat([b for _, b in self._val]).double()
        self._val.clear()
        self.log("val_rmse", float(torch.sqrt(((p - y) ** 2).mean())))
        if len(y) > 2 and float(y.std()) > 0 and float(p.std()) > 0:
            self.log("val_pearson", float(torch.corrcoef(torch.stack([p, y]))[0, 1]))


class GenerationClassificationModule(_Base):
    """Generation-based binary classification: teach the answer ``<SENTINEL_ID_0><0|1><EOS>``.

    Decoder inputs ``<DECODER_START><SENTINEL_ID_0><label>``, targets ``<SENTINEL_ID_0><label><EOS>``
    (cross-entropy over the vocabulary). Logs ``train_loss``, ``val_loss`` and ``val_accuracy``
    (the argmax at the label step equals the label token).

    Examples
    --------
    >>> module = GenerationClassificationModule(model)  # doctest: +SKIP
    """

    def __init__(self, model: Any, *, lr: float = 1e-4, weight_decay: float = 0.01, warmup_steps: int = 0) -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps)
        tok = model.tokenizer
        if tok is None:
            raise InputError("the model has no tokenizer")
        st = tok.special_tokens
        self.ids = {k: st[k] for k in ("<DECODER_START>", "<SENTINEL_ID_0>", "<0>", "<1>", "<EOS>")}

    def _loss(self, b: Batch, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.ids
        lab = torch.where(y > 0.5, i["<1>"], i["<0>"]).long()
        n = len(y)
        dev = lab.device
        start = torch.full((n,), i["<DECODER_START>"], device=dev)
        sent = torch.full((n,), i["<SENTINEL_ID_0>"], device=dev)
        eos = torch.full((n,), i["<EOS>"], device=dev)
        dec_in = torch.stack([start, sent, lab], dim=1)
        target = torch.stack([sent, lab, eos], dim=1)
        logits = self.model.forward_teacher_forced(b, dec_in).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        acc = (logits[:, 1].argmax(-1) == lab).float().mean()
        return loss, acc

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch["batch"], batch["y"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["y"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, acc = self._loss(batch["batch"], batch["y"])
        self.log("val_loss", loss, prog_bar=True, batch_size=len(batch["y"]))
        self.log("val_accuracy", acc, batch_size=len(batch["y"]))


def make_dataset(model: Any, task: str, df: Any, *, target: str | None = None, prompt_kwargs: dict | None = None) -> PromptDataset:
    """Prompts + targets for ``task`` from a DataFrame; any row that cannot be built is an error.

    ``target`` defaults to ``"label"`` for classification and ``"y"``/``"target"``/``"affinity"``/
    ``"logS"`` for regression.
    """
    t = get_task(task)
    if t.kind == "generation":
        raise InputError("fine-tuning supports regression and classification tasks, not 'generate'")
    cands = [target] if target else (["label", "y", "target"] if t.kind == "classification" else ["y", "target", "affinity", "logS", "pKd", "label"])
    col = next((c for c in cands if c in df.columns), None)
    if col is None:
        raise InputError(f"no target column: pass target=... (looked for {cands}; columns: {list(df.columns)})")
    rows = _rows(t, df)
    kw = dict((getattr(model.config, "extra", {}) or {}).get("prompt_kwargs", {}).get(t.name, {}))
    kw.update(prompt_kwargs or {})
    built, errors = build_prompts(t, rows, **kw)
    bad = [(i, e) for i, e in enumerate(errors) if e is not None]
    if bad:
        shown = "; ".join(f"row {df.index[i]}: {e}" for i, e in bad[:3])
        raise InputError(f"{len(bad)} training rows have invalid inputs ({shown}); fix or drop them first")
    y = np.asarray(df[col], dtype=np.float64)
    if not np.isfinite(y).all():
        raise InputError(f"target column {col!r} has {int((~np.isfinite(y)).sum())} missing/non-finite values")
    if t.kind == "classification" and not set(np.unique(y)) <= {0.0, 1.0}:
        raise InputError(f"classification labels in {col!r} must be 0/1, got {sorted(set(np.unique(y)))[:5]}")
    return PromptDataset(built, y.tolist())  # type: ignore[arg-type]


def finetune(
    model: Any,
    task: str,
    train_df: Any,
    val_df: Any = None,
    *,
    target: str | None = None,
    lora: bool = False,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lr: float | None = None,
    batch_size: int = 16,
    max_seq_len: int | None = None,
    max_epochs: int = 3,
    prompt_kwargs: dict | None = None,
    **fit_kwargs: Any,
) -> Any:
    """Fine-tune ``model`` in place on a task with ``bt.train.fit``.

    Parameters
    ----------
    model
        A :class:`~biomed_toolkit.mammal.modeling.MammalModel` (trained in place).
    task
        A regression (``"dti"``, ``"solubility"``) or classification (``"ppi"``, ``"bbbp"``,
        ``"clintox"``, ``"tcr"``) task of :data:`~biomed_toolkit.mammal.tasks.TASKS`.
    train_df, val_df
        DataFrames with the task's input columns and a target column (see ``target``).
    lora
        Train LoRA adapters on the attention ``q``/``v`` projections (plus the heads) only.
    lr
        Default 1e-4 (full) or 1e-3 (LoRA).
    **fit_kwargs
        Passed to :func:`biomed_toolkit.core.train.fit` (``checkpoint_dir``, ``early_stopping``, ...).

    Returns
    -------
    FitResult
        From ``bt.train.fit`` (``history`` DataFrame). For regression the normalisation used is
        stored in ``model.config.normalization[task]`` so that :func:`predict` de-normalises.

    Examples
    --------
    >>> res = finetune(model, "solubility", train_df, val_df, max_epochs=1)  # doctest: +SKIP
    """
    from biomed_toolkit.core.train import fit

    t = get_task(task)
    train_ds = make_dataset(model, t.name, train_df, target=target, prompt_kwargs=prompt_kwargs)
    val_ds = make_dataset(model, t.name, val_df, target=target, prompt_kwargs=prompt_kwargs) if val_df is not None else None
    if lora:
        from biomed_toolkit.core.finetune import apply_lora

        keep = ["scalars_prediction_head"] if t.kind == "regression" else []
        apply_lora(model, ["q", "v"], r=lora_r, alpha=lora_alpha)
        for name, p in model.named_parameters():
            if any(name.startswith(k) for k in keep):
                p.requires_grad_(True)
    lr = lr if lr is not None else (1e-3 if lora else 1e-4)
    if t.kind == "regression":
        stats = (model.config.normalization or {}).get(t.name)
        if stats is None:
            y = np.asarray(train_ds.targets)
            stats = {"mean": float(y.mean()), "std": float(y.std() or 1.0)}
            model.config.normalization[t.name] = stats
        module: L.LightningModule = ScalarRegressionModule(model, mean=stats["mean"], std=stats["std"], lr=lr)
    else:
        module = GenerationClassificationModule(model, lr=lr)
    collate = Collator(model.tokenizer, max_seq_len)
    seed = fit_kwargs.pop("seed", None)
    gen = torch.Generator().manual_seed(int(seed) if seed is not None else 0)
    train_dl = DataLoader(train_ds, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=gen)
    val_dl = DataLoader(val_ds, batch_size=batch_size, collate_fn=collate) if val_ds is not None else None
    model.train()
    try:
        return fit(module, train_dl, val_dl, max_epochs=max_epochs, seed=seed, **fit_kwargs)
    finally:
        model.eval()


__all__ = [
    "Collator",
    "GenerationClassificationModule",
    "PromptDataset",
    "ScalarRegressionModule",
    "finetune",
    "make_dataset",
]
