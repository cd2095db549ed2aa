"""One rule for ``show=`` / ``return_fig=`` / ``ax=`` in every plot (scanpy's savefig_or_show idea).

- ``return_fig=True``: the figure comes back and is not shown (the caller shows or saves it);
- otherwise, with ``show`` left at ``None``, the figure is shown, unless the caller passed an
  ``ax`` (then it is drawing into its own figure and shows it itself);
- ``show=True`` shows and returns None; ``show=False`` returns the axes (matplotlib: one axis or a
  list) or the figure (plotly) so the caller can keep drawing.
- ``save=path`` writes the figure (PNG/SVG/PDF for matplotlib, HTML or an image for plotly) before
  any of the above.

Plotly figures are shown through IPython's display inside a kernel (inline, offline) and through
``fig.show()`` elsewhere.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def in_notebook() -> bool:
    """True inside a Jupyter kernel."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def is_plotly(fig: Any) -> bool:
    """True for a plotly ``Figure`` / ``FigureWidget``."""
    return type(fig).__module__.startswith("plotly")


def finish(
    fig: Any,
    *,
    show: bool | None = None,
    return_fig: bool = False,
    ax: Any = None,
    axes: Any = None,
    save: str | os.PathLike | None = None,
) -> Any:
    """Apply the toolkit's display rule to a finished figure (see the module docstring).

    Parameters
    ----------
    fig
        A matplotlib ``Figure`` or a plotly figure.
    show, return_fig
        As in scanpy.
    ax
        The axis the caller passed in (then nothing is shown unless ``show=True``).
    axes
        What ``show=False`` returns for matplotlib (default: the figure's axes, one or a list).
    save
        Write the figure to this path first.

    Returns
    -------
    The figure (``return_fig``), the axes / plotly figure (``show=False``), or None.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig, a = plt.subplots()
    >>> finish(fig, return_fig=True) is fig
    True
    """
    if save is not None:
        _save(fig, Path(save))
    if return_fig:
        return fig
    if show is None:
        show = ax is None
    if show:
        _show(fig)
        return None
    if is_plotly(fig):
        return fig
    if axes is not None:
        return axes
    found = list(fig.axes)
    return found[0] if len(found) == 1 else found


def _show(fig: Any) -> None:
    if is_plotly(fig):
        if in_notebook():
            from IPython.display import display

            display(fig)
        else:
            fig.show()
        return
    import matplotlib.pyplot as plt

    if plt.fignum_exists(getattr(fig, "number", -1)):
        plt.show()
    elif in_notebook():
        from IPython.display import display

        display(fig)


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_plotly(fig):
        if path.suffix.lower() in (".html", ".htm"):
            fig.write_html(str(path), include_plotlyjs=True)
        else:
            fig.write_image(str(path))
        return
    fig.savefig(path, bbox_inches="tight", dpi=150)


__all__ = ["finish", "in_notebook", "is_plotly"]
