"""The on-disk layout of a counterfactual run and the records it holds: one place that names every file.

``unveil counterfactual`` writes a run with these paths and ``unveil analyze`` reads it
back with the same ones, so writer and reader cannot disagree about a file name::

    RUN/
      counterfactual.plan.json            the parameters, written before the first volume
      counterfactual.json                 the run record, written last (marks a complete run)
      subjects/<id>/factual_s<k>.nii.gz   subject's own prompt, noise of seed k
      subjects/<id>/floor_s<k>.nii.gz     same prompt, noise of seed k + floor_seed_offset
      subjects/<id>/<slug>_s<k>.nii.gz    edited prompt, the SAME noise as factual_s<k>
      analysis/                           written by ``unveil analyze`` (:mod:`unveil.records.results`)

``<slug>`` is :func:`edit_slug` of the edit's text form (``str(edit)``), or of a permuted
control's name.

``counterfactual.json`` is a :class:`RunRecord`: ``cohort``, ``edits``, ``seeds`` and
``subjects`` are required; the other fields are optional because older runs lack them, and
each has the fallback the readers always used:

- ``null_edits`` (negative-control edits) and ``permuted_controls`` (names of contrasts
  whose volumes lie at :meth:`RunLayout.edited` like an edit's, made by setting each
  subject's null field to the value of another, randomly permuted, subject: negative
  controls by construction, not parseable as edits): ``[]``;
- ``noise``: ``"per-subject"`` when each (subject, seed) drew its own noise; absent in
  older runs, which shared seed k's noise across subjects (the analysis notes it);
- ``floor_seed_offset``: written by older runs only; 1000 when ``noise`` is absent;
- ``baseline``: ``[]``; ``hu_window``: :data:`unveil.config.DEFAULT_HU_WINDOW`;
- ``config`` (the training config; the analysis reads its ``data`` and ``text``
  sections): the defaults; ``steps`` (None for a GAN), ``checkpoint``, ``family``,
  ``from_scan``, ``guidance_scale``, ``amp``: unknown.

Forward compatibility: a field this version does not know (written by a newer unveil) is
kept as it is and passed on, never interpreted, because rewriting the record means
regenerating every volume; a field of the wrong type, or a required one missing, is one
sentence (:func:`read_run_record`).  ``counterfactual.plan.json`` (:class:`RunPlan`) keeps
unknown fields as well: any field that differs, known or not, refuses a resume.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from unveil.config import DEFAULT_HU_WINDOW
from unveil.errors import DataError, UnveilError
from unveil.fs import write_json
from unveil.records.fields import Text, record_error

#: File name of the run description.
RUN_JSON = "counterfactual.json"
#: File name of the run's parameters, written before its first volume (resuming compares).
PLAN_JSON = "counterfactual.plan.json"

#: Keys every counterfactual.json must hold.
RUN_KEYS: tuple[str, ...] = ("cohort", "edits", "seeds", "subjects")

#: Seed offset of the noise floor in runs that predate per-subject noise.
LEGACY_FLOOR_SEED_OFFSET = 1000

_REDO = "re-run unveil counterfactual to write the run again"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def edit_slug(edit_text: str) -> str:
    """The file-name form of an edit: characters outside ``[A-Za-z0-9._+=-]`` become ``_``.

    ``smoking=current`` -> ``smoking=current``; ``diagnosis=non IPF`` -> ``diagnosis=non_IPF``;
    ``age-=5`` -> ``age-=5``.  Distinct edits of one run must have distinct slugs (checked by
    :func:`read_run_record`).
    """
    return _UNSAFE.sub("_", str(edit_text).strip())


Number = int | float


class RunRecord(BaseModel):
    """``counterfactual.json``: what a complete run generated (see the module text)."""

    model_config = ConfigDict(extra="allow")

    checkpoint: str | None = None
    cohort: Text
    family: str | None = None
    edits: list[Text]
    null_edits: list[Text] = []
    baseline: list[Text] = []
    permuted_controls: list[Text] = []
    seeds: list[int]
    noise: str | None = None
    subjects: list[Text]
    from_scan: bool | None = None
    guidance_scale: Number | None = None
    steps: int | None = None
    hu_window: tuple[Number, Number] | None = None
    amp: str | None = None
    config: dict[str, Any] | None = None
    floor_seed_offset: int | None = None
    #: Per contrast, the subjects whose prompt it leaves unchanged (a shift of a field
    #: missing in their row, or a value they already have): their edited volume is their
    #: factual one by construction, so the analysis leaves them out of that contrast.
    unchanged: dict[str, list[Text]] = {}

    @property
    def contrasts(self) -> list[str]:
        """Every contrast with volumes: edits, null edits, permuted controls, in order."""
        return [*self.edits, *self.null_edits, *self.permuted_controls]

    @property
    def window(self) -> tuple[Number, Number]:
        """The HU window the volumes were generated in (the default for older runs)."""
        return tuple(self.hu_window) if self.hu_window is not None else DEFAULT_HU_WINDOW

    @property
    def per_subject_noise(self) -> bool:
        """Whether every (subject, seed) drew its own noise (absent in older runs)."""
        return self.noise == "per-subject"

    @property
    def floor_offset(self) -> int:
        """Seed offset of the floor's noise in an older run (shared noise)."""
        if self.floor_seed_offset is not None:
            return int(self.floor_seed_offset)
        return LEGACY_FLOOR_SEED_OFFSET

    def config_section(self, name: str) -> dict[str, Any]:
        """A section of the run's config (``{}`` when the run has no config or no such section)."""
        section = (self.config or {}).get(name)
        return section if isinstance(section, dict) else {}

    def described(self) -> dict[str, Any]:
        """The record as ``results.json`` repeats it: the fields the file held (with the
        fallbacks :func:`read_run_record` makes explicit), without the config."""
        return self.model_dump(exclude_unset=True, exclude={"config"})


class FileIdentity(BaseModel):
    """A file as a plan identifies it: resolved path, size, modification time (and the
    training step of a checkpoint)."""

    model_config = ConfigDict(extra="allow")

    path: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    step: int | None = None


class RunPlan(BaseModel):
    """``counterfactual.plan.json``: what the volumes of a run depend on.

    Every field is optional on reading: a plan written by another version may lack one,
    which then differs from this run's value (and the resume is refused).
    """

    model_config = ConfigDict(extra="allow")

    checkpoint: FileIdentity | None = None
    cohort: str | None = None
    cohort_files: str | None = None
    family: str | None = None
    edits: list[str] | None = None
    null_edits: list[str] | None = None
    baseline: list[str] | None = None
    permuted_controls: list[str] | None = None
    seeds: list[int] | None = None
    noise: str | None = None
    subjects: list[str] | None = None
    from_scan: bool | None = None
    guidance_scale: float | None = None
    steps: int | None = None
    amp: str | None = None

    def differences(self, other: RunPlan) -> list[str]:
        """Names of the fields whose values differ (this plan's order, then ``other``'s
        extra fields); the cohort's file digest is not named when the subjects differ
        (other subjects have other files: said once)."""
        mine = self.model_dump(mode="json")
        theirs = other.model_dump(mode="json")
        differ = [k for k in dict.fromkeys([*mine, *theirs]) if mine.get(k) != theirs.get(k)]
        if "subjects" in differ:
            differ = [k for k in differ if k != "cohort_files"]
        return differ


class RunLayout:
    """Paths inside a counterfactual run folder (nothing is read or created here)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def json_path(self) -> Path:
        """``RUN/counterfactual.json``."""
        return self.root / RUN_JSON

    @property
    def plan_path(self) -> Path:
        """``RUN/counterfactual.plan.json``."""
        return self.root / PLAN_JSON

    @property
    def subjects_dir(self) -> Path:
        return self.root / "subjects"

    def subject_dir(self, subject: str) -> Path:
        return self.subjects_dir / subject

    def factual(self, subject: str, seed: int) -> Path:
        """Generated under the subject's own prompt with the noise of ``seed``."""
        return self.subject_dir(subject) / f"factual_s{int(seed)}.nii.gz"

    def floor(self, subject: str, seed: int) -> Path:
        """Same prompt as :meth:`factual`, noise of ``seed + floor_seed_offset``.

        Indexed by the factual seed ``seed`` (the file of pair ``seed``), not by the seed
        actually used for its noise.
        """
        return self.subject_dir(subject) / f"floor_s{int(seed)}.nii.gz"

    def edited(self, subject: str, edit: str, seed: int) -> Path:
        """Edited prompt with the same noise as :meth:`factual` of ``seed``."""
        return self.subject_dir(subject) / f"{edit_slug(edit)}_s{int(seed)}.nii.gz"

    @property
    def analysis_dir(self) -> Path:
        """``RUN/analysis``: everything ``unveil analyze`` writes."""
        return self.root / "analysis"

    @property
    def results_json(self) -> Path:
        """``RUN/analysis/results.json``."""
        return self.analysis_dir / "results.json"

    def table_csv(self, name: str) -> Path:
        """``RUN/analysis/<name>.csv`` (``cohort_stats``, ``noise_floor`` ...)."""
        return self.analysis_dir / f"{name}.csv"

    @property
    def maps_dir(self) -> Path:
        return self.analysis_dir / "maps"

    def map_nifti(self, subject: str, edit: str) -> Path:
        """Mean over seeds of (edited - factual) in HU for one subject and edit."""
        return self.maps_dir / subject / f"{edit_slug(edit)}_mean_diff.nii.gz"

    def map_png(self, subject: str, edit: str) -> Path:
        return self.maps_dir / subject / f"{edit_slug(edit)}_mean_diff.png"

    def volumes(self, run: RunRecord) -> list[Path]:
        """Every volume the run record says exists, in a fixed order."""
        out: list[Path] = []
        for sid in run.subjects:
            for k in run.seeds:
                out.append(self.factual(sid, k))
                out.append(self.floor(sid, k))
                out.extend(self.edited(sid, e, k) for e in run.contrasts)
        return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path} is corrupt (not valid JSON); {_REDO}.") from None


def read_run_record(path: str | os.PathLike) -> RunRecord:
    """Read and validate a ``counterfactual.json`` file (not the volumes it names).

    The fallbacks of the module text for ``null_edits`` and ``permuted_controls`` (and
    ``floor_seed_offset`` in a run without ``noise``) are made explicit, so
    :meth:`RunRecord.described` repeats them.

    Raises:
        DataError: one sentence naming the file, the field at fault and the fix (re-run
        ``unveil counterfactual``).
    """
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path} is corrupt (not a JSON object); {_REDO}.")
    try:
        run = RunRecord.model_validate(raw)
    except ValidationError as err:
        raise record_error(path, err, _REDO) from None
    for name in ("null_edits", "permuted_controls"):
        if name not in run.model_fields_set:
            setattr(run, name, [])
    if run.noise is None and run.floor_seed_offset is None:
        run.floor_seed_offset = LEGACY_FLOOR_SEED_OFFSET
    if not run.subjects or not run.seeds:
        raise DataError(f"{path} lists no subjects or no seeds; {_REDO}.")
    if not run.edits and not run.null_edits:
        raise DataError(f"{path} lists no edits; {_REDO} with at least one --edit.")
    slugs = [edit_slug(e) for e in run.contrasts]
    if len(set(slugs)) != len(slugs):
        raise DataError(
            f"{path} lists contrasts whose file names collide ({', '.join(run.contrasts)}); "
            f"{_REDO} with distinct edits."
        )
    return run


def write_run_record(path: str | os.PathLike, record: RunRecord) -> Path:
    """Write ``counterfactual.json`` atomically (the fields the record was given)."""
    return write_json(path, record.model_dump(exclude_unset=True))


def read_run(root: str | os.PathLike, check_volumes: bool = True) -> RunRecord:
    """Read and validate the run folder ``root``: its record, and its volumes.

    Args:
        root: the run folder.
        check_volumes: also check that every factual, floor and edited volume exists.

    Raises:
        UnveilError: one sentence naming the missing/corrupt file and saying to re-run
        ``unveil counterfactual``.
    """
    layout = RunLayout(root)
    if not layout.root.is_dir():
        raise UnveilError(
            f"run folder {layout.root} does not exist; give the folder written by unveil "
            "counterfactual."
        )
    if not layout.json_path.is_file():
        raise UnveilError(
            f"{layout.json_path} is missing, so {layout.root} is not a counterfactual run; give "
            f"the folder written by unveil counterfactual, or {_REDO}."
        )
    run = read_run_record(layout.json_path)
    if check_volumes:
        for vol in layout.volumes(run):
            if not vol.is_file():
                raise UnveilError(f"{vol} is missing from the run; {_REDO}.")
    return run


def read_run_plan(path: str | os.PathLike) -> RunPlan | None:
    """The plan at ``path``, or None when it cannot be read as one (corrupt JSON, not an
    object, a field of the wrong type): such a plan cannot be resumed."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return RunPlan.model_validate(raw) if isinstance(raw, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError):
        return None


def write_run_plan(path: str | os.PathLike, plan: RunPlan) -> Path:
    """Write ``counterfactual.plan.json`` atomically (every field, as it reads back)."""
    return write_json(path, plan.model_dump(mode="json", exclude_unset=True))
