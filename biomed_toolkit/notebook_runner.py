"""Execute notebooks and write a self-contained HTML report (figures inline, no CDN).

Used by the main job (``make demo`` -> ``scripts/run_demo.py``) and the notebook tests.
"""

from __future__ import annotations

import html
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Scripts that a browser would fetch from the network; a report must not need any.
_REMOTE_SCRIPT = re.compile(r"<script[^>]+src=[\"']https?://", re.IGNORECASE)
# plotly's notebook renderer adds a MathJax loader from a CDN; only LaTeX labels need it.
_MATHJAX_CDN = re.compile(r"<script[^>]+src=[\"']https?://[^\"']*mathjax[^>]*>\s*</script>", re.IGNORECASE)


@dataclass
class NotebookRun:
    """One executed notebook."""

    path: Path
    seconds: float
    error: str | None
    notebook: Any


def execute_notebook(path: str | os.PathLike, *, timeout: int = 600, kernel_name: str = "python3",
                     env: dict[str, str] | None = None) -> NotebookRun:
    """Run every cell of ``path`` in a fresh kernel (working directory: the notebook's folder)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(path.parent)}})
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = str(exc)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return NotebookRun(path, time.perf_counter() - start, error, notebook)


def notebook_body_html(notebook: Any) -> str:
    """The cells of an executed notebook as an HTML fragment, images embedded."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="basic", embed_images=True)
    body, _ = exporter.from_notebook_node(notebook)
    return _MATHJAX_CDN.sub("", body)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
nav a{margin-right:1em} .jp-InputArea,.input_area{background:#f6f8fa;border-radius:4px;padding:.2em .6em;overflow-x:auto}
pre{white-space:pre-wrap} img{max-width:100%} table{border-collapse:collapse;font-size:90%} td,th{padding:2px 8px;border-bottom:1px solid #ddd}
.jp-InputPrompt,.jp-OutputPrompt,.prompt{display:none} .status-ok{color:#1a7f37} .status-fail{color:#cf222e}
"""


def write_report(runs: list[NotebookRun], folder: str | os.PathLike, *, title: str = "biomed_toolkit report") -> Path:
    """Write ``index.html`` (summary) and one page per notebook into ``folder``.

    Raises if any page would load a script from the network.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in runs:
        page = folder / (run.path.stem + ".html")
        body = notebook_body_html(run.notebook)
        doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run.path.stem)}</title>"
               f"<style>{_CSS}</style></head><body><nav><a href='index.html'>&larr; report</a></nav>{body}</body></html>")
        if _REMOTE_SCRIPT.search(doc):
            raise RuntimeError(f"{page.name} would load a script from the network; render it inline")
        page.write_text(doc, encoding="utf-8")
        status = ("<span class='status-ok'>ok</span>" if run.error is None
                  else f"<span class='status-fail'>failed</span><pre>{html.escape(run.error[-2000:])}</pre>")
        rows.append(f"<tr><td><a href='{page.name}'>{html.escape(run.path.name)}</a></td>"
                    f"<td>{run.seconds:.1f} s</td><td>{status}</td></tr>")
    index = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
             f"<p>Generated {time.strftime('%Y-%m-%d %H:%M:%S')} on the embedded default models.</p>"
             f"<table><tr><th>notebook</th><th>time</th><th>status</th></tr>{''.join(rows)}</table></body></html>")
    (folder / "index.html").write_text(index, encoding="utf-8")
    return folder / "index.html"
