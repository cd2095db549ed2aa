"""Data for the mammography domain: phantom case sets and real DICOM test files.

No public mammogram ships in any installed package; pydicom and pydicom-data hold real DICOM
files (computed radiography, LUT examples, compressed variants) that exercise the reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.io import Case

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["phantom_cases", "dicom_test_file", "dicom_examples", "DICOM_TEST_FILES"]

#: Real DICOM files useful for the reader, and what each exercises.
DICOM_TEST_FILES = {
    "RG1_UNCI.dcm": "CR, MONOCHROME1, 15-bit, PixelSpacing 0\\0 (pydicom-data)",
    "RG1_J2KI.dcm": "same image, JPEG 2000 (pydicom-data)",
    "RG1_J2KR.dcm": "same image, JPEG 2000 lossless (pydicom-data)",
    "RG1_UNCR.dcm": "same image, uncompressed (pydicom-data)",
    "RG3_UNCI.dcm": "CR, MONOCHROME1, 10-bit, series Laterality only, no spacing (pydicom-data)",
    "RG3_J2KI.dcm": "same image, JPEG 2000 (pydicom-data)",
    "vlut_04.dcm": "VOI LUT sequence (pydicom-data)",
    "mlut_18.dcm": "modality LUT sequence (pydicom-data)",
    "MR_small.dcm": "MR (non-mammography modality) (pydicom)",
    "MR_truncated.dcm": "truncated pixel data (pydicom)",
    "rtplan.dcm": "RT plan: no pixel data (pydicom)",
}


def dicom_test_file(name: str) -> Path:
    """Path of a real DICOM test file from pydicom / pydicom-data (offline).

    Examples
    --------
    >>> img = bt.mammo.read(dicom_test_file("RG1_UNCI.dcm"), warn_modality=False)
    """
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name)
    except Exception as e:  # noqa: BLE001 - pydicom may try a download for unknown names
        path = None
        err = e
    else:
        err = None
    if path is None:
        from biomed_toolkit._extras import install_command

        raise InputError(
            f"DICOM test file {name!r} is not installed ({err or 'not found'}); "
            f"install it with: {install_command('pydicom_data')}"
        )
    return Path(path)


def dicom_examples() -> pd.DataFrame:
    """Table of the real DICOM test files: name, what it exercises, path (None if missing).

    Examples
    --------
    >>> bt.datasets.dicom_examples()  # doctest: +SKIP
    """
    import pandas as pd

    rows = []
    for name, what in DICOM_TEST_FILES.items():
        try:
            path: Path | None = dicom_test_file(name)
        except InputError:
            path = None
        rows.append({"name": name, "description": what, "path": path,
                     "installed": path is not None})
    return pd.DataFrame(rows, columns=["name", "description", "path", "installed"])


def phantom_cases(seeds: Sequence[int], **phantom_kwargs: Any) -> list[Case]:
    """A list of phantom cases, one per seed (see :func:`biomed_toolkit.mammo.phantom`).

    ``n_lesions`` defaults to 2-4, drawn from each seed.

    Examples
    --------
    >>> cases = phantom_cases(range(90_000, 90_010), density="c")
    """
    import numpy as np

    from biomed_toolkit.mammo.phantom import phantom

    out = []
    for s in seeds:
        kw = dict(phantom_kwargs)
        kw.setdefault("n_lesions", int(np.random.default_rng(int(s)).integers(2, 5)))
        out.append(phantom(int(s), **kw))
    return out
