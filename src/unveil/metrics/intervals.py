"""Confidence intervals over subjects for every reported figure.

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
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import numpy as np

CI = tuple[float, float, float]


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
    if min(n_a, n_b) < 2:
        return (point, math.nan, math.nan)
    values = []
    for _ in range(n_boot):
        ia = rng.integers(0, n_a, size=n_a)
        ib = ia if paired else rng.integers(0, n_b, size=n_b)
        try:
            values.append(
                float(
                    statistic(
                        np.concatenate([a[i] for i in ia]), np.concatenate([b[i] for i in ib])
                    )
                )
            )
        except ValueError:
            continue
    vals = np.asarray(values)
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        return (point, math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(vals, [alpha, 1.0 - alpha], method="inverted_cdf")
    return (point, float(lo), float(hi))


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
    n = x.size
    func: Callable[..., np.ndarray] = np.mean if statistic == "mean" else np.median
    if n == 0:
        return (math.nan, math.nan, math.nan)
    with np.errstate(invalid="ignore"):
        point = float(func(x))
    if n == 1:
        return (point, math.nan, math.nan)
    if np.all(x == x[0]):
        return (point, point, point)
    idx = rng.integers(0, n, size=(n_boot, n))
    with np.errstate(invalid="ignore"):
        boot = func(x[idx], axis=1)
    # +inf and -inf together give NaN means; those resamples carry no usable figure.
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        return (point, math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    # No interpolation between order statistics: a bound next to an inf stays a real
    # resampled value instead of inf - inf = nan.
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha], method="inverted_cdf")
    return (point, float(lo), float(hi))
