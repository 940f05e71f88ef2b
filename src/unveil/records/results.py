"""``RUN/analysis/``: the statistics ``unveil analyze`` writes and ``unveil report`` reads.

:class:`Results` is ``results.json``: the run record (without its config), the settings,
every table of :mod:`unveil.records.rows`, the calibration and the verdict.  The tables
are also written as CSV files (spreadsheet-safe cells, :mod:`unveil.csvsafe`).  Writer and
readers go through :func:`write_analysis` and :func:`read_results` only.

Compatibility: fields that older analyses lack (the calibration, the verdict's recovery
checks, most settings) are optional, with the fallbacks the report always used; a table
absent from ``results.json`` is read from its CSV file.  A field this version does not
know, a required one missing, or a value of the wrong type is one sentence that says to
rerun ``unveil analyze`` (seconds, unlike the generation): a reader never renders numbers
whose meaning it cannot be sure of.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_serializer, model_serializer

from unveil.csvsafe import neutralise_frame, restore_cell
from unveil.errors import UnveilError
from unveil.fs import write_json, write_text
from unveil.records.fields import Flag, MaybeCount, Num, Record, Text, clean_json, record_error
from unveil.records.rows import (
    TABLE_ROWS,
    AdjustedRow,
    CohortRow,
    NoiseFloorRow,
    ObservedRow,
    RecoveryRow,
    Row,
    SpecificityRow,
    SubjectRegionRow,
)
from unveil.records.run import RunLayout, RunRecord

#: Tables ``unveil analyze`` writes, by results.json key.
TABLES: tuple[str, ...] = tuple(TABLE_ROWS)


class Calibration(Record):
    """The empirical null fitted to the negative controls (``results.json`` ``calibration``)."""

    available: Flag
    mu_hu: Num = math.nan
    tau_hu: Num = math.nan
    n_rows: MaybeCount = None
    n_controls: MaybeCount = None
    controls: list[Text] = []
    min_rows: MaybeCount = None
    margin_hu: Num = math.nan
    method: Text = ""
    reference: Text = ""


class AnalysisSettings(Record):
    """How the analysis was run (``results.json`` ``settings``); older files hold fewer."""

    n_boot: MaybeCount = None
    alpha: float | None = None
    seed: int | None = None
    test: str | None = None
    min_effect_hu: float | None = None
    recovery_tolerance: float | None = None
    spill_limit_hu: float | None = None
    comparator: str | None = None
    bootstrap: str | None = None
    fdr: str | None = None
    mde: str | None = None
    unit: str | None = None
    regions: list[str] | None = None
    regions_rule: str | None = None
    peak_regions: list[str] | None = None
    null_controls: list[str] | None = None
    control_kinds: dict[str, str] | None = None
    map_limit_hu: float | None = None


class VerdictEdit(Record):
    """The verdict on one contrast."""

    contrast: Text
    null_control: Flag = False
    control_kind: Text = ""
    significant_regions: list[Text] = []
    summary: Text = ""
    #: The spill line; absent where the run has no lung partition to locate it in.
    specificity: str | None = None

    @model_serializer(mode="wrap")
    def _drop_absent_specificity(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if out.get("specificity") is None:
            out.pop("specificity", None)
        return out


class RecoveryCheck(Record):
    """One region checked by the planted-effect verdict."""

    contrast: Text
    region: Text
    planted_hu: Num = math.nan
    recovered_hu: Num = math.nan
    #: ``planted`` or ``nothing planted``.
    check: Text = "planted"
    ok: Flag


class RecoveryVerdict(Record):
    """Whether the planted effects were recovered (``verdict.recovery``)."""

    checked: list[RecoveryCheck] = []
    passed: bool | None = None
    tolerance: Num = math.nan
    spill_limit_hu: Num = math.nan
    rule: Text = ""


class Verdict(Record):
    """``results.json`` ``verdict``."""

    alpha: Num = math.nan
    test: str | None = None
    edits: list[VerdictEdit] = []
    null_control_passed: bool | None = None
    null_control_max_abs_hu: Num = math.nan
    calibrated: Flag = False
    specificity: list[Text] = []
    recovery: RecoveryVerdict | None = None
    notes: list[Text] = []


class Results(Record):
    """``RUN/analysis/results.json`` (see the module text)."""

    run: RunRecord
    settings: AnalysisSettings = Field(default_factory=AnalysisSettings)
    cohort_stats: list[CohortRow] = []
    noise_floor: list[NoiseFloorRow] = []
    calibration: Calibration | None = None
    specificity: list[SpecificityRow] = []
    observed: list[ObservedRow] = []
    adjusted: list[AdjustedRow] = []
    recovery: list[RecoveryRow] = []
    verdict: Verdict | None = None
    alpha: Num = 0.05
    #: The bootstrap count of the oldest files (now ``settings.n_boot``); never written.
    n_boot: MaybeCount = None

    @field_serializer("run")
    def _run_as_described(self, run: RunRecord) -> dict[str, Any]:
        return run.described()

    @model_serializer(mode="wrap")
    def _drop_legacy(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if out.get("n_boot") is None:
            out.pop("n_boot", None)
        return out

    @property
    def bootstraps(self) -> int | None:
        """Bootstrap resamples per interval (settings, else the oldest files' top level)."""
        return self.settings.n_boot if self.settings.n_boot is not None else self.n_boot

    def rows(self, contrast: str) -> list[CohortRow]:
        """The cohort rows of one contrast, in table order."""
        return [r for r in self.cohort_stats if r.contrast == contrast]

    def to_json(self) -> dict[str, Any]:
        """The ``results.json`` content (NaN as None)."""
        return clean_json(self.model_dump())


def as_results(value: Results | Mapping[str, Any], where: str = "the results") -> Results:
    """``value`` as a :class:`Results` record (a ``results.json`` dict is validated; a field
    at fault is one sentence naming ``where``)."""
    if isinstance(value, Results):
        return value
    try:
        return Results.model_validate(dict(value))
    except ValidationError as err:
        raise record_error(where, err, "rerun unveil analyze") from None


def table_csv_text(rows: Sequence[Row], model: type[Row]) -> str:
    """A table as CSV text in the model's column order; a text cell a spreadsheet would run
    as a formula (an id ``=cmd``) is written ``'=cmd`` (:mod:`unveil.csvsafe`; numbers are
    never changed, and the raw ids stay in ``results.json``'s ``run.subjects``)."""
    # lazy pandas (~0.4 s): compare and report read records; only this writer uses pandas
    import pandas as pd

    columns = list(model.CSV_COLUMNS)
    frame = pd.DataFrame([r.model_dump() for r in rows], columns=columns)
    frame = neutralise_frame(frame)
    return frame.to_csv(index=False, na_rep="", lineterminator="\n", float_format="%.6g")


def read_table_csv(path: str | os.PathLike, model: type[Row], fix: str) -> list[Row]:
    """The rows of a table CSV written by :func:`write_analysis`, with the quote put in
    front of formula-like text cells removed (:func:`unveil.csvsafe.restore_cell`)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        raw = [
            {restore_cell(k): restore_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)
        ]
    out = []
    for i, row in enumerate(raw):
        try:
            out.append(model.model_validate(row))
        except ValidationError as err:
            raise record_error(f"{path} (row {i + 2})", err, fix) from None
    return out


def write_analysis(
    folder: str | os.PathLike, results: Results, subject_rows: Sequence[SubjectRegionRow]
) -> None:
    """Write the tables (CSV) and ``results.json`` of an analysis into ``folder``."""
    folder = Path(folder)
    tables: list[tuple[type[Row], Sequence[Row]]] = [(SubjectRegionRow, subject_rows)]
    tables += [(model, getattr(results, name)) for name, model in TABLE_ROWS.items()]
    for model, rows in tables:
        write_text(folder / f"{model.TABLE}.csv", table_csv_text(rows, model))
    write_json(folder / "results.json", results.to_json())


def read_results(run_root: str | os.PathLike) -> Results:
    """Read ``RUN/analysis/results.json``, a table it lacks from its CSV file.

    Raises:
        UnveilError: when the run folder or ``results.json`` is missing or not valid JSON
        (one sentence saying to run ``unveil analyze RUN`` first); DataError when a field
        is missing, unknown or of the wrong type (one sentence: file, field, rerun).
    """
    root = Path(run_root)
    layout = RunLayout(root)
    path = layout.results_json
    again = f"run `unveil analyze {root}` again"
    if not root.is_dir():
        raise UnveilError(
            f"run folder {root} does not exist; give the folder written by unveil counterfactual."
        )
    if not path.is_file():
        raise UnveilError(
            f"{path} is missing; run `unveil analyze {root}` first, then `unveil report {root}`."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UnveilError(f"{path} is corrupt (not valid JSON); {again}.") from None
    if not isinstance(raw, dict):
        raise UnveilError(f"{path} is not a JSON object; {again}.")
    for name, model in TABLE_ROWS.items():
        csv_path = layout.table_csv(name)
        if not raw.get(name) and csv_path.is_file():
            raw[name] = read_table_csv(csv_path, model, again)
    try:
        return Results.model_validate(raw)
    except ValidationError as err:
        raise record_error(path, err, again) from None


__all__ = [
    "TABLES",
    "AdjustedRow",
    "AnalysisSettings",
    "Calibration",
    "CohortRow",
    "NoiseFloorRow",
    "ObservedRow",
    "RecoveryCheck",
    "RecoveryRow",
    "RecoveryVerdict",
    "Results",
    "SpecificityRow",
    "SubjectRegionRow",
    "Verdict",
    "VerdictEdit",
    "as_results",
    "read_results",
    "read_table_csv",
    "table_csv_text",
    "write_analysis",
]
