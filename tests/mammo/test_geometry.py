"""Breast geometry from the pixels: pectoral line, nipple, depth, on phantoms with known
geometry at several MLO angles and on DICOM variants written by write_dicom."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from biomed_toolkit.mammo.geometry import breast_geometry, case_geometry
from biomed_toolkit.mammo.io import read_case
from biomed_toolkit.mammo.matching import geometric_scores
from biomed_toolkit.mammo.phantom import phantom, write_dicom


def _true_depth(case, view, rows, cols):
    p0, p1 = np.asarray(case.meta["chest_line"][view], float)
    t = (p1 - p0) / np.hypot(*(p1 - p0))
    n = np.array([-t[1], t[0]])
    n = n if n[1] > 0 else -n
    return ((np.asarray(rows) - p0[0]) * n[0] + (np.asarray(cols) - p0[1]) * n[1]) * \
        case.view(view).mm_per_pixel


@pytest.mark.parametrize("angle", [30, 40, 50, 60])
@pytest.mark.parametrize("density", ["a", "d"])
def test_pectoral_line_nipple_and_depth_at_mlo_angles(angle, density):
    for seed in (300, 301):
        case = phantom(seed, mlo_angle=angle, density=density, shape=(384, 312))
        g = breast_geometry(case.mlo)
        assert g.pectoral_found
        assert abs(g.pectoral_angle - case.meta["pectoral_angle"]) < 5.0
        sp = case.mlo.mm_per_pixel
        assert np.hypot(*(np.subtract(g.nipple, case.nipple["mlo"]))) * sp < 6.0
        les = case.lesions
        est = g.depth_mm(les["mlo_row"].to_numpy(), les["mlo_col"].to_numpy())
        true = _true_depth(case, "mlo", les["mlo_row"], les["mlo_col"])
        assert np.max(np.abs(est - true)) < 10.0
        # The CC has no pectoral line: its chest wall is the image edge.
        gc = breast_geometry(case.cc)
        assert not gc.pectoral_found and gc.pectoral_angle == 0.0
        np.testing.assert_allclose(gc.depth_mm(les["cc_row"], les["cc_col"]),
                                   les["cc_col"] * case.cc.mm_per_pixel, atol=1.0)


def test_depth_prior_is_perpendicular_to_the_pectoral_line():
    # A steep pectoral line: the horizontal nipple distance of the old prior is off by much more
    # than the perpendicular one.
    errs_perp, errs_horiz = [], []
    for seed in range(310, 316):
        case = phantom(seed, mlo_angle=60, density="b", shape=(384, 312), one_view_fraction=0.0)
        geo = case_geometry(case)
        les = case.lesions
        d = {v: geo[v].depth_mm(les[f"{v}_row"], les[f"{v}_col"]) for v in ("cc", "mlo")}
        errs_perp += list(np.abs(d["cc"] - d["mlo"]))
        sp = case.cc.mm_per_pixel
        errs_horiz += list(np.abs((geo["cc"].nipple[1] - les["cc_col"]) * sp
                                  - (geo["mlo"].nipple[1] - les["mlo_col"]) * sp))
        cands = {v: les.rename(columns={f"{v}_row": "row", f"{v}_col": "col"}) for v in ("cc", "mlo")}
        g = geometric_scores(case, cands["cc"], cands["mlo"], geometry=geo)
        assert (np.diag(g) >= 0.2).mean() >= 0.6
    assert np.median(errs_perp) < 10.0
    assert np.median(errs_perp) < np.median(errs_horiz)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("orientation", ["standard", "missing", "mislabelled"])
def test_geometry_survives_every_dicom_variant(tmp_path, photometric, laterality, orientation):
    case = phantom(320, mlo_angle=45, density="b", laterality=laterality, shape=(256, 208))
    paths = write_dicom(case, tmp_path, photometric=photometric, orientation=orientation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a mislabelled file warns that the image wins
        back = read_case(*paths)
    want = case_geometry(case)
    got = case_geometry(back)
    for v in ("cc", "mlo"):
        # Chest wall on the left again whatever the tags said.
        assert back.view(v).pixels[:, :20].mean() > back.view(v).pixels[:, -20:].mean()
        assert got[v].pectoral_found == want[v].pectoral_found
        assert abs(got[v].pectoral_angle - want[v].pectoral_angle) < 1.0
        assert np.hypot(*np.subtract(got[v].nipple, want[v].nipple)) * case.cc.mm_per_pixel < 2.0
    assert abs(got["mlo"].pectoral_angle - case.meta["pectoral_angle"]) < 5.0
