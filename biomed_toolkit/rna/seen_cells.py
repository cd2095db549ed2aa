"""Which of a user's cells a model was pretrained on: per-cell fingerprints stored with the model.

A model pretrained with label heads has, in effect, memorised its pretraining cells: its
features of them are cleaner than of any new cell. Cross-validating anything on those cells
(how much the fine-tuning start leans on the encoder, :func:`~biomed_toolkit.rna.training.finetune`)
then overrates the encoder. On pbmc68k's training cells, which the embedded model was
pretrained on, the cross-validated macro-F1 of the pooler-weighted probe was 0.91 while the same
probe scored 0.67 on held-out cells (PCA + LR: 0.72).

A fingerprint is a 64-bit hash of a cell's non-zero (model token id, count) pairs, so it does
not depend on the column order, on genes the model does not read, or on the cell's name. The
training script writes the fingerprints of every pretraining cell to
``pretraining_cells.safetensors`` beside the weights; folders without it (official checkpoints)
simply have none.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:  # pragma: no cover
    from .modeling import BmfmRnaModel

__all__ = ["PRETRAINING_CELLS_NAME", "cell_fingerprints", "load_pretraining_cells",
           "save_pretraining_cells", "seen_in_pretraining"]

PRETRAINING_CELLS_NAME = "pretraining_cells.safetensors"


def cell_fingerprints(counts: sp.spmatrix | np.ndarray, column_token_ids: np.ndarray) -> np.ndarray:
    """One int64 fingerprint per cell (row) of ``counts`` over the columns the model reads.

    Parameters
    ----------
    counts
        Cells x genes counts (any sparse or dense matrix).
    column_token_ids
        The model token id of every column (negative: not read by the model), as in
        ``match_genes(...).column_token_ids``.
    """
    x = sp.csr_matrix(counts)
    ids = np.asarray(column_token_ids, dtype=np.int64)
    out = np.empty(x.shape[0], dtype=np.int64)
    for i in range(x.shape[0]):
        lo, hi = x.indptr[i], x.indptr[i + 1]
        tok = ids[x.indices[lo:hi]]
        val = np.rint(x.data[lo:hi]).astype(np.int64)
        keep = (tok >= 0) & (val != 0)
        tok, val = tok[keep], val[keep]
        order = np.argsort(tok, kind="stable")
        digest = hashlib.blake2b(np.stack([tok[order], val[order]]).tobytes(), digest_size=8)
        out[i] = np.frombuffer(digest.digest(), dtype=np.int64)[0]
    return out


def save_pretraining_cells(fingerprints: np.ndarray, folder: str | Path) -> None:
    """Write the fingerprints of a model's pretraining cells beside its weights."""
    from safetensors.numpy import save_file

    save_file({"fingerprints": np.unique(np.asarray(fingerprints, dtype=np.int64))},
              str(Path(folder) / PRETRAINING_CELLS_NAME))


def load_pretraining_cells(folder: str | Path) -> np.ndarray | None:
    """The fingerprints written by :func:`save_pretraining_cells`, or None without the file."""
    path = Path(folder) / PRETRAINING_CELLS_NAME
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    return load_file(str(path))["fingerprints"]


def seen_in_pretraining(model: BmfmRnaModel, counts: sp.spmatrix | np.ndarray,
                        column_token_ids: np.ndarray) -> np.ndarray | None:
    """Boolean mask of the cells ``model`` was pretrained on; None when the model does not say."""
    known = getattr(model, "pretraining_cells", None)
    if known is None:
        return None
    return np.isin(cell_fingerprints(counts, column_token_ids), known)
