"""Small helpers shared by the domain widgets.

- :func:`figure_box` shows a plotly ``FigureWidget`` so that it renders on first paint;
- :func:`event_bridge` is an invisible widget that forwards plot gestures (lasso / box selection,
  clicks, deselection) and keyboard shortcuts from the page to Python as *custom messages*: one
  message per event, delivered in order and never merged (the plotly widget sends hover, click and
  selection through one synced field, so a hover right after a lasso overwrites the selection);
- :func:`plot_view` is a live plotly view that updates by small messages: the figure is sent
  once, then only the changed properties of the changed traces (``Plotly.restyle`` /
  ``relayout`` / ``update`` in the page), each message counted in bytes so a widget can report
  what an update cost; plot gestures come back as events like the bridge's;
- :func:`busy` shows a busy indicator while a slow update runs;
- :func:`write_csv` writes a widget's export whole or not at all (a reader polling for the file
  never sees it half written).

Why not plotly's ``FigureWidget``: it ships a 5 MB module that anywidget must load within 2 s,
which fails on a busy machine (the page then shows a static, dead copy of the figure), and it
re-sends whole traces. The view here loads plotly.js (the copy inside the plotly package,
offline) when it is drawn, not when the widget model starts, so a slow load only delays the
first paint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PLOT_EVENTS_JS", "busy", "event_bridge", "figure_box", "plot_view", "write_csv"]


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` to ``path`` as CSV (no index) through a temporary file renamed into
    place, so the file appears complete or not at all; the folder is created. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def figure_box(figure: Any) -> Any:
    """Put a plotly ``FigureWidget`` in an ``ipywidgets.Output``.

    Inside a ``VBox``/``HBox`` a FigureWidget's first render can stay empty in Voila until its
    first update; shown through an Output it renders at once. The figure stays live.
    """
    import ipywidgets as widgets

    box = widgets.Output()
    box.append_display_data(figure)
    return box


# The bridge finds the plotly graph div inside the element that carries the ``scope`` CSS class
# (the widget's outer box), listens to plotly.js events on it and to key presses while the mouse
# is over the box or the focus is inside it. Every event becomes one ``model.send`` message with a
# sequence number; Python answers by setting ``handled`` to that number (written to the element's
# ``data-handled`` attribute, which browser tests wait on).
# plotly.js events on graph div ``gd`` -> one message each (``send``); shared by both widgets.
PLOT_EVENTS_JS = r"""
function hookPlotEvents(gd, model, send, isBusy) {
  let lastClick = 0;
  const cells = (ev) => {
    const out = [];
    for (const p of (ev && ev.points) || []) {
      const c = Array.isArray(p.customdata) ? p.customdata[0] : p.customdata;
      if (c !== undefined && c !== null && p.data && p.data.name !== model.get("skip_trace")) out.push(c);
    }
    return out;
  };
  gd.on("plotly_selected", (ev) => {
    if (!ev || isBusy()) return;  // plotly fires an empty event when a new gesture starts
    send({ type: "select", cells: cells(ev), lasso: !!ev.lassoPoints });
  });
  gd.on("plotly_click", (ev) => {
    lastClick = Date.now();
    const c = cells(ev);
    const e = ev && ev.event ? ev.event : {};
    const p = ev.points[0] || {};
    if (c.length) send({ type: "click", cells: c.slice(0, 1), shift: !!e.shiftKey,
                         trace: p.data ? p.data.name : null, point: p.pointNumber });
  });
  gd.on("plotly_restyle", (d) => {
    // a legend click hides / shows traces: tell Python, which redraws from its own copy
    if (isBusy() || !d || !d[0] || !("visible" in d[0])) return;
    const idx = d[1] || [];
    send({ type: "visible", traces: idx.map((i) => gd.data[i].name),
           visible: idx.map((i) => gd.data[i].visible === undefined ? true : gd.data[i].visible) });
  });
  // a click on empty plot space clears (plotly has no selection of its own left to deselect:
  // the widget removes plotly's outline after every gesture)
  let down = null;
  gd.addEventListener("mousedown", (e) => {
    const onPlot = e.target && e.target.closest && e.target.closest(".draglayer");
    down = onPlot ? { x: e.clientX, y: e.clientY, t: Date.now(), moved: false } : null;
  }, true);
  document.addEventListener("mousemove", (e) => {
    if (down && Math.hypot(e.clientX - down.x, e.clientY - down.y) > 3) down.moved = true;
  }, true);
  // plotly covers the page while the button is down: the mouseup lands outside the plot
  document.addEventListener("mouseup", (e) => {
    if (!down || !gd.isConnected) return;
    const d = down;
    down = null;
    if (d.moved || Math.hypot(e.clientX - d.x, e.clientY - d.y) > 3) return;  // a drag
    setTimeout(() => { if (lastClick < d.t && !isBusy()) send({ type: "clear" }); }, 350);
  }, true);
}
"""

_BRIDGE_JS = PLOT_EVENTS_JS + r"""
function render({ model, el }) {
  el.style.display = "none";
  el.dataset.sent = "0";
  let seq = 0, hovering = false, attachedTo = null;
  const scope = () => el.closest("." + model.get("scope"));
  const send = (msg) => { seq += 1; msg.seq = seq; el.dataset.sent = String(seq); model.send(msg); };
  const attach = () => {
    const root = scope();
    if (!root || !model.get("plot")) return;
    const gd = root.querySelector(".js-plotly-plot");
    if (!gd || gd === attachedTo || typeof gd.on !== "function") return;
    attachedTo = gd;
    hookPlotEvents(gd, model, send, () => false);
  };
  const timer = setInterval(attach, 300);
  attach();
  const onKey = (e) => {
    const root = scope();
    if (!root) return;
    const inside = root.contains(document.activeElement) && document.activeElement !== document.body;
    if (!hovering && !inside) return;
    const t = e.target || {};
    const typing = t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable;
    const key = (e.ctrlKey || e.metaKey ? "ctrl+" : "") + (e.shiftKey && e.key.length > 1 ? "shift+" : "") + e.key;
    if (typing) {
      // Enter in a text box that asks for it (e.g. the relabel box) submits its current text
      const box = t.closest && t.closest("[class*='bt-submit']");
      if (e.key === "Enter" && box) {
        e.preventDefault();
        const name = [...box.classList].find((c) => c.startsWith("bt-submit-")) || "bt-submit";
        send({ type: "submit", name: name.replace("bt-submit-", ""), value: t.value });
      }
      return;
    }
    if ((model.get("shortcuts") || []).includes(key)) {
      e.preventDefault();
      e.stopPropagation();
      send({ type: "key", key: key });
    }
  };
  const over = () => { hovering = true; }, out = () => { hovering = false; };
  const hook = setInterval(() => {
    const root = scope();
    if (root && !root.dataset.btHooked) {
      root.dataset.btHooked = "1";
      root.addEventListener("mouseenter", over);
      root.addEventListener("mouseleave", out);
    }
  }, 300);
  document.addEventListener("keydown", onKey, true);
  // clicks on elements marked data-bt-action (table rows, sortable headers in an HTML widget)
  const onClick = (e) => {
    const root = scope();
    const a = e.target && e.target.closest && e.target.closest("[data-bt-action]");
    if (!root || !a || !root.contains(a)) return;
    send({ type: "action", action: a.dataset.btAction, value: a.dataset.btValue,
           shift: !!e.shiftKey, ctrl: !!(e.ctrlKey || e.metaKey) });
  };
  document.addEventListener("click", onClick, true);
  const shown = () => { el.dataset.handled = String(model.get("handled")); };
  model.on("change:handled", shown);
  shown();
  return () => {
    clearInterval(timer);
    clearInterval(hook);
    document.removeEventListener("keydown", onKey, true);
    document.removeEventListener("click", onClick, true);
  };
}
export default { render };
"""

_BRIDGE_CLASS: Any = None


def _bridge_class() -> Any:
    global _BRIDGE_CLASS
    if _BRIDGE_CLASS is None:
        import anywidget
        import traitlets

        class EventBridge(anywidget.AnyWidget):
            """Forwards plot gestures and key presses of one widget to Python (see module doc)."""

            _esm = _BRIDGE_JS
            scope = traitlets.Unicode("").tag(sync=True)
            shortcuts = traitlets.List(traitlets.Unicode()).tag(sync=True)
            plot = traitlets.Bool(False).tag(sync=True)
            skip_trace = traitlets.Unicode("").tag(sync=True)
            handled = traitlets.Int(0).tag(sync=True)

        _BRIDGE_CLASS = EventBridge
    return _BRIDGE_CLASS


def event_bridge(
    container: Any,
    handler: Callable[[dict[str, Any]], None],
    *,
    keys: Sequence[str] = (),
    plot: bool = False,
    skip_trace: str = "",
) -> Any:
    """An invisible widget forwarding events of ``container``'s page element to ``handler``.

    Parameters
    ----------
    container
        The widget's outer ipywidgets box; it gets a unique CSS class the bridge looks for. Add
        the returned bridge to its children.
    handler
        Called with each message: ``{"type": "select", "cells": [...]}`` (lasso / box),
        ``{"type": "click", "cells": [i]}``, ``{"type": "clear"}``, ``{"type": "key", "key": "u"}``
        ``{"type": "submit", "name": ..., "value": ...}`` (Enter in a text box carrying the
        class ``bt-submit-<name>``) or ``{"type": "action", "action": ..., "value": ...,
        "shift": bool, "ctrl": bool}`` (a click on an element with ``data-bt-action`` /
        ``data-bt-value`` attributes, e.g. a table row in an ``HTML`` widget). ``cells`` are the ``customdata`` of the points.
    keys
        Key names (``KeyboardEvent.key``, with ``ctrl+`` / ``shift+`` prefixes) to capture while
        the mouse is over the widget or the focus is inside it (never while typing in a box).
    plot
        Listen to the plotly figure inside ``container``.
    skip_trace
        Name of a trace whose points are ignored in selections (e.g. the highlight overlay).
    """
    import uuid

    scope = f"bt-scope-{uuid.uuid4().hex[:10]}"
    container.add_class(scope)
    bridge = _bridge_class()(scope=scope, shortcuts=list(keys), plot=plot, skip_trace=skip_trace)

    def _on_msg(_widget: Any, content: dict[str, Any], _buffers: Any) -> None:
        try:
            handler(content)
        finally:
            bridge.handled = int(content.get("seq", bridge.handled))

    bridge.on_msg(_on_msg)
    return bridge


_PLOT_JS = PLOT_EVENTS_JS + r"""
function loadPlotly(model) {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!window.__btPlotly) {
    window.__btPlotly = new Promise((resolve) => {
      const s = document.createElement("script");
      s.textContent = model.get("plotly_js");
      document.head.appendChild(s);
      resolve(window.Plotly);
    });
  }
  return window.__btPlotly;
}
function render({ model, el }) {
  const gd = document.createElement("div");
  el.appendChild(gd);
  el.classList.add("bt-plot-view");
  el.dataset.sent = "0";
  el.dataset.applied = "0";
  let seq = 0, applying = false;
  const send = (msg) => { seq += 1; msg.seq = seq; el.dataset.sent = String(seq); model.send(msg); };
  const shown = () => { el.dataset.handled = String(model.get("handled")); };
  model.on("change:handled", shown);
  shown();
  let chain = loadPlotly(model).then((P) => {
    const f = model.get("figure");
    return P.newPlot(gd, f.data || [], f.layout || {}, model.get("config")).then(() => {
      hookPlotEvents(gd, model, send, () => applying);
      el.dataset.applied = String(f.seq || 0);
    });
  });
  const apply = (msg) => {
    const P = window.Plotly;
    applying = true;
    let done;
    if (msg.type === "react") done = P.react(gd, msg.figure.data, msg.figure.layout, model.get("config"));
    else if (msg.type === "update") done = P.update(gd, msg.restyle || {}, msg.relayout || {}, msg.traces);
    else done = Promise.resolve();
    return Promise.resolve(done).then(() => {
      applying = false;
      el.dataset.applied = String(msg.seq);
      el.dataset.appliedAt = String(performance.now());
    });
  };
  model.on("msg:custom", (msg) => {
    chain = chain.then(() => apply(msg)).catch((e) => { applying = false; console.error(e); });
  });
}
export default { render };
"""

_PLOT_CLASS: Any = None


def _plot_class() -> Any:
    global _PLOT_CLASS
    if _PLOT_CLASS is None:
        from pathlib import Path

        import anywidget
        import plotly
        import traitlets

        js_text = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text()

        class PlotView(anywidget.AnyWidget):
            """A plotly figure in the page, updated by ``update`` / ``react`` messages."""

            _esm = _PLOT_JS
            figure = traitlets.Dict().tag(sync=True)
            config = traitlets.Dict().tag(sync=True)
            plotly_js = traitlets.Unicode(js_text).tag(sync=True)
            skip_trace = traitlets.Unicode("").tag(sync=True)
            handled = traitlets.Int(0).tag(sync=True)

            def __init__(self, fig: Any, *, handler: Callable[[dict[str, Any]], None] | None = None,
                         config: dict[str, Any] | None = None, skip_trace: str = "") -> None:
                super().__init__(config=dict(config or {}), skip_trace=skip_trace)
                self.fig = fig  # the Python copy, kept equal to what the page draws
                self.seq = 0
                self.sent_bytes: list[int] = []  # size of every update message, in bytes
                self.snapshot()
                self._handler = handler
                self.on_msg(self._on_msg)

            @staticmethod
            def _plain(obj: Any) -> Any:
                import json

                from plotly.utils import PlotlyJSONEncoder

                return json.loads(json.dumps(obj, cls=PlotlyJSONEncoder))

            def snapshot(self) -> None:
                """Store the whole figure for views drawn later (a page opened after the run)."""
                state = self._plain(self.fig.to_plotly_json())
                state["seq"] = self.seq
                self.figure = state

            def _post(self, msg: dict[str, Any]) -> int:
                import json

                self.seq += 1
                msg["seq"] = self.seq
                self.sent_bytes.append(len(json.dumps(msg)))
                self.send(msg)
                return self.sent_bytes[-1]

            def update(self, restyle: dict[str, Any] | None = None,
                       relayout: dict[str, Any] | None = None,
                       traces: Sequence[int] | None = None) -> int:
                """``Plotly.update`` of ``traces`` (indices) in the page and in :attr:`fig`.

                ``restyle`` follows plotly.js: ``{"x": [[...]] , "marker.color": [c]}`` (one
                entry per trace). Returns the message size in bytes.
                """
                restyle = self._plain(restyle or {})
                relayout = self._plain(relayout or {})
                idx = list(range(len(self.fig.data))) if traces is None else [int(t) for t in traces]
                if restyle:
                    self.fig.plotly_restyle(restyle, idx)
                if relayout:
                    self.fig.plotly_relayout(relayout)
                return self._post({"type": "update", "restyle": restyle, "relayout": relayout,
                                   "traces": idx})

            def react(self, fig: Any) -> int:
                """Replace the whole figure (new traces); returns the message size in bytes."""
                self.fig = fig
                return self._post({"type": "react", "figure": self._plain(fig.to_plotly_json())})

            def trace_index(self, name: str) -> int:
                """Index of the first trace called ``name``."""
                for i, tr in enumerate(self.fig.data):
                    if tr.name == name:
                        return i
                raise KeyError(name)

            def _on_msg(self, _widget: Any, content: dict[str, Any], _buffers: Any) -> None:
                try:
                    if self._handler is not None:
                        self._handler(content)
                finally:
                    self.handled = int(content.get("seq", self.handled))

        _PLOT_CLASS = PlotView
    return _PLOT_CLASS


def plot_view(
    fig: Any,
    *,
    handler: Callable[[dict[str, Any]], None] | None = None,
    config: dict[str, Any] | None = None,
    skip_trace: str = "",
) -> Any:
    """A live view of the plotly figure ``fig`` that updates by small messages.

    Parameters
    ----------
    fig
        A ``plotly.graph_objects.Figure``; the view keeps it as ``.fig`` and changes it along
        with the page (``view.update(restyle, relayout, traces)``, ``view.react(new_fig)``).
    handler
        Receives the plot's gestures (see :func:`event_bridge`).
    config
        plotly.js config (e.g. ``{"scrollZoom": True}``).
    skip_trace
        Name of a trace whose points are ignored in selections.

    Returns
    -------
    An ``anywidget`` widget; ``.sent_bytes`` lists the size of every update message.
    """
    return _plot_class()(fig, handler=handler, config=config, skip_trace=skip_trace)


@contextlib.contextmanager
def busy(indicator: Any, message: str = "updating ...") -> Iterator[None]:
    """Show ``message`` in the ``ipywidgets.HTML`` ``indicator`` while the block runs.

    The text is sent to the page before the work starts, so anything slower than a few hundred
    milliseconds shows a visible busy state; it is cleared afterwards (also on error).
    """
    indicator.value = (
        "<span class='bt-busy' style='color:#8a6d3b'>&#9203; " + message + "</span>"
    )
    try:
        yield
    finally:
        indicator.value = ""
