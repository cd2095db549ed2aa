"""Global settings in force for every tool: ``bt.settings``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import InputError

_DEVICES = ("auto", "cpu", "cuda", "mps")
_PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "64-true", "32", "16", "bf16")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class Settings:
    """What is in force: device, precision, seed, verbosity, cache folder, offline mode, progress.

    Environment overrides: ``BIOMED_TOOLKIT_CACHE`` (cache folder), ``HF_HUB_OFFLINE`` or
    ``BIOMED_TOOLKIT_OFFLINE`` (offline), ``BIOMED_TOOLKIT_DEVICE``.

    Examples
    --------
    >>> import biomed_toolkit as bt
    >>> bt.settings.device = "cpu"
    >>> bt.settings.seed = 0
    """

    def __init__(self) -> None:
        self._device = os.environ.get("BIOMED_TOOLKIT_DEVICE", "auto")
        self._precision = "auto"
        self._seed = 0
        self._verbosity = 2
        self._cache_dir: Path | None = None
        self._offline: bool | None = None
        self._progress = True
        self._num_threads: int | None = None
        from .log import set_verbosity

        set_verbosity(self._verbosity)

    # device -------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``."""
        return self._device

    @device.setter
    def device(self, value: Any) -> None:
        value = str(value)
        if value.split(":")[0] not in _DEVICES:
            raise InputError(f"unknown device {value!r}: choose one of {', '.join(_DEVICES)}")
        self._device = value

    @property
    def resolved_device(self) -> str:
        """The device ``"auto"`` stands for on this machine."""
        from .device import resolve_device

        return str(resolve_device(self._device))

    # precision ----------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """Lightning precision; ``"auto"`` is bf16-mixed on CUDA with bf16 support, else 32-true."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if str(value) not in _PRECISIONS:
            raise InputError(f"unknown precision {value!r}: choose one of {', '.join(_PRECISIONS)}")
        self._precision = str(value)

    # seed / verbosity / progress ---------------------------------------------------------
    @property
    def seed(self) -> int:
        """Default random seed of tools that draw random numbers."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)

    @property
    def verbosity(self) -> int:
        """0 errors, 1 warnings, 2 info (default), 3 debug."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        from .log import set_verbosity

        if int(value) not in (0, 1, 2, 3):
            raise InputError(f"verbosity must be 0, 1, 2 or 3, got {value!r}")
        self._verbosity = int(value)
        set_verbosity(self._verbosity)

    @property
    def progress(self) -> bool:
        """Show progress bars on long work."""
        return self._progress

    @progress.setter
    def progress(self, value: bool) -> None:
        self._progress = bool(value)

    @property
    def num_threads(self) -> int | None:
        """CPU threads torch may use (None: torch's default). On a busy shared machine 1 is often fastest."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, value: int | None) -> None:
        if value is not None:
            value = int(value)
            if value < 1:
                raise InputError(f"num_threads must be a positive integer or None, got {value}")
            import torch

            torch.set_num_threads(value)
        self._num_threads = value

    # cache / offline ----------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        """Where downloaded models live (``BIOMED_TOOLKIT_CACHE``, default ``~/.cache/biomed_toolkit``)."""
        if self._cache_dir is not None:
            return self._cache_dir
        env = os.environ.get("BIOMED_TOOLKIT_CACHE")
        return Path(env).expanduser() if env else Path.home() / ".cache" / "biomed_toolkit"

    @cache_dir.setter
    def cache_dir(self, value: str | os.PathLike | None) -> None:
        self._cache_dir = None if value is None else Path(value).expanduser()

    @property
    def offline(self) -> bool:
        """Never touch the network (``HF_HUB_OFFLINE=1`` or ``BIOMED_TOOLKIT_OFFLINE=1`` set it)."""
        if self._offline is not None:
            return self._offline
        return _env_flag("HF_HUB_OFFLINE") or _env_flag("BIOMED_TOOLKIT_OFFLINE")

    @offline.setter
    def offline(self, value: bool | None) -> None:
        self._offline = None if value is None else bool(value)

    # display ------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """Settings in force, with ``auto`` values resolved in brackets."""
        device = self.device
        if device == "auto":
            device = f"auto ({self.resolved_device})"
        precision = self.precision
        if precision == "auto":
            from .device import resolve_precision

            precision = f"auto ({resolve_precision('auto', self.device)})"
        return {
            "device": device,
            "precision": precision,
            "seed": self.seed,
            "verbosity": self.verbosity,
            "cache_dir": str(self.cache_dir),
            "offline": self.offline,
            "progress": self.progress,
            "num_threads": "auto" if self.num_threads is None else self.num_threads,
        }

    def __repr__(self) -> str:
        body = "\n".join(f"  {k}: {v}" for k, v in self.as_dict().items())
        return f"biomed_toolkit settings\n{body}"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td style='text-align:left'><b>{k}</b></td><td style='text-align:left'>{v}</td></tr>"
            for k, v in self.as_dict().items()
        )
        return f"<table><caption>biomed_toolkit settings</caption>{rows}</table>"


settings = Settings()
