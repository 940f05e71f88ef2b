"""``unveil analyze RUN``: what each edit changes, in HU, per region, against chance.

Reads a counterfactual run (:mod:`unveil.records`) and its cohort, and writes
``RUN/analysis/``.  The statistics are explained in ``docs/statistics.md``; in short:

- the **subject is the unit**: a subject's effect in a region is the mean over its seeds
  of the regional mean of (edited - factual), and the test is those effects against
  zero across subjects (signed-rank or t), with a BCa bootstrap CI of the mean;
- the **noise floor** (floor - factual: same prompt, another seed) is reported, with the
  minimum detectable effect it implies, but it is not the comparator;
- **negative controls** (null edits, edits of an attribute ``effects.json`` declares
  effect-free, and ``permuted_controls``) calibrate: their estimates fit the model's
  systematic-error distribution N(mu, tau^2) (Schuemie et al., Stat Med 2014), and every
  real edit gets a calibrated p beside its raw p; ``significant`` uses the calibrated
  q-value when at least :data:`MIN_CALIBRATION_ROWS` control rows exist;
- **specificity**: each contrast's peak region and its spill outside it;
- beside the counterfactual, the **raw** and the **adjusted** association in the real
  cohort (OLS on every attribute of the table, HC3 covariance).

The work is split in three: **load** (:mod:`unveil.analysis.load`: the run, its cohort,
the planted effects), **measure** (:mod:`unveil.analysis.measure`: one pass over the
volumes, regional means and the difference maps), **compute**
(:mod:`unveil.analysis.compute`: pure functions, arrays and records in, the
:class:`~unveil.records.results.Results` record out); the tables are written through
:func:`unveil.records.results.write_analysis`.

Files:

``subject_regions.csv``
    one row per subject, contrast (an edit, a control, or ``noise_floor``), seed and
    region: the voxel mean of (edited - factual), or (floor - factual), in HU.
``cohort_stats.csv``
    per contrast and region, over subjects: mean effect with a BCa CI, SD, SE, d_z, the
    test against zero (raw p and q), the calibrated p and q, ``significant``, the control
    kind, and the region's noise floor (mean, SD across subjects, seed-to-seed SD, minimum
    detectable effect).
``noise_floor.csv``
    the noise floor per region (the same numbers as in cohort_stats).
``specificity.csv``
    per contrast: peak region, spill outside it in the lung, spill fraction, airway.
``observed.csv``
    the raw association in the real cohort: regional mean HU of the real scans, target
    group vs the run's baseline value (or the rest, without a baseline) for a category, a
    least-squares slope scaled to the edit for a number.  It may be confounded.
``adjusted.csv``
    the association adjusted for every other attribute of the clinical table.
``recovery.csv``
    only when the cohort has ``effects.json``: planted vs recovered shift per edit and
    region, with the tolerance checks.
``results.json``
    all of the above plus the run description, the calibration, a verdict and the
    settings.
``maps/<id>/<contrast>_mean_diff.nii.gz|.png``
    mean over seeds of (edited - factual) in HU on the source grid, and a PNG of its
    mid-lung slices; ``maps/<id>/noise_floor_mean_diff.*`` is the same for (floor -
    factual), the picture of chance on the same colour scale.  The report reads these.

The whole ``analysis/`` folder is built aside and moved into place at the end, so it is
complete or absent; a re-run replaces it.  A generated volume holding NaN or inf is
refused (:class:`~unveil.errors.DataError`) instead of being averaged into NaN rows.  A
CSV text cell a spreadsheet would run as a formula (an id ``=cmd``) is written ``'=cmd``
(:mod:`unveil.csvsafe`); the raw ids stay in ``results.json`` (``run.subjects``) and in
the ``maps/<id>/`` folder names.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from unveil.analysis.compute.calibration import MIN_CALIBRATION_ROWS, calibrate_rows
from unveil.analysis.compute.effects import MDE_POWER, add_training_uncertainty, noise_floor_rows
from unveil.analysis.compute.recovery import (
    PLANTED_EPS_HU,
    RECOVERY_TOLERANCE,
    SPILL_LIMIT_HU,
    expected_shift_means,
)
from unveil.analysis.compute.results import compute_results
from unveil.analysis.compute.verdict import specificity_line
from unveil.analysis.edits import ParsedEdit, parse_run_edit
from unveil.analysis.inputs import CONTROL_KINDS, NOISE_FLOOR, AnalysisOptions
from unveil.analysis.load import load_run
from unveil.analysis.measure import measure_run
from unveil.analysis.regions import PEAK_REGIONS, ZONES, region_names
from unveil.fs import atomic_dir
from unveil.records import (
    AdjustedRow,
    CohortRow,
    NoiseFloorRow,
    ObservedRow,
    RecoveryRow,
    Results,
    SpecificityRow,
    SubjectRegionRow,
    as_results,
    write_analysis,
)

#: Column orders of the CSV outputs (defined by the row records).
SUBJECT_COLUMNS = SubjectRegionRow.CSV_COLUMNS
COHORT_COLUMNS = CohortRow.CSV_COLUMNS
NOISE_FLOOR_COLUMNS = NoiseFloorRow.CSV_COLUMNS
SPECIFICITY_COLUMNS = SpecificityRow.CSV_COLUMNS
OBSERVED_COLUMNS = ObservedRow.CSV_COLUMNS
ADJUSTED_COLUMNS = AdjustedRow.CSV_COLUMNS
RECOVERY_COLUMNS = RecoveryRow.CSV_COLUMNS

__all__ = [
    "ADJUSTED_COLUMNS",
    "COHORT_COLUMNS",
    "CONTROL_KINDS",
    "MDE_POWER",
    "MIN_CALIBRATION_ROWS",
    "NOISE_FLOOR",
    "NOISE_FLOOR_COLUMNS",
    "OBSERVED_COLUMNS",
    "PEAK_REGIONS",
    "PLANTED_EPS_HU",
    "RECOVERY_COLUMNS",
    "RECOVERY_TOLERANCE",
    "SPECIFICITY_COLUMNS",
    "SPILL_LIMIT_HU",
    "SUBJECT_COLUMNS",
    "ZONES",
    "ParsedEdit",
    "add_training_uncertainty",
    "analyze",
    "analyze_run",
    "calibrate_rows",
    "expected_shift_means",
    "format_table",
    "noise_floor_rows",
    "parse_run_edit",
    "region_names",
    "specificity_line",
]


def analyze(
    root: str | os.PathLike, options: AnalysisOptions | None = None, progress: bool = True
) -> Results:
    """Analyse a counterfactual run and write ``RUN/analysis/`` (see the module doc).

    Load, measure (writing the maps), compute, write: the folder is built aside and moved
    into place only when everything is written.

    Returns:
        The :class:`~unveil.records.results.Results` record written to ``results.json``.
    """
    options = options or AnalysisOptions()
    options.check()
    loaded = load_run(root)
    with atomic_dir(loaded.layout.analysis_dir, overwrite=True) as out:
        measured = measure_run(loaded, out, options.map_limit_hu, progress)
        results = compute_results(loaded.design, measured, loaded.clinical, loaded.run, options)
        write_analysis(out, results, measured.subject_rows)
    return results


def analyze_run(
    root: str | os.PathLike,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    test: str = "wilcoxon",
    map_limit_hu: float = 100.0,
    progress: bool = True,
    min_effect_hu: float = 0.0,
    recovery_tolerance: float = RECOVERY_TOLERANCE,
    spill_limit_hu: float = SPILL_LIMIT_HU,
) -> dict[str, Any]:
    """Analyse a counterfactual run and write ``RUN/analysis/`` (see the module doc).

    Args:
        root: the run folder written by ``unveil counterfactual``.
        n_boot: bootstrap resamples per interval.
        alpha: false-discovery rate for ``significant`` (Benjamini-Hochberg, over the
            real-edit rows and, separately, over the negative-control rows).
        seed: seed of the bootstrap streams (results are reproducible for a given seed).
        test: test of per-subject effects against zero, ``"wilcoxon"`` (signed-rank,
            default) or ``"t"``; see :func:`unveil.analysis.stats.one_sample_test`.
        map_limit_hu: the PNG colour scale is ``[-map_limit_hu, +map_limit_hu]`` HU for
            every subject and edit, so maps compare by eye.
        progress: show a progress bar over subjects.
        min_effect_hu: minimum effect of interest; a real edit's region is significant only
            when its shift exceeds this many HU (in the raw test against zero and, beyond
            the controls' systematic error, in the calibrated one).  Not applied to the
            negative controls, which must show nothing at all.
        recovery_tolerance: relative error allowed for a planted shift to count as
            recovered (0.30: within 30%).
        spill_limit_hu: largest |shift| allowed in a lung zone where nothing was planted.

    Returns:
        The ``results.json`` content (NaN written as None); :func:`analyze` gives the
        record itself.
    """
    options = AnalysisOptions(
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
        test=test,
        map_limit_hu=map_limit_hu,
        min_effect_hu=min_effect_hu,
        recovery_tolerance=recovery_tolerance,
        spill_limit_hu=spill_limit_hu,
    )
    return analyze(root, options, progress).to_json()


def format_table(results: Results | Mapping[str, Any], max_rows: int | None = None) -> str:
    """The cohort rows as a compact plain table: contrast, region, mean [CI], q, significance.

    ``q`` is the raw q-value and ``q cal`` the calibrated one (a control's is leave-one-out,
    for display); ``*`` marks the rows ``significant``.  ``results`` is the record or the
    ``results.json`` content.
    """
    rows = as_results(results).cohort_stats
    if max_rows is not None:
        rows = rows[:max_rows]

    def num(v: float, spec: str) -> str:
        return "nan" if not math.isfinite(v) else format(v, spec)

    width = max([len("contrast"), *(len(r.contrast) for r in rows)])
    rwidth = max([len("region"), *(len(r.region) for r in rows)])
    lines = [
        f"{'contrast':<{width}}  {'region':<{rwidth}}  {'mean HU [95% CI]':>28}  {'q':>8}  "
        f"{'q cal':>8}  sig"
    ]
    for r in rows:
        ci = f"{num(r.mean_diff_hu, '+.1f')} [{num(r.ci_low, '+.1f')}, {num(r.ci_high, '+.1f')}]"
        mark = "*" if r.significant else ""
        if r.null_control:
            mark += " (null)"
        lines.append(
            f"{r.contrast:<{width}}  {r.region:<{rwidth}}  {ci:>28}  "
            f"{num(r.q_value, '8.3g')}  {num(r.q_calibrated, '8.3g')}  {mark}"
        )
    return "\n".join(lines)
