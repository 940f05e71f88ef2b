"""Grid helpers of :mod:`unveil.data.lungmask`: axis order, world coordinates, boxes, morphology.

Every size is in millimetres (``spacing`` is the voxel size along each axis), so the same
steps work on a 1.5 mm scan and on a 6 mm grid of a generated volume.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def canonical(array: np.ndarray, affine: np.ndarray):
    """Reorder axes so the last one is axial and points superior.

    Returns the reordered array (a view), its affine, and a function that puts an array
    of the reordered shape back into the input's axis order.
    """
    affine = np.asarray(affine, dtype=np.float64)
    directions = affine[:3, :3] / np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    axial = int(np.argmax(np.abs(directions[2])))
    perm = [a for a in range(3) if a != axial] + [axial]
    arr = np.transpose(array, perm)
    aff = affine[:, [*perm, 3]].copy()
    flip = aff[2, 2] < 0
    if flip:
        arr = arr[:, :, ::-1]
        aff[:3, 3] += aff[:3, 2] * (arr.shape[2] - 1)
        aff[:3, 2] *= -1
    inverse = np.argsort(perm)

    def undo(out: np.ndarray) -> np.ndarray:
        if flip:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(np.transpose(out, inverse))

    return arr, aff, undo


def world_mm(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """World mm of voxel indices ``(..., 3)``."""
    return np.asarray(ijk, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]


def world_x(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """World x (mm) of every voxel of ``box``, shape of the box (broadcast, no index arrays)."""
    i, j, k = (np.arange(b.start, b.stop, dtype=np.float64) for b in box)
    return (
        affine[0, 0] * i[:, None, None]
        + affine[0, 1] * j[None, :, None]
        + affine[0, 2] * k[None, None, :]
        + affine[0, 3]
    )


def bbox(mask: np.ndarray, pad: np.ndarray | int = 0) -> tuple[slice, ...]:
    """Bounding box of the True voxels of ``mask``, widened by ``pad`` voxels and clipped."""
    pad = np.broadcast_to(np.asarray(pad, dtype=int), (mask.ndim,))
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        nz = np.nonzero(mask.any(axis=other))[0]
        out.append(
            slice(max(int(nz[0]) - pad[ax], 0), min(int(nz[-1]) + 1 + pad[ax], mask.shape[ax]))
        )
    return tuple(out)


def dilate_mm(mask: np.ndarray, spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """Dilation by a ball of ``radius_mm`` (no-op when it is below one voxel)."""
    if not mask.any() or radius_mm < float(spacing.min()):
        return mask
    box = bbox(mask, np.ceil(radius_mm / spacing).astype(int) + 1)
    out = mask.copy()
    out[box] = ndi.distance_transform_edt(~mask[box], sampling=spacing) <= radius_mm
    return out


def fill_holes_axial(mask: np.ndarray) -> np.ndarray:
    """``mask`` with the holes of every axial slice filled."""
    # Slice-wise: in 3D the lungs and vessels are not holes (the airway opens them
    # upwards, the hilum opens the vessels), in an axial slice they are.
    out = mask.copy()
    if not mask.any():
        return out
    bi, bj, _ = bbox(mask)
    for k in np.nonzero(mask.any(axis=(0, 1)))[0]:
        out[bi, bj, k] = ndi.binary_fill_holes(mask[bi, bj, k])
    return out


def block_mean(mask: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Fraction of True voxels in each ``factor`` block (the edge is padded with False)."""
    if np.all(factor == 1):
        return mask.astype(np.float32)
    shape = np.ceil(np.array(mask.shape) / factor).astype(int) * factor
    padded = np.zeros(shape, dtype=np.float32)
    padded[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    (a, b, c), (fa, fb, fc) = shape // factor, factor
    return padded.reshape(a, fa, b, fb, c, fc).mean(axis=(1, 3, 5))
