"""Cohort statistics for counterfactual differences: pure functions on numpy arrays.

The unit of replication is the *subject*: every function here takes one value per subject
(a regional mean difference in HU, already averaged over seeds), never voxels, because
voxels of one scan are strongly correlated and counting them as independent would make any
difference look significant.

Randomness is injected: every resampling function takes a :class:`numpy.random.Generator`.
scipy does the work wherever it has the method (``bootstrap``, ``wilcoxon``, ``ttest_rel``,
``false_discovery_control``); the wrappers only add what scipy leaves to the caller:
degenerate inputs (fewer than two subjects, all values equal, all differences zero) give
defined numbers without NaN warnings, as documented on each function.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np

#: Paired tests offered by :func:`paired_test`.
TESTS: tuple[str, ...] = ("wilcoxon", "t")

BootMethod = Literal["BCa", "percentile", "basic"]


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

    Args:
        values: one value per subject, shape ``(N,)``; NaN/inf entries are dropped.
        rng: the resampling generator.
        n_boot: number of bootstrap resamples.
        level: confidence level (0.95 for a 95% interval).
        method: ``"BCa"`` (bias-corrected and accelerated, scipy's default and better
            calibrated for skewed data) or ``"percentile"`` / ``"basic"``.

    Returns:
        ``(low, high)``.  Degenerate inputs are answered without resampling: no value
        gives ``(nan, nan)``; one value, or all values equal, gives ``(v, v)`` (every
        resample has the same mean, so the bootstrap interval collapses to the value; scipy
        would instead warn and return NaN for BCa).  A BCa interval that scipy cannot
        compute (it returns NaN on near-degenerate data) falls back to the percentile one.
    """
    from scipy import stats

    x = _finite(values)
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1 or np.ptp(x) == 0.0:
        v = float(x.mean())
        return (v, v)
    with warnings.catch_warnings():
        # BCa's jackknife warns on near-degenerate samples; the NaN it then returns is
        # handled just below by the percentile fallback.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=getattr(stats, "DegenerateDataWarning", Warning))
        res = stats.bootstrap(
            (x,),
            _mean_stat,
            n_resamples=int(n_boot),
            confidence_level=level,
            method=method,
            vectorized=True,
            rng=rng,
        )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isfinite(lo) and math.isfinite(hi)) and method != "percentile":
            res = stats.bootstrap(
                (x,),
                _mean_stat,
                n_resamples=int(n_boot),
                confidence_level=level,
                method="percentile",
                vectorized=True,
                rng=rng,
            )
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (lo, hi)


def _paired(
    effect: Sequence[float] | np.ndarray, floor: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Per-subject differences ``effect - floor`` over subjects where both are finite."""
    e = np.asarray(effect, dtype=np.float64).ravel()
    f = np.asarray(floor, dtype=np.float64).ravel()
    if e.shape != f.shape:
        raise ValueError(f"effect {e.shape} and floor {f.shape} must hold one value per subject")
    keep = np.isfinite(e) & np.isfinite(f)
    return e[keep] - f[keep]


def paired_test(
    effect: Sequence[float] | np.ndarray,
    floor: Sequence[float] | np.ndarray,
    test: str = "wilcoxon",
    margin: float = 0.0,
) -> tuple[float, float, str]:
    """Two-sided paired test of per-subject effects against per-subject noise floors.

    With ``margin > 0`` (a minimum effect of interest, in HU) the null hypothesis becomes
    ``|shift| <= margin``: the differences are moved towards zero by ``margin`` in the
    direction of their median and tested one-sided in that direction, and the p-value is
    doubled (either direction could have been picked).  A generator whose two seeds differ
    by a fraction of a HU makes the plain test declare any systematic sub-HU change
    significant; the margin asks whether the change is large enough to matter (CT number
    accuracy is a few HU), which is what a reader of a density claim needs.

    ``effect[i]`` is subject ``i``'s regional mean of (edited - factual) and ``floor[i]``
    its regional mean of (floor - factual), both averaged over seeds.  Under the null
    hypothesis that the edit changes nothing beyond what a change of noise seed does, the
    differences ``effect - floor`` are centred on zero.

    Why Wilcoxon by default: with the few subjects a counterfactual study can afford, the
    normality the t test needs cannot be checked, and one odd subject (a failed generation)
    would dominate a t statistic; the signed-rank test is exact for small ``n`` (scipy
    picks the exact distribution for ``n <= 50`` without ties) and robust to outliers.  Its
    price: with ``n <= 5`` subjects no two-sided p can fall below 0.0625, so at least 6
    subjects are needed for anything to be significant at 0.05 (choose ``test="t"`` when
    the data are known to be near normal).

    Args:
        effect: shape ``(N,)``; floor: shape ``(N,)``.  Pairs with a non-finite member are
            dropped.
        test: ``"wilcoxon"`` (signed-rank, zero differences dropped) or ``"t"`` (paired t).

    Returns:
        ``(statistic, p_value, test_name)``.  When every difference is zero, or fewer than
        two pairs remain, there is no evidence of an effect: ``(0.0, 1.0, name)`` (not
        NaN, so FDR correction stays defined).  A t test on differences that are all equal
        but non-zero has infinite statistic and ``p = 0``.
    """
    from scipy import stats

    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    name = "wilcoxon signed-rank" if test == "wilcoxon" else "paired t"
    d = _paired(effect, floor)
    if margin < 0:
        raise ValueError(f"margin must be >= 0 HU, got {margin}")
    if margin > 0 and d.size >= 2:
        direction = 1.0 if float(np.median(d)) >= 0 else -1.0
        shifted = d - direction * margin
        if not np.any(shifted != 0.0):
            return (0.0, 1.0, name + f" (margin {margin:g} HU)")
        alt = "greater" if direction > 0 else "less"
        if test == "wilcoxon":
            res = stats.wilcoxon(shifted, zero_method="wilcox", alternative=alt)
        else:
            res = stats.ttest_1samp(shifted, 0.0, alternative=alt)
        p = float(res.pvalue)
        return (
            float(res.statistic),
            min(1.0, 2.0 * p) if math.isfinite(p) else 1.0,
            name + f" (margin {margin:g} HU)",
        )
    nz = d[d != 0.0]
    if d.size < 2 or nz.size == 0:
        return (0.0, 1.0, name)
    if test == "wilcoxon":
        # zero differences carry no sign; 'wilcox' drops them (scipy's default), which is
        # the textbook signed-rank test.
        res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        return (float(res.statistic), float(res.pvalue), name)
    if np.ptp(d) == 0.0:
        # constant non-zero differences: zero variance, a certain shift.
        return (math.copysign(math.inf, float(d[0])), 0.0, name)
    res = stats.ttest_1samp(d, 0.0)  # identical to ttest_rel(effect, floor) on the pairs
    return (float(res.statistic), float(res.pvalue), name)


def effect_size_dz(
    effect: Sequence[float] | np.ndarray, floor: Sequence[float] | np.ndarray
) -> float:
    """Cohen's ``d_z``: mean of the paired differences over their SD (``ddof=1``).

    Args:
        effect, floor: one value per subject, shape ``(N,)`` each.

    Returns:
        ``mean(d) / sd(d)`` with ``d = effect - floor``.  Fewer than two pairs: NaN (no SD).
        Zero SD: ``0.0`` when the mean is zero too (nothing happens), otherwise ``±inf``
        (a perfectly consistent shift; the sign is the shift's).  Reports show ``inf``;
        JSON writers turn non-finite values into ``null``.
    """
    d = _paired(effect, floor)
    if d.size < 2:
        return math.nan
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / sd


def benjamini_hochberg(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same shape as ``p``.

    A family is rejected at FDR ``alpha`` where ``q < alpha``.  NaN p-values are not part of
    the family: they stay NaN and do not count in the number of tests.
    """
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
    if xa.size < 2 or xb.size < 2:
        return (diff, math.nan, math.nan)
    if np.ptp(xa) == 0.0 and np.ptp(xb) == 0.0:
        return (diff, diff, diff)

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    lo, hi = _scipy_ci((xa, xb), stat, rng, n_boot, level, method, paired=False)
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
    here such resamples are dropped and the percentiles are taken over the rest.

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
    idx = rng.integers(0, xa.size, size=(int(n_boot), xa.size))
    boot = _slope(xa[idx], ya[idx], axis=-1)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return (slope, math.nan, math.nan)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(boot, [tail, 100.0 - tail])
    return (slope, float(lo), float(hi))


def _slope(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Least-squares slope along ``axis``; NaN where a resample has constant ``x``."""
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    sxx = (xc * xc).sum(axis=axis)
    sxy = (xc * yc).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1.0), np.nan)


def _scipy_ci(data, stat, rng, n_boot, level, method, paired) -> tuple[float, float]:
    """scipy.stats.bootstrap CI, falling back to percentile where BCa gives NaN."""
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=getattr(stats, "DegenerateDataWarning", Warning))
        for m in (method, "percentile"):
            res = stats.bootstrap(
                data,
                stat,
                n_resamples=int(n_boot),
                confidence_level=level,
                method=m,
                vectorized=True,
                paired=paired,
                rng=rng,
            )
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
            if math.isfinite(lo) and math.isfinite(hi):
                break
    return (lo, hi)
