"""Empirical calibration of the cohort rows against the negative controls, and the FDR.

Pure: cohort rows in, cohort rows (with q-values, calibrated p and ``significant``) and
the :class:`~unveil.records.results.Calibration` record out.  ``docs/statistics.md``
("Negative controls and empirical calibration") gives the method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from unveil.analysis.stats import benjamini_hochberg, calibrated_p, fit_systematic_error
from unveil.records import Calibration, CohortRow

#: Fewest (control, region) rows for the empirical calibration to be fitted.
MIN_CALIBRATION_ROWS = 3

METHOD = (
    "maximum-likelihood fit of N(mu, tau^2) to the negative-control estimates, each "
    "with its own standard error (estimate_i ~ N(mu, tau^2 + se_i^2)); calibrated "
    "p = 2 T_(n-1)(-max(|est - mu| - margin, 0) / sqrt(tau^2 + se^2)), Student's t "
    "on the row's n - 1 degrees of freedom in place of the normal (small samples)"
)
REFERENCE = (
    "Schuemie MJ, Ryan PB, DuMouchel W, Suchard MA, Madigan D. Interpreting "
    "observational studies: why empirical calibration is needed to correct p-values. "
    "Stat Med 2014;33(2):209-218."
)


def _with_fdr(family: list[CohortRow]) -> list[CohortRow]:
    """The rows of one family with ``q_value`` and ``q_total`` (BH of the raw and the total p)."""
    q = benjamini_hochberg([r.p_value for r in family])
    qt = benjamini_hochberg([r.p_total for r in family])
    return [
        r.model_copy(update={"q_value": float(qv), "q_total": float(qtv)})
        for r, qv, qtv in zip(family, q, qt, strict=True)
    ]


def _prepared(row: CohortRow) -> CohortRow:
    """The row with no calibration yet; without the training cohort's sampling error
    (:func:`~unveil.analysis.compute.effects.add_training_uncertainty` not run) the
    subject-level test is all there is."""
    update = {"p_calibrated": math.nan, "q_calibrated": math.nan}
    if "se_total_hu" not in row.model_fields_set:
        update["se_total_hu"] = row.se_hu
    if "se_train_hu" not in row.model_fields_set:
        update["se_train_hu"] = 0.0
    if "p_total" not in row.model_fields_set:
        update["p_total"] = row.p_value
    return row.model_copy(update=update)


def _leave_one_out(usable: list[CohortRow], min_rows: int) -> dict[int, float]:
    """Each usable control's p calibrated on the other controls (by ``id`` of the row)."""
    est = np.array([r.mean_diff_hu for r in usable])
    se = np.array([r.se_total_hu for r in usable])
    out = {}
    for i, r in enumerate(usable):
        others = np.arange(len(usable)) != i
        if int(others.sum()) >= min_rows:
            m_i, t_i = fit_systematic_error(est[others], se[others])
            out[id(r)] = calibrated_p(r.mean_diff_hu, r.se_total_hu, m_i, t_i, df=r.df)
    return out


def calibrate_rows(
    rows: Sequence[CohortRow],
    alpha: float = 0.05,
    margin: float = 0.0,
    min_rows: int = MIN_CALIBRATION_ROWS,
) -> tuple[list[CohortRow], Calibration]:
    """Empirical calibration of the cohort rows against the negative controls.

    The null-control rows (``null_control`` true) give estimates ``mean_diff_hu`` with
    standard errors ``se_total_hu`` (subjects and training cohort; ``se_hu`` when that was
    not added); :func:`unveil.analysis.stats.fit_systematic_error` fits the model's
    systematic error N(mu, tau^2) to them, and each real-edit row gets ``p_calibrated``
    (:func:`unveil.analysis.stats.calibrated_p`, with the margin, Student's t on
    ``n_subjects - 1`` degrees of freedom) and ``q_calibrated`` (BH over the real-edit
    rows).  ``q_value`` is BH of the raw p within each family (real edits; controls).

    ``significant``: for a real edit, ``q_calibrated < alpha`` when at least ``min_rows``
    control rows exist, else ``q_total < alpha`` (BH of ``p_total``).  For a control,
    ``q_total < alpha`` always: judging a control against a null fitted on itself would be
    circular.  A control's ``p_calibrated`` is leave-one-out (fitted on the other control
    rows), for display; its ``q_calibrated`` is BH of those within the controls.

    Returns:
        The rows (same order, new records) and the ``calibration`` record.
    """
    prepared = [_prepared(r) for r in rows]
    real = _with_fdr([r for r in prepared if not r.null_control])
    ctrl = _with_fdr([r for r in prepared if r.null_control])
    usable = [r for r in ctrl if math.isfinite(r.mean_diff_hu) and math.isfinite(r.se_total_hu)]
    available = len(usable) >= min_rows
    est = np.array([r.mean_diff_hu for r in usable])
    se = np.array([r.se_total_hu for r in usable])
    mu, tau = fit_systematic_error(est, se) if available else (math.nan, math.nan)
    p_cal = [
        calibrated_p(r.mean_diff_hu, r.se_total_hu, mu, tau, margin, r.df)
        if available
        else math.nan
        for r in real
    ]
    qc = benjamini_hochberg(p_cal)
    real = [
        r.model_copy(
            update={
                "p_calibrated": p,
                "q_calibrated": float(q),
                "significant": _below(float(q) if available else r.q_total, alpha),
            }
        )
        for r, p, q in zip(real, p_cal, qc, strict=True)
    ]
    loo = _leave_one_out(usable, min_rows)
    p_ctrl = [loo.get(id(r), math.nan) for r in ctrl]
    qc = benjamini_hochberg(p_ctrl)
    ctrl = [
        r.model_copy(
            update={
                "p_calibrated": p,
                "q_calibrated": float(q),
                "significant": _below(r.q_total, alpha),
            }
        )
        for r, p, q in zip(ctrl, p_ctrl, qc, strict=True)
    ]
    names = list(dict.fromkeys(r.contrast for r in usable))
    calibration = Calibration(
        available=available,
        mu_hu=mu,
        tau_hu=tau,
        n_rows=len(usable),
        n_controls=len(names),
        controls=names,
        min_rows=int(min_rows),
        margin_hu=float(margin),
        method=METHOD,
        reference=REFERENCE,
    )
    return _in_order(rows, real, ctrl), calibration


def _below(q: float, alpha: float) -> bool:
    return bool(math.isfinite(q) and q < alpha)


def _in_order(
    rows: Sequence[CohortRow], real: list[CohortRow], ctrl: list[CohortRow]
) -> list[CohortRow]:
    """The calibrated rows back in the order of ``rows`` (real edits and controls interleave)."""
    real_it, ctrl_it = iter(real), iter(ctrl)
    return [next(ctrl_it) if r.null_control else next(real_it) for r in rows]
