"""What the computation of ``unveil analyze`` takes: the options, the run's design (its
contrasts and what each is), and the measured arrays.

:func:`run_design` is pure (the run record, a template and the planted effects in); the
arrays are filled by :mod:`unveil.analysis.measure` from the volumes, or by a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unveil.analysis.compute.recovery import RECOVERY_TOLERANCE, SPILL_LIMIT_HU
from unveil.analysis.edits import ParsedEdit, parse_run_edit
from unveil.errors import UnveilError
from unveil.records import RunRecord, SubjectRegionRow

#: Contrast name of the noise floor (floor - factual) in subject_regions.csv.
NOISE_FLOOR = "noise_floor"

#: Kinds of negative control (``control_kind`` column); real edits have ``""``.
CONTROL_KINDS: tuple[str, ...] = ("null_edit", "effect_free", "permuted")


@dataclass(frozen=True)
class AnalysisOptions:
    """The options of ``unveil analyze`` (see :func:`unveil.analysis.analyze.analyze_run`)."""

    n_boot: int = 2000
    alpha: float = 0.05
    seed: int = 0
    test: str = "wilcoxon"
    map_limit_hu: float = 100.0
    min_effect_hu: float = 0.0
    recovery_tolerance: float = RECOVERY_TOLERANCE
    spill_limit_hu: float = SPILL_LIMIT_HU

    def check(self) -> None:
        """Refuse an option that cannot give a result, in one sentence."""
        if not 0.0 < self.alpha < 1.0:
            raise UnveilError(
                f"--alpha {self.alpha} is not a rate; give a number between 0 and 1, e.g. 0.05."
            )
        if self.n_boot < 100:
            raise UnveilError(
                f"--n-boot {self.n_boot} is too few resamples for a 95% interval; use at least "
                "100 (2000 for reporting)."
            )
        if self.test not in ("wilcoxon", "t"):
            raise UnveilError(f"--test {self.test} is unknown; use wilcoxon or t.")
        if not self.min_effect_hu >= 0.0:
            raise UnveilError(f"--min-effect {self.min_effect_hu} is negative; give 0 or more HU.")
        if not self.recovery_tolerance > 0.0:
            raise UnveilError(
                f"--tolerance {self.recovery_tolerance} is not a positive fraction; give e.g. 0.3."
            )
        if not self.spill_limit_hu >= 0.0:
            raise UnveilError(
                f"--spill-limit {self.spill_limit_hu} is negative; give 0 or more HU."
            )


@dataclass(frozen=True)
class RunDesign:
    """The contrasts of a run and what each one is.

    Attributes:
        parseable: the edits, then the null edits that are not also edits (parseable as
            edits: they get associations and planted expectations).
        permuted: the permuted-label controls (not edits).
        parsed: each parseable contrast parsed.
        baseline: the run's baseline edits, parsed.
        kinds: contrast -> control kind (:data:`CONTROL_KINDS`) or ``""`` for a real edit.
        regions: the regions measured.
        effects: the cohort's planted effects, None when it has none.
    """

    parseable: list[str]
    permuted: list[str]
    parsed: dict[str, ParsedEdit]
    baseline: list[ParsedEdit]
    kinds: dict[str, str]
    regions: list[str]
    effects: list[Any] | None = None

    @property
    def contrasts(self) -> list[str]:
        """Every contrast with volumes, in table order."""
        return [*self.parseable, *self.permuted]

    @property
    def controls(self) -> list[str]:
        """The negative controls, in table order."""
        return [e for e in self.contrasts if self.kinds[e]]


def run_design(
    run: RunRecord,
    regions: Sequence[str],
    template: Any | None = None,
    effects: Sequence[Any] | None = None,
    null_attributes: Sequence[str] = (),
) -> RunDesign:
    """The design of ``run``: its contrasts parsed (through ``template`` when there is one)
    and classified.

    Negative controls: the run's null edits, any edit of an attribute the cohort's
    ``effects.json`` declares effect-free (``null_attributes``: it is a null edit whatever
    the run called it), and the permuted-label contrasts (null by construction).
    """
    edits, null_edits = list(run.edits), list(run.null_edits)
    parseable = edits + [e for e in null_edits if e not in edits]
    permuted = [e for e in run.permuted_controls if e not in parseable]
    parsed = {e: parse_run_edit(e, template) for e in parseable}
    # Baseline edits were applied to every subject's row before both the factual and the
    # edited prompts were rendered, so the planted expectation starts from them too.
    baseline = [parse_run_edit(b, template) for b in run.baseline]
    nulls = set(null_attributes)
    kinds: dict[str, str] = {}
    for e in [*parseable, *permuted]:
        if e in permuted:
            kinds[e] = "permuted"
        elif e in null_edits:
            kinds[e] = "null_edit"
        elif parsed[e].column in nulls:
            kinds[e] = "effect_free"
        else:
            kinds[e] = ""
    return RunDesign(
        parseable=parseable,
        permuted=permuted,
        parsed=parsed,
        baseline=baseline,
        kinds=kinds,
        regions=list(regions),
        effects=list(effects) if effects else None,
    )


@dataclass
class Measurements:
    """What the volumes of a run say, reduced to regional means (``E`` contrasts, ``N``
    subjects, ``K`` seeds, ``R`` regions).

    Attributes:
        edit_vals: ``(E, N, R)`` per-subject effects, mean over seeds of edited - factual.
        floor_seed: ``(N, K, R)`` floor - factual per subject and seed.
        planted: ``(E, N, R)`` the planted expectation (NaN where nothing is known).
        n_voxels: ``(N, R)`` region sizes.
        real_means: ``{id: (R,)}`` regional mean HU of the real scans, for every complete
            subject of the cohort (not only the run's).
        saturated: per factual volume, the fraction of lung voxels at an edge of the HU
            window.
        subject_rows: the rows of ``subject_regions.csv``.
    """

    edit_vals: np.ndarray
    floor_seed: np.ndarray
    planted: np.ndarray
    n_voxels: np.ndarray
    real_means: dict[str, np.ndarray] = field(default_factory=dict)
    saturated: list[float] = field(default_factory=list)
    subject_rows: list[SubjectRegionRow] = field(default_factory=list)

    @classmethod
    def empty(cls, n_contrasts: int, n_subjects: int, n_seeds: int, n_regions: int) -> Measurements:
        """NaN-filled arrays of the given sizes."""
        nan = np.nan
        return cls(
            edit_vals=np.full((n_contrasts, n_subjects, n_regions), nan),
            floor_seed=np.full((n_subjects, n_seeds, n_regions), nan),
            planted=np.full((n_contrasts, n_subjects, n_regions), nan),
            n_voxels=np.zeros((n_subjects, n_regions)),
        )
