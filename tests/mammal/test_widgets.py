"""DrugTargetExplorer driven from Python: fields, preview, run, table, sorting, row views."""

from __future__ import annotations

import datetime
import html
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammal import prompts
from biomed_toolkit.mammal.plotting import bundled_3dmol_js
from biomed_toolkit.mammal.widgets import DrugTargetExplorer

TARGET = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def _table_rows(ex: DrugTargetExplorer) -> list[list[str]]:
    """Cell texts (full values, from the title attributes) of the rendered results table."""
    rows = re.findall(r"<tr class='bt-row[^']*'[^>]*>(.*?)</tr>", ex.table.value, flags=re.S)
    return [[html.unescape(t) for t in re.findall(r"<td title='([^']*)'", r)] for r in rows]


@pytest.fixture
def explorer(tiny_model):
    return DrugTargetExplorer(tiny_model, task="dti", batch_size=2)


def test_task_list_and_fields_follow_the_registry():
    ex = DrugTargetExplorer(SimpleNamespace(tokenizer=None, config=None), task="bbbp")
    options = list(ex.task_dropdown.options)
    for t in ("dti", "ppi", "bbbp", "clintox", "tcr", "solubility"):
        assert t in options
    assert "generate" not in options and "esol" not in options  # no free text, no duplicate alias
    assert list(ex.fields) == ["smiles"]
    ex.task_dropdown.value = "tcr"
    assert list(ex.fields) == ["tcr", "epitope"]
    assert [f.description for f in ex.fields_box.children] == ["tcr", "epitope"]
    assert DrugTargetExplorer(SimpleNamespace(tokenizer=None), task="ESOL").task == "solubility"
    with pytest.raises(InputError, match="unknown task 'kiba'"):
        DrugTargetExplorer(SimpleNamespace(tokenizer=None), task="kiba")


def test_text_fields_pair_lines_and_a_single_line_is_repeated():
    ex = DrugTargetExplorer(SimpleNamespace(tokenizer=None, config=None), task="dti")
    ex.set_inputs(protein=TARGET, smiles=["CCO", "c1ccccc1O", ASPIRIN])
    frame = ex.input_frame()
    assert frame["protein"].tolist() == [TARGET] * 3
    assert frame["smiles"].tolist() == ["CCO", "c1ccccc1O", ASPIRIN]
    # without a tokenizer the preview still shows the exact prompt, and says why tokens are missing
    assert ex.prompt == prompts.dti(TARGET, "CCO")
    assert "token breakdown unavailable: the model has no tokenizer" in ex.prompt_preview.value
    ex.set_inputs(protein=f"{TARGET}\n{TARGET}")
    with pytest.raises(InputError, match="different numbers of lines"):
        ex.input_frame()
    assert "different numbers of lines" in ex.prompt_preview.value
    with pytest.raises(InputError, match="has no input 'drug'"):
        ex.set_inputs(drug="CCO")


def test_preview_shows_exact_prompt_and_token_breakdown(explorer):
    explorer.fields["protein"].value = TARGET
    explorer.fields["smiles"].value = ASPIRIN
    assert explorer.prompt == prompts.dti(TARGET, ASPIRIN)
    tb = explorer.token_breakdown
    regular = tb[tb["kind"] == "regular"]
    assert regular.loc[regular["sub_tokenizer"] == "AA", "token"].tolist() == list(TARGET)
    assert "".join(regular.loc[regular["sub_tokenizer"] == "SMILES", "token"]) == ASPIRIN
    assert tb["token"].iloc[0] == "<MASK>" and tb["token"].iloc[-1] == "<EOS>"
    assert html.escape(explorer.prompt) in explorer.prompt_preview.value
    chips = re.findall(r"<span class='bt-token'[^>]*>([^<]*)</span>", explorer.prompt_preview.value)
    assert [html.unescape(c) for c in chips] == tb["token"].tolist()
    # an invalid first row shows its error instead of a prompt
    explorer.fields["smiles"].value = "C1CC"
    assert explorer.prompt is None
    assert "unclosed ring" in explorer.prompt_preview.value


def test_run_by_button_keeps_going_past_bad_rows_and_fills_the_views(explorer):
    explorer.fields["protein"].value = TARGET
    explorer.fields["smiles"].value = "\n".join(
        ["CCO", "C1CC", ASPIRIN, "c1ccccc1O", "CC(C)(C)(C)(C)C"]
    )
    explorer.run_button.click()
    res = explorer.results
    assert list(res["row"]) == [0, 1, 2, 3, 4]
    assert list(res["smiles"]) == ["CCO", "C1CC", ASPIRIN, "c1ccccc1O", "CC(C)(C)(C)(C)C"]
    bad = res["error"].notna().to_numpy()
    assert bad.tolist() == [False, True, False, False, True]
    assert "unclosed ring" in res.loc[1, "error"]
    assert (
        np.isfinite(res.loc[~bad, "prediction"]).all() and res.loc[bad, "prediction"].isna().all()
    )
    # every batch advanced the bar; the status counts the failures
    assert explorer.progress.value == explorer.progress.max == 5
    assert explorer.progress.bar_style == "warning"
    assert "3 rows predicted" in explorer.status.value and "2 with errors" in explorer.status.value
    # the table shows every row, errors inline
    rows = _table_rows(explorer)
    assert len(rows) == 5
    assert explorer.table.value.count("bt-row bt-error") == 2
    assert any("unclosed ring" in c for r in rows for c in r)
    # the first good row is selected: 2D drawing and offline 3D view
    assert explorer.selected_row == 0
    assert explorer.view_2d.value.count("class='bt-cell bt-mol'") == 1
    srcdoc = re.search(r'srcdoc="([^"]*)"', explorer.view_3d.value).group(1)
    page = html.unescape(srcdoc)
    assert bundled_3dmol_js() in page
    assert not re.search(r"<script[^>]*\bsrc\s*=", page)


def test_select_row_shows_molecule_or_error(explorer):
    explorer.set_inputs(protein=TARGET, smiles=["CCO", "C1CC", ASPIRIN])
    explorer.run()
    explorer.select_row(2)
    assert explorer.selected_row == 2 and explorer.row_dropdown.value == 2
    assert f"<title>{ASPIRIN} | prediction" in explorer.view_2d.value
    assert "bt-molecule-3d" in explorer.view_3d.value
    assert "background:#e8f0fe" in explorer.table.value  # the selected row is highlighted
    explorer.select_row(1)
    assert "row 1: PromptError" in explorer.view_2d.value
    assert "class='bt-cell bt-error'" in explorer.view_2d.value
    assert (
        "cannot build a 3D view" in explorer.view_3d.value
        and "<iframe" not in explorer.view_3d.value
    )
    # choosing a row in the dropdown does the same
    explorer.row_dropdown.value = 0
    assert explorer.selected_row == 0 and "<title>CCO | prediction" in explorer.view_2d.value
    with pytest.raises(InputError, match="no row 7"):
        explorer.select_row(7)


def test_sorting_by_dropdown_and_sort_by(explorer):
    explorer.set_inputs(protein=TARGET, smiles=["CCO", "C1CC", ASPIRIN, "c1ccccc1O", "CCN"])
    explorer.run()
    res = explorer.results
    assert explorer.sort_dropdown.value == "prediction"
    assert "error" not in explorer.sort_dropdown.options
    shown = [int(r[0]) for r in _table_rows(explorer)]
    expected = res.sort_values("prediction", ascending=False, na_position="last")["row"].tolist()
    assert shown == expected and shown[-1] == 1  # the failed row sorts last
    explorer.sort_by("prediction", ascending=True)
    shown = [int(r[0]) for r in _table_rows(explorer)]
    assert shown == res.sort_values("prediction", na_position="last")["row"].tolist()
    explorer.sort_dropdown.value = "smiles"  # the dropdown re-sorts too
    assert [r[2] for r in _table_rows(explorer)] == sorted(res["smiles"])
    with pytest.raises(InputError, match="no column 'pKd'"):
        explorer.sort_by("pKd")


def test_ppi_rows_with_unknown_residue_and_protein_views(tiny_model):
    ex = DrugTargetExplorer(tiny_model, task="ppi")
    ex.set_inputs(protein_a=["MKTAYIAKQR", "MKTBJ", "MADQLTEEQI"], protein_b="MSSKLLLAGL")
    assert ex.prompt == prompts.ppi("MKTAYIAKQR", "MSSKLLLAGL")
    ex.run()
    res = ex.results
    assert res["error"].notna().tolist() == [False, True, False]
    assert "invalid residue 'J' at position 4" in res.loc[1, "error"]
    assert {"prediction", "probability", "answer"} <= set(res.columns)
    assert ex.sort_dropdown.value == "probability"
    ex.select_row(2)
    assert ex.view_2d.value.count("class='bt-protein'") == 2
    assert "residue 1 M (hydrophobic)" in ex.view_2d.value
    assert ex.view_3d.value == ""
    # switching task drops results that no longer fit
    ex.task_dropdown.value = "bbbp"
    assert ex.results is None and ex.table.value == "" and ex.view_2d.value == ""
    assert list(ex.row_dropdown.options) == []


def test_dataframe_and_csv_upload_for_a_molecule_task(tiny_model):
    ex = DrugTargetExplorer(tiny_model, task="bbbp")
    df = pd.DataFrame(
        {"Drug": ["CCO", "C1CC", "c1ccccc1O"], "name": ["ethanol", "broken", "phenol"]}
    )
    ex.load_dataframe(df)  # "Drug" is an alias of "smiles"
    assert ex.prompt == prompts.molecule_property("CCO", "BBBP")
    ex.run()
    res = ex.results
    assert list(res.columns[:3]) == ["row", "smiles", "name"]
    assert res["name"].tolist() == ["ethanol", "broken", "phenol"]
    assert res["error"].notna().tolist() == [False, True, False]
    assert df.columns.tolist() == ["Drug", "name"]  # the user's table is untouched
    with pytest.raises(InputError, match="no column 'smiles'"):
        ex.load_dataframe(pd.DataFrame({"x": ["CCO"]}))

    # the same through the upload widget
    ex.clear_dataframe()
    csv = b"smiles,id\nCCN,a\nnot-a-smiles,b\n"
    ex.upload.value = (
        {
            "name": "library.csv",
            "type": "text/csv",
            "size": len(csv),
            "content": memoryview(csv),
            "last_modified": datetime.datetime(2026, 1, 1),
        },
    )
    assert "library.csv: 2 rows" in ex.data_info.value
    ex.run_button.click()
    assert ex.results["id"].tolist() == ["a", "b"]
    assert ex.results["error"].notna().tolist() == [False, True]


def test_button_reports_errors_in_the_status_instead_of_raising(explorer):
    explorer.run_button.click()  # nothing entered
    assert "nothing to run" in explorer.status.value
    with pytest.raises(InputError, match="nothing to run"):
        explorer.run()


def test_explorer_lists_only_the_tasks_the_model_records():
    from biomed_toolkit.mammal.widgets import model_tasks

    demo = SimpleNamespace(tokenizer=None, config=SimpleNamespace(
        normalization={"dti": {"mean": 0, "std": 1}, "esol": {}},
        extra={"prompt_kwargs": {"dti": {}}}))
    assert model_tasks(demo) == ["dti", "solubility"]
    ex = DrugTargetExplorer(demo, task="dti")
    assert list(ex.task_dropdown.options) == ["dti", "solubility"]
    assert "tasks of the loaded model" in ex.model_note.value
    with pytest.raises(InputError, match="not trained for task 'bbbp'; it can do dti, solubility"):
        DrugTargetExplorer(demo, task="bbbp")
    # a model that records nothing: every task, with a visible caveat
    ex = DrugTargetExplorer(SimpleNamespace(tokenizer=None, config=None), task="bbbp")
    assert "bbbp" in ex.task_dropdown.options and "does not record" in ex.model_note.value


def test_clickable_rows_multiselect_sort_filter_and_export(explorer, tmp_path):
    explorer.set_inputs(protein=TARGET, smiles=["CCO", ASPIRIN, "c1ccccc1O", "CCN", "C1CC"])
    explorer.run()
    # rows and headers carry the actions the page sends back on a click
    assert explorer.table.value.count("data-bt-action='row'") == 5
    assert "data-bt-action='sort' data-bt-value='smiles'" in explorer.table.value
    assert explorer.table.value.count("class='bt-thumb'") == 5 and "<svg" in explorer.table.value
    explorer._on_event({"type": "action", "action": "row", "value": "3"})
    assert explorer.selected_row == 3 and "<title>CCN" in explorer.view_2d.value
    explorer._on_event({"type": "action", "action": "row", "value": "1", "ctrl": True})
    explorer._on_event({"type": "action", "action": "row", "value": "2", "shift": True})
    assert explorer.selected_rows == [1, 2]
    assert explorer.table.value.count("bt-selected") == 3  # viewed row 3 + the two picked
    explorer._on_event({"type": "action", "action": "sort", "value": "smiles"})
    assert explorer.sort_dropdown.value == "smiles" and not explorer.sort_ascending.value
    explorer._on_event({"type": "action", "action": "sort", "value": "smiles"})
    assert explorer.sort_ascending.value  # a second click flips the order
    shown = [r[2] for r in _table_rows(explorer)]
    assert shown == sorted(shown)
    # export writes exactly the selected rows, in table order
    out = explorer.export_selection(tmp_path / "sel.csv")
    back = pd.read_csv(tmp_path / "sel.csv")
    assert sorted(back["row"]) == [1, 2] and back["smiles"].tolist() == out["smiles"].tolist()
    # a SMARTS filter keeps the aromatic rings only; a bad pattern is reported, not raised
    explorer.filter_box.value = "c1ccccc1"
    assert sorted(explorer.shown_results()["smiles"]) == sorted([ASPIRIN, "c1ccccc1O"])
    assert "2 of 5 rows match" in explorer.table.value
    explorer.filter_box.value = "[[["
    assert "not a valid SMARTS" in explorer.message.value
    explorer._on_event({"type": "key", "key": "Escape"})
    assert explorer.selected_rows == []


def test_truncation_is_shown_next_to_the_results(explorer):
    long = TARGET * 40  # far beyond the tiny model's MAX-LEN
    explorer.set_inputs(protein=[long, TARGET], smiles=["CCO", "CCN"])
    explorer.run()
    res = explorer.results
    assert res.loc[0, "truncated_tokens"] > 0 and res.loc[1, "truncated_tokens"] == 0
    assert "1 of 2 rows were truncated" in explorer.truncation.value
    assert "bt-truncation" in explorer.truncation.value


def test_default_demo_model_end_to_end():
    """model=None loads the embedded demo; its prompt options reach the preview and the run."""
    from biomed_toolkit.core.errors import BiomedToolkitError

    ex = DrugTargetExplorer(task="dti")
    try:
        model = ex.model
    except BiomedToolkitError as err:
        pytest.skip(f"embedded MAMMAL demo model not available: {err}")
    ex.set_inputs(protein=TARGET * 5, smiles=["CCO", "C1CC", ASPIRIN])
    kw = (model.config.extra or {}).get("prompt_kwargs", {}).get("dti", {})
    assert ex.prompt == prompts.dti(TARGET * 5, "CCO", **kw)
    if "protein_max_len" in kw and kw["protein_max_len"] < len(TARGET) * 5:
        assert "dropped by MAX-LEN" in ex.prompt_preview.value
    ex.run_button.click()
    res = ex.results
    assert res["error"].notna().tolist() == [False, True, False]
    assert np.isfinite(res.loc[[0, 2], "prediction"]).all()
    ex.select_row(2)
    assert "class='bt-cell bt-mol'" in ex.view_2d.value and "srcdoc" in ex.view_3d.value
