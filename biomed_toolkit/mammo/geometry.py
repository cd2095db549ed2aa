"""Breast geometry read from the pixels: breast mask, skin line, chest-wall line, nipple.

In a CC view (chest wall on the left after :func:`biomed_toolkit.mammo.read`) the chest-wall
line is the left image edge. In an MLO view it is the anterior edge of the pectoral muscle,
found as the strongest bright-to-dark edge running from the top edge down towards the chest-wall
edge (a robust line fit over the rows). The nipple is the breast point farthest from that line,
and a point's depth is its distance perpendicular to the line, so the nipple-distance prior is
measured along the posterior nipple line as a reader measures it. DICOM tags are only hints:
the view name decides whether a pectoral line is looked for, and an MLO whose pectoral edge
cannot be found falls back to the image edge (``pectoral_found=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.io import Case, MammoImage

__all__ = ["BreastGeometry", "breast_geometry", "case_geometry", "breast_mask", "block_mean",
           "DEFAULT_MM", "as_image", "CC_VIEWS"]

DEFAULT_MM = 0.5  # assumed spacing when a file has none
CC_VIEWS = ("CC", "XCCL", "XCCM", "FB")
_WORK_MM = 1.0


def as_image(image: MammoImage | np.ndarray) -> tuple[np.ndarray, float]:
    """Pixels and mm per pixel of a :class:`MammoImage` or a 2D array (0.5 mm assumed)."""
    if isinstance(image, MammoImage):
        return image.pixels, image.mm_per_pixel or DEFAULT_MM
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(f"expected a 2D image or a MammoImage, got an array of shape {arr.shape}")
    return arr, DEFAULT_MM


def block_mean(img: np.ndarray, f: int) -> np.ndarray:
    """Average ``f`` x ``f`` blocks (the remainder rows / columns are dropped)."""
    if f <= 1:
        return img.astype(np.float32, copy=False)
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    return img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3), dtype=np.float32)


def breast_mask(pixels: np.ndarray) -> np.ndarray:
    """Foreground (breast) mask by Otsu's threshold, largest component, holes filled."""
    from skimage.filters import threshold_otsu

    sm = ndi.gaussian_filter(pixels.astype(np.float32), 1.0)
    try:
        thr = threshold_otsu(sm)
    except ValueError:
        return np.ones_like(pixels, dtype=bool)
    m = sm > thr * 0.6
    lab, n = ndi.label(m)
    if n > 1:
        sizes = ndi.sum(m, lab, index=np.arange(1, n + 1))
        m = lab == (1 + int(np.argmax(sizes)))
    return ndi.binary_fill_holes(m)


@dataclass(repr=False)
class BreastGeometry:
    """Geometry of one view, in full-resolution pixel coordinates (row, col).

    Attributes
    ----------
    view
        ``"CC"`` or ``"MLO"`` (what the geometry was computed as).
    mm_per_pixel
        Spacing used for the millimetre quantities.
    mask
        Breast mask at the working resolution (``factor`` full-resolution pixels per cell).
    factor
        Block size of the working resolution.
    chest_line
        Two points ``[[row, col], [row, col]]`` on the chest-wall line (the pectoral edge in
        MLO, the image edge in CC).
    pectoral_found
        MLO only: whether a pectoral edge was found (else the image edge is used).
    pectoral_angle
        Tilt of the chest-wall line from the vertical in degrees (0 for CC).
    nipple
        (row, col) of the nipple: the breast point farthest from the chest-wall line.
    skin
        (N, 2) full-resolution points on the skin line (breast boundary off the image edges).
    """

    view: str
    mm_per_pixel: float
    mask: np.ndarray
    factor: int
    chest_line: np.ndarray
    pectoral_found: bool
    pectoral_angle: float
    nipple: tuple[float, float]
    skin: np.ndarray

    def __repr__(self) -> str:
        return (f"BreastGeometry({self.view}, chest-wall tilt {self.pectoral_angle:.1f} deg, "
                f"nipple at ({self.nipple[0]:.0f}, {self.nipple[1]:.0f}), nipple depth "
                f"{self.nipple_depth_mm:.0f} mm)")

    def _normal(self) -> tuple[np.ndarray, np.ndarray]:
        p0, p1 = np.asarray(self.chest_line, float)
        d = p1 - p0
        d = d / max(np.hypot(*d), 1e-9)
        n = np.array([-d[1], d[0]])  # perpendicular, pointing towards the nipple
        if n[1] < 0:
            n = -n
        return p0, n

    def depth_mm(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Distance (mm) perpendicular to the chest-wall line (positive inside the breast)."""
        p0, n = self._normal()
        r = np.asarray(rows, float) - p0[0]
        c = np.asarray(cols, float) - p0[1]
        return (r * n[0] + c * n[1]) * self.mm_per_pixel

    def height_mm(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Signed distance (mm) from the posterior nipple line, along the chest-wall line."""
        p0, n = self._normal()
        t = np.array([n[1], -n[0]])
        r = np.asarray(rows, float) - self.nipple[0]
        c = np.asarray(cols, float) - self.nipple[1]
        return (r * t[0] + c * t[1]) * self.mm_per_pixel

    @property
    def nipple_depth_mm(self) -> float:
        """Depth of the nipple: the length of the posterior nipple line."""
        return float(self.depth_mm(np.array([self.nipple[0]]), np.array([self.nipple[1]]))[0])

    def skin_distance_mm(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Distance (mm) from each point to the nearest background pixel (0 outside)."""
        dist = ndi.distance_transform_edt(np.pad(self.mask, ((0, 0), (0, 1))))[:, :-1]
        f = self.factor
        r = np.clip(((np.asarray(rows, float) + 0.5) / f - 0.5).round().astype(int), 0,
                    self.mask.shape[0] - 1)
        c = np.clip(((np.asarray(cols, float) + 0.5) / f - 0.5).round().astype(int), 0,
                    self.mask.shape[1] - 1)
        return dist[r, c] * f * self.mm_per_pixel


def _fit_line(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, tol: float,
              slope_range: tuple[float, float]) -> tuple[float, float, np.ndarray] | None:
    """RANSAC fit of ``col = c0 + k * row``; returns (c0, k, inlier mask) or None."""
    n = len(rows)
    if n < 6:
        return None
    rng = np.random.default_rng(0)
    best, best_score = None, 0.0
    for _ in range(200):
        i, j = rng.choice(n, 2, replace=False)
        if rows[i] == rows[j]:
            continue
        k = (cols[j] - cols[i]) / (rows[j] - rows[i])
        if not slope_range[0] <= k <= slope_range[1]:
            continue
        c0 = cols[i] - k * rows[i]
        inl = np.abs(cols - (c0 + k * rows)) < tol
        score = float(weights[inl].sum())
        if score > best_score:
            best, best_score = inl, score
    if best is None or best.sum() < 6:
        return None
    A = np.stack([np.ones(best.sum()), rows[best]], axis=1)
    c0, k = np.linalg.lstsq(A * weights[best, None], cols[best] * weights[best], rcond=None)[0]
    return float(c0), float(k), best


def _pectoral_line(small: np.ndarray, mask: np.ndarray, wsp: float):
    """Pectoral edge of an MLO at the working resolution: (c0, k) of ``col = c0 + k row``."""
    sm = ndi.gaussian_filter(small, (3.0 / wsp, 1.0 / wsp))
    # Step detector: mean over 8 mm left of a column minus 8 mm right of it.
    k = max(2, int(round(8.0 / wsp)))
    box = ndi.uniform_filter1d(sm, k, axis=1, mode="nearest")
    left = np.roll(box, k // 2 + 1, axis=1)
    right = np.roll(box, -(k // 2), axis=1)
    step = left - right
    inside = sm[mask]
    if inside.size == 0:
        return None
    bright = np.percentile(inside, 50)
    off = k
    rows, cols, wts = [], [], []
    top = np.where(mask.any(axis=1))[0]
    if len(top) == 0:
        return None
    widest = int(mask.sum(axis=1).max())
    for r in range(int(top[0]), int(top[0] + 0.75 * (top[-1] - top[0]))):
        inrow = np.where(mask[r])[0]
        if len(inrow) == 0 or inrow[0] > 2:
            continue  # the pectoral touches the chest-wall edge
        if len(inrow) < 0.6 * widest:  # above the breast: the pectoral edge is the mask edge
            lim = min(mask.shape[1] - 1, int(inrow[-1]) + 2)
        else:  # stay clear of the skin line
            lim = int(inrow[0] + 0.7 * (inrow[-1] - inrow[0]))
        if lim <= off + 1:
            continue
        g = step[r, off:lim].copy()
        g[left[r, off:lim] < bright] = 0
        c = int(np.argmax(g))
        if g[c] <= 0:
            continue
        rows.append(r)
        cols.append(c + off)
        wts.append(g[c])
    if len(rows) < 6:
        return None
    rows_a, cols_a, w_a = np.array(rows, float), np.array(cols, float), np.array(wts)
    fit = _fit_line(rows_a, cols_a, w_a / w_a.max(), tol=3.0 / wsp,
                    slope_range=(-np.tan(np.deg2rad(45)), -np.tan(np.deg2rad(3))))
    if fit is None:
        return None
    c0, k, inl = fit
    if inl.sum() < 0.2 * len(rows) or c0 < 5.0 / wsp:
        return None
    return c0, k


def breast_geometry(image: MammoImage | np.ndarray, view: str | None = None) -> BreastGeometry:
    """Breast mask, skin line, chest-wall line (pectoral edge in MLO) and nipple of one view.

    Parameters
    ----------
    image
        A view with the chest wall on the left (as :func:`read` returns it) or a 2D array.
    view
        ``"CC"`` / ``"MLO"``...; defaults to the image's view. Any non-CC view is searched for a
        pectoral edge.

    Returns
    -------
    BreastGeometry

    Examples
    --------
    >>> g = bt.mammo.breast_geometry(bt.mammo.phantom(0).mlo)
    >>> round(g.pectoral_angle) > 0
    True
    """
    px, sp = as_image(image)
    if view is None:
        view = image.view if isinstance(image, MammoImage) else "CC"
    view = str(view or "CC").upper()
    f = max(1, int(round(_WORK_MM / sp)))
    wsp = sp * f
    small = block_mean(px, f)
    mask = breast_mask(small)
    h = small.shape[0]
    line_small = np.array([[0.0, 0.0], [h - 1.0, 0.0]])
    found, angle = False, 0.0
    if view not in CC_VIEWS:
        fit = _pectoral_line(small, mask, wsp)
        if fit is not None:
            c0, k = fit
            found = True
            angle = float(np.degrees(np.arctan(-k)))
            line_small = np.array([[0.0, c0], [-c0 / k, 0.0]])
    to_full = lambda a: (np.asarray(a, float) + 0.5) * f - 0.5  # noqa: E731
    chest = to_full(line_small)
    # Nipple: the breast point farthest from the chest-wall line (mean of the top 1 mm).
    rr, cc = np.nonzero(mask)
    geo = BreastGeometry(view, sp, mask, f, chest, found, angle, (0.0, 0.0), np.zeros((0, 2)))
    if len(rr):
        d = geo.depth_mm(to_full(rr), to_full(cc))
        far = d >= d.max() - 1.0
        geo.nipple = (float(to_full(rr[far]).mean()), float(to_full(cc[far]).mean()))
        edge = mask & ~ndi.binary_erosion(mask, border_value=1)
        er, ec = np.nonzero(edge)
        geo.skin = np.stack([to_full(er), to_full(ec)], axis=1)
    else:
        geo.nipple = (px.shape[0] / 2.0, px.shape[1] - 1.0)
    return geo


def case_geometry(case: Case) -> dict[str, BreastGeometry]:
    """:func:`breast_geometry` of both views of a case: ``{"cc": ..., "mlo": ...}``."""
    return {"cc": breast_geometry(case.cc, "CC"), "mlo": breast_geometry(case.mlo, "MLO")}
