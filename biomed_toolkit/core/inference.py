"""Data-parallel inference through Lightning predict, the same from a notebook, a script or a cluster.

:func:`distributed_predict` cuts the items (a Dataset, a sequence, or an index range) into
contiguous blocks of ``batch_size``, lets Lightning's distributed sampler shard the blocks over
the processes, calls ``predict_fn(batch)`` on each block and puts every output row back at the
position of its item. The result does not depend on how many processes ran, or how they started:

- ``python script.py`` with ``strategy="ddp"`` (Lightning re-runs the script for ranks 1..N-1):
  every rank gathers all blocks through the process group, so each rank returns the full result
  and the code after the call runs the same everywhere;
- a cluster launcher (``torchrun``, SLURM ``srun``: ranks from environment variables): the same;
  ``devices``/``num_nodes`` left at ``"auto"`` are read from the launcher's variables;
- a notebook (``ddp_notebook``, fork) or ``ddp_spawn``: the calling process is not a rank; the
  ranks write their blocks (``.npz``, no pickle) into a folder the caller made, and the caller
  reads them back.

With ``output_dir`` the blocks are written there as they are computed (streaming; nothing is
kept in memory) and a :class:`ChunkedPredictions` reader is returned.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from .errors import InputError
from .log import get_logger

log = get_logger(__name__)

__all__ = ["ChunkedPredictions", "distributed_predict"]

_PART = "part-{lo:012d}-{hi:012d}.npz"


@dataclass
class ChunkedPredictions:
    """Blocks written by :func:`distributed_predict` with ``output_dir`` (one ``.npz`` per block).

    Attributes
    ----------
    folder
        Where the blocks are (``part-<start>-<stop>.npz``: rows ``start:stop`` of every output).
    n_items
        Number of items predicted.
    """

    folder: Path
    n_items: int

    def __iter__(self) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """``(start, stop, {name: array})`` for every block, in item order."""
        for path in sorted(self.folder.glob("part-*.npz")):
            lo, hi = (int(v) for v in path.stem.split("-")[1:3])
            with np.load(path, allow_pickle=False) as z:
                yield lo, hi, {k: z[k] for k in z.files}

    def load(self) -> dict[str, np.ndarray]:
        """All blocks merged into ``{name: array of n_items rows}`` (raises when a block is missing)."""
        return _merge(((lo, hi, arrays) for lo, hi, arrays in self), self.n_items, str(self.folder))


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach()
        if value.dtype.is_floating_point and value.dtype not in (_torch().float32, _torch().float64):
            value = value.float()  # bf16/fp16 have no numpy dtype
        return value.cpu().numpy()
    return np.asarray(value)


def _torch() -> Any:
    import torch

    return torch


def _check_outputs(out: Any, lo: int, hi: int) -> dict[str, np.ndarray]:
    if not isinstance(out, Mapping):
        raise InputError(f"predict_fn must return a dict of arrays, got {type(out).__name__}")
    arrays = {str(k): _to_numpy(v) for k, v in out.items()}
    for key, arr in arrays.items():
        if arr.ndim == 0 or arr.shape[0] != hi - lo:
            raise InputError(
                f"predict_fn output {key!r} has shape {arr.shape} for a batch of {hi - lo} items: "
                "every output needs one row per item (first dimension = batch length)"
            )
        if arr.dtype == object:
            raise InputError(f"predict_fn output {key!r} holds Python objects: return numeric arrays")
    return arrays


def _merge(parts: Any, n: int, where: str) -> dict[str, np.ndarray]:
    """Put each block's rows at its item positions; every item must be covered."""
    out: dict[str, np.ndarray] = {}
    seen = np.zeros(n, dtype=bool)
    for lo, hi, arrays in parts:
        for key, arr in arrays.items():
            if key not in out:
                out[key] = np.empty((n, *arr.shape[1:]), dtype=arr.dtype)
            out[key][lo:hi] = arr
        seen[lo:hi] = True
    if n and not seen.all():
        missing = np.flatnonzero(~seen)
        raise RuntimeError(
            f"distributed inference is missing {missing.size} of {n} items (first: {missing[:5].tolist()}) "
            f"in {where}; this is a bug, please report it with the launch command"
        )
    return out


class _Blocks:
    """Contiguous blocks ``[lo, hi)`` of the items: what the distributed sampler shards."""

    def __init__(self, data: Any, blocks: list[tuple[int, int]], collate_fn: Callable | None) -> None:
        self.data = data
        self.blocks = blocks
        self.collate_fn = collate_fn

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> tuple[int, int, Any]:
        torch = _torch()
        lo, hi = self.blocks[i]
        if self.data is None:  # an index range: the batch is the item indices
            return lo, hi, torch.arange(lo, hi)
        items = [self.data[j] for j in range(lo, hi)]
        if self.collate_fn is not None:
            return lo, hi, self.collate_fn(items)
        from torch.utils.data import default_collate

        return lo, hi, default_collate(items)


class _Predictor(L.LightningModule):
    """Calls ``predict_fn`` per block; keeps the rows in memory or writes them to ``folder``.

    Defined at module level so that ``ddp_spawn`` can pickle it.
    """

    allow_zero_length_dataloader_with_multiple_devices = True

    def __init__(self, module: Any, predict_fn: Callable, folder: str, write_all: bool) -> None:
        super().__init__()
        self.inner = module  # registered so that Lightning moves it to the device
        self.predict_fn = predict_fn
        self.folder = folder
        self.write_all = write_all
        self.caller_pid = os.getpid()
        self.parts: list[tuple[int, int, dict[str, np.ndarray]]] = []
        self.ran = False

    def on_predict_start(self) -> None:
        self.ran = True
        self.parts = []
        if self.write_all:  # output_dir: every rank writes where rank 0 writes
            self.folder = str(self.trainer.strategy.broadcast(self.folder, src=0))

    def predict_step(self, batch: Any, batch_idx: int) -> None:
        lo, hi, items = batch
        lo, hi = int(lo), int(hi)
        arrays = _check_outputs(self.predict_fn(items), lo, hi)
        # ranks that are not the caller (spawn/fork) hand their blocks back through files
        if self.write_all or os.getpid() != self.caller_pid:
            path = Path(self.folder) / _PART.format(lo=lo, hi=hi)
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        else:
            self.parts.append((lo, hi, arrays))


def distributed_predict(
    predict_fn: Callable[[Any], Mapping[str, Any]],
    data: Any,
    *,
    batch_size: int = 1,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    module: Any = None,
    accelerator: str | None = "auto",
    devices: int | str | list[int] | None = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: bool = True,
    output_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray] | ChunkedPredictions:
    """Run ``predict_fn`` over all items in one or several processes and return rows in item order.

    Parameters
    ----------
    predict_fn
        ``predict_fn(batch) -> {name: array}``; every array has one row per item of the batch
        (torch tensors or numpy arrays; bf16/fp16 come back as float32). Must be picklable for
        ``strategy="ddp_spawn"`` (a module-level function or a callable object, not a lambda).
    data
        The items: a ``torch.utils.data.Dataset`` or any sequence with ``len`` and integer
        indexing (the batch is ``collate_fn([data[i] for i in block])``), or an ``int`` / ``range``
        ``n`` (an index range: the batch is a 1-D int64 tensor of consecutive indices
        ``start..stop-1``).
    batch_size
        Items per call of ``predict_fn`` (a block of consecutive items; blocks are what the
        processes share out).
    collate_fn
        How a list of items becomes a batch (default ``torch.utils.data.default_collate``).
    module
        The ``torch.nn.Module`` ``predict_fn`` uses: Lightning moves it to each process's device
        (tensors of the batch are moved there too). ``None`` when ``predict_fn`` needs no device.
    accelerator, devices, num_nodes, strategy
        As in Lightning. ``strategy="auto"`` with several processes picks ``ddp`` from a script or
        a cluster launcher and ``ddp_notebook`` (fork) inside a notebook; CPU processes talk
        through gloo. Under ``torchrun``/SLURM, ``devices="auto"`` takes the launcher's layout.
    progress
        Show Lightning's progress bar (rank 0).
    output_dir
        Stream the blocks to this folder (one ``.npz`` per block, written atomically) instead of
        keeping them in memory; returns a :class:`ChunkedPredictions`. Several nodes need a
        shared folder. Rank 0's absolute path is used by every rank. Use it for outputs too
        large to hold once per process (without it, every rank of a ``ddp`` run receives all rows).

    Returns
    -------
    dict
        ``{name: array}`` with ``len(data)`` rows in item order (every rank returns it), or a
        :class:`ChunkedPredictions` with ``output_dir``.

    Raises
    ------
    InputError
        Bad ``batch_size``, empty data, or ``predict_fn`` outputs without one row per item.

    Examples
    --------
    >>> def score(batch):  # doctest: +SKIP
    ...     return {"score": model(batch.to(model.device)).float()}
    >>> out = distributed_predict(score, dataset, batch_size=64, module=model,
    ...                           accelerator="cpu", devices=2)  # doctest: +SKIP
    >>> out["score"].shape  # doctest: +SKIP
    """
    from .device import available_accelerator
    from .train import _quiet_lightning, choose_strategy, launcher_layout

    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(data, int | np.integer) and not isinstance(data, bool):
        n, items = int(data), None
    elif isinstance(data, range):
        if data.step != 1 or data.start != 0:
            raise InputError("an index range must be range(n) (start 0, step 1); pass a Dataset otherwise")
        n, items = len(data), None
    elif hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n, items = len(data), data
    else:
        raise InputError(f"data must be a Dataset, a sequence or an item count, got {type(data).__name__}")
    if n < 0:
        raise InputError(f"the item count must be >= 0, got {n}")
    blocks = [(lo, min(lo + int(batch_size), n)) for lo in range(0, n, int(batch_size))]
    if not blocks:
        return {} if output_dir is None else ChunkedPredictions(folder=Path(output_dir), n_items=0)

    _quiet_lightning()
    if accelerator in (None, "auto"):
        accelerator = available_accelerator()
    devices, num_nodes = launcher_layout(devices, num_nodes)
    if devices in (None, "auto") and accelerator == "cpu":
        devices = 1
    strategy = choose_strategy(strategy, devices, num_nodes, accelerator)

    own_folder = output_dir is None
    folder = Path(tempfile.mkdtemp(prefix="bt_predict_")) if own_folder else Path(output_dir).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    predictor = _Predictor(module, predict_fn, str(folder), write_all=not own_folder)
    from torch.utils.data import DataLoader

    loader = DataLoader(_Blocks(items, blocks, collate_fn), batch_size=None, shuffle=False)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                        logger=False, enable_checkpointing=False, enable_progress_bar=bool(progress),
                        enable_model_summary=False, inference_mode=True)
    try:
        trainer.predict(predictor, loader, return_predictions=False)
        return _collect(predictor, trainer, folder, n, own_folder)
    finally:
        if own_folder:
            shutil.rmtree(folder, ignore_errors=True)


def _collect(predictor: Any, trainer: Any, folder: Path, n: int, own_folder: bool) -> Any:
    """The full result in this process, whichever way the ranks were started."""
    torch = _torch()
    in_group = predictor.ran and torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if in_group else 1
    if not own_folder:
        if world > 1:
            trainer.strategy.barrier("distributed_predict")
        return ChunkedPredictions(folder=Path(predictor.folder), n_items=n)
    if predictor.ran:
        parts = predictor.parts
        if world > 1:
            # ranks started by a script or a cluster launcher: everyone gets every block
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, parts)
            parts = [p for rank_parts in gathered for p in rank_parts]
        return _merge(parts, n, "the gathered blocks")
    # the caller of a spawn/fork launch: the ranks left their blocks in the folder
    return ChunkedPredictions(folder=folder, n_items=n).load()

