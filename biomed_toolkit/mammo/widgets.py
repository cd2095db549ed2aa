"""``LesionMatcher``: browse cases, set a threshold, click a candidate to see its counterpart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.io import Case
from biomed_toolkit.mammo.matching import METHODS, candidates_of, match, reassign

__all__ = ["LesionMatcher"]


class LesionMatcher:
    """Interactive dual-view matcher (ipywidgets + plotly FigureWidget).

    Choose a case, move the threshold slider, click a candidate marker: its most probable
    counterpart in the other view is ringed and the probability shown. Everything the
    controls do is also callable from Python (:meth:`set_case`, :meth:`set_threshold`,
    :meth:`select`), which is how the tests drive it.

    Parameters
    ----------
    case_or_cases
        One :class:`Case` or a list of them.
    model
        A :class:`SiameseMatcher`; with None the method defaults to ``"siamese"`` with the
        embedded demo.
    method
        Initial matcher (``"siamese"``, ``"template"``, ``"geometric"``, ...).
    threshold
        Initial probability threshold.

    Examples
    --------
    >>> w = bt.widgets.LesionMatcher([bt.mammo.phantom(s) for s in range(3)])
    >>> w  # doctest: +SKIP
    >>> w.matches_dataframe()  # doctest: +SKIP
    """

    def __init__(self, case_or_cases: Case | Sequence[Case], model: Any = None, *,
                 method: str = "siamese", threshold: float = 0.5) -> None:
        import ipywidgets as W

        cases = [case_or_cases] if isinstance(case_or_cases, Case) else list(case_or_cases)
        if not cases or not all(isinstance(c, Case) for c in cases):
            raise InputError("LesionMatcher needs a Case or a non-empty list of Case objects")
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        self.cases = cases
        self.model = model
        self._cache: dict[tuple[int, str], pd.DataFrame] = {}
        self.index = 0
        self.method = method
        self.threshold = float(threshold)
        self.selected: dict[str, Any] | None = None
        self.case_dropdown = W.Dropdown(
            options=[(f"{i}: {c.case_id}", i) for i, c in enumerate(cases)], value=0,
            description="case")
        self.method_dropdown = W.Dropdown(options=list(METHODS), value=method,
                                          description="method")
        self.slider = W.FloatSlider(value=self.threshold, min=0.0, max=1.0, step=0.01,
                                    description="threshold", continuous_update=False)
        self.info = W.HTML("Click a candidate (x) to see its counterpart.")
        from biomed_toolkit.mammo.plotting import build_pair_figure

        self._build = build_pair_figure
        self.figure = build_pair_figure(self.case, self.matches, threshold=self.threshold,
                                        widget=True)
        self._wire()
        self.case_dropdown.observe(lambda ch: self.set_case(ch["new"]), names="value")
        self.method_dropdown.observe(lambda ch: self.set_method(ch["new"]), names="value")
        self.slider.observe(lambda ch: self.set_threshold(ch["new"]), names="value")
        from biomed_toolkit.core.widgets import figure_box

        self.widget = W.VBox([W.HBox([self.case_dropdown, self.method_dropdown, self.slider]),
                              figure_box(self.figure), self.info])

    # -- state ---------------------------------------------------------------------------------
    @property
    def case(self) -> Case:
        return self.cases[self.index]

    @property
    def matches(self) -> pd.DataFrame:
        """All pairs of the current case and method, assigned at the current threshold."""
        key = (self.index, self.method)
        if key not in self._cache:
            self._cache[key] = match(self.case, self.model, method=self.method,
                                     threshold=self.threshold)
        m = self._cache[key]
        if m.attrs.get("threshold") != self.threshold:
            m = self._cache[key] = reassign(m, self.threshold)
        return m

    def _redraw(self) -> None:
        fresh = self._build(self.case, self.matches, threshold=self.threshold, widget=True)
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.add_traces(list(fresh.data))
            self.figure.layout = fresh.layout
        self._wire()

    def _wire(self) -> None:
        for tr in self.figure.data:
            if tr.name in ("CC candidates", "MLO candidates"):
                view = "cc" if tr.name.startswith("CC") else "mlo"
                tr.on_click(lambda trace, points, state, v=view: self._clicked(v, points))

    def _clicked(self, view: str, points: Any) -> None:
        if not points.point_inds:
            return
        cands = candidates_of(self.matches)[view]
        self.select(view, int(cands["cand_id"].iloc[points.point_inds[0]]))

    # -- public controls -----------------------------------------------------------------------
    def set_case(self, index: int) -> None:
        """Show case number ``index``."""
        if not 0 <= int(index) < len(self.cases):
            raise InputError(f"case index must be in 0..{len(self.cases) - 1}, got {index}")
        self.index = int(index)
        self.selected = None
        if self.case_dropdown.value != self.index:
            self.case_dropdown.value = self.index
        self._redraw()
        self.info.value = "Click a candidate (x) to see its counterpart."

    def set_method(self, method: str) -> None:
        """Switch matcher."""
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        if self.method_dropdown.value != method:
            self.method_dropdown.value = method
        self._redraw()
        if self.selected:
            self.select(self.selected["view"], self.selected["cand_id"])

    def set_threshold(self, value: float) -> None:
        """Move the probability threshold (pairs below it are hidden and not exported)."""
        self.threshold = float(value)
        if abs(self.slider.value - self.threshold) > 1e-9:
            self.slider.value = self.threshold
        self._redraw()

    def select(self, view: str, cand_id: int) -> dict[str, Any]:
        """Select a candidate (what a click does); returns its counterpart and probability."""
        view = view.lower()
        if view not in ("cc", "mlo"):
            raise InputError(f"view must be 'cc' or 'mlo', got {view!r}")
        m = self.matches
        own, other = (("cc_id", "mlo_id") if view == "cc" else ("mlo_id", "cc_id"))
        rows = m[m[own] == cand_id]
        if rows.empty:
            raise InputError(f"no {view.upper()} candidate {cand_id} in case {self.case.case_id}")
        # The assignment's partner when there is one, else the most probable partner.
        chosen = rows[rows["assigned"]]
        best = chosen.iloc[0] if len(chosen) else rows.loc[rows["probability"].idxmax()]
        other_view = "mlo" if view == "cc" else "cc"
        result = {
            "view": view, "cand_id": int(cand_id), "counterpart_view": other_view,
            "counterpart_id": int(best[other]), "probability": float(best["probability"]),
            "above_threshold": bool(best["probability"] >= self.threshold),
            "assigned": bool(best["assigned"]),
        }
        self.selected = result
        self._highlight(best)
        verdict = ("matched" if result["assigned"] else
                   "best partner, not assigned" if result["above_threshold"] else
                   "below the threshold")
        self.info.value = (
            f"<b>{view.upper()} candidate {cand_id}</b> &rarr; {other_view.upper()} candidate "
            f"{result['counterpart_id']}: p = {result['probability']:.3f} ({verdict})"
        )
        return result

    def _highlight(self, row: pd.Series) -> None:
        import plotly.graph_objects as go

        off = float(self.case.cc.shape[1] + 20)
        names = [t.name for t in self.figure.data]
        trace = go.Scatter(
            x=[row["cc_col"], row["mlo_col"] + off], y=[row["cc_row"], row["mlo_row"]],
            mode="markers+lines", name="selected",
            marker={"size": 22, "symbol": "circle-open", "color": "red", "line": {"width": 3}},
            line={"color": "red", "dash": "dot"}, hoverinfo="skip",
        )
        with self.figure.batch_update():
            if "selected" in names:
                t = self.figure.data[names.index("selected")]
                t.x, t.y = trace.x, trace.y
            else:
                self.figure.add_trace(trace)

    def matches_dataframe(self, *, all_cases: bool = False) -> pd.DataFrame:
        """The assigned pairs at the current threshold (current case, or every case)."""
        idx = range(len(self.cases)) if all_cases else [self.index]
        frames = []
        keep = self.index
        for i in idx:
            self.index = i
            m = self.matches
            sel = m[m["assigned"] & (m["probability"] >= self.threshold)].copy()
            sel.insert(0, "case_id", self.cases[i].case_id)
            sel.insert(1, "method", self.method)
            frames.append(sel)
        self.index = keep
        out = pd.concat(frames, ignore_index=True)
        out.attrs = {}
        return out

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return (f"LesionMatcher({len(self.cases)} cases, case {self.index}, method "
                f"{self.method!r}, threshold {self.threshold:g})")
