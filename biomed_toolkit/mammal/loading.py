"""Official MAMMAL formats: Lightning ``.ckpt`` files (restricted unpickler only) and ``bt.mammal.load``.

Folders with ``config.json`` + ``model.safetensors`` (the official hub layout and ours) are read by
:meth:`~biomed_toolkit.core.model.BaseModel.from_pretrained`; everything else arrives here through
the ``_load_official`` hook.

Examples
--------
>>> import biomed_toolkit as bt
>>> model = bt.mammal.load("run/last.ckpt")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from biomed_toolkit.core.errors import CheckpointError
from biomed_toolkit.core.log import get_logger

from .configuration import MammalConfig
from .modeling import _SHARED_NAMES, MammalModel

if TYPE_CHECKING:  # pragma: no cover
    from biomed_toolkit.core.hub import ResolvedModel

log = get_logger(__name__)

M = TypeVar("M", bound=MammalModel)




def _infer_config(sd: dict[str, torch.Tensor]) -> MammalConfig:
    """Rebuild the architecture from tensor shapes (a ckpt without a usable config)."""
    table = next(sd[n] for n in _SHARED_NAMES if n in sd)
    vocab, d = table.shape
    bias = sd["t5_model.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = bias.shape[1]
    inner = sd["t5_model.encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    d_ff = sd["t5_model.encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
    n_enc = len({k.split(".")[3] for k in sd if k.startswith("t5_model.encoder.block.")})
    n_dec = len({k.split(".")[3] for k in sd if k.startswith("t5_model.decoder.block.")})
    lin = sorted(
        (int(k.split(".")[2]), v.shape[0]) for k, v in sd.items() if k.startswith("encoder_head.classifier.") and k.endswith(".weight")
    )
    layers = [n for _, n in lin[:-1]]
    # Slot gaps of 3 mean Dropout modules were present.
    dropout = 0.2 if len(lin) > 1 and lin[1][0] - lin[0][0] == 3 else 0.0
    sp_lin = [v.shape[0] for k, v in sorted(sd.items()) if k.startswith("scalars_prediction_head.") and k.endswith(".weight")]
    return MammalConfig.from_dict(
        {
            "t5_config": {
                "vocab_size": int(vocab),
                "d_model": int(d),
                "d_kv": int(inner // heads),
                "num_heads": int(heads),
                "d_ff": int(d_ff),
                "num_layers": n_enc,
                "num_decoder_layers": n_dec,
                "relative_attention_num_buckets": int(bias.shape[0]),
            },
            "encoder_head_layers": layers,
            "encoder_head_dropout": dropout,
            "scalars_prediction_head": {"layers": sp_lin[:-1], "dropout": 0.0, "num_classes": sp_lin[-1]}
            if sp_lin
            else None,
            "support_input_scalars": "project_input_scalars.weight" in sd,
        }
    )


def _find_config_in(obj: Any, depth: int = 0) -> dict[str, Any] | None:
    """A dict with a ``t5_config`` key anywhere in pickled hyper-parameters."""
    if depth > 4:
        return None
    if hasattr(obj, "to_dict") and not isinstance(obj, dict):
        try:
            obj = obj.to_dict()
        except Exception:  # noqa: BLE001 - not a config holder
            return None
    if isinstance(obj, dict):
        if "t5_config" in obj:
            return obj
        for v in obj.values():
            found = _find_config_in(v, depth + 1)
            if found is not None:
                return found
    return None


def _load_ckpt(path: Path) -> tuple[MammalConfig, dict[str, torch.Tensor]]:
    from biomed_toolkit.core.safe_pickle import load_checkpoint

    ckpt = load_checkpoint(path)
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{path} holds no state_dict")
    for prefix in ("_model.", "model."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
            break
    if not any(n in sd for n in _SHARED_NAMES):
        raise CheckpointError(
            f"{path} is not a MAMMAL checkpoint: no t5_model.* embedding among its keys "
            f"(first keys: {list(sd)[:5]})"
        )
    cfg_dict = _find_config_in(ckpt.get("hyper_parameters", {}))
    if cfg_dict is None and (path.parent / "config.json").is_file():
        return MammalConfig.from_json_file(path.parent / "config.json"), sd
    if cfg_dict is not None:
        t5 = cfg_dict.get("t5_config")
        if hasattr(t5, "to_dict"):
            cfg_dict = {**cfg_dict, "t5_config": t5.to_dict()}
        return MammalConfig.from_dict(cfg_dict), sd
    log.info(f"{path.name}: no config stored; architecture inferred from tensor shapes")
    return _infer_config(sd), sd


def load_official(cls: type[M], path: Path, resolved: ResolvedModel) -> M:
    """A model from a Lightning ``.ckpt`` (a file, or a folder holding one) or a lone ``.safetensors``.

    Raises
    ------
    CheckpointError
        When ``path`` holds none of these, or the checkpoint is not a MAMMAL one.
    """
    from biomed_toolkit.core import hub

    if path.is_file() and path.suffix == ".safetensors":
        return cls.from_pretrained(path.parent, device="cpu")
    if path.is_file():
        if path.suffix not in (".ckpt", ".pt"):
            raise CheckpointError(f"{path}: expected a folder, a .safetensors or a .ckpt file")
        ckpt_file = path
    else:
        ckpts = sorted(path.glob("*.ckpt")) if path.is_dir() else []
        if not ckpts:
            have = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
            if (path / "model.safetensors").is_file():
                raise CheckpointError(f"{path} has model.safetensors but no config.json")
            raise CheckpointError(
                f"{path} has no model.safetensors and no .ckpt (found {have}); a MAMMAL folder "
                "needs config.json + model.safetensors + tokenizer/"
            )
        ckpt_file = ckpts[0]
    from transformers.initialization import no_init_weights

    config, sd = _load_ckpt(ckpt_file)
    with no_init_weights():  # the strict load below overwrites every tensor
        model = cls(config)
    model.load_weights(sd, source=str(ckpt_file))
    model._load_extras(ckpt_file.parent)
    model.card = hub.make_card(
        resolved.name if resolved.spec is not None else str(path), "mammal", resolved.source, ckpt_file,
        config=config.to_dict(), task=resolved.spec.task if resolved.spec is not None else model.task_description(),
        format="lightning ckpt")
    return model


def load(name_or_path: str | os.PathLike | None = None, *, device: str | torch.device | None = None) -> MammalModel:
    """Load a MAMMAL model (in eval mode) with its tokenizer and model card.

    Same as :meth:`MammalModel.from_pretrained`.

    Parameters
    ----------
    name_or_path
        ``None`` for the embedded demo model; a registry name or hub id (see
        ``bt.hub.list_models("mammal")``); a folder with ``config.json`` + ``model.safetensors``
        (official or ours) and ``tokenizer/``; or a Lightning ``.ckpt`` file (read through the
        restricted unpickler; weights prefixed ``_model.``).
    device
        ``None`` follows ``bt.settings.device``; or ``"cpu"``, ``"cuda"``, ``"mps"``, a ``torch.device``.

    Returns
    -------
    MammalModel
        With ``.tokenizer`` (if the folder has one) and ``.card``.

    Examples
    --------
    >>> import biomed_toolkit as bt
    >>> model = bt.mammal.load()  # doctest: +SKIP
    >>> model.card.name  # doctest: +SKIP
    'mammal-demo'
    """
    return MammalModel.from_pretrained(name_or_path, device=device)


__all__ = ["load", "load_official"]
