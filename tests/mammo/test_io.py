"""DICOM reading on real files from pydicom / pydicom-data and on written phantoms."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest

from biomed_toolkit.core.errors import DicomError
from biomed_toolkit.mammo import io as mio
from biomed_toolkit.mammo.datasets import dicom_test_file
from biomed_toolkit.mammo.io import ModalityWarning, read


def _path(name):
    try:
        return dicom_test_file(name)
    except ValueError as e:
        pytest.skip(str(e))


def test_rg1_monochrome1_zero_spacing_and_window():
    path = _path("RG1_UNCI.dcm")
    img = read(path, warn_modality=False)
    ds = pydicom.dcmread(path)
    assert img.pixel_spacing is None  # PixelSpacing is literally 0.000\0.000
    assert img.photometric == "MONOCHROME1"
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (1955, 1841)
    assert img.pixels.min() >= 0.0 and img.pixels.max() <= 1.0
    # MONOCHROME1: the largest stored value must come out darkest.
    raw = ds.pixel_array.astype(float)
    expected = 1 - np.clip((raw - (15000 - 0.5)) / (30000 - 1) + 0.5, 0, 1)
    got = img.pixels[:, ::-1] if img.flipped else img.pixels
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert "LINEAR" in img.voi
    assert "RG1_UNCI" in repr(img) and "unknown" in repr(img)
    assert "<table>" in img._repr_html_() and "MONOCHROME1" in img._repr_html_()


def test_jpeg2000_decodes_like_uncompressed():
    a = read(_path("RG1_UNCR.dcm"), warn_modality=False)
    b = read(_path("RG1_J2KR.dcm"), warn_modality=False)
    assert a.shape == b.shape
    np.testing.assert_allclose(a.pixels, b.pixels, atol=1e-6)  # J2KR is lossless
    c = read(_path("RG1_J2KI.dcm"), warn_modality=False)
    assert np.mean(np.abs(c.pixels - a.pixels)) < 0.02  # lossy, but the same image


def test_rg3_series_laterality_and_no_spacing():
    img = read(_path("RG3_UNCI.dcm"), warn_modality=False)
    assert img.laterality == "R" and img.laterality_source == "Laterality"
    assert img.pixel_spacing is None
    assert img.meta["BitsStored"] == 10


def test_voi_lut_sequence_and_modality_lut_sequence():
    path = _path("vlut_04.dcm")
    img = read(path, warn_modality=False, normalize_orientation=False)
    assert img.voi.startswith("LUT")
    ds = pydicom.dcmread(path)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=float)
    np.testing.assert_allclose(img.pixels, lut[ds.pixel_array] / 65535.0, atol=1e-6)
    m = read(_path("mlut_18.dcm"), warn_modality=False, normalize_orientation=False)
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(_path("mlut_18.dcm"))
    mod = apply_modality_lut(ds.pixel_array, ds).astype(float)
    # No VOI in the file: percentile scaling is monotonic in the modality-LUT output.
    r = np.corrcoef(m.pixels.ravel(), mod.ravel())[0, 1]
    assert r > 0.95


def test_window_functions_follow_the_standard():
    x = np.array([0.0, 100.0, 200.0])
    lin = mio._window(x, 100, 101, "LINEAR")
    assert lin[0] == 0 and lin[2] == 1 and abs(lin[1] - 0.505) < 1e-3
    exact = mio._window(x, 100, 100, "LINEAR_EXACT")
    np.testing.assert_allclose(exact, [0.0, 0.5, 1.0])
    sig = mio._window(x, 100, 100, "SIGMOID")
    np.testing.assert_allclose(sig[1], 0.5)
    assert 0 < sig[0] < 0.02 and 0.98 < sig[2] < 1


def test_modality_warning_can_be_silenced():
    path = _path("MR_small.dcm")
    with pytest.warns(ModalityWarning, match="MR"):
        read(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = read(path, warn_modality=False)
    assert img.pixel_spacing == (0.3125, 0.3125)


def test_non_image_truncated_and_not_dicom(tmp_path):
    with pytest.raises(DicomError, match="no image"):
        read(_path("rtplan.dcm"), warn_modality=False)
    with pytest.raises(DicomError, match="truncated"):
        read(_path("MR_truncated.dcm"), warn_modality=False)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(_path("RG3_UNCI.dcm").read_bytes()[:4000])
    with pytest.raises(DicomError):
        read(cut, warn_modality=False)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"hello, not a dicom file" * 10)
    with pytest.raises(DicomError, match="not a DICOM"):
        read(junk)


def test_missing_decoder_gives_install_hint():
    """Hide every JPEG 2000 decoder in a subprocess and check the error text."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('openjpeg', 'pylibjpeg', 'libjpeg', 'PIL', 'gdcm'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
from biomed_toolkit.mammo.io import read
from biomed_toolkit.core.errors import DicomError
try:
    read({str(_path("RG1_J2KI.dcm"))!r}, warn_modality=False)
except DicomError as e:
    print('DICOMERROR', e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "DICOMERROR" in out.stdout, out.stderr
    assert mio.DECODER_HINT in out.stdout
    assert "JPEG 2000" in out.stdout


def test_orientation_from_tags_and_intensity(tmp_path):
    from biomed_toolkit.mammo.phantom import phantom, write_dicom

    case = phantom(5, n_lesions=1, shape=(160, 128), laterality="R")
    cc, _ = write_dicom(case, tmp_path)
    stored = pydicom.dcmread(cc)
    assert list(stored.PatientOrientation) == ["P", "L"]
    raw = stored.pixel_array
    # Stored as acquired: chest wall on the right.
    assert raw[:, -10:].mean() > raw[:, :10].mean()
    img = read(cc)
    assert img.flipped and img.orientation_source == "tags"
    np.testing.assert_allclose(img.pixels, case.cc.pixels, atol=1 / 4095 + 1e-6)
    # Without the tag the intensity check does the same.
    del stored.PatientOrientation
    stored.save_as(tmp_path / "noorient.dcm")
    img2 = read(tmp_path / "noorient.dcm")
    assert img2.flipped and img2.orientation_source == "intensity"
    # A wrong tag is overruled by a clear image, with a warning.
    stored.PatientOrientation = ["A", "R"]
    stored.save_as(tmp_path / "wrong.dcm")
    with pytest.warns(UserWarning, match="trusting the image"):
        img3 = read(tmp_path / "wrong.dcm")
    assert img3.flipped


def test_view_code_sequence_beats_view_position(tmp_path):
    from biomed_toolkit.mammo.phantom import phantom, write_dicom

    case = phantom(6, n_lesions=0, shape=(128, 104), laterality="L")
    _, mlo = write_dicom(case, tmp_path)
    ds = pydicom.dcmread(mlo)
    ds.ViewPosition = "CC"  # contradicts the code sequence, which is more reliable
    ds.save_as(tmp_path / "x.dcm")
    img = read(tmp_path / "x.dcm")
    assert img.view == "MLO" and img.view_source == "ViewCodeSequence"
    del ds.ViewCodeSequence
    ds.save_as(tmp_path / "y.dcm")
    assert read(tmp_path / "y.dcm").view == "CC"


def test_spacing_fallbacks(tmp_path):
    from biomed_toolkit.mammo.phantom import phantom, write_dicom

    case = phantom(7, n_lesions=0, shape=(128, 104))
    cc, _ = write_dicom(case, tmp_path)
    ds = pydicom.dcmread(cc)
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = ["0.1", "0.1"]
    ds.EstimatedRadiographicMagnificationFactor = "1.25"
    ds.save_as(tmp_path / "a.dcm")
    img = read(tmp_path / "a.dcm")
    assert img.pixel_spacing == pytest.approx((0.08, 0.08))
    assert img.spacing_source == "ImagerPixelSpacing/magnification"
    ds.ImagerPixelSpacing = ["0", "0"]
    ds.save_as(tmp_path / "b.dcm")
    assert read(tmp_path / "b.dcm").pixel_spacing is None


def test_dicom_examples_table():
    from biomed_toolkit.mammo.datasets import dicom_examples

    df = dicom_examples()
    assert {"RG1_UNCI.dcm", "vlut_04.dcm", "mlut_18.dcm", "RG3_J2KI.dcm"} <= set(df["name"])
    installed = df[df["installed"]]
    assert all(p.exists() for p in installed["path"])
