"""safetensors writing and strict, explanatory state-dict loading."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import CheckpointError


def save_safetensors(
    state: Any, path: str | os.PathLike, *, metadata: dict[str, str] | None = None
) -> Path:
    """Write a module's or a state dict's tensors to ``path`` (shared tensors stored once).

    Tensors that share storage (tied embeddings) are written once; :func:`load_state_dict`
    restores the aliases by re-tying through the module. The file is written to a temporary
    name and renamed, so a crash never leaves a half-written file.
    """
    import torch
    from safetensors.torch import save_file

    state_dict = state.state_dict() if isinstance(state, torch.nn.Module) else dict(state)
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    meta = {"format": "pt", **(metadata or {})}
    meta.update({f"alias:{k}": v for k, v in aliases.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # save_file creates 0600 files; weights are meant to be shared
    return path


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and metadata of a safetensors file; aliases recorded in the metadata are restored.

    Raises
    ------
    CheckpointError
        Naming the file, the cause (missing, empty, truncated, malformed header) and the fix.
    """
    from safetensors import safe_open

    tensors: dict[str, Any] = {}
    if not Path(path).is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ... all mean "not readable"
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {cause}). It is "
            "damaged (truncated or overwritten) or another kind of file. Fix: replace it with an "
            "intact copy (save_pretrained writes one), or load the model from its original source."
        ) from exc
    for key, value in metadata.items():
        if key.startswith("alias:") and value in tensors:
            tensors.setdefault(key[len("alias:") :], tensors[value])
    # transformers-style alias metadata: {"alias_name": "stored_name"}
    for key, value in metadata.items():
        if key.startswith("alias:") or key == "format":
            continue
        if isinstance(value, str) and value in tensors and key not in tensors and "." in key:
            tensors[key] = tensors[value]
    return tensors, metadata


def load_state_dict(
    module: Any,
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    ignore: tuple[str, ...] = (),
    source: str = "checkpoint",
) -> dict[str, list[str]]:
    """Copy ``state_dict`` into ``module``, reporting every mismatch by name.

    Raises
    ------
    CheckpointError
        With the missing, unexpected and shape-mismatched keys, when ``strict`` and any exist.

    Returns
    -------
    ``{"missing": [...], "unexpected": [...]}`` (empty lists when everything fit).
    """
    own = module.state_dict()
    problems = state_dict_mismatches(own, state_dict, strict=strict, ignore=ignore, source=source)
    if problems:
        raise CheckpointError(
            f"the {source} does not fit its configuration: " + " | ".join(problems)
            + ". Check that config.json belongs to these weights."
        )
    missing = [k for k in own if k not in state_dict and not k.startswith(ignore)]
    unexpected = [k for k in state_dict if k not in own and not k.startswith(ignore)]
    filtered = {k: v for k, v in state_dict.items() if k in own}
    module.load_state_dict(filtered, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def state_dict_mismatches(
    own: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    ignore: tuple[str, ...] = (),
    source: str = "checkpoint",
) -> list[str]:
    """What keeps ``state_dict`` from loading into a module whose state dict is ``own``.

    Returns
    -------
    Descriptions of the shape mismatches and (when ``strict``) the missing and unexpected keys,
    each naming up to 10 keys; empty when everything fits.
    """
    mismatched = [
        f"{k}: {source} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state_dict and not k.startswith(ignore)]
    unexpected = [k for k in state_dict if k not in own and not k.startswith(ignore)]
    parts = []
    if mismatched:
        parts.append("shape mismatches: " + "; ".join(mismatched[:10]))
    if strict and missing:
        parts.append(f"missing from the {source} ({len(missing)}): " + ", ".join(missing[:10]))
    if strict and unexpected:
        parts.append(f"unexpected in the {source} ({len(unexpected)}): " + ", ".join(unexpected[:10]))
    return parts
