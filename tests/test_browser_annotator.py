"""CellAnnotator in Voila + headless Chromium: 30 gestures in a row, each checked three ways.

After every lasso / box / click / clear the test checks that the side panel's count, the ringed
cells on the plot (the "selection" trace in the page) and ``annotator.selection`` in the kernel
(written to a JSON file by an ``on_change`` callback, read here) are the same cells, and that
they are the cells the gesture enclosed. Then a relabel (Enter in the label box) must change
exactly the selected cells and the CSV export must hold what the page shows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_browser import _browser_tools, _save_screenshot, _voila_page, _write_notebook

CODE = """\
import json
import numpy as np
import biomed_toolkit as bt
adata = bt.datasets.pbmc68k_counts()[::2][:300].copy()
adata.obs["pred"] = adata.obs["bulk_labels"].astype(str)
adata.obs["pred_confidence"] = np.random.default_rng(0).uniform(size=adata.n_obs)
ann = bt.widgets.CellAnnotator(adata, basis="X_umap", label_key="pred", n_markers=5)

def _dump(a):
    with open("state.json.tmp", "w") as f:
        json.dump({"selection": a.selection.tolist(), "labels": a.labels.tolist(),
                   "n": len(a.history)}, f)
    import os
    os.replace("state.json.tmp", "state.json")

ann.on_change(_dump)
_dump(ann)
ann
"""


def _data():
    import biomed_toolkit as bt

    adata = bt.datasets.pbmc68k_counts()[::2][:300].copy()
    return adata.obsm["X_umap"].astype(float), adata.obs["bulk_labels"].astype(str).to_numpy()


class _Page:
    """Pixel <-> data mapping of the plot and the three views of the selection."""

    def __init__(self, page, folder: Path, coords: np.ndarray) -> None:
        self.page, self.folder, self.coords = page, folder, coords
        self.box = page.locator(".nsewdrag").first.bounding_box()
        layout = page.evaluate(
            "() => { const l = document.querySelector('.js-plotly-plot')._fullLayout;"
            " return [l.xaxis.range, l.yaxis.range]; }")
        (self.x0, self.x1), (self.y0, self.y1) = layout

    def px(self, xy: np.ndarray) -> np.ndarray:
        b = self.box
        x = b["x"] + (xy[:, 0] - self.x0) / (self.x1 - self.x0) * b["width"]
        y = b["y"] + (self.y1 - xy[:, 1]) / (self.y1 - self.y0) * b["height"]
        return np.stack([x, y], axis=1)

    def sent(self) -> int:
        """Events sent to Python so far (plot gestures and key presses)."""
        return int(self.page.evaluate(
            "() => [...document.querySelectorAll('[data-sent]')]"
            ".reduce((n, e) => n + +e.dataset.sent, 0)"))

    def wait_handled(self, before: int, timeout: float = 30) -> None:
        """Wait until a new event was sent and Python answered every one."""
        self.page.wait_for_function(
            "() => { const els = [...document.querySelectorAll('[data-sent]')];"
            f" return els.reduce((n, e) => n + +e.dataset.sent, 0) > {before}"
            " && els.every(e => e.dataset.handled === e.dataset.sent); }",
            timeout=timeout * 1000)

    def highlight(self) -> list[int]:
        return sorted(int(c) for c in self.page.evaluate(
            "() => { const gd = document.querySelector('.js-plotly-plot');"
            " const t = gd._fullData.find(d => d.name === 'selection');"
            " return Array.from(t.customdata || []); }"))

    def panel_count(self) -> int:
        text = self.page.locator(".widget-html").first.text_content() or ""
        return int(text.split(" cells selected")[0]) if "cells selected" in text else 0

    def kernel(self) -> dict:
        return json.loads((self.folder / "state.json").read_text())

    def agree(self, expected: set[int] | None, fuzzy: set[int] = frozenset()) -> list[int]:
        """Panel, highlight and ``annotator.selection`` agree (and match ``expected``)."""
        deadline = time.monotonic() + 15
        while True:
            sel, hl, n = self.kernel()["selection"], self.highlight(), self.panel_count()
            if sel == hl and n == len(sel) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert sel == hl, (len(sel), len(hl))
        assert n == len(sel), (n, len(sel))
        if expected is not None:
            diff = set(sel) ^ expected
            assert diff <= set(fuzzy), (sorted(diff - set(fuzzy)), len(sel), len(expected))
        return sel


def _inside(poly: np.ndarray, pts: np.ndarray, margin: float = 3.0) -> tuple[set[int], set[int]]:
    """Points inside the pixel polygon, and those within ``margin`` px of its edge (ambiguous)."""
    from matplotlib.path import Path as MplPath

    path = MplPath(poly)
    inside = path.contains_points(pts)
    near = path.contains_points(pts, radius=margin) != path.contains_points(pts, radius=-margin)
    return set(np.flatnonzero(inside).tolist()), set(np.flatnonzero(near).tolist())


def _drag(page, poly: np.ndarray) -> None:
    page.mouse.move(*poly[0])
    page.mouse.down()
    for x, y in poly[1:]:
        page.mouse.move(float(x), float(y), steps=4)
    page.mouse.up()


@pytest.mark.slow
@pytest.mark.browser
def test_thirty_gestures_panel_highlight_and_selection_agree(tmp_path):
    sync_api, voila = _browser_tools()
    coords, _ = _data()
    rng = np.random.default_rng(3)
    notebook = _write_notebook(tmp_path, "annotator.ipynb", CODE)
    with _voila_page(notebook, sync_api, voila) as page:
        page.wait_for_selector(".legendtext", timeout=120_000)
        try:
            page.wait_for_selector(".bt-plot-view .js-plotly-plot", timeout=60_000)
        except Exception:
            raise AssertionError("\n".join(page.console_messages[-30:])) from None
        # first render: nothing selected, nothing ringed, the panel says so
        assert "No selection" in page.locator(".widget-html").first.text_content()
        view = _Page(page, tmp_path, coords)
        pts = view.px(coords)
        assert view.highlight() == [] and view.kernel()["selection"] == []
        b = view.box
        # cells far (> 7 px) from any other cell: a click on them cannot hit a neighbour
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 1e9
        lonely = np.flatnonzero((d.min(axis=1) > 7)
                                & (pts[:, 0] > b["x"] + 10) & (pts[:, 0] < b["x"] + b["width"] - 10)
                                & (pts[:, 1] > b["y"] + 10) & (pts[:, 1] < b["y"] + b["height"] - 10))
        assert len(lonely) >= 3
        mode = "lasso"
        kinds = ["lasso", "box", "click", "lasso", "clear", "box", "lasso", "click", "clear_key"]
        done = []
        for i in range(30):
            kind = kinds[i % len(kinds)]
            before = view.sent()
            page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
            if kind in ("lasso", "box"):
                want = "lasso" if kind == "lasso" else "select"
                if mode != want:  # keyboard shortcut: l / b while the mouse is over the widget
                    page.keyboard.press("l" if kind == "lasso" else "b")
                    view.wait_handled(before)
                    before = view.sent()
                    page.wait_for_function(
                        f"() => document.querySelector('.js-plotly-plot')._fullLayout.dragmode"
                        f" === '{want}'", timeout=10_000)
                    mode = want
                # a random region in the middle of the plot; gestures may start inside the last one
                cx, cy = (b["x"] + b["width"] * rng.uniform(0.3, 0.7),
                          b["y"] + b["height"] * rng.uniform(0.3, 0.7))
                w, h = b["width"] * rng.uniform(0.15, 0.35), b["height"] * rng.uniform(0.15, 0.35)
                if kind == "box":
                    poly = np.array([[cx - w, cy - h], [cx + w, cy + h]])
                    rect = np.array([[cx - w, cy - h], [cx + w, cy - h], [cx + w, cy + h],
                                     [cx - w, cy + h]])
                    expected, fuzzy = _inside(rect, pts)
                else:
                    t = np.linspace(0, 2 * np.pi, 14)
                    poly = np.stack([cx + w * np.cos(t), cy + h * np.sin(t)], axis=1)
                    expected, fuzzy = _inside(poly, pts, margin=4.0)
                _drag(page, poly)
            elif kind == "click":
                cell = int(lonely[i % len(lonely)])
                page.mouse.move(*pts[cell], steps=3)
                page.wait_for_timeout(400)  # plotly resolves a click through the hovered point
                page.mouse.click(*pts[cell])
                labels = np.asarray(view.kernel()["labels"])
                expected, fuzzy = set(np.flatnonzero(labels == labels[cell]).tolist()), set()
            elif kind == "clear":
                # a click on empty space (a corner of the plot) deselects
                page.mouse.move(b["x"] + 3, b["y"] + 3, steps=3)
                page.wait_for_timeout(300)
                page.mouse.click(b["x"] + 3, b["y"] + 3)
                expected, fuzzy = set(), set()
            else:
                page.keyboard.press("Escape")
                expected, fuzzy = set(), set()
            try:
                view.wait_handled(before)
            except Exception:
                page.screenshot(path=str(tmp_path / "failed.png"))
                raise AssertionError(f"gesture {i} ({kind}) got no answer after {done}:\n"
                                     + "\n".join(page.console_messages[-15:])) from None
            sel = view.agree(expected, fuzzy)
            done.append((kind, len(sel)))
            if i == 1:
                _save_screenshot(page, tmp_path, "cell_annotator_box.png")
        assert len(done) == 30 and sum(n > 0 for _, n in done) >= 12, done

        # relabel: select a region, type a name, press Enter: exactly those cells change
        if mode != "lasso":
            before = view.sent()
            page.keyboard.press("l")
            view.wait_handled(before)
        before = view.sent()
        t = np.linspace(0, 2 * np.pi, 14)
        poly = np.stack([b["x"] + b["width"] * (0.5 + 0.3 * np.cos(t)),
                         b["y"] + b["height"] * (0.5 + 0.3 * np.sin(t))], axis=1)
        _drag(page, poly)
        view.wait_handled(before)
        selected = view.agree(None)
        old = np.asarray(view.kernel()["labels"])
        box = page.get_by_placeholder("new label for the selection")
        box.fill("reviewed")
        before = view.sent()
        box.press("Enter")
        view.wait_handled(before)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.legendtext')].some(t => t.textContent == 'reviewed')",
            timeout=30_000)
        new = np.asarray(view.kernel()["labels"])
        changed = np.flatnonzero(new != old)
        assert set(np.flatnonzero(new == "reviewed").tolist()) == set(selected)
        assert set(changed.tolist()) <= set(selected)
        assert view.agree(set(selected)) == selected  # the selection survives the relabel
        assert f"reviewed ({len(selected)})" in page.locator(".widget-html").first.text_content()

        # export: the CSV holds the labels and the selection on screen
        page.get_by_role("button", name="Export CSV").click()
        csv = tmp_path / "pred_annotations.csv"
        deadline = time.monotonic() + 20
        while not csv.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        import pandas as pd

        df = pd.read_csv(csv)
        assert df.loc[df["selected"], "label"].eq("reviewed").all()
        assert df.index[df["selected"]].tolist() == selected
        assert df["label"].tolist() == new.tolist()

        # undo with the keyboard; a gene colouring shows a titled colour bar
        before = view.sent()
        page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
        page.keyboard.press("u")
        view.wait_handled(before)
        page.wait_for_function(
            "() => ![...document.querySelectorAll('.legendtext')].some(t => t.textContent == 'reviewed')",
            timeout=30_000)
        colour = page.get_by_placeholder("label, an obs column or a gene")
        colour.fill("NKG7")
        colour.press("Enter")
        page.wait_for_selector(".colorbar .cbtitle", timeout=30_000)
        assert "NKG7" in page.locator(".colorbar .cbtitle").first.text_content()
        _save_screenshot(page, tmp_path, "cell_annotator_gene.png")
