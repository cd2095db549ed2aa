"""Exceptions that name what was wrong, where, and how to fix it."""

from __future__ import annotations


class BiomedToolkitError(ValueError):
    """Base class of every error raised on purpose by biomed_toolkit."""


class InputError(BiomedToolkitError):
    """User data does not fit what a tool needs (e.g. non-count data where counts are needed)."""


class GeneMatchError(InputError):
    """Genes of the data do not match the model vocabulary."""


class PromptError(InputError):
    """A MAMMAL prompt, residue or SMILES is invalid."""


class DicomError(InputError):
    """A DICOM file is corrupt, unsupported or needs a missing decoder."""


class CheckpointError(BiomedToolkitError):
    """A checkpoint does not fit its configuration or is unsafe to load."""


class TrainingError(BiomedToolkitError):
    """Training cannot go on (e.g. the loss became NaN); the message names the step and the fix."""


class OfflineError(BiomedToolkitError, OSError):
    """A model is needed from the hub but the machine is offline or the hub is unreachable."""
