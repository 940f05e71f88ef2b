"""Cohort statistics for counterfactual differences: pure functions on numpy arrays.

The unit of replication is the *subject*: every function here takes one value per subject
(a regional mean difference in HU, already averaged over seeds), never voxels, because
voxels of one scan are strongly correlated and counting them as independent would make any
difference look significant.

What is here (``docs/statistics.md`` explains how ``unveil analyze`` uses it):

- :func:`one_sample_test`, :func:`effect_size_dz`, :func:`standard_error`,
  :func:`bootstrap_ci`: the per-subject effects (edited - factual) against zero;
- :func:`minimum_detectable_effect`: what the noise floor lets one detect;
- :func:`fit_systematic_error` and :func:`calibrated_p`: the empirical null fitted to the
  negative controls (Schuemie et al., Stat Med 2014) and p-values calibrated on it;
- :func:`specificity`: the peak region of an effect and its spill outside it;
- :func:`~unveil.analysis.regression.design_matrix` and
  :func:`~unveil.analysis.regression.ols_hc3_contrasts` (in :mod:`unveil.analysis.regression`,
  re-exported here): the association in the real cohort adjusted for every recorded
  attribute (statsmodels OLS, HC3 covariance);
- :func:`two_group_difference`, :func:`slope_with_ci`: the raw association;
- :func:`benjamini_hochberg`: false-discovery-rate correction.

Randomness is injected: every resampling function takes a :class:`numpy.random.Generator`.
The bootstrap pieces (resampling scheme, percentile rule, BCa through scipy, the rule that
one subject gives no interval) are those of :mod:`unveil.metrics.intervals`.
scipy and statsmodels do the work wherever they have the method (``bootstrap``,
``wilcoxon``, ``ttest_1samp``, ``false_discovery_control``, ``OLS``); the wrappers add
what they leave to the caller: degenerate inputs (fewer than two subjects, all values
equal, all differences zero) give defined numbers without NaN warnings, as documented on
each function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unveil.analysis.regression import (  # noqa: F401  (re-exported: stats' public names)
    MISSING_LEVEL,
    OTHER_LEVEL,
    design_matrix,
    level_name,
    ols_hc3_contrasts,
)
from unveil.metrics.intervals import (
    MIN_SUBJECTS,
    BootMethod,
    degenerate_interval,
    percentile_interval,
    resample_indices,
    scipy_interval,
)

#: Tests offered by :func:`one_sample_test`.
TESTS: tuple[str, ...] = ("wilcoxon", "t")


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1D float64 array of the finite entries of ``values``."""
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def _mean_stat(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 2000,
    level: float = 0.95,
    method: BootMethod = "BCa",
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean over subjects.

    Built on :mod:`unveil.metrics.intervals` (its small-sample rule and
    :func:`~unveil.metrics.intervals.scipy_interval`).

    Args:
        values: one value per subject, shape ``(N,)``; NaN/inf entries are dropped.
        rng: the resampling generator.
        n_boot: number of bootstrap resamples.
        level: confidence level (0.95 for a 95% interval).
        method: ``"BCa"`` (bias-corrected and accelerated, scipy's default and better
            calibrated for skewed data) or ``"percentile"`` / ``"basic"``.

    Returns:
        ``(low, high)``.  Degenerate inputs are answered without resampling: no value or
        one value gives ``(nan, nan)`` (one subject has no spread, so no interval); all
        values equal gives ``(v, v)`` (every resample has the same mean, so the bootstrap
        interval collapses to the value; scipy would instead warn and return NaN for
        BCa).  A BCa interval that scipy cannot compute (it returns NaN on near-degenerate
        data) falls back to the percentile one.
    """
    x = _finite(values)
    fixed = degenerate_interval(x, float(x.mean()) if x.size else math.nan)
    if fixed is not None:
        return fixed
    return scipy_interval((x,), _mean_stat, rng, n_boot, level, method)


def one_sample_test(
    values: Sequence[float] | np.ndarray,
    test: str = "wilcoxon",
    margin: float = 0.0,
) -> tuple[float, float, str]:
    """Two-sided test of per-subject effects against zero.

    ``values[i]`` is subject ``i``'s regional mean of (edited - factual), averaged over its
    seeds.  Edited and factual volumes of a (subject, seed) share their noise, so under the
    null hypothesis that the edit changes nothing the per-subject effects are centred on
    zero: zero is the comparator, not the noise floor (a floor that is biased, e.g. a
    generator whose second seed is brighter, would make every edit look significant).

    With ``margin > 0`` (a minimum effect of interest, in HU) the null hypothesis becomes
    ``|shift| <= margin``: the values are moved towards zero by ``margin`` in the direction
    of their median and tested one-sided in that direction, and the p-value is doubled
    (either direction could have been picked).  A generator that moves every subject by a
    fraction of a HU makes the plain test declare that sub-HU change significant; the
    margin asks whether the change is large enough to matter (CT number accuracy is a few
    HU).

    Why Wilcoxon by default: with the few subjects a counterfactual study can afford, the
    normality the t test needs cannot be checked, and one odd subject (a failed generation)
    would dominate a t statistic; the signed-rank test is exact for small ``n`` (scipy
    picks the exact distribution for ``n <= 50`` without ties) and robust to outliers.  Its
    price: with ``n <= 5`` subjects no two-sided p can fall below 0.0625, so at least 6
    subjects are needed for anything to be significant at 0.05 (choose ``test="t"`` when
    the data are known to be near normal).

    Args:
        values: one value per subject, shape ``(N,)``; non-finite entries are dropped.
        test: ``"wilcoxon"`` (signed-rank, zero values dropped) or ``"t"`` (one-sample t).
        margin: minimum effect of interest in HU, ``>= 0``.

    Returns:
        ``(statistic, p_value, test_name)``.  When every value is zero, or fewer than two
        remain, there is no evidence of an effect: ``(0.0, 1.0, name)`` (not NaN, so FDR
        correction stays defined).  A t test on values that are all equal but non-zero has
        infinite statistic and ``p = 0``.
    """
    # lazy scipy (~1 s): unveil report imports this module but never runs a test
    from scipy import stats

    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0 HU, got {margin}")
    name = "wilcoxon signed-rank" if test == "wilcoxon" else "one-sample t"
    d = _finite(values)
    if margin > 0 and d.size >= 2:
        return _margin_test(d, test, margin, name + f" (margin {margin:g} HU)")
    nz = d[d != 0.0]
    if d.size < 2 or nz.size == 0:
        return (0.0, 1.0, name)
    if test == "wilcoxon":
        # zero values carry no sign; 'wilcox' drops them (scipy's default), which is the
        # textbook signed-rank test.
        res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        return (float(res.statistic), float(res.pvalue), name)
    if np.ptp(d) == 0.0:
        # constant non-zero values: zero variance, a certain shift.
        return (math.copysign(math.inf, float(d[0])), 0.0, name)
    res = stats.ttest_1samp(d, 0.0)
    return (float(res.statistic), float(res.pvalue), name)


def _margin_test(d: np.ndarray, test: str, margin: float, name: str) -> tuple[float, float, str]:
    """The test of :func:`one_sample_test` against ``|shift| <= margin`` (``d``: finite,
    at least two values): one-sided towards the median, the p doubled."""
    # lazy scipy (~1 s): unveil report imports this module but never runs a test
    from scipy import stats

    direction = 1.0 if float(np.median(d)) >= 0 else -1.0
    shifted = d - direction * margin
    if not np.any(shifted != 0.0):
        return (0.0, 1.0, name)
    alt = "greater" if direction > 0 else "less"
    if test == "wilcoxon":
        res = stats.wilcoxon(shifted, zero_method="wilcox", alternative=alt)
    elif np.ptp(shifted) == 0.0:
        # constant values: zero variance; certain if on the tested side, else no evidence
        on_side = float(shifted[0]) * direction > 0
        return (math.copysign(math.inf, float(shifted[0])), 0.0 if on_side else 1.0, name)
    else:
        res = stats.ttest_1samp(shifted, 0.0, alternative=alt)
    p = float(res.pvalue)
    return (float(res.statistic), min(1.0, 2.0 * p) if math.isfinite(p) else 1.0, name)


def effect_size_dz(values: Sequence[float] | np.ndarray) -> float:
    """Cohen's ``d_z`` of per-subject effects: their mean over their SD (``ddof=1``).

    Args:
        values: one value per subject (edited - factual, mean over seeds), shape ``(N,)``;
            non-finite entries are dropped.

    Returns:
        ``mean / sd``.  Fewer than two values: NaN (no SD).  Zero SD: ``0.0`` when the mean
        is zero too (nothing happens), otherwise ``±inf`` (a perfectly consistent shift; the
        sign is the shift's).  Reports show ``inf``; JSON writers turn non-finite values
        into ``null``.
    """
    d = _finite(values)
    if d.size < 2:
        return math.nan
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / sd


def standard_error(values: Sequence[float] | np.ndarray) -> float:
    """Standard error of the mean over subjects, ``SD (ddof=1) / sqrt(n)``; NaN below n=2."""
    d = _finite(values)
    if d.size < 2:
        return math.nan
    return float(d.std(ddof=1) / math.sqrt(d.size))


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest mean shift a two-sided test over ``n`` subjects detects with ``power``.

    Normal approximation: ``(z_{1-alpha/2} + z_{power}) * sd / sqrt(n)``, where ``sd`` is the
    SD across subjects of the quantity tested (here the per-subject noise floor, which is
    what a per-subject effect varies by when the edit does nothing).  It ignores the
    multiple-testing correction and the small-sample t/Wilcoxon penalty, so it is a lower
    bound: effects below it are unlikely to be found, effects somewhat above it may still
    be missed.

    Returns:
        The MDE in the unit of ``sd``; NaN when ``sd`` is not finite or ``n < 2``.
    """
    # lazy scipy (~1 s): unveil report imports this module but never runs a test
    from scipy import stats

    if not math.isfinite(sd) or n < 2:
        return math.nan
    z = float(stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(power))
    return z * float(sd) / math.sqrt(n)


# ----------------------------------------------------------------- empirical calibration

#: Smallest standard error (HU) used in the calibration likelihood.  A control whose
#: subjects all gave the same value has SE 0, and with tau = 0 its likelihood would be
#: infinite; a thousandth of a HU is far below any difference a CT can show.
MIN_SE = 1e-3


def _profile_mu(y: np.ndarray, s2: np.ndarray, tau: float) -> float:
    w = 1.0 / (tau * tau + s2)
    return float(np.sum(w * y) / np.sum(w))


def _neg_loglik(y: np.ndarray, s2: np.ndarray, mu: float, tau: float) -> float:
    v = tau * tau + s2
    return 0.5 * float(np.sum(np.log(v) + (y - mu) ** 2 / v))


def fit_systematic_error(
    estimates: Sequence[float] | np.ndarray, standard_errors: Sequence[float] | np.ndarray
) -> tuple[float, float]:
    """Maximum-likelihood fit of the systematic-error distribution ``N(mu, tau^2)``.

    Each negative control ``i`` (an edit that should change nothing) gives an estimate
    ``y_i`` with standard error ``s_i``; its true value is not zero but a draw of the
    model's systematic error, ``theta_i ~ N(mu, tau^2)``, so ``y_i ~ N(mu, tau^2 + s_i^2)``
    (the empirical null of Schuemie et al., "Interpreting observational studies: why
    empirical calibration is needed to correct p-values", Stat Med 2014;33:209-218).

    The likelihood is maximised by profiling: for a fixed ``tau`` the best ``mu`` is the
    weighted mean with weights ``1 / (tau^2 + s_i^2)``, leaving one parameter, which is
    searched on a grid (the profile need not be unimodal) and refined with
    ``scipy.optimize.minimize_scalar`` around the best grid point; ``tau = 0`` is allowed.
    Written here because no well-kept Python library ships this fit (Schuemie's
    EmpiricalCalibration is an R package), and it is a few lines.

    Args:
        estimates: one estimate per control, shape ``(K,)``.
        standard_errors: their standard errors, shape ``(K,)``; values below
            :data:`MIN_SE` are raised to it.  Pairs with a non-finite member are dropped.

    Returns:
        ``(mu, tau)``; ``(nan, nan)`` when fewer than two controls remain.
    """
    # lazy scipy (~1 s): unveil report imports this module but never runs a test
    from scipy import optimize

    y = np.asarray(estimates, dtype=np.float64).ravel()
    s = np.asarray(standard_errors, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"estimates {y.shape} and standard errors {s.shape} must match")
    keep = np.isfinite(y) & np.isfinite(s)
    y, s = y[keep], np.maximum(s[keep], MIN_SE)
    if y.size < 2:
        return (math.nan, math.nan)
    s2 = s * s

    def profile(tau: float) -> float:
        return _neg_loglik(y, s2, _profile_mu(y, s2, tau), tau)

    # tau cannot usefully exceed the spread of the estimates by much: beyond it the
    # likelihood only falls.
    top = 2.0 * float(max(np.ptp(y), np.max(s), MIN_SE))
    grid = np.concatenate([[0.0], np.geomspace(MIN_SE, top, 60)])
    values = np.array([profile(t) for t in grid])
    best = int(np.argmin(values))
    tau = float(grid[best])
    lo, hi = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, grid.size - 1)])
    if hi > lo:
        res = optimize.minimize_scalar(
            profile, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6 * top}
        )
        if res.success and float(res.fun) < values[best]:
            tau = float(res.x)
    return (_profile_mu(y, s2, tau), tau)


def calibrated_p(
    estimate: float,
    se: float,
    mu: float,
    tau: float,
    margin: float = 0.0,
    df: float | None = None,
) -> float:
    """Two-sided p-value of an estimate against the empirical null ``N(mu, tau^2)``.

    ``p = 2 * Phi(-|estimate - mu| / sqrt(tau^2 + se^2))``: the estimate is judged against
    what the negative controls show the model produces for an attribute without effect
    (its systematic error ``mu`` and the spread ``tau`` of that error), plus its own
    sampling error.  With ``margin > 0`` the distance to ``mu`` is first reduced by the
    margin (the null becomes ``|shift - mu| <= margin``, as in :func:`one_sample_test`),
    and the one-sided tail is doubled.

    With ``df`` (the estimate's degrees of freedom, ``n - 1`` for a mean over ``n``
    subjects) Student's t replaces the normal: Schuemie's normal formula was made for
    large observational samples, and with the ten or thirty subjects of a counterfactual
    study an SE estimated from the data makes it too liberal (with ``tau = 0`` and
    ``mu = 0`` it would be a z test on an estimated SE, more often "significant" than the
    one-sample t test).  With ``df`` the calibration reduces to that t test when the
    controls show no systematic error, and tends to the normal formula as ``n`` grows.

    Returns:
        The calibrated p in ``[0, 1]``; NaN when any input is not finite.  A zero
        denominator gives 1 when the estimate sits on ``mu`` (within the margin), else 0.
    """
    # lazy scipy (~1 s): unveil report imports this module but never runs a test
    from scipy import stats

    if not all(math.isfinite(v) for v in (estimate, se, mu, tau)):
        return math.nan
    dist = max(abs(estimate - mu) - margin, 0.0)
    scale = math.sqrt(tau * tau + se * se)
    if scale == 0.0:
        return 1.0 if dist == 0.0 else 0.0
    z = dist / scale
    tail = stats.t.sf(z, df) if df is not None and df >= 1 else stats.norm.sf(z)
    return float(min(1.0, 2.0 * tail))


# ----------------------------------------------------------------- specificity


def specificity(
    effects: Mapping[str, Sequence[float] | np.ndarray],
    n_voxels: Mapping[str, Sequence[float] | np.ndarray],
    candidates: Sequence[str],
    rng: np.random.Generator,
    n_boot: int = 2000,
    lung: str = "lung",
    airway: str = "airway",
) -> dict[str, Any]:
    """Where an effect is largest, and how much of it appears elsewhere (its spill).

    The peak is the candidate region whose cohort mean effect is largest in absolute
    value.  The spill is the effect in the lung *outside* the peak region, per subject
    from the region means and voxel counts (the lung mean is the voxel-weighted mean of
    peak and rest)::

        spill_s = (n_lung * m_lung - n_peak * m_peak) / (n_lung - n_peak)

    then averaged over subjects with a bootstrap CI.  The airway (outside the lungs) is
    reported alongside.  A specific effect has ``|spill| << |peak|``.

    Args:
        effects: ``{region: per-subject effect (N,)}``, HU; it must hold ``lung`` and the
            candidates (``airway`` is optional).
        n_voxels: ``{region: per-subject voxel count (N,)}`` for ``lung`` and the
            candidates.
        candidates: the lung partitions among which the peak is sought.
        rng: bootstrap generator (used for the three intervals in turn).

    Returns:
        ``peak_region, peak_hu, peak_ci_low, peak_ci_high, spill_hu, spill_ci_low,
        spill_ci_high, spill_fraction (|spill| / |peak|), airway_hu, airway_ci_low,
        airway_ci_high, n_subjects`` (subjects with a finite spill).  No candidate with a
        finite effect: the peak is None and every number NaN.
    """
    nan = math.nan
    out: dict[str, Any] = {
        "peak_region": None,
        "peak_hu": nan,
        "peak_ci_low": nan,
        "peak_ci_high": nan,
        "spill_hu": nan,
        "spill_ci_low": nan,
        "spill_ci_high": nan,
        "spill_fraction": nan,
        "airway_hu": nan,
        "airway_ci_low": nan,
        "airway_ci_high": nan,
        "n_subjects": 0,
    }
    means = {}
    for r in candidates:
        v = _finite(effects.get(r, ()))
        if v.size:
            means[r] = float(v.mean())
    if means and lung in effects:
        peak = max(means, key=lambda r: abs(means[r]))
        pv = np.asarray(effects[peak], dtype=np.float64)
        out["peak_region"] = peak
        out["peak_hu"] = means[peak]
        out["peak_ci_low"], out["peak_ci_high"] = bootstrap_ci(pv, rng, n_boot)
        n_l = np.asarray(n_voxels[lung], dtype=np.float64)
        n_p = np.asarray(n_voxels[peak], dtype=np.float64)
        m_l = np.asarray(effects[lung], dtype=np.float64)
        rest = n_l - n_p
        with np.errstate(invalid="ignore", divide="ignore"):
            spill = np.where(rest > 0, (n_l * m_l - n_p * pv) / np.where(rest > 0, rest, 1), nan)
        spill = _finite(spill)
        out["n_subjects"] = int(spill.size)
        if spill.size:
            out["spill_hu"] = float(spill.mean())
            out["spill_ci_low"], out["spill_ci_high"] = bootstrap_ci(spill, rng, n_boot)
            if means[peak] != 0.0:
                out["spill_fraction"] = abs(out["spill_hu"]) / abs(means[peak])
    if airway in effects:
        av = _finite(effects[airway])
        if av.size:
            out["airway_hu"] = float(av.mean())
            out["airway_ci_low"], out["airway_ci_high"] = bootstrap_ci(av, rng, n_boot)
    return out


def benjamini_hochberg(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same shape as ``p``.

    A family is rejected at FDR ``alpha`` where ``q < alpha``.  NaN p-values are not part of
    the family: they stay NaN and do not count in the number of tests.
    """
    # lazy scipy (~1 s): unveil report imports this module but never runs a test
    from scipy import stats

    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, math.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(np.clip(p[ok], 0.0, 1.0), method="bh")
    return q


def two_group_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 2000,
    level: float = 0.95,
    method: BootMethod = "BCa",
) -> tuple[float, float, float]:
    """Difference of means ``mean(a) - mean(b)`` of two independent groups, bootstrap CI.

    Each group is resampled on its own (scipy's multi-sample bootstrap), as the groups are
    independent subjects.

    Args:
        a, b: one value per subject, shapes ``(Na,)`` and ``(Nb,)``; non-finite dropped.

    Returns:
        ``(diff, low, high)``.  An empty group: all NaN.  A group with one subject (no way
        to know its spread): ``(diff, nan, nan)``.  Both groups constant: ``(diff, diff,
        diff)``.
    """

    xa, xb = _finite(a), _finite(b)
    if xa.size == 0 or xb.size == 0:
        return (math.nan, math.nan, math.nan)
    diff = float(xa.mean() - xb.mean())
    if xa.size < MIN_SUBJECTS or xb.size < MIN_SUBJECTS:
        return (diff, math.nan, math.nan)  # the small-sample rule, per group
    if np.ptp(xa) == 0.0 and np.ptp(xb) == 0.0:
        return (diff, diff, diff)

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    lo, hi = scipy_interval((xa, xb), stat, rng, n_boot, level, method, paired=False)
    return (diff, lo, hi)


def slope_with_ci(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 2000,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Least-squares slope of ``y`` on ``x`` with a case-resampling percentile bootstrap CI.

    Used for the observed association of a numeric attribute (HU per unit): subjects are
    resampled as ``(x, y)`` pairs, which does not assume constant residual variance.

    Hand-written rather than ``scipy.stats.bootstrap``: a resample whose ``x`` values are
    all equal (likely when many subjects share a value, e.g. pack-years 0 for never
    smokers) has no slope, and scipy's interval turns NaN as soon as one resample is NaN;
    here such resamples are dropped and the percentiles are taken over the rest (with the
    resampling scheme and percentile rule of :mod:`unveil.metrics.intervals`).

    Args:
        x, y: one value per subject, shape ``(N,)`` each; pairs with a non-finite member
            are dropped.

    Returns:
        ``(slope, low, high)``.  Fewer than three subjects, or ``x`` constant: all NaN
        (a slope needs spread in ``x``, its interval at least one residual degree of
        freedom).
    """
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    if xa.size < 3 or np.ptp(xa) == 0.0:
        return (math.nan, math.nan, math.nan)
    slope = float(_slope(xa, ya))
    idx = resample_indices(rng, xa.size, n_boot)
    return (slope, *percentile_interval(_slope(xa[idx], ya[idx], axis=-1), level))


def _slope(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Least-squares slope along ``axis``; NaN where a resample has constant ``x``."""
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    sxx = (xc * xc).sum(axis=axis)
    sxy = (xc * yc).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1.0), np.nan)
