"""Read Lightning ``.ckpt`` files without ever running arbitrary pickle code.

Checkpoints of the official BMFM-RNA and MAMMAL code pickle their config classes. We read them
with torch's restricted (``weights_only``) unpickler and an allowlist that maps each known class
path to a :class:`PlainConfig` data holder: the original class is never imported, and any other
global (``os.system``, ``subprocess.Popen``, ...) is refused before it can run.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from .errors import CheckpointError

# The class paths each family allows (and the attribute renames their classes apply) live in the
# family's registry module (``PICKLE_CLASSES``, ``LEGACY_RENAMES``); see ``_allowed()``.
_legacy_renames: dict[str, dict[str, str]] = {}


class PlainConfig:
    """Attribute bag standing in for a pickled config class; holds data only.

    ``cls_path`` names the class the checkpoint asked for.
    """

    cls_path: str = "PlainConfig"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise CheckpointError(f"unexpected pickled state for {self.cls_path}: {type(state).__name__}")
        short = self.cls_path.rsplit(".", 1)[-1]
        for old, new in _legacy_renames.get(short, {}).items():
            if old in state and new not in state:
                state[new] = state.pop(old)
        self.__dict__.update(state)

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (nested PlainConfigs converted too)."""
        return {k: _plain(v) for k, v in self.__dict__.items()}

    def __repr__(self) -> str:
        keys = ", ".join(list(self.__dict__)[:8])
        more = ", ..." if len(self.__dict__) > 8 else ""
        return f"PlainConfig[{self.cls_path}]({keys}{more})"


def _plain(value: Any) -> Any:
    if isinstance(value, PlainConfig):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


class PlainEnum(str):
    """Stand-in for a pickled ``str`` Enum (pickled as a call with its value): that string."""

    cls_path: str = "PlainEnum"


_holders: dict[str, type] = {}


def register_allowed(class_path: str, *, enum: bool = False) -> type:
    """Allow one more pickled class path (``"package.module.ClassName"``) as a data holder.

    ``enum=True``: a ``str`` Enum, rebuilt as a :class:`PlainEnum` keeping its value.
    """
    if class_path not in _holders:
        name = class_path.rsplit(".", 1)[-1]
        base = PlainEnum if enum else PlainConfig
        _holders[class_path] = type(name, (base,), {"cls_path": class_path})
    return _holders[class_path]


def _allowed() -> list[tuple[type, str]]:
    """Every allowed class: the families' registries plus :func:`register_allowed` calls."""
    from .hub import family_registries

    for module in family_registries().values():
        for class_path in module.PICKLE_CLASSES:
            register_allowed(class_path)
        for class_path in getattr(module, "PICKLE_ENUMS", ()):
            register_allowed(class_path, enum=True)
        for short, renames in getattr(module, "LEGACY_RENAMES", {}).items():
            _legacy_renames.setdefault(short, dict(renames))
    return [(cls, class_path) for class_path, cls in _holders.items()]


def _unreadable(path: Path, cause: str) -> str:
    return (f"{path} is not a readable torch checkpoint: {cause}. It is damaged (truncated, emptied "
            "or overwritten) or another kind of file. Fix: replace it with an intact copy, or delete "
            "it and load another checkpoint.")


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    if isinstance(exc, EOFError):
        return "the file ends too early (EOFError: truncated or empty)"
    if "zip archive" in text or "central directory" in text:
        return f"truncated or damaged zip archive ({text[:100]})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _not_pickle_bytes(detail: str) -> bool:
    """True when the restricted unpickler stopped on a byte that is no pickle opcode at all."""
    import pickletools
    import re

    found = re.search(r"Unsupported operand (\d+)", detail)
    return bool(found) and chr(int(found.group(1))) not in {op.code for op in pickletools.opcodes}


def load_checkpoint(path: str | os.PathLike, *, map_location: str = "cpu") -> dict[str, Any]:
    """Load a Lightning/torch checkpoint through the restricted unpickler.

    Parameters
    ----------
    path
        A ``.ckpt``/``.pt`` file written by ``torch.save``.
    map_location
        Where tensors go.

    Returns
    -------
    The checkpoint dict. Known config classes come back as :class:`PlainConfig` objects;
    tensors are real tensors.

    Raises
    ------
    CheckpointError
        When the file asks for any class or function outside the allowlist (nothing is run),
        or is not a readable checkpoint.

    Examples
    --------
    >>> ckpt = load_checkpoint("last.ckpt")  # doctest: +SKIP
    >>> ckpt["hyper_parameters"]["model_config"].hidden_size  # doctest: +SKIP
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(_unreadable(path, "the file is empty (0 bytes)"))
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip (or a pickle)
        raise CheckpointError(_unreadable(path, f"not a torch checkpoint (it starts with {head!r}, "
                                                "neither a zip archive nor a pickle)"))
    allowed = _allowed()
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        detail = lines[0] if lines else str(exc).splitlines()[-1]
        if _not_pickle_bytes(detail):
            raise CheckpointError(_unreadable(path, f"not a torch checkpoint ({detail})")) from None
        raise CheckpointError(
            f"refused to load {path}: it asks for code outside the allowlist of known config "
            f"classes, so it was not run ({detail}). Fix: if this is a "
            "trusted checkpoint with another config class, allow that class path with "
            "biomed_toolkit.core.safe_pickle.register_allowed('package.module.Class'); if the file "
            "was damaged, replace it with an intact copy."
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure means "not a checkpoint"
        raise CheckpointError(_unreadable(path, _cause(exc))) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(_unreadable(path, f"it holds a {type(obj).__name__}, not a checkpoint dict"))
    return obj
