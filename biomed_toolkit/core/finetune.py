"""The one fine-tuning contract of every family, and the layer freezing / LoRA it uses.

Every family's fine-tune call (``bt.tl.finetune``, ``bt.rna.finetune_perturbation``,
``bt.mammal.finetune``, ``bt.mammo.finetune``) builds its data and its Lightning module and hands
them to :func:`finetune_model`, so they share:

- the same keyword names (:data:`FINETUNE_PARAMETERS` documents them once);
- the same return convention: a NEW fine-tuned model (the model passed in is not changed), LoRA
  adapters merged back, on the CPU in eval mode, with ``.history`` (DataFrame, one row per logged
  step), ``.fit_result`` (checkpoints, trainer) and a card naming its parent;
- the same device default (``accelerator="auto"`` follows ``bt.settings.device``).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import InputError
from .log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    import lightning as L
    from torch import nn

    from .model import BaseModel

log = get_logger(__name__)

M = TypeVar("M", bound="BaseModel")

#: Shared numpydoc fragment of the fine-tuning keywords; family docstrings include it through
#: :func:`finetune_doc` (write ``{finetune_parameters}`` where it belongs).
FINETUNE_PARAMETERS = """max_epochs
        Upper bound on epochs (the family's recipe may choose the budget when None).
    learning_rate
        Peak learning rate of the optimiser.
    batch_size
        Training batch size (per device).
    lora
        Train LoRA adapters of rank ``lora_rank`` on the attention / linear projections plus the
        task heads instead of every weight; the adapters are merged into the returned model.
    lora_rank
        Rank of the LoRA adapters.
    freeze
        Parameters to keep fixed: an int (the input embeddings and the first N blocks) or glob
        pattern(s) of parameter names.
    accelerator, devices, num_nodes
        As in Lightning; ``"auto"`` follows ``bt.settings.device``. Several devices or nodes
        train with DDP (``ddp_notebook`` inside a notebook).
    early_stopping
        True (patience on ``val_loss``), False, or ``EarlyStopping`` arguments.
    checkpoint_dir
        Where checkpoints and ``history.csv`` go (default: a fresh temporary folder).
    resume
        Continue from ``checkpoint_dir/last.ckpt`` when it exists.
    progress
        Show a progress bar.
    **trainer_kwargs
        Any other ``lightning.Trainer`` argument."""


def finetune_doc(func: Callable[..., Any]) -> Callable[..., Any]:
    """Put :data:`FINETUNE_PARAMETERS` where ``{finetune_parameters}`` stands in the docstring."""
    if func.__doc__:
        func.__doc__ = func.__doc__.replace("{finetune_parameters}", FINETUNE_PARAMETERS)
    return func


def finetune_model(
    model: M,
    make_module: Callable[[M], L.LightningModule],
    train_data: Any,
    val_data: Any = None,
    *,
    max_epochs: int,
    batch_size: int | None = None,
    lora: bool = False,
    lora_rank: int = 8,
    lora_targets: list[str] | None = None,
    trainable: Iterable[str] = (),
    freeze: int | str | Iterable[str] | None = None,
    accelerator: str = "auto",
    devices: int | str | list[int] = "auto",
    num_nodes: int = 1,
    early_stopping: bool | dict[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    seed: int | None = None,
    task: str | None = None,
    card_extra: dict[str, Any] | None = None,
    **trainer_kwargs: Any,
) -> M:
    """Fine-tune a copy of ``model``: freeze / LoRA, ``bt.train.fit``, merge, record.

    Parameters
    ----------
    model
        The starting model; it is deep-copied first and never changed.
    make_module
        Builds the family's ``LightningModule`` around the copy (after freezing / LoRA).
    train_data, val_data
        DataLoaders or Datasets, as in :func:`biomed_toolkit.core.train.fit`.
    lora_targets
        Module names LoRA adapts (default: ``model.lora_targets()``).
    trainable
        Name fragments of parameters that stay trainable under LoRA or freezing (new heads).
    task, card_extra
        What the card of the returned model records.
    {finetune_parameters}

    Returns
    -------
    The fine-tuned copy, on the CPU in eval mode, with ``.history``, ``.fit_result`` and a card
    whose ``extra`` names the parent model and the fine-tuning settings.
    """
    import copy

    from .hub import ModelCard
    from .train import fit

    trainable = tuple(trainable)
    new = copy.deepcopy(model).cpu()
    if freeze is not None and freeze != 0:
        patterns = model._freeze_patterns(freeze) if isinstance(freeze, int) else freeze
        freeze_layers(new, patterns)
    if lora:
        targets = lora_targets if lora_targets is not None else new.lora_targets()
        new = apply_lora(new, targets, r=lora_rank, alpha=2 * lora_rank)
    if trainable:
        for name, param in new.named_parameters():
            if any(t in name for t in trainable) and "lora_" not in name:
                param.requires_grad_(True)
    module = make_module(new.train())
    result = fit(module, train_data, val_data, max_epochs=max_epochs, batch_size=batch_size,
                 accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                 early_stopping=early_stopping if val_data is not None else None,
                 checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, seed=seed,
                 **trainer_kwargs)
    trained = getattr(result.module, "model", new)
    if lora:
        trained.merge_lora()
    trained = trained.cpu().eval()
    for param in trained.parameters():
        param.requires_grad_(True)
    parent = model.card
    trained.card = ModelCard(
        name=f"{parent.name if parent else model.family}+finetuned" + (f":{task}" if task else ""),
        family=model.family, source="finetuned", sha256=None,
        config=trained.config.to_dict(), task=task,
        extra={"parent": parent.name if parent else None,
               "parent_sha256": parent.sha256 if parent else None,
               "lora": bool(lora), "lora_rank": lora_rank if lora else None,
               "freeze": freeze if isinstance(freeze, int | str | None) else list(freeze),
               "max_epochs": max_epochs, "global_step": int(result.global_step),
               **(card_extra or {})},
    )
    trained.history = result.history
    trained.fit_result = result
    return trained


finetune_doc(finetune_model)


def freeze_layers(model: nn.Module, patterns: str | Iterable[str], *, unfreeze_others: bool = False) -> int:
    """Freeze the parameters whose names match any glob or regex in ``patterns``.

    Returns the number of frozen parameter tensors; raises when nothing matched (a typo in a
    pattern would otherwise train the whole model silently).

    Examples
    --------
    >>> freeze_layers(model, ["*.embeddings.*", "*.layer.0.*"])  # doctest: +SKIP
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    frozen = 0
    for name, param in model.named_parameters():
        hit = any(fnmatch.fnmatch(name, p) or re.fullmatch(p, name) for p in patterns if _valid(p))
        if hit:
            param.requires_grad_(False)
            frozen += 1
        elif unfreeze_others:
            param.requires_grad_(True)
    if frozen == 0:
        sample = ", ".join(n for n, _ in list(model.named_parameters())[:5])
        raise InputError(f"no parameter matches {patterns}; parameter names look like: {sample}")
    log.info(f"froze {frozen} parameter tensors matching {patterns}")
    return frozen


def _valid(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def apply_lora(
    model: nn.Module,
    target_modules: list[str] | str,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    modules_to_save: list[str] | None = None,
) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (peft) on ``target_modules``; only adapters train.

    ``modules_to_save`` (e.g. a new classification head) stay fully trainable.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
        modules_to_save=modules_to_save,
    )
    model = inject_adapter_in_model(config, model)
    trainable = {n for n, p in model.named_parameters() if "lora_" in n}
    if not trainable:
        raise InputError(f"LoRA target_modules {target_modules} matched no Linear layer")
    for name, param in model.named_parameters():
        keep = "lora_" in name or any(m in name for m in (modules_to_save or []))
        param.requires_grad_(keep)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info(f"LoRA r={r}: training {n_train:,} of {n_all:,} parameters ({100 * n_train / n_all:.2f}%)")
    return model
