#!/usr/bin/env python
"""Derive the small real-anatomy test cohort ``tests/fixtures/chest_small`` from the real CT.

    python scripts/make_chest_fixture.py [--ct ../shared/data/chest_ct/ct.nii.gz]
                                         [--out tests/fixtures/chest_small] [--factor 4]

Steps: read the CT (1.5 mm, int16 HU); find the lungs and airway at full resolution with
:func:`unveil.data.lungmask.lungmask` only to choose the crop (the thorax: the slices of
the lungs and the airway plus ``--margin-mm``, the whole in-plane field of view, trimmed
to a multiple of ``--factor``); average blocks of
``factor^3`` voxels (1.5 mm x 4 = 6 mm); round to int16 HU; run ``lungmask`` on the small
image, so the committed mask is exactly what ``lungmask`` gives on the committed image;
write ``images/chest.nii.gz``, ``masks/chest.nii.gz``, ``clinical.csv`` (invented values,
see the README) and a copy of the source ``LICENSE``.  Every file is written atomically.

The block average is the area (anti-aliasing) downsampling that MONAI's
``Resize(mode="area")`` does with adaptive average pooling; for an integer factor it is
exact, so it is written with numpy here and needs no torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# One made-up row in the phantom template's codes (configs/templates/phantom.yaml), so
# `unveil prompts tests/fixtures/chest_small --template phantom` renders it.
CLINICAL_CSV = "id,age,sex,smoking,pack_years,diagnosis,blood_group\nchest,63,F,former,20,none,A\n"


def block_average(
    array: np.ndarray, affine: np.ndarray, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``factor^3`` blocks and the matching affine.

    Args:
        array: ``(X, Y, Z)`` with every size a multiple of ``factor``.
        affine: ``(4, 4)`` voxel -> world mm of ``array``.

    Returns:
        ``(X/f, Y/f, Z/f)`` float32 means, and the affine whose voxel centres are the block
        centres (voxel ``i`` of the result sits at input index ``f*i + (f-1)/2``).
    """
    x, y, z = (s // factor for s in array.shape)
    small = array.astype(np.float32).reshape(x, factor, y, factor, z, factor).mean(axis=(1, 3, 5))
    scale = np.eye(4)
    scale[:3, :3] *= factor
    scale[:3, 3] = (factor - 1) / 2.0
    return small, np.asarray(affine, dtype=np.float64) @ scale


def thorax_crop(mask: np.ndarray, spacing: tuple[float, ...], margin_mm: float, factor: int):
    """Index ranges: the axial range of the labelled voxels plus ``margin_mm``, the whole
    in-plane field of view (the scan is already framed on the chest; cutting it would cut
    the body), each trimmed to a multiple of ``factor`` on the side with more room."""
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.nonzero(mask.any(axis=other))[0]
        first, last = int(nz[0]), int(nz[-1]) + 1
        lo, hi = 0, mask.shape[ax]
        if ax == 2:
            pad = int(np.ceil(margin_mm / spacing[ax]))
            lo, hi = max(first - pad, 0), min(last + pad, hi)
        excess = (hi - lo) % factor
        if first - lo >= hi - last:
            from_lo = min(excess, first - lo)
        else:
            from_lo = excess - min(excess, hi - last)
        lo, hi = lo + from_lo, hi - (excess - from_lo)
        out.append(slice(lo, hi))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    from unveil.data.io import Volume, read_volume, write_volume
    from unveil.data.lungmask import lung_volume_litres, lungmask
    from unveil.fs import write_bytes, write_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", type=Path, default=ROOT.parent / "shared/data/chest_ct/ct.nii.gz")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/chest_small")
    parser.add_argument("--factor", type=int, default=4, help="block size (1.5 mm x 4 = 6 mm)")
    parser.add_argument("--margin-mm", type=float, default=12.0)
    args = parser.parse_args(argv)

    ct = read_volume(args.ct)
    full = lungmask(ct)
    box = thorax_crop(full.array > 0, ct.spacing, args.margin_mm, args.factor)
    origin = np.eye(4)
    origin[:3, 3] = [s.start for s in box]
    small, affine = block_average(ct.array[box], ct.affine @ origin, args.factor)
    image = Volume(np.round(small).astype(np.int16), affine)
    mask = lungmask(image)

    write_volume(image, args.out / "images/chest.nii.gz")
    write_volume(mask, args.out / "masks/chest.nii.gz")
    write_text(args.out / "clinical.csv", CLINICAL_CSV)
    licence = args.ct.parent / "LICENSE"
    write_bytes(args.out / "LICENSE", licence.read_bytes())

    labels = {"right_lung": 1, "left_lung": 2, "airway": 3}
    vols_full = lung_volume_litres(full.array, full.affine, labels)
    vols = lung_volume_litres(mask.array, mask.affine, labels)
    print(
        f"crop {[(s.start, s.stop) for s in box]} of {ct.shape}; image {image.shape} at "
        f"{image.spacing[0]:.1f} mm, HU {image.array.min()}..{image.array.max()}"
    )
    for name in labels:
        print(f"  {name}: {vols[name]:.3f} l (full resolution {vols_full[name]:.3f} l)")
    for path in sorted(args.out.rglob("*")):
        if path.is_file():
            print(
                f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size} bytes"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
