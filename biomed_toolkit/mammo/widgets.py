"""``LesionMatcher``: browse cases, set a threshold, click candidates, correct pairs by hand.

The figure (both images) is sent to the page once per case; a threshold change, a click, a
window / level change or a manual pair only sends the few overlay properties that changed
(``biomed_toolkit.core.widgets.plot_view``), so these updates take a few kB, not megabytes.
Matches are computed once per (case, method) and the candidates once per case, then reused.

Keyboard (mouse over the widget): ``n`` / ``p`` next / previous case, ``a`` add the picked CC
and MLO candidates as a pair, ``d`` delete the pair of the picked candidate, ``u`` undo the last
manual edit, ``Escape`` clear the pick.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.core.widgets import busy, event_bridge, plot_view, write_csv
from biomed_toolkit.mammo.io import Case
from biomed_toolkit.mammo.matching import METHODS, candidates_of, match, reassign

if TYPE_CHECKING:  # pragma: no cover
    from biomed_toolkit.mammo.modeling import SiameseMatcher

__all__ = ["LesionMatcher"]

_KEYS = ("n", "p", "a", "d", "u", "Escape")
_HINT = "Click a CC and an MLO candidate (x): their match is shown; a adds them as a pair."


class LesionMatcher:
    """Interactive dual-view matcher (ipywidgets + a live plotly view).

    Choose a case, move the threshold slider, click a candidate marker: its most probable
    counterpart in the other view is ringed and the probability shown. Pick a CC and an MLO
    candidate and press "Add pair" (or ``a``) to pair them by hand, "Remove pair" (``d``) to
    drop the pair of the picked candidate; manual edits go into :meth:`matches_dataframe`
    (``source`` column) and can be undone. The window slider sets the grey-level window; the
    mouse wheel zooms. Everything the controls do is also callable from Python
    (:meth:`set_case`, :meth:`set_threshold`, :meth:`select`, :meth:`add_pair`, ...).

    Parameters
    ----------
    case_or_cases
        One :class:`Case` or a list of them.
    model
        A :class:`SiameseMatcher`; with None the embedded demo is used where a method needs one.
    method
        Initial matcher (one of ``bt.mammo.matching.METHODS``; default: the first, the package's
        recommended one).
    threshold
        Initial probability threshold.

    Attributes
    ----------
    last_update
        ``{"action", "seconds", "bytes"}`` of the last control change: Python time and the size
        of what was sent to the page.

    Examples
    --------
    >>> w = bt.widgets.LesionMatcher([bt.mammo.phantom(s) for s in range(3)])
    >>> w  # doctest: +SKIP
    >>> w.add_pair(0, 2); w.matches_dataframe()  # doctest: +SKIP
    """

    def __init__(self, case_or_cases: Case | Sequence[Case], model: SiameseMatcher | None = None, *,
                 method: str | None = None, threshold: float = 0.5) -> None:
        import ipywidgets as W

        cases = [case_or_cases] if isinstance(case_or_cases, Case) else list(case_or_cases)
        if not cases or not all(isinstance(c, Case) for c in cases):
            raise InputError("LesionMatcher needs a Case or a non-empty list of Case objects")
        method = METHODS[0] if method is None else method
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        self.cases = cases
        self.model = model
        self._cache: dict[tuple[int, str], pd.DataFrame] = {}
        self._candidates: dict[int, dict[str, pd.DataFrame]] = {}
        # manual edits per case: pairs added by hand and automatic pairs removed by hand
        self._added: dict[int, list[tuple[int, int]]] = {}
        self._removed: dict[int, set[tuple[int, int]]] = {}
        self._edits: list[tuple[int, str, tuple[int, int]]] = []
        self.index = 0
        self.method = method
        self.threshold = float(threshold)
        self.window: tuple[float, float] = (0.0, 1.0)
        self.selected: dict[str, Any] | None = None
        self.picked: dict[str, int | None] = {"cc": None, "mlo": None}
        self.last_update: dict[str, Any] = {}
        self.case_dropdown = W.Dropdown(
            options=[(f"{i}: {c.case_id}", i) for i, c in enumerate(cases)], value=0,
            description="case")
        self.method_dropdown = W.Dropdown(options=list(METHODS), value=method,
                                          description="method")
        self.slider = W.FloatSlider(value=self.threshold, min=0.0, max=1.0, step=0.01,
                                    description="threshold", continuous_update=False)
        self.window_slider = W.FloatRangeSlider(value=self.window, min=0.0, max=1.0, step=0.01,
                                                description="window", continuous_update=False)
        self.add_button = W.Button(description="Add pair", icon="plus",
                                   tooltip="pair the picked CC and MLO candidates (a)")
        self.remove_button = W.Button(description="Remove pair", icon="minus",
                                      tooltip="remove the pair of the picked candidate (d)")
        self.undo_button = W.Button(description="Undo", icon="undo", disabled=True,
                                    tooltip="undo the last manual pair edit (u)")
        self.export_button = W.Button(description="Export CSV", icon="download",
                                      tooltip="the pairs of every case to a CSV file")
        self.busy = W.HTML()
        self.info = W.HTML(_HINT)
        self.message = W.HTML()
        self.view = plot_view(self._figure(), handler=self._on_event,
                              config={"scrollZoom": True, "displaylogo": False})
        self.case_dropdown.observe(lambda ch: self.set_case(ch["new"]), names="value")
        self.method_dropdown.observe(lambda ch: self.set_method(ch["new"]), names="value")
        self.slider.observe(self._on_slider, names="value")
        self.window_slider.observe(lambda ch: self.set_window(*ch["new"]), names="value")
        self.add_button.on_click(lambda _b: self._guarded(self.add_pair))
        self.remove_button.on_click(lambda _b: self._guarded(self.remove_pair))
        self.undo_button.on_click(lambda _b: self.undo())
        self.export_button.on_click(lambda _b: self._guarded(self.export_csv))
        self.widget = W.VBox([
            W.HBox([self.case_dropdown, self.method_dropdown, self.slider, self.busy]),
            W.HBox([self.window_slider, self.add_button, self.remove_button, self.undo_button,
                    self.export_button]),
            self.view, self.info, self.message,
            W.HTML("<small style='color:#777'>keys: n / p case, a add pair, d remove pair, "
                   "u undo, Esc clear; mouse wheel zooms</small>"),
        ])
        self.bridge = event_bridge(self.widget, self._on_event, keys=_KEYS)
        self.widget.children = (*self.widget.children, self.bridge)

    # -- state ---------------------------------------------------------------------------------
    @property
    def figure(self) -> Any:
        """The plotly figure as the page draws it (a ``go.Figure``, updated with the page)."""
        return self.view.fig

    @property
    def case(self) -> Case:
        return self.cases[self.index]

    def _matches_for(self, index: int) -> pd.DataFrame:
        key = (index, self.method)
        if key not in self._cache:
            cands = self._candidates.get(index)
            m = match(self.cases[index], self.model, method=self.method,
                      threshold=self.threshold, candidates=cands)
            self._candidates.setdefault(index, candidates_of(m))  # reused by every method
            self._cache[key] = m
        m = self._cache[key]
        if m.attrs.get("threshold") != self.threshold:
            m = self._cache[key] = reassign(m, self.threshold)
        return m

    @property
    def matches(self) -> pd.DataFrame:
        """All pairs of the current case and method, assigned at the current threshold."""
        return self._matches_for(self.index)

    def pairs(self, index: int | None = None) -> pd.DataFrame:
        """The pairs shown for case ``index`` (default: current): automatic pairs at the
        threshold, minus those removed by hand, plus those added by hand (``source``)."""
        i = self.index if index is None else int(index)
        m = self._matches_for(i).copy(deep=False)
        m.attrs = {}  # pandas deep-copies attrs (the candidate tables) on every operation
        added = self._added.get(i, [])
        taken_cc = {a for a, _ in added}
        taken_mlo = {b for _, b in added}
        removed = self._removed.get(i, set())
        auto = m[m["assigned"] & (m["probability"] >= self.threshold)]
        keep = [(int(a), int(b)) not in removed and a not in taken_cc and b not in taken_mlo
                for a, b in zip(auto["cc_id"], auto["mlo_id"])]
        auto = auto[np.asarray(keep, dtype=bool)].assign(source="auto")
        rows = [m[(m["cc_id"] == a) & (m["mlo_id"] == b)] for a, b in added]
        manual = pd.concat(rows).assign(source="manual") if rows else auto.iloc[:0]
        out = pd.concat([auto, manual], ignore_index=True)
        out.attrs = {}
        return out

    # -- drawing -------------------------------------------------------------------------------
    def _figure(self) -> Any:
        """The whole figure of the current case (images, candidates with ids, truth, pairs)."""
        from biomed_toolkit.mammo.plotting import build_pair_figure

        fig = build_pair_figure(self.case, self.matches, threshold=self.threshold)
        cands = candidates_of(self.matches)
        for v, color in (("cc", "#ff7f0e"), ("mlo", "#1f77b4")):
            ids = [str(int(i)) for i in cands[v]["cand_id"]]
            fig.update_traces(mode="markers+text", text=ids, textposition="top right",
                              textfont={"color": color, "size": 11},
                              selector={"name": f"{v.upper()} candidates"})
        # distinct truth symbols per view (the legend tells CC from MLO)
        fig.update_traces(marker_symbol="circle-open", selector={"name": "truth CC"})
        fig.update_traces(marker_symbol="square-open", marker_color="#7CFC00",
                          selector={"name": "truth MLO"})
        for tr in fig.data:
            if tr.type == "heatmap":
                tr.zmin, tr.zmax = self.window
        fig.add_scatter(x=[], y=[], mode="markers+lines", name="selected", hoverinfo="skip",
                        showlegend=False, line={"color": "red", "dash": "dot"},
                        marker={"size": 22, "symbol": "circle-open", "color": "red",
                                "line": {"width": 3}})
        # the title sits left, the toolbar stands vertically at the right: no overlap
        fig.update_layout(title={"text": self._title(), "x": 0.01, "xanchor": "left", "y": 0.985,
                                 "yanchor": "top", "font": {"size": 14}},
                          margin={"t": 45}, modebar={"orientation": "v"}, dragmode="zoom")
        self._set_pair_traces(fig)
        return fig

    def _title(self) -> str:
        c = self.case
        return (f"{c.case_id}: {c.cc.name} | {c.mlo.name}  ({self.method}, threshold "
                f"{self.threshold:g})")

    def _pair_arrays(self) -> dict[str, list[Any]]:
        off = float(self.case.cc.shape[1] + 20)
        xs: list[Any] = []
        ys: list[Any] = []
        mx, my, texts = [], [], []
        for r in self.pairs().itertuples():
            xs += [r.cc_col, r.mlo_col + off, None]
            ys += [r.cc_row, r.mlo_row, None]
            mx.append((r.cc_col + r.mlo_col + off) / 2)
            my.append((r.cc_row + r.mlo_row) / 2)
            texts.append(f"CC {r.cc_id} - MLO {r.mlo_id}<br>p = {r.probability:.3f}"
                         + (" (manual)" if r.source == "manual" else ""))
        return {"lines": [xs, ys], "marks": [mx, my, texts]}

    def _pair_trace_indices(self, fig: Any) -> tuple[int, int]:
        names = [t.name or "" for t in fig.data]
        lines = next(i for i, n in enumerate(names) if n.startswith("pairs"))
        return lines, names.index("pair probability")

    def _set_pair_traces(self, fig: Any) -> None:
        a = self._pair_arrays()
        li, mi = self._pair_trace_indices(fig)
        fig.data[li].x, fig.data[li].y = a["lines"]
        fig.data[li].name = f"pairs (p >= {self.threshold:g})"
        fig.data[mi].x, fig.data[mi].y, fig.data[mi].hovertext = a["marks"]

    def _update_pairs(self, *, title: bool = False) -> int:
        """Send the pair lines and markers (and the title) only."""
        a = self._pair_arrays()
        li, mi = self._pair_trace_indices(self.view.fig)
        restyle = {"x": [a["lines"][0], a["marks"][0]], "y": [a["lines"][1], a["marks"][1]],
                   "hovertext": [[], a["marks"][2]],
                   "name": [f"pairs (p >= {self.threshold:g})", "pair probability"]}
        relayout = {"title.text": self._title()} if title else None
        return self.view.update(restyle, relayout, traces=[li, mi])

    def _timed(self, action: str, fn: Any, *args: Any, message: str = "updating ...") -> Any:
        start = time.perf_counter()
        n0 = len(self.view.sent_bytes)
        with busy(self.busy, message):
            out = fn(*args)
        self.last_update = {"action": action, "seconds": time.perf_counter() - start,
                            "bytes": sum(self.view.sent_bytes[n0:])}
        return out

    def _redraw(self) -> None:
        self.view.react(self._figure())

    # -- public controls -----------------------------------------------------------------------
    def set_case(self, index: int) -> None:
        """Show case number ``index`` (matches are computed once and reused)."""
        if not 0 <= int(index) < len(self.cases):
            raise InputError(f"case index must be in 0..{len(self.cases) - 1}, got {index}")
        self.index = int(index)
        self.selected = None
        self.picked = {"cc": None, "mlo": None}
        if self.case_dropdown.value != self.index:
            self.case_dropdown.value = self.index
        self._timed("case", self._redraw, message=f"loading {html.escape(self.case.case_id)} ...")
        self.info.value = _HINT

    def set_method(self, method: str) -> None:
        """Switch matcher (candidates are reused; scores are computed once per case)."""
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        if self.method_dropdown.value != method:
            self.method_dropdown.value = method
        self._timed("method", self._redraw, message=f"scoring with {html.escape(method)} ...")
        if self.selected:
            self.select(self.selected["view"], self.selected["cand_id"])

    def set_threshold(self, value: float) -> None:
        """Move the probability threshold (pairs below it are hidden and not exported)."""
        self.threshold = float(value)
        if abs(self.slider.value - self.threshold) > 1e-9:
            self.slider.value = self.threshold
        self._timed("threshold", lambda: self._update_pairs(title=True))

    def set_window(self, low: float, high: float) -> None:
        """Grey-level window of both images (0 = black, 1 = white in the display scale)."""
        if not 0.0 <= low < high <= 1.0:
            raise InputError(f"window must satisfy 0 <= low < high <= 1, got {low}, {high}")
        self.window = (float(low), float(high))
        if tuple(self.window_slider.value) != self.window:
            self.window_slider.value = self.window
        images = [i for i, t in enumerate(self.view.fig.data) if t.type == "heatmap"]
        self._timed("window", lambda: self.view.update(
            {"zmin": [low] * len(images), "zmax": [high] * len(images)}, traces=images))

    def select(self, view: str, cand_id: int) -> dict[str, Any]:
        """Select (pick) a candidate (what a click does); returns its counterpart and probability."""
        view = view.lower()
        if view not in ("cc", "mlo"):
            raise InputError(f"view must be 'cc' or 'mlo', got {view!r}")
        m = self.matches
        own, other = (("cc_id", "mlo_id") if view == "cc" else ("mlo_id", "cc_id"))
        rows = m[m[own] == cand_id]
        if rows.empty:
            raise InputError(f"no {view.upper()} candidate {cand_id} in case {self.case.case_id}")
        shown = self.pairs()
        mine = shown[shown[own] == cand_id]
        # The shown pair's partner when there is one, else the most probable partner.
        best = mine.iloc[0] if len(mine) else rows.loc[rows["probability"].idxmax()]
        other_view = "mlo" if view == "cc" else "cc"
        result = {
            "view": view, "cand_id": int(cand_id), "counterpart_view": other_view,
            "counterpart_id": int(best[other]), "probability": float(best["probability"]),
            "above_threshold": bool(best["probability"] >= self.threshold),
            "assigned": bool(len(mine)),
        }
        self.selected = result
        self.picked[view] = int(cand_id)
        self._highlight(best)
        verdict = ("matched" if result["assigned"] else
                   "best partner, not assigned" if result["above_threshold"] else
                   "below the threshold")
        pick = ""
        if self.picked["cc"] is not None and self.picked["mlo"] is not None:
            pick = (f"<br>picked CC {self.picked['cc']} + MLO {self.picked['mlo']}: "
                    "<b>Add pair</b> (a) pairs them")
        self.info.value = (
            f"<b>{view.upper()} candidate {cand_id}</b> &rarr; {other_view.upper()} candidate "
            f"{result['counterpart_id']}: p = {result['probability']:.3f} ({verdict}){pick}"
        )
        return result

    def _highlight(self, row: pd.Series | None) -> None:
        off = float(self.case.cc.shape[1] + 20)
        i = self.view.trace_index("selected")
        if row is None:
            xy: list[list[Any]] = [[], []]
        else:
            xy = [[row["cc_col"], row["mlo_col"] + off], [row["cc_row"], row["mlo_row"]]]
        self.view.update({"x": [xy[0]], "y": [xy[1]]}, traces=[i])

    def clear(self) -> None:
        """Forget the picked candidates and the highlight."""
        self.selected = None
        self.picked = {"cc": None, "mlo": None}
        self._highlight(None)
        self.info.value = _HINT

    # -- manual pairs --------------------------------------------------------------------------
    def add_pair(self, cc_id: int | None = None, mlo_id: int | None = None) -> pd.DataFrame:
        """Pair CC candidate ``cc_id`` with MLO candidate ``mlo_id`` by hand (default: the
        picked ones). Pairs sharing either candidate are replaced. Returns :meth:`pairs`."""
        cc_id = self.picked["cc"] if cc_id is None else int(cc_id)
        mlo_id = self.picked["mlo"] if mlo_id is None else int(mlo_id)
        if cc_id is None or mlo_id is None:
            raise InputError("pick a CC and an MLO candidate first (click them), or pass both ids")
        m = self.matches
        if not ((m["cc_id"] == cc_id) & (m["mlo_id"] == mlo_id)).any():
            raise InputError(f"no candidates CC {cc_id} / MLO {mlo_id} in case {self.case.case_id}")
        pair = (int(cc_id), int(mlo_id))
        added = self._added.setdefault(self.index, [])
        added[:] = [p for p in added if p[0] != pair[0] and p[1] != pair[1]] + [pair]
        self._edits.append((self.index, "add", pair))
        self._after_edit(f"added CC {cc_id} - MLO {mlo_id} by hand")
        return self.pairs()

    def remove_pair(self, cc_id: int | None = None, mlo_id: int | None = None) -> pd.DataFrame:
        """Remove the shown pair of CC ``cc_id`` and/or MLO ``mlo_id`` (default: the picked
        candidate's pair). Returns :meth:`pairs`."""
        if cc_id is None and mlo_id is None and self.selected:
            key = "cc_id" if self.selected["view"] == "cc" else "mlo_id"
            cc_id, mlo_id = (self.selected["cand_id"], None) if key == "cc_id" else (
                None, self.selected["cand_id"])
        shown = self.pairs()
        hit = shown
        if cc_id is not None:
            hit = hit[hit["cc_id"] == int(cc_id)]
        if mlo_id is not None:
            hit = hit[hit["mlo_id"] == int(mlo_id)]
        if cc_id is None and mlo_id is None or hit.empty:
            raise InputError("no shown pair with that candidate: pick a paired candidate first")
        r = hit.iloc[0]
        pair = (int(r["cc_id"]), int(r["mlo_id"]))
        if r["source"] == "manual":
            self._added[self.index].remove(pair)
        else:
            self._removed.setdefault(self.index, set()).add(pair)
        self._edits.append((self.index, "remove-" + str(r["source"]), pair))
        self._after_edit(f"removed CC {pair[0]} - MLO {pair[1]}")
        return self.pairs()

    def undo(self) -> bool:
        """Undo the last manual pair edit; False when there is none."""
        if not self._edits:
            return False
        index, kind, pair = self._edits.pop()
        if kind == "add":
            self._added[index].remove(pair)
        elif kind == "remove-manual":
            self._added.setdefault(index, []).append(pair)
        else:
            self._removed[index].discard(pair)
        if index != self.index:
            self.set_case(index)
        self._after_edit("undone")
        return True

    def _after_edit(self, what: str) -> None:
        self._timed("pair", self._update_pairs)
        self.undo_button.disabled = not self._edits
        self.message.value = f"<small>{html.escape(what)}</small>"

    # -- export --------------------------------------------------------------------------------
    def matches_dataframe(self, *, all_cases: bool = False) -> pd.DataFrame:
        """The pairs shown at the current threshold, manual edits included (``source``), for
        the current case or every case."""
        idx = range(len(self.cases)) if all_cases else [self.index]
        frames = []
        for i in idx:
            sel = self.pairs(i)
            sel.insert(0, "case_id", self.cases[i].case_id)
            sel.insert(1, "method", self.method)
            frames.append(sel)
        out = pd.concat(frames, ignore_index=True)
        out.attrs = {}
        return out

    def export_csv(self, path: str | os.PathLike | None = None) -> Path:
        """Write the pairs of every case (:meth:`matches_dataframe`) to ``path``
        (default ``"lesion_pairs.csv"``)."""
        path = Path(path if path is not None else "lesion_pairs.csv")
        df = self.matches_dataframe(all_cases=True)
        write_csv(df, path)
        self.message.value = f"<small>wrote {len(df)} pairs to {html.escape(str(path))}</small>"
        return path

    # -- events --------------------------------------------------------------------------------
    def _guarded(self, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except InputError as err:
            self.message.value = f"<span style='color:#a94442'>{html.escape(str(err))}</span>"

    def _on_slider(self, change: dict[str, Any]) -> None:
        if abs(float(change["new"]) - self.threshold) > 1e-9:  # not our own echo
            self.set_threshold(change["new"])

    def _clicked(self, view: str, points: Any) -> None:
        if not points.point_inds:
            return
        cands = candidates_of(self.matches)[view]
        self.select(view, int(cands["cand_id"].iloc[points.point_inds[0]]))

    def _on_event(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "click":
            trace = str(msg.get("trace") or "")
            if trace in ("CC candidates", "MLO candidates") and msg.get("cells"):
                self._guarded(self.select, trace[:-11].strip().lower(), int(msg["cells"][0]))
        elif kind == "clear":
            self.clear()
        elif kind == "key":
            key = msg.get("key")
            if key in ("n", "p"):
                step = 1 if key == "n" else -1
                self.set_case((self.index + step) % len(self.cases))
            elif key == "a":
                self._guarded(self.add_pair)
            elif key == "d":
                self._guarded(self.remove_pair)
            elif key == "u":
                self.undo()
            elif key == "Escape":
                self.clear()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        self.view.snapshot()  # a new view starts from the current figure
        display(self.widget)

    def __repr__(self) -> str:
        return (f"LesionMatcher({len(self.cases)} cases, case {self.index}, method "
                f"{self.method!r}, threshold {self.threshold:g})")
