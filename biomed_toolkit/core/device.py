"""Device selection: ``"auto"`` picks CUDA, else MPS, else CPU."""

from __future__ import annotations

from typing import Any

#: What Lightning takes as ``devices=``: a count, ``"auto"`` / ``-1``, or a list of indices.
Devices = int | str | list[int]


def available_accelerator() -> str:
    """Name of the best accelerator present: ``"cuda"``, ``"mps"`` or ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(device: Any = "auto") -> Any:
    """Turn ``"auto"``, a name or a ``torch.device`` into a ``torch.device``.

    ``None`` and ``"auto"`` follow ``bt.settings.device``; that setting's ``"auto"`` picks CUDA,
    else MPS, else CPU.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    from .errors import InputError

    if device is None or device == "auto":
        from .settings import settings

        device = settings.device
        if device == "auto":
            device = available_accelerator()
    if isinstance(device, torch.device):
        return device
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(
            f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but CUDA is not available: use 'auto' or 'cpu'")
    return resolved


def resolve_precision(precision: str = "auto", device: Any = None) -> str:
    """Lightning precision string: ``"auto"`` gives bf16-mixed on CUDA with bf16, else 32."""
    if precision != "auto":
        return str(precision)
    import torch

    dev = resolve_device(device)
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"
