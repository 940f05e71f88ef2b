"""Named lung regions computed from a label map: the one definition used to plant and to measure.

The phantom (:mod:`unveil.data.phantom`) and ``unveil plant`` put effects inside these
regions, and the analysis measures differences inside the very same regions, so a planted
effect and its measurement cannot disagree about where "upper lung" or "periphery" is.

Vocabulary (:data:`REGIONS`):

- ``lung``: every lung voxel (both lungs; the label values named by
  ``DataConfig.lung_labels``).
- ``right_lung`` / ``left_lung``: the anatomical right / left lung, i.e. the label values
  named ``right_lung`` / ``left_lung`` in ``DataConfig.labels`` (by default 1 and 2).  In
  RAS+ world coordinates the right lung lies at larger (positive) ``x``.
- ``upper_lung`` / ``middle_lung`` / ``lower_lung``: thirds of the superior-inferior extent
  of both lungs together, measured in *world* millimetres (the RAS ``z`` of each voxel
  centre through the affine), so the zones are right whatever the array orientation.
- ``lung_core`` / ``lung_periphery``: per lung, by the distance (in mm, with the voxel
  spacing) from each lung voxel to the nearest voxel outside that lung.  See
  :data:`REGIONS_RULE` for the exact rule.
- ``airway``: the airway label.

A region may be an intersection written with ``&``, e.g. ``lower_lung&lung_periphery``.
Zones partition the lungs exactly, and so do core and periphery.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from unveil.config import DataConfig
from unveil.errors import ConfigError

#: The fixed region vocabulary.
REGIONS: tuple[str, ...] = (
    "lung",
    "right_lung",
    "left_lung",
    "upper_lung",
    "middle_lung",
    "lower_lung",
    "lung_core",
    "lung_periphery",
    "airway",
)

#: One paragraph stating how the regions are computed; written into every effects.json.
REGIONS_RULE: str = (
    "lung = all lung-label voxels; right_lung/left_lung = the labels named right_lung/left_lung "
    "(right lung at positive RAS x); upper/middle/lower_lung = thirds of the superior-inferior "
    "extent of both lungs together in world mm, measured on voxel centres through the affine "
    "(z_min..z_max of lung voxel centres, L = z_max - z_min: lower z < z_min + L/3, "
    "upper z >= z_min + 2L/3, middle the rest); lung_core/lung_periphery per lung from the "
    "Euclidean distance d in mm (voxel spacing) of each lung voxel centre to the nearest voxel "
    "centre outside that lung (outside the grid counts as outside): periphery = d <= D/3 where D "
    "is that lung's maximum d, plus every surface voxel (a 6-neighbour outside the lung), "
    "core = the rest; airway = the airway label; 'a&b' is the intersection of a and b."
)


def parse_region(name: str) -> tuple[str, ...]:
    """Split a region name into its ``&``-joined parts and check each against :data:`REGIONS`.

    Returns the parts in the order given (``"lower_lung&lung_periphery"`` ->
    ``("lower_lung", "lung_periphery")``).  Raises :class:`ConfigError` with one sentence
    naming the bad part and listing the valid names.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(
            f"region {name!r} is empty; use one of {', '.join(REGIONS)} or an intersection "
            "such as lower_lung&lung_periphery."
        )
    parts = tuple(p.strip() for p in name.split("&"))
    for p in parts:
        if p not in REGIONS:
            raise ConfigError(
                f"region '{p}' (in '{name}') is not a known region; valid names are "
                f"{', '.join(REGIONS)}, optionally joined with & (e.g. lower_lung&lung_periphery)."
            )
    return parts


def canonical_region(name: str) -> str:
    """The region name with whitespace removed around ``&`` (validated)."""
    return "&".join(parse_region(name))


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def _world_z(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World superior-inferior coordinate (RAS ``z``, mm) of every voxel centre, shape ``shape``."""
    a = np.asarray(affine, dtype=np.float64)
    i, j, k = (np.arange(s, dtype=np.float64) for s in shape)
    return (
        a[2, 0] * i[:, None, None]
        + a[2, 1] * j[None, :, None]
        + a[2, 2] * k[None, None, :]
        + a[2, 3]
    )


def _world_x(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    a = np.asarray(affine, dtype=np.float64)
    i, j, k = (np.arange(s, dtype=np.float64) for s in shape)
    return (
        a[0, 0] * i[:, None, None]
        + a[0, 1] * j[None, :, None]
        + a[0, 2] * k[None, None, :]
        + a[0, 3]
    )


def _lung_parts(
    label_map: np.ndarray, affine: np.ndarray, cfg: DataConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) lung masks from the label names, falling back on the lung label order."""
    labels = cfg.labels
    if "right_lung" in labels and "left_lung" in labels:
        return label_map == labels["right_lung"], label_map == labels["left_lung"]
    lung_values = [labels[n] for n in cfg.lung_labels]
    if len(lung_values) >= 2:
        # Without the conventional names, the first lung label is taken as the right lung.
        return label_map == lung_values[0], np.isin(label_map, lung_values[1:])
    # A single lung label: split it at the mid-point of its world x extent (right = +x).
    lung = label_map == lung_values[0]
    if not lung.any():
        return lung, lung.copy()
    x = _world_x(label_map.shape, affine)
    mid = 0.5 * (x[lung].min() + x[lung].max())
    return lung & (x >= mid), lung & (x < mid)


def _inner_distance(part: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(padded part, distance in mm of each voxel to the nearest voxel outside the part)``.

    Padded by one background voxel so a lung touching the grid edge has a surface there:
    the scan ends, the lung is not known to continue.
    """
    # lazy scipy.ndimage (~0.6 s): unveil report imports this module for REGIONS only
    from scipy import ndimage

    padded = np.pad(part, 1, constant_values=False)
    return padded, ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]


def _core_periphery(
    lung_parts: Iterable[np.ndarray], spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Core and periphery over all lungs, each lung measured on its own (see REGIONS_RULE)."""
    # lazy scipy.ndimage (~0.6 s): unveil report imports this module for REGIONS only
    from scipy import ndimage

    core = periphery = None
    for part in lung_parts:
        if core is None:
            core = np.zeros(part.shape, dtype=bool)
            periphery = np.zeros(part.shape, dtype=bool)
        if not part.any():
            continue
        padded, dist = _inner_distance(part, spacing)
        surface = part & ~ndimage.binary_erosion(padded)[1:-1, 1:-1, 1:-1]
        depth = float(dist[part].max())
        per = part & ((dist <= depth / 3.0) | surface)
        periphery |= per
        core |= part & ~per
    return core, periphery  # type: ignore[return-value]


def region_masks(
    label_map: np.ndarray,
    affine: np.ndarray,
    data_cfg: DataConfig | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """Boolean masks of the named regions on the label map's grid.

    Args:
        label_map: integer labels, shape ``(X, Y, Z)``.
        affine: ``(4, 4)`` voxel -> RAS+ mm; used for the world superior-inferior axis and
            for the voxel spacing of the core/periphery distances.
        data_cfg: label meaning (default :class:`DataConfig`: 1 right lung, 2 left lung,
            3 airway).
        names: regions to return (vocabulary names or ``a&b`` intersections); default all
            of :data:`REGIONS`.

    Returns:
        ``{name: bool array (X, Y, Z)}`` in the order asked.
    """
    cfg = data_cfg or DataConfig()
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise ValueError(f"label_map must be 3D (X, Y, Z), got shape {label_map.shape}")
    wanted = list(REGIONS if names is None else names)
    parsed = {n: parse_region(n) for n in wanted}
    needed = {p for parts in parsed.values() for p in parts}

    base: dict[str, np.ndarray] = {}
    right, left = _lung_parts(label_map, affine, cfg)
    lung = right | left
    base["lung"], base["right_lung"], base["left_lung"] = lung, right, left
    if needed & {"upper_lung", "middle_lung", "lower_lung"}:
        if lung.any():
            z = _world_z(label_map.shape, affine)
            zl = z[lung]
            z0, length = float(zl.min()), float(zl.max() - zl.min())
            t1, t2 = z0 + length / 3.0, z0 + 2.0 * length / 3.0
            base["lower_lung"] = lung & (z < t1)
            base["upper_lung"] = lung & (z >= t2)
            base["middle_lung"] = lung & ~base["lower_lung"] & ~base["upper_lung"]
        else:
            for n in ("upper_lung", "middle_lung", "lower_lung"):
                base[n] = np.zeros_like(lung)
    if needed & {"lung_core", "lung_periphery"}:
        base["lung_core"], base["lung_periphery"] = _core_periphery((right, left), _spacing(affine))
    if "airway" in needed:
        base["airway"] = (
            label_map == cfg.labels[cfg.airway_label] if cfg.airway_label else np.zeros_like(lung)
        )

    out: dict[str, np.ndarray] = {}
    for name, parts in parsed.items():
        mask = base[parts[0]].copy()
        for p in parts[1:]:
            mask &= base[p]
        out[name] = mask
    return out


def region_mask(
    label_map: np.ndarray, affine: np.ndarray, region: str, data_cfg: DataConfig | None = None
) -> np.ndarray:
    """One region (possibly an ``a&b`` intersection) as a bool array ``(X, Y, Z)``."""
    return region_masks(label_map, affine, data_cfg, names=[region])[region]


def lung_depth(label_map: np.ndarray, affine: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """Depth of every lung voxel inside its own lung, ``-1`` at the surface to ``+1`` at the
    deepest point (``2 d / D - 1`` with the distance ``d`` and maximum ``D`` of the
    core/periphery rule of :data:`REGIONS_RULE`), and ``-1`` outside the lungs; ``(X, Y, Z)``
    float32.  Periphery is where the depth is at most ``-1/3``.
    """
    out = np.full(label_map.shape, -1.0, dtype=np.float32)
    spacing = _spacing(affine)
    for part in _lung_parts(label_map, affine, cfg):
        if not part.any():
            continue
        _, dist = _inner_distance(part, spacing)
        deepest = float(dist[part].max())
        out[part] = (2.0 * dist[part] / max(deepest, 1e-6) - 1.0).astype(np.float32)
    return out
