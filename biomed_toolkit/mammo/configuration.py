"""Configuration of the dual-view matcher: patch geometry, network sizes, fusion features."""

from __future__ import annotations

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
    ``detector_channels`` the candidate heatmap network (dilated convolutions on a 2 mm grid);
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
    detector_in: int = 3
    detector_channels: tuple[int, ...] = (12, 12, 12, 12)
    fusion_features: tuple[str, ...] = FUSION_FEATURES

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.detector_channels = tuple(int(c) for c in self.detector_channels)
        self.fusion_features = tuple(str(f) for f in self.fusion_features)
        for name in ("in_channels", "patch_size", "convs_per_stage", "embed_dim", "hidden",
                     "detector_in"):
            if int(getattr(self, name)) <= 0:
                raise CheckpointError(f"SiameseConfig.{name} must be positive, got {getattr(self, name)}")
        if self.patch_mm <= 0 or not 0 <= self.dropout < 1:
            raise CheckpointError("SiameseConfig: patch_mm must be > 0 and dropout in [0, 1)")
        if not self.channels or min(self.channels) <= 0:
            raise CheckpointError(f"SiameseConfig.channels must be positive, got {self.channels}")
        if not self.detector_channels or min(self.detector_channels) <= 0:
            raise CheckpointError("SiameseConfig.detector_channels must be positive")
        unknown = sorted(set(self.fusion_features) - set(FUSION_FEATURES))
        if unknown or not self.fusion_features:
            raise CheckpointError(f"SiameseConfig.fusion_features: unknown {unknown}; known "
                                  f"{list(FUSION_FEATURES)}")
