"""Every notebook and tutorial runs offline on the embedded defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb")) + sorted((REPO / "tutorials").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path):
    from biomed_toolkit.notebook_runner import execute_notebook

    run = execute_notebook(path, timeout=600, env={"HF_HUB_OFFLINE": "1", "PLOTLY_RENDERER": "notebook"})
    assert run.error is None, run.error[-3000:]
    outputs = [o for c in run.notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]


def test_notebooks_are_stripped_in_git():
    import nbformat

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.get("outputs"), f"{path.name}: outputs must be stripped before commit"
                assert cell.get("execution_count") is None, f"{path.name}: execution counts must be stripped"


def test_report_is_self_contained(tmp_path):
    import nbformat

    from biomed_toolkit.notebook_runner import execute_notebook, write_report

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
                                  "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()"),
        nbformat.v4.new_code_cell("import plotly.graph_objects as go\ngo.Figure(go.Scatter(y=[1, 3, 2])).show()"),
    ]
    path = tmp_path / "mini.ipynb"
    nbformat.write(nb, path)
    run = execute_notebook(path, timeout=120, env={"PLOTLY_RENDERER": "notebook"})
    assert run.error is None
    index = write_report([run], tmp_path / "report")
    page = (tmp_path / "report" / "mini.html").read_text()
    assert "data:image/png;base64" in page
    assert "Plotly.newPlot" in page or "plotly" in page.lower()
    assert not re.search(r"<script[^>]+src=[\"']https?://", page)
    assert "mini.html" in index.read_text()
