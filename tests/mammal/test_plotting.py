"""Drug-target notebook views: molecule grids, offline 3D views, protein tracks, score plots."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from biomed_toolkit.core.errors import InputError, PromptError
from biomed_toolkit.mammal import plotting as mpl

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
CAFFEINE = "Cn1cnc2c1c(=O)n(C)c(=O)n2C"

# sha256 of build/3Dmol-min.js in the npm tarball 3dmol-2.5.5.tgz
THREEDMOL_SHA256 = "f7cc78921ae72e7623e89cdd111434f58c2efddd2ffda1cd212644b406fb8016"


def _highlighted_atoms(svg: str) -> set[int]:
    """Atom indices that RDKit drew a highlight ellipse for."""
    return {int(m) for m in re.findall(r"<ellipse[^>]*class='atom-(\d+)'", svg)}


def _ellipse_fill(svg: str, atom: int) -> str:
    """Highlight colour of an atom, snapped to "red"/"blue"/"other" (RDKit truncates channels)."""
    m = re.search(rf"<ellipse[^>]*class='atom-{atom}'[^>]*style='fill:#([0-9A-F]{{6}})", svg)
    assert m, f"atom {atom} is not highlighted"
    r, g, b = (int(m.group(1)[i : i + 2], 16) for i in (0, 2, 4))
    if (r, g, b) >= (254, 0, 0) and abs(g - 64) <= 2 and abs(b - 64) <= 2:
        return "red"
    if b >= 254 and abs(r - 64) <= 2 and abs(g - 64) <= 2:
        return "blue"
    return f"#{m.group(1)}"


# ----------------------------------------------------------------------------- 2D grid


def test_grid_draws_one_cell_per_valid_molecule_and_an_error_cell_for_bad_smiles():
    smiles = [ASPIRIN, "C1CC", CAFFEINE, "C(C)(C)(C)(C)C", "not a smiles"]
    grid = mpl.molecules(smiles, legends=[6.234, 5.0, 7.5, 4.2, 3.3], n_cols=3)
    assert len(grid) == 5
    assert grid.n_valid == 2
    assert [e is None for e in grid.errors] == [True, False, True, False, False]
    assert "unclosed ring" in grid.errors[1]
    assert "valence" in grid.errors[3].lower()
    svg = grid.to_svg()
    root = ET.fromstring(svg)  # well-formed
    assert root.get("width") == "660px" and root.get("height") == "360px"
    assert svg.count("class='bt-cell bt-mol'") == 2
    assert svg.count("class='bt-cell bt-error'") == 3
    # legends: numbers with two decimals, carried in the cell title
    assert f"<title>{ASPIRIN} | 6.23</title>" in grid.cells[0]
    assert "invalid SMILES" in grid.cells[1] and "C1CC" in grid.cells[1]
    # notebook HTML is the same SVG, no script
    html = grid._repr_html_()
    assert svg in html and "<script" not in html


def test_grid_from_dataframe_with_legend_column_and_mols():
    from rdkit import Chem

    df = pd.DataFrame({"SMILES": [ASPIRIN, CAFFEINE], "pKd": [6.5, np.nan]})
    grid = mpl.molecules(df, smiles_col="SMILES", legend_col="pKd")
    assert grid.legends == ["pKd 6.50", ""]
    assert grid.smiles == [ASPIRIN, CAFFEINE]
    with pytest.raises(InputError, match="no column 'smiles'"):
        mpl.molecules(df)
    with pytest.raises(InputError, match="2 legends for 1 molecules"):
        mpl.molecules("CCO", legends=[1, 2])
    assert mpl.molecules([Chem.MolFromSmiles("CCO")]).n_valid == 1


def test_highlight_by_smarts_and_by_indices():
    grid = mpl.molecules(["c1ccccc1O", "CCO", "CCC"], highlight="[OX2H]")
    assert _highlighted_atoms(grid.cells[0]) == {6}
    assert _highlighted_atoms(grid.cells[1]) == {2}
    assert _highlighted_atoms(grid.cells[2]) == set()
    per_mol = mpl.molecules(["CCO", "CCN"], highlight=[[0, 1], None])
    assert _highlighted_atoms(per_mol.cells[0]) == {0, 1}
    assert _highlighted_atoms(per_mol.cells[1]) == set()
    with pytest.raises(InputError, match="out of range"):
        mpl.molecules("CCO", highlight=[5])
    with pytest.raises(InputError, match="SMARTS"):
        mpl.molecules("CCO", highlight="[C")


def test_atom_scores_colour_atoms_and_survive_explicit_hydrogens():
    grid = mpl.molecules("CCO", atom_scores=[0.0, 1.0, -1.0])
    svg = grid.cells[0]
    assert _ellipse_fill(svg, 1) == "red"  # strongest positive
    assert _ellipse_fill(svg, 2) == "blue"  # strongest negative
    # [H] is atom 0 of the parsed SMILES but is not drawn: O (score 5) becomes drawn atom 0
    grid_h = mpl.molecules("[H]OC", atom_scores=[1.0, 5.0, 0.0])
    assert _ellipse_fill(grid_h.cells[0], 0) == "red"
    assert np.allclose(grid_h.atom_scores[0], [1.0, 5.0, 0.0])
    with pytest.raises(InputError, match="has 2 values but the molecule has 3 atoms"):
        mpl.molecules("CCO", atom_scores=[1.0, 2.0])


def test_smiles_atom_spans_follow_rdkit_atom_order():
    from rdkit import Chem

    for smi in [ASPIRIN, CAFFEINE, "C[C@H](N)C(=O)[O-].[Na+]", "ClC1CC%11CC1%11Br", "[2H]OC"]:
        spans = mpl.smiles_atom_spans(smi)
        params = Chem.SmilesParserParams()
        params.removeHs = False
        mol = Chem.MolFromSmiles(smi, params)
        assert len(spans) == mol.GetNumAtoms(), smi
        for atom, (s, e) in zip(mol.GetAtoms(), spans):
            text = smi[s:e].strip("[]")
            assert re.sub(r"^\d+", "", text).lower().startswith(atom.GetSymbol().lower()), (
                smi,
                text,
            )


def test_token_scores_map_onto_atoms():
    tokens = ["<SEQUENCE_NATURAL_START>", "CC(=O)O", "c1ccccc1", "C(=O)O", "<EOS>"]
    scores = [9.0, 1.0, 2.0, 3.0, 9.0]
    atoms = mpl.token_scores_to_atoms(ASPIRIN, tokens, scores)
    assert atoms.tolist() == [1.0] * 4 + [2.0] * 6 + [3.0] * 3
    # an atom split over two tokens takes their mean
    assert mpl.token_scores_to_atoms("CCl", ["CC", "l"], [1.0, 3.0]).tolist() == [1.0, 2.0]
    # (token, score) pairs straight into the grid
    pairs = mpl.molecules("CCO", atom_scores=[("CC", 0.0), ("O", 2.0)])
    assert pairs.atom_scores[0].tolist() == [0.0, 0.0, 2.0]
    assert _ellipse_fill(pairs.cells[0], 2) == "red"
    with pytest.raises(InputError, match="do not spell"):
        mpl.token_scores_to_atoms("CCO", ["CCN"], [1.0])
    # truncated tokenization: atoms beyond the kept tokens are NaN
    trunc = mpl.token_scores_to_atoms("CCOCC", ["CC", "O"], [1.0, 2.0])
    assert trunc[:3].tolist() == [1.0, 1.0, 2.0] and np.isnan(trunc[3:]).all()


def test_token_attribution_from_the_official_tokenizer_colours_the_grid(official_tokenizer):
    from biomed_toolkit.mammal import prompts

    table = official_tokenizer.token_breakdown(prompts.dti("MKTAYIAKQR", ASPIRIN))
    # a fake attribution: the ring token scores high, everything else low
    table["score"] = np.where(table["token"] == "c1ccccc1", 1.0, 0.1)
    grid = mpl.molecules(ASPIRIN, atom_scores=table)
    ring = {4, 5, 6, 7, 8, 9}
    assert _highlighted_atoms(grid.cells[0]) == set(range(13))
    assert {a for a in ring if _ellipse_fill(grid.cells[0], a) == "red"} == ring
    assert _ellipse_fill(grid.cells[0], 0) != "red"


# ----------------------------------------------------------------------------- 3D view


def test_bundled_3dmol_is_the_npm_build():
    js = mpl.bundled_3dmol_js()
    assert hashlib.sha256(js.encode("utf-8")).hexdigest() == THREEDMOL_SHA256
    assert (mpl._STATIC / "3Dmol-LICENSE.txt").read_text().count("BSD-3-Clause") >= 1


def test_molecule_3d_html_inlines_bundle_and_loads_nothing_from_the_network():
    view = mpl.molecule_3d(ASPIRIN, style="ballstick", width=320, height=240)
    assert view.forcefield == "MMFF94" and view.converged
    html = view._repr_html_()
    assert mpl.bundled_3dmol_js() in html
    # no external script of any kind; the py3Dmol loader is replaced by the inlined bundle
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)
    assert mpl._JS_SENTINEL not in html and "$3Dmolpromise = Promise.resolve()" in html
    assert "cdn" not in html.lower() and "3dmol.org" not in html.lower()
    viewer_script = html.split("</script>")[1]
    assert "https://" not in viewer_script and "http://" not in viewer_script
    assert "width: 320px; height: 240px" in html
    assert '"sphere": {"scale": 0.25}' in html


def test_molecule_3d_conformer_is_3d_deterministic_and_has_hydrogens():
    from rdkit import Chem

    a = mpl.molecule_3d(CAFFEINE, seed=7)
    b = mpl.molecule_3d(CAFFEINE, seed=7)
    assert a.molblock == b.molblock
    mol = Chem.MolFromMolBlock(a.molblock, removeHs=False)
    assert mol.GetNumAtoms() == 24  # 14 heavy atoms + 10 H
    xyz = mol.GetConformer().GetPositions()
    assert np.ptp(xyz[:, 2]) > 0.5  # methyl hydrogens stick out of the ring plane
    # MMFF-optimised bond lengths are chemical (C-H about 1.09 A)
    ch = [
        np.linalg.norm(xyz[b.GetBeginAtomIdx()] - xyz[b.GetEndAtomIdx()])
        for b in mol.GetBonds()
        if {b.GetBeginAtom().GetSymbol(), b.GetEndAtom().GetSymbol()} == {"C", "H"}
    ]
    assert np.allclose(ch, 1.09, atol=0.02)


def test_molecule_3d_errors():
    with pytest.raises(InputError, match="cannot build a 3D view.*C1CC"):
        mpl.molecule_3d("C1CC")
    with pytest.raises(InputError, match="unknown style 'cartoon'"):
        mpl.molecule_3d("CCO", style="cartoon")


NODE_CHECK = r"""
const fs = require('fs'), vm = require('vm');
const [bundle, viewer] = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
function context() {
  const ctx = {console, Promise, setTimeout, TextEncoder, TextDecoder, URL, Blob,
               navigator: {userAgent: 'node'}, location: {href: 'http://localhost/'}};
  ctx.window = ctx; ctx.self = ctx;
  ctx.document = {createElement: () => ({getContext: () => null, style: {}}),
                  getElementsByTagName: () => [], getElementById: () => null, addEventListener() {}};
  // Jupyter classic defines an AMD loader; the bundle must not register with it
  ctx.define = function () { throw new Error('AMD define called'); }; ctx.define.amd = {};
  return vm.createContext(ctx);
}
const out = {};
const a = context();
vm.runInContext(bundle, a);
out.loaded = typeof a.$3Dmol === 'object' && typeof a.$3Dmol.createViewer === 'function';
// the viewer script against a recording stub of $3Dmol
const b = context(); const calls = [];
b.$3Dmol = {createViewer: () => new Proxy({}, {get: (_, name) => (...args) => calls.push(name)})};
b.$3Dmolpromise = Promise.resolve();
vm.runInContext(viewer, b);
setTimeout(() => { out.calls = calls; console.log(JSON.stringify(out)); }, 50);
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_molecule_3d_scripts_run_in_node(tmp_path):
    import json

    html = mpl.molecule_3d("CCO").to_html()
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", html, flags=re.S)
    assert len(scripts) == 2
    (tmp_path / "scripts.json").write_text(json.dumps(scripts))
    (tmp_path / "check.js").write_text(NODE_CHECK)
    res = subprocess.run(
        ["node", str(tmp_path / "check.js"), str(tmp_path / "scripts.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["loaded"] is True
    # py3Dmol zooms once on creation; then our model, style and zoom, then the render
    assert out["calls"][-4:] == ["addModel", "setStyle", "zoomTo", "render"]


# ----------------------------------------------------------------------------- protein track


def test_protein_track_by_class_and_by_score():
    seq = "MKTAYIAKQRDEGPWX" * 5  # 80 residues -> 2 rows of 60
    fig = mpl.protein(seq, show=False, return_fig=True)
    heat = fig.data[0]
    assert heat.type == "heatmap" and np.asarray(heat.z).shape == (2, 60)
    custom = np.asarray(heat.customdata)
    assert list(custom[0, 1]) == [2, "K", "positive", ""]
    assert list(custom[1, 19]) == [80, "X", "other", ""]
    assert np.isnan(np.asarray(heat.z, dtype=float)[1, 20:]).all()
    assert "position %{customdata[0]}" in heat.hovertemplate

    scores = np.linspace(-1, 1, len(seq))
    fig = mpl.protein(seq, scores, wrap=40, show=False, return_fig=True)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (2, 40) and np.allclose(z.ravel(), scores)
    assert fig.data[0].zmid == 0.0
    assert mpl.protein(seq, show=False) is not None  # the core display rule: show=False returns the figure


def test_protein_errors_name_the_problem():
    with pytest.raises(PromptError, match="invalid residue 'j' at position 3"):
        mpl.protein("MKTjA", show=False)
    with pytest.raises(InputError, match="got 3 scores for a sequence of 5 residues"):
        mpl.protein("MKTAY", [1, 2, 3], show=False)


# ----------------------------------------------------------------------------- score plots


def test_affinity_scatter_metrics_match_scipy_and_nan_pairs_are_dropped():
    from scipy.stats import pearsonr

    rng = np.random.default_rng(0)
    measured = rng.normal(6, 1.3, 50)
    pred = measured + rng.normal(0, 0.5, 50)
    pred[3] = np.nan
    fig = mpl.affinity_scatter(
        pd.Series(pred, name="pKd (pred)"), measured, return_fig=True, show=False
    )
    ok = ~np.isnan(pred)
    meta = fig.layout.meta
    assert meta["n"] == 49 and meta["n_dropped"] == 1
    assert meta["pearson_r"] == pytest.approx(pearsonr(pred[ok], measured[ok]).statistic)
    assert meta["rmse"] == pytest.approx(np.sqrt(np.mean((pred[ok] - measured[ok]) ** 2)))
    assert len(fig.data[0].x) == 49
    line = fig.data[1]
    assert line.name == "y = x" and list(line.x) == list(line.y)
    assert fig.layout.yaxis.title.text == "pKd (pred)"
    assert (
        "Pearson r = " in fig.layout.title.text
        and "1 pairs with NaN dropped" in fig.layout.title.text
    )
    with pytest.raises(InputError, match="pred has 2 values but measured has 3"):
        mpl.affinity_scatter([1, 2], [1, 2, 3], show=False)


def test_affinity_scatter_from_dataframe_columns():
    df = pd.DataFrame({"pred": [5.0, 6.0, 7.5], "pKd": [5.2, 6.3, 7.0], "id": ["a", "b", "c"]})
    fig = mpl.affinity_scatter("pred", "pKd", data=df, labels=df["id"], return_fig=True, show=False)
    assert list(fig.data[0].text) == ["a", "b", "c"]
    assert fig.layout.xaxis.title.text == "pKd"


def test_score_distribution_threshold_and_groups():
    scores = np.array([4.0, 5.0, 6.0, 6.5, 7.0, np.nan])
    fig = mpl.score_distribution(scores, threshold=6.0, return_fig=True, show=False)
    assert fig.layout.meta["n_above"] == 3 and fig.layout.meta["n_missing"] == 1
    assert len(fig.data) == 1 and len(fig.data[0].x) == 5
    df = pd.DataFrame({"score": scores, "set": ["a", "a", "b", "b", "b", "a"]})
    fig = mpl.score_distribution("score", data=df, groups="set", return_fig=True, show=False)
    assert [t.name for t in fig.data] == ["a", "b"]
    assert [len(t.x) for t in fig.data] == [2, 3]


def test_import_stays_light():
    code = (
        "import sys, biomed_toolkit.mammal.plotting, biomed_toolkit.mammal.widgets\n"
        "heavy = [m for m in ('plotly', 'py3Dmol', 'ipywidgets', 'rdkit.Chem.Draw') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- real browser

_BLANKNESS_JS = """() => {
  const c = document.querySelector('canvas');
  if (!c) return {has3Dmol: typeof window.$3Dmol, drawn: 0};
  const off = document.createElement('canvas');
  off.width = c.width; off.height = c.height;
  const ctx = off.getContext('2d');
  ctx.drawImage(c, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) n++;
  return {has3Dmol: typeof window.$3Dmol, drawn: n};
}"""


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian chromium")
def test_molecule_3d_renders_offline_in_chromium():
    """The view draws a molecule with every network request blocked, also when an AMD
    loader (as in Jupyter classic) is on the page, and inside the widget's iframe."""
    playwright = pytest.importorskip("playwright.sync_api")
    view = mpl.molecule_3d(ASPIRIN)
    amd = "<script>window.define=function(){throw new Error('AMD')};window.define.amd={};</script>"
    pages = {
        "plain": f"<html><body>{view.to_html()}</body></html>",
        "amd": f"<html><body>{amd}{view.to_html()}</body></html>",
        "iframe": f"<html><body>{view.to_iframe()}</body></html>",
    }
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
        )
        try:
            for name, content in pages.items():
                page = browser.new_page()
                requests, errors = [], []
                page.on("request", lambda r, requests=requests: requests.append(r.url))
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                page.route("**/*", lambda route: route.abort())
                page.set_content(content)
                frame = page.frames[-1]
                frame.wait_for_function("typeof window.$3Dmol === 'object'", timeout=20000)
                frame.wait_for_selector("canvas", timeout=20000)
                page.wait_for_timeout(500)
                info = frame.evaluate(_BLANKNESS_JS)
                assert requests == [], (name, requests)
                assert errors == [], (name, errors)
                assert info["drawn"] > 1000, (name, info)  # atoms and bonds were painted
                page.close()
        finally:
            browser.close()


def test_virtual_screen_result_feeds_the_plots(tiny_model):
    from biomed_toolkit.mammal.tasks import virtual_screen

    library = [ASPIRIN, CAFFEINE, "C1CC", "c1ccccc1O", "CCN(CC)CC"]
    hits = virtual_screen(tiny_model, "MKTAYIAKQRQISFVKSHFSRQ", library, progress=False)
    grid = mpl.molecules(hits, legend_col="prediction", n_cols=5)
    assert grid.n_valid == 4 and grid.smiles == hits["smiles"].tolist()
    assert grid.errors[-1] is not None and "C1CC" in grid.smiles[-1]  # failed rows rank last
    best = hits["prediction"].iloc[0]
    assert grid.legends[0] == f"prediction {best:.2f}"
    fig = mpl.score_distribution(
        "prediction", data=hits, threshold=best, return_fig=True, show=False
    )
    assert fig.layout.meta["n"] == 4 and fig.layout.meta["n_missing"] == 1
    assert fig.layout.meta["n_above"] >= 1


def test_molecule_3d_passes_a_format_3dmol_knows():
    # 3Dmol.js reads molblocks as "sdf"; "mol" made it log "Unknown format: mol" on every view
    html = mpl.molecule_3d("CCO").to_html()
    formats = re.findall(r'"(\w+)"\);\s*viewer_\d+\.setStyle', html)
    assert formats == ["sdf"]


def test_protein_html_rows_never_wrap():
    seq = "MKTAYIAKQRDEGPWSTNVL" * 6  # 120 residues -> 2 rows of 60
    html = mpl.protein_html(seq)
    rows = re.findall(r"<div style='white-space:nowrap'>(.*?)</div>", html)
    assert len(rows) == 2
    assert [row.count("title='residue") for row in rows] == [60, 60]
    assert "overflow-x:auto" in html
