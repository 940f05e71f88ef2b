"""The one pass over the volumes of a run: regional means per subject, seed and contrast,
and the difference maps.

Each subject's volumes are read once, reduced to regional means (the arrays of
:class:`~unveil.analysis.inputs.Measurements`) and summed into its mean difference maps,
which are written before the next subject is read (one full-grid array per contrast is
the analysis' largest memory cost).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from unveil.analysis.compute.recovery import expected_shift_means
from unveil.analysis.inputs import NOISE_FLOOR, Measurements
from unveil.analysis.load import LoadedRun, read_generated
from unveil.analysis.maps import write_subject_maps
from unveil.analysis.regions import region_indices, region_means
from unveil.records import SubjectRegionRow


def measure_run(
    loaded: LoadedRun, out: Path, map_limit_hu: float, progress: bool = True
) -> Measurements:
    """Measure every subject of the run, writing its maps under ``out``, then the real scans
    of the cohort's other subjects (for the associations)."""
    d = loaded.design
    subjects, seeds = loaded.subjects, loaded.seeds
    measured = Measurements.empty(len(d.contrasts), len(subjects), len(seeds), len(d.regions))
    for si, sid in enumerate(tqdm(subjects, desc="analyze", unit="subject", disable=not progress)):
        _measure_subject(loaded, measured, si, sid, out, map_limit_hu)
    # The observed and adjusted associations use every complete subject of the real
    # cohort, not only the run's: they are properties of the cohort, and more subjects
    # narrow their intervals.
    others = [s for s in loaded.cohort.ids if s not in measured.real_means]
    for sid in tqdm(others, desc="observed", unit="subject", disable=not progress or not others):
        image, mask = loaded.cohort.load(sid)
        idx = region_indices(mask.array, mask.affine, loaded.data_cfg, d.regions)
        measured.real_means[sid] = np.array(list(region_means(image.array.ravel(), idx).values()))
    return measured


def _measure_subject(
    loaded: LoadedRun, m: Measurements, si: int, sid: str, out: Path, map_limit_hu: float
) -> None:
    """Fill subject ``si``'s slots of ``m`` and write its maps."""
    d, layout, seeds = loaded.design, loaded.layout, loaded.seeds
    image, mask = loaded.cohort.load(sid)
    idx = region_indices(mask.array, mask.affine, loaded.data_cfg, d.regions)
    nvox = {r: int(i.size) for r, i in idx.items()}
    m.n_voxels[si] = [nvox[r] for r in d.regions]
    m.real_means[sid] = np.array(list(region_means(image.array.ravel(), idx).values()))
    del image
    shape = mask.shape
    # float32 running sums: a few seeds of HU differences need no more precision.
    sums = {e: np.zeros(shape, dtype=np.float32) for e in [NOISE_FLOOR, *d.contrasts]}
    per_seed = np.zeros((len(d.contrasts), len(seeds), len(d.regions)))
    lung = idx["lung"]
    hu_lo, hu_hi = (float(v) for v in loaded.run.window)
    for kk, k in enumerate(seeds):
        fac = read_generated(layout.factual(sid, k), shape)
        if lung.size:
            v = fac.ravel()[lung]
            m.saturated.append(float(np.mean((v <= hu_lo + 0.5) | (v >= hu_hi - 0.5))))
        named = [(NOISE_FLOOR, layout.floor(sid, k))]
        named += [(e, layout.edited(sid, e, k)) for e in d.contrasts]
        for ei, (name, path) in enumerate(named, start=-1):
            diff = read_generated(path, shape) - fac
            sums[name] += diff
            means = region_means(diff.ravel(), idx)
            if ei < 0:
                m.floor_seed[si, kk] = list(means.values())
            else:
                per_seed[ei, kk] = list(means.values())
            m.subject_rows += [
                SubjectRegionRow(
                    id=sid, contrast=name, seed=k, region=r, n_voxels=nvox[r], mean_diff_hu=mu
                )
                for r, mu in means.items()
            ]
    m.edit_vals[:, si] = per_seed.mean(axis=1)
    lung_mask = np.zeros(shape, dtype=bool)
    lung_mask.ravel()[lung] = True
    # The noise floor gets a map too, on the same colour scale: what a change of seed
    # alone looks like is the reference a reader needs beside each edit's map.
    ordered = {e: sums[e] for e in [*d.contrasts, NOISE_FLOOR]}
    write_subject_maps(
        out, layout, sid, ordered, len(seeds), lung_mask, mask.affine, map_limit_hu, NOISE_FLOOR
    )
    if d.effects and sid in loaded.truth:
        start = dict(loaded.truth[sid])
        for b in d.baseline:
            start = b.apply(start)
        for ei, e in enumerate(d.parseable):
            if d.parsed[e].op != "unset":
                exp = expected_shift_means(d.effects, d.parsed[e], start, idx)
                m.planted[ei, si] = list(exp.values())
