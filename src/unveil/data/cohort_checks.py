"""The problems of a cohort and the sentences that word them (volume checks).

A :class:`Problem` is an error (the subject or the cohort cannot be used as it is) or a
warning (usable, but probably not what the user meant).  The functions here inspect arrays
already read (non-finite values, a value range that is not HU, a mask off its image grid,
fractional or unconfigured labels) and return the sentence naming the file and the fix.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from unveil.data.io import Volume

if TYPE_CHECKING:
    from unveil.config import DataConfig

#: Two grids are the same when no corner voxel centre moves by more than this (mm).  NIfTI
#: stores the affine in float32 and ITK formats store spacing/direction separately, so a
#: grid copied between formats differs by ~1e-5 mm; 0.01 mm is far below any voxel size.
GRID_TOLERANCE_MM = 0.01

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a cohort, worded as a sentence naming the file and the fix.

    Attributes:
        level: ``"error"`` (the subject or the cohort cannot be used as it is) or
            ``"warning"`` (usable, but probably not what the user meant).
        subject: the subject id concerned, or ``None`` for cohort-level problems.
        path: the file concerned, if one.
        message: the sentence.
    """

    level: Level
    subject: str | None
    path: Path | None
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


# ------------------------------------------------------------------- volume sentences


def nonfinite(array: np.ndarray) -> tuple[int, int]:
    """``(NaN count, inf count)``; integer arrays have neither."""
    if array.dtype.kind not in "fc":
        return 0, 0
    n_nan = int(np.isnan(array).sum())
    n_inf = int(np.isinf(array).sum())
    return n_nan, n_inf


def finite_range(array: np.ndarray) -> tuple[float | None, float | None]:
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            array = array[finite]
    if array.size == 0:
        return None, None
    return float(array.min()), float(array.max())


def nonfinite_sentence(path: Path, n_nan: int, n_inf: int) -> str:
    return (
        f"{path} has {n_nan} NaN and {n_inf} infinite voxel(s); replace them with a real HU "
        "value (for example -1024 outside the body) and save it again."
    )


def not_hu_sentence(path: Path, lo: float | None, hi: float | None) -> str | None:
    """A warning sentence when the value range is evidently not Hounsfield units.

    A chest CT in HU always holds air (outside the body and in the lungs, about -1000)
    and soft tissue (about 0 to 100), so its range spans well over a thousand; what
    breaks that is a normalised image, 8-bit display values, stored values whose
    rescale intercept was not applied, or a wrong rescale slope.
    """
    if lo is None or hi is None:
        return None  # no finite value at all: already an error (NaN/inf)
    rng = f"[{lo:.4g}, {hi:.4g}]"
    if hi - lo < 10:
        return (
            f"{path} only spans {rng}, which looks normalised, not HU; use the scan in "
            "Hounsfield units (air about -1000, water 0)."
        )
    if lo >= -200:
        if lo >= 0 and hi <= 255:
            why = "looks like 8-bit display values"
        elif lo >= 0 and hi <= 4095:
            why = "looks like stored values without the rescale intercept (usually -1024)"
        else:
            why = "has no voxel below -200 HU, so no air"
        return (
            f"{path} spans {rng} and {why}, while a chest CT in HU always holds air near "
            "-1000; convert it to HU (apply the DICOM rescale slope and intercept)."
        )
    if hi < -500:
        return (
            f"{path} spans {rng}, with no soft tissue or bone above -500 HU; check for a "
            "wrong offset or a lung-only crop and use the full scan in HU."
        )
    if lo < -50000 or hi > 50000:
        return (
            f"{path} spans {rng}, far outside the HU range of CT (about -1024 to 3071); "
            "check the rescale slope and convert it to HU."
        )
    return None


def grid_sentences(image: Volume, mask: Volume) -> list[str]:
    """Sentences for a mask whose shape or placement differs from its image."""
    out = []
    if image.shape != mask.shape:
        out.append(
            f"{mask.path} has shape {_dims(mask.shape)} but its image {image.path} has "
            f"{_dims(image.shape)}; resample the mask onto the image grid (nearest neighbour)."
        )
    dist = _corner_distance(image.affine, mask.affine, image.shape)
    if dist > GRID_TOLERANCE_MM:
        out.append(
            f"{mask.path} is placed up to {dist:.3g} mm away from its image {image.path} "
            "(their affines differ); resample the mask onto the image grid, or copy the "
            "image's header into it if only the header is wrong."
        )
    return out


def _corner_distance(a: np.ndarray, b: np.ndarray, shape: tuple[int, int, int]) -> float:
    """Largest distance (mm) between where two affines put the corner voxels of ``shape``."""
    corners = np.array(
        [[i, j, k, 1.0] for i, j, k in itertools.product(*[(0, n - 1) for n in shape])]
    ).T
    return float(np.linalg.norm(((a - b) @ corners)[:3], axis=0).max())


def label_values(array: np.ndarray) -> tuple[np.ndarray | None, int, float | None]:
    """``(sorted distinct values, 0, None)`` of an integer-valued mask, or
    ``(None, count, example)`` when ``count`` voxels are fractional or not finite."""
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        bad = ~finite
        bad[finite] = array[finite] != np.round(array[finite])
        n = int(bad.sum())
        if n:
            return None, n, float(array[bad][0])
        array = array.astype(np.int64)
    lo, hi = int(array.min()), int(array.max())
    if hi - lo < 1 << 16:
        # A bincount over the value range is linear time; np.unique would sort the volume.
        counts = np.bincount((array.astype(np.int64, copy=False) - lo).ravel())
        return np.flatnonzero(counts) + lo, 0, None
    return np.unique(array), 0, None


def fractional_sentence(path: Path, n: int, example: float | None) -> str:
    return (
        f"{path} holds {n} non-integer voxel value(s) (e.g. {example:g}) but a mask must be "
        "an integer label map; resample it with nearest-neighbour interpolation and save "
        "it with an integer type."
    )


def unknown_labels_sentence(path: Path, values: np.ndarray, data_cfg: DataConfig) -> str | None:
    known = {0, *data_cfg.labels.values()}
    unknown = [int(v) for v in values if int(v) not in known]
    if not unknown:
        return None
    configured = ", ".join(f"{n}={v}" for n, v in data_cfg.labels.items())
    looks_like_image = (
        " (so many values suggest an image saved as a mask)" if len(unknown) > 50 else ""
    )
    return (
        f"{path} has label value(s) {listing(unknown)} that data.labels does not name "
        f"(it has 0=background, {configured}){looks_like_image}; relabel the mask or set "
        "data.labels to name them."
    )


# --------------------------------------------------------------------------- helpers


def listing(items: Any, limit: int = 6) -> str:
    """``a, b, c`` or ``a, b, c and 7 more``."""
    items = [str(i) for i in items]
    head = ", ".join(items[:limit])
    return head if len(items) <= limit else f"{head} and {len(items) - limit} more"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)
