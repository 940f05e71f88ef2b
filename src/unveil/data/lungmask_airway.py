"""The airway step of :mod:`unveil.data.lungmask`: find the trachea, grow it into the bronchi.

3. *Trachea*: in the upper half of the air, trachea-sized air components near the
   midline, linked from slice to slice into a vertical tube; its voxels seed the airway.
4. *Airway*: the seed is grown with a strict threshold raised step by step; the growth
   stops before the step at which the region leaks into the lungs.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from unveil.data.lungmask_grid import world_mm

# Trachea cross-section accepted in an axial slice, mm^2: a lumen of 10-40 mm across.
_TRACHEA_AREA_MM2 = (70.0, 1250.0)
# How far (mm, lateral) the trachea may sit from the midline of the body in its slice.
_TRACHEA_MIDLINE_MM = 30.0
# How far (mm) the trachea centre may move between neighbouring slices.
_TRACHEA_STEP_MM = 10.0
# Shortest run of slices (mm) that counts as a tube rather than a bubble.
_TRACHEA_MIN_LENGTH_MM = 15.0
# Airway growth box around the trachea: lateral / anterior-posterior half width and
# depth below the trachea, mm (main and lobar bronchi lie within it).
_AIRWAY_BOX_MM = (80.0, 80.0, 120.0)
# A growth step adding more than this (mm^3 / 1000) and doubling the airway is a leak.
_LEAK_ML = 10.0


def find_trachea(
    air: np.ndarray, body: np.ndarray, affine: np.ndarray, spacing: np.ndarray, z_lo: int
) -> np.ndarray | None:
    """Voxels of the trachea in the upper slices, or None when no tube is seen.

    In each axial slice from the top down to ``z_lo`` every air component of trachea size
    near the body midline is a candidate; candidates in neighbouring slices whose centres
    are close are linked, and the chain of the largest volume that is long enough to be a
    tube is the trachea.  Chains rather than the largest candidate per slice, because on
    a coarse grid a pocket of air under the chin or beside the neck can be larger than
    the trachea in a slice or two; volume rather than length, because a thin air streak
    in the oesophagus can be longer than the part of the trachea above the lungs.
    """
    area_px = float(spacing[0] * spacing[1])
    # Per slice: candidates as (world centre xy, area, slice labels, label id).
    cands: dict[int, list[tuple[np.ndarray, float, np.ndarray, int]]] = {}
    for k in range(air.shape[2] - 1, max(z_lo, 0) - 1, -1):
        sl = air[:, :, k]
        if not sl.any():
            continue
        lab, n = ndi.label(sl)
        areas = np.bincount(lab.ravel())[1:] * area_px
        ok = np.nonzero((areas >= _TRACHEA_AREA_MM2[0]) & (areas <= _TRACHEA_AREA_MM2[1]))[0] + 1
        if ok.size == 0:
            continue
        bi, bj = np.nonzero(body[:, :, k])
        mid = world_mm(affine, np.array([bi.mean(), bj.mean(), k]))[0]
        # Centroids of all components at once (ndi.center_of_mass loops in Python).
        li, lj = np.nonzero(lab)
        ids = lab[li, lj]
        count = np.bincount(ids, minlength=n + 1)[ok]
        ci = np.bincount(ids, weights=li, minlength=n + 1)[ok] / count
        cj = np.bincount(ids, weights=lj, minlength=n + 1)[ok] / count
        world = world_mm(affine, np.column_stack([ci, cj, np.full(len(ok), k)]))
        near = np.abs(world[:, 0] - mid) <= _TRACHEA_MIDLINE_MM
        if near.any():
            cands[k] = [
                (world[c, :2], float(areas[ok[c] - 1]), lab, int(ok[c]))
                for c in np.nonzero(near)[0]
            ]

    # Chains, top down: chain[k][c] = (total area, length, previous candidate); each
    # candidate continues the largest chain ending next to it in the slice above.
    min_length = _TRACHEA_MIN_LENGTH_MM / float(spacing[2])
    chain: dict[int, list[tuple[float, int, int | None]]] = {}
    best: tuple[float, int, int] | None = None  # (total area, slice, candidate)
    for k in sorted(cands, reverse=True):
        above = cands.get(k + 1, [])
        chain[k] = []
        for centre, area, _, _ in cands[k]:
            link: tuple[float, int, int | None] = (0.0, 0, None)
            for c_up, (centre_up, _, _, _) in enumerate(above):
                if np.linalg.norm(centre - centre_up) <= _TRACHEA_STEP_MM:
                    area_up, length_up, _ = chain[k + 1][c_up]
                    if area_up > link[0]:
                        link = (area_up, length_up, c_up)
            chain[k].append((link[0] + area, link[1] + 1, link[2]))
            if link[1] + 1 >= min_length and (best is None or link[0] + area > best[0]):
                best = (link[0] + area, k, len(chain[k]) - 1)
    if best is None:
        return None
    seed = np.zeros(air.shape, dtype=bool)
    k, c = best[1], best[2]
    while c is not None:
        _, _, lab, idx = cands[k][c]
        seed[:, :, k] |= lab == idx
        c = chain[k][c][2]
        k += 1
    return seed


def grow_airway(
    ct: np.ndarray,
    body: np.ndarray,
    seed: np.ndarray,
    spacing: np.ndarray,
    voxel_ml: float,
    airway_hu: tuple[float, float],
    step_hu: float,
    max_ml: float,
) -> np.ndarray:
    """Grow the trachea seed into the bronchi with the loosest threshold that does not leak."""
    idx = np.argwhere(seed)
    half = np.array(_AIRWAY_BOX_MM) / spacing
    lo = np.maximum(
        [idx[:, 0].min() - half[0], idx[:, 1].min() - half[1], idx[:, 2].min() - half[2]], 0
    )
    hi = np.minimum(
        [idx[:, 0].max() + half[0] + 1, idx[:, 1].max() + half[1] + 1, idx[:, 2].max() + 1],
        ct.shape,
    )
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    ct_b, body_b, seed_b = ct[box], body[box], seed[box]

    grown: np.ndarray | None = None
    grown_ml = 0.0
    covered = False
    seed_n = int(seed_b.sum())
    for t in np.arange(airway_hu[0], airway_hu[1] + 1e-6, step_hu):
        lumen = (ct_b < t) & body_b
        core = lumen & seed_b
        if not core.any():
            continue
        lab, _ = ndi.label(lumen)
        ids = np.unique(lab[core])
        region = np.isin(lab, ids[ids > 0])
        ml = float(region.sum()) * voxel_ml
        # A leak into the parenchyma shows as a jump: once the region holds most of the
        # trachea, real bronchi add a little per step, the lungs add at once.  (Before
        # that, the lumen itself is still filling in and large steps are normal; on a
        # coarse grid a few voxels more can double a small region, hence the ml floor.)
        jump = ml > 2.0 * grown_ml and ml - grown_ml > _LEAK_ML
        if ml > max_ml or (covered and jump):
            break
        grown, grown_ml = region, ml
        covered = int((region & seed_b).sum()) >= seed_n // 2
    out = np.zeros(ct.shape, dtype=bool)
    # Nothing below the strictest-but-leaking threshold: keep the trachea as seen.
    out[box] = grown if grown is not None else seed_b
    return out
