"""The difference maps of ``unveil analyze``: written once per subject and contrast, read
back by the report.

``RUN/analysis/maps/<id>/<contrast>_mean_diff.nii.gz`` is the mean over seeds of (edited -
factual) in HU on the source grid (``noise_floor``: floor - factual), and ``.png`` its
mid-lung axial and coronal slices on a fixed symmetric colour scale.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unveil.analysis.figures import display_slices
from unveil.data.io import Volume, read_volume, write_volume
from unveil.fs import atomic_path
from unveil.records import RunLayout

#: Colour-bar labels of an edit's map and of the noise floor's.
EDIT_LABEL = "HU (edited - factual, mean over seeds)"
FLOOR_LABEL = "HU (floor - factual, mean over seeds)"


def save_map_png(
    diff: np.ndarray,
    lung: np.ndarray,
    affine: np.ndarray,
    path: Path,
    title: str,
    limit_hu: float,
    label: str = EDIT_LABEL,
) -> None:
    """Axial and coronal mid-lung slices of a difference map with a diverging HU colour bar.

    Slices come from :func:`unveil.analysis.figures.display_slices` (radiological
    convention, through the lung centroid of :func:`~unveil.analysis.figures.lung_centre`,
    lung outline drawn), on a fixed symmetric scale ``[-limit_hu, +limit_hu]`` so maps of
    different subjects and edits compare by eye.

    Args:
        diff: HU difference, ``(X, Y, Z)``; lung: bool lung mask on the same grid.
        affine: ``(4, 4)`` voxel -> RAS mm.
        path: the PNG to write (atomically).
        label: the colour bar's label.
    """
    sl = display_slices(diff, lung, affine)
    centre = sl["centre"]
    # The object API with an explicit Agg canvas: no pyplot global state, no backend switch,
    # and fixed axes positions (layout engines cost more than the drawing at these sizes).
    fig = Figure(figsize=(9, 4.4))
    FigureCanvasAgg(fig)
    axes = [fig.add_axes((0.02, 0.05, 0.4, 0.8)), fig.add_axes((0.45, 0.05, 0.4, 0.8))]
    cax = fig.add_axes((0.88, 0.12, 0.02, 0.66))
    im = None
    for ax, view, name in (
        (axes[0], "axial", f"axial (slice {centre[2]})"),
        (axes[1], "coronal", f"coronal (slice {centre[1]})"),
    ):
        img, msk = sl[view], sl[f"{view}_mask"]
        im = ax.imshow(
            img, cmap="RdBu_r", vmin=-limit_hu, vmax=limit_hu, aspect=sl[f"{view}_aspect"]
        )
        if msk.any() and not msk.all():
            ax.contour(msk.astype(float), levels=[0.5], colors="k", linewidths=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.01, 0.5, "R", transform=ax.transAxes, fontsize=9, va="center")
        ax.text(0.97, 0.5, "L", transform=ax.transAxes, fontsize=9, va="center")
    cbar = fig.colorbar(im, cax=cax, extend="both")
    cbar.set_label(label)
    fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def write_subject_maps(
    out: Path,
    layout: RunLayout,
    subject: str,
    sums: Mapping[str, np.ndarray],
    n_seeds: int,
    lung: np.ndarray,
    affine: np.ndarray,
    limit_hu: float,
    floor_name: str,
) -> None:
    """The NIfTI and PNG map of each contrast of one subject, under ``out`` (the analysis
    folder being built) at the layout's map paths.

    Args:
        sums: contrast (and ``floor_name``) -> sum over seeds of the difference, float32.
        lung: bool lung mask on the subject's grid.
    """
    for name, total in sums.items():
        mean_map = (total / n_seeds).astype(np.float32)
        nifti = layout.map_nifti(subject, name).relative_to(layout.analysis_dir)
        write_volume(Volume(mean_map, affine), out / nifti)
        save_map_png(
            mean_map,
            lung,
            affine,
            out / layout.map_png(subject, name).relative_to(layout.analysis_dir),
            f"{subject}: {name} (mean of {n_seeds} seed(s))",
            limit_hu,
            FLOOR_LABEL if name == floor_name else EDIT_LABEL,
        )


def read_mean_map(layout: RunLayout, subject: str, contrast: str):
    """The map ``unveil analyze`` wrote for a subject and contrast (a
    :class:`~unveil.data.io.Volume`), or None when it is not there."""
    path = layout.map_nifti(subject, contrast)
    return read_volume(path) if path.is_file() else None
