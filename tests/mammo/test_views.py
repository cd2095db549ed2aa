"""plotly figure, LesionMatcher widget driven from Python, napari layers (ViewerModel, Xvfb)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.matching import match
from biomed_toolkit.mammo.phantom import phantom

SHAPE = (256, 208)


@pytest.fixture(scope="module")
def case_and_matches():
    case = phantom(0, n_lesions=3, shape=SHAPE, density="a")
    return case, match(case, method="geometric", threshold=0.5)


def test_mammo_pair_figure(case_and_matches):
    from biomed_toolkit.mammo.plotting import mammo_pair

    case, m = case_and_matches
    fig = mammo_pair(case, m, threshold=0.6, show=False, return_fig=True)
    names = [t.name for t in fig.data]
    assert names[:2] == ["CC image", "MLO image"]
    assert {"CC candidates", "MLO candidates", "truth CC", "truth MLO"} <= set(names)
    lines = next(t for t in fig.data if t.name.startswith("pairs"))
    n_pairs = int((m["assigned"] & (m["probability"] >= 0.6)).sum())
    assert len([x for x in lines.x if x is None]) == n_pairs
    # The MLO is drawn to the right of the CC: every line ends beyond the CC width.
    ends = [x for i, x in enumerate(lines.x) if i % 3 == 1]
    assert all(x > case.cc.shape[1] for x in ends)
    hover = next(t for t in fig.data if t.name == "pair probability").hovertext
    assert all("p = " in h for h in hover)
    higher = mammo_pair(case, m, threshold=0.99, show=False, return_fig=True)
    assert len(next(t for t in higher.data if t.name.startswith("pairs")).x or []) <= len(lines.x)
    with pytest.raises(InputError):
        mammo_pair(case.cc, m, show=False)


def test_lesion_matcher_driven_from_python(case_and_matches):
    from biomed_toolkit.mammo.widgets import LesionMatcher

    case, _ = case_and_matches
    other = phantom(1, n_lesions=2, shape=SHAPE)
    w = LesionMatcher([case, other], method="geometric", threshold=0.5)
    m = w.matches
    r = w.select("cc", 0)
    rows = m[m["cc_id"] == 0]
    if rows["assigned"].any():
        assert r["counterpart_id"] == int(rows.loc[rows["assigned"], "mlo_id"].iloc[0])
    else:
        assert r["probability"] == pytest.approx(rows["probability"].max())
    assert f"p = {r['probability']:.3f}" in w.info.value
    assert any(t.name == "selected" for t in w.figure.data)
    # A click on the MLO candidate marker goes through the same path.
    import types

    w._clicked("mlo", types.SimpleNamespace(point_inds=[1]))
    mlo_ids = m.attrs["mlo_candidates"]["cand_id"]
    assert w.selected["view"] == "mlo" and w.selected["cand_id"] == mlo_ids[1]
    assert w.selected["counterpart_view"] == "cc"
    n_low = len(w.matches_dataframe())
    w.slider.value = 0.95  # as if the user moved the slider
    assert w.threshold == 0.95
    high = w.matches_dataframe()
    assert len(high) <= n_low and (high["probability"] >= 0.95).all()
    assert high["cc_id"].is_unique and high["mlo_id"].is_unique
    w.case_dropdown.value = 1
    assert w.case is other
    both = w.matches_dataframe(all_cases=True)
    assert set(both["case_id"]) <= {case.case_id, other.case_id}
    w.set_method("template")
    assert w.matches.attrs["method"] == "template"
    with pytest.raises(InputError):
        w.select("cc", 999)


def test_lesion_matcher_updates_send_only_the_overlay(case_and_matches):
    from biomed_toolkit.mammo.widgets import LesionMatcher

    case, _ = case_and_matches
    other = phantom(1, n_lesions=2, shape=SHAPE)
    w = LesionMatcher([case, other], method="geometric", threshold=0.3)
    full = len(json.dumps(w.view.figure))  # the first paint: images and all
    for t in (0.4, 0.6, 0.9):
        w.slider.value = t
        up = w.last_update
        assert up["action"] == "threshold" and up["seconds"] < 0.5, up
        assert up["bytes"] < 100_000 and up["bytes"] < full / 10, (up, full)
        lines = next(tr for tr in w.figure.data if tr.name.startswith("pairs"))
        assert lines.name == f"pairs (p >= {t:g})"
        assert len([x for x in lines.x if x is None]) == len(w.pairs())
        assert f"threshold {t:g}" in w.figure.layout.title.text
    assert w.busy.value == ""  # the busy note is cleared after the update
    # candidate ids on the image, distinct truth symbols, the toolbar out of the title's way
    cc = next(tr for tr in w.figure.data if tr.name == "CC candidates")
    assert list(cc.text) == [str(i) for i in w.matches.attrs["cc_candidates"]["cand_id"]]
    symbols = {tr.name: tr.marker.symbol for tr in w.figure.data if tr.name.startswith("truth")}
    assert len(set(symbols.values())) == len(symbols) == 2
    assert w.figure.layout.modebar.orientation == "v" and w.view.config["scrollZoom"]
    # window / level: only the two images' zmin / zmax are sent
    w.window_slider.value = (0.2, 0.7)
    assert w.last_update["bytes"] < 500
    assert [tr.zmin for tr in w.figure.data if tr.type == "heatmap"] == [0.2, 0.2]
    # case switches reuse the matches and candidates computed before
    w.set_case(1)
    cached = dict(w._cache)
    w.set_case(0)
    w.set_case(1)
    assert w._cache.keys() == cached.keys() and all(w._cache[k] is cached[k] for k in cached)
    assert set(w._candidates) == {0, 1}


def test_lesion_matcher_manual_pairs_and_export(case_and_matches, tmp_path):
    from biomed_toolkit.mammo.widgets import LesionMatcher

    case, _ = case_and_matches
    w = LesionMatcher(case, method="geometric", threshold=0.5)
    m = w.matches
    auto = w.pairs()
    # a pair the matcher did not choose, picked by two clicks (as the page sends them)
    free = m[~m["assigned"]].iloc[0]
    cc_id, mlo_id = int(free["cc_id"]), int(free["mlo_id"])
    w._on_event({"type": "click", "trace": "CC candidates", "cells": [cc_id]})
    w._on_event({"type": "click", "trace": "MLO candidates", "cells": [mlo_id]})
    assert w.picked == {"cc": cc_id, "mlo": mlo_id} and "Add pair" in w.info.value
    w._on_event({"type": "key", "key": "a"})
    shown = w.matches_dataframe()
    row = shown[(shown["cc_id"] == cc_id) & (shown["mlo_id"] == mlo_id)]
    assert len(row) == 1 and row["source"].iloc[0] == "manual"
    assert shown["cc_id"].is_unique and shown["mlo_id"].is_unique
    lines = next(tr for tr in w.figure.data if tr.name.startswith("pairs"))
    assert len([x for x in lines.x if x is None]) == len(shown)
    # remove it again with the key, then an automatic one with the button
    w.select("cc", cc_id)
    w._on_event({"type": "key", "key": "d"})
    assert len(w.pairs()) == len(auto)
    if len(auto):
        w.select("cc", int(auto["cc_id"].iloc[0]))
        w.remove_button.click()
        assert len(w.pairs()) == len(auto) - 1
        assert w.undo() and len(w.pairs()) == len(auto)
    path = w.export_csv(tmp_path / "pairs.csv")
    back = pd.read_csv(path)
    assert back[["cc_id", "mlo_id"]].values.tolist() == w.pairs()[["cc_id", "mlo_id"]].values.tolist()
    w.add_button.click()  # nothing picked after a clear: the message says what to do
    w._on_event({"type": "clear"})
    w.add_button.click()
    assert "pick a CC and an MLO candidate" in w.message.value


def test_napari_layers_with_viewer_model(case_and_matches):
    components = pytest.importorskip("napari.components")
    from biomed_toolkit.mammo.napari_view import show_napari

    case, m = case_and_matches
    v = show_napari(case, m, viewer=components.ViewerModel(), threshold=0.5)
    names = [layer.name for layer in v.layers]
    for n in ("CC", "MLO", "CC candidates", "MLO candidates", "pairs", "truth CC"):
        assert n in names
    pairs = m[m["assigned"] & (m["probability"] >= 0.5)]
    assert len(v.layers["pairs"].data) == len(pairs)
    # MLO translated beside the CC; a line's second end lies in the MLO.
    assert v.layers["MLO"].translate[1] > case.cc.shape[1]
    if len(pairs):
        assert v.layers["pairs"].data[0][1, 1] > case.cc.shape[1]
        np.testing.assert_allclose(sorted(v.layers["pairs"].features["probability"]),
                                   sorted(pairs["probability"]))
    feats = v.layers["CC candidates"].features
    assert len(feats) == len(m.attrs["cc_candidates"]["cand_id"])
    assert (feats["pair"] > 0).sum() == len(pairs)
    g = show_napari(case, m, viewer=components.ViewerModel(), layout="grid")
    assert g.grid.enabled and g.grid.stride == 3 and "pairs" not in [ly.name for ly in g.layers]


def _xvfb_available() -> bool:
    return shutil.which("xvfb-run") is not None or bool(os.environ.get("DISPLAY"))


@pytest.mark.xvfb
@pytest.mark.slow
@pytest.mark.skipif(not _xvfb_available(), reason="needs xvfb-run or a DISPLAY")
def test_napari_renders_under_xvfb(tmp_path):
    pytest.importorskip("napari")
    script = tmp_path / "render.py"
    script.write_text(textwrap.dedent("""
        import numpy as np, napari
        from biomed_toolkit.mammo.phantom import phantom
        from biomed_toolkit.mammo.matching import match
        from biomed_toolkit.mammo.napari_view import show_napari, screenshot_to_notebook
        case = phantom(0, n_lesions=3, shape=(256, 208), density="a")
        viewer = show_napari(case, match(case, method="geometric"), show=True)
        shot = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
        img = screenshot_to_notebook(viewer)
        print("SHAPE", shot.shape, "BRIGHT", float((shot[..., :3] > 60).mean()),
              "PNG", len(img.data))
        viewer.close()
    """))
    cmd = [sys.executable, str(script)]
    if shutil.which("xvfb-run"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1200x24"] + cmd
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=170, env=env)
    if "Could not load the Qt platform plugin" in out.stderr:
        pytest.skip("Qt's xcb plugin cannot load (system libraries missing: apt-get install "
                    "libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1)")
    assert "SHAPE" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
    line = out.stdout.split("SHAPE", 1)[1]
    bright = float(line.split("BRIGHT")[1].split()[0])
    assert bright > 0.05  # the breast tissue is on the canvas, not a black frame
    assert int(line.split("PNG")[1].split()[0]) > 1000
