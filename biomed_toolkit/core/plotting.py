"""Plots shared by every domain: training history."""

from __future__ import annotations

from typing import Any

from .display import finish


def training_history(
    history: Any,
    metrics: list[str] | None = None,
    *,
    show: bool | None = None,
    return_fig: bool = False,
    ax: Any = None,
    save: str | None = None,
) -> Any:
    """Plot losses and metrics from ``bt.train.fit(...).history`` (or a ``FitResult``).

    Parameters
    ----------
    history
        DataFrame with a ``step`` column and one column per metric, or a FitResult.
    metrics
        Columns to plot (default: every loss, then every other metric).
    show, return_fig, ax, save
        The toolkit's display rule (:func:`biomed_toolkit.core.display.finish`): shown by
        default, returned with ``return_fig=True``, drawn into ``ax`` when given, written to
        ``save``.

    Examples
    --------
    >>> bt.pl.training_history(result.history)  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    frame = getattr(history, "history", history)
    cols = [c for c in frame.columns if c not in ("step", "epoch")]
    if metrics is None:
        metrics = [c for c in cols if "loss" in c] + [c for c in cols if "loss" not in c]
    if not metrics:
        raise ValueError("the history holds no metric to plot: was anything logged with self.log?")
    losses = [m for m in metrics if "loss" in m]
    others = [m for m in metrics if "loss" not in m]
    if ax is not None:
        fig = ax.figure
        axes = [ax]
        groups = [metrics]
    else:
        groups = [g for g in (losses, others) if g]
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.5), squeeze=False)
        axes = list(axes[0])
    for axis, group in zip(axes, groups, strict=False):
        for metric in group:
            data = frame[["step", metric]].dropna()
            marker = "o" if len(data) < 30 else None
            axis.plot(data["step"], data[metric], label=metric, marker=marker)
        axis.set_xlabel("step")
        axis.legend(frameon=False)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    return finish(fig, show=show, return_fig=return_fig, ax=ax, save=save,
                  axes=axes[0] if len(axes) == 1 else axes)
