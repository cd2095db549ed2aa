"""napari view of a case: both views, a points layer per view, a shapes layer for pairs.

napari is imported only when a viewer has to be created; layer building works on a
``napari.components.ViewerModel`` (no Qt), which is what the tests use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.io import Case
from biomed_toolkit.mammo.matching import candidates_of

__all__ = ["show_napari", "screenshot_to_notebook", "NAPARI_HINT"]

NAPARI_HINT = 'pip install "napari[pyqt6]"  (or: pip install "biomed-toolkit[napari]")'
GAP = 20


def _import_napari():
    try:
        import napari
    except ImportError as e:
        raise ImportError(f"napari is not installed: {NAPARI_HINT}") from e
    return napari


def _pair_table(matches: pd.DataFrame | None, threshold: float) -> pd.DataFrame:
    if matches is None or len(matches) == 0:
        return pd.DataFrame(columns=["cc_id", "mlo_id", "probability"])
    sel = matches[matches["assigned"] & (matches["probability"] >= threshold)]
    return sel.reset_index(drop=True)


def show_napari(
    case: Case,
    matches: pd.DataFrame | None = None,
    *,
    viewer: Any = None,
    threshold: float = 0.5,
    layout: str = "side",
    show_truth: bool = True,
    show: bool = True,
) -> Any:
    """Open (or fill) a napari viewer with both views, candidates and matched pairs.

    Parameters
    ----------
    case
        A :class:`Case`.
    matches
        Output of :func:`match` (None: images and ground truth only).
    viewer
        An existing ``napari.Viewer`` or ``napari.components.ViewerModel``; a new
        ``napari.Viewer`` when None.
    threshold
        Pairs (assigned, probability >= threshold) drawn as lines.
    layout
        ``"side"``: one canvas, MLO translated to the right of the CC, pairs as lines across;
        ``"grid"``: napari grid mode (one cell per view, the stride covering a view's layers);
        lines cannot cross grid cells, so there pairs are shown by the candidates' text
        (pair number and probability) and no ``pairs`` layer is added.
    show_truth
        Add a points layer with the phantom's true lesions.
    show
        Show the window when a new viewer is created.

    Returns
    -------
    The viewer, with layers ``CC``, ``CC candidates``, ``MLO``, ``MLO candidates``, ``pairs``
    (side layout) and ``truth CC`` / ``truth MLO`` (phantoms).

    Examples
    --------
    >>> viewer = bt.mammo.show_napari(case, bt.mammo.match(case))  # doctest: +SKIP
    >>> bt.mammo.screenshot_to_notebook(viewer)                    # doctest: +SKIP
    """
    if not isinstance(case, Case):
        raise InputError(f"show_napari needs a Case, got {type(case).__name__}")
    if layout not in ("side", "grid"):
        raise InputError(f"layout must be 'side' or 'grid', got {layout!r}")
    if viewer is None:
        napari = _import_napari()
        viewer = napari.Viewer(title=f"biomed_toolkit: {case.case_id}", show=show)
    off = float(case.cc.shape[1] + GAP) if layout == "side" else 0.0
    pairs = _pair_table(matches, threshold)
    cands = candidates_of(matches) if matches is not None else None
    pair_of = {"cc": {}, "mlo": {}}
    for k, r in enumerate(pairs.itertuples()):
        pair_of["cc"][r.cc_id] = (k + 1, r.probability)
        pair_of["mlo"][r.mlo_id] = (k + 1, r.probability)
    for v, img, name in (("cc", case.cc, "CC"), ("mlo", case.mlo, "MLO")):
        translate = (0.0, off if v == "mlo" else 0.0)
        viewer.add_image(img.pixels, name=name, colormap="gray", contrast_limits=(0, 1),
                         translate=translate)
        if show_truth and case.lesions is not None:
            les = case.lesions[case.lesions[f"in_{v}"]]
            viewer.add_points(
                les[[f"{v}_row", f"{v}_col"]].to_numpy(dtype=float).reshape(-1, 2),
                name=f"truth {name}", size=np.maximum(les[f"{v}_radius_px"].to_numpy() * 2, 8),
                face_color="transparent", border_color="lime", border_width=0.08,
                translate=translate,
            )
        if cands is not None:
            c = cands[v]
            idx = c["cand_id"].tolist()
            pair_no = [pair_of[v].get(i, (0, 0.0))[0] for i in idx]
            prob = [pair_of[v].get(i, (0, 0.0))[1] for i in idx]
            features = pd.DataFrame({
                "cand_id": idx, "score": c["score"].to_numpy(dtype=float),
                "pair": pair_no, "probability": prob,
                "label": [f"#{p} p={q:.2f}" if p else "" for p, q in zip(pair_no, prob)],
            })
            colors = ["yellow" if p else ("orange" if v == "cc" else "deepskyblue") for p in pair_no]
            viewer.add_points(
                c[["row", "col"]].to_numpy(dtype=float).reshape(-1, 2), name=f"{name} candidates",
                size=10, symbol="x", face_color=colors, border_color=colors,
                features=features, text={"string": "{label}", "color": "yellow", "size": 9,
                                         "anchor": "upper_left"},
                translate=translate,
            )
    if layout == "side" and len(pairs):
        lines = [np.array([[r.cc_row, r.cc_col], [r.mlo_row, r.mlo_col + off]])
                 for r in pairs.itertuples()]
        viewer.add_shapes(
            lines, shape_type="line", edge_color="yellow", edge_width=2, name="pairs",
            features=pd.DataFrame({"cc_id": pairs["cc_id"].to_numpy(),
                                   "mlo_id": pairs["mlo_id"].to_numpy(),
                                   "probability": pairs["probability"].to_numpy(dtype=float)}),
        )
    elif layout == "side":
        viewer.add_shapes(name="pairs", shape_type="line", edge_color="yellow")
    if layout == "grid":
        # Per-view order [image, (truth), candidates]: a stride covers one view's layers.
        stride = 1 + int(show_truth and case.lesions is not None) + int(cands is not None)
        viewer.grid.stride = stride
        viewer.grid.shape = (1, 2)
        viewer.grid.enabled = True
    viewer.reset_view()
    return viewer


def screenshot_to_notebook(viewer: Any, *, canvas_only: bool = True) -> Any:
    """Put a PNG screenshot of a (Qt) napari viewer in the notebook output.

    Returns the ``IPython.display.Image`` (it displays itself as the cell's result).
    """
    import io

    from IPython.display import Image

    if not hasattr(viewer, "screenshot"):
        raise InputError(
            "this viewer cannot render (a ViewerModel has no canvas): use napari.Viewer(), "
            "under a display or xvfb-run"
        )
    arr = np.asarray(viewer.screenshot(canvas_only=canvas_only, flash=False))
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return Image(data=buf.getvalue(), format="png")
