"""Confidence intervals over subjects for every reported figure: the one bootstrap module.

Every bootstrap of the package is built here (:mod:`unveil.analysis.stats` and
:mod:`unveil.metrics.adherence` call these pieces; this module imports nothing of the
package, so both the metrics and the analysis layer may use it):

- one resampling scheme, :func:`resample_indices`: subjects drawn with replacement, one
  ``(n_boot, n)`` index matrix from the generator;
- one percentile rule, :func:`percentile_interval`: order statistics without
  interpolation (``method="inverted_cdf"``), NaN resamples dropped;
- BCa where a caller asks for it, :func:`scipy_interval` (scipy's ``bootstrap``, falling
  back to the percentile interval where BCa is undefined);
- one small-sample rule, :func:`degenerate_interval`: **a single subject gives no
  interval** ``(nan, nan)`` (with one subject there is no spread to resample, and an
  interval ``(v, v)`` would claim a certainty the data do not have); no subject gives
  ``(nan, nan)`` as well; all values equal gives ``(v, v)``.

Every number in an evaluation table is a statistic over subjects (one value per subject:
that subject's MAE, SSIM, Dice...) with a bootstrap percentile interval: subjects are
resampled with replacement ``n_boot`` times, the statistic is recomputed on each
resample, and the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
those recomputed values.  The subject is the unit of resampling because subjects, not
voxels or slices, are the independent draws.

Rules for awkward values (the same in :func:`mean_ci`, :func:`median_ci` and
:func:`summarize`):

- ``None`` and NaN mean "not available for this subject" (e.g. MS-SSIM on a small
  volume) and are dropped; ``n`` is the number of values left.
- ``n == 0``: ``(nan, nan, nan)``.
- ``n == 1``: ``(value, nan, nan)``: one subject gives a figure but no interval.
- ``inf`` (PSNR of a subject whose generated CT equals the real one) is kept, not capped:
  the mean of a set containing ``inf`` is ``inf``.  The bootstrap quantiles are taken
  without interpolation (``method="inverted_cdf"``, each bound is one of the resampled
  statistics) so they never become ``inf - inf = nan``; the lower bound is finite only
  when enough resamples leave out every infinite subject.  For a figure that may be
  infinite prefer the median (``statistic="median"``), which is finite as long as fewer
  than half of the subjects are infinite.
- All values equal: ``(v, v, v)``.

Set-level figures (FID, KID, a Wasserstein distance pooled over a cohort) have no
per-subject value; :func:`subject_bootstrap` gives them an interval by resampling the
subjects and recomputing the figure.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np

CI = tuple[float, float, float]
#: Interval methods of :func:`scipy_interval`.
BootMethod = Literal["BCa", "percentile", "basic"]
#: Fewest subjects that give an interval (see the module text).
MIN_SUBJECTS = 2


def resample_indices(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """Subject indices of ``n_boot`` resamples of ``n`` subjects with replacement, ``(n_boot, n)``.

    The one resampling scheme of the package: one draw of the whole matrix, so a resample
    depends only on the generator's state and ``(n, n_boot)``.
    """
    return rng.integers(0, n, size=(int(n_boot), int(n)))


def percentile_interval(boot: Sequence[float] | np.ndarray, level: float) -> tuple[float, float]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of bootstrap statistics.

    NaN statistics (resamples where the figure is undefined) are dropped; ``inf`` is kept.
    No interpolation between order statistics (``method="inverted_cdf"``): each bound is
    one of the resampled values, so a bound next to an ``inf`` never becomes
    ``inf - inf = nan``.  ``(nan, nan)`` when nothing is left.
    """
    b = np.asarray(boot, dtype=np.float64).ravel()
    b = b[~np.isnan(b)]
    if b.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(b, [alpha, 1.0 - alpha], method="inverted_cdf")
    return (float(lo), float(hi))


def resampled_statistics(
    statistic: Callable[..., float | None],
    sizes: Sequence[int],
    rng: np.random.Generator,
    n_boot: int,
) -> np.ndarray:
    """A non-vectorised figure (AUROC, FID) on each of ``n_boot`` resamples.

    Args:
        statistic: ``f(idx_1, ..., idx_k) -> float | None``, one index array per sample.
        sizes: subjects per sample, ``(n,)`` for one sample (or several sets resampled
            with the same indices) and ``(n_a, n_b)`` for independent sets; each gets its
            :func:`resample_indices` matrix, drawn in that order.
        rng, n_boot: as in :func:`resample_indices`.

    Returns:
        The values; resamples where ``statistic`` returns None or raises ``ValueError``
        (too few distinct rows, one class only) are skipped.
    """
    draws = [resample_indices(rng, n, n_boot) for n in sizes]
    values = []
    for k in range(int(n_boot)):
        try:
            v = statistic(*(d[k] for d in draws))
        except ValueError:
            continue
        if v is not None:
            values.append(float(v))
    return np.asarray(values, dtype=np.float64)


def degenerate_interval(x: np.ndarray, point: float) -> tuple[float, float] | None:
    """The interval of the small-sample rule, or None when ``x`` must be resampled.

    ``x`` is the cleaned 1D sample (one value per subject), ``point`` the statistic on it.
    Fewer than :data:`MIN_SUBJECTS` values: ``(nan, nan)`` (no subject, or one subject: no
    spread, so no interval).  All values equal: ``(point, point)`` (every resample gives
    the same statistic).
    """
    if x.size < MIN_SUBJECTS:
        return (math.nan, math.nan)
    if np.all(x == x[0]):
        return (float(point), float(point))
    return None


def scipy_interval(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    rng: np.random.Generator,
    n_boot: int,
    level: float = 0.95,
    method: BootMethod = "BCa",
    paired: bool = False,
) -> tuple[float, float]:
    """:func:`scipy.stats.bootstrap` interval (BCa by default), percentile where it is NaN.

    For the figures whose interval is BCa (the analysis' cohort means and group
    differences).  ``statistic`` must be vectorised (``axis`` keyword).  scipy's warnings
    on near-degenerate samples are silenced: the NaN interval they announce is replaced by
    the percentile one.  Degenerate samples should be answered by
    :func:`degenerate_interval` before calling this.
    """
    # lazy scipy.stats (~1 s): report and compare import unveil.metrics but never use it
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=getattr(stats, "DegenerateDataWarning", Warning))
        for m in (method, "percentile"):
            res = stats.bootstrap(
                data,
                statistic,
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


def mean_ci(
    values: Sequence[float | None] | np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 2000,
    level: float = 0.95,
) -> CI:
    """Mean over subjects with a bootstrap percentile interval: ``(mean, lo, hi)``.

    Args:
        values: one value per subject (``None`` / NaN dropped, ``inf`` kept; see the
            module text).
        rng: the random generator that draws the resamples.
        n_boot: number of bootstrap resamples.
        level: coverage of the interval (0.95 gives the 2.5 and 97.5 percentiles).
    """
    return _boot_ci(values, rng, n_boot, level, "mean")


def median_ci(
    values: Sequence[float | None] | np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 2000,
    level: float = 0.95,
) -> CI:
    """Median over subjects with a bootstrap percentile interval: ``(median, lo, hi)``.

    Same rules as :func:`mean_ci`; the statistic to use for PSNR, which is ``inf`` for a
    perfect subject.
    """
    return _boot_ci(values, rng, n_boot, level, "median")


def summarize(
    records: Sequence[Mapping[str, object]],
    rng: np.random.Generator | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    statistic: Literal["mean", "median"] | Mapping[str, Literal["mean", "median"]] = "mean",
) -> dict[str, CI]:
    """Aggregate per-subject records (e.g. :func:`~unveil.metrics.paired.paired_fidelity`
    dicts) into ``{key: (statistic, lo, hi)}``.

    Every key holding a number (``int``/``float``, ``inf`` included; ``bool`` excluded) in
    at least one record is summarised; ``None``, NaN and non-numeric entries (reasons,
    ids) are skipped for that record.  Keys come out in first-seen order.

    Args:
        records: one mapping per subject.
        rng: random generator for the bootstrap; ``None`` uses ``default_rng(0)`` so a
            report is reproducible when no generator is passed.
        n_boot: bootstrap resamples per key.
        level: interval coverage.
        statistic: ``"mean"`` or ``"median"`` for every key, or a mapping key ->
            statistic (keys not named use the mean), e.g. ``{"psnr": "median"}``.
    """
    gen = rng if rng is not None else np.random.default_rng(0)
    columns: dict[str, list[float]] = {}
    for rec in records:
        for key, val in rec.items():
            if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)):
                continue
            columns.setdefault(key, []).append(float(val))
    out: dict[str, CI] = {}
    for key, vals in columns.items():
        stat = statistic if isinstance(statistic, str) else statistic.get(key, "mean")
        out[key] = _boot_ci(vals, gen, n_boot, level, stat)
    return out


def subject_bootstrap(
    groups_a: Sequence[np.ndarray],
    groups_b: Sequence[np.ndarray],
    statistic: Callable[[np.ndarray, np.ndarray], float],
    rng: np.random.Generator,
    n_boot: int = 200,
    level: float = 0.95,
    paired: bool = True,
) -> CI:
    """A set-level figure (FID, KID, pooled histogram distance) with an interval over subjects.

    FID and KID compare two *sets*, so there is no per-subject value to average; the
    subjects are resampled instead: each resample draws subjects with replacement,
    concatenates their rows and recomputes ``statistic`` on the two concatenations.

    Args:
        groups_a: one array per subject of set a, rows stacked along axis 0 (e.g. that
            subject's slice features ``(n_i, F)``, or its 3D feature ``(1, F)``).
        groups_b: the same for set b.
        statistic: ``f(rows_a, rows_b) -> float``, e.g. :func:`~unveil.metrics.distribution.fid`
            or ``lambda a, b: kid(a, b, rng=rng)[0]``.
        rng: draws the resamples.
        n_boot: resamples (each costs one ``statistic`` call: 200 FIDs on 2048-d features
            take minutes on a CPU).
        level: interval coverage.
        paired: resample the same subject indices in both sets (generated from the real
            subjects' own masks: ``groups_a[i]`` and ``groups_b[i]`` are one subject);
            ``False`` resamples each set on its own.

    Returns:
        ``(statistic on everything, lo, hi)``; ``lo``/``hi`` are NaN with fewer than 2
        subjects on a side.  Resamples on which ``statistic`` raises ``ValueError`` (too
        few distinct rows) are skipped.
    """
    if paired and len(groups_a) != len(groups_b):
        raise ValueError(
            f"paired resampling needs one group per subject on both sides, got "
            f"{len(groups_a)} and {len(groups_b)}; pass paired=False for unpaired sets"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    a = [np.asarray(g) for g in groups_a]
    b = [np.asarray(g) for g in groups_b]
    point = float(statistic(np.concatenate(a), np.concatenate(b)))
    n_a, n_b = len(a), len(b)
    if min(n_a, n_b) < MIN_SUBJECTS:
        return (point, math.nan, math.nan)

    def on_resample(ia: np.ndarray, ib: np.ndarray | None = None) -> float:
        ib = ia if ib is None else ib
        return statistic(np.concatenate([a[i] for i in ia]), np.concatenate([b[i] for i in ib]))

    sizes = (n_a,) if paired else (n_a, n_b)
    lo, hi = percentile_interval(resampled_statistics(on_resample, sizes, rng, n_boot), level)
    return (point, lo, hi)


def _boot_ci(
    values: Sequence[float | None] | np.ndarray,
    rng: np.random.Generator,
    n_boot: int,
    level: float,
    statistic: str,
) -> CI:
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    x = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    x = x[~np.isnan(x)]
    func: Callable[..., np.ndarray] = np.mean if statistic == "mean" else np.median
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    with np.errstate(invalid="ignore"):
        point = float(func(x))
    fixed = degenerate_interval(x, point)
    if fixed is not None:
        return (point, *fixed)
    with np.errstate(invalid="ignore"):
        boot = func(x[resample_indices(rng, x.size, n_boot)], axis=1)
    # +inf and -inf together give NaN means; percentile_interval drops those resamples.
    return (point, *percentile_interval(boot, level))
