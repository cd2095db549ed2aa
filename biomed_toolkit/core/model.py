"""``BaseModel``: the one lifecycle every model of the toolkit shares (Hugging Face's pattern).

A family declares ``config_class`` and ``family`` and writes its network; loading, saving, the
model card, device placement, the inference context and LoRA merging are written here once:

- ``Model.from_pretrained(name_or_path=None, *, device=None)``: ``None`` gives the family's
  embedded default; names, hub ids and folders go through :func:`biomed_toolkit.core.hub.resolve`.
  A folder written by :meth:`save_pretrained` (``config.json`` + ``model.safetensors``) is read
  here; any other layout (an official Lightning ``.ckpt``, a converted hub folder) goes to the
  family's ``_load_official`` hook, which lives in that family's ``loading.py``.
- ``model.save_pretrained(dir)`` is the exact inverse (bit-identical weights on reload).

Hooks a family may override: ``_load_official(path, resolved)``, ``_load_extras(folder)`` and
``_save_extras(folder)`` (tokenizers, class names), ``_prepare_state_dict(sd)`` (key renames),
``load_weights(sd, source=...)`` (tied tables), ``task_description()`` (for the card).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import torch
from torch import nn

from .config import BaseConfig
from .errors import CheckpointError, InputError
from .log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .hub import ModelCard, ResolvedModel
    from .train import FitResult

log = get_logger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

#: family name -> model class, filled as family modules are imported (used by contract tests).
MODEL_CLASSES: dict[str, type[BaseModel]] = {}


class BaseModel(nn.Module):
    """Base class of every model the toolkit loads.

    Attributes
    ----------
    config
        The family's :class:`~biomed_toolkit.core.config.BaseConfig`.
    card
        :class:`~biomed_toolkit.core.hub.ModelCard`: name, source, sha256 of the weights; every
        tool records it in its provenance.
    history
        DataFrame of the last fine-tuning run (None for a loaded model).
    fit_result
        The :class:`~biomed_toolkit.core.train.FitResult` of that run (checkpoints, trainer).
    """

    config_class: ClassVar[type[BaseConfig]] = BaseConfig
    family: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__ and cls.family and cls.family not in MODEL_CLASSES:
            MODEL_CLASSES[cls.family] = cls

    def __init__(self, config: BaseConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise CheckpointError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.card: ModelCard | None = None
        self.history: pd.DataFrame | None = None
        self.fit_result: FitResult | None = None

    # placement -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the first parameter (CPU for a model without parameters)."""
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        """Number of parameters (shared tensors counted once)."""
        seen: set[int] = set()
        total = 0
        for p in self.parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    @contextlib.contextmanager
    def inference(self) -> Iterator[Self]:
        """Eval mode without gradients; the previous train/eval state comes back afterwards.

        Examples
        --------
        >>> with model.inference():  # doctest: +SKIP
        ...     out = model(batch)
        """
        states = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            with torch.no_grad():
                yield self
        finally:
            for module, training in states:
                module.training = training

    def merge_lora(self) -> Self:
        """Fold LoRA adapters into the base weights, in place; every parameter trains again.

        Examples
        --------
        >>> model.merge_lora().save_pretrained("merged")  # doctest: +SKIP
        """
        try:
            from peft.tuners.lora import LoraLayer
        except ImportError:  # pragma: no cover - peft is a dependency
            return self
        for name, module in list(self.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(self.get_submodule(parent) if parent else self, child, module.get_base_layer())
        for p in self.parameters():
            p.requires_grad_(True)
        return self

    def has_lora(self) -> bool:
        """True while unmerged LoRA adapters are attached."""
        return any("lora_" in name for name, _ in self.named_parameters())

    def lora_targets(self) -> list[str]:
        """Names of the modules LoRA adapts by default (families with linear layers override)."""
        raise InputError(
            f"{type(self).__name__} has no attention / linear projections for LoRA: use lora=False")

    def _freeze_patterns(self, n_blocks: int) -> list[str]:
        """Parameter-name patterns of the input embeddings and the first ``n_blocks`` blocks."""
        raise InputError(
            f"{type(self).__name__} has no numbered blocks: pass freeze= as parameter-name patterns")

    def task_description(self) -> str | None:
        """What the model does, for its card (families override)."""
        return None

    # loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, *,
                        device: str | torch.device | None = None) -> Self:
        """Load a model in eval mode, with its card.

        Parameters
        ----------
        name_or_path
            ``None`` for the family's embedded default; a registered name
            (``bt.hub.list_models()``), a hub id, a folder or a checkpoint file.
        device
            ``None`` / ``"auto"`` follow ``bt.settings.device``; or ``"cpu"``, ``"cuda"``, ...

        Raises
        ------
        CheckpointError
            When the files do not hold a model of this family, or do not fit their config.
        """
        from . import hub
        from .device import resolve_device

        torch_device = resolve_device(device)  # a bad device fails before any file is read
        if name_or_path is None:
            name_or_path = hub.default_model(cls.family).name
        resolved = hub.resolve(name_or_path, family=cls.family)
        path = Path(resolved.path)
        if cls._is_own_folder(path):
            model = cls._load_own(path)
            fmt = "biomed_toolkit folder"
        else:
            model = cls._load_official(path, resolved)
            fmt = None
        if model.card is None:
            model.card = hub.make_card(
                resolved.name, cls.family, resolved.source, path,
                config=model.config.to_dict(), task=model.task_description(),
                **({"format": fmt} if fmt else {}))
        return model.to(torch_device).eval()

    @classmethod
    def _is_own_folder(cls, path: Path) -> bool:
        if not (path.is_dir() and (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()):
            return False
        if cls.config_class.model_type is None:
            return True
        try:
            data = json.loads((path / CONFIG_NAME).read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"{path / CONFIG_NAME} is not valid JSON ({exc}); restore the file from the "
                "original model") from None
        if not isinstance(data, Mapping):  # no family's config.json is a list or a scalar
            raise CheckpointError(
                f"{path / CONFIG_NAME} holds a JSON {type(data).__name__}, not an object of settings; "
                "restore the file from the original model")
        return cls.config_class.is_own_format(data)

    @classmethod
    def _load_own(cls, folder: Path) -> Self:
        from .weights import read_safetensors

        config = cls.config_class.from_json_file(folder / CONFIG_NAME)
        model = cls(config)
        weights = folder / WEIGHTS_NAME
        tensors, _ = read_safetensors(weights)
        model.load_weights(model._prepare_state_dict(tensors), source=str(weights))
        model._load_extras(folder)
        return model

    @classmethod
    def _load_official(cls, path: Path, resolved: ResolvedModel) -> Self:
        """Load a layout other than our own (families override, in their ``loading.py``)."""
        raise CheckpointError(
            f"{path} is not a {cls.family} model folder (config.json + {WEIGHTS_NAME} written by "
            "save_pretrained) and this family reads no other format")

    def _prepare_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename keys of a stored state dict to this network's names (default: unchanged)."""
        return state_dict

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> None:
        """Copy weights in strictly, naming every missing, unexpected or misshaped key."""
        from .weights import load_state_dict

        load_state_dict(self, state_dict, strict=True, source=source)

    def _load_extras(self, folder: Path) -> None:
        """Read what lives beside the weights (tokenizers, class names); default: nothing."""

    # saving ----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and the family's extras; :meth:`from_pretrained`
        on the folder gives back bit-identical weights.

        Raises
        ------
        CheckpointError
            While LoRA adapters are attached (call :meth:`merge_lora` first).
        """
        from .weights import save_safetensors

        if self.has_lora():
            raise CheckpointError(
                "the model carries LoRA adapters: call model.merge_lora() before save_pretrained")
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.to_json_file(folder / CONFIG_NAME)
        save_safetensors({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                         folder / WEIGHTS_NAME)
        self._save_extras(folder)
        return folder

    def _save_extras(self, folder: Path) -> None:
        """Write what :meth:`_load_extras` reads; default: nothing."""

    # display ---------------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        name = self.card.name if self.card is not None else "(not from a checkpoint)"
        rows = [("family", self.family), ("name", name), ("parameters", f"{self.num_parameters():,}"),
                ("device", str(self.device)), ("mode", "train" if self.training else "eval")]
        if self.history is not None:
            rows.append(("fine-tuned", f"{len(self.history)} history rows"))
        body = "".join(f"<tr><td style='text-align:left'><b>{k}</b></td>"
                       f"<td style='text-align:left'>{v}</td></tr>" for k, v in rows)
        return f"<table><caption>{type(self).__name__}</caption>{body}</table>"


__all__ = ["CONFIG_NAME", "MODEL_CLASSES", "WEIGHTS_NAME", "BaseModel"]
