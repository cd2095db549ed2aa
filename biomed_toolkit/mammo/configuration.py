"""Configuration of the dual-view matcher: patch geometry, network sizes, fusion features."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

from biomed_toolkit.core.config import BaseConfig, UnknownKeys
from biomed_toolkit.core.errors import CheckpointError

__all__ = ["SiameseConfig", "FUSION_FEATURES"]

#: Pair features the calibrated fusion combines (see :func:`biomed_toolkit.mammo.matching.pair_features`).
FUSION_FEATURES = (
    "siamese_logit",
    "abs_depth_diff_mm",
    "sq_depth_diff",
    "abs_rel_depth_diff",
    "det_logit_cc",
    "det_logit_mlo",
)


@dataclass
class SiameseConfig(BaseConfig):
    """Architecture and patch geometry of a :class:`~biomed_toolkit.mammo.modeling.SiameseMatcher`.

    ``in_channels`` .. ``dropout`` size the Siamese branches and comparison head;
    ``detector_in`` .. ``detector_norm`` the candidate heatmap network (dilated convolutions on
    a 2 mm grid over the channels of :func:`~biomed_toolkit.mammo.candidates.detector_input`);
    ``fusion_features`` the inputs of the calibrated logistic fusion, in order.
    """

    model_type: ClassVar[str | None] = "mammo-siamese"
    unknown_keys: ClassVar[UnknownKeys] = "error"

    in_channels: int = 2  # z-scored patch + centred display intensity
    patch_size: int = 24
    patch_mm: float = 32.0
    channels: tuple[int, ...] = (16, 32, 64)
    convs_per_stage: int = 1
    embed_dim: int = 64
    hidden: int = 64
    dropout: float = 0.1
    # Defaults: the first demo's detector, so folders written before these keys still load.
    detector_in: int = 3
    detector_channels: tuple[int, ...] = (12, 12, 12, 12)
    detector_dilations: tuple[int, ...] | None = None  # None: 1, 2, 4, ... per layer
    detector_norm: bool = False  # batch norm after each detector convolution
    fusion_features: tuple[str, ...] = FUSION_FEATURES

    def __post_init__(self) -> None:
        # Checked here, at load time: a bad value would otherwise only fail later inside match.
        for name, (lo, hi) in _INT_RANGES.items():
            setattr(self, name, _check_int(name, getattr(self, name), lo, hi))
        if self.in_channels not in (1, 2):
            raise _bad("in_channels", self.in_channels, "1 (z-scored patch) or 2 (plus intensity)")
        if self.detector_in != 3:
            raise _bad("detector_in", self.detector_in, "3 (the detector input channels)")
        if not isinstance(self.detector_norm, bool):
            raise _bad("detector_norm", self.detector_norm, "true or false")
        self.patch_mm = _check_float("patch_mm", self.patch_mm, 1.0, 500.0)
        self.dropout = _check_float("dropout", self.dropout, 0.0, 0.99)
        self.channels = _check_ints("channels", self.channels)
        self.detector_channels = _check_ints("detector_channels", self.detector_channels)
        if self.detector_dilations is not None:
            self.detector_dilations = _check_ints("detector_dilations", self.detector_dilations)
        if self.detector_dilations is not None and len(self.detector_dilations) != len(
                self.detector_channels):
            raise _bad("detector_dilations", list(self.detector_dilations),
                       f"one dilation per detector layer ({len(self.detector_channels)}, as "
                       "detector_channels)")
        if self.patch_size < 2 ** len(self.channels):
            raise _bad("patch_size", self.patch_size,
                       f"at least 2**len(channels) = {2 ** len(self.channels)} (one 2x pooling "
                       "per stage)")
        if isinstance(self.fusion_features, str) or not isinstance(self.fusion_features,
                                                                   list | tuple):
            raise _bad("fusion_features", self.fusion_features, f"a list of names from "
                       f"{list(FUSION_FEATURES)}")
        self.fusion_features = tuple(self.fusion_features)
        unknown = [f for f in self.fusion_features if f not in FUSION_FEATURES]
        if unknown or not self.fusion_features:
            raise _bad("fusion_features", list(self.fusion_features),
                       f"a non-empty list of names from {list(FUSION_FEATURES)} (unknown: {unknown})")


#: Integer fields and their allowed ranges.
_INT_RANGES = {
    "in_channels": (1, 2),
    "patch_size": (4, 512),
    "convs_per_stage": (1, 16),
    "embed_dim": (1, 4096),
    "hidden": (1, 4096),
    "detector_in": (1, 16),
}


def _bad(name: str, value: object, want: str) -> CheckpointError:
    return CheckpointError(
        f"SiameseConfig: key {name!r} is {value!r}; it must be {want}. Fix {name!r} in the "
        "model's config.json (or the SiameseConfig argument)."
    )


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise _bad(name, value, f"an integer in [{lo}, {hi}]")
    return int(value)


def _check_float(name: str, value: object, lo: float, hi: float) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or not lo <= float(value) <= hi:  # type: ignore[arg-type]
        raise _bad(name, value, f"a number in [{lo:g}, {hi:g}]")
    return float(value)  # type: ignore[arg-type]


def _check_ints(name: str, value: object) -> tuple[int, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
        raise _bad(name, value, "a non-empty list of positive integers")
    return tuple(_check_int(f"{name}[{i}]", v, 1, 4096) for i, v in enumerate(value))
