"""Reading mammography DICOM into display-ready images with normalised orientation.

The intensity pipeline follows DICOM PS3.3 C.11: modality LUT (or rescale) -> VOI LUT or window
(LINEAR, LINEAR_EXACT, SIGMOID) -> MONOCHROME1 / ``PresentationLUTShape INVERSE`` inversion.
Pixels come out as float32 in [0, 1] with tissue bright, and flipped horizontally when needed so
that the chest wall is on the left and the nipple points right.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from biomed_toolkit.core.errors import DicomError, InputError

__all__ = [
    "MammoImage",
    "Case",
    "ModalityWarning",
    "read",
    "read_case",
    "DECODER_HINT",
]

DECODER_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle"

#: SOP class UIDs of digital mammography.
MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"

# ViewCodeSequence meanings / codes (SNOMED-RT and SNOMED CT) -> short view names.
_VIEW_MEANINGS = {
    "cranio-caudal exaggerated laterally": "XCCL",
    "cranio-caudal exaggerated medially": "XCCM",
    "medio-lateral oblique": "MLO",
    "latero-medial oblique": "LMO",
    "medio-lateral": "ML",
    "latero-medial": "LM",
    "caudo-cranial": "FB",
    "cranio-caudal": "CC",
}
_VIEW_CODES = {
    "R-10242": "CC",
    "399162004": "CC",
    "R-10226": "MLO",
    "399368009": "MLO",
    "R-10224": "ML",
    "399260004": "ML",
    "R-10228": "LM",
    "399352003": "LM",
}


class ModalityWarning(UserWarning):
    """The file is a valid image but not a mammogram (Modality is not MG)."""


@dataclass(repr=False)
class MammoImage:
    """One mammographic view ready for display and analysis.

    Attributes
    ----------
    pixels
        float32 array (rows, columns) in [0, 1], tissue bright, chest wall on the left.
    laterality
        ``"L"``, ``"R"`` or None when unknown.
    view
        ``"CC"``, ``"MLO"``, ``"ML"``, ... or None.
    pixel_spacing
        (row, column) spacing in mm, or None when missing or zero (never 0).
    flipped
        True when the stored image was mirrored left-right to put the chest wall on the left.
    orientation_source
        ``"tags"``, ``"intensity"`` or ``"none"``: what decided the flip.
    spacing_source, laterality_source, view_source, voi
        Which tag (or fallback) gave the value.
    """

    pixels: np.ndarray
    laterality: str | None = None
    view: str | None = None
    pixel_spacing: tuple[float, float] | None = None
    flipped: bool = False
    orientation_source: str = "none"
    spacing_source: str = "none"
    laterality_source: str = "none"
    view_source: str = "none"
    voi: str = "none"
    photometric: str = "MONOCHROME2"
    modality: str | None = None
    sop_class: str | None = None
    for_processing: bool = False
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """Short name such as ``"LCC"`` or ``"RMLO"``."""
        return f"{self.laterality or '?'}{self.view or '?'}"

    @property
    def mm_per_pixel(self) -> float | None:
        """Mean pixel spacing in mm, or None."""
        if self.pixel_spacing is None:
            return None
        return float(np.mean(self.pixel_spacing))

    def __repr__(self) -> str:
        sp = (
            f"{self.pixel_spacing[0]:.3f}x{self.pixel_spacing[1]:.3f} mm ({self.spacing_source})"
            if self.pixel_spacing
            else "unknown"
        )
        lines = [
            f"MammoImage {self.name}  {self.shape[0]}x{self.shape[1]} px",
            f"  laterality: {self.laterality} ({self.laterality_source})   view: {self.view} "
            f"({self.view_source})",
            f"  pixel spacing: {sp}",
            f"  orientation: chest wall left, flipped={self.flipped} ({self.orientation_source})",
            f"  intensity: {self.photometric}, VOI {self.voi}, range "
            f"[{float(self.pixels.min()):.3f}, {float(self.pixels.max()):.3f}]",
            f"  modality: {self.modality}  sop: {self.sop_class}"
            + ("  (FOR PROCESSING)" if self.for_processing else ""),
        ]
        if self.path:
            lines.append(f"  path: {self.path}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        rows = [line.strip().split(": ", 1) for line in repr(self).splitlines()[1:]]
        body = "".join(
            f"<tr><td style='text-align:left'><b>{html.escape(k)}</b></td>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in (r if len(r) == 2 else (r[0], "") for r in rows)
        )
        title = html.escape(repr(self).splitlines()[0])
        return f"<table><caption>{title}</caption>{body}</table>"


@dataclass(repr=False)
class Case:
    """One breast seen in two views (CC and MLO), with ground truth when it is a phantom.

    Attributes
    ----------
    cc, mlo
        The two :class:`MammoImage` views.
    lesions
        Phantom ground truth (one row per lesion with its 3D position and its projected
        positions ``cc_row, cc_col, mlo_row, mlo_col`` and radii in pixels), None for real data.
    nipple
        ``{"cc": (row, col), "mlo": (row, col)}`` when known (phantoms), else None.
    case_id
        A short identifier.
    """

    cc: MammoImage
    mlo: MammoImage
    lesions: pd.DataFrame | None = None
    nipple: dict[str, tuple[float, float]] | None = None
    case_id: str = "case"
    meta: dict[str, Any] = field(default_factory=dict)

    def view(self, name: str) -> MammoImage:
        """Return the ``"cc"`` or ``"mlo"`` view."""
        key = name.lower()
        if key not in ("cc", "mlo"):
            raise InputError(f"view must be 'cc' or 'mlo', got {name!r}")
        return self.cc if key == "cc" else self.mlo

    @property
    def laterality(self) -> str | None:
        return self.cc.laterality or self.mlo.laterality

    def __repr__(self) -> str:
        n = 0 if self.lesions is None else len(self.lesions)
        truth = f"{n} lesions with ground truth" if self.lesions is not None else "no ground truth"
        return (
            f"Case {self.case_id!r} ({self.laterality or '?'} breast): "
            f"CC {self.cc.shape[0]}x{self.cc.shape[1]}, MLO {self.mlo.shape[0]}x{self.mlo.shape[1]}, "
            f"{truth}"
        )


# ----------------------------------------------------------------------------------------------
# reading


def _dcmread(path: str | os.PathLike, *, stop_before_pixels: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = Path(path)
    if not p.exists():
        raise InputError(f"DICOM file not found: {p}")
    if p.is_dir():
        raise InputError(f"{p} is a folder; use bt.mammo.read_case(folder) for a folder of views")
    try:
        return pydicom.dcmread(p, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as e:
        raise DicomError(
            f"{p} is not a DICOM file ({e}). If it lacks the 128-byte preamble, it may still be "
            "readable with pydicom.dcmread(path, force=True)."
        ) from e
    except (EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise DicomError(f"could not parse {p}: the file looks truncated or corrupt ({e})") from e


def _pixel_array(ds, path) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = getattr(getattr(ds, "SOPClassUID", None), "name", None) or "unknown SOP class"
        raise DicomError(
            f"{path} holds no image (no PixelData; SOP class {sop}, modality "
            f"{getattr(ds, 'Modality', '?')}). Pass an image file such as a Digital Mammography "
            "X-Ray Image."
        )
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except RuntimeError as e:
        msg = str(e)
        if "missing" in msg or "plugin" in msg or "decod" in msg.lower():
            name = getattr(ts, "name", str(ts))
            raise DicomError(
                f"{path} uses the compressed transfer syntax '{name}' and no installed decoder "
                f"can read it. Install the decoders with:\n    {DECODER_HINT}\n({msg})"
            ) from e
        raise DicomError(f"could not decode the pixel data of {path}: {msg}") from e
    except (ValueError, EOFError, IndexError) as e:
        raise DicomError(
            f"could not decode the pixel data of {path}: the file looks truncated or corrupt ({e})"
        ) from e
    arr = np.asarray(arr)
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: first frame
    if arr.ndim != 2:
        raise DicomError(
            f"{path}: expected a single grayscale frame, got an array of shape {arr.shape} "
            f"(PhotometricInterpretation {getattr(ds, 'PhotometricInterpretation', '?')})"
        )
    return arr


def _window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Window to [0, 1] following DICOM PS3.3 C.11.2.1.2."""
    function = (function or "LINEAR").upper().strip()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (arr - center) / max(width, 1e-12)))
    if function == "LINEAR_EXACT":
        w = max(width, 1e-12)
        out = (arr - (center - w / 2.0)) / w
    else:  # LINEAR (the default)
        w = max(width - 1.0, 1e-12)
        out = (arr - (center - 0.5)) / w + 0.5
    return np.clip(out, 0.0, 1.0)


def _apply_intensity(ds, raw: np.ndarray, *, voi: str, window_index: int, path) -> tuple:
    from pydicom.pixels import apply_modality_lut, apply_voi

    arr = np.asarray(apply_modality_lut(raw, ds))
    if arr.dtype.kind == "f" and np.array_equal(arr, np.round(arr)):
        arr = arr.astype(np.int64)  # integer LUT input keeps apply_voi exact (and quiet)
    sop = str(getattr(ds, "SOPClassUID", ""))
    for_processing = sop == MG_PROCESSING or str(
        getattr(ds, "PresentationIntentType", "")
    ).upper() == "FOR PROCESSING"
    used = "none"
    out = None
    want_lut = voi in ("auto", "lut")
    want_window = voi in ("auto", "window")
    if voi not in ("auto", "lut", "window", "none"):
        raise InputError(f"voi must be 'auto', 'lut', 'window' or 'none', got {voi!r}")
    if voi == "auto" and for_processing:
        want_lut = want_window = False  # raw data: a display window would be applied blindly
    if want_lut and "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        idx = min(window_index, len(ds.VOILUTSequence) - 1)
        item = ds.VOILUTSequence[idx]
        nbits = int(item.LUTDescriptor[2])
        out = np.asarray(apply_voi(arr, ds, index=idx), dtype=np.float64) / float(2**nbits - 1)
        arr = arr.astype(np.float64)
        used = f"LUT[{idx}]"
    elif want_window and "WindowCenter" in ds and "WindowWidth" in ds:
        centers = ds.WindowCenter
        widths = ds.WindowWidth
        centers = list(centers) if not isinstance(centers, int | float) else [centers]
        widths = list(widths) if not isinstance(widths, int | float) else [widths]
        idx = min(window_index, len(centers) - 1, len(widths) - 1)
        function = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR")
        c, w = float(centers[idx]), float(widths[idx])
        if w > 0:
            out = _window(arr, c, w, function)
            used = f"{function.upper()} window[{idx}] c={c:g} w={w:g}"
    arr = arr.astype(np.float64, copy=False)
    if out is None:
        # No usable VOI: robust min-max between the 0.5 and 99.5 percentiles.
        lo, hi = np.percentile(arr, [0.5, 99.5])
        if hi <= lo:
            lo, hi = float(arr.min()), float(arr.max()) + 1e-6
        out = np.clip((arr - lo) / (hi - lo), 0.0, 1.0)
        used = "percentile 0.5-99.5" if used == "none" else used
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    shape = str(getattr(ds, "PresentationLUTShape", "")).upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        out = 1.0 - out
    return out.astype(np.float32), used, photometric, for_processing


def _laterality(ds) -> tuple[str | None, str]:
    for key in ("ImageLaterality", "Laterality", "FrameLaterality"):
        v = str(getattr(ds, key, "") or "").upper().strip()
        if v in ("L", "R"):
            return v, key
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if seq in ds and len(ds[seq].value):
            item = ds[seq].value[0]
            if "FrameAnatomySequence" in item and len(item.FrameAnatomySequence):
                v = str(getattr(item.FrameAnatomySequence[0], "FrameLaterality", "")).upper()
                if v in ("L", "R"):
                    return v, "FrameLaterality"
    return None, "none"


def _view(ds) -> tuple[str | None, str]:
    if "ViewCodeSequence" in ds and len(ds.ViewCodeSequence):
        item = ds.ViewCodeSequence[0]
        meaning = str(getattr(item, "CodeMeaning", "")).lower()
        for text, name in _VIEW_MEANINGS.items():
            if text in meaning:
                return name, "ViewCodeSequence"
        code = str(getattr(item, "CodeValue", ""))
        if code in _VIEW_CODES:
            return _VIEW_CODES[code], "ViewCodeSequence"
    v = str(getattr(ds, "ViewPosition", "") or "").upper().strip()
    if v:
        return v, "ViewPosition"
    return None, "none"


def _spacing(ds) -> tuple[tuple[float, float] | None, str]:
    def ok(v):
        try:
            vals = [float(x) for x in v]
        except (TypeError, ValueError):
            return None
        if len(vals) != 2 or not all(np.isfinite(vals)) or min(vals) <= 0:
            return None
        return (vals[0], vals[1])

    if "PixelSpacing" in ds and ds.PixelSpacing is not None:
        sp = ok(ds.PixelSpacing)
        if sp:
            return sp, "PixelSpacing"
    if "ImagerPixelSpacing" in ds and ds.ImagerPixelSpacing is not None:
        sp = ok(ds.ImagerPixelSpacing)
        if sp:
            mag = getattr(ds, "EstimatedRadiographicMagnificationFactor", None)
            try:
                mag = float(mag) if mag is not None else None
            except (TypeError, ValueError):
                mag = None
            if mag and mag > 0:
                return (sp[0] / mag, sp[1] / mag), "ImagerPixelSpacing/magnification"
            return sp, "ImagerPixelSpacing"
    return None, "none"


def _chest_wall_side_from_tags(ds) -> str | None:
    """'left' or 'right' from PatientOrientation's row direction, else None."""
    po = getattr(ds, "PatientOrientation", None)
    if po is None:
        return None
    vals = list(po) if not isinstance(po, str) else po.split("\\")
    if not vals:
        return None
    row_dir = str(vals[0]).upper()
    # The first value is the direction of increasing column index.
    if "A" in row_dir:
        return "left"  # columns run towards the nipple: chest wall at column 0
    if "P" in row_dir:
        return "right"
    return None


def chest_wall_side_from_intensity(pixels: np.ndarray) -> tuple[str, float]:
    """Guess the chest-wall side from where the tissue is ('left' or 'right', confidence ratio).

    The breast touches the image edge at the chest wall, so the outer column strip on that side
    holds more tissue than the opposite strip.
    """
    h, w = pixels.shape
    k = max(1, w // 8)
    left = float(np.mean(pixels[:, :k]))
    right = float(np.mean(pixels[:, w - k :]))
    hi, lo = max(left, right), min(left, right)
    ratio = hi / max(lo, 1e-6)
    return ("left" if left >= right else "right"), ratio


def read(
    path: str | os.PathLike,
    *,
    normalize_orientation: bool = True,
    voi: str = "auto",
    window_index: int = 0,
    warn_modality: bool = True,
) -> MammoImage:
    """Read one mammography DICOM file into a display-ready :class:`MammoImage`.

    Parameters
    ----------
    path
        A DICOM file (uncompressed or any transfer syntax pydicom + pylibjpeg decode).
    normalize_orientation
        Mirror the image so the chest wall is on the left (PatientOrientation first, then an
        intensity check when the tag is missing or contradicted by the image).
    voi
        ``"auto"`` (VOI LUT sequence, else window, none for For-Processing images), ``"lut"``,
        ``"window"`` or ``"none"`` (robust percentile scaling).
    window_index
        Which window / VOI LUT to use when several are present.
    warn_modality
        Warn (:class:`ModalityWarning`) when Modality is not MG.

    Returns
    -------
    MammoImage
        Pixels float32 in [0, 1] plus laterality, view, pixel spacing and provenance.

    Raises
    ------
    DicomError
        Not a DICOM file, truncated, no pixel data, or a compressed file without a decoder.

    Examples
    --------
    >>> from pydicom.data import get_testdata_file
    >>> img = bt.mammo.read(get_testdata_file("RG1_UNCI.dcm"), warn_modality=False)
    >>> img.pixel_spacing is None
    True
    """
    ds = _dcmread(path)
    raw = _pixel_array(ds, path)
    pixels, used, photometric, for_processing = _apply_intensity(
        ds, raw, voi=voi, window_index=window_index, path=path
    )
    modality = str(getattr(ds, "Modality", "") or "") or None
    if warn_modality and modality != "MG":
        warnings.warn(
            f"{path}: Modality is {modality!r}, not 'MG' (mammography); laterality, view and "
            "orientation may not mean what they do for a mammogram. Pass warn_modality=False "
            "to silence this.",
            ModalityWarning,
            stacklevel=2,
        )
    laterality, lat_src = _laterality(ds)
    view, view_src = _view(ds)
    spacing, sp_src = _spacing(ds)
    flipped, orient_src = False, "none"
    if normalize_orientation:
        tag_side = _chest_wall_side_from_tags(ds)
        int_side, ratio = chest_wall_side_from_intensity(pixels)
        side = tag_side
        orient_src = "tags"
        if tag_side is None:
            side, orient_src = int_side, "intensity"
        elif tag_side != int_side and ratio > 3.0:
            warnings.warn(
                f"{path}: PatientOrientation puts the chest wall on the {tag_side} but the "
                f"tissue is clearly on the {int_side} (ratio {ratio:.1f}); trusting the image.",
                UserWarning,
                stacklevel=2,
            )
            side, orient_src = int_side, "intensity (tags contradicted)"
        if side == "right":
            pixels = np.ascontiguousarray(pixels[:, ::-1])
            flipped = True
    sop = getattr(getattr(ds, "SOPClassUID", None), "name", None)
    meta = {
        k: str(getattr(ds, k))
        for k in ("PatientOrientation", "PatientID", "StudyInstanceUID", "SOPInstanceUID")
        if k in ds
    }
    meta["BitsStored"] = int(getattr(ds, "BitsStored", 0) or 0)
    meta["TransferSyntax"] = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    return MammoImage(
        pixels=pixels,
        laterality=laterality,
        view=view,
        pixel_spacing=spacing,
        flipped=flipped,
        orientation_source=orient_src,
        spacing_source=sp_src,
        laterality_source=lat_src,
        view_source=view_src,
        voi=used,
        photometric=photometric,
        modality=modality,
        sop_class=sop,
        for_processing=for_processing,
        path=str(path),
        meta=meta,
    )


def read_case(
    cc: str | os.PathLike,
    mlo: str | os.PathLike | None = None,
    *,
    laterality: str | None = None,
    warn_modality: bool = True,
    **read_kwargs: Any,
) -> Case:
    """Read one breast's two views, from two files or from a folder.

    Parameters
    ----------
    cc
        The CC file, or a folder holding the views (picked by ViewCodeSequence / ViewPosition).
    mlo
        The MLO file (omit when ``cc`` is a folder).
    laterality
        ``"L"`` or ``"R"`` to choose a side when the folder holds both breasts.
    warn_modality, read_kwargs
        Passed to :func:`read`.

    Returns
    -------
    Case

    Examples
    --------
    >>> case = bt.mammo.read_case("exam/")            # doctest: +SKIP
    >>> case = bt.mammo.read_case("lcc.dcm", "lmlo.dcm")  # doctest: +SKIP
    """
    p = Path(cc)
    if p.is_dir():
        if mlo is not None:
            raise InputError("pass either a folder or two files (cc, mlo), not a folder and a file")
        rows = []
        for f in sorted(p.rglob("*")):
            if not f.is_file():
                continue
            try:
                ds = _dcmread(f, stop_before_pixels=True)
            except (DicomError, InputError):
                continue
            view, _ = _view(ds)
            lat, _ = _laterality(ds)
            rows.append((f, view, lat))
        if not rows:
            raise InputError(f"no DICOM file found in {p}")
        if laterality is not None:
            laterality = laterality.upper()
            rows = [r for r in rows if r[2] == laterality]
        sides = sorted({r[2] for r in rows if r[2]})
        if len(sides) > 1:
            raise InputError(
                f"{p} holds both breasts ({', '.join(sides)}); pass laterality='L' or 'R'"
            )

        def pick(names):
            hits = [r[0] for r in rows if r[1] in names]
            if not hits:
                found = ", ".join(f"{r[0].name}: {r[1]}" for r in rows)
                raise InputError(f"no {'/'.join(names)} view in {p} (found {found})")
            return hits[0]

        cc_path, mlo_path = pick(("CC", "XCCL", "XCCM")), pick(("MLO", "ML", "LM", "LMO"))
    else:
        if mlo is None:
            raise InputError("read_case needs the MLO file too: read_case(cc_path, mlo_path)")
        cc_path, mlo_path = p, Path(mlo)
    a = read(cc_path, warn_modality=warn_modality, **read_kwargs)
    b = read(mlo_path, warn_modality=warn_modality, **read_kwargs)
    if a.laterality and b.laterality and a.laterality != b.laterality:
        warnings.warn(
            f"the CC ({a.laterality}) and MLO ({b.laterality}) views are of different breasts",
            UserWarning,
            stacklevel=2,
        )
    return Case(cc=a, mlo=b, case_id=Path(cc_path).stem)
