"""Planted effects: the shift an edit should produce, and how much of it was recovered.

Pure: planted effects, attributes and region indices in, expected means out; measured and
expected arrays in, :class:`~unveil.records.rows.RecoveryRow` records out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unveil.analysis.compute import row_rng
from unveil.analysis.edits import ParsedEdit
from unveil.analysis.regions import region_means
from unveil.analysis.stats import bootstrap_ci
from unveil.data.effects import effect_shift
from unveil.records import CohortRow, RecoveryRow

#: Default relative error allowed for a planted shift to count as recovered.
RECOVERY_TOLERANCE = 0.30
#: Default largest |shift| (HU) allowed in a lung zone where nothing was planted.
SPILL_LIMIT_HU = 5.0
#: Below this size (HU) a planted shift counts as nothing planted.
PLANTED_EPS_HU = 1e-6


def expected_shift_means(
    effects: Sequence[Any],
    edit: ParsedEdit,
    attributes: Mapping[str, Any],
    idx: Mapping[str, np.ndarray],
) -> dict[str, float]:
    """Planted shift an edit should produce, averaged in each region, for one subject.

    The expected difference map is built voxelwise as (effects of the edited attributes)
    minus (effects of the true attributes), each effect added exactly inside its region,
    which is what :func:`unveil.data.effects.apply_effects` does; it is done here on the
    flat region indices already computed, instead of recomputing the region masks for
    every edit.  An effect planted in ``upper_lung`` thus counts in ``lung`` in proportion
    to its voxels.

    Args:
        effects: the planted :class:`~unveil.data.effects.EffectSpec` list.
        edit: the edit; attributes: the subject's TRUE attributes (column -> value).
        idx: ``{region: flat voxel indices}``; it must hold every effect's region.

    Returns:
        ``{region: mean expected HU}`` for every region of ``idx`` (NaN where empty).
    """
    n = 1 + max((int(i.max()) for i in idx.values() if i.size), default=0)
    expected = np.zeros(n)
    for region, hu in effect_shift(effects, edit.apply(attributes)):
        expected[idx[region]] += hu
    for region, hu in effect_shift(effects, attributes):
        expected[idx[region]] -= hu
    return region_means(expected, idx)


def recovery_rows(
    all_edits: Sequence[str],
    controls: Sequence[str],
    parsed: Mapping[str, ParsedEdit],
    regions: Sequence[str],
    edit_vals: np.ndarray,
    planted: np.ndarray,
    cohort: Sequence[CohortRow],
    n_boot: int,
    seed: int,
    tolerance: float = RECOVERY_TOLERANCE,
    spill_limit_hu: float = SPILL_LIMIT_HU,
) -> list[RecoveryRow]:
    """Planted vs recovered mean shift per edit and region (parseable edits only).

    ``planted_hu`` is the mean over subjects of the expected regional shift (edited minus
    factual true attributes, ``planted`` ``(E, N, R)``); ``recovered_hu`` the mean measured
    difference (``edit_vals`` ``(E, N, R)``) over the same subjects, with the cohort row's
    CI (or its own bootstrap CI when some subjects lack a truth row).  Where something was
    planted, ``sign_ok`` is agreement of signs and ``within_tolerance`` is ``|error| <=
    tolerance * |planted|`` (``within_30pct`` the same at 30%, kept for readers of older
    files).  Where nothing was planted a relative error is undefined, and all three say
    ``|recovered| <= spill_limit_hu``.
    """
    row_of = {(r.contrast, r.region): r for r in cohort}
    rows = []
    for ei, e in enumerate(all_edits):
        if parsed[e].op == "unset":
            continue
        for ri, r in enumerate(regions):
            ev, pv = edit_vals[ei, :, ri], planted[ei, :, ri]
            keep = np.isfinite(ev) & np.isfinite(pv)
            if not keep.any() or (e, r) not in row_of:
                continue
            row = row_of[(e, r)]
            if int(keep.sum()) == row.n_subjects:
                lo, hi = row.ci_low, row.ci_high
            else:  # some subjects lack a truth row: the interval over those with one
                lo, hi = bootstrap_ci(ev[keep], row_rng(seed, 2, ei, ri), n_boot)
            plant, rec = float(pv[keep].mean()), float(ev[keep].mean())
            checks = _recovery_checks(plant, rec, tolerance, spill_limit_hu)
            rows.append(
                RecoveryRow(
                    contrast=e,
                    region=r,
                    planted_hu=plant,
                    recovered_hu=rec,
                    ci_low=lo,
                    ci_high=hi,
                    error_hu=rec - plant,
                    null_control=e in controls,
                    **checks,
                )
            )
    return rows


def _recovery_checks(
    plant: float, rec: float, tolerance: float, spill_limit_hu: float
) -> dict[str, Any]:
    """``relative_error``, ``sign_ok``, ``within_tolerance`` and ``within_30pct`` of a row."""
    err = rec - plant
    if abs(plant) <= PLANTED_EPS_HU:
        quiet = bool(abs(rec) <= spill_limit_hu)
        return dict(
            relative_error=math.nan, sign_ok=quiet, within_tolerance=quiet, within_30pct=quiet
        )
    return dict(
        relative_error=err / abs(plant),
        sign_ok=bool(np.sign(rec) == np.sign(plant)),
        within_tolerance=bool(abs(err) <= tolerance * abs(plant)),
        within_30pct=bool(abs(err) <= 0.30 * abs(plant)),
    )
