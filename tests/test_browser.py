"""A notebook with a live widget, served by Voila and driven in headless Chromium (Playwright).

Voila executes the notebook in a real kernel; the page talks to it over the widget protocol, so a
change made in the browser goes through the Python callbacks and comes back as a redrawn figure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
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


def _titles(page) -> list[str]:
    # plotly writes the figure title into an SVG <text class="gtitle">
    return [el.text_content() or "" for el in page.query_selector_all(".gtitle")]


def _drawn_lines(page) -> int:
    # the matched pairs are the only line traces; an empty trace draws no path data
    return int(page.evaluate(
        "() => [...document.querySelectorAll('.scatterlayer path.js-line')]"
        ".filter(p => (p.getAttribute('d') || '').length > 2).length"))


@pytest.mark.slow
@pytest.mark.browser
def test_lesion_matcher_updates_in_voila(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium (/usr/bin/chromium) is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    nbformat = pytest.importorskip("nbformat")
    voila = _voila()
    if voila is None:
        pytest.skip("voila is not installed")

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_CODE)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "lesion_matcher.ipynb"
    nbformat.write(nb, path)

    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    log = open(tmp_path / "voila.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [voila, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1", str(path)],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        _wait_http(url, proc, timeout=30)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 900})
                # Voila runs the notebook before it sends the page: allow for the kernel start
                page.goto(url, timeout=90_000)
                case_select = page.locator("select").first
                case_select.wait_for(timeout=60_000)
                options = case_select.locator("option").all_text_contents()
                assert len(options) == 2 and "phantom-12" in options[1], options
                # 0. the figure is drawn on first render, before any interaction
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.gtitle')].some(t => t.textContent.length > 0)",
                    timeout=30_000)
                first_title = " ".join(_titles(page))
                assert "phantom-12" not in first_title, first_title

                # 1. pick the second case in the dropdown: the figure is redrawn for it
                case_select.select_option(index=1)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.gtitle')]"
                    ".some(t => t.textContent.includes('phantom-12'))", timeout=30_000)
                title = " ".join(_titles(page))
                assert "threshold 0.5" in title, title
                lines_before = _drawn_lines(page)
                page.screenshot(path=str(tmp_path / "lesion_matcher_case.png"))

                # 2. move the threshold slider to its maximum with the keyboard: the title and
                #    the drawn pairs follow (no pair reaches p >= 1)
                handle = page.locator(".noUi-handle").first
                handle.focus()
                handle.press("End")
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.gtitle')]"
                    ".some(t => t.textContent.includes('threshold 1)'))", timeout=30_000)
                assert page.locator(".widget-readout").first.text_content().strip() == "1.00"
                shot = tmp_path / "lesion_matcher.png"
                page.screenshot(path=str(shot))
                shutil.copy(shot, artifacts / "lesion_matcher_voila.png")
                assert lines_before > 0 and _drawn_lines(page) == 0, (lines_before, _drawn_lines(page))
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
