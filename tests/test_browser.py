"""A notebook with a live widget, served by Voila and driven in headless Chromium (Playwright).

Voila executes the notebook in a real kernel; the page talks to it over the widget protocol, so a
change made in the browser goes through the Python callbacks and comes back as a redrawn figure.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Two phantom cases and the lesion matcher; template matching needs no model weights.
NOTEBOOK_CODE = """\
import biomed_toolkit as bt
cases = [bt.mammo.phantom(seed, n_lesions=2) for seed in (11, 12)]
matcher = bt.widgets.LesionMatcher(cases, method="template", threshold=0.5)
matcher
"""


def _voila() -> str | None:
    local = Path(sys.executable).parent / "voila"
    return str(local) if local.exists() else shutil.which("voila")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))),
                                          timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"voila did not answer at {url} within {timeout:.0f} s")


def _browser_tools():
    """(playwright.sync_api, voila executable); skips when a piece is missing."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium (/usr/bin/chromium) is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("nbformat")
    voila = _voila()
    if voila is None:
        pytest.skip("voila is not installed")
    return sync_api, voila


def _write_notebook(folder: Path, name: str, code: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / name
    nbformat.write(nb, path)
    return path


@contextmanager
def _voila_page(notebook: Path, sync_api, voila: str) -> Iterator:
    """Serve ``notebook`` with Voila and yield a headless Chromium page showing it."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    log = open(notebook.with_suffix(".voila.log"), "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [voila, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1", str(notebook)],
        cwd=notebook.parent, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        _wait_http(url, proc, timeout=120)  # a busy 2-core CI box starts voila slowly
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 900})
                console: list[str] = []
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.console_messages = console  # read by tests when something fails
                frames: list[tuple[float, int]] = []  # (time, bytes) of kernel -> page messages

                def _ws(ws) -> None:
                    ws.on("framereceived", lambda payload: frames.append(
                        (time.monotonic(), len(payload))))

                page.on("websocket", _ws)
                page.ws_frames = frames
                # Voila runs the notebook before it sends the page: allow for the kernel start
                page.goto(url, timeout=90_000)
                yield page
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def _save_screenshot(page, tmp_path: Path, name: str) -> Path:
    """Screenshot into ``tmp_path`` and a copy into test-artifacts/ for people to look at."""
    shot = tmp_path / name
    page.screenshot(path=str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / name)
    return shot


def _titles(page) -> list[str]:
    # plotly writes the figure title into an SVG <text class="gtitle">
    return [el.text_content() or "" for el in page.query_selector_all(".gtitle")]


def _slider_to_max(page) -> None:
    # keyboard on the noUiSlider handle: exact, unlike a mouse drag
    handle = page.locator(".noUi-handle").first
    handle.focus()
    handle.press("End")


def _drawn_lines(page) -> int:
    """Drawn path segments of the matched-pairs trace (an empty trace draws none)."""
    return int(page.evaluate(
        "() => [...document.querySelectorAll('.scatterlayer .trace')]"
        ".filter(t => t.__data__ && t.__data__[0] && t.__data__[0].trace"
        " && (t.__data__[0].trace.name || '').startsWith('pairs'))"
        ".flatMap(t => [...t.querySelectorAll('path.js-line')])"
        ".filter(p => (p.getAttribute('d') || '').length > 2).length"))


def _applied(page) -> int:
    """Update messages the plot view has drawn (``data-applied`` of the view)."""
    return int(page.get_attribute(".bt-plot-view", "data-applied") or 0)


@pytest.mark.slow
@pytest.mark.browser
def test_lesion_matcher_updates_in_voila(tmp_path):
    sync_api, voila = _browser_tools()
    notebook = _write_notebook(tmp_path, "lesion_matcher.ipynb", NOTEBOOK_CODE)
    with _voila_page(notebook, sync_api, voila) as page:
        case_select = page.locator("select").first
        case_select.wait_for(timeout=120_000)
        options = case_select.locator("option").all_text_contents()
        assert len(options) == 2 and "phantom-12" in options[1], options
        # 0. the figure is drawn on first render, before any interaction
        page.wait_for_function(
            "() => [...document.querySelectorAll('.gtitle')].some(t => t.textContent.length > 0)",
            timeout=60_000)
        first_title = " ".join(_titles(page))
        assert "phantom-12" not in first_title, first_title
        # the title stays clear of the (vertical) toolbar
        title = page.locator(".gtitle").first.bounding_box()
        bar = page.locator(".modebar").first.bounding_box()
        assert bar is None or title["x"] + title["width"] < bar["x"] or title["y"] > bar["y"] + bar["height"]

        # 1. pick the second case in the dropdown: the figure is redrawn for it
        case_select.select_option(index=1)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.gtitle')]"
            ".some(t => t.textContent.includes('phantom-12'))", timeout=60_000)
        title = " ".join(_titles(page))
        assert "threshold 0.5" in title, title
        lines_before = _drawn_lines(page)
        page.screenshot(path=str(tmp_path / "lesion_matcher_case.png"))

        # 2. one threshold step with the keyboard: redrawn in < 0.5 s with < 100 kB sent
        handle = page.locator(".noUi-handle").first
        handle.focus()
        timings = []
        for _ in range(3):
            before, n_frames = _applied(page), len(page.ws_frames)
            start = time.monotonic()
            handle.press("ArrowRight")
            page.wait_for_function(f"() => +document.querySelector('.bt-plot-view')"
                                   f".dataset.applied > {before}", timeout=30_000, polling=20)
            elapsed = time.monotonic() - start
            sent = sum(n for _, n in page.ws_frames[n_frames:])
            timings.append((elapsed, sent))
        print("threshold step (seconds, bytes):", timings, "load", os.getloadavg())
        # the kernel's share is ~0.03 s (tests/mammo/test_views.py); the rest is the machine:
        # on a machine far busier than its cores (other test runs) allow for the queueing
        busy = os.getloadavg()[0] > 2 * (os.cpu_count() or 1)
        assert min(t for t, _ in timings) < (1.5 if busy else 0.5), timings
        assert max(b for _, b in timings) < 100_000, timings
        (ARTIFACTS / "lesion_matcher_timings.txt").parent.mkdir(exist_ok=True)
        (ARTIFACTS / "lesion_matcher_timings.txt").write_text(
            "\n".join(f"{t:.3f} s {b} bytes" for t, b in timings) + "\n")

        # 3. to the maximum: the title and the drawn pairs follow (no pair reaches p >= 1)
        handle.press("End")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.gtitle')]"
            ".some(t => t.textContent.includes('threshold 1)'))", timeout=30_000)
        assert page.locator(".widget-readout").first.text_content().strip() == "1.00"
        _save_screenshot(page, tmp_path, "lesion_matcher_voila.png")
        assert lines_before > 0 and _drawn_lines(page) == 0, (lines_before, _drawn_lines(page))

        # 4. keyboard: n shows the next case (wraps around to the first)
        page.mouse.move(*_centre(page))
        page.keyboard.press("n")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.gtitle')]"
            ".some(t => t.textContent.includes('phantom-11'))", timeout=60_000)


def _centre(page) -> tuple[float, float]:
    b = page.locator(".nsewdrag").first.bounding_box()
    return b["x"] + b["width"] / 2, b["y"] + b["height"] / 2


# 300 PBMCs with their precomputed UMAP; the known bulk labels stand in for predictions and
# seeded uniform confidences (all < 1) feed the slider, so no model is needed.
CELL_ANNOTATOR_DATA = """\
import numpy as np
import biomed_toolkit as bt
adata = bt.datasets.pbmc68k_counts()[::2][:300].copy()
adata.obs["pred"] = adata.obs["bulk_labels"].astype(str)
adata.obs["pred_confidence"] = np.random.default_rng(0).uniform(size=adata.n_obs)
"""
CELL_ANNOTATOR_CODE = CELL_ANNOTATOR_DATA + """\
ann = bt.widgets.CellAnnotator(adata, basis="X_umap", label_key="pred")
ann
"""


def _legend(page) -> list[str]:
    return [el.text_content() or "" for el in page.query_selector_all(".legendtext")]


def _html_texts(page) -> list[str]:
    return [el.text_content() or "" for el in page.query_selector_all(".widget-html")]


def _coloured_pixels(page) -> int:
    """Saturated pixels in the plot area: the drawn (WebGL) points, not axes or grey cells."""
    import numpy as np
    from PIL import Image

    png = page.screenshot(clip=page.locator(".nsewdrag").first.bounding_box())
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 60).sum())


@pytest.mark.slow
@pytest.mark.browser
def test_cell_annotator_select_relabel_threshold_in_voila(tmp_path):
    sync_api, voila = _browser_tools()
    pytest.importorskip("PIL")
    import numpy as np

    data: dict = {}
    exec(CELL_ANNOTATOR_DATA, data)  # the notebook's own data, to know what it must show
    adata = data["adata"]
    categories = sorted(set(adata.obs["pred"]))
    notebook = _write_notebook(tmp_path, "cell_annotator.ipynb", CELL_ANNOTATOR_CODE)
    with _voila_page(notebook, sync_api, voila) as page:
        # 0. first render: coloured points, one legend entry per label, no interaction needed
        page.wait_for_selector(".legendtext", timeout=60_000)
        assert "pred on X_umap" in " ".join(_titles(page))
        assert _legend(page) == categories
        assert any("300 cells; 0 Unassigned" in t for t in _html_texts(page)), _html_texts(page)
        coloured_before = _coloured_pixels(page)
        assert coloured_before > 1000, coloured_before  # ~300 points of ~20 px each

        # 1. lasso every cell left of the widest gap in UMAP x (no cell near the edge): Python
        #    gets exactly those points and lists their marker genes
        xs = np.sort(adata.obsm["X_umap"][:, 0])
        gap = 10 + int(np.argmax(np.diff(xs)[10:len(xs) // 2]))
        expected, cut = gap + 1, (xs[gap] + xs[gap + 1]) / 2
        box = page.locator(".nsewdrag").first.bounding_box()
        x0, x1 = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullLayout.xaxis.range")
        right = box["x"] + (cut - x0) / (x1 - x0) * box["width"]
        corners = [(right, box["y"] + 2), (right, box["y"] + box["height"] - 2),
                   (box["x"] + 2, box["y"] + box["height"] - 2), (box["x"] + 2, box["y"] + 2)]
        page.mouse.move(*corners[-1])
        page.mouse.down()
        for x, y in corners:
            page.mouse.move(x, y, steps=5)
        page.mouse.up()
        page.wait_for_function("() => document.body.innerText.includes('cells selected')",
                               timeout=30_000)
        info = _html_texts(page)[0]
        assert info.startswith(f"{expected} cells selected"), (info, expected)
        assert page.locator(".widget-html table tbody tr").count() == 10  # n_markers
        # the side panel sits right of the plot, readable and inside the window
        table = page.locator(".widget-html table").bounding_box()
        assert table["width"] > 200 and table["x"] >= box["x"] + box["width"], (table, box)
        assert table["x"] + table["width"] <= page.viewport_size["width"], table

        # 2. relabel the selection from the text box and button
        page.get_by_placeholder("new label for the selection").fill("reviewed")
        page.get_by_role("button", name="Relabel").click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.legendtext')].some(t => t.textContent == 'reviewed')",
            timeout=30_000)
        assert any(f"{expected} set by hand" in t for t in _html_texts(page)), _html_texts(page)
        # Escape (mouse over the plot) clears the selection: nothing dimmed for the pixel count
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.keyboard.press("Escape")
        page.wait_for_function("() => document.body.innerText.includes('No selection')",
                               timeout=30_000)

        # 3. confidence slider to 1: every cell not set by hand reads Unassigned (grey)
        _slider_to_max(page)
        page.wait_for_function(
            "() => [...document.querySelectorAll('.legendtext')].some(t => t.textContent == 'Unassigned')",
            timeout=30_000)
        assert page.locator(".widget-readout").first.text_content().strip() == "1.00"
        assert _legend(page) == ["reviewed", "Unassigned"]
        n_unassigned = adata.n_obs - expected
        assert any(f"{n_unassigned} Unassigned at confidence < 1.00" in t for t in _html_texts(page))
        deadline = time.monotonic() + 10  # the WebGL canvas repaints a frame after the legend
        while _coloured_pixels(page) > 0.6 * coloured_before and time.monotonic() < deadline:
            time.sleep(0.2)
        coloured_after = _coloured_pixels(page)
        assert 0 < coloured_after < 0.6 * coloured_before, (coloured_before, coloured_after)
        page.screenshot(path=str(tmp_path / "cell_annotator_threshold.png"))

        # 4. colour by confidence: a colour bar with its title replaces the legend
        colour = page.get_by_placeholder("label, an obs column or a gene")
        colour.fill("confidence")
        colour.press("Enter")
        page.wait_for_selector(".colorbar", timeout=30_000)
        assert "confidence" in page.locator(".colorbar .cbtitle").first.text_content()
        assert _legend(page) == []
        _save_screenshot(page, tmp_path, "cell_annotator_voila.png")
