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
from typing import TYPE_CHECKING, Any

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.core.log import get_logger
from biomed_toolkit.core.validation import check_int
from biomed_toolkit.core.widgets import write_csv

if TYPE_CHECKING:  # pragma: no cover
    from biomed_toolkit.mammal.modeling import MammalModel

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


def model_tasks(model: MammalModel) -> list[str] | None:
    """Tasks a model records that it was trained for, or None when it records none.

    Read from its config: ``normalization`` (one entry per regression task), the per-task
    ``extra["prompt_kwargs"]`` and an explicit ``extra["tasks"]`` list; names are mapped to
    the registry's (aliases such as ``esol`` -> ``solubility``).
    """
    from biomed_toolkit.mammal.tasks import TASKS

    config = getattr(model, "config", None)
    if config is None:
        return None
    extra = getattr(config, "extra", None) or {}
    names = list(getattr(config, "normalization", None) or {})
    names += list(extra.get("prompt_kwargs", {}) or {})
    listed = extra.get("tasks", [])
    names += [listed] if isinstance(listed, str) else list(listed or [])
    explorer = _tasks()
    out: list[str] = []
    for n in names:
        spec = TASKS.get(str(n).lower())
        name = next((k for k, s in explorer.items() if s is spec), None)
        if name is not None and name not in out:
            out.append(name)
    return out or None


def _all_task_names() -> set[str]:
    from biomed_toolkit.mammal.tasks import TASKS

    return set(TASKS)


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

    def __init__(self, model: MammalModel | None = None, *, task: str = "dti", batch_size: int = 16) -> None:
        import ipywidgets as w

        self._model = model
        self._model_error: str | None = None
        self.batch_size = check_int(batch_size, "batch_size", where="DrugTargetExplorer", example=16)
        self._tasks = _tasks()
        if model is None:  # the embedded demo: load it now to know what it can do
            try:
                self.model  # noqa: B018
            except Exception as err:  # shown in the preview; every task stays listed
                self._model_error = str(err)
        supported = model_tasks(self._model) if self._model is not None else None
        #: tasks of the loaded model (None: the model does not say; every task is listed)
        self.model_tasks = supported
        if supported is not None:
            every = self._tasks
            self._tasks = {k: v for k, v in every.items() if k in supported}
            try:
                self._task_name(task)
            except InputError:
                if str(task).lower() in every or str(task).lower() in _all_task_names():
                    raise InputError(
                        f"the loaded model was not trained for task {task!r}; it can do "
                        f"{', '.join(self._tasks)}") from None
                raise
        task = self._task_name(task)
        self.selected_rows: list[int] = []
        self.filter_text = ""
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
        self.truncation = w.HTML()
        self.filter_box = w.Text(placeholder="SMARTS filter, e.g. c1ccccc1 or [OX2H]",
                                 description="filter", continuous_update=False)
        self.filter_box.observe(lambda ch: self._guarded(self.set_filter, ch["new"]), names="value")
        self.export_button = w.Button(description="Export selection", icon="download",
                                      tooltip="the selected rows (or all shown) to a CSV file")
        self.export_button.on_click(lambda _b: self._guarded(self.export_selection, "selection.csv"))
        self.message = w.HTML()
        self.model_note = w.HTML(self._model_note())
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
                self.model_note,
                self.fields_box,
                w.HBox([self.upload, self.clear_button, self.data_info]),
                w.HTML("<b>Prompt preview</b> (first row)"),
                self.prompt_preview,
                w.HBox([self.run_button, self.progress, self.status]),
                self.truncation,
                w.HBox([self.sort_dropdown, self.sort_ascending, self.filter_box,
                        self.export_button]),
                self.message,
                self.table,
                self.row_dropdown,
                w.HBox([self.view_2d, self.view_3d]),
                w.HTML("<small style='color:#777'>click a row to view it (ctrl / shift-click: "
                       "multi-select), a header to sort; keys: Enter runs, Escape clears the "
                       "selection</small>"),
            ]
        )
        from biomed_toolkit.core.widgets import event_bridge

        self.bridge = event_bridge(self.widget, self._on_event, keys=("Escape", "ctrl+Enter"))
        self.widget.children = (*self.widget.children, self.bridge)
        self._build_fields()

    def _model_note(self) -> str:
        if self.model_tasks is not None:
            return (f"<small>tasks of the loaded model (from its config): "
                    f"{html.escape(', '.join(self.model_tasks))}</small>")
        return ("<small style='color:#8a6d3b'>the model does not record which tasks it was "
                "trained for: every task is listed; a task it was not fine-tuned for gives "
                "meaningless numbers</small>")

    def _guarded(self, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except InputError as err:
            self.message.value = self._error_html(str(err))
        else:
            if action != self.export_selection:
                self.message.value = ""

    def _on_event(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "action" and msg.get("action") == "row":
            row = int(msg.get("value", -1))
            if msg.get("ctrl") or msg.get("shift"):
                self._guarded(self.toggle_row, row)
            else:  # a plain click views one row and ends a multi-selection
                self.selected_rows = []
                self._guarded(self.select_row, row)
        elif kind == "action" and msg.get("action") == "sort":
            col = str(msg.get("value"))
            asc = not self.sort_ascending.value if col == self.sort_dropdown.value else False
            self._guarded(self.sort_by, col, asc)
        elif kind == "key" and msg.get("key") == "Escape":
            self.selected_rows = []
            self._render_table()
        elif kind == "key" and msg.get("key") == "ctrl+Enter":
            self._run_from_button()

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
            from biomed_toolkit.mammal import load

            self._model = load()
        return self._model

    def _on_task(self, change: dict[str, Any]) -> None:
        # Results of another task do not fit the new inputs and views.
        self.results, self.selected_row, self.selected_rows = None, None, []
        self.table.value = self.view_2d.value = self.view_3d.value = self.status.value = ""
        self.truncation.value = ""
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
        dropped = self._truncated_tokens(frame)
        if dropped is not None:
            res["truncated_tokens"] = dropped
        self.results = res
        self.selected_rows = []
        self._show_truncation()
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

    _MAX_TRUNCATION_ROWS = 500

    def _truncated_tokens(self, frame: Any) -> list[float] | None:
        """Tokens cut by the model's MAX-LEN per row (None without a tokenizer)."""
        from biomed_toolkit.mammal.tasks import build_prompts

        tok = getattr(self._model, "tokenizer", None)
        if tok is None or not hasattr(tok, "token_breakdown"):
            return None
        built, _ = build_prompts(self.task, frame.iloc[: self._MAX_TRUNCATION_ROWS],
                                 **self._prompt_kwargs())
        out: list[float] = []
        for prompt in built:
            if prompt is None:
                out.append(float("nan"))
                continue
            tb = tok.token_breakdown(prompt)
            out.append(float(tb["truncated"].sum()) if "truncated" in tb.columns else 0.0)
        return out + [float("nan")] * (len(frame) - len(out))

    def _show_truncation(self) -> None:
        res = self.results
        if res is None or "truncated_tokens" not in res.columns:
            self.truncation.value = ""
            return
        cut = res["truncated_tokens"].fillna(0)
        n_cut = int((cut > 0).sum())
        if n_cut == 0:
            self.truncation.value = ""
            return
        self.truncation.value = (
            "<div class='bt-truncation' style='background:#fcf8e3;border:2px solid #d9a400;"
            "color:#6b4e00;padding:6px;font-weight:bold'>&#9888; "
            f"{n_cut} of {len(res)} rows were truncated: the model reads at most its MAX-LEN "
            f"tokens, up to {int(cut.max())} tokens were dropped (column truncated_tokens). "
            "Their predictions see only the start of the input.</div>"
        )

    # ------------------------------------------------------------------------- filter, selection
    def set_filter(self, smarts: str) -> DrugTargetExplorer:
        """Show only rows whose molecule matches the SMARTS pattern (empty: all rows)."""
        smarts = (smarts or "").strip()
        if smarts:
            from rdkit import Chem

            if Chem.MolFromSmarts(smarts) is None:
                raise InputError(f"not a valid SMARTS pattern: {smarts!r}")
            if not any(_is_smiles_field(c) for c in self.input_names):
                raise InputError(f"task {self.task!r} has no molecule input to filter on")
        self.filter_text = smarts
        if self.filter_box.value != smarts:
            self.filter_box.value = smarts
        self._render_table()
        return self

    def shown_results(self) -> Any:
        """The rows the table shows: sorted, and filtered by the SMARTS pattern."""
        df = self.sorted_results()
        if df is None or not self.filter_text:
            return df
        from rdkit import Chem

        pattern = Chem.MolFromSmarts(self.filter_text)
        col = next(c for c in self.input_names if _is_smiles_field(c))

        def hit(smi: Any) -> bool:
            mol = Chem.MolFromSmiles(str(smi)) if not _is_missing(smi) else None
            return mol is not None and mol.HasSubstructMatch(pattern)

        return df[[hit(v) for v in df[col]]]

    def toggle_row(self, row: int) -> DrugTargetExplorer:
        """Add row ``row`` to the multi-selection, or take it out (what ctrl-click does)."""
        if self.results is None:
            raise InputError("no results yet: run the explorer first")
        if row not in set(self.results["row"]):
            raise InputError(f"no row {row}; rows are 0..{len(self.results) - 1}")
        if row in self.selected_rows:
            self.selected_rows.remove(row)
        else:
            self.selected_rows.append(row)
        self._render_table()
        return self

    def selection_frame(self) -> Any:
        """The selected rows (multi-selection, else the viewed row), in table order."""
        df = self.shown_results()
        if df is None:
            raise InputError("no results yet: run the explorer first")
        rows = self.selected_rows or ([self.selected_row] if self.selected_row is not None else [])
        return df[df["row"].isin(rows)].reset_index(drop=True) if rows else df.reset_index(drop=True)

    def export_selection(self, path: Any = None) -> Any:
        """The selected rows (or every shown row when none is selected) as a DataFrame; also
        written to ``path`` (CSV) when given."""
        df = self.selection_frame()
        if path is not None:
            write_csv(df, path)
            self.message.value = (f"<small>wrote {len(df)} rows to "
                                  f"{html.escape(str(path))}</small>")
        return df

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

    _MAX_THUMBNAILS = 60

    def _thumbnail(self, smiles: Any) -> str:
        from biomed_toolkit.mammal import plotting

        if _is_missing(smiles):
            return ""
        try:
            return plotting.molecules([str(smiles)], size=(90, 60)).to_html()
        except Exception:  # a thumbnail must never break the table
            return ""

    def _render_table(self) -> None:
        df = self.shown_results()
        if df is None:
            self.table.value = ""
            return
        cols = list(df.columns)
        sort_col = self.sort_dropdown.value
        arrow = " &#9650;" if self.sort_ascending.value else " &#9660;"
        smiles_col = next((c for c in self.input_names if _is_smiles_field(c)), None)
        head = ("<th></th>" if smiles_col else "") + "".join(
            f"<th data-bt-action='sort' data-bt-value='{html.escape(str(c), quote=True)}' "
            "title='click to sort' style='text-align:left;padding:2px 6px;cursor:pointer'>"
            f"{html.escape(str(c))}{arrow if c == sort_col else ''}</th>"
            for c in cols
        )
        body = []
        for k, (_, r) in enumerate(df.head(_MAX_TABLE_ROWS).iterrows()):
            bad = "error" in df.columns and not _is_missing(r["error"])
            sel = (self.selected_row is not None and int(r["row"]) == self.selected_row
                   ) or int(r["row"]) in self.selected_rows
            style = "background:#fdecec" if bad else ("background:#e8f0fe" if sel else "")
            style += ";cursor:pointer"
            cells = []
            if smiles_col:
                thumb = self._thumbnail(r[smiles_col]) if k < self._MAX_THUMBNAILS else ""
                cells.append(f"<td class='bt-thumb' style='padding:0'>{thumb}</td>")
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
                f"<tr class='bt-row{' bt-error' if bad else ''}{' bt-selected' if sel else ''}' "
                f"data-bt-action='row' data-bt-value='{int(r['row'])}' style='{style}'>"
                f"{''.join(cells)}</tr>"
            )
        more = len(df) - _MAX_TABLE_ROWS
        note = f"<div><i>{more} more rows not shown (see .results)</i></div>" if more > 0 else ""
        if self.filter_text:
            note += (f"<div><i>{len(df)} of {len(self.results)} rows match "
                     f"{html.escape(self.filter_text)}</i></div>")
        if self.selected_rows:
            note += f"<div><i>{len(self.selected_rows)} rows selected</i></div>"
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
