"""The evaluation folder written by ``unveil evaluate`` and read by ``unveil compare``.

One place names the files and types the two JSON records, so writer and reader cannot
disagree about a name or a field::

    EVAL/
      per_subject.csv   one row per subject (columns vary with the regions and attributes;
                        rendered by unveil.metrics.eval_render, not read back)
      summary.json      figure -> {value, ci_low, ci_high, n, statistic, unit} or null,
                        and <figure>_reason / <key>_note -> one sentence
      summary.md        the same as tables (rendered by unveil.metrics.eval_render)
      info.json         what was evaluated and how (EvaluationInfo)

:func:`write_evaluation` writes all four files at once (built aside, moved into place);
:func:`read_evaluation` reads the two records back.  A folder that does not match these
records (a field missing, an unknown field, a wrong type) is refused with one sentence
naming the file and the field; the fix is to rerun ``unveil evaluate``.

JSON has no infinity: ``inf`` is written as the string ``"inf"`` (a perfect subject's PSNR)
and read back as a float; NaN is written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, RootModel, ValidationError, model_validator

from unveil.errors import DataError
from unveil.fs import atomic_dir, write_json, write_text

INFO_JSON = "info.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PER_SUBJECT_CSV = "per_subject.csv"
#: Every file of an evaluation folder, in the order they are written.
EVALUATION_FILES: tuple[str, ...] = (PER_SUBJECT_CSV, SUMMARY_JSON, SUMMARY_MD, INFO_JSON)
#: Suffixes of the summary keys that hold a sentence, not a figure.
SENTENCE_SUFFIXES: tuple[str, ...] = ("_reason", "_note")


class _Record(BaseModel):
    """Base of the records: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class Figure(_Record):
    """One reported figure: the statistic over subjects with its 95% interval.

    ``value`` / ``ci_low`` / ``ci_high`` are ``None`` where undefined (one subject has no
    interval) and may be ``inf`` (the median PSNR of perfect subjects).
    """

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    statistic: str
    unit: str


def is_sentence_key(key: str) -> bool:
    """``<figure>_reason`` and ``<key>_note`` hold a sentence; every other key a figure."""
    return key.endswith(SENTENCE_SUFFIXES)


class EvaluationSummary(RootModel[dict[str, Figure | str | None]]):
    """``summary.json``: figures and sentences in one flat mapping, in report order.

    The order is kept (the Markdown tables and the comparison follow it).  A figure is
    ``None`` when it could not be computed, with ``<figure>_reason`` saying why.
    """

    @model_validator(mode="before")
    @classmethod
    def _kinds_follow_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key, v in data.items():
                if is_sentence_key(str(key)):
                    if v is not None and not isinstance(v, str):
                        raise ValueError(f"'{key}' should be a sentence or null")
                elif isinstance(v, str):
                    raise ValueError(f"'{key}' should be a figure or null, not text")
        return data

    def figure(self, key: str) -> Figure | None:
        """The figure ``key``; ``None`` when absent or not computed."""
        v = self.root.get(key)
        return v if isinstance(v, Figure) else None

    def reason(self, key: str) -> str | None:
        """Why ``key`` was not computed (``<key>_reason``), if said."""
        v = self.root.get(f"{key}_reason")
        return v if isinstance(v, str) else None

    def figures(self) -> Iterator[tuple[str, Figure | None]]:
        """``(key, figure or None)`` of every figure key, in order (sentences left out)."""
        for k, v in self.root.items():
            if not is_sentence_key(k):
                yield k, v if isinstance(v, Figure) else None

    def sentences(self) -> Iterator[tuple[str, str]]:
        """``(key, sentence)`` of every non-empty ``_reason`` / ``_note``, in order."""
        for k, v in self.root.items():
            if is_sentence_key(k) and isinstance(v, str) and v:
                yield k, v

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (figures as dicts, ``inf`` as a float)."""
        return self.model_dump()


class ReaderModelInfo(_Record):
    """One trained condition-adherence reader."""

    kind: str
    classes: list[str]
    n_train: int


class AdherenceInfo(_Record):
    """How condition adherence was read (the readers and what they were trained on)."""

    reader: str
    input_size: int
    epochs: int
    train_subjects: int
    attributes: list[str]
    models: dict[str, ReaderModelInfo]


class EvaluationInfo(_Record):
    """``info.json``: the checkpoint, the subjects and every setting of one evaluation.

    Fields are in the order they are written.  ``split`` is ``None`` when explicit ids
    were evaluated.  ``amp`` came later than the first evaluations: older folders lack it.
    """

    checkpoint: str
    step: int
    run_name: str
    family: str
    fusion: str
    variant: str
    cohort: str
    split: str | None
    n_subjects: int
    subjects: list[str]
    seed: int
    hu_window: list[float]
    n_boot: int
    n_boot_set: int
    guidance_scale: float | None
    amp: str | None = None
    sample_steps: int | None
    features_2d: str | None
    features_3d: str | None
    fid_slices: str
    fid_size_2d: int | None
    fid_size_3d: int | None
    edits: list[str]
    adherence: AdherenceInfo
    versions: dict[str, str]
    config: dict[str, Any]


_M = TypeVar("_M", bound=BaseModel)


class Evaluation(BaseModel):
    """An evaluation folder's two records."""

    model_config = ConfigDict(extra="forbid")

    info: EvaluationInfo
    summary: EvaluationSummary


# ------------------------------------------------------------------------ writing


def json_ready(obj: Any) -> Any:
    """A copy for strict JSON: NaN -> ``None``, ``±inf`` -> ``"inf"`` / ``"-inf"``, keys
    as strings; numpy scalars become Python numbers (arrays are left to the writer)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if getattr(obj, "ndim", None) == 0 and callable(getattr(obj, "item", None)):
        obj = obj.item()  # a numpy scalar (records import no numpy)
    if isinstance(obj, float):
        obj = float(obj)
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def write_evaluation(
    folder: str | os.PathLike,
    evaluation: Evaluation,
    *,
    per_subject_csv: str,
    summary_md: str,
    overwrite: bool = False,
) -> Path:
    """Write the whole evaluation folder: the two records and their rendered companions.

    The folder is built aside and moved into place at the end, so it is complete or
    absent; an existing non-empty ``folder`` is replaced only with ``overwrite``.
    """
    folder = Path(folder)
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        write_text(tmp / PER_SUBJECT_CSV, per_subject_csv)
        write_json(tmp / SUMMARY_JSON, json_ready(evaluation.summary.model_dump()))
        write_text(tmp / SUMMARY_MD, summary_md)
        write_json(tmp / INFO_JSON, json_ready(evaluation.info.model_dump()))
    return folder


# ------------------------------------------------------------------------ reading


def read_evaluation(folder: str | os.PathLike) -> Evaluation:
    """Read ``info.json`` and ``summary.json`` of an evaluation folder.

    Raises:
        DataError: the folder lacks one of them, one is not JSON, or one does not match
            its record (one sentence naming the file and the field).
    """
    p = Path(folder)
    info = _read_record(p, INFO_JSON, EvaluationInfo)
    summary = _read_record(p, SUMMARY_JSON, EvaluationSummary)
    return Evaluation(info=info, summary=summary)


def _read_record(folder: Path, name: str, model: type[_M]) -> _M:
    f = folder / name
    if not f.is_file():
        raise DataError(
            f"{folder} is not an evaluation folder (it has no {name}); give folders written by "
            "unveil evaluate."
        )
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(
            f"{f} cannot be read as JSON ({type(err).__name__}); rerun unveil evaluate for {folder}."
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise DataError(record_error_sentence(err, f, folder)) from None


def record_error_sentence(err: ValidationError, file: Path, folder: Path) -> str:
    """The first validation problem as one sentence: the file, the field, the fix."""
    errors = err.errors()
    # A summary entry is tried as a figure and as a sentence: report the figure's problem.
    kept = [e for e in errors if "str" not in e["loc"][1:2]] or errors
    e = kept[0]
    loc = [str(p) for p in e["loc"] if p != "Figure"]
    field = ".".join(loc) or "(top level)"
    fix = f"rerun unveil evaluate for {folder}"
    if e["type"] == "missing":
        return f"{file} lacks the field '{field}' (written by another version); {fix}."
    if e["type"] == "extra_forbidden":
        return f"{file} has an unknown field '{field}' (written by another version); {fix}."
    msg = str(e["msg"]).removeprefix("Value error, ")
    msg = msg[:1].lower() + msg[1:]
    if not loc:  # a summary entry of the wrong kind: the message names its key
        return f"{file} is not a valid record: {msg}; {fix}."
    return f"{file} has an invalid field '{field}': {msg}; {fix}."
