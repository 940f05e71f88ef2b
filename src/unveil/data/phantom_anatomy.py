"""The phantom's anatomy: one subject's chest CT and label map, before any effect.

Each subject is a ``size^3`` volume in HU over a 350 mm field of view (isotropic spacing
``350 / size`` mm, array axes pointing R, A, S, centred on the origin) with a label map on
the same grid (0 background, 1 right lung, 2 left lung, 3 airway; the right lung lies at
positive RAS ``x``).  :func:`render_anatomy` draws every random number up front (a fixed
count), then places the body, lungs, airway, bone and parenchyma; :mod:`unveil.data.phantom`
plants the effects and writes the cohort.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from unveil.data.io import Volume

#: Field of view (mm) along each axis.
FOV_MM = 350.0
#: Standard deviation of the added noise (HU) after its slight spatial correlation.
NOISE_STD_HU = 20.0
#: Gaussian sigma (voxels) that correlates the noise.
NOISE_SIGMA_VOX = 0.7
#: Gaussian sigma (voxels) of the partial-volume blur applied before the noise.
BLUR_SIGMA_VOX = 0.5
#: Nominal tissue values (HU).
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 40.0,
    "mediastinum": 40.0,
    "bone_cancellous": 400.0,
    "bone_cortical": 800.0,
    "spinal_canal": 10.0,
    "lung_parenchyma": -880.0,
    "airway_lumen": -1000.0,
}
#: Label values written to the masks (those of :class:`DataConfig`'s defaults).
LABELS: dict[str, int] = {"right_lung": 1, "left_lung": 2, "airway": 3}


def phantom_affine(size: int) -> np.ndarray:
    """``(4, 4)`` RAS affine of a ``size^3`` phantom: isotropic ``FOV_MM / size`` mm, centred."""
    s = FOV_MM / size
    affine = np.diag([s, s, s, 1.0])
    affine[:3, 3] = -(size - 1) / 2.0 * s
    return affine


def _segment_distance(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, a: Sequence[float], b: Sequence[float]
) -> np.ndarray:
    """Distance (mm) from every voxel centre to the segment a-b (broadcast to the grid)."""
    ab = np.subtract(b, a, dtype=np.float64)
    px, py, pz = x - a[0], y - a[1], z - a[2]
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / float(ab @ ab), 0.0, 1.0)
    return np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2)


def _unit_noise_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian white noise smoothed with ``sigma`` voxels and rescaled to unit std.

    The scale is the exact one of the filter (norm of its impulse response), not the
    sample std, so the noise level does not depend on the draw.
    """
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    if sigma <= 0:
        return field
    half = int(math.ceil(4 * sigma)) + 1
    delta = np.zeros((2 * half + 1,) * len(shape))
    delta[(half,) * len(shape)] = 1.0
    kernel = ndimage.gaussian_filter(delta, sigma, mode="constant")
    return field / float(np.sqrt((kernel**2).sum()))


@dataclass(frozen=True)
class _Draws:
    """One subject's random anatomy parameters, drawn in a fixed order and count."""

    body_scale: float
    lung_scale: float
    heart_scale: float
    shift: tuple[float, float, float]
    diaphragm: float
    lung_offset: float
    vessel_f1: np.ndarray
    vessel_f2: np.ndarray
    noise: np.ndarray


def _draw_subject(rng: np.random.Generator, shape: tuple[int, ...], s: float) -> _Draws:
    """Every random draw of one anatomy (the count depends on nothing but ``shape``)."""
    body_scale = float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12))
    lung_scale = float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15))
    heart_scale = float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15))
    sx, sy, sz = np.clip(rng.normal(0.0, 4.0, size=3), -8.0, 8.0)
    diaphragm = float(np.clip(rng.normal(0.0, 8.0), -16.0, 16.0))
    lung_offset = float(np.clip(rng.normal(0.0, 8.0), -20.0, 20.0))
    vessel_f1 = _unit_noise_field(rng, shape, 6.0 / s)
    vessel_f2 = _unit_noise_field(rng, shape, 6.0 / s)
    noise = _unit_noise_field(rng, shape, NOISE_SIGMA_VOX) * NOISE_STD_HU
    return _Draws(
        body_scale,
        lung_scale,
        heart_scale,
        (sx, sy, sz),
        diaphragm,
        lung_offset,
        vessel_f1,
        vessel_f2,
        noise,
    )


@dataclass(frozen=True)
class _Torso:
    """Voxel-centre coordinates (mm) and the shapes every structure is placed against.

    ``x``, ``y``, ``z`` broadcast to the grid; ``xs``, ``ys`` are relative to the subject's
    shifted centre; ``r_*`` are the normalised elliptic radii of the body, fat inner
    border and thoracic cavity; ``r_spine`` / ``r_canal`` the in-plane distances (mm) to
    the vertebral body and spinal canal axes.
    """

    shape: tuple[int, int, int]
    s: float
    top_z: float
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    sx: float
    sy: float
    sz: float
    xs: np.ndarray
    ys: np.ndarray
    ax: float
    ay: float
    cav_ax: float
    cav_ay: float
    r_body: np.ndarray
    r_fat: np.ndarray
    r_cav: np.ndarray
    spine_y: float
    r_spine: np.ndarray
    r_canal: np.ndarray


def _torso(size: int, d: _Draws) -> _Torso:
    """The grid coordinates and the subject's body, cavity, spine and canal geometry."""
    s = FOV_MM / size
    c = (np.arange(size, dtype=np.float64) - (size - 1) / 2.0) * s
    x, y, z = c[:, None, None], c[None, :, None], c[None, None, :]
    sx, sy, sz = d.shift
    xs, ys = x - sx, y - sy
    # Body, fat, muscle and the thoracic cavity: nested ellipses in the axial plane.
    ax, ay = 150.0 * d.body_scale, 110.0 * d.body_scale
    fat_t, muscle_t = 15.0 * d.body_scale, 12.0
    cav_ax, cav_ay = ax - fat_t - muscle_t, ay - fat_t - muscle_t
    spine_c = (sx, sy - cav_ay + 22.0)
    canal_c = (sx, spine_c[1] - 26.0)
    return _Torso(
        shape=(size, size, size),
        s=s,
        top_z=float(c[-1]),
        x=x,
        y=y,
        z=z,
        sx=sx,
        sy=sy,
        sz=sz,
        xs=xs,
        ys=ys,
        ax=ax,
        ay=ay,
        cav_ax=cav_ax,
        cav_ay=cav_ay,
        r_body=(xs / ax) ** 2 + (ys / ay) ** 2,
        r_fat=(xs / (ax - fat_t)) ** 2 + (ys / (ay - fat_t)) ** 2,
        r_cav=(xs / cav_ax) ** 2 + (ys / cav_ay) ** 2,
        spine_y=spine_c[1],
        r_spine=np.sqrt((x - spine_c[0]) ** 2 + (y - spine_c[1]) ** 2),
        r_canal=np.sqrt((x - canal_c[0]) ** 2 + (y - canal_c[1]) ** 2),
    )


def _soft_tissue(t: _Torso) -> tuple[np.ndarray, np.ndarray]:
    """``(hu, body)``: air outside, then fat, muscle and mediastinum (nested ellipses)."""
    body = np.broadcast_to(t.r_body <= 1.0, t.shape)
    muscle = np.broadcast_to(t.r_fat <= 1.0, t.shape)
    cavity = np.broadcast_to(t.r_cav <= 1.0, t.shape)
    hu = np.full(t.shape, TISSUE_HU["air"])
    hu[body] = TISSUE_HU["fat"]
    hu[muscle] = TISSUE_HU["muscle"]
    hu[cavity] = TISSUE_HU["mediastinum"]
    return hu, body


@dataclass(frozen=True)
class _LungFrame:
    """Semi-axes ``(lx, ly, lz)`` (mm) of each lung ellipsoid and its centre offsets."""

    lx: float
    ly: float
    lz: float
    lcx: float
    lcy: float
    lcz: float


def _lung_frame(t: _Torso, d: _Draws) -> _LungFrame:
    """The lung ellipsoids' size and placement inside the cavity."""
    lx, ly, lz = (
        0.42 * t.cav_ax * d.lung_scale,
        0.85 * t.cav_ay * d.lung_scale,
        125.0 * d.lung_scale,
    )
    return _LungFrame(lx, ly, lz, t.cav_ax - lx - 6.0, -3.0, -10.0 + t.sz)


def _lungs(t: _Torso, d: _Draws, f: _LungFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(right_lung, left_lung)`` boolean masks.

    Two ellipsoids inside the cavity, floors raised by a diaphragm dome (higher on the
    right, over the liver), the heart (left of the midline, anterior, inferior) carved out.
    """
    x, y, z = t.x, t.y, t.z
    heart_c = (t.sx - 20.0, t.sy + 25.0, f.lcz - 0.45 * f.lz)
    hs = d.heart_scale
    heart_r = (55.0 * hs, 45.0 * hs, 50.0 * hs)
    # The heart has the mediastinum's +40 HU (no contrast), so only the lungs need its
    # shape: they keep 5 mm (pericardium, fat) away from it.
    heart_margin = (
        ((x - heart_c[0]) / (heart_r[0] + 5.0)) ** 2
        + ((y - heart_c[1]) / (heart_r[1] + 5.0)) ** 2
        + ((z - heart_c[2]) / (heart_r[2] + 5.0)) ** 2
    ) <= 1.0
    inner_cav = ((t.xs / (t.cav_ax - 3.0)) ** 2 + (t.ys / (t.cav_ay - 3.0)) ** 2) <= 1.0
    lungs = []
    for side in (+1.0, -1.0):  # +x is the subject's right in RAS
        cx = t.sx + side * f.lcx
        u2 = ((x - cx) / f.lx) ** 2 + ((y - t.sy - f.lcy) / f.ly) ** 2
        ellipsoid = u2 + ((z - f.lcz) / f.lz) ** 2 <= 1.0
        dome = 25.0 * np.clip(1.0 - u2, 0.0, 1.0) + (12.0 if side > 0 else 0.0) + d.diaphragm
        floor = z >= f.lcz - 0.8 * f.lz + dome
        lung = (
            ellipsoid & floor & inner_cav & ~heart_margin & (t.r_spine > 24.0) & (t.r_canal > 22.0)
        )
        lungs.append(np.broadcast_to(lung, t.shape).copy())
    right_lung, left_lung = lungs
    left_lung &= ~right_lung
    return right_lung, left_lung


def _hila(t: _Torso, f: _LungFrame) -> tuple[tuple[float, float, float], ...]:
    """``(carina, right hilum, left hilum)`` points (mm): where the airway tree branches."""
    tr = (t.sx, t.spine_y + 32.0)
    carina_z = f.lcz + 0.25 * f.lz
    carina = (tr[0], tr[1], carina_z)
    hilum_r = (t.sx + 0.45 * f.lcx + 10.0, tr[1] + 6.0, carina_z - 30.0)
    hilum_l = (t.sx - 0.45 * f.lcx - 15.0, tr[1] + 6.0, carina_z - 45.0)
    return carina, hilum_r, hilum_l


def _airway(
    t: _Torso, body: np.ndarray, hila: tuple[tuple[float, float, float], ...]
) -> np.ndarray:
    """Airway mask: trachea from the top of the field to the carina, then two main bronchi.

    The right bronchus is shorter and steeper.  Radii never fall below ~0.8 voxel so the
    airway survives coarse grids.
    """
    x, y, z = t.x, t.y, t.z
    carina, hilum_r, hilum_l = hila
    r_tr, r_br = max(8.0, 0.8 * t.s), max(5.5, 0.8 * t.s)
    top = (carina[0], carina[1], t.top_z + t.s)
    return (
        (_segment_distance(x, y, z, top, carina) <= r_tr)
        | (_segment_distance(x, y, z, carina, hilum_r) <= r_br)
        | (_segment_distance(x, y, z, carina, hilum_l) <= r_br)
    ) & body


def _paint_bone(hu: np.ndarray, t: _Torso, f: _LungFrame) -> None:
    """Paint vertebral body (cancellous core, cortical rim), arch, sternum and ribs into ``hu``."""
    shape, r_spine, r_canal = t.shape, t.r_spine, t.r_canal
    vertebra = np.broadcast_to(r_spine <= 18.0, shape)
    hu[vertebra] = TISSUE_HU["bone_cancellous"]
    hu[np.broadcast_to((r_spine > 15.0) & (r_spine <= 18.0), shape)] = TISSUE_HU["bone_cortical"]
    arch = np.broadcast_to((r_canal > 8.0) & (r_canal <= 13.0) & (t.y < t.spine_y), shape)
    hu[arch] = TISSUE_HU["bone_cortical"]
    hu[np.broadcast_to(r_canal <= 8.0, shape)] = TISSUE_HU["spinal_canal"]
    sternum = (np.abs(t.xs) <= 12.0) & (t.ys > 0) & (t.r_cav > 1.0) & (t.r_fat <= 1.0)
    hu[np.broadcast_to(sternum, shape)] = TISSUE_HU["bone_cortical"]
    # Ribs: bands just outside the cavity, every 28 mm, sloping down anteriorly.
    rib_band = (t.r_cav > 1.0) & (
        (t.xs / (t.cav_ax + 9.0)) ** 2 + (t.ys / (t.cav_ay + 9.0)) ** 2 <= 1.0
    )
    phase = np.mod(t.z - f.lcz + 30.0 * (t.ys / t.ay + 1.0) / 2.0, 28.0)
    in_chest = (t.z >= f.lcz - 0.9 * f.lz) & (t.z <= f.lcz + f.lz)
    ribs = rib_band & (phase < 9.0) & in_chest & ~sternum
    hu[ribs] = TISSUE_HU["bone_cortical"]


def _parenchyma(t: _Torso, d: _Draws, hila: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    """Lung parenchyma HU on the grid (broadcastable), before blur and noise.

    A base value, a gravity gradient (posterior denser by up to 40 HU), and vessel-like
    strands where two smooth random fields are both near zero (the intersection of two
    zero-level surfaces is a network of curves, i.e. tubes), brighter and thicker near the
    hilum.
    """
    x, y, z = t.x, t.y, t.z
    _, hilum_r, hilum_l = hila
    hilum_d = np.minimum(
        np.sqrt((x - hilum_r[0]) ** 2 + (y - hilum_r[1]) ** 2 + (z - hilum_r[2]) ** 2),
        np.sqrt((x - hilum_l[0]) ** 2 + (y - hilum_l[1]) ** 2 + (z - hilum_l[2]) ** 2),
    )
    proximity = np.exp(-hilum_d / 60.0)
    width = 0.18 + 0.15 * proximity
    tubes = np.exp(-(d.vessel_f1**2 + d.vessel_f2**2) / (2.0 * width**2))
    gradient = 40.0 * np.clip((-(y - t.sy) / t.cav_ay + 1.0) / 2.0, 0.0, 1.0)
    return (
        TISSUE_HU["lung_parenchyma"]
        + d.lung_offset
        + gradient
        + (200.0 + 500.0 * proximity) * tubes
    )


def render_anatomy(rng: np.random.Generator, size: int = 64) -> tuple[Volume, Volume]:
    """Draw one subject's anatomy: ``(image HU float32 (S, S, S), labels uint8 (S, S, S))``.

    No effect is applied.  The number of random draws does not depend on anything but
    ``size``, so two renders from equal generators are identical.
    """
    shape = (size, size, size)
    affine = phantom_affine(size)
    d = _draw_subject(rng, shape, FOV_MM / size)  # all draws up front, fixed count
    t = _torso(size, d)
    f = _lung_frame(t, d)
    hu, body = _soft_tissue(t)
    right_lung, left_lung = _lungs(t, d, f)
    hila = _hila(t, f)
    airway = _airway(t, body, hila)
    _paint_bone(hu, t, f)
    lung_any = right_lung | left_lung
    hu[lung_any] = np.broadcast_to(_parenchyma(t, d, hila), shape)[lung_any]
    hu[airway] = TISSUE_HU["airway_lumen"]

    # Partial-volume blur of the noiseless image, then slightly correlated noise; clip at
    # the scanner floor.
    hu = ndimage.gaussian_filter(hu, BLUR_SIGMA_VOX, mode="nearest") + d.noise
    hu = np.maximum(hu, -1024.0)

    labels = np.zeros(shape, dtype=np.uint8)
    labels[right_lung] = LABELS["right_lung"]
    labels[left_lung] = LABELS["left_lung"]
    labels[airway] = LABELS["airway"]
    return Volume(hu.astype(np.float32), affine), Volume(labels, affine.copy())
