"""Layer freezing and LoRA for fine-tuning any of the toolkit's torch models."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Any

from .errors import InputError
from .log import get_logger

log = get_logger(__name__)


def freeze_layers(model: Any, patterns: str | Iterable[str], *, unfreeze_others: bool = False) -> int:
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
    model: Any,
    target_modules: list[str] | str,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    modules_to_save: list[str] | None = None,
) -> Any:
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
