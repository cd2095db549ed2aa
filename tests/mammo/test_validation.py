"""Bad input to the mammography entry points gives a correct result or a package error (#15).

Groups: non-finite / non-numeric DICOM tags, structurally damaged DICOM files, NaN views at
match entry, same-kind views in ``read_case``, the matcher configuration, and a hypothesis fuzz
of the reader over mutated bytes of a ``write_dicom`` file and of pydicom's test files.

The fuzz tests run ``BT_FUZZ_EXAMPLES`` examples per target (default 300, a few seconds each);
a nightly run can raise it, e.g. ``BT_FUZZ_EXAMPLES=10000 pytest tests/mammo/test_validation.py
-k fuzz``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence

from biomed_toolkit.core.errors import BiomedToolkitError, CheckpointError, DicomError, InputError
from biomed_toolkit.mammo.datasets import dicom_test_file
from biomed_toolkit.mammo.io import read, read_case
from biomed_toolkit.mammo.phantom import phantom, write_dicom

FUZZ_EXAMPLES = int(os.environ.get("BT_FUZZ_EXAMPLES", "300"))


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> tuple[Path, Path]:
    """A small phantom written as two valid DICOM files (CC, MLO)."""
    folder = tmp_path_factory.mktemp("views")
    case = phantom(3, n_lesions=2, shape=(96, 80), laterality="L")
    cc, mlo = write_dicom(case, folder)
    return cc, mlo


def _edit(src: Path, out: Path, change) -> Path:
    ds = pydicom.dcmread(src)
    change(ds)
    ds.save_as(out, enforce_file_format=False)
    return out


def _set(**tags):
    def change(ds):
        for k, v in tags.items():
            setattr(ds, k, v)

    return change


def _patch(src: Path, out: Path, old: bytes, new: bytes) -> Path:
    data = src.read_bytes()
    assert data.count(old) == 1, old
    out.write_bytes(data.replace(old, new))
    return out


def _relabel(src: Path, out: Path, transfer_syntax: str | None) -> Path:
    """Write the data set as explicit VR little endian under another (or no) TransferSyntaxUID.

    pydicom re-encodes on save, so the body and the file meta are written separately here.
    """
    ds = pydicom.dcmread(src)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    fm = ds.file_meta
    if transfer_syntax is None:
        del fm.TransferSyntaxUID
    else:
        fm.TransferSyntaxUID = transfer_syntax
    write_file_meta_info(meta, fm, enforce_standard=transfer_syntax is not None)
    out.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + body.getvalue())
    return out


def _lut_item(bits: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, bits]
    item.LUTData = (np.arange(4096, dtype=np.uint16) * 16).tobytes()
    return item


# 1. non-finite and non-numeric tags --------------------------------------------------------


@pytest.mark.parametrize(
    "tags",
    [
        {"WindowCenter": "NaN"},
        {"WindowWidth": "NaN"},
        {"WindowWidth": "1e308"},
        {"WindowCenter": "-1e308"},
        {"WindowWidth": "0"},
        {"WindowCenter": "inf"},
    ],
)
def test_unusable_window_falls_back_to_the_data_with_a_warning(views, tmp_path, tags):
    path = _edit(views[0], tmp_path / "w.dcm", _set(**tags))
    with pytest.warns(UserWarning, match="WindowCenter=.*WindowWidth=.*percentiles"):
        img = read(path)
    reference = read(path, voi="none")
    assert np.isfinite(img.pixels).all() and img.pixels.std() > 0.1
    np.testing.assert_array_equal(img.pixels, reference.pixels)
    assert img.voi.startswith("percentile") and "unusable" in img.voi
    with pytest.raises(DicomError, match="WindowWidth") as e:
        read(path, voi="window")
    assert str(path) in str(e.value) and "voi='auto'" in str(e.value)


def test_non_numeric_window_center_is_named(views, tmp_path):
    # pydicom keeps an invalid DS as its raw text; it cannot be written through pydicom.
    path = _patch(views[0], tmp_path / "abc.dcm", b"\x28\x00\x50\x10DS\x04\x002048",
                  b"\x28\x00\x50\x10DS\x04\x00abcd")
    with pytest.warns(UserWarning, match="WindowCenter holds 'abcd'"):
        img = read(path)
    assert np.isfinite(img.pixels).all() and img.pixels.std() > 0.1
    with pytest.raises(DicomError, match="WindowCenter holds 'abcd', which is not a number"):
        read(path, voi="window")


@pytest.mark.parametrize(
    ("tag", "value"),
    [("RescaleSlope", "NaN"), ("RescaleSlope", "inf"), ("RescaleSlope", "0"),
     ("RescaleIntercept", "NaN"), ("RescaleIntercept", "-inf"), ("RescaleIntercept", "1e308")],
)
def test_non_finite_rescale_is_refused_naming_the_tag(views, tmp_path, tag, value):
    path = _edit(views[0], tmp_path / "r.dcm", _set(**{tag: value}))
    with pytest.raises(DicomError, match=tag) as e:
        read(path)
    assert str(path) in str(e.value) and "Correct the tag" in str(e.value)


def test_non_numeric_rescale_slope_is_refused_not_a_ufunc_error(views, tmp_path):
    # A text slope used to reach numpy as a string: UFuncTypeError.
    path = _patch(views[0], tmp_path / "slope.dcm", b"\x28\x00\x53\x10DS\x02\x001 ",
                  b"\x28\x00\x53\x10DS\x02\x00ab")
    with pytest.raises(DicomError, match="RescaleSlope holds 'ab', which is not a number"):
        read(path)


# 2. structural damage ------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["Rows", "Columns", "BitsAllocated"])
def test_missing_image_tag_is_named(views, tmp_path, tag):
    path = _edit(views[0], tmp_path / "m.dcm", lambda ds: delattr(ds, tag))
    with pytest.raises(DicomError, match=f"required tag .*{tag} is missing"):
        read(path)


@pytest.mark.parametrize(
    ("tags", "what"),
    [({"Columns": 60}, "Columns"), ({"Columns": 79}, "Columns"), ({"Rows": 95}, "Rows"),
     ({"Columns": 81}, "truncated"), ({"SamplesPerPixel": 3}, "SamplesPerPixel"),
     ({"NumberOfFrames": 2}, "NumberOfFrames")],
)
def test_pixel_data_size_must_match_rows_and_columns(views, tmp_path, tags, what):
    """Fuzzed files came back with another width and no error; a mismatch is now refused."""
    path = _edit(views[0], tmp_path / "s.dcm", _set(**tags))
    with pytest.raises(DicomError, match=f"PixelData holds 15360 bytes .*{what}"):
        read(path)


def test_invalid_bits_allocated_is_named(views, tmp_path):
    path = _edit(views[0], tmp_path / "b.dcm", _set(BitsAllocated=3))
    with pytest.raises(DicomError, match="BitsAllocated is 3; it must be 1, 8, 16, 32 or 64"):
        read(path)


def test_undecodable_rows_value_is_named_not_bytes_length_exception(views, tmp_path):
    # US with 3 bytes: pydicom raises BytesLengthException when the value is decoded.
    path = _patch(views[0], tmp_path / "len.dcm", b"\x28\x00\x10\x00US\x02\x00\x60\x00",
                  b"\x28\x00\x10\x00US\x03\x00\x60\x00\x00")
    with pytest.raises(DicomError, match=r"\(0028,0010\) Rows cannot be decoded"):
        read(path)


def test_damaged_element_the_reader_does_not_need_is_dropped_with_a_warning(views, tmp_path):
    # BodyPartExamined made a 5-byte US: undecodable, but not needed for the image.
    path = _patch(views[0], tmp_path / "part.dcm", b"\x18\x00\x15\x00CS\x06\x00BREAST",
                  b"\x18\x00\x15\x00US\x05\x00BREAS")
    with pytest.warns(UserWarning, match="ignoring 1 damaged element.*BodyPartExamined"):
        img = read(path)
    np.testing.assert_array_equal(img.pixels, read(views[0]).pixels)


@pytest.mark.parametrize(
    ("item", "match"),
    [(Dataset(), "VOILUTSequence item 0 is damaged.*LUTDescriptor None and no LUTData"),
     (_lut_item(0), "1-16 bits"), (_lut_item(40), "1-16 bits")],
)
def test_damaged_voi_lut_is_refused_with_the_way_around(views, tmp_path, item, match):
    def change(ds):
        ds.VOILUTSequence = Sequence([item])

    path = _edit(views[0], tmp_path / "lut.dcm", change)
    with pytest.raises(DicomError, match=match) as e:
        read(path)
    assert "voi='window'" in str(e.value)
    assert read(path, voi="window").voi.startswith("LINEAR")  # the way around works


def test_valid_voi_lut_is_applied(views, tmp_path):
    def change(ds):
        ds.VOILUTSequence = Sequence([_lut_item(16)])

    img = read(_edit(views[0], tmp_path / "lut16.dcm", change), normalize_orientation=False)
    raw = pydicom.dcmread(views[0]).pixel_array
    assert img.voi == "LUT[0]"
    np.testing.assert_allclose(img.pixels, np.clip(raw * 16 / 65535.0, 0, 1), atol=1e-6)


def test_deflate_label_on_raw_data_names_the_transfer_syntax(views, tmp_path):
    path = _relabel(views[0], tmp_path / "defl.dcm", "1.2.840.10008.1.2.1.99")
    with pytest.raises(DicomError, match="TransferSyntaxUID says Deflated.*not deflated"):
        read(path)


def test_little_endian_labelled_big_endian_is_not_reported_as_no_pixel_data(views, tmp_path):
    path = _relabel(views[0], tmp_path / "be.dcm", "1.2.840.10008.1.2.2")
    with pytest.raises(DicomError, match="says Explicit VR Big Endian.*written little-endian") as e:
        read(path)
    assert "no PixelData" not in str(e.value)


def test_missing_transfer_syntax(views, tmp_path):
    with pytest.raises(DicomError, match="Rows is missing"):  # pydicom's file: no image tags
        read(dicom_test_file("meta_missing_tsyntax.dcm"), warn_modality=False)
    # An intact image without the TransferSyntaxUID: read as parsed, with a warning.
    path = _relabel(views[0], tmp_path / "nots.dcm", None)
    assert "TransferSyntaxUID" not in pydicom.dcmread(path).file_meta
    with pytest.warns(UserWarning, match="no \\(0002,0010\\) TransferSyntaxUID"):
        img = read(path)
    np.testing.assert_array_equal(img.pixels, read(views[0]).pixels)


# 3. NaN pixels at match / detection entry ------------------------------------------------------


def test_nan_view_is_refused_at_match_and_detection_entry():
    import biomed_toolkit as bt

    case = phantom(4, n_lesions=2, shape=(160, 128))
    case.mlo.pixels = case.mlo.pixels.copy()
    case.mlo.pixels[40:50, 30:40] = np.nan
    with pytest.raises(InputError, match=r"case.mlo .* has 100 NaN / infinite pixels"):
        bt.mammo.match(case, method="geometric", detector="log")
    with pytest.raises(InputError, match="100 NaN / infinite pixels.*nan_to_num"):
        bt.mammo.detect_candidates(case.mlo)
    with pytest.raises(InputError, match="max_candidates"):
        bt.mammo.detect_candidates(case.cc, max_candidates=0)
    clean = phantom(4, n_lesions=2, shape=(160, 128))
    with pytest.raises(InputError, match="threshold"):
        bt.mammo.match(clean, method="geometric", detector="log", threshold=float("nan"))
    assert len(bt.mammo.match(clean, method="geometric", detector="log")) > 0


# 4. views of the same kind ----------------------------------------------------------------------


def test_read_case_refuses_views_of_the_same_kind(views, tmp_path):
    cc, mlo = views
    with pytest.raises(InputError, match="same file twice"):
        read_case(cc, cc)
    copy = shutil.copy(cc, tmp_path / "other_cc.dcm")
    with pytest.raises(InputError, match="both files are CC views"):
        read_case(cc, copy)
    with pytest.raises(InputError, match="wrong way round.*Swap"):
        read_case(mlo, cc)
    case = read_case(cc, mlo)
    assert (case.cc.view, case.mlo.view) == ("CC", "MLO")


# 5. matcher configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", -5, 0, 10**6, 24.5, None])
def test_bad_patch_size_fails_at_load_naming_the_key(tmp_path, value):
    import biomed_toolkit as bt

    folder = bt.mammo.load().save_pretrained(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["patch_size"] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="patch_size"):
        bt.mammo.load(folder)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"patch_size": "abc"}, "patch_size"), ({"patch_mm": float("nan")}, "patch_mm"),
     ({"channels": "abc"}, "channels"), ({"channels": [8, "a"]}, "channels\\[1\\]"),
     ({"in_channels": 3}, "in_channels"), ({"fusion_features": "siamese_logit"}, "fusion_features"),
     ({"patch_size": 6}, "2\\*\\*len\\(channels\\)"),
     ({"detector_dilations": [1, 2]}, "one dilation per detector layer"),
     ({"detector_dilations": [1, 0, 1, 1]}, "detector_dilations\\[1\\]"),
     ({"detector_norm": "yes"}, "detector_norm")],
)
def test_siamese_config_checks_each_key(kwargs, key):
    from biomed_toolkit.mammo.configuration import SiameseConfig

    with pytest.raises(CheckpointError, match=key):
        SiameseConfig(**kwargs)


# 6. fuzz ----------------------------------------------------------------------------------------

_FUZZ_FILES = ["phantom", "MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm",
               "MR_small_jp2klossless.dcm", "rtplan.dcm", "meta_missing_tsyntax.dcm"]

_mutation = st.tuples(
    st.sampled_from(["flip", "overwrite", "delete", "insert", "truncate"]),
    st.floats(0.0, 1.0, allow_nan=False),
    st.binary(min_size=1, max_size=8),
    st.booleans(),  # True: aim at the header, where the structure is
)


def _mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, where, payload, header in ops:
        span = min(len(buf), 1500) if header else len(buf)
        i = int(where * max(span - 1, 0))
        if op == "flip" and buf:
            buf[i] ^= payload[0] or 0xFF
        elif op == "overwrite":
            buf[i:i + len(payload)] = payload
        elif op == "delete":
            del buf[i:i + len(payload)]
        elif op == "insert":
            buf[i:i] = payload
        else:
            del buf[i:]
    return bytes(buf)


@pytest.fixture(scope="module")
def fuzz_sources(views) -> dict[str, bytes]:
    out = {"phantom": views[0].read_bytes()}
    for name in _FUZZ_FILES[1:]:
        with contextlib.suppress(InputError):  # pydicom-data may be missing
            out[name] = dicom_test_file(name).read_bytes()
    return out


@pytest.mark.parametrize("source", _FUZZ_FILES)
def test_fuzz_reader_raises_only_package_errors(fuzz_sources, tmp_path_factory, source):
    if source not in fuzz_sources:
        pytest.skip(f"{source} is not installed")
    data = fuzz_sources[source]
    path = tmp_path_factory.mktemp("fuzz") / "mutated.dcm"

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_mutation, min_size=1, max_size=4))
    def check(ops):
        path.write_bytes(_mutate(data, ops))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                img = read(path, warn_modality=False)
            except BiomedToolkitError:
                return
        px = img.pixels
        assert px.ndim == 2 and px.dtype == np.float32
        assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0
        ds = pydicom.dcmread(path)  # read whole, as read() does (a fake early PixelData tag
        assert px.shape == (ds.Rows, ds.Columns)  # ends a stop_before_pixels read early)

    check()


_NUMBERS = [b"NaN", b"inf", b"-inf", b"1e308", b"-1e308", b"0", b"-1", b"abc", b"", b"1\\2",
            b"1e-300", b"4096", b"2048", b"  ", b"+", b"1e", b"0x10"]
_SHORTS = [struct.pack("<H", v) for v in (0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 32, 64, 65535)] + [
    b"\x01", b"\x01\x00\x00", b""]
_TAG_VALUES = {
    "WindowCenter": ("DS", _NUMBERS), "WindowWidth": ("DS", _NUMBERS),
    "RescaleSlope": ("DS", _NUMBERS), "RescaleIntercept": ("DS", _NUMBERS),
    "NumberOfFrames": ("IS", [b"0", b"-1", b"2", b"abc", b"99999999", b""]),
    "Rows": ("US", _SHORTS), "Columns": ("US", _SHORTS), "BitsAllocated": ("US", _SHORTS),
    "BitsStored": ("US", _SHORTS), "HighBit": ("US", _SHORTS),
    "PixelRepresentation": ("US", _SHORTS), "SamplesPerPixel": ("US", _SHORTS),
    "PlanarConfiguration": ("US", _SHORTS),
    "PhotometricInterpretation": ("CS", [b"MONOCHROME1", b"RGB", b"PALETTE COLOR", b"YBR_FULL",
                                         b"", b"\xff\xfe"]),
    "VOILUTFunction": ("CS", [b"SIGMOID", b"LINEAR_EXACT", b"BOGUS", b""]),
    "PresentationLUTShape": ("CS", [b"INVERSE", b"BOGUS", b""]),
    "PatientOrientation": ("CS", [b"A\\R", b"P", b"", b"\\\\\\"]),
    "PixelSpacing": ("DS", _NUMBERS),
}


@st.composite
def _tag_edits(draw):
    keys = draw(st.lists(st.sampled_from(sorted(_TAG_VALUES)), min_size=1, max_size=4,
                         unique=True))
    return [(k, draw(st.sampled_from(_TAG_VALUES[k][1]))) for k in keys]


def test_fuzz_tag_values_give_an_image_or_a_package_error(views, tmp_path_factory):
    """Nasty values in the tags the reader uses, written raw (pydicom would refuse them)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    path = tmp_path_factory.mktemp("fuzz_tags") / "edited.dcm"
    source = views[0].read_bytes()

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_tag_edits())
    def check(edits):
        ds = pydicom.dcmread(io.BytesIO(source))  # fresh: Dataset.copy() shares elements
        for keyword, value in edits:
            tag, vr = Tag(keyword), _TAG_VALUES[keyword][0]
            if vr != "US" and len(value) % 2:
                value += b" "  # text values are padded to even length
            ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
        ds.save_as(path, enforce_file_format=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                img = read(path)
            except BiomedToolkitError:
                return
        px = img.pixels
        assert px.shape == (96, 80) and np.isfinite(px).all()
        assert px.min() >= 0.0 and px.max() <= 1.0
        # Never a blank image from varied pixels: at least one grey level of 256 (the window may
        # legitimately be dark, e.g. BitsStored 7 under a 12-bit window).
        assert px.max() - px.min() >= 1 / 256, (edits, img.voi)

    check()
