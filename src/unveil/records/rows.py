"""The statistics rows of ``RUN/analysis/``: one model per table ``unveil analyze`` writes.

Each row model names its CSV file (``TABLE``) and column order (``CSV_COLUMNS``); its
field order is the key order of the same row in ``results.json``.  ``docs/statistics.md``
says what every number means.

Fields that every version of the analysis wrote are required; the others (added as the
analysis grew: the training cohort's sampling error, the calibrated p, the recovery
tolerance...) default to NaN, ``""`` or None, which the readers render as "n/a", so an
analysis written by an older unveil still reads.  A row holding a field this version does
not know is refused (:class:`~unveil.records.fields.Record`): rerun ``unveil analyze``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator

from unveil.records.fields import Count, Flag, MaybeCount, MaybeText, Num, Record, Text

NAN = math.nan


def _maybe_flag(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


#: A bool that an older file may lack (None).
MaybeFlag = Annotated[bool | None, BeforeValidator(_maybe_flag)]


class Row(Record):
    """A row of one of the analysis tables."""

    #: The table (file ``<TABLE>.csv``, key ``<TABLE>`` of results.json).
    TABLE: ClassVar[str] = ""
    #: Column order of the CSV file.
    CSV_COLUMNS: ClassVar[tuple[str, ...]] = ()


class SubjectRegionRow(Row):
    """``subject_regions.csv``: one subject, contrast (or ``noise_floor``), seed and region."""

    TABLE: ClassVar[str] = "subject_regions"
    CSV_COLUMNS: ClassVar[tuple[str, ...]] = (
        "id",
        "contrast",
        "seed",
        "region",
        "n_voxels",
        "mean_diff_hu",
    )

    id: Text
    contrast: Text
    seed: Count
    region: Text
    n_voxels: Count
    mean_diff_hu: Num


class CohortRow(Row):
    """``cohort_stats.csv``: one contrast and region over subjects, the test against zero."""

    TABLE: ClassVar[str] = "cohort_stats"
    CSV_COLUMNS: ClassVar[tuple[str, ...]] = (
        "contrast",
        "region",
        "n_subjects",
        "mean_diff_hu",
        "ci_low",
        "ci_high",
        "sd_hu",
        "se_hu",
        "effect_size_dz",
        "statistic",
        "p_value",
        "q_value",
        "se_train_hu",
        "se_total_hu",
        "p_total",
        "q_total",
        "p_calibrated",
        "q_calibrated",
        "significant",
        "test",
        "null_control",
        "control_kind",
        "floor_mean_hu",
        "floor_sd_hu",
        "seed_sd_hu",
        "mde_hu",
        "n_seeds",
    )

    contrast: Text
    region: Text
    n_subjects: Count
    mean_diff_hu: Num
    ci_low: Num
    ci_high: Num
    sd_hu: Num = NAN
    se_hu: Num = NAN
    effect_size_dz: Num = NAN
    statistic: Num = NAN
    p_value: Num
    q_value: Num
    p_calibrated: Num = NAN
    q_calibrated: Num = NAN
    significant: Flag
    test: Text = ""
    null_control: Flag
    control_kind: Text = ""
    floor_mean_hu: Num = NAN
    floor_sd_hu: Num = NAN
    seed_sd_hu: Num = NAN
    mde_hu: Num = NAN
    n_seeds: MaybeCount = None
    se_train_hu: Num = NAN
    se_total_hu: Num = NAN
    p_total: Num = NAN
    q_total: Num = NAN

    @property
    def df(self) -> float | None:
        """Degrees of freedom of the row's mean (``n_subjects - 1``), None under 2 subjects."""
        return float(self.n_subjects) - 1.0 if self.n_subjects >= 2 else None


class NoiseFloorRow(Row):
    """``noise_floor.csv``: what a change of seed alone produces in one region."""

    TABLE: ClassVar[str] = "noise_floor"
    CSV_COLUMNS: ClassVar[tuple[str, ...]] = (
        "region",
        "n_subjects",
        "n_seeds",
        "floor_mean_hu",
        "floor_sd_hu",
        "seed_sd_hu",
        "mde_hu",
    )

    region: Text
    n_subjects: MaybeCount = None
    n_seeds: MaybeCount = None
    floor_mean_hu: Num
    floor_sd_hu: Num
    seed_sd_hu: Num = NAN
    mde_hu: Num = NAN


class SpecificityRow(Row):
    """``specificity.csv``: a contrast's peak region and its spill in the rest of the lung."""

    TABLE: ClassVar[str] = "specificity"
    CSV_COLUMNS: ClassVar[tuple[str, ...]] = (
        "contrast",
        "null_control",
        "peak_region",
        "peak_hu",
        "peak_ci_low",
        "peak_ci_high",
        "spill_hu",
        "spill_ci_low",
        "spill_ci_high",
        "spill_fraction",
        "airway_hu",
        "airway_ci_low",
        "airway_ci_high",
        "n_subjects",
    )

    contrast: Text
    null_control: Flag = False
    peak_region: MaybeText
    peak_hu: Num
    peak_ci_low: Num = NAN
    peak_ci_high: Num = NAN
    spill_hu: Num
    spill_ci_low: Num = NAN
    spill_ci_high: Num = NAN
    spill_fraction: Num = NAN
    airway_hu: Num = NAN
    airway_ci_low: Num = NAN
    airway_ci_high: Num = NAN
    n_subjects: MaybeCount = None


class ObservedRow(Row):
    """``observed.csv``: the raw association of an edit in the real cohort, one region."""

    TABLE: ClassVar[str] = "observed"
    CSV_COLUMNS: ClassVar[tuple[str, ...]] = (
        "attribute",
        "group_a",
        "group_b",
        "region",
        "n_a",
        "n_b",
        "mean_hu_a",
        "mean_hu_b",
        "diff_hu",
        "ci_low",
        "ci_high",
        "contrast",
        "method",
    )

    attribute: Text
    group_a: Text = ""
    group_b: Text = ""
    region: Text
    n_a: MaybeCount = None
    n_b: MaybeCount = None
    mean_hu_a: Num = NAN
    mean_hu_b: Num = NAN
    diff_hu: Num
    ci_low: Num = NAN
    ci_high: Num = NAN
    #: The edit the row belongs to; None in the oldest files, which matched by attribute.
    contrast: MaybeText = None
    method: Text = ""


class AdjustedRow(Row):
    """``adjusted.csv``: the association adjusted for every other attribute, one region."""

    TABLE: ClassVar[str] = "adjusted"
    CSV_COLUMNS: ClassVar[tuple[str, ...]] = (
        "contrast",
        "attribute",
        "region",
        "term_a",
        "term_b",
        "scale",
        "n_subjects",
        "n_parameters",
        "diff_hu",
        "se_hu",
        "ci_low",
        "ci_high",
        "p_value",
        "method",
    )

    contrast: Text
    attribute: Text = ""
    region: Text
    term_a: Text = ""
    #: ``""`` for a numeric edit (a slope, no second term).
    term_b: Text = ""
    scale: Num = NAN
    n_subjects: MaybeCount = None
    n_parameters: MaybeCount = None
    diff_hu: Num
    se_hu: Num = NAN
    ci_low: Num = NAN
    ci_high: Num = NAN
    p_value: Num = NAN
    method: Text = ""


class RecoveryRow(Row):
    """``recovery.csv``: planted against recovered shift of an edit in one region."""

    TABLE: ClassVar[str] = "recovery"
    CSV_COLUMNS: ClassVar[tuple[str, ...]] = (
        "contrast",
        "region",
        "planted_hu",
        "recovered_hu",
        "ci_low",
        "ci_high",
        "error_hu",
        "relative_error",
        "sign_ok",
        "within_tolerance",
        "within_30pct",
        "null_control",
    )

    contrast: Text
    region: Text
    planted_hu: Num
    recovered_hu: Num
    ci_low: Num = NAN
    ci_high: Num = NAN
    error_hu: Num = NAN
    relative_error: Num = NAN
    sign_ok: Flag = False
    #: Absent in files older than ``--tolerance``: :attr:`within` falls back on 30%.
    within_tolerance: MaybeFlag = None
    within_30pct: Flag = False
    null_control: Flag = False

    @property
    def within(self) -> bool:
        """Within the run's tolerance (the 30% check of an older file)."""
        return self.within_30pct if self.within_tolerance is None else self.within_tolerance


#: The tables of results.json, in the order ``unveil analyze`` writes them.
TABLE_ROWS: dict[str, type[Row]] = {
    m.TABLE: m
    for m in (CohortRow, NoiseFloorRow, SpecificityRow, ObservedRow, AdjustedRow, RecoveryRow)
}
