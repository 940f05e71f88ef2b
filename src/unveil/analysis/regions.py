"""The regions the analysis measures, their voxels, and the means over them.

Pure: label maps and configs in, region names, flat voxel indices and means out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unveil.data.regions import REGIONS, region_masks

#: Lung partitions among which the peak of an effect is sought (with any ``&``
#: intersection of them that is in the region list, e.g. a planted region).
PEAK_REGIONS: tuple[str, ...] = (
    "upper_lung",
    "middle_lung",
    "lower_lung",
    "lung_core",
    "lung_periphery",
)
#: The lung zones checked for spill where nothing was planted.
ZONES: tuple[str, ...] = ("upper_lung", "middle_lung", "lower_lung")


def region_names(data_cfg: Any, effects: Sequence[Any] | None = None) -> list[str]:
    """Regions measured: the vocabulary, any other label, and each planted effect's region.

    Labels other than the lungs and airway (e.g. ``heart``) are measured under their label
    name; a planted intersection such as ``lower_lung&lung_periphery`` is added so the
    recovery is also read exactly where the effect was put.
    """
    names = list(REGIONS)
    for label in data_cfg.labels:
        if label not in names:
            names.append(label)
    for e in effects or ():
        if e.region not in names:
            names.append(e.region)
    return names


def region_indices(
    label_map: np.ndarray, affine: np.ndarray, data_cfg: Any, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """``{region: flat voxel indices}`` for every name; label names beyond the vocabulary
    (e.g. ``heart``) are the voxels with that label value."""
    vocab = [n for n in names if all(p.strip() in REGIONS for p in n.split("&"))]
    masks = region_masks(label_map, affine, data_cfg, names=vocab)
    for n in names:
        if n not in masks:
            masks[n] = label_map == data_cfg.labels[n]
    # Flat indices: each region is gathered once per volume instead of masking a full grid.
    return {n: np.flatnonzero(masks[n]) for n in names}


def region_means(flat: np.ndarray, idx: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Voxel mean of ``flat`` (a raveled volume) in each region; NaN for an empty region."""
    return {
        r: (float(flat[i].mean(dtype=np.float64)) if i.size else math.nan) for r, i in idx.items()
    }


def peak_candidates(regions: Sequence[str]) -> list[str]:
    """The regions of :data:`PEAK_REGIONS`, and ``&`` intersections of lung parts, present."""
    lung_parts = {r for r in REGIONS if r not in ("lung", "airway")}
    out = [r for r in regions if r in PEAK_REGIONS]
    out += [
        r
        for r in regions
        if "&" in r and all(p.strip() in lung_parts for p in r.split("&")) and r not in out
    ]
    return out
