"""Jupyter widget for MAMMAL drug-target and molecule tasks: :class:`DrugTargetExplorer`.

ipywidgets is imported when an explorer is built, not at module import.

Examples
--------
>>> from biomed_toolkit.mammal.widgets import DrugTargetExplorer
>>> ex = DrugTargetExplorer(task="dti")  # doctest: +SKIP
>>> ex.set_inputs(protein="MKTAYIAKQR", smiles="CCO\\nCC(=O)Oc1ccccc1C(=O)O")  # doctest: +SKIP
>>> ex.run().results  # doctest: +SKIP
"""

from __future__ import annotations

import html
import io
import math
from typing import Any

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.core.log import get_logger

log = get_logger(__name__)

_MAX_TABLE_ROWS = 500
_MAX_PREVIEW_TOKENS = 400
_SUB_TOKENIZER_COLORS = {
    "AA": "#e3efff",
    "SMILES": "#e6f6e6",
    "GENE": "#fff2d9",
    "CELL_ATTRIBUTES": "#f6e6f6",
    "SCALARS_LITERALS": "#fde8e8",
    "SCALARS_FROM_DICT": "#fde8e8",
}


# ----------------------------------------------------------------------------- task adapter


def _tasks() -> dict[str, Any]:
    """Explorer tasks: every registry entry except free generation, aliases listed once."""
    from biomed_toolkit.mammal.tasks import TASKS

    out: dict[str, Any] = {}
    for name, spec in TASKS.items():
        if spec.kind != "generation" and all(spec is not s for s in out.values()):
            out[name] = spec
    return out


def _task_inputs(spec: Any) -> list[str]:
    return [str(c) for c in spec.inputs]


def _is_smiles_field(name: str) -> bool:
    return "smiles" in name.lower() or name.lower() in ("drug", "molecule", "ligand")


def _field_label(name: str) -> str:
    return name.replace("_", " ")


def _short(text: Any, n: int = 32) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[: n - 3] + "..."


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any) -> str:
    if _is_missing(v):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class DrugTargetExplorer:
    """Interactive drug-target / molecule-property explorer for a MAMMAL model.

    Pick a task, paste inputs (one per line; a single line is repeated against many, so one target
    with many SMILES is a virtual screen) or load a CSV/DataFrame, look at the exact prompt and
    its tokens, run with a progress bar, sort the results, and pick a row to see its molecule in
    2D and 3D (or its protein sequences). Rows with bad inputs carry their error in the table; the
    rest of the batch still runs.

    Parameters
    ----------
    model
        A loaded MAMMAL model (``bt.mammal.load(...)``); ``None`` loads the embedded demo model
        when first needed.
    task
        Initial task, a key of ``bt.mammal.TASKS`` (``"dti"``, ``"ppi"``, ``"bbbp"``, ...).
    batch_size
        Rows per model call (the progress bar advances per batch).

    Attributes
    ----------
    task_dropdown, fields, upload, run_button, progress, status, prompt_preview, table,
    sort_dropdown, sort_ascending, row_dropdown, view_2d, view_3d
        The ipywidgets, for scripting and tests (``fields`` maps each input name to its
        ``Textarea``).
    results
        The last results (``DataFrame`` with a ``row`` column, the inputs, the predictions and
        ``error``), or ``None`` before a run.
    widget
        The top-level ``VBox``; the explorer displays itself in a notebook.

    Examples
    --------
    >>> ex = DrugTargetExplorer(model, task="dti")  # doctest: +SKIP
    >>> ex.fields["protein"].value = "MKTAYIAKQRQISFVKSHFSRQ"  # doctest: +SKIP
    >>> ex.fields["smiles"].value = "CCO\\nC1CC\\nc1ccccc1O"  # doctest: +SKIP
    >>> ex.run_button.click()  # doctest: +SKIP
    >>> ex.results[["smiles", "prediction", "error"]]  # doctest: +SKIP
    >>> ex.select_row(0)  # doctest: +SKIP
    """

    def __init__(self, model: Any = None, *, task: str = "dti", batch_size: int = 16) -> None:
        import ipywidgets as w

        self._model = model
        self._model_error: str | None = None
        self.batch_size = int(batch_size)
        self._tasks = _tasks()
        task = self._task_name(task)
        self._frame: Any = None  # a loaded DataFrame overrides the text fields
        self.results: Any = None
        self.selected_row: int | None = None
        self.prompt: str | None = None
        self.token_breakdown: Any = None

        self.task_dropdown = w.Dropdown(options=list(self._tasks), value=task, description="task")
        self.task_info = w.HTML()
        self.fields: dict[str, Any] = {}
        self.fields_box = w.VBox()
        self.upload = w.FileUpload(accept=".csv", multiple=False, description="CSV")
        self.clear_button = w.Button(
            description="clear table", tooltip="go back to the text fields"
        )
        self.data_info = w.HTML()
        self.prompt_preview = w.HTML()
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", bar_style="")
        self.status = w.HTML()
        self.sort_dropdown = w.Dropdown(options=[], description="sort by")
        self.sort_ascending = w.Checkbox(value=False, description="ascending", indent=False)
        self.table = w.HTML()
        self.row_dropdown = w.Dropdown(options=[], description="row")
        self.view_2d = w.HTML()
        self.view_3d = w.HTML()

        self.task_dropdown.observe(self._on_task, names="value")
        self.upload.observe(self._on_upload, names="value")
        self.clear_button.on_click(lambda _: self.clear_dataframe())
        self.run_button.on_click(lambda _: self._run_from_button())
        self._muted = False  # set while the code itself changes widget values
        self.sort_dropdown.observe(self._on_sort, names="value")
        self.sort_ascending.observe(self._on_sort, names="value")
        self.row_dropdown.observe(self._on_row, names="value")

        self.widget = w.VBox(
            [
                w.HBox([self.task_dropdown, self.task_info]),
                self.fields_box,
                w.HBox([self.upload, self.clear_button, self.data_info]),
                w.HTML("<b>Prompt preview</b> (first row)"),
                self.prompt_preview,
                w.HBox([self.run_button, self.progress, self.status]),
                w.HBox([self.sort_dropdown, self.sort_ascending]),
                self.table,
                self.row_dropdown,
                w.HBox([self.view_2d, self.view_3d]),
            ]
        )
        self._build_fields()

    def _task_name(self, task: str) -> str:
        """Explorer name of ``task`` (case-insensitive; registry aliases such as esol accepted)."""
        from biomed_toolkit.mammal.tasks import TASKS

        key = str(task).lower()
        if key in self._tasks:
            return key
        spec = TASKS.get(key)
        same = [name for name, s in self._tasks.items() if s is spec]
        if same:
            return same[0]
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(self._tasks)}")

    # ------------------------------------------------------------------------- display
    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        n = 0 if self.results is None else len(self.results)
        return (
            f"DrugTargetExplorer(task={self.task!r}, inputs={self.input_names}, results={n} rows)"
        )

    # ------------------------------------------------------------------------- task and inputs
    @property
    def task(self) -> str:
        """The selected task name."""
        return self.task_dropdown.value

    @property
    def input_names(self) -> list[str]:
        """Inputs of the selected task (columns a loaded DataFrame must have)."""
        return _task_inputs(self._tasks[self.task])

    @property
    def model(self) -> Any:
        """The model; ``None`` at construction loads the embedded default here."""
        if self._model is None:
            from biomed_toolkit.mammal.modeling import load

            self._model = load()
        return self._model

    def _on_task(self, change: dict[str, Any]) -> None:
        # Results of another task do not fit the new inputs and views.
        self.results, self.selected_row = None, None
        self.table.value = self.view_2d.value = self.view_3d.value = self.status.value = ""
        self.progress.value, self.progress.bar_style = 0, ""
        self._muted = True
        try:
            self.sort_dropdown.options = []
            self.row_dropdown.options = []
        finally:
            self._muted = False
        old_values = {k: f.value for k, f in self.fields.items()}
        self._build_fields(old_values)
        if self._frame is not None:
            missing = [c for c in self.input_names if c not in self._frame.columns]
            if missing:
                self._frame = None
                self.data_info.value = (
                    f"<span style='color:#a94442'>table dropped: task {html.escape(self.task)} needs "
                    f"column(s) {html.escape(', '.join(missing))}</span>"
                )
        self._update_preview()

    def _build_fields(self, old_values: dict[str, str] | None = None) -> None:
        import ipywidgets as w

        spec = self._tasks[self.task]
        desc = getattr(spec, "description", "") or ""
        self.task_info.value = f"<i>{html.escape(str(desc))}</i>"
        self.fields = {}
        for name in self.input_names:
            placeholder = (
                "SMILES, one per line (e.g. CC(=O)Oc1ccccc1C(=O)O)"
                if _is_smiles_field(name)
                else "amino-acid sequence(s), one per line"
            )
            area = w.Textarea(
                value=(old_values or {}).get(name, ""),
                placeholder=placeholder,
                description=_field_label(name),
                layout=w.Layout(width="95%", height="70px"),
                continuous_update=False,
            )
            area.observe(lambda _: self._update_preview(), names="value")
            self.fields[name] = area
        self.fields_box.children = tuple(self.fields.values())

    def set_inputs(self, **values: Any) -> DrugTargetExplorer:
        """Fill the text fields: a string (lines) or a list of strings per input name."""
        unknown = [k for k in values if k not in self.fields]
        if unknown:
            raise InputError(
                f"task {self.task!r} has no input {unknown[0]!r}; its inputs are {self.input_names}"
            )
        for k, v in values.items():
            self.fields[k].value = v if isinstance(v, str) else "\n".join(str(x) for x in v)
        return self

    def load_dataframe(self, df: Any) -> DrugTargetExplorer:
        """Use the rows of ``df`` (columns named after the task inputs) instead of the text fields.

        Column names match case-insensitively and through the task's aliases (e.g. ``target`` for
        ``protein``); other columns (ids, measured values) are kept and shown in the results.
        """
        import pandas as pd

        if not isinstance(df, pd.DataFrame):
            raise InputError(f"load_dataframe expects a pandas DataFrame, got {type(df).__name__}")
        lower = {str(c).lower(): c for c in df.columns}
        aliases = getattr(self._tasks[self.task], "aliases", {}) or {}
        renames, missing = {}, []
        for name in self.input_names:
            if name in df.columns:
                continue
            found = next(
                (lower[a.lower()] for a in (name, *aliases.get(name, ())) if a.lower() in lower),
                None,
            )
            if found is not None:
                renames[found] = name
            else:
                missing.append(name)
        if missing:
            raise InputError(
                f"the table has no column {missing[0]!r} needed by task {self.task!r} (needs "
                f"{self.input_names}; has {list(df.columns)}); rename the column or pick another task"
            )
        self._frame = df.rename(columns=renames).reset_index(drop=True)
        self.data_info.value = f"using a table of {len(self._frame)} rows"
        self._update_preview()
        return self

    def clear_dataframe(self) -> DrugTargetExplorer:
        """Forget a loaded table; the text fields are used again."""
        self._frame = None
        self.data_info.value = ""
        self._update_preview()
        return self

    def _on_upload(self, change: dict[str, Any]) -> None:
        import pandas as pd

        files = change["new"]
        if not files:
            return
        item = files[0] if isinstance(files, list | tuple) else next(iter(files.values()))
        try:
            df = pd.read_csv(io.BytesIO(bytes(item["content"])))
            self.load_dataframe(df)
            self.data_info.value = f"{html.escape(str(item.get('name', 'CSV')))}: {len(df)} rows"
        except Exception as err:  # shown to the user, the widget keeps working
            self.data_info.value = f"<span style='color:#a94442'>{html.escape(str(err))}</span>"

    def input_frame(self) -> Any:
        """The rows that a run would use (a loaded table, or the text fields, one row per line).

        A field with a single line is repeated to the length of the others.
        """
        import pandas as pd

        if self._frame is not None:
            return self._frame.copy()
        columns = {}
        for name, area in self.fields.items():
            lines = [ln.strip() for ln in str(area.value).splitlines() if ln.strip()]
            columns[name] = lines
        lengths = {len(v) for v in columns.values() if len(v) > 1}
        if len(lengths) > 1:
            counts = ", ".join(f"{k}: {len(v)}" for k, v in columns.items())
            raise InputError(
                f"the input fields have different numbers of lines ({counts}); give the same number "
                "of lines, or a single line to pair with every line of the other field"
            )
        n = lengths.pop() if lengths else max((len(v) for v in columns.values()), default=0)
        if any(len(v) == 0 for v in columns.values()):
            n = 0
        return pd.DataFrame({k: (v * n if len(v) == 1 else v)[:n] for k, v in columns.items()})

    # ------------------------------------------------------------------------- prompt preview
    def _prompt_kwargs(self) -> dict[str, Any]:
        """Builder options the model asks for (the same ones ``predict`` uses)."""
        if self._model is None:
            try:
                self.model  # noqa: B018 - loads the default model
            except Exception as err:
                self._model_error = str(err)
                return {}
        extra = getattr(getattr(self._model, "config", None), "extra", None) or {}
        return dict(extra.get("prompt_kwargs", {}).get(self.task, {}))

    def _tokenizer(self) -> Any:
        try:
            tok = self.model.tokenizer
        except Exception as err:  # no model available: show the prompt without tokens
            self._model_error = str(err)
            return None
        if tok is None:
            self._model_error = "the model has no tokenizer"
        return tok

    def _update_preview(self) -> None:
        self.prompt, self.token_breakdown = None, None
        try:
            frame = self.input_frame()
        except InputError as err:
            self.prompt_preview.value = self._error_html(str(err))
            return
        if len(frame) == 0:
            self.prompt_preview.value = "<i>enter inputs to see the prompt</i>"
            return
        from biomed_toolkit.mammal.tasks import build_prompts

        built, errors = build_prompts(self.task, frame.iloc[:1], **self._prompt_kwargs())
        if built[0] is None:
            self.prompt_preview.value = self._error_html(f"row 0: {errors[0]}")
            return
        prompt = self.prompt = built[0]
        parts = [
            "<div style='font-family:monospace;font-size:12px;word-break:break-all;"
            f"background:#f7f7f7;padding:4px;border:1px solid #ddd'>{html.escape(prompt)}</div>"
        ]
        tok = self._tokenizer()
        if tok is None:
            parts.append(self._error_html(f"token breakdown unavailable: {self._model_error}"))
        else:
            try:
                self.token_breakdown = tok.token_breakdown(prompt)
                parts.append(self._tokens_html(self.token_breakdown))
            except Exception as err:
                parts.append(self._error_html(f"tokenizer: {err}"))
        if len(frame) > 1:
            parts.append(f"<div style='color:#666'>{len(frame)} rows will run</div>")
        self.prompt_preview.value = "".join(parts)

    @staticmethod
    def _error_html(text: str) -> str:
        return f"<div style='color:#a94442;white-space:pre-wrap'>{html.escape(text)}</div>"

    @staticmethod
    def _tokens_html(df: Any) -> str:
        kept = df[~df["truncated"]] if "truncated" in df.columns else df
        n_trunc = len(df) - len(kept)
        sub_col = "sub_tokenizer" if "sub_tokenizer" in df.columns else None
        chips = []
        for _, r in kept.head(_MAX_PREVIEW_TOKENS).iterrows():
            sub = str(r[sub_col]) if sub_col else ""
            special = str(r.get("kind", "")) == "special"
            color = "#f0f0f0" if special else _SUB_TOKENIZER_COLORS.get(sub, "#eee")
            chips.append(
                f"<span class='bt-token' title='position {r.get('position', '')}, id {r.get('id', '')}, "
                f"{html.escape(sub)}{' special' if special else ''}' "
                f"style='background:{color};border:1px solid #ccc;border-radius:3px;padding:0 2px;"
                f"margin:1px;display:inline-block;font-family:monospace;font-size:11px'>"
                f"{html.escape(str(r['token']))}</span>"
            )
        more = len(kept) - _MAX_PREVIEW_TOKENS
        tail = f" <i>... {more} more</i>" if more > 0 else ""
        subs = ""
        if sub_col:
            counts = kept[sub_col].value_counts()
            subs = ", ".join(f"{html.escape(str(k))} {v}" for k, v in counts.items())
        trunc = f"; {n_trunc} dropped by MAX-LEN" if n_trunc else ""
        return (
            f"<div style='margin-top:4px'><b>{len(kept)} tokens</b> ({subs}{trunc})</div>"
            f"<div style='line-height:1.8'>{''.join(chips)}{tail}</div>"
        )

    # ------------------------------------------------------------------------- running
    def _run_from_button(self) -> None:
        try:
            self.run()
        except Exception as err:  # a button callback must not raise into the void
            self.status.value = self._error_html(str(err))

    def run(self) -> DrugTargetExplorer:
        """Predict every row (in batches, advancing the progress bar) and show the table.

        Rows whose inputs are invalid keep an ``error`` message; the others are predicted.
        """
        import pandas as pd

        from biomed_toolkit.mammal.tasks import predict

        frame = self.input_frame()
        if len(frame) == 0:
            raise InputError(
                f"nothing to run: fill the {', '.join(self.input_names)} field(s) or load a table"
            )
        model = self.model
        n = len(frame)
        self.progress.max = max(1, n)
        self.progress.value = 0
        self.progress.bar_style = "info"
        self.status.value = f"running {n} rows ..."
        parts = []
        try:
            for start in range(0, n, self.batch_size):
                chunk = frame.iloc[start : start + self.batch_size]
                parts.append(
                    predict(model, self.task, chunk, batch_size=self.batch_size, progress=False)
                )
                self.progress.value = min(n, start + len(chunk))
        except Exception:
            self.progress.bar_style = "danger"
            raise
        res = pd.concat(parts)
        extras = [c for c in frame.columns if c not in res.columns and c != "row"]
        if extras:  # ids, measured values ... of a loaded table, shown next to the inputs
            res = pd.concat(
                [res[self.input_names], frame[extras], res.drop(columns=self.input_names)], axis=1
            )
        res = res.reset_index(drop=True)
        res.insert(0, "row", range(n))
        self.results = res
        n_err = int(res["error"].notna().sum()) if "error" in res.columns else 0
        self.progress.bar_style = "success" if n_err == 0 else "warning"
        self.status.value = f"{n - n_err} rows predicted" + (
            f", <span style='color:#a94442'>{n_err} with errors</span>" if n_err else ""
        )
        self._muted = True
        try:
            self.sort_dropdown.options = [c for c in res.columns if c != "error"]
            self.sort_dropdown.value = self._default_sort_column(res)
        finally:
            self._muted = False
        self.selected_row = None
        self._render_table()
        first_ok = res.index[res["error"].isna()] if "error" in res.columns else res.index
        self.select_row(int(res.loc[first_ok[0], "row"]) if len(first_ok) else 0)
        return self

    @staticmethod
    def _default_sort_column(res: Any) -> str:
        for c in ("probability", "prediction", "score"):
            if c in res.columns:
                return c
        numeric = [
            c for c in res.columns if c != "row" and str(res[c].dtype).startswith(("float", "int"))
        ]
        return numeric[0] if numeric else "row"

    # ------------------------------------------------------------------------- table
    def sort_by(self, column: str, ascending: bool = False) -> DrugTargetExplorer:
        """Sort the results table (missing values last)."""
        if self.results is None:
            raise InputError("no results yet: run the explorer first")
        if column not in self.results.columns:
            raise InputError(
                f"no column {column!r} in the results; columns: {list(self.results.columns)}"
            )
        self._muted = True
        try:
            self.sort_ascending.value = bool(ascending)
            self.sort_dropdown.value = column
        finally:
            self._muted = False
        self._render_table()
        return self

    def _on_sort(self, change: dict[str, Any]) -> None:
        if not self._muted:
            self._render_table()

    def sorted_results(self) -> Any:
        """The results in the order the table shows them."""
        if self.results is None:
            return None
        col = self.sort_dropdown.value or "row"
        return self.results.sort_values(
            col, ascending=bool(self.sort_ascending.value), na_position="last", kind="stable"
        )

    def _render_table(self) -> None:
        df = self.sorted_results()
        if df is None:
            self.table.value = ""
            return
        cols = list(df.columns)
        sort_col = self.sort_dropdown.value
        arrow = " &#9650;" if self.sort_ascending.value else " &#9660;"
        head = "".join(
            f"<th style='text-align:left;padding:2px 6px'>{html.escape(str(c))}{arrow if c == sort_col else ''}</th>"
            for c in cols
        )
        body = []
        for _, r in df.head(_MAX_TABLE_ROWS).iterrows():
            bad = "error" in df.columns and not _is_missing(r["error"])
            sel = self.selected_row is not None and int(r["row"]) == self.selected_row
            style = "background:#fdecec" if bad else ("background:#e8f0fe" if sel else "")
            cells = []
            for c in cols:
                v = r[c]
                text = _fmt(v)
                shown = text if c == "error" else _short(text)
                color = "color:#a94442;" if c == "error" else ""
                cells.append(
                    f"<td title='{html.escape(text, quote=True)}' style='{color}padding:2px 6px;"
                    f"font-family:monospace;font-size:12px'>{html.escape(shown)}</td>"
                )
            body.append(
                f"<tr class='bt-row{' bt-error' if bad else ''}' style='{style}'>{''.join(cells)}</tr>"
            )
        more = len(df) - _MAX_TABLE_ROWS
        note = f"<div><i>{more} more rows not shown (see .results)</i></div>" if more > 0 else ""
        self.table.value = (
            "<div style='max-height:360px;overflow:auto'><table class='bt-results' "
            "style='border-collapse:collapse'>"
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{note}"
        )
        self._update_row_options(df)

    def _update_row_options(self, df: Any) -> None:
        import pandas as pd

        pred = self._default_sort_column(df)
        options = []
        # Same rows as the (capped) table, plus the selected one.
        shown = df.head(_MAX_TABLE_ROWS)
        if self.selected_row is not None and self.selected_row not in set(shown["row"]):
            shown = pd.concat([shown, df[df["row"] == self.selected_row]])
        for _, r in shown.iterrows():
            label = f"row {int(r['row'])}"
            if pred != "row" and not _is_missing(r.get(pred)):
                label += f": {pred} {_fmt(r[pred])}"
            if "error" in df.columns and not _is_missing(r["error"]):
                label += " (error)"
            options.append((label, int(r["row"])))
        self._muted = True
        try:
            self.row_dropdown.options = options
            if self.selected_row is not None and any(v == self.selected_row for _, v in options):
                self.row_dropdown.value = self.selected_row
        finally:
            self._muted = False

    # ------------------------------------------------------------------------- row views
    def _on_row(self, change: dict[str, Any]) -> None:
        if not self._muted and change["new"] is not None:
            self.select_row(int(change["new"]))

    def select_row(self, row: int) -> DrugTargetExplorer:
        """Show row ``row`` (its ``row`` number, i.e. input order) in the 2D and 3D views."""
        from biomed_toolkit.mammal import plotting

        if self.results is None:
            raise InputError("no results yet: run the explorer first")
        hits = self.results.index[self.results["row"] == row]
        if len(hits) == 0:
            raise InputError(f"no row {row}; rows are 0..{len(self.results) - 1}")
        r = self.results.loc[hits[0]]
        self.selected_row = int(row)
        error = None if "error" not in r.index or _is_missing(r["error"]) else str(r["error"])
        pred = self._default_sort_column(self.results)
        legend = "" if pred == "row" or _is_missing(r.get(pred)) else f"{pred} {_fmt(r[pred])}"
        smiles_cols = [c for c in self.input_names if _is_smiles_field(c)]
        protein_cols = [c for c in self.input_names if not _is_smiles_field(c)]
        views_2d, view_3d = [], ""
        if error:
            views_2d.append(self._error_html(f"row {row}: {error}"))
        for c in smiles_cols:
            smi = "" if _is_missing(r[c]) else str(r[c])
            views_2d.append(plotting.molecules([smi], legends=[legend], size=(300, 240)).to_html())
            try:
                view_3d = plotting.molecule_3d(smi, width=360, height=280).to_iframe()
            except InputError as err:
                view_3d = self._error_html(str(err))
        for c in protein_cols:
            seq = "" if _is_missing(r[c]) else str(r[c])
            try:
                views_2d.append(
                    plotting.protein_html(seq, title=f"{_field_label(c)} ({len(seq)} residues)")
                )
            except InputError as err:
                views_2d.append(self._error_html(f"{_field_label(c)}: {err}"))
        if not smiles_cols and legend:
            views_2d.insert(0, f"<div><b>{html.escape(legend)}</b></div>")
        self.view_2d.value = "".join(views_2d)
        self.view_3d.value = view_3d
        self._render_table()  # highlights the row and syncs the row dropdown
        return self


__all__ = ["DrugTargetExplorer"]
