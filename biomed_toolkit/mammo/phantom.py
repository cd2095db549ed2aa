"""A dual-view synthetic breast: one compressed 3D model projected into CC and MLO.

Geometry (all in mm). The uncompressed breast is a half ellipsoid: ``x`` runs from the chest
wall (0) to the nipple (``depth``), ``y`` is medio-lateral, ``z`` cranio-caudal. A view with
angle ``theta`` (0 for CC, 30-60 degrees for MLO) compresses along ``n = (0, sin, cos)`` and
spreads the breast in the plane spanned by ``x`` (depth) and ``v = (0, cos, -sin)``. In the CC
image depth runs along the columns (chest wall at column 0). In the MLO image the plane is
turned by the pectoral tilt ``psi`` (about 0.4 x theta): the chest wall is the anterior edge of
the pectoral muscle, a straight line running from the top edge down to the left edge, and depth
is measured perpendicular to it, as a reader draws the posterior nipple line.

Glandular tissue is a smoothed 3D random field whose ray sums give the parenchymal pattern;
masses are 3D ellipsoids (projected analytically) with circumscribed, ill-defined or spiculated
margins, and calcification clusters are groups of tiny spheres, all at known 3D positions, so
every lesion has an exact position in both views. Look-alikes a reader meets are added too:
dense tissue islands and vessels (3D, seen in both views), lymph nodes in the axillary tail
(MLO only) and overlapping glandular tissue (a summation shadow in one view only). Some lesions
are hidden in one view. A per-view elastic jitter (sd ``jitter_mm``) and per-view compression
make the two views geometrically consistent only approximately, as in real exams.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.special import expit

from biomed_toolkit.core.errors import InputError
from biomed_toolkit.mammo.io import MG_PRESENTATION, Case, MammoImage

__all__ = ["phantom", "write_dicom", "DENSITY_LEVELS", "MARGINS", "MAX_LESIONS", "Orientation"]

#: BI-RADS-like density letters -> glandular volume fraction.
DENSITY_LEVELS = {"a": 0.08, "b": 0.2, "c": 0.38, "d": 0.6}
#: Mass margins the phantom draws.
MARGINS = ("circumscribed", "ill-defined", "spiculated")
#: How :func:`write_dicom` writes PatientOrientation.
Orientation = Literal["standard", "missing", "mislabelled"]

_FOV_ROWS_MM = 260.0  # physical height of the detector field
#: Most lesions :func:`phantom` places (each at least 25 mm from the others inside the breast;
#: 12 always fit, about 20-28 at most depending on the seed).
MAX_LESIONS = 12
_MAX_SIDE = 8192  # pixels per side: larger views cost gigabytes and no detector is that fine


def _number(name: str, value: object, lo: float, hi: float, *, integer: bool = False) -> float:
    """``value`` as a finite number in [lo, hi], or an InputError naming the option."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int | np.integer) if integer else isinstance(
        value, int | float | np.integer | np.floating)
    if isinstance(value, bool) or not ok_type:
        raise InputError(f"{name} must be {kind} in [{lo:g}, {hi:g}], got {value!r}")
    v = float(value)  # type: ignore[arg-type]
    if not (np.isfinite(v) and lo <= v <= hi):
        raise InputError(f"{name} must be {kind} in [{lo:g}, {hi:g}], got {value!r}")
    return v


def _pair(name: str, value: object, lo: float, hi: float) -> tuple[float, float]:
    """A (low, high) range inside [lo, hi] with low <= high."""
    if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 2:  # type: ignore[arg-type]
        raise InputError(f"{name} must be a (low, high) pair in [{lo:g}, {hi:g}], got {value!r}")
    a = _number(f"{name}[0]", value[0], lo, hi)  # type: ignore[index]
    b = _number(f"{name}[1]", value[1], lo, hi)  # type: ignore[index]
    if a > b:
        raise InputError(f"{name} must be (low, high) with low <= high, got {value!r}")
    return a, b


def _density_fraction(density: float | str) -> float:
    if isinstance(density, str):
        key = density.lower().strip()
        if key not in DENSITY_LEVELS:
            raise InputError(f"density must be one of {sorted(DENSITY_LEVELS)} or a fraction in (0, 1)")
        return DENSITY_LEVELS[key]
    d = float(density)
    if not 0.0 < d < 1.0:
        raise InputError(f"density must be a glandular fraction in (0, 1), got {density}")
    return d


class _View:
    """The map from 3D breast coordinates (mm) to one view's image (pixels).

    ``(x, v)`` (uncompressed, mm) -> plane ``(a, b) = (sx * x, sv * v + row0)`` (mm) -> image
    ``(col, row) * sp = pivot + R(psi) (a, b - b_pivot)``; ``psi = 0`` for CC.
    """

    def __init__(self, theta_deg: float, compression: float, spacing: float,
                 row_offset_mm: float, rng: np.random.Generator, *, psi_deg: float = 0.0,
                 pivot_mm: float = 0.0) -> None:
        th = np.deg2rad(theta_deg)
        self.theta = float(theta_deg)
        self.n = np.array([0.0, np.sin(th), np.cos(th)])
        self.v = np.array([0.0, np.cos(th), -np.sin(th)])
        self.ex = np.array([1.0, 0.0, 0.0])
        self.c = float(compression)
        self.sx = self.c**-0.3  # in-plane spreading under compression
        self.sv = self.c**-0.4
        self.sp = float(spacing)
        self.row0 = float(row_offset_mm)
        self.psi = float(psi_deg)
        self.cos, self.sin = np.cos(np.deg2rad(psi_deg)), np.sin(np.deg2rad(psi_deg))
        self.bp = float(pivot_mm)
        # Smooth per-view displacement field (elastic tissue shift), as random sinusoids.
        self.k = rng.normal(0, 1 / 60.0, size=(3, 3))
        self.phase = rng.uniform(0, 2 * np.pi, size=3)

    def basis(self) -> np.ndarray:
        return np.stack([self.ex, self.v, self.n], axis=1)  # columns x, v, n

    def plane_to_pixels(self, a, b):
        """Plane (a, b) in mm -> image (row, col) in pixels."""
        a, b = np.asarray(a, float), np.asarray(b, float)
        col = self.cos * a - self.sin * (b - self.bp)
        row = self.bp + self.sin * a + self.cos * (b - self.bp)
        return row / self.sp, col / self.sp

    def pixels_to_plane(self, rows, cols):
        """Image (row, col) in pixels (broadcast) -> plane (a, b) in mm."""
        c = np.asarray(cols, float) * self.sp
        r = np.asarray(rows, float) * self.sp - self.bp
        return self.cos * c + self.sin * r, -self.sin * c + self.cos * r + self.bp

    def rotate_offsets(self, drow, dcol):
        """Image offsets (mm) -> plane offsets (da, db) in mm."""
        return self.cos * dcol + self.sin * drow, -self.sin * dcol + self.cos * drow

    def to_pixels(self, p, jitter_mm: float = 0.0):
        p = np.atleast_2d(p)
        x = p @ self.ex
        v = p @ self.v
        if jitter_mm:
            d = jitter_mm * np.sin(p @ self.k.T * 2 * np.pi + self.phase)
            x = x + d[:, 0]
            v = v + d[:, 1]
        return self.plane_to_pixels(self.sx * x, self.sv * v + self.row0)

    def chest_line(self, shape: tuple[int, int]) -> np.ndarray:
        """Two image points (row, col) of the chest-wall line (depth 0): top and bottom."""
        H = shape[0]
        if self.psi == 0:
            return np.array([[0.0, 0.0], [H - 1.0, 0.0]])
        # a = 0: col = -sin (b - bp), row = bp + cos (b - bp); from row 0 to col 0.
        t_top = -self.bp / self.cos
        top = (0.0, -self.sin * t_top / self.sp)
        return np.array([top, (self.bp / self.sp, 0.0)])


def _gland_field(rng, depth, ry, rz, density):
    """3D glandular fraction on a coarse grid over [0, depth] x [-ry, ry] x [-rz, rz]."""
    shape = (40, 56, 56)
    g = ndi.gaussian_filter(rng.standard_normal(shape), sigma=(2.0, 2.5, 2.5), mode="reflect")
    g += 0.5 * ndi.gaussian_filter(rng.standard_normal(shape), sigma=1.0, mode="reflect")
    g = (g - g.mean()) / (g.std() + 1e-9)
    xs = np.linspace(0, 1, shape[0])[:, None, None]
    ys = np.linspace(-1, 1, shape[1])[None, :, None]
    zs = np.linspace(-1, 1, shape[2])[None, None, :]
    r2 = xs**2 + ys**2 + zs**2
    inside = r2 <= 1.0
    # Glands sit behind the nipple and thin out towards the skin and the chest wall.
    bias = -1.4 * r2 - 0.6 * (xs < 0.15) * (0.15 - xs) / 0.15
    field = g + bias
    thr = np.quantile(field[inside], 1.0 - density)
    frac = 1.0 / (1.0 + np.exp(-(field - thr) / 0.25))
    frac[~inside] = 0.0
    return frac.astype(np.float32), shape


def _ray_gland_fraction(frac, shape, view, depth, ry, rz, X, V, n_steps=40):
    """Mean glandular fraction along each ray through uncompressed in-plane points (X, V)."""
    rmax = max(ry, rz)
    t = np.linspace(-rmax, rmax, n_steps)
    P = (
        X[..., None, None] * view.ex
        + V[..., None, None] * view.v
        + t[None, None, :, None] * view.n
    )  # (h, w, n_steps, 3)
    px, py, pz = P[..., 0], P[..., 1], P[..., 2]
    inside = ((px / depth) ** 2 + (py / ry) ** 2 + (pz / rz) ** 2 <= 1.0) & (px >= 0)
    ix = px / depth * (shape[0] - 1)
    iy = (py / ry + 1) / 2 * (shape[1] - 1)
    iz = (pz / rz + 1) / 2 * (shape[2] - 1)
    vals = ndi.map_coordinates(frac, [ix.ravel(), iy.ravel(), iz.ravel()], order=1, mode="nearest")
    vals = vals.reshape(inside.shape) * inside
    n_in = inside.sum(-1)
    return np.where(n_in > 0, vals.sum(-1) / np.maximum(n_in, 1), 0.0)


def _smooth_noise(rng, shape, sigma):
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=sigma)
    return n / (n.std() + 1e-9)


def _stamp_blob(att, r_px, c_px, sd_px, amp, *, hilum=0.0):
    """Add a soft 2D blob (sd in pixels) at (r, c); ``hilum`` darkens an off-centre notch."""
    H, W = att.shape
    rad = int(np.ceil(3 * sd_px)) + 1
    r0, r1 = max(0, int(r_px) - rad), min(H, int(r_px) + rad + 1)
    c0, c1 = max(0, int(c_px) - rad), min(W, int(c_px) + rad + 1)
    if r0 >= r1 or c0 >= c1:
        return
    yy = np.arange(r0, r1)[:, None] - r_px
    xx = np.arange(c0, c1)[None, :] - c_px
    blob = np.exp(-(xx**2 + yy**2) / (2 * sd_px**2))
    if hilum:
        blob = blob * (1 - hilum * np.exp(-((xx - 0.6 * sd_px) ** 2 + yy**2) / (2 * (0.4 * sd_px) ** 2)))
    att[r0:r1, c0:c1] += amp * blob


def _stamp_line(att, p0, p1, width_px, amp):
    """Add a soft line segment from p0 to p1 (row, col) of Gaussian cross-section."""
    H, W = att.shape
    pad = int(np.ceil(3 * width_px)) + 1
    r0 = max(0, int(min(p0[0], p1[0])) - pad)
    r1 = min(H, int(max(p0[0], p1[0])) + pad + 1)
    c0 = max(0, int(min(p0[1], p1[1])) - pad)
    c1 = min(W, int(max(p0[1], p1[1])) + pad + 1)
    if r0 >= r1 or c0 >= c1:
        return
    yy = np.arange(r0, r1)[:, None].astype(float)
    xx = np.arange(c0, c1)[None, :].astype(float)
    d = np.array(p1, float) - np.array(p0, float)
    L2 = max(float(d @ d), 1e-9)
    t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / L2, 0, 1)
    dist2 = (yy - p0[0] - t * d[0]) ** 2 + (xx - p0[1] - t * d[1]) ** 2
    att[r0:r1, c0:c1] += amp * np.exp(-dist2 / (2 * width_px**2))


def _render_mass(att, view, les, r_px, c_px, contrast, rng):
    """Add one ellipsoidal mass (analytic chord length), its margin and spicules; its radius."""
    H, W = att.shape
    sp = view.sp
    B = view.basis()
    M = np.diag([view.sx, view.sv, view.c]) @ B.T  # 3D (mm) -> (x', v', t') (mm)
    Minv = np.linalg.inv(M)
    A2 = Minv.T @ les["A"] @ Minv
    a33 = A2[2, 2]
    S = A2[:2, :2] - np.outer(A2[:2, 2], A2[2, :2]) / a33  # in (x', v') mm
    ext = 1.0 / np.sqrt(np.linalg.eigvalsh(S).min())  # max in-plane semi-axis, mm
    rad = int(np.ceil(1.6 * ext / sp + 3 * les["blur_mm"] / sp)) + 2
    r0, r1 = max(0, int(r_px) - rad), min(H, int(r_px) + rad + 1)
    c0, c1 = max(0, int(c_px) - rad), min(W, int(c_px) + rad + 1)
    if r0 < r1 and c0 < c1:
        drow = (np.arange(r0, r1)[:, None] - r_px) * sp
        dcol = (np.arange(c0, c1)[None, :] - c_px) * sp
        dx, dy = view.rotate_offsets(drow, dcol)
        q = S[0, 0] * dx**2 + 2 * S[0, 1] * dx * dy + S[1, 1] * dy**2
        phi = np.arctan2(dy, dx)
        wob = 1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in les["harmonics"])
        q = q * wob
        chord = 2.0 * np.sqrt(np.clip(1.0 - q, 0, None) / a33)
        chord = ndi.gaussian_filter(chord, sigma=les["blur_mm"] / sp)  # soft / ill-defined margin
        att[r0:r1, c0:c1] += contrast * les["dmu"] * chord
    if les["margin"] == "spiculated":
        peak = contrast * les["dmu"] * 2.0 / np.sqrt(a33)
        for ang, length in les["spicules"]:
            ang = ang + rng.normal(0, 0.15)
            u = np.array([np.sin(ang), np.cos(ang)])
            p0 = np.array([r_px, c_px]) + 0.7 * ext / sp * u
            p1 = np.array([r_px, c_px]) + (ext + length) / sp * u
            _stamp_line(att, p0, p1, max(0.6, 0.45 / sp), 0.25 * peak)
    return ext / sp


def _render_view(rng, view, shape, geo, frac, fshape, lesions3d, distractors, *, noise,
                 contrast, is_mlo, jitter_mm, name):
    H, W = shape
    sp = view.sp
    depth, ry, rz = geo["depth"], geo["ry"], geo["rz"]
    rows = np.arange(H, dtype=np.float32)
    cols = np.arange(W, dtype=np.float32)
    A, Bm = view.pixels_to_plane(rows[:, None], cols[None, :])  # plane mm, (H, W)
    X = A / view.sx
    V = (Bm - view.row0) / view.sv
    # Shadow of the ellipsoid along n: normalised radius rho (1 at the skin).
    rv = np.sqrt((ry * view.v[1]) ** 2 + (rz * view.v[2]) ** 2)
    rho2 = np.where(X >= 0, (X / depth) ** 2 + (V / rv) ** 2, 2.0)
    # Nipple: a small bump at the tip.
    nip_r = 5.0
    dn2 = ((A - depth * view.sx) ** 2 + (Bm - view.row0) ** 2) / nip_r**2
    # Compressed thickness: flat under the paddle, rolling off near the skin.
    t0 = geo["thickness"]
    rho2c = np.clip(rho2, 0, 1)
    thick = np.where(rho2 < 1, t0 * np.sqrt(np.clip(1 - rho2c**2, 0, 1)), 0.0)
    thick = np.maximum(thick, np.where(dn2 < 1, 0.35 * t0 * np.sqrt(np.clip(1 - dn2, 0, 1)), 0))
    mask = thick > 0
    # Glandular fraction: coarse ray sums, upsampled, plus fine texture.
    step = max(1, int(round(4.0 / sp)))
    g_coarse = _ray_gland_fraction(frac, fshape, view, depth, ry, rz, X[::step, ::step],
                                   V[::step, ::step])
    g = ndi.zoom(g_coarse, (H / g_coarse.shape[0], W / g_coarse.shape[1]), order=1)[:H, :W]
    g = np.pad(g, ((0, H - g.shape[0]), (0, W - g.shape[1])), mode="edge")
    fine = _smooth_noise(rng, shape, sigma=max(0.6, 0.8 / sp))
    mid = _smooth_noise(rng, shape, sigma=max(1.0, 2.5 / sp))
    g = np.clip(g * (1 + 0.35 * mid + 0.15 * fine), 0, 1)
    mu_fat, mu_gland = 0.45, 1.0
    att = thick * (mu_fat + (mu_gland - mu_fat) * g)
    # Skin line: a brighter band just inside the boundary.
    m = mask.astype(np.float32)
    band = np.clip(m - ndi.gaussian_filter(m, sigma=max(1.0, 1.2 / sp)), 0, None)
    att += 2.2 * t0 * band * 0.5
    # Pectoral muscle (MLO only): everything behind the chest-wall line above the pivot.
    if is_mlo:
        w_edge = max(1.0, 1.5 / sp) * sp
        soft = expit(-A / w_edge) * expit((view.bp - Bm) / (4 * w_edge))
        soft = soft * (Bm > 0)
        pect = soft * (0.9 + 0.1 * mid)
        att = att * (1 - pect) + pect * 1.05 * t0 * (1 + 0.06 * fine)
        mask = mask | (soft > 0.5)
    # Look-alikes.
    for d in distractors:
        if d["kind"] == "island":
            r_px, c_px = view.to_pixels(d["center"], jitter_mm=jitter_mm)
            _stamp_blob(att, float(r_px[0]), float(c_px[0]), d["radius_mm"] / sp,
                        contrast * d["amp"] * t0)
        elif d["kind"] == "vessel":
            rr, cc_ = view.to_pixels(d["path"], jitter_mm=jitter_mm)
            for k in range(len(rr) - 1):
                _stamp_line(att, (rr[k], cc_[k]), (rr[k + 1], cc_[k + 1]),
                            d["width_mm"] / sp, d["amp"] * t0)
        elif d["kind"] == "lymph node" and is_mlo:
            r_px, c_px = view.plane_to_pixels(d["a_mm"], d["b_mm"])
            _stamp_blob(att, float(r_px), float(c_px), d["radius_mm"] / sp,
                        contrast * d["amp"] * t0, hilum=0.6)
        elif d["kind"] == "overlap" and d["view"] == name:
            r_px, c_px = view.to_pixels(d["center"], jitter_mm=0.0)
            for dr, dc, sd in d["parts"]:
                _stamp_blob(att, float(r_px[0]) + dr / sp, float(c_px[0]) + dc / sp, sd / sp,
                            contrast * d["amp"] * t0)
    # Lesions.
    records = []
    for les in lesions3d:
        r_px, c_px = view.to_pixels(les["center"], jitter_mm=jitter_mm)
        r_px, c_px = float(r_px[0]), float(c_px[0])
        visible = les["hidden_in"] != name
        if les["kind"] == "mass":
            if visible:
                rad_px = _render_mass(att, view, les, r_px, c_px, contrast, rng)
            else:
                rad_px = les["radius_mm"] / sp
            records.append((r_px, c_px, rad_px, visible))
        else:  # calcification cluster
            rr, cc_ = view.to_pixels(les["calcs"], jitter_mm=0.0)
            # Move the whole cluster with the lesion's jitter.
            r_c, c_c = view.to_pixels(les["center"], jitter_mm=0.0)
            rr = rr + (r_px - r_c[0])
            cc_ = cc_ + (c_px - c_c[0])
            sig = max(0.7, 0.25 / sp)
            if visible:
                for y, xq, amp in zip(rr, cc_, les["amps"]):
                    _stamp_blob(att, y, xq, sig, contrast * amp * t0)
            spread = np.sqrt(np.mean((rr - rr.mean()) ** 2 + (cc_ - cc_.mean()) ** 2))
            records.append((float(np.mean(rr)), float(np.mean(cc_)), max(2.0 * spread, 3.0 / sp),
                            visible))
    img = att / (1.15 * t0)
    img = np.clip(img, 0, None) ** 0.8
    img = img * 0.92 + 0.03 * mask
    img = img + noise * rng.standard_normal(shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    nip = view.plane_to_pixels(depth * view.sx + 0.8 * nip_r, view.row0)
    return img, records, (float(nip[0]), float(nip[1])), mask


def _draw_mass(rng, p, mass_radius_mm, margins):
    r = rng.uniform(*mass_radius_mm)
    axes = r * rng.uniform(0.75, 1.25, 3)
    Q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    margin = str(margins[int(rng.integers(len(margins)))])
    les = {"center": p, "kind": "mass", "margin": margin, "A": Q @ np.diag(1 / axes**2) @ Q.T,
           "radius_mm": float(r)}
    wobble = 0.25 if margin == "ill-defined" else 0.12
    les["harmonics"] = [(k, rng.uniform(0, wobble), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]
    if margin == "circumscribed":
        les["blur_mm"] = float(rng.uniform(0.3, 0.8))
        les["dmu"] = float(rng.uniform(1.0, 1.6))
    elif margin == "ill-defined":
        les["blur_mm"] = float(rng.uniform(1.5, 3.0))
        les["dmu"] = float(rng.uniform(0.9, 1.4))
    else:
        les["blur_mm"] = float(rng.uniform(0.5, 1.2))
        les["dmu"] = float(rng.uniform(0.9, 1.5))
    n_sp = int(rng.integers(6, 14))
    les["spicules"] = [(float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(1.0, 2.5) * r))
                       for _ in range(n_sp)]
    return les


def _draw_distractors(rng, n, geo, inside_ok, sp_shape):
    """Look-alikes: dense islands, vessels, axillary lymph nodes, overlapping tissue."""
    out = []
    kinds = ["island", "vessel", "lymph node", "overlap"]
    for k in range(n):
        kind = kinds[k % 4] if k < 4 else kinds[int(rng.integers(4))]
        u = rng.uniform(-1, 1, 3)
        u[0] = abs(u[0])
        u *= 0.75 / max(np.linalg.norm(u), 0.75)
        p = np.array([u[0] * geo["depth"], u[1] * geo["ry"], u[2] * geo["rz"]])
        if kind == "island":
            out.append({"kind": kind, "center": p, "radius_mm": float(rng.uniform(3.0, 6.0)),
                        "amp": float(rng.uniform(0.12, 0.25))})
        elif kind == "vessel":
            start = p
            direction = rng.normal(0, 1, 3)
            direction[0] = abs(direction[0]) + 0.5
            direction /= np.linalg.norm(direction)
            pts = [start]
            for _ in range(8):
                direction = direction + rng.normal(0, 0.25, 3)
                direction /= np.linalg.norm(direction)
                pts.append(pts[-1] + 7.0 * direction)
            pts = np.array([q for q in pts if inside_ok(q)] or [start])
            out.append({"kind": kind, "path": pts, "width_mm": float(rng.uniform(0.6, 1.1)),
                        "amp": float(rng.uniform(0.12, 0.22))})
        elif kind == "lymph node":
            # Axillary tail: just in front of the pectoral edge, high in the MLO.
            out.append({"kind": kind, "a_mm": float(rng.uniform(8, 30)),
                        "b_mm": float(rng.uniform(0.15, 0.4) * sp_shape),
                        "radius_mm": float(rng.uniform(3.0, 5.5)),
                        "amp": float(rng.uniform(0.25, 0.45))})
        else:
            parts = [(rng.normal(0, 3), rng.normal(0, 3), rng.uniform(2.5, 5.0))
                     for _ in range(int(rng.integers(3, 6)))]
            out.append({"kind": kind, "center": p, "view": "cc" if rng.random() < 0.5 else "mlo",
                        "parts": parts, "amp": float(rng.uniform(0.07, 0.14))})
    return out


def phantom(
    seed: int = 0,
    *,
    n_lesions: int = 3,
    density: float | str = 0.3,
    noise: float = 0.02,
    shape: tuple[int, int] = (512, 416),
    mlo_angle: float | None = None,
    laterality: Literal["L", "R"] | None = None,
    calcification_fraction: float = 0.3,
    mass_radius_mm: tuple[float, float] = (4.0, 11.0),
    contrast: float = 1.0,
    jitter_mm: float = 3.0,
    margins: tuple[str, ...] = MARGINS,
    lookalikes: int | None = None,
    one_view_fraction: float = 0.1,
    compression: tuple[float, float] = (0.45, 0.7),
) -> Case:
    """Generate one breast in CC and MLO with lesions at known 3D positions.

    Parameters
    ----------
    seed
        Random seed (the whole case is a deterministic function of the arguments).
    n_lesions
        Number of lesions (masses and calcification clusters), 0 to :data:`MAX_LESIONS` (12).
    density
        Glandular volume fraction in (0, 1), or a BI-RADS letter ``"a"``-``"d"``.
    noise
        Standard deviation of the additive quantum-like noise (image range is [0, 1]), in
        [0, 1].
    shape
        (rows, columns) of each view; the field of view is 260 mm high, so the pixel spacing
        is ``260 / rows`` mm.
    mlo_angle
        MLO compression angle in degrees (30-60); random in that range when None. The pectoral
        line's tilt from the vertical follows it (about 0.4 x the angle).
    laterality
        ``"L"`` or ``"R"``; random when None.
    calcification_fraction
        Probability that a lesion is a calcification cluster rather than a mass.
    mass_radius_mm
        Range of mass radii.
    contrast
        Scale of lesion attenuation over tissue (lower is harder).
    jitter_mm
        Per-view elastic displacement of lesions (limits geometric consistency).
    margins
        Mass margins to draw from (see :data:`MARGINS`).
    lookalikes
        Number of look-alike structures (dense islands, vessels, axillary lymph nodes,
        overlapping tissue); 3-7 drawn from the seed when None, 0 for none.
    one_view_fraction
        Probability that a lesion is hidden in one of the two views.
    compression
        Range of the per-view compression factor (drawn independently for CC and MLO).

    Ranges: ``calcification_fraction`` and ``one_view_fraction`` in [0, 1], ``contrast`` in
    [0, 10], ``jitter_mm`` in [0, 20], ``mass_radius_mm`` within [0.5, 30], ``compression``
    within [0.1, 1], ``lookalikes`` 0-50, each side of ``shape`` 64-8192; a value outside
    raises :class:`~biomed_toolkit.core.errors.InputError` naming the option.

    Returns
    -------
    Case
        ``case.cc``, ``case.mlo`` (chest wall on the left), ``case.nipple`` and
        ``case.lesions``: one row per lesion with ``lesion_id, kind, margin, x_mm, y_mm, z_mm,
        radius_mm, cc_row, cc_col, cc_radius_px, mlo_row, mlo_col, mlo_radius_px, in_cc,
        in_mlo`` (the ground-truth correspondences). ``case.meta["chest_line"]`` holds two
        (row, col) points per view of the true chest-wall line (the pectoral edge in MLO),
        ``case.meta["pectoral_angle"]`` its tilt from the vertical (degrees) and
        ``case.meta["distractors"]`` the look-alikes.

    Examples
    --------
    >>> case = bt.mammo.phantom(0, n_lesions=2, density="c")
    >>> case.lesions[["kind", "cc_row", "mlo_row"]].shape
    (2, 3)
    """
    if isinstance(shape, str) or not hasattr(shape, "__len__") or len(shape) != 2:
        raise InputError(f"shape must be (rows, cols) with both in [64, {_MAX_SIDE}], got {shape!r}")
    for i, side in enumerate(shape):
        _number(f"shape[{i}]", side, 64, _MAX_SIDE, integer=True)
    _number("seed", seed, 0, 2**63 - 1, integer=True)
    if isinstance(n_lesions, int | np.integer) and not isinstance(n_lesions, bool) and (
            n_lesions > MAX_LESIONS):
        raise InputError(
            f"n_lesions={n_lesions} is more than the phantom can place: at most {MAX_LESIONS} "
            "lesions fit at least 25 mm apart inside the breast. Pass n_lesions <= "
            f"{MAX_LESIONS}, or several cases (bt.mammo.phantom_cases) for more lesions.")
    n_lesions = int(_number("n_lesions", n_lesions, 0, MAX_LESIONS, integer=True))
    if mlo_angle is not None:
        _number("mlo_angle (degrees)", mlo_angle, 30.0, 60.0)
    noise = _number("noise", noise, 0.0, 1.0)
    calcification_fraction = _number("calcification_fraction", calcification_fraction, 0.0, 1.0)
    one_view_fraction = _number("one_view_fraction", one_view_fraction, 0.0, 1.0)
    contrast = _number("contrast", contrast, 0.0, 10.0)
    jitter_mm = _number("jitter_mm", jitter_mm, 0.0, 20.0)
    mass_radius_mm = _pair("mass_radius_mm", mass_radius_mm, 0.5, 30.0)
    compression = _pair("compression", compression, 0.1, 1.0)
    if lookalikes is not None:
        lookalikes = int(_number("lookalikes", lookalikes, 0, 50, integer=True))
    if isinstance(margins, str):
        raise InputError(f"margins must be a tuple of names from {MARGINS}, got the string "
                         f"{margins!r}; write margins=({margins!r},)")
    bad = [m for m in margins if m not in MARGINS]
    if bad or not margins:
        raise InputError(f"margins must be a non-empty subset of {MARGINS}, got {margins}")
    dens = _density_fraction(density)
    rng = np.random.default_rng(seed)
    H, W = int(shape[0]), int(shape[1])
    sp = _FOV_ROWS_MM / H
    if laterality is None:
        laterality = "L" if rng.random() < 0.5 else "R"
    laterality = laterality.upper()  # type: ignore[assignment]
    if laterality not in ("L", "R"):
        raise InputError(f"laterality must be 'L' or 'R', got {laterality!r}")
    theta = float(mlo_angle) if mlo_angle is not None else float(rng.uniform(30, 60))
    max_depth = 0.8 * W * sp / 1.25
    geo = {
        "depth": float(min(rng.uniform(95, 130), max_depth)),
        "ry": float(rng.uniform(72, 88)),
        "rz": float(rng.uniform(66, 82)),
        "thickness": float(rng.uniform(42, 62)),
    }
    psi = float(np.clip(0.4 * theta + rng.uniform(-3, 3), 10, 28))
    c_cc, c_mlo = rng.uniform(*compression), rng.uniform(*compression)
    mlo_row0 = _FOV_ROWS_MM * 0.5
    views = {
        "cc": _View(0.0, c_cc, sp, _FOV_ROWS_MM / 2, rng),
        "mlo": _View(theta, c_mlo, sp, mlo_row0, rng, psi_deg=psi,
                     pivot_mm=min(_FOV_ROWS_MM * 0.97, mlo_row0 + 0.85 * 80.0 * c_mlo**-0.4)),
    }
    frac, fshape = _gland_field(rng, geo["depth"], geo["ry"], geo["rz"], dens)

    def inside_ok(q):
        return q[0] > 0 and (q[0] / geo["depth"]) ** 2 + (q[1] / geo["ry"]) ** 2 + (
            q[2] / geo["rz"]) ** 2 < 0.8

    def in_frame(q):
        for v in views.values():
            r, c = v.to_pixels(q)
            if not (0.04 * H < r[0] < 0.96 * H and 0 < c[0] < W):
                return False
        return True

    # Lesion placement: inside the breast, away from skin and chest wall, in both frames.
    lesions3d = []
    tries = 0
    while len(lesions3d) < n_lesions and tries < 2000:
        tries += 1
        u = rng.uniform(-1, 1, 3)
        u[0] = abs(u[0])
        if np.sum(u**2) > 0.62 or u[0] < 0.15:
            continue
        p = np.array([u[0] * geo["depth"], u[1] * geo["ry"], u[2] * geo["rz"]])
        if not in_frame(p):
            continue
        if any(np.linalg.norm(p - q["center"]) < 25 for q in lesions3d):
            continue
        if rng.random() < calcification_fraction:
            nc = int(rng.integers(6, 16))
            spread = rng.uniform(1.5, 3.5)
            les = {"center": p, "kind": "calcification", "margin": "",
                   "calcs": p + rng.normal(0, spread, size=(nc, 3)),
                   "amps": rng.uniform(0.12, 0.3, nc), "radius_mm": float(2 * spread)}
        else:
            les = _draw_mass(rng, p, mass_radius_mm, margins)
        hide = rng.random() < one_view_fraction
        les["hidden_in"] = ("cc" if rng.random() < 0.5 else "mlo") if hide else None
        lesions3d.append(les)
    if len(lesions3d) < n_lesions:
        raise InputError(
            f"only {len(lesions3d)} of n_lesions={n_lesions} lesions fit at least 25 mm apart in "
            f"this breast (seed {seed}, shape {tuple(shape)}); pass n_lesions <= "
            f"{len(lesions3d)} or another seed.")
    n_look = int(rng.integers(3, 8)) if lookalikes is None else int(lookalikes)
    distractors = _draw_distractors(rng, n_look, geo, inside_ok, views["mlo"].bp)
    # Look-alikes keep clear of the lesions (they are not lesions).
    distractors = [d for d in distractors if "center" not in d
                   or all(np.linalg.norm(d["center"] - q["center"]) > 15 for q in lesions3d)]
    images, recs, nipples, masks = {}, {}, {}, {}
    for name, view in views.items():
        img, rec, nip, mask = _render_view(
            rng, view, (H, W), geo, frac, fshape, lesions3d, distractors, noise=noise,
            contrast=contrast, is_mlo=name == "mlo", jitter_mm=jitter_mm, name=name,
        )
        images[name], recs[name], nipples[name], masks[name] = img, rec, nip, mask
    rows = []
    for i, les in enumerate(lesions3d):
        row = {
            "lesion_id": i,
            "kind": les["kind"],
            "margin": les["margin"],
            "x_mm": les["center"][0],
            "y_mm": les["center"][1],
            "z_mm": les["center"][2],
            "radius_mm": les["radius_mm"],
        }
        for name in ("cc", "mlo"):
            rr, cc_, rad, visible = recs[name][i]
            row[f"{name}_row"], row[f"{name}_col"], row[f"{name}_radius_px"] = rr, cc_, rad
            inside = 0 <= rr < H and 0 <= cc_ < W and bool(masks[name][int(rr), int(cc_)])
            row[f"in_{name}"] = bool(inside and visible)
        rows.append(row)
    cols = ["lesion_id", "kind", "margin", "x_mm", "y_mm", "z_mm", "radius_mm", "cc_row",
            "cc_col", "cc_radius_px", "mlo_row", "mlo_col", "mlo_radius_px", "in_cc", "in_mlo"]
    lesions = pd.DataFrame(rows, columns=cols)
    meta = {
        "seed": seed, "density": dens, "noise": noise, "mlo_angle": theta,
        "pectoral_angle": psi, "contrast": contrast, "jitter_mm": jitter_mm, **geo,
        "compression": {k: v.c for k, v in views.items()},
        "chest_line": {k: v.chest_line((H, W)).tolist() for k, v in views.items()},
        "distractors": [d["kind"] + ("" if d.get("view") is None else f" ({d['view']})")
                        for d in distractors],
    }
    mk = {}
    for name, vname in (("cc", "CC"), ("mlo", "MLO")):
        mk[name] = MammoImage(
            pixels=images[name], laterality=laterality, view=vname, pixel_spacing=(sp, sp),
            orientation_source="phantom", spacing_source="phantom", laterality_source="phantom",
            view_source="phantom", voi="none", modality="MG",
            sop_class="Digital Mammography X-Ray Image Storage - For Presentation",
            meta={"phantom_seed": seed},
        )
    return Case(
        cc=mk["cc"], mlo=mk["mlo"], lesions=lesions,
        nipple={k: (float(v[0]), float(v[1])) for k, v in nipples.items()},
        case_id=f"phantom-{seed}", meta=meta,
    )

_COMPRESS = {
    None: None,
    "rle": "1.2.840.10008.1.2.5",
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # lossless
    "jpeg2000-lossy": "1.2.840.10008.1.2.4.91",
    "deflate": "1.2.840.10008.1.2.1.99",
}


def write_dicom(
    case: Case,
    folder: str | os.PathLike,
    *,
    photometric: str = "MONOCHROME2",
    compress: str | None = None,
    bits_stored: int = 12,
    patient_id: str | None = None,
    orientation: Orientation = "standard",
) -> list[Path]:
    """Write a case as two Digital Mammography (For Presentation) DICOM files.

    The stored images follow the usual acquisition orientation (a right breast has its chest
    wall on the right, ``PatientOrientation`` ``P\\L`` / ``P\\FL``), so reading them back exercises
    the orientation normalisation of :func:`read`.

    Parameters
    ----------
    case
        A :class:`Case` (e.g. from :func:`phantom`).
    folder
        Output folder (created).
    photometric
        ``"MONOCHROME2"`` or ``"MONOCHROME1"`` (inverted storage, PresentationLUTShape INVERSE).
    compress
        None, ``"rle"``, ``"jpeg2000"`` (lossless), ``"jpeg2000-lossy"`` or ``"deflate"``.
    bits_stored
        Stored bits (8-16) in 16-bit storage.
    patient_id
        PatientID tag; defaults to the case id.
    orientation
        ``"standard"`` (correct PatientOrientation), ``"missing"`` (no PatientOrientation) or
        ``"mislabelled"`` (the tag points the chest wall to the wrong side), so readers can be
        tested on the fallback to the image itself.

    Returns
    -------
    list of Path
        ``[cc_path, mlo_path]``.

    Examples
    --------
    >>> paths = bt.mammo.write_dicom(bt.mammo.phantom(0), "out", compress="rle")  # doctest: +SKIP
    >>> case = bt.mammo.read_case(*paths)                                            # doctest: +SKIP
    """
    import datetime

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    photometric = photometric.upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"photometric must be 'MONOCHROME1' or 'MONOCHROME2', got {photometric!r}")
    if compress not in _COMPRESS:
        raise InputError(f"compress must be one of {list(_COMPRESS)}, got {compress!r}")
    if orientation not in ("standard", "missing", "mislabelled"):
        raise InputError(
            f"orientation must be 'standard', 'missing' or 'mislabelled', got {orientation!r}"
        )
    if isinstance(bits_stored, bool) or not isinstance(bits_stored, int | np.integer) or not (
            8 <= bits_stored <= 16):
        raise InputError(f"bits_stored must be an integer between 8 and 16, got {bits_stored!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    paths = []
    lat = case.laterality or "L"
    for i, img in enumerate((case.cc, case.mlo)):
        view = img.view or ("CC" if i == 0 else "MLO")
        maxv = 2**bits_stored - 1
        px = np.clip(img.pixels, 0, 1)
        if lat == "R":
            px = px[:, ::-1]  # acquisition orientation: right breast faces left
        stored = np.round(px * maxv).astype(np.uint16)
        if photometric == "MONOCHROME1":
            stored = (maxv - stored).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MG_PRESENTATION
        sop_uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MG_PRESENTATION
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "MG"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PatientID = patient_id or case.case_id
        ds.PatientName = "Phantom^Breast"
        ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.Manufacturer = "biomed_toolkit phantom"
        ds.BodyPartExamined = "BREAST"
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.InstanceNumber = i + 1
        ds.ImageLaterality = lat
        ds.ViewPosition = view
        code = Dataset()
        if view == "CC":
            code.CodeValue, code.CodeMeaning = "399162004", "cranio-caudal"
        else:
            code.CodeValue, code.CodeMeaning = "399368009", "medio-lateral oblique"
        code.CodingSchemeDesignator = "SCT"
        ds.ViewCodeSequence = Sequence([code])
        left_chest = (lat == "L") != (orientation == "mislabelled")
        if orientation == "missing":
            pass
        elif view == "CC":
            ds.PatientOrientation = ["A", "R"] if left_chest else ["P", "L"]
        else:
            ds.PatientOrientation = ["A", "FR"] if left_chest else ["P", "FL"]
        sp = img.pixel_spacing or (0.1, 0.1)
        ds.PixelSpacing = [f"{sp[0]:.6f}", f"{sp[1]:.6f}"]
        ds.ImagerPixelSpacing = [f"{sp[0]:.6f}", f"{sp[1]:.6f}"]
        ds.EstimatedRadiographicMagnificationFactor = "1.0"
        ds.PhotometricInterpretation = photometric
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
        ds.SamplesPerPixel = 1
        ds.Rows, ds.Columns = stored.shape
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        ds.WindowCenter = f"{2 ** (bits_stored - 1)}"
        ds.WindowWidth = f"{2**bits_stored}"
        ds.VOILUTFunction = "LINEAR"
        ds.BurnedInAnnotation = "NO"
        ds.PixelData = stored.tobytes()
        uid = _COMPRESS[compress]
        if compress == "deflate":
            ds.file_meta.TransferSyntaxUID = uid
        elif uid is not None:
            kw = {}
            if compress == "jpeg2000-lossy":
                kw = {"j2k_psnr": [80]}
            ds.compress(uid, stored, **kw)
        path = out / f"{ds.PatientID}_{lat}{view}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
