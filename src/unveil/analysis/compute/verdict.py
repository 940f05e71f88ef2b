"""The verdict of an analysis: per contrast, the null controls, the spill, the recovery of
planted effects, and the cautions.

Pure: statistics rows in, the :class:`~unveil.records.results.Verdict` record and its
lines out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unveil.analysis.compute.calibration import MIN_CALIBRATION_ROWS
from unveil.analysis.compute.recovery import PLANTED_EPS_HU, RECOVERY_TOLERANCE, SPILL_LIMIT_HU
from unveil.analysis.edits import ParsedEdit
from unveil.analysis.regions import ZONES
from unveil.records import (
    Calibration,
    CohortRow,
    RecoveryCheck,
    RecoveryRow,
    RecoveryVerdict,
    SpecificityRow,
    Verdict,
    VerdictEdit,
)


def _fmt_ci(mean: float, lo: float, hi: float) -> str:
    return f"{mean:+.1f} HU [{lo:+.1f}, {hi:+.1f}]"


def specificity_line(row: SpecificityRow) -> str:
    """One verdict line for a specificity row."""
    if not row.peak_region:
        return f"{row.contrast}: no lung partition to locate the effect in."
    text = (
        f"{row.contrast}: largest in {row.peak_region} "
        f"{_fmt_ci(row.peak_hu, row.peak_ci_low, row.peak_ci_high)}; "
        f"rest of the lung {_fmt_ci(row.spill_hu, row.spill_ci_low, row.spill_ci_high)}"
    )
    if math.isfinite(row.spill_fraction):
        text += f" (spill {100 * row.spill_fraction:.0f}% of the peak)"
    if math.isfinite(row.airway_hu):
        text += "; airway " + _fmt_ci(row.airway_hu, row.airway_ci_low, row.airway_ci_high)
    return text


def _summary(rows: Sequence[CohortRow], is_null: bool, calibrated: bool, alpha: float) -> str:
    """The verdict sentence of one contrast from its cohort rows."""
    sig = [r for r in rows if r.significant]
    where = "; ".join(f"{r.region} {_fmt_ci(r.mean_diff_hu, r.ci_low, r.ci_high)}" for r in sig)
    if is_null:
        largest = max((abs(r.mean_diff_hu) for r in rows), default=math.nan)
        if sig:
            return "null control FAILED: differs from zero in " + where
        return (
            f"null control passed: no region differs from zero (raw test, FDR {alpha:g} "
            f"over the controls); largest |effect| {largest:.2f} HU (target < 1 HU)"
        )
    if sig:
        how = "beyond the null controls (calibrated)" if calibrated else "(raw test)"
        return f"significant {how} in " + where
    if calibrated:
        return (
            "no region differs from zero beyond the null controls' systematic error at "
            f"FDR {alpha:g}"
        )
    return f"no region differs from zero at FDR {alpha:g}"


def _recovery_verdict(
    recovery: Sequence[RecoveryRow],
    cohort: Sequence[CohortRow],
    effects: Sequence[Any],
    parsed: Mapping[str, ParsedEdit],
    null_passed: bool | None,
    calibrated: bool,
    tolerance: float,
    spill_limit_hu: float,
) -> RecoveryVerdict:
    """In each region where the edited attribute's effect was planted: sign, size (within
    the tolerance) and place (significant there); in each lung zone where nothing was
    planted: no shift beyond the spill limit; and the null control passed."""
    sig_of = {(r.contrast, r.region): r.significant for r in cohort}
    checked = []
    for row in recovery:
        e = row.contrast
        if row.null_control:
            continue
        nothing = abs(row.planted_hu) <= PLANTED_EPS_HU
        if nothing:
            if row.region not in ZONES:
                continue
            ok = bool(abs(row.recovered_hu) <= spill_limit_hu)
        else:
            places = {x.region for x in effects if x.attribute == parsed[e].column}
            if row.region not in places:
                continue
            ok = bool(row.sign_ok and row.within and sig_of.get((e, row.region), False))
        checked.append(
            RecoveryCheck(
                contrast=e,
                region=row.region,
                planted_hu=row.planted_hu,
                recovered_hu=row.recovered_hu,
                check="nothing planted" if nothing else "planted",
                ok=ok,
            )
        )
    passed = (
        None
        if not checked and null_passed is None
        else all(c.ok for c in checked) and null_passed is not False
    )
    rule = (
        "in each region where the edited attribute's effect was planted: sign right, "
        f"size within {100 * tolerance:g}%, significant "
        f"{'after calibration' if calibrated else 'after correction'}; in each lung "
        f"zone where nothing was planted: |shift| <= {spill_limit_hu:g} HU; and no "
        "null control significant"
    )
    return RecoveryVerdict(
        checked=checked,
        passed=passed,
        tolerance=tolerance,
        spill_limit_hu=spill_limit_hu,
        rule=rule,
    )


def verdict(
    contrasts: Sequence[str],
    kinds: Mapping[str, str],
    parsed: Mapping[str, ParsedEdit],
    cohort: Sequence[CohortRow],
    spec: Sequence[SpecificityRow],
    recovery: Sequence[RecoveryRow],
    effects: Sequence[Any] | None,
    alpha: float,
    test: str,
    notes: Sequence[str],
    calibration: Calibration,
    tolerance: float = RECOVERY_TOLERANCE,
    spill_limit_hu: float = SPILL_LIMIT_HU,
) -> Verdict:
    """Per contrast the significant regions; the null control; specificity; the recovery."""
    calibrated = bool(calibration.available)
    spec_of = {r.contrast: r for r in spec}
    per_edit = []
    for e in contrasts:
        rows = [r for r in cohort if r.contrast == e]
        is_null = bool(kinds.get(e))
        per_edit.append(
            VerdictEdit(
                contrast=e,
                null_control=is_null,
                control_kind=kinds.get(e, ""),
                significant_regions=[r.region for r in rows if r.significant],
                summary=_summary(rows, is_null, calibrated, alpha),
                specificity=specificity_line(spec_of[e]) if e in spec_of else None,
            )
        )
    ctrl_rows = [r for r in cohort if r.null_control]
    null_passed = None if not ctrl_rows else not any(r.significant for r in ctrl_rows)
    null_max = max((abs(r.mean_diff_hu) for r in ctrl_rows), default=math.nan)
    rec = None
    if effects:
        rec = _recovery_verdict(
            recovery, cohort, effects, parsed, null_passed, calibrated, tolerance, spill_limit_hu
        )
    return Verdict(
        alpha=alpha,
        test=test,
        edits=per_edit,
        null_control_passed=null_passed,
        null_control_max_abs_hu=null_max,
        calibrated=calibrated,
        specificity=[
            v.specificity for v in per_edit if v.specificity is not None and not v.null_control
        ],
        recovery=rec,
        notes=list(notes),
    )


def analysis_notes(
    calibration: Calibration,
    saturated: Sequence[float],
    hu_window: tuple[float, float],
    cohort: Sequence[CohortRow],
    test: str,
    alpha: float,
    has_controls: bool,
    per_subject_noise: bool,
) -> list[str]:
    """The cautions about the run as a whole, in the order the verdict lists them.

    Args:
        saturated: per factual volume, the fraction of its lung voxels at an edge of the
            HU window (within half a HU).
        hu_window: the run's HU window.
    """
    notes = []
    if not calibration.available:
        notes.append(
            f"calibration unavailable: {calibration.n_rows} negative-control row(s), at "
            f"least {MIN_CALIBRATION_ROWS} are needed (add null edits or permuted "
            "controls); real edits are judged on the raw test against zero, which "
            "ignores the model's systematic error."
        )
    share = float(np.mean(saturated)) if len(saturated) else 0.0
    if share > 0.01:
        lo, hi = hu_window
        notes.append(
            f"{100 * share:.1f}% of lung voxels of the factual volumes lie at an edge of the "
            f"HU window [{lo:g}, {hi:g}], where a shift beyond the window cannot show: "
            "differences there are underestimated."
        )
    n_min = min((r.n_subjects for r in cohort), default=0)
    if test == "wilcoxon" and n_min and 2.0 / 2**n_min >= alpha:
        notes.append(
            f"with {n_min} subject(s) the two-sided signed-rank test cannot reach p < {alpha:g} "
            f"(its smallest p is {2.0 / 2**n_min:.3g}); use more subjects or --test t."
        )
    if not has_controls:
        notes.append("the run has no null edit, so there is no negative control.")
    if not per_subject_noise:
        notes.append(
            "the run record does not say 'noise': 'per-subject': older runs drew the noise "
            "of seed k once and shared it across subjects, so floor pairs (and effects) of "
            "different subjects are not independent, and the tests over subjects are "
            "optimistic; re-run unveil counterfactual for independent noise per subject."
        )
    return notes
