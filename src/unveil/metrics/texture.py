"""Weight-free texture statistics of CT regions, and how far a generated CT is from a real one.

Always available (no network): for a region (lung, one zone, ...) of one CT,
:func:`texture_stats` returns

- first-order HU statistics: ``mean_hu``, ``sd_hu`` (population SD), ``skewness``,
  ``kurtosis`` (excess, 0 for a Gaussian), ``p5_hu``, ``p50_hu``, ``p95_hu``;
- ``laa950_pct``: low-attenuation area, the percentage of region voxels strictly below
  -950 HU (the usual CT emphysema index; relevant to smoking);
- ``haa_pct``: high-attenuation area, the percentage of voxels in ``[-600, -250]`` HU
  (ground-glass / fibrosis-like density);
- ``glcm_contrast`` and ``glcm_homogeneity``: grey-level co-occurrence features
  (``skimage.feature.graycomatrix`` / ``graycoprops``) computed on 2D axial slices of the
  region.  Each slice is clipped to ``glcm_window`` and quantised into ``glcm_levels``
  equal HU bins (default 64 bins over :data:`unveil.config.DEFAULT_HU_WINDOW`,
  -1000..500 HU, about 23 HU each); voxels outside the
  region get an extra level 0, and every pair touching level 0 is dropped, so only pairs
  of two region voxels count.  Pair counts are summed over all slices, distances and
  angles (0, 45, 90, 135 degrees in the slice plane) before the features are computed,
  so thin slices with few voxels weigh in proportion to their pairs.  Axial 2D rather
  than 3D because the slice thickness of chest CT often differs from the in-plane
  spacing, and ``graycomatrix`` is 2D.

HU statistics use raw HU (not clipped); the GLCM uses the fixed window, never a
per-volume rescale, so a global HU shift shows up in the grey levels.

:func:`texture_distance` compares two such dicts (or dicts of dicts per region) feature
by feature.  An empty region gives ``n_voxels = 0`` and ``None`` for every feature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unveil.config import DEFAULT_HU_WINDOW

#: Emphysema threshold (HU): voxels strictly below it count as low attenuation.
LAA_HU = -950.0
#: High-attenuation band (HU, inclusive).
HAA_HU = (-600.0, -250.0)

FEATURES: tuple[str, ...] = (
    "mean_hu",
    "sd_hu",
    "skewness",
    "kurtosis",
    "p5_hu",
    "p50_hu",
    "p95_hu",
    "laa950_pct",
    "haa_pct",
    "glcm_contrast",
    "glcm_homogeneity",
)


def texture_stats(
    hu: np.ndarray,
    mask: np.ndarray,
    *,
    axis: int = 2,
    glcm_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    glcm_levels: int = 64,
    glcm_distances: Sequence[int] = (1,),
    glcm_angles: Sequence[float] = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4),
) -> dict[str, float | int | None]:
    """Texture statistics of the voxels of ``hu`` inside ``mask`` (see the module text).

    Args:
        hu: ``(X, Y, Z)`` CT in HU.
        mask: ``(X, Y, Z)``, non-zero = region.
        axis: the slice axis for the GLCM (2 = axial for ``(X, Y, Z)``).
        glcm_window: HU range quantised for the GLCM.
        glcm_levels: number of grey levels.
        glcm_distances: pixel offsets.
        glcm_angles: offset angles in radians.

    Returns:
        ``{"n_voxels": int, <each of FEATURES>: float or None}``.
    """
    # lazy scipy.stats (~1 s): report and compare import unveil.metrics but never use it
    from scipy import stats

    vol = np.asarray(hu, dtype=np.float64)
    m = np.asarray(mask) != 0
    if vol.ndim != 3 or m.shape != vol.shape:
        raise ValueError(f"hu and mask must be 3D of one shape, got {vol.shape} and {m.shape}")
    values = vol[m]
    out: dict[str, float | int | None] = {"n_voxels": int(values.size)}
    if values.size == 0:
        out.update(dict.fromkeys(FEATURES))
        return out
    sd = float(values.std())
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    out.update(
        mean_hu=float(values.mean()),
        sd_hu=sd,
        # Undefined for a constant region (0 / 0); reported as missing rather than NaN.
        skewness=float(stats.skew(values)) if sd > 0 else None,
        kurtosis=float(stats.kurtosis(values, fisher=True)) if sd > 0 else None,
        p5_hu=float(p5),
        p50_hu=float(p50),
        p95_hu=float(p95),
        laa950_pct=100.0 * float((values < LAA_HU).mean()),
        haa_pct=100.0 * float(((values >= HAA_HU[0]) & (values <= HAA_HU[1])).mean()),
    )
    contrast, homogeneity = _glcm(
        vol, m, axis, glcm_window, glcm_levels, glcm_distances, glcm_angles
    )
    out.update(glcm_contrast=contrast, glcm_homogeneity=homogeneity)
    return out


def texture_stats_regions(
    hu: np.ndarray, region_masks: Mapping[str, np.ndarray], **kwargs: Any
) -> dict[str, dict[str, float | int | None]]:
    """:func:`texture_stats` for every named region: ``{region: stats}`` (``kwargs`` are
    passed on to it)."""
    return {name: texture_stats(hu, m, **kwargs) for name, m in region_masks.items()}


def texture_distance(
    real_stats: Mapping[str, object], fake_stats: Mapping[str, object]
) -> dict[str, float | None]:
    """Absolute difference ``|fake - real|`` per feature, in the feature's own unit.

    Accepts a flat :func:`texture_stats` dict or a per-region dict of them
    (:func:`texture_stats_regions`); nested keys come out as ``"region/feature"``.  Only
    keys present in both are compared; ``n_voxels`` is not a feature and is skipped; a
    feature missing (``None``) on either side gives ``None``.
    """
    out: dict[str, float | None] = {}
    for key, r in real_stats.items():
        if key == "n_voxels" or key not in fake_stats:
            continue
        f = fake_stats[key]
        if isinstance(r, Mapping) and isinstance(f, Mapping):
            for sub, d in texture_distance(r, f).items():
                out[f"{key}/{sub}"] = d
        elif r is None or f is None:
            out[key] = None
        else:
            out[key] = abs(float(f) - float(r))  # type: ignore[arg-type]
    return out


def _glcm(
    vol: np.ndarray,
    mask: np.ndarray,
    axis: int,
    window: tuple[float, float],
    levels: int,
    distances: Sequence[int],
    angles: Sequence[float],
) -> tuple[float | None, float | None]:
    # lazy scikit-image (~0.5 s): only the evaluation's texture figures use it
    from skimage.feature import graycomatrix, graycoprops

    lo, hi = float(window[0]), float(window[1])
    if not hi > lo or levels < 2:
        raise ValueError(
            f"need glcm_window low < high and glcm_levels >= 2, got {window}, {levels}"
        )
    # Levels 1..levels for region voxels, 0 for everything else.
    q = np.floor((np.clip(vol, lo, hi) - lo) / (hi - lo) * levels).astype(np.int64)
    q = np.clip(q, 0, levels - 1) + 1
    q[~mask] = 0
    q = np.moveaxis(q, axis, 0)
    m = np.moveaxis(mask, axis, 0)
    counts = np.zeros((levels + 1, levels + 1, len(distances), len(angles)), dtype=np.float64)
    for k in np.nonzero(m.reshape(m.shape[0], -1).any(axis=1))[0]:
        rows = np.nonzero(m[k].any(axis=1))[0]
        cols = np.nonzero(m[k].any(axis=0))[0]
        # One voxel of margin keeps the outside level around the region's edge.
        r0, r1 = max(rows[0] - 1, 0), rows[-1] + 2
        c0, c1 = max(cols[0] - 1, 0), cols[-1] + 2
        img = q[k, r0:r1, c0:c1].astype(np.uint16)
        counts += graycomatrix(
            img, distances=list(distances), angles=list(angles), levels=levels + 1, symmetric=True
        )
    inside = counts[1:, 1:]
    if inside.sum() == 0:
        return None, None
    # Pool the pair counts over distances and angles into one matrix before the features.
    pooled = inside.sum(axis=(2, 3), keepdims=True)
    contrast = float(graycoprops(pooled, "contrast")[0, 0])
    homogeneity = float(graycoprops(pooled, "homogeneity")[0, 0])
    return contrast, homogeneity
