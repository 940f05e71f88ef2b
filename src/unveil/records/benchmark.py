"""The results file of ``benchmarks/train_step.py`` (``--json PATH``, read back by ``--load``).

One row per measured case, typed here so that the writer and the reader (which merges
saved runs into one table) agree on every field, and an old or hand-edited file is refused
with one sentence naming the field instead of failing half-way through a table::

    {"info": TrainStepRun, "args": {...the command line...},
     "results": [TrainStepRow | FailedStepRow, ...]}

A row is a failed case when it holds ``error`` (one line), a measurement otherwise.
Times are seconds per call (the raw timed calls, pooled over rounds, and their medians),
memory is MiB.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError

from unveil.errors import DataError
from unveil.fs import write_json


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepCase(_Record):
    """What identifies a case: the config (family-fusion), the patch shape, the batch."""

    config: str
    family: str
    fusion: str
    shape: list[int]
    batch: int


class FailedStepRow(StepCase):
    """A case that failed (out of memory, a bad override): its one-line error."""

    error: str


class TrainStepRow(StepCase):
    """One measured case.

    ``train_s`` / ``eval_s`` are the timed calls (wall clock) and ``*_cpu_s`` their process
    CPU time; ``*_med`` the medians; ``patch_s`` the implied time of one patch
    (``eval_med x sample_steps``); ``train_busy`` CPU time / (wall x threads);
    ``peak_kind`` says what ``peak_mib`` is (process peak RSS or CUDA allocations).
    """

    device: str
    threads: int
    amp: str
    pid: int
    params_g: int
    params_d: int
    train_s: list[float]
    train_cpu_s: list[float]
    sample_steps: int
    evals_batch: int
    eval_s: list[float]
    eval_cpu_s: list[float]
    eval_gflop: float
    train_med: float
    eval_med: float
    patch_s: float
    train_busy: float
    peak_mib: float
    peak_kind: str
    import_rss_mib: float
    rounds: int


def _row_kind(v: Any) -> str:
    return "failed" if isinstance(v, dict) and "error" in v else "measured"


StepRow = Annotated[
    Annotated[TrainStepRow, Tag("measured")] | Annotated[FailedStepRow, Tag("failed")],
    Discriminator(_row_kind),
]


class TrainStepRun(_Record):
    """The run's header: when, where, with which settings."""

    date: str
    device: str
    device_name: str
    torch: str
    threads: int
    amp: str
    warmup: int
    iters: int
    rounds: int
    isolated: bool


class TrainStepResults(_Record):
    """The whole file: the run, its command line, one row per case."""

    info: TrainStepRun
    args: dict[str, Any]
    results: list[StepRow]

    def rows(self) -> list[dict[str, Any]]:
        """The rows as plain dicts (the tables of the script read them so)."""
        return [r.model_dump() for r in self.results]


def write_train_step(path: str | os.PathLike, record: TrainStepResults) -> Path:
    """Write the results file atomically."""
    return write_json(path, record.model_dump())


def read_train_step(path: str | os.PathLike) -> TrainStepResults:
    """Read a results file; :class:`DataError` (one sentence: the file, the field, the fix)
    when it is missing, not JSON or does not match the rows above."""
    fix = "rerun the benchmark with --json PATH"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(
            f"{path} is not a results file written by --json ({type(err).__name__}); {fix}."
        ) from None
    try:
        return TrainStepResults.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(p) for p in e["loc"] if p not in ("measured", "failed"))
        what = {"missing": "lacks the field", "extra_forbidden": "has an unknown field"}
        if e["type"] in what:
            problem = f"{what[e['type']]} '{field}'"
        else:
            problem = f"has an invalid field '{field}' ({e['msg']})"
        raise DataError(
            f"{path} is not a results file written by --json of this version: it {problem}; {fix}."
        ) from None
