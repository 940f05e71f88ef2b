"""Paired fidelity of a generated CT against the real scan of the same subject, and Dice.

A generated volume made from a subject's own mask (and clinical sentence) can be set voxel
by voxel beside that subject's real scan.  :func:`paired_fidelity` returns, for one
subject, the figures the evaluation reports, each overall, inside the lung mask and
outside it:

- ``mae_hu*``: mean absolute error in Hounsfield units;
- ``psnr*``: peak signal-to-noise ratio in dB;
- ``ssim*``: 3D structural similarity;
- ``ms_ssim``: 3D multi-scale SSIM of the whole volume, or ``None`` with a reason in
  ``ms_ssim_reason`` when the volume is too small for its kernel and number of scales.

Conventions (the same for every subject, so the figures are comparable):

- Both volumes are clipped to the fixed HU window (``preprocess.hu_window``, default
  :data:`unveil.config.DEFAULT_HU_WINDOW`, ``(-1000, 500)``) before anything is measured: the generator can only produce HU inside
  that window (its output is the window mapped back to HU), so an error on bone above
  500 HU is a property of the window, not of the model.  MAE is therefore in HU of the
  clipped volumes.
- PSNR uses ``data_range`` = the window width (1500 HU by default).  Identical volumes
  give ``mse = 0`` and PSNR ``= inf``; it is reported as ``inf``, never replaced by a
  made-up number.  Averaging ``inf`` gives ``inf``: aggregate PSNR across subjects with
  :func:`unveil.metrics.intervals.summarize` using ``statistic="median"`` (finite as long
  as fewer than half of the subjects are perfect) or cap it at a stated value first.
- SSIM runs on the window mapped linearly to ``[0, 1]`` (``data_range = 1``) with the
  formula of MONAI's :func:`~monai.metrics.regression.compute_ssim_and_cs` (Gaussian
  window, sigma 1.5, size 11, or the largest odd size that fits the smallest axis of a
  small volume; the size used is returned as ``ssim_kernel``), applied as a separable
  filter because MONAI's full 3D kernel is ~6x slower on CPU; the tests check that the
  values equal MONAI's ``compute_ssim_and_cs`` / ``compute_ms_ssim``.  The SSIM map comes
  from a *valid* convolution, so it covers the voxels at least ``(k - 1) / 2`` from every
  face; the lung / outside SSIM is the mean of that map over the mask restricted to those
  voxels (``None`` when none remain).
- *Outside the lung* is every voxel not in the lung mask, and, when ``body_mask`` is
  given, inside the body.  Without a body mask the air around the patient is counted,
  and since both volumes clip it to -1000 HU it flatters the outside figures; pass
  :func:`body_mask` of the real scan to avoid that.
- ``lung_mask`` is any array whose non-zero voxels are lung (for the default chest label
  map: ``np.isin(labels, (1, 2))``; the airway is not lung).

Mask consistency (``unveil lungmask`` re-run on the generated CT against the mask the
model was given) is measured with :func:`dice` / :func:`mask_consistency`.

Inputs are numpy arrays ``(X, Y, Z)`` on the same grid; the results are plain Python
floats (or ``None``) so they go straight into JSON and into
:func:`unveil.metrics.intervals.summarize`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from unveil.config import DEFAULT_HU_WINDOW

if TYPE_CHECKING:
    import torch

#: The standard MS-SSIM scale weights (Wang, Simoncelli & Bovik 2003), finest scale first.
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def window01(hu: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """Clip HU to ``hu_window`` and map it linearly to ``[0, 1]`` (float64, same shape)."""
    lo, hi = _check_window(hu_window)
    return (np.clip(np.asarray(hu, dtype=np.float64), lo, hi) - lo) / (hi - lo)


def ms_ssim_min_size(kernel_size: int, scales: int) -> int:
    """Smallest axis length on which 3D MS-SSIM with this kernel and number of scales runs.

    MS-SSIM halves the volume ``scales - 1`` times (average pooling, floor) and computes
    SSIM with a *valid* convolution at every scale, so the coarsest scale needs at least
    ``kernel_size`` voxels: ``N // 2**(scales - 1) >= kernel_size``, i.e.
    ``N >= kernel_size * 2**(scales - 1)``: 176 for the classic 11-voxel kernel with 5
    scales, 112 for 7 and 5.
    """
    if kernel_size < 1 or scales < 1:
        raise ValueError(f"kernel_size and scales must be >= 1, got {kernel_size} and {scales}")
    return kernel_size * 2 ** (scales - 1)


def paired_fidelity(
    real_hu: np.ndarray,
    fake_hu: np.ndarray,
    lung_mask: np.ndarray,
    hu_window: tuple[float, float] = DEFAULT_HU_WINDOW,
    *,
    body_mask: np.ndarray | None = None,
    ssim_kernel: int = 11,
    ssim_sigma: float = 1.5,
    ms_ssim_kernel: int = 7,
    ms_ssim_scales: int = 5,
) -> dict[str, float | int | str | None]:
    """Voxel-wise fidelity of one generated CT against the real one (see the module text).

    Args:
        real_hu: the real CT in HU, ``(X, Y, Z)``.
        fake_hu: the generated CT in HU on the same grid, ``(X, Y, Z)``.
        lung_mask: ``(X, Y, Z)``, non-zero = lung.
        hu_window: ``(low, high)`` HU; both volumes are clipped to it first.
        body_mask: optional ``(X, Y, Z)``, non-zero = body; limits "outside the lung" to
            the body (see :func:`body_mask`).
        ssim_kernel: SSIM Gaussian window size (reduced to fit small volumes).
        ssim_sigma: SSIM Gaussian sigma in voxels.
        ms_ssim_kernel: MS-SSIM window size.  7 rather than the 2D habit of 11 because
            11 with 5 scales needs 176 voxels on every axis, more than many chest CTs at
            1.5 mm have in the antero-posterior direction.
        ms_ssim_scales: number of MS-SSIM scales (1..5); the first ``ms_ssim_scales``
            standard weights are used, renormalised to sum to 1.

    Returns:
        A dict with ``mae_hu``, ``mae_hu_lung``, ``mae_hu_outside`` (HU), ``psnr``,
        ``psnr_lung``, ``psnr_outside`` (dB, ``inf`` when identical), ``ssim``,
        ``ssim_lung``, ``ssim_outside``, ``ms_ssim`` (float or ``None``),
        ``ms_ssim_reason`` (``None`` or one sentence), ``ssim_kernel`` (the size used),
        ``n_lung``, ``n_outside`` (voxel counts).  A figure over an empty region is
        ``None``.
    """
    real = np.asarray(real_hu, dtype=np.float64)
    fake = np.asarray(fake_hu, dtype=np.float64)
    if real.ndim != 3 or real.shape != fake.shape:
        raise ValueError(
            f"real_hu and fake_hu must be 3D arrays of the same shape, got {real.shape} and "
            f"{fake.shape}; resample the generated CT onto the real grid first."
        )
    lung = _as_mask(lung_mask, real.shape, "lung_mask")
    outside = ~lung
    if body_mask is not None:
        outside &= _as_mask(body_mask, real.shape, "body_mask")
    lo, hi = _check_window(hu_window)

    real_c = np.clip(real, lo, hi)
    fake_c = np.clip(fake, lo, hi)
    width = hi - lo
    out = _error_figures(real_c, fake_c, lung, outside, width)
    real01 = (real_c - lo) / width
    fake01 = (fake_c - lo) / width
    out.update(_ssim_figures(real01, fake01, lung, outside, ssim_kernel, ssim_sigma))
    ms, reason = _ms_ssim(real01, fake01, ms_ssim_kernel, ms_ssim_scales, ssim_sigma)
    out["ms_ssim"] = ms
    out["ms_ssim_reason"] = reason
    out["n_lung"] = int(lung.sum())
    out["n_outside"] = int(outside.sum())
    return out


def _error_figures(
    real_c: np.ndarray, fake_c: np.ndarray, lung: np.ndarray, outside: np.ndarray, width: float
) -> dict[str, float | int | str | None]:
    """MAE (HU) and PSNR (dB) of the window-clipped volumes: whole, lung and outside."""
    abs_err = np.abs(fake_c - real_c)
    sq_err = abs_err**2
    out: dict[str, float | int | str | None] = {}
    # MONAI's MAEMetric / PSNRMetric have no mask argument; the region figures need one,
    # and a mean of |error| or error^2 over a boolean mask is a single numpy line.
    out["mae_hu"] = float(abs_err.mean())
    out["mae_hu_lung"] = _masked_mean(abs_err, lung)
    out["mae_hu_outside"] = _masked_mean(abs_err, outside)
    out["psnr"] = _psnr(float(sq_err.mean()), width)
    out["psnr_lung"] = _psnr(_masked_mean(sq_err, lung), width)
    out["psnr_outside"] = _psnr(_masked_mean(sq_err, outside), width)
    return out


def _ssim_figures(
    real01: np.ndarray,
    fake01: np.ndarray,
    lung: np.ndarray,
    outside: np.ndarray,
    ssim_kernel: int,
    ssim_sigma: float,
) -> dict[str, float | int | str | None]:
    """SSIM (whole, lung, outside; ``None`` below a 3-voxel window) and the kernel used."""
    out: dict[str, float | int | str | None] = {}
    # Odd, so the map voxel i is centred on volume voxel i + (k - 1) / 2 exactly.
    k = _largest_odd(min(int(ssim_kernel), min(real01.shape)))
    if k < 3:
        out.update(ssim=None, ssim_lung=None, ssim_outside=None)
    else:
        ssim_map = _ssim_map(real01, fake01, k, ssim_sigma)
        r = (k - 1) // 2
        inner = tuple(slice(r, r + n) for n in ssim_map.shape)
        out["ssim"] = float(ssim_map.mean())
        out["ssim_lung"] = _masked_mean(ssim_map, lung[inner])
        out["ssim_outside"] = _masked_mean(ssim_map, outside[inner])
    out["ssim_kernel"] = k
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2|A & B| / (|A| + |B|)`` of two masks (non-zero = inside).

    Written directly rather than with MONAI's ``DiceMetric`` because that one works on
    one-hot batches and returns NaN (or, with ``ignore_empty=False``, 1) for an empty
    reference depending on a flag; here the rule is explicit: two empty masks agree
    perfectly and give 1.0, one empty and one not give 0.0.
    """
    a = np.asarray(a) != 0
    b = np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def mask_consistency(
    derived_labels: np.ndarray,
    input_labels: np.ndarray,
    labels: Mapping[str, int | tuple[int, ...]],
) -> dict[str, float]:
    """Dice per named structure between a label map re-derived from the generated CT and
    the label map the model was given.

    Args:
        derived_labels: ``(X, Y, Z)`` integer labels from ``unveil lungmask`` (i.e.
            :func:`unveil.data.lungmask.lungmask`) run on the generated CT.
        input_labels: ``(X, Y, Z)`` the input mask on the same grid.
        labels: structure name -> label value or values, e.g.
            ``{"lung": (1, 2), "right_lung": 1, "left_lung": 2, "airway": 3}``.

    Returns:
        ``{"dice_<name>": Dice}`` for every entry of ``labels``.
    """
    derived = np.asarray(derived_labels)
    given = np.asarray(input_labels)
    out: dict[str, float] = {}
    for name, values in labels.items():
        vals = tuple(values) if isinstance(values, (tuple, list)) else (values,)
        out[f"dice_{name}"] = dice(np.isin(derived, vals), np.isin(given, vals))
    return out


def body_mask(hu: np.ndarray, body_hu: float = -500.0, axis: int = 2) -> np.ndarray:
    """The body of a CT: the largest component above ``body_hu``, holes filled per slice.

    Holes are filled in each slice across ``axis`` (axial for ``(X, Y, Z)`` arrays) so the
    lungs, which open to the airway in 3D, count as inside the body.  Returns a bool
    array of the shape of ``hu`` (all False when nothing exceeds ``body_hu``).
    """
    # lazy scipy.ndimage (~0.6 s): report and compare import unveil.metrics but never use it
    from scipy import ndimage as ndi

    hu = np.asarray(hu)
    lab, n = ndi.label(hu > body_hu)
    if n == 0:
        return np.zeros(hu.shape, dtype=bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    moved = np.moveaxis(body, axis, 0)
    filled = np.stack([ndi.binary_fill_holes(s) for s in moved])
    return np.moveaxis(filled, 0, axis)


# --------------------------------------------------------------------------- helpers


def _check_window(hu_window: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in hu_window)
    if not hi > lo:
        raise ValueError(f"hu_window must be (low, high) with low < high, got {hu_window}")
    return lo, hi


def _as_mask(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    m = np.asarray(mask) != 0
    if m.shape != shape:
        raise ValueError(f"{name} has shape {m.shape} but the volumes have shape {shape}")
    return m


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> float | None:
    n = int(mask.sum())
    return float(values[mask].mean()) if n else None


def _psnr(mse: float | None, data_range: float) -> float | None:
    if mse is None:
        return None
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _largest_odd(n: int) -> int:
    return n if n % 2 == 1 else n - 1


def _gauss1d(kernel: int, sigma: float) -> torch.Tensor:
    """MONAI's normalised 1D Gaussian (``_gaussian_kernel``), as a float32 tensor ``(k,)``."""
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch

    dist = torch.arange(start=(1 - kernel) / 2, end=(1 + kernel) / 2, step=1)
    g = torch.exp(-torch.pow(dist / sigma, 2) / 2)
    return g / g.sum()


def _ssim_and_cs(
    x: torch.Tensor, y: torch.Tensor, kernel: int, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-sensitivity maps of two ``(1, 1, X, Y, Z)`` tensors in ``[0, 1]``.

    The formula of MONAI's :func:`~monai.metrics.regression.compute_ssim_and_cs` (k1 0.01,
    k2 0.03, data range 1, valid convolution), but the Gaussian window is applied as
    three 1D convolutions: MONAI convolves with the full ``k^3`` kernel, which took 36 s
    for one 233x167x191 CT with k = 11 on two CPU cores, against 6 s here.  The 3D
    kernel is the outer product of the same normalised 1D kernels, so the maps agree with
    MONAI's to float32 round-off (checked in the tests).  Output ``(X-k+1, Y-k+1, Z-k+1)``
    maps, float32 tensors.
    """
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch.nn.functional as F

    g = _gauss1d(kernel, sigma).to(x)
    weights = (g.view(1, 1, -1, 1, 1), g.view(1, 1, 1, -1, 1), g.view(1, 1, 1, 1, -1))

    def blur(t: torch.Tensor) -> torch.Tensor:
        for w in weights:
            t = F.conv3d(t, w)
        return t

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    sigma_x = blur(x * x) - mu_x * mu_x
    sigma_y = blur(y * y) - mu_y * mu_y
    sigma_xy = blur(x * y) - mu_x * mu_y
    cs = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    ssim = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return ssim[0, 0], cs[0, 0]


def _ssim_map(real01: np.ndarray, fake01: np.ndarray, kernel: int, sigma: float) -> np.ndarray:
    """3D SSIM map (valid convolution), shape ``(X-k+1, Y-k+1, Z-k+1)``, float64."""
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch

    with torch.no_grad():
        ssim, _ = _ssim_and_cs(_tensor(fake01), _tensor(real01), kernel, sigma)
    return ssim.double().numpy()


def _ms_ssim(
    real01: np.ndarray, fake01: np.ndarray, kernel: int, scales: int, sigma: float
) -> tuple[float | None, str | None]:
    """MS-SSIM as MONAI's :func:`~monai.metrics.regression.compute_ms_ssim` computes it
    (mean CS at every scale but the last, mean SSIM at the last, each clamped at 0, raised
    to its weight and multiplied; 2x average pooling between scales), on the separable
    :func:`_ssim_and_cs` for speed."""
    if not 1 <= scales <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"ms_ssim_scales must be 1..{len(MS_SSIM_WEIGHTS)}, got {scales}")
    need = ms_ssim_min_size(kernel, scales)
    small = min(real01.shape)
    if small < need:
        return None, (
            f"MS-SSIM not computed: the volume {'x'.join(map(str, real01.shape))} has an axis of "
            f"{small} voxels but a {kernel}-voxel kernel over {scales} scales needs at least "
            f"{need} on every axis; SSIM is reported instead."
        )
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch
    import torch.nn.functional as F

    w = np.asarray(MS_SSIM_WEIGHTS[:scales], dtype=np.float64)
    w = w / w.sum()
    x, y = _tensor(fake01), _tensor(real01)
    value = 1.0
    with torch.no_grad():
        for i in range(scales):
            ssim, cs = _ssim_and_cs(x, y, kernel, sigma)
            term = ssim if i == scales - 1 else cs
            value *= max(float(term.double().mean()), 0.0) ** float(w[i])
            if i < scales - 1:
                x, y = F.avg_pool3d(x, 2), F.avg_pool3d(y, 2)
    return value, None


def _tensor(a: np.ndarray) -> torch.Tensor:
    """``(X, Y, Z)`` numpy -> ``(1, 1, X, Y, Z)`` float32 torch tensor."""
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
