"""The dual-view phantom and its DICOM round trip."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.io import read, read_case
from biomed_toolkit.mammo.phantom import phantom, write_dicom

SHAPE = (256, 208)


def _nipple_distance(case, view, les):
    """Distance (pixels) from the nipple to each lesion along the chest-wall line's normal."""
    p0, p1 = np.asarray(case.meta["chest_line"][view], float)
    t = (p1 - p0) / np.hypot(*(p1 - p0))
    n = np.array([-t[1], t[0]])
    n = n if n[1] > 0 else -n
    nip = np.asarray(case.nipple[view])
    pts = les[[f"{view}_row", f"{view}_col"]].to_numpy()
    return (nip - pts) @ n


def test_phantom_is_deterministic_and_consistent():
    a = phantom(11, n_lesions=3, shape=SHAPE, one_view_fraction=0.0)
    b = phantom(11, n_lesions=3, shape=SHAPE, one_view_fraction=0.0)
    np.testing.assert_array_equal(a.cc.pixels, b.cc.pixels)
    assert not np.array_equal(a.cc.pixels, phantom(12, n_lesions=3, shape=SHAPE).cc.pixels)
    les = a.lesions
    assert len(les) == 3 and set(les["kind"]) <= {"mass", "calcification"}
    assert les[["in_cc", "in_mlo"]].all().all()
    assert a.cc.view == "CC" and a.mlo.view == "MLO" and a.cc.laterality == a.mlo.laterality
    sp = a.cc.pixel_spacing[0]
    assert sp == pytest.approx(260.0 / SHAPE[0])
    # Same lesion, both views: distances to the nipple along the posterior nipple line (the
    # normal of the chest-wall line: the image edge in CC, the pectoral edge in MLO) agree within
    # the geometric tolerance the literature reports (a ~28 mm strip).
    d_cc = _nipple_distance(a, "cc", les) * sp
    d_mlo = _nipple_distance(a, "mlo", les) * sp
    assert np.all(np.abs(d_cc - d_mlo) < 20)
    # Lesions sit deeper into the breast when they are further from the nipple (x axis).
    assert np.corrcoef(les["x_mm"], les["cc_col"])[0, 1] > 0.9


def test_anatomy_skin_pectoral_nipple_and_lesion_signal():
    case = phantom(3, n_lesions=4, density=0.15, shape=(384, 312), calcification_fraction=0.0)
    cc, mlo = case.cc.pixels, case.mlo.pixels
    # Chest wall on the left, background dark on the right.
    assert cc[:, :20].mean() > 0.3 and cc[:, -20:].mean() < 0.08
    # Pectoral muscle: the upper-left corner of the MLO is bright, not in the CC.
    assert mlo[:20, :15].mean() > cc[:20, :15].mean() + 0.3
    # Nipple: tissue at the nipple point.
    r, c = case.nipple["cc"]
    assert cc[int(r), int(c) - 3] > 0.2
    # Masses are brighter than the ring around them in both views.
    for v in ("cc", "mlo"):
        img = case.view(v).pixels
        for _, le in case.lesions.iterrows():
            rr, ccol, rad = int(le[f"{v}_row"]), int(le[f"{v}_col"]), le[f"{v}_radius_px"]
            inner = img[rr - 2 : rr + 3, ccol - 2 : ccol + 3].mean()
            yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
            d = np.hypot(yy - rr, xx - ccol)
            ring = img[(d > 1.6 * rad) & (d < 2.4 * rad)].mean()
            assert inner > ring, (v, le["lesion_id"])


def test_density_and_noise_change_the_image():
    lo = phantom(4, density="a", noise=0.0, shape=SHAPE)
    hi = phantom(4, density="d", noise=0.0, shape=SHAPE)
    noisy = phantom(4, density="a", noise=0.08, shape=SHAPE)
    mask = lo.cc.pixels > 0.1
    assert hi.cc.pixels[mask].mean() > lo.cc.pixels[mask].mean() + 0.03
    bg = lo.cc.pixels[:, -15:]
    assert noisy.cc.pixels[:, -15:].std() > 3 * bg.std() + 0.01
    with pytest.raises(InputError, match="density"):
        phantom(0, density="z")
    with pytest.raises(InputError, match="mlo_angle"):
        phantom(0, mlo_angle=80)


@pytest.mark.parametrize(
    "photometric,compress",
    [("MONOCHROME2", None), ("MONOCHROME1", None), ("MONOCHROME2", "rle"),
     ("MONOCHROME1", "jpeg2000"), ("MONOCHROME2", "deflate")],
)
def test_write_dicom_round_trip(tmp_path, photometric, compress):
    case = phantom(21, n_lesions=2, shape=SHAPE, laterality="R")
    paths = write_dicom(case, tmp_path, photometric=photometric, compress=compress)
    ds = pydicom.dcmread(paths[1])
    assert ds.Modality == "MG"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
    assert ds.ViewPosition == "MLO" and ds.ImageLaterality == "R"
    assert list(ds.PatientOrientation) == ["P", "FL"]
    assert ds.PhotometricInterpretation == photometric
    assert float(ds.PixelSpacing[0]) == pytest.approx(case.mlo.pixel_spacing[0], rel=1e-5)
    back = read_case(*paths)
    for v in ("cc", "mlo"):
        got, want = back.view(v), case.view(v)
        assert got.laterality == "R" and got.view == want.view
        assert got.pixel_spacing == pytest.approx(want.pixel_spacing, rel=1e-5)
        np.testing.assert_allclose(got.pixels, want.pixels, atol=1 / 4095 + 1e-6)


def test_read_case_from_folder_and_lossy(tmp_path):
    case = phantom(22, n_lesions=1, shape=SHAPE, laterality="L")
    write_dicom(case, tmp_path, compress="jpeg2000-lossy")
    back = read_case(tmp_path)
    assert back.cc.view == "CC" and back.mlo.view == "MLO"
    assert np.abs(back.cc.pixels - case.cc.pixels).mean() < 0.01
    img = read(next(tmp_path.glob("*LCC.dcm")))
    assert not img.flipped  # a left breast is stored with the chest wall already on the left


def test_n_lesions_beyond_the_maximum_is_refused_naming_it():
    from biomed_toolkit.mammo.phantom import MAX_LESIONS

    with pytest.raises(InputError, match=f"n_lesions=500 .* at most {MAX_LESIONS}"):
        phantom(0, n_lesions=500)
    case = phantom(0, n_lesions=MAX_LESIONS, shape=(160, 128))
    assert len(case.lesions) == MAX_LESIONS  # the maximum is honoured, never silently fewer
    d = np.linalg.norm(case.lesions[["x_mm", "y_mm", "z_mm"]].to_numpy()[:, None]
                       - case.lesions[["x_mm", "y_mm", "z_mm"]].to_numpy()[None], axis=-1)
    assert d[np.triu_indices(MAX_LESIONS, 1)].min() >= 25


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"n_lesions": -1}, "n_lesions"), ({"n_lesions": 2.5}, "n_lesions"),
     ({"n_lesions": True}, "n_lesions"), ({"noise": -0.1}, "noise"),
     ({"noise": float("nan")}, "noise"), ({"calcification_fraction": 1.5}, "calcification_fraction"),
     ({"one_view_fraction": -0.1}, "one_view_fraction"), ({"contrast": float("inf")}, "contrast"),
     ({"jitter_mm": -1.0}, "jitter_mm"), ({"mass_radius_mm": (11.0, 4.0)}, "mass_radius_mm"),
     ({"mass_radius_mm": (0.0, 4.0)}, "mass_radius_mm"), ({"compression": (0.5, 2.0)}, "compression"),
     ({"compression": 0.5}, "compression"), ({"lookalikes": -2}, "lookalikes"),
     ({"mlo_angle": float("nan")}, "mlo_angle"), ({"shape": (63, 128)}, "shape"),
     ({"shape": (100000, 128)}, "shape"), ({"shape": "512x416"}, "shape"),
     ({"shape": (160.5, 128)}, "shape"), ({"margins": "spiculated"}, "margins"),
     ({"seed": -1}, "seed"), ({"seed": "a"}, "seed")],
)
def test_numeric_phantom_options_are_range_checked(kwargs, name):
    with pytest.raises(InputError, match=name):
        phantom(**kwargs)


def test_write_dicom_bits_stored_is_checked(tmp_path):
    case = phantom(0, n_lesions=1, shape=(96, 80))
    for bad in (7, 17, 12.0, True):
        with pytest.raises(InputError, match="bits_stored"):
            write_dicom(case, tmp_path, bits_stored=bad)
