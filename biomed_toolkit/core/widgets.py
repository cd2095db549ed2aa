"""Small helpers shared by the domain widgets."""

from __future__ import annotations

from typing import Any


def figure_box(figure: Any) -> Any:
    """Put a plotly ``FigureWidget`` in an ``ipywidgets.Output``.

    Inside a ``VBox``/``HBox`` a FigureWidget's first render can stay empty in Voila until its
    first update; shown through an Output it renders at once. The figure stays live.
    """
    import ipywidgets as widgets

    box = widgets.Output()
    box.append_display_data(figure)
    return box
