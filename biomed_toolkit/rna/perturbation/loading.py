"""Reading the earlier two-file layout of perturbation models (an encoder folder + a head file).

Folders written before the one lifecycle hold the encoder as a BMFM-RNA folder plus
``perturbation_head.safetensors`` and ``perturbation_config.json`` (``{"genes": [...]}``);
``PerturbationModel.from_pretrained`` reads them through this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ...core.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from .modeling import PerturbationModel

HEAD_FILE = "perturbation_head.safetensors"
HEAD_CONFIG = "perturbation_config.json"


def load_two_file_layout(cls: type[PerturbationModel], folder: Path) -> PerturbationModel:
    """Encoder from ``folder`` (any BMFM-RNA layout), head and panel from the two head files."""
    from ...core.weights import read_safetensors
    from ..modeling import BmfmRnaModel

    folder = Path(folder)
    if not (folder / HEAD_CONFIG).is_file() or not (folder / HEAD_FILE).is_file():
        raise CheckpointError(
            f"{folder} is not a perturbation model folder: it has neither a config.json written by "
            f"PerturbationModel.save_pretrained nor the earlier {HEAD_CONFIG} + {HEAD_FILE}")
    try:
        genes = json.loads((folder / HEAD_CONFIG).read_text())["genes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / HEAD_CONFIG}: no gene panel ({exc})") from None
    base = BmfmRnaModel.from_pretrained(folder, device="cpu")
    model = cls.from_base(base, genes)
    tensors, _ = read_safetensors(folder / HEAD_FILE)
    full = {f"base.{k}": v for k, v in base.state_dict().items()}
    full.update(tensors)
    model.load_weights(full, source=str(folder / HEAD_FILE))
    model.card = None  # from_pretrained writes the card of this folder
    return model


__all__ = ["HEAD_CONFIG", "HEAD_FILE", "load_two_file_layout"]
