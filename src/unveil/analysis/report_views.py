"""The slice views of the report: load a subject's pair and its difference map, draw them.

The difference shown is the map ``unveil analyze`` wrote (``RUN/analysis/maps/``, mean
over seeds of edited - factual): the report reads it, it does not recompute it.  The
factual and edited volumes of the first seed are read from the run for the grey panels,
and the lung mask from the cohort (to place the slices and scale the colours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unveil.analysis import figures
from unveil.analysis.maps import read_mean_map
from unveil.analysis.report_html import esc, figure, img
from unveil.data.cohort import find_volumes
from unveil.data.io import read_volume
from unveil.errors import DataError
from unveil.records import RunLayout, RunRecord


@dataclass
class SubjectView:
    """What the report shows of one subject and contrast; ``missing`` says why there is
    nothing to show (the arrays are then None)."""

    subject: str
    factual: np.ndarray | None = None
    edited: np.ndarray | None = None
    diff: np.ndarray | None = None
    affine: np.ndarray | None = None
    mask: np.ndarray | None = None
    missing: str | None = None


def lung_mask(
    cohort: Path | None, sid: str, data_cfg: Any, shape: tuple[int, ...]
) -> np.ndarray | None:
    """Bool lung mask ``(X, Y, Z)`` of a subject from the cohort's masks, or None."""
    if cohort is None or not (cohort / "masks").is_dir():
        return None
    paths = find_volumes(cohort / "masks").get(sid)
    if not paths:
        return None
    try:
        labels = read_volume(paths[0]).array
    except DataError:
        return None
    if tuple(labels.shape) != tuple(shape):
        return None
    values = [data_cfg.labels[n] for n in data_cfg.lung_labels if n in data_cfg.labels]
    return np.isin(labels, values)


def load_view(
    layout: RunLayout, run: RunRecord, sid: str, edit: str, cohort: Path | None, data_cfg: Any
) -> SubjectView:
    """The first seed's factual and edited volumes, the analysis' difference map and the
    lung mask of one subject and contrast."""
    if not run.seeds:
        return SubjectView(sid, missing="the run has no seeds")
    pair = (layout.factual(sid, run.seeds[0]), layout.edited(sid, edit, run.seeds[0]))
    if not all(p.is_file() for p in pair):
        return SubjectView(
            sid,
            missing=f"The volumes of {sid} for this edit are not in the run folder; slice "
            "views are omitted.",
        )
    diff = read_mean_map(layout, sid, edit)
    if diff is None:
        return SubjectView(
            sid,
            missing=f"The difference map of {sid} for this edit is not in "
            f"{layout.maps_dir}; run unveil analyze again to draw its slice views.",
        )
    factual = read_volume(pair[0])
    edited = read_volume(pair[1])
    arrays = [np.asarray(v.array, dtype=np.float32) for v in (factual, edited, diff)]
    mask = lung_mask(cohort, sid, data_cfg, arrays[0].shape)
    return SubjectView(sid, *arrays, affine=factual.affine, mask=mask)


def diff_range(views: Sequence[SubjectView]) -> float:
    """One difference colour scale for all subjects of a contrast, so their panels compare."""
    ranges = [figures.robust_diff_range(v.diff, v.mask) for v in views if v.missing is None]
    return max(ranges) if ranges else 1.0


def view_html(
    view: SubjectView,
    edit: str,
    window: tuple[float, float],
    scale: float,
    seeds: Sequence[int],
) -> str:
    """The slice panels (axial where the difference is strongest, coronal through the lung
    centre) and the animated GIF of one subject."""
    if view.missing is not None:
        return f"<p class='note'>{esc(view.missing)}</p>"
    sid, affine = view.subject, view.affine
    diff_ras = figures.to_ras(view.diff, affine)[0]
    mask_ras = None if view.mask is None else figures.to_ras(view.mask, affine)[0]
    centre = figures.lung_centre(mask_ras, diff_ras.shape)
    if mask_ras is not None and mask_ras.any():
        where = "through the lung centre"
    else:
        where = "through the volume centre (lung mask not found)"
    # Axial: the level where the difference is strongest in the lungs, which a mid-lung
    # slice would miss for a zonal effect; coronal: through the lung centre, which shows the
    # upper, middle and lower zones together.
    axial = figures.strongest_slice(diff_ras, mask_ras, "axial")
    titles = ("factual", f"counterfactual: {edit}", "difference (mean over seeds)")
    panels = "".join(
        img(
            figures.slice_panel(
                view.factual,
                view.edited,
                view.diff,
                name,
                index,
                hu_window=window,
                diff_range=scale,
                affine=affine,
                titles=titles,
            ),
            "image/png",
            f"{name} slices of {sid}, {edit}",
        )
        for name, index in (("axial", axial), ("coronal", centre[1]))
    )
    caption = (
        f"Axial slice {axial + 1} where the mean |difference| in the lungs is largest "
        "(radiological view: patient right on image left, anterior up) and coronal "
        f"slice {where} (patient right on image left, superior up). Factual and "
        f"counterfactual of seed {esc(seeds[0]) if seeds else '?'} in a fixed window "
        f"of {esc(window[0])} to {esc(window[1])} HU; difference = counterfactual "
        f"&minus; factual averaged over {len(seeds)} seed(s), colour scale "
        f"&plusmn;{scale:.3g} HU (red higher, blue lower)."
    )
    gif = figures.slices_gif(
        view.factual,
        view.edited,
        view.diff,
        affine=affine,
        hu_window=window,
        diff_range=scale,
        mask=view.mask,
    )
    animation = figure(
        img(gif, "image/gif", f"axial slices of {sid}, {edit}", cls="gif"),
        "Animation through the axial slices (factual | counterfactual | difference), "
        f"same windows: {esc(window[0])} to {esc(window[1])} HU and &plusmn;{scale:.3g} HU.",
    )
    return figure(panels, caption) + animation
