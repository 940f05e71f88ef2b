"""The reading half of ``unveil analyze``: the run record, its cohort, the planted effects,
the generated volumes.

Every reader here raises one sentence (:class:`~unveil.errors.UnveilError`) for anything a
user can fix; nothing is computed beyond what reading needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from unveil.analysis.edits import template_from_run
from unveil.analysis.inputs import RunDesign, run_design
from unveil.analysis.regions import region_names
from unveil.config import DataConfig
from unveil.data.cohort import Cohort
from unveil.data.effects import EffectSpec, is_missing
from unveil.data.io import read_volume
from unveil.data.table import read_clinical_table
from unveil.errors import DataError, UnveilError
from unveil.records import RUN_JSON, RunLayout, RunRecord, read_run


def data_config(run: RunRecord, strict: bool = True):
    """The data section of the run's config as a :class:`~unveil.config.DataConfig` (the
    defaults when the run has none).

    Args:
        strict: refuse a section that does not validate (one sentence); else fall back on
            the defaults (the report's slice views only need the label values).
    """
    data = run.config_section("data")
    if not data:
        return DataConfig()
    try:
        return DataConfig.model_validate(data)
    except ValidationError as err:
        if not strict:
            return DataConfig()
        raise UnveilError(
            f"the data section of the config in {RUN_JSON} does not validate "
            f"({err.__class__.__name__}); re-run unveil counterfactual with a valid config."
        ) from None


def cohort_root(run: RunRecord, root: Path) -> Path:
    """The cohort folder named in the run, absolute or relative to the cwd or the run."""
    p = Path(run.cohort)
    for cand in (p, root / p) if not p.is_absolute() else (p,):
        if cand.is_dir():
            return cand
    raise UnveilError(
        f"cohort folder {p} named in {root / RUN_JSON} does not exist; restore it or fix the "
        "'cohort' key of that file."
    )


def find_cohort(run: RunRecord, root: Path) -> Path | None:
    """The cohort folder of the run if it can be found (also beside the run), else None."""
    if not run.cohort:
        return None
    p = Path(run.cohort)
    for cand in (p, root / p, root.parent / p):
        if cand.is_dir():
            return cand
    return None


def load_effects(cohort: Path) -> tuple[list[Any], list[str]] | None:
    """``(effects, null_attributes)`` from ``cohort/effects.json``, or None if there is none.

    Reads the record written by :func:`unveil.data.effects.effects_record` (its ``kind`` and
    ``description`` keys are derived and ignored).
    """
    path = cohort / "effects.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        effects = []
        for e in record.get("effects", []):
            keep = {k: v for k, v in e.items() if k in EffectSpec.model_fields and v is not None}
            if keep.get("per_unit") is not None:
                keep.pop("shift_hu", None)  # a per-unit effect's size is per_unit
            effects.append(EffectSpec.model_validate(keep))
    except Exception as err:
        raise UnveilError(
            f"{path} is not a valid effects record ({err.__class__.__name__}); regenerate the "
            "cohort with unveil phantom or unveil plant, or remove the file."
        ) from None
    return effects, [str(a) for a in record.get("null_attributes", [])]


def truth_rows(cohort: Path, id_column: str, fallback: Mapping[str, dict]) -> dict[str, dict]:
    """True attributes by id: ``truth.csv`` when the cohort has one, else the clinical rows."""
    path = cohort / "truth.csv"
    if not path.is_file():
        return {k: dict(v) for k, v in fallback.items()}
    for idc in dict.fromkeys((id_column, "id")):
        try:
            df = read_clinical_table(path, idc)
        except UnveilError:
            continue
        rows = {}
        for _, r in df.iterrows():
            rows[str(r[idc])] = {
                str(k): (None if is_missing(v) else v) for k, v in r.items() if k != idc
            }
        return rows
    return {k: dict(v) for k, v in fallback.items()}


def read_generated(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A generated volume of the run, refused when off the mask's grid or not finite."""
    vol = read_volume(path, dtype=np.float32)
    if vol.shape != tuple(shape):
        raise UnveilError(
            f"{path} has shape {vol.shape} but the subject's mask has {tuple(shape)}; generated "
            "volumes must be on the source grid, re-run unveil counterfactual."
        )
    # A NaN or inf would make every regional mean it touches NaN, and the rows then read
    # as "no region differs from the noise floor"; the whole volume is checked (one pass).
    if not np.isfinite(vol.array).all():
        n_nan = int(np.isnan(vol.array).sum())
        n_inf = int(np.isinf(vol.array).sum())
        raise DataError(
            f"{path} holds {n_nan} NaN and {n_inf} infinite voxel(s): the generator produced "
            "non-finite values (a diverged model or a non-finite --guidance-scale); "
            "regenerate the run with unveil counterfactual."
        )
    return vol.array


@dataclass
class LoadedRun:
    """A run ready to be measured: its record, cohort and design.

    Attributes:
        layout: the run folder's paths; run: its record.
        data_cfg: the data section of its config; cohort: the opened cohort
            (:class:`unveil.data.cohort.Cohort`).
        design: the contrasts and regions (:func:`unveil.analysis.inputs.run_design`).
        clinical: ``{id: {column: value}}`` rows of the cohort table.
        truth: the true attributes by id (planted cohorts only, else empty).
    """

    layout: RunLayout
    run: RunRecord
    data_cfg: Any
    cohort: Any
    design: RunDesign
    clinical: dict[str, dict[str, Any]]
    truth: dict[str, dict[str, Any]]

    @property
    def subjects(self) -> list[str]:
        return list(self.run.subjects)

    @property
    def seeds(self) -> list[int]:
        return [int(k) for k in self.run.seeds]


def load_run(root: str | os.PathLike) -> LoadedRun:
    """Read the run at ``root`` (record and volumes checked), open its cohort, read its
    planted effects and build its design."""
    root = Path(root)
    layout = RunLayout(root)
    run = read_run(root)
    data_cfg = data_config(run)
    where = cohort_root(run, root)
    cohort = Cohort.open(where, data_cfg, require_table=True)
    eff_info = load_effects(where)
    effects = eff_info[0] if eff_info else None
    design = run_design(
        run,
        region_names(data_cfg, effects),
        template_from_run(run),
        effects,
        eff_info[1] if eff_info else (),
    )
    absent = [s for s in run.subjects if s not in cohort.ids]
    if absent:
        raise UnveilError(
            f"subject {absent[0]} of {layout.json_path} is not a complete subject of cohort "
            f"{where}; run unveil check {where}, or re-run unveil counterfactual."
        )
    clinical = cohort.rows()
    truth = truth_rows(where, data_cfg.id_column, clinical) if effects else {}
    return LoadedRun(layout, run, data_cfg, cohort, design, clinical, truth)
