"""Training callable from a notebook cell: ``bt.train.fit`` on top of Lightning.

- a notebook-friendly progress bar and a returned history DataFrame (``bt.pl.training_history``);
- several devices through DDP; in a notebook a fork-based (notebook-safe) DDP is picked;
  the same call runs multi-node (``num_nodes``);
- atomic, checksummed checkpoints every N steps and at each epoch end; ``resume=True`` continues
  from the last one, mid-epoch included, exactly: the sampler's order and position inside the
  epoch and the random-number state are checkpointed, so an interrupted and rerun fit sees the
  same samples in the same order and ends with the same weights (bit-equal on CPU) and history;
- a damaged or missing ``last.ckpt`` falls back to the newest intact checkpoint (with a warning);
  a non-finite loss stops training with :class:`~biomed_toolkit.core.errors.TrainingError`.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .device import available_accelerator, resolve_precision
from .display import in_notebook  # in a notebook spawn-based DDP cannot pickle the notebook's code
from .errors import CheckpointError, InputError, TrainingError
from .log import get_logger
from .settings import settings

if TYPE_CHECKING:  # pragma: no cover
    from .device import Devices

log = get_logger(__name__)

LAST = "last.ckpt"
HISTORY = "history.csv"
CHECKSUM_SUFFIX = ".sha256"  # beside each checkpoint: the sha256 of its bytes
_RESUME_KEY = "biomed_toolkit_resume"  # sampler position and RNG state inside a checkpoint
# torch's messages for tensors of the wrong shape (matmul, broadcasting, view, cat, loss targets)
_SHAPE_ERROR = re.compile(r"shapes cannot be multiplied|size of tensor a .* must match|"
                          r"must match the size|shape '\[.*\]' is invalid|Expected .*size|"
                          r"Sizes of tensors must match|size mismatch")


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    history: Any  # pandas.DataFrame: one row per logged step/epoch, one column per metric
    module: Any
    checkpoint_dir: Path | None
    last_checkpoint: Path | None
    best_model_path: str | None
    global_step: int
    trainer: Any = None

    def _repr_html_(self) -> str:
        head = f"<p>global step {self.global_step}; checkpoints in {self.checkpoint_dir}</p>"
        return head + self.history.tail(10).to_html()


def choose_strategy(strategy: str, devices: Devices, num_nodes: int, accelerator: str) -> str:
    """``"auto"`` with several processes: ``ddp_notebook`` in a notebook (fork), else ``ddp``."""
    if strategy != "auto":
        if in_notebook() and (strategy == "ddp" or (strategy == "ddp_spawn" and accelerator != "cpu")):
            log.warning(f"strategy {strategy!r} cannot run inside a notebook: using 'ddp_notebook'")
            return "ddp_notebook"
        return strategy
    n = _n_devices(devices, accelerator)
    if n * num_nodes <= 1:
        return "auto"
    return "ddp_notebook" if in_notebook() else "ddp"


def launcher_layout(devices: Devices, num_nodes: int) -> tuple[Any, int]:
    """``(devices, num_nodes)`` of a cluster launcher (torchrun, SLURM ``srun``) when ``devices``
    is left at ``"auto"``/None; the arguments unchanged otherwise or without a launcher."""
    if devices not in (None, "auto"):
        return devices, num_nodes
    env = os.environ
    if "LOCAL_RANK" in env and int(env.get("WORLD_SIZE", "1") or 1) > 1:  # torchrun / torchelastic
        world = int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_WORLD_SIZE", "0") or 0) or world // max(1, num_nodes)
        return local, max(1, world // max(1, local))
    name = env.get("SLURM_JOB_NAME", "")
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env and name not in ("bash", "interactive"):
        world = int(env["SLURM_NTASKS"])
        nodes = int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")) or 1)
        if world > 1:
            return max(1, world // max(1, nodes)), max(1, nodes)
    return devices, num_nodes


def _n_devices(devices: Devices, accelerator: str) -> int:
    if devices in (None, "auto"):
        if accelerator == "cuda":
            import torch

            return max(1, torch.cuda.device_count())
        return 1
    if isinstance(devices, int):
        return devices if devices > 0 else 1
    if isinstance(devices, list | tuple):
        return len(devices)
    return int(devices)


class _DropAdverts:
    """Drops Lightning's advertising tips (cloud products) from the training log."""

    def filter(self, record: Any) -> bool:
        return "Tip:" not in str(record.getMessage())


def _quiet_lightning() -> None:
    import logging
    import warnings

    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdverts) for f in lightning_log.filters):
        lightning_log.addFilter(_DropAdverts())
    # torch's pytree deprecation seen through Lightning; nothing a user can act on
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # core.inference's predict_step keeps its rows itself and returns None on purpose
    warnings.filterwarnings("ignore", message=r".*predict returned None.*")
    # fit's own sampler resumes mid-epoch (its position is in the checkpoint), in the same folder
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty.*")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum_file(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def read_verified_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` after checking it against its ``.sha256`` file.

    Raises
    ------
    CheckpointError
        Naming the file, the cause (missing, dangling link, empty, truncated, changed bytes, not
        a torch checkpoint, unsafe) and the fix.
    """
    from .safe_pickle import load_checkpoint

    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise CheckpointError(
            f"{path} is a link to {os.readlink(path)}, which does not exist. Fix: delete the link "
            "or point it to an intact checkpoint."
        )
    checkpoint = load_checkpoint(path, map_location="cpu")  # names the cause when unreadable
    sums = _checksum_file(path)
    if sums.is_file():
        expected = sums.read_text().split()[0] if sums.stat().st_size else ""
        if expected and _sha256(path) != expected:
            raise CheckpointError(
                f"{path} does not match its checksum in {sums.name}: its bytes changed after it was "
                "written (bit flip, partial overwrite). Fix: delete it (and its .sha256) to use "
                "another checkpoint, or restore it from a backup."
            )
    return checkpoint


def _atomic_checkpoint_io() -> Any:
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Writes to ``<name>.tmp`` then renames (a kill never leaves a half-written checkpoint)
        and records the file's sha256 beside it; reads back through the restricted unpickler."""

        preloaded: tuple[str, dict] | None = None

        def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
            import torch

            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            sums = _checksum_file(path)
            sums_tmp = sums.with_name(sums.name + ".tmp")
            sums_tmp.write_text(f"{_sha256(tmp)}  {path.name}\n")
            if path.is_symlink():
                path.unlink()
            os.replace(tmp, path)
            os.replace(sums_tmp, sums)

        def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> dict:
            if self.preloaded is not None and self.preloaded[0] == str(path):
                checkpoint = self.preloaded[1]
                self.preloaded = None
                return checkpoint
            return read_verified_checkpoint(path)

        def remove_checkpoint(self, path: Any) -> None:
            super().remove_checkpoint(path)
            _checksum_file(Path(path)).unlink(missing_ok=True)

    return AtomicCheckpointIO()


def _rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) random states, as tensors and plain lists."""
    import torch

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resumable_sampler_class() -> type:
    import torch
    from torch.utils.data import DistributedSampler

    class ResumableSampler(DistributedSampler):
        """Seeded per-epoch order, sharded over the processes, that can start mid-epoch.

        A ``DistributedSampler`` (so Lightning does not wrap it) whose rank and world size are read
        when an epoch starts. The order of epoch ``e`` is ``randperm(n, seed + e)``; process ``r``
        of ``w`` takes every ``w``-th index from ``r``, as torch's ``DistributedSampler`` does.
        :meth:`resume` makes the next epoch start after the samples already trained.
        """

        def __init__(self, dataset: Any, *, shuffle: bool, seed: int, drop_last: bool = False) -> None:
            self.dataset = dataset
            self.shuffle = shuffle
            self.seed = int(seed)
            self.drop_last = drop_last
            self.epoch = 0
            self._skip = 0

        @staticmethod
        def world() -> tuple[int, int]:
            """(world size, rank) of the process group, (1, 0) without one."""
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                return dist.get_world_size(), dist.get_rank()
            return 1, 0

        def __len__(self) -> int:
            n, (world, _) = len(self.dataset), self.world()
            return n // world if self.drop_last else math.ceil(n / world)

        def __iter__(self) -> Any:
            n, (world, rank) = len(self.dataset), self.world()
            if self.shuffle:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
            else:
                order = list(range(n))
            total = len(self) * world
            while len(order) < total:  # pad by repeating the start, as DistributedSampler does
                order += order[: total - len(order)]
            mine = order[rank:total:world]
            skip, self._skip = self._skip, 0
            return iter(mine[skip:])

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)

        def resume(self, epoch: int, samples: int) -> None:
            """The next iteration is epoch ``epoch``, starting after its first ``samples`` samples."""
            self.epoch = int(epoch)
            self._skip = int(samples)

    return ResumableSampler


def _fit_callbacks() -> tuple[type, type]:
    import lightning as L

    class ExactResume(L.Callback):
        """Writes the position inside the epoch and the RNG state into every checkpoint and
        restores them, so that a resumed run trains on exactly the samples it had left."""

        def __init__(self, sampler: Any, loader: Any) -> None:
            self.sampler = sampler
            self.loader = loader
            self.batches = 0  # batches trained in the current epoch
            self._offset = 0
            self._rng: dict[str, Any] | None = None

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.batches, self._offset = self._offset, 0

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if self._rng is not None:
                _set_rng_state(self._rng)
                self._rng = None

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            self.batches += 1

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
            checkpoint[_RESUME_KEY] = {"epoch": int(trainer.current_epoch), "batches": int(self.batches),
                                       "rng": _rng_state()}

        def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
            state = checkpoint.get(_RESUME_KEY)
            if not state:
                log.warning("this checkpoint has no sampler position (written by another version): "
                            "the interrupted epoch restarts its sample order")
                return
            epoch, batches = int(state["epoch"]), int(state["batches"])
            if batches >= len(self.loader):  # the epoch was complete
                epoch, batches = epoch + 1, 0
            self.sampler.resume(epoch, batches * int(self.loader.batch_size))
            self._offset = batches
            self._rng = state.get("rng")

    class StopOnNonFiniteLoss(L.Callback):
        """Raises :class:`TrainingError` before the backward pass of a NaN/inf loss."""

        def __init__(self, folder: Path) -> None:
            self.folder = folder

        def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
            import torch

            bad = not bool(torch.isfinite(loss.detach()).all())
            if trainer.world_size > 1:
                bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
            if bad:
                raise TrainingError(
                    f"the training loss is {float(loss.detach().float().mean())} at optimizer step "
                    f"{trainer.global_step} (epoch {trainer.current_epoch}): training stopped before "
                    "this step changed the weights. Fix: lower learning_rate, look for NaN/inf in the "
                    "inputs or labels, or clip gradients (gradient_clip_val=1.0). The last good "
                    f"checkpoint is in {self.folder}."
                )

    return ExactResume, StopOnNonFiniteLoss


def _history_logger(folder: Path | None) -> Any:
    from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
    from lightning.pytorch.utilities import rank_zero_only

    class HistoryLogger(Logger):
        """Keeps every logged metric; rank 0 appends them to ``history.csv`` so history survives
        spawned processes and resumption."""

        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict[str, Any]] = []
            self.path = folder / HISTORY if folder is not None else None

        @property
        def name(self) -> str:
            return "history"

        @property
        def version(self) -> int:
            return 0

        @property
        @rank_zero_experiment
        def experiment(self) -> None:
            return None

        @rank_zero_only
        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            return None

        @rank_zero_only
        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            row = {"step": step}
            row.update({k: float(v) for k, v in metrics.items()})
            self.rows.append(row)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                new = not self.path.exists()
                with open(self.path, "a", newline="") as handle:
                    writer = csv.writer(handle)
                    if new:
                        writer.writerow(["step", "metric", "value"])
                    for k, v in row.items():
                        if k != "step":
                            writer.writerow([step, k, v])

    return HistoryLogger()


def read_history(folder: str | os.PathLike) -> Any:
    """History DataFrame (one row per step, one column per metric) from a checkpoint folder.

    Raises
    ------
    CheckpointError
        When ``history.csv`` exists but is not a history written by :func:`fit`.
    """
    import pandas as pd

    path = Path(folder) / HISTORY
    if not path.exists():
        return pd.DataFrame(columns=["step"])
    if path.stat().st_size == 0:
        return pd.DataFrame(columns=["step"])
    try:
        long = pd.read_csv(path)
        if list(long.columns) != ["step", "metric", "value"]:
            raise ValueError(f"columns {list(long.columns)[:5]} instead of ['step', 'metric', 'value']")
        long["value"] = pd.to_numeric(long["value"], errors="raise")
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds for a damaged CSV
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable training history ({type(exc).__name__}: {cause}). "
            "Fix: delete it; fit rewrites it on the next run."
        ) from exc
    if long.empty:
        return pd.DataFrame(columns=["step"])
    wide = long.pivot_table(index="step", columns="metric", values="value", aggfunc="last")
    wide.columns.name = None
    return wide.reset_index()


def _rows_to_frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    if not rows:
        return pd.DataFrame(columns=["step"])
    frame = pd.DataFrame(rows).groupby("step", as_index=False).last()
    return frame.sort_values("step").reset_index(drop=True)


def _final_history(folder: Path, rows: list[dict[str, Any]]) -> Any:
    """The run's history from ``history.csv``; a damaged file gives a warning and the rows in memory."""
    try:
        history = read_history(folder)
    except CheckpointError as exc:
        log.warning(f"{exc} The history returned now holds only the {len(rows)} rows logged by this run.")
        return _rows_to_frame(rows)
    if history.empty and rows:
        history = _rows_to_frame(rows)
    return history


def _repair_history_tail(path: Path) -> None:
    """A kill during a write can leave a half line: end it so appended rows stay parseable."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


def _as_loader(data: Any, batch_size: int | None, shuffle: bool, seed: int) -> Any:
    """A DataLoader whose order is seeded and resumable mid-epoch (training data)."""
    if data is None:
        return None
    import torch
    from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    sampler_class = _resumable_sampler_class()
    if isinstance(data, DataLoader):
        simple = (type(data) is DataLoader and isinstance(data.sampler, RandomSampler | SequentialSampler)
                  and not getattr(data.sampler, "replacement", False)
                  and getattr(data.sampler, "_num_samples", None) is None and data.batch_size is not None)
        if not (shuffle and simple):
            return data  # custom samplers / batch samplers are left alone
        kwargs = {k: getattr(data, k) for k in ("num_workers", "collate_fn", "pin_memory", "drop_last",
                                                  "timeout", "worker_init_fn", "multiprocessing_context",
                                                  "persistent_workers", "pin_memory_device")}
        if data.num_workers:
            kwargs["prefetch_factor"] = data.prefetch_factor
        sampler = sampler_class(data.dataset, shuffle=isinstance(data.sampler, RandomSampler), seed=seed)
        return DataLoader(data.dataset, batch_size=data.batch_size, sampler=sampler,
                          generator=torch.Generator().manual_seed(seed), **kwargs)
    if isinstance(data, Dataset) or hasattr(data, "__getitem__"):
        generator = torch.Generator().manual_seed(seed)
        if not shuffle:
            return DataLoader(data, batch_size=batch_size or 32, shuffle=False, generator=generator)
        sampler = sampler_class(data, shuffle=True, seed=seed)
        return DataLoader(data, batch_size=batch_size or 32, sampler=sampler, generator=generator)
    raise InputError(f"train/val data must be a DataLoader or a Dataset, got {type(data).__name__}")


def _check_finite_parameters(module: Any, where: str) -> None:
    import torch

    bad = [name for name, p in module.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    if bad:
        raise InputError(
            f"{len(bad)} parameter tensors of the module hold NaN or inf {where}: "
            + ", ".join(bad[:5]) + ". Fix: re-initialise or reload the model; training on them "
            "would give a NaN loss from the first step."
        )


def _check_resumable(checkpoint: dict[str, Any], path: Path, module: Any) -> None:
    """Shapes, optimizer state and finiteness of a checkpoint to resume ``module`` from."""
    import torch

    from .weights import state_dict_mismatches

    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} has no 'state_dict' (it is not a Lightning training checkpoint). Fix: load its "
            "weights into the module yourself and pass resume=False, or use another checkpoint_dir."
        )
    problems = state_dict_mismatches(module.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"{path} does not fit this module: " + " | ".join(problems) + ". Fix: build the module "
            "with the configuration that wrote the checkpoint, or use another checkpoint_dir or "
            "resume=False to start over."
        )
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise CheckpointError(
            f"{path} has no optimizer or loop state (a weights-only save): training cannot continue "
            "from it. Fix: load its weights into the module and pass resume=False, or delete it."
        )
    bad = [k for k, v in state.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"{path} holds NaN or inf weights ({', '.join(bad[:5])}): it was saved after training "
            "diverged. Fix: delete it to resume from an earlier checkpoint, or pass resume=False."
        )


def _resume_from(folder: Path, module: Any, io: Any) -> Path | None:
    """The checkpoint to resume from: ``last.ckpt``, else the newest intact one (with a warning)."""
    last = folder / LAST
    problems: list[str] = []
    candidates: list[Path] = []
    if last.is_symlink() and not last.exists():
        problems.append(f"{last} is a link to {os.readlink(last)}, which does not exist")
    elif last.is_file():
        candidates.append(last)
    others = [p for p in folder.glob("*.ckpt") if p.name != LAST and p.is_file() and not p.is_symlink()]
    candidates += sorted(others, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    if not candidates:
        if problems:
            log.warning(f"{problems[0]} and no other checkpoint is in {folder}: training starts from step 0")
        return None
    for path in candidates:
        try:
            checkpoint = read_verified_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        _check_resumable(checkpoint, path, module)
        if path != last:
            why = "; ".join(problems) if problems else f"there is no {LAST} in {folder}"
            log.warning(f"cannot resume from {last}: {why}. Resuming from {path} instead "
                        f"(global step {checkpoint.get('global_step', '?')}).")
        else:
            log.info(f"resuming from {last}")
        io.preloaded = (str(path), checkpoint)
        return path
    raise CheckpointError(
        f"no readable checkpoint to resume from in {folder}: " + " | ".join(problems)
        + ". Fix: delete the damaged files (or the folder) to start over, or pass resume=False."
    )


def fit(
    module: Any,
    train_data: Any,
    val_data: Any = None,
    *,
    max_epochs: int,
    accelerator: str = "auto",
    devices: Devices = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str = "auto",
    early_stopping: bool | dict[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    every_n_steps: int | None = None,
    resume: bool = True,
    progress: bool = True,
    seed: int | None = None,
    batch_size: int | None = None,
    **trainer_kwargs: Any,
) -> FitResult:
    """Train a LightningModule from a cell, with checkpoints, exact resumption and DDP.

    Parameters
    ----------
    module
        A ``lightning.LightningModule`` that logs ``train_loss`` (and ``val_loss``) with ``self.log``.
    train_data, val_data
        DataLoaders, or Datasets (then ``batch_size`` applies; training data is shuffled with
        ``seed``). A plain ``DataLoader`` with a random or sequential sampler gets fit's
        resumable sampler (same dataset, batch size, collate function and workers).
    max_epochs
        Epochs to train.
    accelerator, devices, num_nodes, strategy
        As in Lightning. ``strategy="auto"`` with several devices picks ``ddp`` (``ddp_notebook`` in
        a notebook); CPU processes talk through gloo.
    precision
        ``"auto"``: bf16-mixed on CUDA with bf16, else 32-true.
    early_stopping
        True (monitor ``val_loss``, patience 3) or a dict of ``EarlyStopping`` arguments.
    checkpoint_dir
        Where checkpoints (each with a ``.sha256`` beside it) and ``history.csv`` go (default: a
        fresh temporary folder).
    every_n_steps
        Also checkpoint every N optimizer steps (default: about 10 per epoch).
    resume
        Continue from ``checkpoint_dir/last.ckpt`` when it exists, mid-epoch included: the same
        samples in the same order as an uninterrupted run. A damaged or missing ``last.ckpt``
        falls back to the newest intact checkpoint of the folder, with a warning naming both.
    progress
        Show a progress bar.
    seed
        Seeds every process and the sample order (default ``bt.settings.seed``).
    batch_size
        Samples per step when ``train_data``/``val_data`` are Datasets (default 32).
    **trainer_kwargs
        Any other ``lightning.Trainer`` argument.

    Returns
    -------
    FitResult with ``history`` (DataFrame: ``step`` plus one column per logged metric),
    ``module`` (trained, on CPU-side weights in this process), checkpoint paths and ``global_step``.

    Raises
    ------
    TrainingError
        The loss became NaN or inf (the message names the step).
    CheckpointError
        No checkpoint of ``checkpoint_dir`` can be resumed from (each cause named), or the one
        found does not fit ``module`` (shapes), has no optimizer state, or holds NaN weights.
    InputError
        Bad data or options, or NaN/inf weights in ``module``.

    Examples
    --------
    >>> result = bt.train.fit(module, train_ds, val_ds, max_epochs=5, batch_size=64)  # doctest: +SKIP
    >>> bt.pl.training_history(result.history)  # doctest: +SKIP
    """
    import tempfile

    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar

    _quiet_lightning()
    seed = settings.seed if seed is None else int(seed)
    L.seed_everything(seed, workers=True, verbose=False)
    if accelerator == "auto":
        accelerator = settings.device.split(":")[0] if settings.device != "auto" else available_accelerator()
    precision = resolve_precision(settings.precision if precision == "auto" else precision, accelerator)
    devices, num_nodes = launcher_layout(devices, num_nodes)
    strategy = choose_strategy(strategy, devices, num_nodes, accelerator)
    if devices == "auto":
        devices = 1 if accelerator == "cpu" else "auto"

    folder = Path(checkpoint_dir) if checkpoint_dir is not None else Path(tempfile.mkdtemp(prefix="bt_fit_"))
    folder.mkdir(parents=True, exist_ok=True)
    train_loader = _as_loader(train_data, batch_size, True, seed)
    val_loader = _as_loader(val_data, batch_size, False, seed)
    if every_n_steps is None:
        try:
            every_n_steps = max(1, len(train_loader) // 10)
        except TypeError:
            every_n_steps = 100
    _check_finite_parameters(module, "before training")

    ExactResume, StopOnNonFiniteLoss = _fit_callbacks()
    callbacks: list[Any] = [
        StopOnNonFiniteLoss(folder),
        ModelCheckpoint(dirpath=folder, filename="step-{step}", every_n_train_steps=every_n_steps,
                        save_last=True, save_top_k=1, monitor=None, enable_version_counter=False),
        ModelCheckpoint(dirpath=folder, filename="epoch-{epoch}", every_n_epochs=1, save_last=True,
                        save_top_k=1, monitor=None, save_on_train_epoch_end=True,
                        enable_version_counter=False),
    ]
    sampler = getattr(train_loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "resume"):
        callbacks.insert(0, ExactResume(sampler, train_loader))
    if val_loader is not None:
        callbacks.append(ModelCheckpoint(dirpath=folder, filename="best", monitor="val_loss", mode="min",
                                         save_top_k=1, enable_version_counter=False))
    if early_stopping:
        kwargs = {"monitor": "val_loss", "patience": 3, "mode": "min"}
        if isinstance(early_stopping, dict):
            kwargs.update(early_stopping)
        if val_loader is None and kwargs["monitor"].startswith("val"):
            raise InputError("early_stopping monitors a validation metric: pass val_data, or early_stopping=None")
        callbacks.append(EarlyStopping(**kwargs))
    if progress and settings.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, (every_n_steps or 10) // 2)))
    history_logger = _history_logger(folder)
    checkpoint_io = _atomic_checkpoint_io()

    ckpt_path = None
    if resume:
        found = _resume_from(folder, module, checkpoint_io)
        ckpt_path = str(found) if found is not None else None
        _repair_history_tail(folder / HISTORY)
    elif (folder / HISTORY).exists():
        (folder / HISTORY).unlink()

    trainer_defaults = dict(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=precision,
        callbacks=callbacks,
        logger=history_logger,
        enable_progress_bar=bool(progress and settings.progress),
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, every_n_steps or 50)),
        plugins=[checkpoint_io],
        deterministic="warn",
        num_sanity_val_steps=0,
    )
    trainer_defaults.update(trainer_kwargs)
    trainer = L.Trainer(**trainer_defaults)
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    except RuntimeError as exc:
        if not _SHAPE_ERROR.search(str(exc)):
            raise
        raise InputError(
            f"a batch does not fit the module at optimizer step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}): {str(exc).strip().splitlines()[0]}. Fix: check that the "
            "data's feature sizes match the model's input sizes (and the labels the head's outputs)."
        ) from exc

    history = _final_history(folder, history_logger.rows)
    best = None
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) == "val_loss" and cb.best_model_path:
            best = cb.best_model_path
    last = folder / LAST
    return FitResult(
        history=history,
        module=module,
        checkpoint_dir=folder,
        last_checkpoint=last if last.exists() else None,
        best_model_path=best,
        global_step=int(trainer.global_step),
        trainer=trainer,
    )


def steps_per_epoch(n_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch of ``n_samples`` (sharded over ``world_size`` processes)."""
    return math.ceil(math.ceil(n_samples / world_size) / batch_size)
