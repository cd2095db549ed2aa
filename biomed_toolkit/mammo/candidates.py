"""Candidate lesions per view: a multi-scale blob detector, patch extraction, labelling.

Detection runs at a fixed working resolution (``work_mm`` per pixel) so its cost does not grow
with the detector's pixel count: a 2,000 x 1,600 view at 0.13 mm is reduced by block averaging.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.geometry import (
    DEFAULT_MM,
    BreastGeometry,
    as_image,
    block_mean,
    breast_geometry,
    breast_mask,
)
from biomed_toolkit.mammo.io import Case, MammoImage, check_finite_pixels

if TYPE_CHECKING:
    from biomed_toolkit.mammo.modeling import SiameseMatcher

__all__ = [
    "detect_candidates",
    "extract_patches",
    "label_candidates",
    "estimate_nipple",
    "breast_mask",
    "pectoral_mask",
    "detector_input",
    "CANDIDATE_COLUMNS",
    "DetectorMethod",
]

CANDIDATE_COLUMNS = ["cand_id", "view", "row", "col", "radius_px", "radius_mm", "score", "kind"]
#: ``"learned"``: the model's heatmap network; ``"log"``: the Laplacian-of-Gaussian baseline.
DetectorMethod = Literal["learned", "log"]
#: Grid of the learned detector (mm per cell).
DETECTOR_MM = 2.0
_DEFAULT_MM = DEFAULT_MM
_as_image = as_image
_block_mean = block_mean


def pectoral_mask(small: np.ndarray, mask: np.ndarray, wsp: float) -> np.ndarray:
    """Pectoral muscle of an oblique view: the bright region in the upper chest-wall corner.

    Returns an all-False mask when no bright region touches both the top and the left edge.
    """
    h, w = small.shape
    sm = ndi.gaussian_filter(small, 3.0 / wsp)
    vals = sm[mask]
    if vals.size == 0:
        return np.zeros_like(mask)
    bright = (sm > np.percentile(vals, 85)) & mask
    lab, n = ndi.label(bright)
    if n == 0:
        return np.zeros_like(mask)
    corner = lab[: max(1, h // 10), : max(1, w // 8)]
    ids = np.unique(corner[corner > 0])
    out = np.zeros_like(mask)
    for i in ids:
        comp = lab == i
        if comp[0, :].any() and comp[:, 0].any():
            out |= comp
    return ndi.binary_fill_holes(out)


def estimate_nipple(image: MammoImage | np.ndarray, view: str | None = None) -> tuple[float, float]:
    """Nipple position (row, col): the breast point farthest from the chest-wall line.

    The chest-wall line is the left image edge in CC and the pectoral edge in MLO (see
    :func:`biomed_toolkit.mammo.geometry.breast_geometry`).

    Examples
    --------
    >>> row, col = estimate_nipple(bt.mammo.phantom(0).cc)
    """
    return breast_geometry(image, view).nipple


def _inner_mask(geo: BreastGeometry, shape: tuple[int, int], f: int, wsp: float, *,
                erode_mm: float = 4.0, pectoral: bool = True, pectoral_mm: float = 4.0) -> np.ndarray:
    """Breast interior at a working grid of factor ``f``: off the skin and the pectoral."""
    if geo.factor == f and geo.mask.shape == shape:
        mask = geo.mask
    else:
        mask = ndi.zoom(geo.mask.astype(np.uint8), (shape[0] / geo.mask.shape[0],
                                                   shape[1] / geo.mask.shape[1]), order=0)
        mask = np.pad(mask, ((0, max(0, shape[0] - mask.shape[0])),
                             (0, max(0, shape[1] - mask.shape[1]))))[: shape[0], : shape[1]] > 0
    if erode_mm <= 0:
        return mask
    inner = ndi.binary_erosion(mask, iterations=max(1, int(round(erode_mm / wsp))), border_value=0)
    if pectoral and geo.pectoral_found:
        rr, cc = np.mgrid[: shape[0], : shape[1]]
        depth = geo.depth_mm((rr + 0.5) * f - 0.5, (cc + 0.5) * f - 0.5)
        inner &= depth > pectoral_mm
    return inner


def detector_input(
    image: MammoImage | np.ndarray, geometry: BreastGeometry | None = None, view: str | None = None
) -> tuple[np.ndarray, np.ndarray, int, BreastGeometry]:
    """Input channels of the learned detector on a ``DETECTOR_MM`` (2 mm) grid.

    Channels: the image z-scored over the breast, a calcification channel (top-hat dots at
    0.5 mm, robust z, max-pooled to the grid) and the breast mask.

    Returns
    -------
    (x, inner, f, geometry)
        ``x`` float32 (3, h, w); ``inner`` the candidate region (h, w); ``f`` the block factor
        from full resolution; the view's :class:`BreastGeometry`.
    """
    px, sp = as_image(image)
    geo = geometry if geometry is not None else breast_geometry(image, view)
    # One pass over the full image: the 0.5 mm grid, and the detector grid from it.
    fh = max(1, int(round(0.5 / sp)))
    hs = block_mean(px, fh)
    ratio = max(1, int(round(DETECTOR_MM / (sp * fh))))
    f = fh * ratio
    wsp = sp * f
    small = block_mean(hs, ratio)
    h, w = small.shape
    mask = _inner_mask(geo, (h, w), f, wsp, erode_mm=0.0, pectoral=False)
    vals = small[mask] if mask.any() else small.ravel()
    z = (small - float(vals.mean())) / (float(vals.std()) + 1e-6)
    dots = hs - ndi.gaussian_filter(hs, 1.2 / (sp * fh))
    d = dots[: h * ratio, : w * ratio]
    d = d.reshape(d.shape[0] // ratio, ratio, d.shape[1] // ratio, ratio).max(axis=(1, 3))
    d = np.pad(d, ((0, h - d.shape[0]), (0, w - d.shape[1])))
    dv = d[mask] if mask.any() else d.ravel()
    med = float(np.median(dv))
    mad = float(np.median(np.abs(dv - med))) * 1.4826 + 1e-6
    dz = np.clip((d - med) / mad, 0, 12) / 4.0
    x = np.stack([z * mask, dz * mask, mask.astype(np.float32)]).astype(np.float32)
    inner = _inner_mask(geo, (h, w), f, wsp)
    return x, inner, f, geo


def _learned_candidates(image, model, max_candidates, min_score, view, geometry):
    import torch

    x, inner, f, _ = detector_input(image, geometry, view)
    with model.inference():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            logit = model.detector(torch.from_numpy(x)[None].to(model.device))[0, 0]
        finally:
            torch.set_num_threads(threads)
        logit = logit.float().cpu().numpy()
    z = np.where(inner, logit, -np.inf)
    size = 5  # one peak per 10 mm window
    peaks = (z == ndi.maximum_filter(z, size=size)) & inner & np.isfinite(z)
    rr, cc = np.nonzero(peaks)
    prob = 1.0 / (1.0 + np.exp(-z[rr, cc]))
    keep = prob >= min_score
    rows = [((r + 0.5) * f - 0.5, (c + 0.5) * f - 0.5, 6.0, float(p), "learned")
            for r, c, p in zip(rr[keep], cc[keep], prob[keep])]
    df = pd.DataFrame(rows, columns=["row", "col", "radius_mm", "score", "kind"])
    return df.sort_values("score", ascending=False).head(max_candidates)


def detect_candidates(
    image: MammoImage | np.ndarray,
    *,
    max_candidates: int = 12,
    radii_mm: tuple[float, ...] = (3.0, 4.5, 6.5, 9.0, 12.0),
    work_mm: float = 1.0,
    min_score: float = 1.0,
    calcifications: bool = True,
    view: str | None = None,
    model: SiameseMatcher | None = None,
    method: DetectorMethod | None = None,
    geometry: BreastGeometry | None = None,
) -> pd.DataFrame:
    """Detect lesion candidates: the model's learned detector, or a Laplacian-of-Gaussian one.

    Parameters
    ----------
    image
        A :class:`MammoImage` (its pixel spacing sets the physical scales) or a 2D array
        (assumed 0.5 mm per pixel).
    max_candidates
        Keep the best ``max_candidates`` by score.
    model
        A :class:`~biomed_toolkit.mammo.modeling.SiameseMatcher` whose heatmap network finds
        the candidates (``method="learned"``); its scores are lesion probabilities.
    method
        ``"learned"`` (needs ``model``; the default when a model is given) or ``"log"`` (the
        multi-scale blob baseline; ``score`` is a robust z-score). For ``"learned"`` the
        ``radii_mm``, ``work_mm`` and ``calcifications`` options do not apply and
        ``min_score`` is a probability (values >= 1 mean "no floor").
    geometry
        Precomputed :func:`~biomed_toolkit.mammo.geometry.breast_geometry` of the view.
    radii_mm
        Blob radii searched (sigma = radius / sqrt(2)).
    work_mm
        Working resolution in mm per pixel.
    min_score
        Drop candidates whose robust z-score is below this.
    calcifications
        Also look for clusters of bright dots (a top-hat channel) at half the working spacing.
    view
        Written into the ``view`` column (defaults to the image's view).

    Returns
    -------
    pandas.DataFrame
        One row per candidate: ``cand_id, view, row, col`` (full-resolution pixels),
        ``radius_px, radius_mm, score`` (robust z-score of the response, comparable across
        images) and ``kind`` (``"blob"`` or ``"calcification"``), best first.

    Examples
    --------
    >>> cands = bt.mammo.detect_candidates(bt.mammo.phantom(0).cc)
    """
    px, sp = _as_image(image)
    if view is None:
        view = image.view if isinstance(image, MammoImage) else None
    check_finite_pixels(px, f"the {view or 'image'} view" if not isinstance(image, MammoImage)
                        else f"view {image.name}")
    _check_options(max_candidates, radii_mm, work_mm, min_score)
    if method is None:
        method = "learned" if model is not None else "log"
    if method not in ("learned", "log"):
        raise InputError(f"method must be 'learned' or 'log', got {method!r}")
    if method == "learned":
        if model is None:
            raise InputError("method='learned' needs a model (bt.mammo.load())")
        floor = min_score if min_score < 1.0 else 0.0
        df = _learned_candidates(image, model, max_candidates, floor, view, geometry)
        return _finish(df, sp, view)
    f = max(1, int(round(work_mm / sp)))
    wsp = sp * f
    small = _block_mean(px, f)
    # Stay clear of the skin line, the image border and the pectoral muscle (strong, meaningless
    # LoG responses); the pectoral edge comes from the image geometry.
    geo = geometry if geometry is not None else breast_geometry(
        image, view if view is not None else "MLO")
    inner = _inner_mask(geo, small.shape, f, wsp, erode_mm=6.0, pectoral_mm=6.0)
    rows = []
    if inner.any():
        stack = []
        for r in radii_mm:
            s = r / np.sqrt(2) / wsp
            stack.append(-(s**2) * ndi.gaussian_laplace(small, s))
        stack = np.stack(stack)
        best = stack.max(axis=0)
        which = stack.argmax(axis=0)
        vals = best[inner]
        med = float(np.median(vals))
        mad = float(np.median(np.abs(vals - med))) * 1.4826 + 1e-9
        z = (best - med) / mad
        z[~inner] = -np.inf
        size = max(3, int(round(2 * min(radii_mm) / wsp)) | 1)
        peaks = (z == ndi.maximum_filter(z, size=size)) & (z >= min_score) & inner
        for r, c in zip(*np.nonzero(peaks)):
            rad_mm = radii_mm[int(which[r, c])]
            rows.append(((r + 0.5) * f - 0.5, (c + 0.5) * f - 0.5, rad_mm, float(z[r, c]), "blob"))
        if calcifications:
            rows += _calc_clusters(px, sp, inner, f, min_score)
    df = pd.DataFrame(rows, columns=["row", "col", "radius_mm", "score", "kind"])
    df = _suppress(df, sp)
    df = df.sort_values("score", ascending=False).head(max_candidates)
    return _finish(df, sp, view)


def _check_options(max_candidates: int, radii_mm: tuple[float, ...], work_mm: float,
                   min_score: float) -> None:
    """Range checks of :func:`detect_candidates`' numeric options, naming the option."""
    if isinstance(max_candidates, bool) or not isinstance(max_candidates, numbers.Integral) or (
            max_candidates < 1):
        raise InputError(f"max_candidates must be an integer >= 1, got {max_candidates!r}")
    if isinstance(radii_mm, str) or not isinstance(radii_mm, list | tuple) or not radii_mm or any(
            isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 < r <= 100
            or not np.isfinite(r) for r in radii_mm):
        raise InputError(f"radii_mm must be a non-empty tuple of radii in (0, 100] mm, got "
                         f"{radii_mm!r}")
    if isinstance(work_mm, bool) or not isinstance(work_mm, numbers.Real) or not (
            0 < work_mm <= 20):
        raise InputError(f"work_mm must be a spacing in (0, 20] mm, got {work_mm!r}")
    if isinstance(min_score, bool) or not isinstance(min_score, numbers.Real) or not np.isfinite(
            min_score):
        raise InputError(f"min_score must be a finite number, got {min_score!r}")


def _finish(df: pd.DataFrame, sp: float, view: str | None) -> pd.DataFrame:
    df = df.reset_index(drop=True)
    df["radius_px"] = df["radius_mm"] / sp
    df["view"] = view
    df["cand_id"] = np.arange(len(df))
    return df[CANDIDATE_COLUMNS]


def _calc_clusters(px, sp, inner_work, f_work, min_score):
    """Clusters of bright dots: top-hat dots counted in a 4 mm neighbourhood."""
    f = max(1, int(round(0.5 / sp)))
    hs = _block_mean(px, f)
    hsp = sp * f
    dots = hs - ndi.gaussian_filter(hs, 1.2 / hsp)
    inner = ndi.zoom(inner_work.astype(np.uint8), (hs.shape[0] / inner_work.shape[0],
                                                   hs.shape[1] / inner_work.shape[1]), order=0)
    inner = np.pad(inner, ((0, max(0, hs.shape[0] - inner.shape[0])),
                           (0, max(0, hs.shape[1] - inner.shape[1]))))[: hs.shape[0], : hs.shape[1]]
    inner = inner.astype(bool)
    if not inner.any():
        return []
    v = dots[inner]
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826 + 1e-9
    bright = ((dots - med) / mad > 4.5) & inner
    dens = ndi.gaussian_filter(bright.astype(np.float32), 3.0 / hsp) * (2 * np.pi * (3.0 / hsp) ** 2)
    size = max(3, int(round(8.0 / hsp)) | 1)
    peaks = (dens == ndi.maximum_filter(dens, size=size)) & (dens >= 3.0)
    out = []
    for r, c in zip(*np.nonzero(peaks)):
        score = 1.0 + float(dens[r, c])  # dots in the cluster, on the blob z-score scale
        if score >= min_score:
            out.append(((r + 0.5) * f - 0.5, (c + 0.5) * f - 0.5, 5.0, score, "calcification"))
    return out


def _suppress(df: pd.DataFrame, sp: float) -> pd.DataFrame:
    """Greedy non-maximum suppression: drop a candidate inside a better one's radius."""
    if len(df) < 2:
        return df
    df = df.sort_values("score", ascending=False).reset_index(drop=True)
    keep = []
    pts = df[["row", "col"]].to_numpy() * sp
    rad = df["radius_mm"].to_numpy()
    for i in range(len(df)):
        ok = True
        for j in keep:
            if np.hypot(*(pts[i] - pts[j])) < max(rad[j], 4.0):
                ok = False
                break
        if ok:
            keep.append(i)
    return df.iloc[keep]


def extract_patches(
    image: MammoImage | np.ndarray,
    candidates: pd.DataFrame | np.ndarray,
    *,
    size_mm: float = 32.0,
    out_size: int = 32,
    normalize: str = "zscore",
) -> np.ndarray:
    """Square patches centred on candidates, resampled to ``out_size`` pixels.

    Parameters
    ----------
    image
        The view.
    candidates
        A candidate DataFrame (``row``, ``col``) or an (N, 2) array of (row, col).
    size_mm
        Physical side of each patch; the image is block-averaged first (no aliasing).
    out_size
        Patch side in pixels.
    normalize
        ``"zscore"`` (per patch), ``"none"`` (display intensities in [0, 1]) or ``"both"``
        (two channels: z-score and centred intensity).

    Returns
    -------
    numpy.ndarray
        float32 of shape (N, out_size, out_size), or (N, 2, out_size, out_size) for ``"both"``.

    Examples
    --------
    >>> case = bt.mammo.phantom(0)
    >>> p = bt.mammo.extract_patches(case.cc, bt.mammo.detect_candidates(case.cc))
    """
    if normalize not in ("zscore", "none", "both"):
        raise InputError(f"normalize must be 'zscore', 'none' or 'both', got {normalize!r}")
    px, sp = _as_image(image)
    pts = (
        candidates[["row", "col"]].to_numpy(dtype=np.float64)
        if isinstance(candidates, pd.DataFrame)
        else np.asarray(candidates, dtype=np.float64).reshape(-1, 2)
    )
    step_mm = size_mm / out_size
    f = max(1, int(np.floor(step_mm / sp)))
    small = _block_mean(px, f)
    ssp = sp * f
    offs = (np.arange(out_size) - (out_size - 1) / 2.0) * step_mm / ssp
    n = len(pts)
    if n == 0:
        shape = (0, 2, out_size, out_size) if normalize == "both" else (0, out_size, out_size)
        return np.zeros(shape, np.float32)
    # Full-res (r, c) -> block-mean grid coordinates.
    centres = (pts + 0.5) / f - 0.5
    rr = centres[:, 0, None, None] + offs[None, :, None]
    cc = centres[:, 1, None, None] + offs[None, None, :]
    rr, cc = np.broadcast_arrays(rr, cc)
    raw = ndi.map_coordinates(small, [rr.ravel(), cc.ravel()], order=1, mode="constant", cval=0.0)
    raw = raw.reshape(n, out_size, out_size).astype(np.float32)
    if normalize == "none":
        return raw
    mu = raw.mean(axis=(1, 2), keepdims=True)
    sd = raw.std(axis=(1, 2), keepdims=True) + 1e-3
    z = (raw - mu) / sd
    if normalize == "zscore":
        return z.astype(np.float32)
    return np.stack([z, (raw - 0.5) * 4.0], axis=1).astype(np.float32)


def label_candidates(
    case: Case, view: str, candidates: pd.DataFrame, *, min_radius_mm: float = 5.0
) -> np.ndarray:
    """Ground-truth lesion id hit by each candidate (-1 for a false positive).

    A candidate hits a lesion when it lies within ``max(lesion radius, min_radius_mm)`` of the
    lesion's projected centre in that view; the nearest lesion wins.
    """
    if case.lesions is None:
        raise InputError("this case has no ground truth (case.lesions is None); use a phantom")
    v = view.lower()
    les = case.lesions[case.lesions[f"in_{v}"]]
    out = np.full(len(candidates), -1, dtype=np.int64)
    if len(les) == 0 or len(candidates) == 0:
        return out
    sp = case.view(v).mm_per_pixel or _DEFAULT_MM
    lp = les[[f"{v}_row", f"{v}_col"]].to_numpy()
    rad = np.maximum(les[f"{v}_radius_px"].to_numpy(), min_radius_mm / sp)
    cp = candidates[["row", "col"]].to_numpy()
    d = np.hypot(cp[:, None, 0] - lp[None, :, 0], cp[:, None, 1] - lp[None, :, 1])
    ok = d <= rad[None, :]
    d = np.where(ok, d, np.inf)
    j = d.argmin(axis=1)
    hit = np.isfinite(d[np.arange(len(cp)), j])
    out[hit] = les["lesion_id"].to_numpy()[j[hit]]
    return out
