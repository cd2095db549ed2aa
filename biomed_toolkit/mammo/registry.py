"""Official mammography checkpoints (none are published: only the embedded demo exists) and the
pickled class paths their files may hold.

Light on purpose (no torch import): read through ``biomed_toolkit.FAMILY_REGISTRIES``.
"""

from __future__ import annotations

from biomed_toolkit.core.hub import ModelSpec

MODELS: list[ModelSpec] = []

PICKLE_CLASSES: list[str] = []

LEGACY_RENAMES: dict[str, dict[str, str]] = {}
