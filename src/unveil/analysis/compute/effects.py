"""Per contrast and region: the test of the subjects' effects against zero, the noise floor,
the training cohort's sampling error, and the specificity (peak and spill).

Pure: arrays of per-subject regional means in, rows of :mod:`unveil.records.rows` out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from unveil.analysis.compute import row_rng
from unveil.analysis.stats import (
    bootstrap_ci,
    effect_size_dz,
    minimum_detectable_effect,
    one_sample_test,
    specificity,
    standard_error,
)
from unveil.records import AdjustedRow, CohortRow, NoiseFloorRow, SpecificityRow

#: Power the minimum detectable effect is computed for.
MDE_POWER = 0.8

#: The noise-floor columns a cohort row repeats from its region's floor row.
FLOOR_COLUMNS: tuple[str, ...] = ("floor_mean_hu", "floor_sd_hu", "seed_sd_hu", "mde_hu")


def leave_out_unchanged(
    edit_vals: np.ndarray,
    planted: np.ndarray,
    contrasts: Sequence[str],
    subjects: Sequence[str],
    unchanged: Mapping[str, Sequence[str]],
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The per-subject effects and planted shifts without the subjects a contrast leaves as
    they are (NaN there, as for a region a subject lacks), and a note per such contrast.

    A subject whose prompt a contrast does not change (``age+=10`` where the age is
    missing, ``diagnosis=IPF`` for a subject with IPF) gets its factual volume again, so
    its effect is zero by construction, not a measurement: averaging it in would pull
    the effect toward zero (docs/recovery.md).  The counterfactual run records them
    (``RunRecord.unchanged``).

    Args:
        edit_vals, planted: ``(E, N, R)`` (not modified; copies are returned).
        contrasts: the ``E`` contrast names; subjects: the ``N`` subject ids.
        unchanged: ``{contrast: [subject, ...]}``.
    """
    ev, pl = edit_vals.copy(), planted.copy()
    index = {sid: i for i, sid in enumerate(subjects)}
    notes = []
    for ei, name in enumerate(contrasts):
        rows = [index[sid] for sid in unchanged.get(name, ()) if sid in index]
        if not rows:
            continue
        ev[ei, rows] = np.nan
        pl[ei, rows] = np.nan
        notes.append(
            f"{name}: {len(rows)} of {len(subjects)} subject(s) left out, whose prompt this "
            "contrast leaves unchanged (a shift of a field missing in their row, or a value "
            "they already have)."
        )
    return ev, pl, notes


def noise_floor_rows(
    regions: Sequence[str], floor_seed: np.ndarray, alpha: float = 0.05
) -> list[NoiseFloorRow]:
    """The noise floor per region: what a change of seed alone produces, and what it hides.

    Args:
        regions: region names, length ``R``.
        floor_seed: ``(N, K, R)`` regional means of (floor - factual) per subject and seed.
        alpha: two-sided level of the minimum detectable effect.

    Returns:
        One row per region with subjects: ``floor_mean_hu`` and ``floor_sd_hu`` (mean and SD
        across subjects of the per-subject floor, the mean over seeds); ``seed_sd_hu``, the
        seed-to-seed SD of one generated volume's regional mean (the SD of (floor - factual)
        over all subject-seed pairs divided by sqrt(2), as each pair is two generations);
        ``mde_hu``, the smallest mean effect detectable with 80% power at two-sided
        ``alpha`` (:func:`unveil.analysis.stats.minimum_detectable_effect` on
        ``floor_sd_hu``).
    """
    fs = np.asarray(floor_seed, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        counts = np.isfinite(fs).sum(axis=1)
        per_subject = np.where(counts > 0, np.nansum(fs, axis=1) / np.maximum(counts, 1), np.nan)
    rows = []
    for ri, r in enumerate(regions):
        v = per_subject[:, ri]
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        pairs = fs[:, :, ri]
        pairs = pairs[np.isfinite(pairs)]
        sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
        rows.append(
            NoiseFloorRow(
                region=r,
                n_subjects=int(v.size),
                n_seeds=int(fs.shape[1]),
                floor_mean_hu=float(v.mean()),
                floor_sd_hu=sd,
                seed_sd_hu=float(pairs.std(ddof=1) / math.sqrt(2.0))
                if pairs.size > 1
                else math.nan,
                mde_hu=minimum_detectable_effect(sd, int(v.size), alpha, MDE_POWER),
            )
        )
    return rows


def cohort_rows(
    contrasts: Sequence[str],
    kinds: Mapping[str, str],
    regions: Sequence[str],
    edit_vals: np.ndarray,
    n_boot: int,
    seed: int,
    test: str,
    n_seeds: int,
    min_effect_hu: float = 0.0,
) -> list[CohortRow]:
    """One row per (contrast, region) with subjects: the test of the effects against zero.

    Args:
        contrasts: the ``E`` contrasts; kinds: contrast -> control kind (``""`` for a real
            edit).
        regions: the ``R`` regions.
        edit_vals: ``(E, N, R)`` per-subject effects (mean over seeds of edited - factual).
        n_boot, seed: bootstrap resamples and the seed of the per-row streams.
        test: ``wilcoxon`` or ``t`` (:func:`unveil.analysis.stats.one_sample_test`).
        n_seeds: seeds per subject (reported).
        min_effect_hu: the margin of real edits: a negative control must show nothing, not
            merely nothing beyond the margin.

    Returns:
        Rows whose q-values, calibrated p-values and ``significant`` are left to
        :func:`unveil.analysis.compute.calibration.calibrate_rows`, the noise-floor columns
        to :func:`with_noise_floor`.
    """
    rows = []
    for ei, e in enumerate(contrasts):
        control = bool(kinds.get(e))
        for ri, r in enumerate(regions):
            ev = edit_vals[ei, :, ri]
            ev = ev[np.isfinite(ev)]
            n = int(ev.size)
            if n == 0:
                continue  # region absent in every subject (e.g. no airway label)
            lo, hi = bootstrap_ci(ev, row_rng(seed, 0, ei, ri), n_boot)
            stat, p, name = one_sample_test(ev, test=test, margin=0.0 if control else min_effect_hu)
            rows.append(
                CohortRow(
                    contrast=e,
                    region=r,
                    n_subjects=n,
                    mean_diff_hu=float(ev.mean()),
                    ci_low=lo,
                    ci_high=hi,
                    sd_hu=float(ev.std(ddof=1)) if n > 1 else math.nan,
                    se_hu=standard_error(ev),
                    effect_size_dz=effect_size_dz(ev),
                    statistic=stat,
                    p_value=p,
                    q_value=math.nan,
                    significant=False,
                    test=name,
                    null_control=control,
                    control_kind=kinds.get(e, ""),
                    n_seeds=n_seeds,
                )
            )
    return rows


def with_noise_floor(
    rows: Sequence[CohortRow], floor_rows: Sequence[NoiseFloorRow]
) -> list[CohortRow]:
    """The cohort rows with their region's noise floor repeated (:data:`FLOOR_COLUMNS`)."""
    by_region = {f.region: f for f in floor_rows}
    return [
        r.model_copy(update={k: getattr(by_region[r.region], k) for k in FLOOR_COLUMNS})
        for r in rows
    ]


def add_training_uncertainty(
    rows: Sequence[CohortRow], adjusted: Sequence[AdjustedRow]
) -> list[CohortRow]:
    """The rows with the training cohort's sampling error added to their standard error.

    ``se_hu`` is the spread of the effect over the held-out subjects *given the trained
    model*: it ignores that the model learned the effect from a finite training cohort.
    An attribute without effect still has a chance association in any finite cohort
    (blood group O had -2.9 HU lungs in the demo's phantom), a well-trained model learns
    it, and applies it to every held-out subject alike, so a test on ``se_hu`` alone
    declares it significant.  A model cannot know an effect better than the data it learned
    it from: the standard error of the same contrast in the adjusted regression on the real
    cohort (:func:`unveil.analysis.compute.association.adjusted_association`) is taken as
    that sampling error, ``se_train_hu``, and ``se_total_hu = sqrt(se_hu^2 +
    se_train_hu^2)``.  Rows without an adjusted contrast (permuted-label controls, unset
    edits) get ``se_train_hu = 0``.  ``p_total`` is the two-sided Student's t p of
    ``mean / se_total`` on ``n - 1`` degrees of freedom.
    """
    se_adj = {(a.contrast, a.region): a.se_hu for a in adjusted if math.isfinite(a.se_hu)}
    out = []
    for r in rows:
        st = se_adj.get((r.contrast, r.region), 0.0)
        total = math.hypot(r.se_hu, st) if math.isfinite(r.se_hu) else math.nan
        m, df = r.mean_diff_hu, r.df
        if not (math.isfinite(m) and math.isfinite(total)) or df is None:
            p_total = math.nan
        elif total == 0.0:
            p_total = 1.0 if m == 0.0 else 0.0
        else:
            p_total = float(2.0 * stats.t.sf(abs(m) / total, df))
        update = {"se_train_hu": st, "se_total_hu": total, "p_total": p_total}
        out.append(r.model_copy(update=update))
    return out


def specificity_rows(
    contrasts: Sequence[str],
    kinds: Mapping[str, str],
    regions: Sequence[str],
    candidates: Sequence[str],
    edit_vals: np.ndarray,
    n_voxels: np.ndarray,
    n_boot: int,
    seed: int,
    cohort: Sequence[CohortRow] = (),
) -> list[SpecificityRow]:
    """One :func:`unveil.analysis.stats.specificity` row per contrast.

    Args:
        candidates: the lung partitions among which the peak is sought
            (:func:`unveil.analysis.regions.peak_candidates`).
        edit_vals: ``(E, N, R)`` per-subject effects; n_voxels: ``(N, R)`` region sizes.
        cohort: the cohort rows; the peak's and the airway's intervals are taken from them,
            so the same number carries the same interval in every table.

    Returns:
        No rows when the regions hold no ``lung`` or no candidate.
    """
    if "lung" not in regions or not candidates:
        return []
    ci_of = {(r.contrast, r.region): (r.ci_low, r.ci_high) for r in cohort}
    rows = []
    for ei, e in enumerate(contrasts):
        effects = {r: edit_vals[ei, :, ri] for ri, r in enumerate(regions)}
        counts = {r: n_voxels[:, ri] for ri, r in enumerate(regions)}
        row = specificity(effects, counts, candidates, row_rng(seed, 3, ei), n_boot)
        for key, region in (("peak", row["peak_region"]), ("airway", "airway")):
            if (e, region) in ci_of:
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = ci_of[(e, region)]
        rows.append(SpecificityRow(contrast=e, null_control=bool(kinds.get(e)), **row))
    return rows
