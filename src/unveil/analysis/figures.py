"""Figures for the report: slice panels and an animated GIF (charts: :mod:`unveil.analysis.charts`).

Every function returns encoded image bytes (PNG or GIF) so the report can embed them as
``data:`` URIs; nothing is written to disk here.

Matplotlib is used through :class:`matplotlib.figure.Figure` and the Agg canvas directly,
never through ``pyplot``: that selects the Agg backend for these figures only, inside the
functions, without changing the process-wide backend or keeping figures alive in
pyplot's registry.  The GIF is assembled with Pillow from colour-mapped arrays (no
matplotlib figure per frame), which is about a hundred times faster.

Orientation (what a radiologist expects):

- volumes are first reoriented to RAS with nibabel (:func:`to_ras`), whatever the array
  order on disk, using the axis codes of the affine (``io_orientation``: the closest
  axis-aligned orientation, so a slightly oblique scan is shown on its nearest plane);
- **axial** slices are shown in the radiological convention, as if looking up from the
  patient's feet: anterior at the top, the patient's right on the image left;
- **coronal** slices as if facing the patient: superior at the top, patient's right on the
  image left;
- **sagittal** slices with superior at the top and anterior on the image left.

Pixel aspect follows the voxel spacing, so anisotropic scans are not distorted.  Letters
at the panel edges (R/L, A/P, S/I) say which side is which.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib
import nibabel as nib
import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from unveil.config import DEFAULT_HU_WINDOW

#: Axis of the RAS array that each view cuts across.
VIEW_AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}

#: Edge letters of each view: (top, bottom, left, right) of the displayed image.
_VIEW_LETTERS: dict[str, tuple[str, str, str, str]] = {
    "axial": ("A", "P", "R", "L"),
    "coronal": ("S", "I", "R", "L"),
    "sagittal": ("S", "I", "A", "P"),
}

#: GIF palette size: grey levels plus the diverging map need about a hundred colours; a
#: smaller palette compresses much better and the loss is not visible at this size.
PALETTE_COLOURS = 128

#: Diverging colour map for differences: blue = lower HU, red = higher HU, white = 0.
DIFF_CMAP = "RdBu_r"


# --------------------------------------------------------------------------- geometry


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient a volume to RAS (index increasing towards Right, Anterior, Superior).

    Args:
        array: ``(X, Y, Z)`` in any axis order / flips.
        affine: ``(4, 4)`` voxel -> RAS+ mm.

    Returns:
        ``(array_ras, spacing_ras)``: the reoriented array ``(R, A, S)`` (a view where
        possible) and its voxel size in mm along those axes.
    """
    affine = np.asarray(affine, dtype=np.float64)
    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(np.asarray(array), ornt)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    # ornt[i, 0] is the output axis that input axis i goes to.
    ras_spacing = [0.0, 0.0, 0.0]
    for i in range(3):
        ras_spacing[int(ornt[i, 0])] = float(spacing[i])
    return out, tuple(ras_spacing)  # type: ignore[return-value]


def view_slice(array_ras: np.ndarray, view: str, index: int) -> np.ndarray:
    """One slice of a RAS array as a display image (row 0 at the top, column 0 on the left).

    Args:
        array_ras: ``(R, A, S)`` array from :func:`to_ras`.
        view: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        index: slice index along the cut axis (S for axial, A for coronal, R for sagittal).

    Returns:
        2D array ``(rows, cols)``: axial ``(A, R)`` with anterior at row 0 and patient right
        at column 0; coronal ``(S, R)`` with superior at row 0, right at column 0; sagittal
        ``(S, A)`` with superior at row 0, anterior at column 0.
    """
    axis = _view_axis(view)
    s = np.take(array_ras, int(index), axis=axis)
    # After taking the slice the remaining axes are in RAS order; transpose so rows run
    # along the vertical anatomical axis, then flip both so that the larger coordinate
    # (anterior / superior rows, right columns) comes first.
    return s.T[::-1, ::-1]


def _view_axis(view: str) -> int:
    if view not in VIEW_AXES:
        raise ValueError(f"view must be one of {', '.join(VIEW_AXES)}, got {view!r}")
    return VIEW_AXES[view]


def _view_aspect(spacing_ras: Sequence[float], view: str) -> float:
    """Pixel height / width in mm of :func:`view_slice` images."""
    axes = [a for a in range(3) if a != _view_axis(view)]
    col_axis, row_axis = axes[0], axes[1]
    return float(spacing_ras[row_axis]) / float(spacing_ras[col_axis])


def lung_centre(
    mask_ras: np.ndarray | None, shape: Sequence[int] | None = None
) -> tuple[int, int, int]:
    """The centre that every "mid-lung" slice of a figure goes through (report and maps).

    The one rule: the **centroid of the lung mask**, rounded to the nearest voxel (ties to
    even, :func:`numpy.rint`); the grid centre ``s // 2`` per axis when there is no mask or
    it is empty.  The centroid rather than the bounding-box centre because one stray voxel
    of an automatic lung mask (an island in the bowel or the trachea) moves a bounding box
    but hardly a centroid, and because the centroid sits where the lung volume is, so the
    slice through it cuts much lung.

    Args:
        mask_ras: bool ``(R, A, S)`` (the lungs), or None.
        shape: the grid shape when ``mask_ras`` is None.

    Returns:
        RAS voxel indices ``(r, a, s)``: the sagittal, coronal and axial slice indices.
    """
    if mask_ras is None:
        if shape is None:
            raise ValueError("lung_centre needs a mask or a grid shape")
        return tuple(int(s // 2) for s in shape)  # type: ignore[return-value]
    idx = np.argwhere(mask_ras)
    if idx.size == 0:
        return tuple(int(s // 2) for s in mask_ras.shape)  # type: ignore[return-value]
    c = np.rint(idx.mean(axis=0)).astype(int)
    return tuple(int(v) for v in c)  # type: ignore[return-value]


def display_slices(volume: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Axial and coronal slices of ``volume`` through :func:`lung_centre` of ``mask``.

    Reoriented with :func:`to_ras` and cut with :func:`view_slice`, so the images follow
    this module's orientation (radiological: patient right on the image left, anterior
    (axial) or superior (coronal) in row 0, for ``imshow`` with its default
    ``origin="upper"``) whatever the array order on disk.

    Args:
        volume: ``(X, Y, Z)`` values; mask: bool ``(X, Y, Z)`` (the lungs) whose centroid
            chooses the slices (the grid centre when it is empty).
        affine: ``(4, 4)`` voxel -> RAS mm.

    Returns:
        ``{"axial", "axial_mask", "coronal", "coronal_mask"}`` 2D arrays (rows, columns),
        ``"axial_aspect"`` / ``"coronal_aspect"`` (row mm / column mm, for ``aspect=``)
        and ``"centre"`` (RAS voxel indices of the slices).
    """
    vol_ras, spacing = to_ras(volume, affine)
    mask_ras = to_ras(np.asarray(mask, dtype=bool), affine)[0]
    centre = lung_centre(mask_ras)
    return {
        "axial": view_slice(vol_ras, "axial", centre[2]),
        "axial_mask": view_slice(mask_ras, "axial", centre[2]),
        "coronal": view_slice(vol_ras, "coronal", centre[1]),
        "coronal_mask": view_slice(mask_ras, "coronal", centre[1]),
        "axial_aspect": _view_aspect(spacing, "axial"),
        "coronal_aspect": _view_aspect(spacing, "coronal"),
        "centre": centre,
    }


def strongest_slice(diff_ras: np.ndarray, mask_ras: np.ndarray | None, view: str) -> int:
    """Index of the slice of ``view`` with the largest mean ``|diff|`` inside the mask.

    Args:
        diff_ras: ``(R, A, S)`` difference map in HU.
        mask_ras: bool ``(R, A, S)`` (the lungs) or None for the whole slice.
        view: ``"axial"``, ``"coronal"`` or ``"sagittal"``.

    A slice through the lung centre can miss an effect confined to one zone (an upper-lung
    shift is invisible on the mid-lung axial slice), so the report also shows this one.
    Slices without mask voxels are never chosen when the mask has any.
    """
    axis = _view_axis(view)
    d = np.abs(np.nan_to_num(np.asarray(diff_ras, dtype=np.float64)))
    other = tuple(a for a in range(3) if a != axis)
    if mask_ras is not None and np.any(mask_ras):
        m = np.asarray(mask_ras, dtype=bool)
        count = m.sum(axis=other)
        total = np.where(m, d, 0.0).sum(axis=other)
        score = np.where(count > 0, total / np.maximum(count, 1), -1.0)
    else:
        score = d.mean(axis=other)
    return int(np.argmax(score))


def robust_diff_range(
    diff_hu: np.ndarray, mask: np.ndarray | None = None, q: float = 99.0
) -> float:
    """Symmetric colour limit for a difference map: the ``q``-th percentile of ``|diff|``.

    Taken inside ``mask`` when it has voxels (the lungs: that is where effects are read), at
    least 1 HU so a pure-noise map is not stretched into apparent structure.
    """
    d = np.abs(np.asarray(diff_hu, dtype=np.float64))
    if mask is not None and np.any(mask):
        d = d[np.asarray(mask, dtype=bool)]
    d = d[np.isfinite(d)]
    if d.size == 0:
        return 1.0
    return max(1.0, float(np.percentile(d, q)))


# --------------------------------------------------------------------------- encoding


def _new_figure(width: float, height: float, layout: str | None = "constrained"):
    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    # No Software metadata: the report must not carry any URL, even inside an image chunk.
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


# --------------------------------------------------------------------------- slice panels


def slice_panel(
    factual_hu: np.ndarray,
    edited_hu: np.ndarray,
    diff_hu: np.ndarray,
    axis: str,
    index: int | None = None,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    diff_range: float | None = None,
    affine: np.ndarray | None = None,
    titles: tuple[str, str, str] = ("factual", "counterfactual", "difference"),
) -> bytes:
    """Factual, counterfactual and difference slices side by side, as PNG bytes.

    Args:
        factual_hu, edited_hu, diff_hu: volumes ``(X, Y, Z)`` in HU on one grid.
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        index: slice index along that axis *in the RAS grid* (see :func:`to_ras`; use
            :func:`lung_centre` on the reoriented mask); default the middle slice.
        hu_window: fixed grey window (HU) of the first two panels, the same for every
            subject so that intensities compare across images.
        diff_range: the difference colour map spans ``[-diff_range, +diff_range]`` HU,
            symmetric around 0 (default :func:`robust_diff_range` of ``diff_hu``).
        affine: ``(4, 4)`` voxel -> RAS mm of the volumes; when given they are reoriented
            to RAS first and drawn with the physical pixel aspect; when None they are
            taken to be RAS already with isotropic voxels.
        titles: the three panel titles.

    Returns:
        PNG bytes: grey panels with a colour bar labelled ``HU``, a diverging difference
        panel with a colour bar labelled ``HU difference``.
    """
    vols = _three_volumes(factual_hu, edited_hu, diff_hu)
    if affine is not None:
        ras = [to_ras(v, affine) for v in vols]
        vols = [r[0] for r in ras]
        spacing = ras[0][1]
    else:
        spacing = (1.0, 1.0, 1.0)
    ax_i = _view_axis(axis)
    n = vols[0].shape[ax_i]
    index = n // 2 if index is None else int(np.clip(index, 0, n - 1))
    if diff_range is None:
        diff_range = robust_diff_range(vols[2])
    diff_range = float(diff_range) if diff_range and diff_range > 0 else 1.0
    imgs = [view_slice(v, axis, index) for v in vols]
    lo, hi = float(hu_window[0]), float(hu_window[1])
    img_w, img_h = _panel_size(imgs[0].shape, _view_aspect(spacing, axis))
    fig, axes, caxes = _panel_axes(img_w, img_h)
    specs = [
        (imgs[0], "gray", lo, hi, "HU"),
        (imgs[1], "gray", lo, hi, "HU"),
        (imgs[2], DIFF_CMAP, -diff_range, diff_range, "HU difference"),
    ]
    for ax, cax, (img, cmap, vmin, vmax, label), title in zip(
        axes, caxes, specs, titles, strict=True
    ):
        im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
        ax.set_title(textwrap.fill(title, width=max(14, int(img_w * 13))), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        _edge_letters(ax, axis)
        cb = fig.colorbar(im, cax=cax)
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    fig.suptitle(
        f"{axis} slice {index + 1}/{n}; window {lo:g} to {hi:g} HU; "
        f"difference \u00b1{diff_range:.3g} HU",
        fontsize=9,
        y=1 - 0.04 / fig.get_figheight(),
        va="top",
    )
    return _png(fig)


def _three_volumes(*volumes: np.ndarray) -> list[np.ndarray]:
    """factual, edited and diff as float32, refused unless 3D volumes of one shape."""
    vols = [np.asarray(v, dtype=np.float32) for v in volumes]
    if not (vols[0].shape == vols[1].shape == vols[2].shape) or vols[0].ndim != 3:
        raise ValueError(
            f"factual, edited and diff must be 3D volumes of one shape, got "
            f"{[v.shape for v in vols]}"
        )
    return vols


def _panel_size(shape: tuple[int, int], aspect: float) -> tuple[float, float]:
    """Width and height (inches) of one panel from the physical shape of its slice: at most
    3 in tall and 4.5 in wide."""
    rows, cols = shape
    img_h = 3.0
    img_w = img_h * cols / max(1e-6, rows * aspect)
    if img_w > 4.5:
        img_w, img_h = 4.5, 4.5 * rows * aspect / cols
    return max(img_w, 0.8), img_h


def _panel_axes(img_w: float, img_h: float):
    """A figure with three image axes and their colour-bar axes side by side.

    Axes are placed explicitly rather than by the "constrained" solver: the shapes are
    known, and the solver would double the drawing time of the report.
    """
    gap, cb_w, cb_room, margin, top_room = 0.08, 0.14, 0.75, 0.1, 0.62
    slot = img_w + gap + cb_w + cb_room
    fig_w, fig_h = margin + 3 * slot, img_h + top_room + margin
    fig = _new_figure(fig_w, fig_h, layout=None)
    axes, caxes = [], []
    for p in range(3):
        x0 = margin + p * slot
        axes.append(fig.add_axes((x0 / fig_w, margin / fig_h, img_w / fig_w, img_h / fig_h)))
        caxes.append(
            fig.add_axes(((x0 + img_w + gap) / fig_w, margin / fig_h, cb_w / fig_w, img_h / fig_h))
        )
    return fig, axes, caxes


def _edge_letters(ax, view: str) -> None:
    """The side letters of a view at the panel's edges (yellow with a black outline, legible
    on black lungs and on a white, zero, difference panel alike)."""
    outline = [patheffects.withStroke(linewidth=2, foreground="black")]
    places = [
        (0.5, 0.98, "center", "top"),
        (0.5, 0.02, "center", "bottom"),
        (0.02, 0.5, "left", "center"),
        (0.98, 0.5, "right", "center"),
    ]
    for (x, y, ha, va), letter in zip(places, _VIEW_LETTERS[view], strict=True):
        ax.text(
            x,
            y,
            letter,
            transform=ax.transAxes,
            ha=ha,
            va=va,
            fontsize=8,
            color="yellow",
            fontweight="bold",
            path_effects=outline,
        )


# --------------------------------------------------------------------------- GIF


def _grey_rgb(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    g = np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    g = np.nan_to_num(g)
    u8 = (g * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(u8[..., None], 3, axis=-1)


def _diff_rgb(img: np.ndarray, diff_range: float) -> np.ndarray:
    cmap = matplotlib.colormaps[DIFF_CMAP]
    t = np.nan_to_num(np.clip((img / diff_range + 1.0) / 2.0, 0.0, 1.0), nan=0.5)
    return (cmap(t)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def slices_gif(
    factual_hu: np.ndarray,
    edited_hu: np.ndarray,
    diff_hu: np.ndarray,
    affine: np.ndarray | None = None,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    diff_range: float | None = None,
    mask: np.ndarray | None = None,
    panel_px: int = 128,
    max_frames: int = 40,
    frame_ms: int = 150,
    max_bytes: int = 2_000_000,
) -> bytes:
    """An animated GIF through the axial slices: factual | counterfactual | difference.

    Args:
        factual_hu, edited_hu, diff_hu: ``(X, Y, Z)`` HU volumes on one grid.
        affine: ``(4, 4)`` voxel -> RAS mm (reorient to RAS and keep the physical aspect);
            None: the arrays are RAS with isotropic voxels.
        hu_window: fixed grey window of the first two panels.
        diff_range: difference colours span ``[-diff_range, diff_range]`` HU (default
            :func:`robust_diff_range` inside ``mask``).
        mask: optional bool ``(X, Y, Z)`` (the lungs): frames are limited to the slices
            that contain it (plus a small margin), where the effects are read.
        panel_px: longest side of each panel in pixels (panels are downscaled to keep the
            file small).
        max_frames: at most this many frames (slices are sub-sampled evenly).
        frame_ms: display time of each frame.
        max_bytes: if the GIF is larger, it is rebuilt with smaller panels and fewer frames.

    Returns:
        GIF bytes, looping forever, one frame per shown slice (at least two frames when
        the volume has more than one axial slice).
    """
    vols = _three_volumes(factual_hu, edited_hu, diff_hu)
    m = None if mask is None else np.asarray(mask, dtype=bool)
    if affine is not None:
        vols = [to_ras(v, affine)[0] for v in vols]
        spacing = _ras_spacing(affine)
        if m is not None:
            m = to_ras(m, affine)[0]
    else:
        spacing = (1.0, 1.0, 1.0)
    if diff_range is None:
        diff_range = robust_diff_range(vols[2], m)
    window = (float(hu_window[0]), float(hu_window[1]))
    nz = vols[0].shape[2]
    z0, z1 = 0, nz - 1
    if m is not None and m.any():
        zs = np.nonzero(m.any(axis=(0, 1)))[0]
        margin = max(1, (zs[-1] - zs[0]) // 10)
        z0, z1 = max(0, int(zs[0]) - margin), min(nz - 1, int(zs[-1]) + margin)
    # Physical size of an axial image: columns along R (x spacing), rows along A.
    size_mm = (vols[0].shape[0] * spacing[0], vols[0].shape[1] * spacing[1])

    def build(px: int, frames_wanted: int) -> bytes:
        zidx = np.unique(
            np.linspace(z0, z1, num=min(frames_wanted, z1 - z0 + 1)).round().astype(int)
        )
        if zidx.size < 2 and nz > 1:
            zidx = np.array([0, nz - 1])
        frames = _gif_frames(vols, zidx, size_mm, px, window, diff_range)
        return _encode_gif(frames, frame_ms)

    px, n_frames = int(panel_px), int(max_frames)
    data = build(px, n_frames)
    while len(data) > max_bytes and (px > 48 or n_frames > 8):
        px, n_frames = max(48, int(px * 0.75)), max(8, int(n_frames * 0.75))
        data = build(px, n_frames)
    return data


def _gif_frames(
    vols: Sequence[np.ndarray],
    zidx: np.ndarray,
    size_mm: tuple[float, float],
    px: int,
    window: tuple[float, float],
    diff_range: float,
) -> list[Any]:
    """One RGB image per axial slice of ``zidx``: three labelled panels, ``px`` on the
    longest side of each, ``size_mm`` (width, height) the physical size of a slice."""
    width_mm, height_mm = size_mm
    scale = px / max(height_mm, width_mm)
    w = max(8, int(round(width_mm * scale)))
    h = max(8, int(round(height_mm * scale)))
    label_h, nz = 14, vols[0].shape[2]
    lo, hi = window
    frames = []
    for k in zidx:
        sl = [view_slice(v, "axial", int(k)) for v in vols]
        rgb = [_grey_rgb(sl[0], lo, hi), _grey_rgb(sl[1], lo, hi), _diff_rgb(sl[2], diff_range)]
        canvas = Image.new("RGB", (3 * w + 4, h + label_h), (0, 0, 0))
        for p, arr in enumerate(rgb):
            tile = Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR)
            canvas.paste(tile, (p * (w + 2), label_h))
        draw = ImageDraw.Draw(canvas)
        draw.text((2, 1), f"factual  z {k + 1}/{nz}", fill=(255, 255, 255))
        draw.text((w + 4, 1), "counterfactual", fill=(255, 255, 255))
        draw.text(
            (2 * w + 6, 1),
            f"diff \u00b1{diff_range:.3g}".replace("\u00b1", "+/-"),
            fill=(255, 255, 255),
        )
        frames.append(canvas)
    return frames


def _encode_gif(frames: Sequence[Any], frame_ms: int) -> bytes:
    """The frames as a looping GIF with one shared palette (from a montage of a few frames,
    so colours do not flicker between frames) and no dithering (the frames compress well)."""
    sample = frames[:: max(1, len(frames) // 6)]
    montage = Image.new("RGB", (frames[0].width, frames[0].height * len(sample)))
    for i, f in enumerate(sample):
        montage.paste(f, (0, i * f.height))
    palette = montage.quantize(colors=PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT)
    pal_frames = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    buf = io.BytesIO()
    pal_frames[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=pal_frames[1:],
        duration=int(frame_ms),
        loop=0,
        disposal=1,
        optimize=False,
    )
    return buf.getvalue()


def _ras_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return to_ras(np.zeros((1, 1, 1), dtype=np.uint8), affine)[1]
