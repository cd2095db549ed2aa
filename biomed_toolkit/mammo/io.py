"""Reading mammography DICOM into display-ready images with normalised orientation.

The intensity pipeline follows DICOM PS3.3 C.11: modality LUT (or rescale) -> VOI LUT or window
(LINEAR, LINEAR_EXACT, SIGMOID) -> MONOCHROME1 / ``PresentationLUTShape INVERSE`` inversion.
Pixels come out as float32 in [0, 1] with tissue bright, and flipped horizontally when needed so
that the chest wall is on the left and the nipple points right.

Damaged files give a :class:`~biomed_toolkit.core.errors.DicomError` naming the file, the tag
and the fix, never a raw pydicom / numpy / zlib exception. The rule for each kind of damage:

- Image Pixel tags (Rows, Columns, BitsAllocated, ...) missing or invalid, pixel data whose
  size does not match them, a wrong TransferSyntaxUID: refused (the shape would be a guess).
- RescaleSlope / RescaleIntercept not a finite number (or a slope of 0): refused, as the
  pixel values would be meaningless and no honest fallback exists.
- WindowCenter / WindowWidth not a number, not finite, width <= 0, or blanking the image
  (e.g. ``WindowWidth=1e308``): the window only shapes the display, so ``voi="auto"`` scales
  from the data (0.5-99.5 percentiles) with a warning naming the tags; ``voi="window"``
  refuses.
- A damaged VOI LUT item (no descriptor, 0 or more than 16 bits): refused, with
  ``voi="window"`` / ``voi="none"`` as the way around.
- A damaged element the reader does not need (a private tag, a text field): dropped with a
  warning. A missing TransferSyntaxUID on uncompressed data: read as parsed, with a warning.
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


def check_finite_pixels(pixels: np.ndarray, what: str) -> None:
    """Refuse pixels holding NaN or inf: detection on them finds nothing, silently.

    Parameters
    ----------
    pixels
        A 2D image.
    what
        Which view, for the message (e.g. ``"case.cc"``).

    Raises
    ------
    InputError
        Naming the view, how many pixels are bad and how to replace them.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise InputError(f"{what}: pixels must be a 2D numeric array, got {arr.dtype} of shape "
                         f"{arr.shape}")
    if arr.dtype.kind == "f":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputError(
                f"{what} has {bad} NaN / infinite pixels of {arr.size}; candidates and matches "
                "computed on them would be empty or meaningless. Replace them first, e.g. "
                "img.pixels = np.nan_to_num(img.pixels, nan=0.0, posinf=1.0, neginf=0.0)."
            )


# ----------------------------------------------------------------------------------------------
# reading


#: Image Pixel module tags the reader needs, with what each one says (for the error texts).
_IMAGE_TAGS = {
    "Rows": "(0028,0010) Rows",
    "Columns": "(0028,0011) Columns",
    "BitsAllocated": "(0028,0100) BitsAllocated",
    "BitsStored": "(0028,0101) BitsStored",
    "PixelRepresentation": "(0028,0103) PixelRepresentation",
}
#: Tags whose damage refuses the file; any other undecodable element is dropped with a warning.
_NEEDED_TAGS = {
    *_IMAGE_TAGS, "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames", "PixelData",
    "FloatPixelData", "DoubleFloatPixelData", "RescaleSlope", "RescaleIntercept",
    "ModalityLUTSequence", "VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction",
    "PresentationLUTShape", "PlanarConfiguration",
}
_FIX_TAG = (
    "Correct the tag in the file (e.g. with pydicom: ds = pydicom.dcmread(path); "
    "ds.{kw} = ...; ds.save_as(path)) or ask the data provider for an intact copy."
)
#: A window that maps the data's whole range onto less than one grey level of 256 shows nothing.
_MIN_DISPLAY_SPAN = 1.0 / 256.0


def _tag_name(tag) -> str:
    from pydicom.datadict import keyword_for_tag

    return f"{tag} {keyword_for_tag(tag) or 'private/unknown tag'}"


def _decode_elements(ds, path, dropped: list[str], where: str = "") -> None:
    """Decode every element now, so damage surfaces here with its tag instead of later.

    pydicom converts raw elements lazily, on first access, so a damaged value would otherwise
    raise (or pass as a wrong type) deep inside the pipeline.
    """
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
            if elem.VR == "SQ" and elem.value is not None:
                for i, item in enumerate(elem.value):
                    _decode_elements(item, path, dropped, f"{where}{elem.keyword or tag}[{i}] > ")
        except DicomError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoding failure is file damage
            from pydicom.datadict import keyword_for_tag

            if not where and keyword_for_tag(tag) in _NEEDED_TAGS:
                raise DicomError(
                    f"{path}: the tag {_tag_name(tag)} cannot be decoded ({type(e).__name__}: "
                    f"{e}). " + _FIX_TAG.format(kw=keyword_for_tag(tag))
                ) from e
            del ds[tag]
            dropped.append(f"{where}{_tag_name(tag)}")


def _dcmread(path: str | os.PathLike, *, stop_before_pixels: bool = False):
    import zlib

    import pydicom
    from pydicom.errors import InvalidDicomError

    p = Path(path)
    if not p.exists():
        raise InputError(f"DICOM file not found: {p}")
    if p.is_dir():
        raise InputError(f"{p} is a folder; use bt.mammo.read_case(folder) for a folder of views")
    try:
        with warnings.catch_warnings():
            # pydicom warns about every odd value while parsing; the checks below say what matters.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(p, stop_before_pixels=stop_before_pixels)
            dropped: list[str] = []
            _decode_elements(ds, p, dropped)
    except DicomError:
        raise
    except InvalidDicomError as e:
        raise DicomError(
            f"{p} is not a DICOM file ({e}). If it lacks the 128-byte preamble, it may still be "
            "readable with pydicom.dcmread(path, force=True)."
        ) from e
    except zlib.error as e:
        raise DicomError(
            f"{p}: the file meta (0002,0010) TransferSyntaxUID says Deflated Explicit VR Little "
            f"Endian, but the data set is not deflated (zlib: {e}). The TransferSyntaxUID is "
            "wrong; rewrite the file with the syntax it was really written in (e.g. "
            "1.2.840.10008.1.2.1, Explicit VR Little Endian)."
        ) from e
    except MemoryError as e:
        raise DicomError(f"could not parse {p}: an element claims an impossible length") from e
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise DicomError(
            f"could not parse {p}: the file looks truncated or corrupt ({type(e).__name__}: {e})"
        ) from e
    if dropped:
        warnings.warn(
            f"{p}: ignoring {len(dropped)} damaged element(s) the reader does not need: "
            f"{', '.join(dropped[:5])}{' ...' if len(dropped) > 5 else ''}",
            UserWarning,
            stacklevel=3,
        )
    return ds


def _tag_int(ds, keyword: str, path, *, lo: int, hi: int) -> int:
    """One integer tag, checked against [lo, hi]; missing or damaged raises naming the tag."""
    label = _IMAGE_TAGS.get(keyword, keyword)
    if keyword not in ds or ds[keyword].value in (None, "", b""):
        raise DicomError(
            f"{path}: the required tag {label} is missing or empty, so the image size or pixel "
            f"format is unknown. " + _FIX_TAG.format(kw=keyword)
        )
    value = ds[keyword].value
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise DicomError(
            f"{path}: {label} is {value!r}; it must be an integer in [{lo}, {hi}]. "
            + _FIX_TAG.format(kw=keyword)
        )
    return value


def _tag_floats(ds, keyword: str, path) -> list[float] | None:
    """The numbers of a DS / numeric tag (None when absent or empty); text that is not a
    number raises naming the tag (pydicom keeps an invalid DS as its raw string)."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        items = [v.strip() for v in value.split("\\")]
    elif isinstance(value, int | float):
        items = [value]
    else:
        items = list(value)
    out = []
    for v in items:
        try:
            out.append(float(v))
        except (TypeError, ValueError, OverflowError):
            raise DicomError(
                f"{path}: {keyword} holds {ds[keyword].value!r}, which is not a number. "
                + _FIX_TAG.format(kw=keyword)
            ) from None
    return out


def _check_image_module(ds, path) -> None:
    """Check the Image Pixel module before decoding, so pydicom never guesses a shape."""
    from pydicom.pixels.utils import get_expected_length
    from pydicom.uid import (
        UID,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    rows = _tag_int(ds, "Rows", path, lo=1, hi=65535)
    cols = _tag_int(ds, "Columns", path, lo=1, hi=65535)
    bits = _tag_int(ds, "BitsAllocated", path, lo=1, hi=64)
    if bits not in (1, 8, 16, 32, 64):
        raise DicomError(
            f"{path}: (0028,0100) BitsAllocated is {bits}; it must be 1, 8, 16, 32 or 64. "
            + _FIX_TAG.format(kw="BitsAllocated")
        )
    if "PixelData" not in ds:
        return  # float pixel data: pydicom checks its own length
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    data = ds.PixelData
    encapsulated = isinstance(data, bytes) and data[:4] == b"\xfe\xff\x00\xe0"
    if not ts:
        if encapsulated:
            raise DicomError(
                f"{path}: the file meta has no (0002,0010) TransferSyntaxUID and the pixel data "
                "is compressed, so its codec is unknown. Ask for a copy with a complete file meta."
            )
        implicit, little = ds.original_encoding
        if implicit and not little:
            raise DicomError(
                f"{path}: the file meta has no (0002,0010) TransferSyntaxUID and the data set "
                "parses as implicit-VR big-endian, which no transfer syntax allows; the file is "
                "damaged. Ask for a copy with a complete file meta."
            )
        ts = (ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian) if little else (
            ExplicitVRBigEndian)
        if meta is None:
            from pydicom.dataset import FileMetaDataset

            ds.file_meta = meta = FileMetaDataset()
        meta.TransferSyntaxUID = ts
        warnings.warn(
            f"{path}: the file meta has no (0002,0010) TransferSyntaxUID; reading the pixels as "
            f"{ts.name}, the encoding the data set was parsed with.",
            UserWarning,
            stacklevel=3,
        )
    ts = UID(str(ts))
    if not ts.is_transfer_syntax:
        raise DicomError(
            f"{path}: the file meta (0002,0010) TransferSyntaxUID {str(ts)!r} is not a transfer "
            "syntax pydicom knows, so the pixel data cannot be decoded. The file meta is damaged "
            "or the file uses a private syntax; ask for a copy in a standard transfer syntax."
        )
    if ts.is_encapsulated or encapsulated or not isinstance(data, bytes):
        return
    try:
        expected = int(get_expected_length(ds, unit="bytes"))
    except Exception as e:  # noqa: BLE001 - a damaged SamplesPerPixel / NumberOfFrames
        raise DicomError(
            f"{path}: the Image Pixel tags do not describe a valid image ({type(e).__name__}: "
            f"{e}). " + _FIX_TAG.format(kw="NumberOfFrames")
        ) from e
    row_bytes = max(1, cols * max(bits, 8) // 8)
    # Less than a row of extra bytes is padding pydicom trims; more means another shape.
    if len(data) >= expected + row_bytes or len(data) < expected:
        raise DicomError(
            f"{path}: the PixelData holds {len(data)} bytes but Rows x Columns x "
            f"SamplesPerPixel x NumberOfFrames x BitsAllocated ({rows} x {cols} x "
            f"{getattr(ds, 'SamplesPerPixel', 1)} x {getattr(ds, 'NumberOfFrames', 1) or 1} x "
            f"{bits} bits) needs {expected}: the file is truncated, or Rows, Columns or "
            "BitsAllocated is wrong. Ask for an intact copy; reading it anyway would show the "
            "image with the wrong shape."
        )


def _pixel_array(ds, path) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        if ts == "1.2.840.10008.1.2.2" and b"\xe0\x7f\x10\x00" in Path(path).read_bytes():
            # A little-endian PixelData tag read as big-endian becomes (E07F,1000).
            raise DicomError(
                f"{path}: the file meta (0002,0010) TransferSyntaxUID says Explicit VR Big "
                "Endian, but the data set is written little-endian (its PixelData tag reads "
                "byte-swapped). The TransferSyntaxUID is wrong; rewrite it as "
                "1.2.840.10008.1.2.1 (Explicit VR Little Endian)."
            )
        sop = getattr(getattr(ds, "SOPClassUID", None), "name", None) or "unknown SOP class"
        raise DicomError(
            f"{path} holds no image (no PixelData; SOP class {sop}, modality "
            f"{getattr(ds, 'Modality', '?')}). Pass an image file such as a Digital Mammography "
            "X-Ray Image."
        )
    _check_image_module(ds, path)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the size check above replaces pydicom's warnings
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
    except MemoryError as e:
        raise DicomError(f"could not decode the pixel data of {path}: impossible size") from e
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - Rust decoders (pylibjpeg-rle) panic with a
        # pyo3 PanicException, a BaseException, on damaged frames
        raise DicomError(
            f"could not decode the pixel data of {path}: the file looks truncated or corrupt "
            f"({type(e).__name__}: {e})"
        ) from e
    arr = np.asarray(arr)
    if arr.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: first frame
    if arr.ndim != 2:
        raise DicomError(
            f"{path}: expected a single grayscale frame, got an array of shape {arr.shape} "
            f"(PhotometricInterpretation {getattr(ds, 'PhotometricInterpretation', '?')})"
        )
    if arr.shape != (ds.Rows, ds.Columns):
        raise DicomError(
            f"{path}: the decoded image is {arr.shape[0]} x {arr.shape[1]} but Rows x Columns "
            f"say {ds.Rows} x {ds.Columns}; the file is damaged. Ask for an intact copy."
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


def _modality(ds, raw: np.ndarray, path) -> np.ndarray:
    """Modality LUT or rescale; slope / intercept must be finite numbers and the slope non-zero."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" not in ds:
        for key in ("RescaleSlope", "RescaleIntercept"):
            vals = _tag_floats(ds, key, path)
            if vals is None and key in ds:
                raise DicomError(f"{path}: {key} is present but empty. " + _FIX_TAG.format(kw=key))
            if vals is None:
                continue
            if len(vals) != 1 or not np.isfinite(vals[0]) or (key == "RescaleSlope" and vals[0] == 0):
                raise DicomError(
                    f"{path}: {key} is {ds[key].value!r}; it must be one finite number"
                    + (" other than 0" if key == "RescaleSlope" else "")
                    + ", or every pixel value would be meaningless. " + _FIX_TAG.format(kw=key)
                )
    else:
        _check_lut_items(ds, "ModalityLUTSequence", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.asarray(apply_modality_lut(raw, ds))
    except Exception as e:  # noqa: BLE001 - pydicom's LUT code raises many types on bad tags
        raise DicomError(
            f"{path}: the modality LUT / rescale tags cannot be applied ({type(e).__name__}: "
            f"{e}). " + _FIX_TAG.format(kw="RescaleSlope")
        ) from e
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr))) if arr.dtype.kind == "f" else 0
    if bad:
        raise DicomError(
            f"{path}: {bad} of {arr.size} pixels are NaN or infinite after the modality LUT "
            "(float pixel data or a RescaleSlope / RescaleIntercept too large); there is no "
            "image to show. " + _FIX_TAG.format(kw="RescaleSlope")
        )
    if arr.size and float(np.ptp(raw)) > 0 and float(np.ptp(arr)) == 0:
        raise DicomError(
            f"{path}: the stored pixels vary but RescaleSlope {ds.get('RescaleSlope')!r} / "
            f"RescaleIntercept {ds.get('RescaleIntercept')!r} (or the modality LUT) map them all "
            "to one value, so the image would be blank. " + _FIX_TAG.format(kw="RescaleIntercept")
        )
    return arr


def _check_lut_items(ds, keyword: str, path) -> None:
    """Every LUT item needs a 3-value LUTDescriptor with 1-16 bits and its LUTData."""
    for i, item in enumerate(ds[keyword].value or []):
        desc = item.get("LUTDescriptor")  # by keyword: the value itself
        ok = (
            desc is not None
            and not isinstance(desc, str | bytes)
            and len(desc) == 3
            and all(isinstance(v, int) for v in desc)
            and 1 <= desc[2] <= 16
            and "LUTData" in item
            and item.LUTData is not None
            and len(item.LUTData) > 0
        )
        if not ok:
            raise DicomError(
                f"{path}: {keyword} item {i} is damaged: it needs a LUTDescriptor of 3 integers "
                f"(entries, first value, 1-16 bits) and LUTData, got LUTDescriptor {desc!r}"
                f"{'' if 'LUTData' in item else ' and no LUTData'}. Read with voi='window' or "
                "voi='none' to skip a damaged VOI LUT, or correct the tags."
            )


def _window_tags(ds, index: int, path) -> tuple[int, float, float] | None:
    """(index used, center, width) of window ``index``, or None when the file has no window."""
    centers = _tag_floats(ds, "WindowCenter", path)
    widths = _tag_floats(ds, "WindowWidth", path)
    if not centers or not widths:
        return None
    idx = min(index, len(centers) - 1, len(widths) - 1)
    return idx, centers[idx], widths[idx]


def _window_problem(arr: np.ndarray, c: float, w: float, out: np.ndarray | None) -> str | None:
    """Why a window cannot be used (None when it can)."""
    if not (np.isfinite(c) and np.isfinite(w)):
        return "is not finite"
    if w <= 0:
        return "has a width <= 0"
    varied = out is not None and float(arr.max()) > float(arr.min())
    if varied and float(out.max()) - float(out.min()) < _MIN_DISPLAY_SPAN:
        return "maps the whole pixel range onto one grey level (a blank image)"
    return None


def _apply_intensity(ds, raw: np.ndarray, *, voi: str, window_index: int, path) -> tuple:
    """Modality -> VOI -> presentation, following PS3.3 C.11.

    A damaged or non-finite modality rescale refuses the file (no honest fallback exists); a
    window that is not finite, has no width or blanks the image is display-only, so with
    ``voi="auto"`` it is replaced by percentile scaling with a warning naming the tag, and with
    ``voi="window"`` it is refused. A damaged VOI LUT is refused with the way around it.
    """
    from pydicom.pixels import apply_voi

    if voi not in ("auto", "lut", "window", "none"):
        raise InputError(f"voi must be 'auto', 'lut', 'window' or 'none', got {voi!r}")
    arr = _modality(ds, raw, path)
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
    if voi == "auto" and for_processing:
        want_lut = want_window = False  # raw data: a display window would be applied blindly
    if want_lut and "VOILUTSequence" in ds and len(ds.VOILUTSequence or []):
        _check_lut_items(ds, "VOILUTSequence", path)
        idx = min(window_index, len(ds.VOILUTSequence) - 1)
        nbits = int(ds.VOILUTSequence[idx].LUTDescriptor[2])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lut_out = np.asarray(apply_voi(arr, ds, index=idx), dtype=np.float64)
        except Exception as e:  # noqa: BLE001 - pydicom's LUT code raises many types on bad tags
            raise DicomError(
                f"{path}: VOILUTSequence item {idx} cannot be applied ({type(e).__name__}: {e}). "
                "Read with voi='window' or voi='none' to skip it."
            ) from e
        out = np.clip(lut_out / float(2**nbits - 1), 0.0, 1.0)
        arr = arr.astype(np.float64)
        used = f"LUT[{idx}]"
    elif want_window:
        try:
            window = _window_tags(ds, window_index, path)
        except DicomError as e:  # not a number: display-only, so the data can stand in
            if voi == "window":
                raise
            warnings.warn(f"{e} Scaling from the data (0.5-99.5 percentiles) instead.",
                          UserWarning, stacklevel=3)
            window, used = None, "percentile 0.5-99.5 (window tags unusable)"
        if window is None and voi == "window":
            raise DicomError(f"{path} has no WindowCenter / WindowWidth; use voi='auto' or 'none'")
        if window is not None:
            idx, c, w = window
            function = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR").upper().strip()
            if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
                function = "LINEAR"  # an unknown term: the default, as when the tag is absent
            arr = arr.astype(np.float64, copy=False)
            problem = _window_problem(arr, c, w, None)
            if problem is None:
                with np.errstate(all="ignore"):
                    out = _window(arr, c, w, function)
                problem = _window_problem(arr, c, w, out)
            if problem is None:
                used = f"{function.upper()} window[{idx}] c={c:g} w={w:g}"
            else:
                msg = (f"{path}: the window WindowCenter={c!r} / WindowWidth={w!r} {problem}")
                if voi == "window":
                    raise DicomError(f"{msg}; read with voi='auto' or voi='none' (scaling from "
                                     "the data), or correct the tags.")
                warnings.warn(f"{msg}; scaling from the data (0.5-99.5 percentiles) instead.",
                              UserWarning, stacklevel=3)
                out, used = None, "percentile 0.5-99.5 (window tags unusable)"
    arr = arr.astype(np.float64, copy=False)
    if out is None:
        # No usable VOI: robust min-max between the 0.5 and 99.5 percentiles.
        lo, hi = np.percentile(arr, [0.5, 99.5])
        if hi <= lo:
            lo, hi = float(arr.min()), float(arr.max()) + 1e-6
        with np.errstate(all="ignore"):
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
        Not a DICOM file, truncated, no pixel data, a compressed file without a decoder, a
        damaged or missing Image Pixel tag (Rows, Columns, BitsAllocated, ...), pixel data
        whose size does not match Rows x Columns, a non-finite or non-numeric RescaleSlope /
        RescaleIntercept, a damaged VOI LUT, or (with ``voi="window"``) an unusable window.
        Each message names the file and the tag.

    Warns
    -----
    UserWarning
        With ``voi="auto"``, a window that is not finite, has no width or would blank the
        image (e.g. ``WindowWidth=1e308``) is replaced by percentile scaling, naming the tags;
        damaged elements the reader does not need (e.g. a private tag) are ignored.

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
    if not np.isfinite(pixels).all():  # e.g. a percentile range beyond float64
        raise DicomError(
            f"{path}: the pixel values span a range too large to display (beyond float64); "
            "the RescaleSlope / RescaleIntercept or the pixel data are damaged."
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
    bits_stored = ds.get("BitsStored")
    meta["BitsStored"] = bits_stored if isinstance(bits_stored, int) else 0
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


#: Views of the cranio-caudal kind and of the oblique / lateral kind (PS3.16 CID 4014).
_CC_VIEWS = ("CC", "XCCL", "XCCM", "FB")
_MLO_VIEWS = ("MLO", "ML", "LM", "LMO")


def _check_view_kinds(cc: MammoImage, mlo: MammoImage) -> None:
    """Refuse two views of the same kind, or CC and MLO passed the wrong way round."""
    kind = {**{v: "CC" for v in _CC_VIEWS}, **{v: "MLO" for v in _MLO_VIEWS}}
    k_cc, k_mlo = kind.get(cc.view or ""), kind.get(mlo.view or "")
    if k_cc is None or k_mlo is None or (k_cc, k_mlo) == ("CC", "MLO"):
        return  # unknown views cannot be checked; the tags said nothing
    if k_cc == k_mlo:
        raise InputError(
            f"read_case needs one CC-type and one MLO-type view, but both files are {k_cc} "
            f"views ({cc.path}: {cc.view} from {cc.view_source}; {mlo.path}: {mlo.view} from "
            f"{mlo.view_source}). Pass the other view of the breast as the "
            f"{'mlo' if k_cc == 'CC' else 'cc'} argument."
        )
    raise InputError(
        f"read_case(cc, mlo) got the views the wrong way round: {cc.path} is {cc.view} and "
        f"{mlo.path} is {mlo.view}. Swap the two arguments."
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
        The MLO file (omit when ``cc`` is a folder). Two views of the same kind (two CC, or
        two MLO / ML), the same file twice, or the views swapped raise :class:`InputError`.
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

        cc_path, mlo_path = pick(_CC_VIEWS), pick(_MLO_VIEWS)
    else:
        if mlo is None:
            raise InputError("read_case needs the MLO file too: read_case(cc_path, mlo_path)")
        cc_path, mlo_path = p, Path(mlo)
        if cc_path.resolve() == mlo_path.resolve():
            raise InputError(
                f"read_case got the same file twice ({cc_path}); pass the CC file and the MLO "
                "file of one breast: read_case(cc_path, mlo_path)"
            )
    a = read(cc_path, warn_modality=warn_modality, **read_kwargs)
    b = read(mlo_path, warn_modality=warn_modality, **read_kwargs)
    _check_view_kinds(a, b)
    if a.laterality and b.laterality and a.laterality != b.laterality:
        warnings.warn(
            f"the CC ({a.laterality}) and MLO ({b.laterality}) views are of different breasts",
            UserWarning,
            stacklevel=2,
        )
    return Case(cc=a, mlo=b, case_id=Path(cc_path).stem)
