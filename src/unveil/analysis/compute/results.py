"""All statistics of an analysis, from the measured arrays to the ``results.json`` record.

Pure: :class:`~unveil.analysis.inputs.RunDesign`, :class:`~unveil.analysis.inputs.Measurements`,
the clinical rows and the run record in, :class:`~unveil.records.results.Results` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from unveil.analysis.compute.association import adjusted_association, observed_rows
from unveil.analysis.compute.calibration import calibrate_rows
from unveil.analysis.compute.effects import (
    MDE_POWER,
    add_training_uncertainty,
    cohort_rows,
    leave_out_unchanged,
    noise_floor_rows,
    specificity_rows,
    with_noise_floor,
)
from unveil.analysis.compute.recovery import recovery_rows
from unveil.analysis.compute.verdict import analysis_notes, verdict
from unveil.analysis.inputs import AnalysisOptions, Measurements, RunDesign
from unveil.analysis.regions import peak_candidates
from unveil.data.regions import REGIONS_RULE
from unveil.records import AnalysisSettings, CohortRow, Results, RunRecord


def compute_results(
    design: RunDesign,
    measured: Measurements,
    clinical: Mapping[str, Mapping[str, Any]],
    run: RunRecord,
    options: AnalysisOptions,
) -> Results:
    """Every table, the calibration and the verdict of a run (``docs/statistics.md``).

    Args:
        design: the run's contrasts and regions.
        measured: the regional means of its volumes and of the real scans.
        clinical: ``{id: {column: value}}`` rows of the cohort table (every subject).
        run: the run record (repeated in the results, without its config).
        options: the analysis options.
    """
    o, d, m = options, design, measured
    edit_vals, planted, left_out = leave_out_unchanged(
        m.edit_vals, m.planted, d.contrasts, run.subjects, run.unchanged
    )
    m = replace(m, edit_vals=edit_vals, planted=planted)
    n_seeds = m.floor_seed.shape[1]
    floor = noise_floor_rows(d.regions, m.floor_seed, o.alpha)
    cohort = cohort_rows(
        d.contrasts, d.kinds, d.regions, m.edit_vals, o.n_boot, o.seed, o.test, n_seeds,
        o.min_effect_hu,
    )  # fmt: skip
    cohort = with_noise_floor(cohort, floor)
    observed, notes = observed_rows(
        d.parseable, d.parsed, d.regions, m.real_means, clinical, o.n_boot, o.seed, d.baseline
    )
    # The associations use every complete subject of the real cohort, not only the run's.
    columns = list(dict.fromkeys(c for row in clinical.values() for c in row))
    adjusted, adj_notes = adjusted_association(
        {s: clinical.get(s, {}) for s in m.real_means},
        m.real_means,
        d.regions,
        [d.parsed[e] for e in d.parseable],
        d.baseline,
        columns=columns,
    )
    cohort = add_training_uncertainty(cohort, adjusted)
    cohort, calibration = calibrate_rows(cohort, o.alpha, o.min_effect_hu)
    candidates = peak_candidates(d.regions)
    spec = specificity_rows(
        d.contrasts, d.kinds, d.regions, candidates, m.edit_vals, m.n_voxels, o.n_boot, o.seed,
        cohort,
    )  # fmt: skip
    recovery = []
    if d.effects:
        recovery = recovery_rows(
            d.parseable, d.controls, d.parsed, d.regions, m.edit_vals, m.planted, cohort,
            o.n_boot, o.seed, o.recovery_tolerance, o.spill_limit_hu,
        )  # fmt: skip
    notes += left_out + adj_notes + analysis_notes(
        calibration, m.saturated, run.window, cohort, o.test, o.alpha, bool(d.controls),
        run.per_subject_noise,
    )  # fmt: skip
    judged = verdict(
        d.contrasts, d.kinds, d.parsed, cohort, spec, recovery, d.effects, o.alpha, o.test,
        notes, calibration, o.recovery_tolerance, o.spill_limit_hu,
    )  # fmt: skip
    return Results(
        run=run,
        settings=settings(design, options, cohort, candidates),
        cohort_stats=cohort,
        noise_floor=floor,
        calibration=calibration,
        specificity=spec,
        observed=observed,
        adjusted=adjusted,
        recovery=recovery,
        verdict=judged,
        alpha=o.alpha,
    )


def settings(
    design: RunDesign,
    options: AnalysisOptions,
    cohort: Sequence[CohortRow],
    candidates: list[str],
) -> AnalysisSettings:
    """The ``settings`` record: the options and the rules the numbers follow."""
    o = options
    n_real = sum(1 for r in cohort if not r.null_control)
    return AnalysisSettings(
        n_boot=o.n_boot,
        alpha=o.alpha,
        seed=o.seed,
        test=o.test,
        min_effect_hu=o.min_effect_hu,
        recovery_tolerance=o.recovery_tolerance,
        spill_limit_hu=o.spill_limit_hu,
        comparator="zero (per-subject effects, edited - factual, mean over seeds)",
        bootstrap="BCa over subjects (percentile where BCa is undefined)",
        fdr=(
            f"Benjamini-Hochberg over the {n_real} real-edit (edit, region) rows "
            f"(raw and calibrated p separately) and over the "
            f"{len(cohort) - n_real} negative-control rows"
        ),
        mde=(
            f"(z_(1-alpha/2) + z_{MDE_POWER:g}) * SD across subjects of the "
            "per-subject noise floor / sqrt(n), two-sided alpha, normal approximation"
        ),
        unit="subject (regional voxel mean, averaged over seeds)",
        regions=design.regions,
        regions_rule=REGIONS_RULE,
        peak_regions=candidates,
        null_controls=design.controls,
        control_kinds={e: design.kinds[e] for e in design.controls},
        map_limit_hu=o.map_limit_hu,
    )
