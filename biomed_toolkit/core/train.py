"""Training callable from a notebook cell: ``bt.train.fit`` on top of Lightning.

- a notebook-friendly progress bar and a returned history DataFrame (``bt.pl.training_history``);
- several devices through DDP; in a notebook a fork-based (notebook-safe) DDP is picked;
  the same call runs multi-node (``num_nodes``);
- atomic checkpoints every N steps and at each epoch end; ``resume=True`` continues from the last
  one, mid-epoch included, and ends at the same global step as an uninterrupted run.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .device import available_accelerator, resolve_precision
from .errors import InputError
from .log import get_logger
from .settings import settings

log = get_logger(__name__)

LAST = "last.ckpt"
HISTORY = "history.csv"


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


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where spawn-based DDP cannot pickle the notebook's code)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def choose_strategy(strategy: str, devices: Any, num_nodes: int, accelerator: str) -> str:
    """``"auto"`` with several processes: ``ddp_notebook`` in a notebook (fork), else ``ddp``."""
    if strategy != "auto":
        if in_notebook() and strategy in ("ddp", "ddp_spawn") and accelerator != "cpu":
            log.warning(f"strategy {strategy!r} cannot run inside a notebook: using 'ddp_notebook'")
            return "ddp_notebook"
        return strategy
    n = _n_devices(devices, accelerator)
    if n * num_nodes <= 1:
        return "auto"
    return "ddp_notebook" if in_notebook() else "ddp"


def _n_devices(devices: Any, accelerator: str) -> int:
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


def _atomic_checkpoint_io() -> Any:
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Writes to ``<name>.tmp`` then renames: a kill never leaves a corrupt checkpoint.

        Reads back through the restricted unpickler.
        """

        def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
            import torch

            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)

        def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> dict:
            from .safe_pickle import load_checkpoint

            return load_checkpoint(path, map_location=map_location or "cpu")

    return AtomicCheckpointIO()


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
    """History DataFrame (one row per step, one column per metric) from a checkpoint folder."""
    import pandas as pd

    path = Path(folder) / HISTORY
    if not path.exists():
        return pd.DataFrame(columns=["step"])
    long = pd.read_csv(path)
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


def _as_loader(data: Any, batch_size: int | None, shuffle: bool, seed: int) -> Any:
    if data is None:
        return None
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset) or hasattr(data, "__getitem__"):
        import torch

        generator = torch.Generator().manual_seed(seed)
        return DataLoader(data, batch_size=batch_size or 32, shuffle=shuffle, generator=generator)
    raise InputError(f"train/val data must be a DataLoader or a Dataset, got {type(data).__name__}")


def fit(
    module: Any,
    train_data: Any,
    val_data: Any = None,
    *,
    max_epochs: int,
    accelerator: str = "auto",
    devices: Any = "auto",
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
    """Train a LightningModule from a cell, with checkpoints, resumption and DDP.

    Parameters
    ----------
    module
        A ``lightning.LightningModule`` that logs ``train_loss`` (and ``val_loss``) with ``self.log``.
    train_data, val_data
        DataLoaders, or Datasets (then ``batch_size`` applies; training data is shuffled with ``seed``).
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
        Where checkpoints and ``history.csv`` go (default: a fresh temporary folder).
    every_n_steps
        Also checkpoint every N optimizer steps (default: about 10 per epoch).
    resume
        Continue from ``checkpoint_dir/last.ckpt`` when it exists.
    progress
        Show a progress bar.
    seed
        Seeds every process (default ``bt.settings.seed``).
    **trainer_kwargs
        Any other ``lightning.Trainer`` argument.

    Returns
    -------
    FitResult with ``history`` (DataFrame: ``step`` plus one column per logged metric),
    ``module`` (trained, on CPU-side weights in this process), checkpoint paths and ``global_step``.

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

    callbacks: list[Any] = [
        ModelCheckpoint(dirpath=folder, filename="step-{step}", every_n_train_steps=every_n_steps,
                        save_last=True, save_top_k=1, monitor=None, enable_version_counter=False),
        ModelCheckpoint(dirpath=folder, filename="epoch-{epoch}", every_n_epochs=1, save_last=True,
                        save_top_k=1, monitor=None, save_on_train_epoch_end=True,
                        enable_version_counter=False),
    ]
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

    ckpt_path = None
    last = folder / LAST
    if resume and last.exists():
        ckpt_path = str(last)
        log.info(f"resuming from {last}")
    elif not resume and (folder / HISTORY).exists():
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
        plugins=[_atomic_checkpoint_io()],
        deterministic="warn",
        num_sanity_val_steps=0,
    )
    trainer_defaults.update(trainer_kwargs)
    trainer = L.Trainer(**trainer_defaults)
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)

    history = read_history(folder)
    if history.empty and history_logger.rows:
        history = _rows_to_frame(history_logger.rows)
    best = None
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) == "val_loss" and cb.best_model_path:
            best = cb.best_model_path
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
