"""The association in the real cohort adjusted for every recorded attribute: the design
matrix of a clinical table and an OLS fit with HC3 covariance (statsmodels).

Pure functions on rows and arrays; ``docs/statistics.md`` ("Adjusted association") says
how ``unveil analyze`` uses them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from unveil.data.effects import is_missing

# ----------------------------------------------------------------- adjusted association

#: Name of the level that stands for a missing category, and the suffix of the missing
#: indicator of a number.
MISSING_LEVEL = "missing"
#: Pool of category levels recorded for fewer than two subjects.
OTHER_LEVEL = "other"


def level_name(value: Any) -> str:
    """The level a clinical value falls in: numbers as ``%g`` (``1``, ``1.0`` and ``"1"`` are
    one level), other values as stripped text."""
    if isinstance(value, bool):
        return str(value)
    try:
        x = float(str(value).strip())
    except ValueError:
        return str(value).strip()
    return f"{x:g}" if math.isfinite(x) else str(value).strip()


def _as_number(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        x = float(str(value).strip())
    except ValueError:
        return math.nan
    return x if math.isfinite(x) else math.nan


def design_matrix(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    numeric: Mapping[str, bool] | None = None,
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The regression design of a clinical table: every attribute, missing values coded.

    Numbers enter as they are; a number's missing values are filled with the column mean
    and flagged by an indicator column ``col[missing]`` (so a subject without the value is
    neither dropped nor pretended typical).  Categories are one-hot coded against their
    most frequent level (ties: the first in sorted order), with missing values as a level
    of their own, ``col[missing]``.  Levels recorded for fewer than two subjects are
    pooled into ``col[other]`` (and that pool into the reference when it is still a single
    subject): a dummy with one subject has leverage 1, where the HC3 covariance is
    undefined.  This also removes free-text and date columns, whose values are all
    distinct.  Indicators with fewer than two subjects on either side, and constant
    columns, are dropped.

    Args:
        rows: one mapping (column -> value) per subject.
        columns: the attributes to use, in order (the id column left out).
        numeric: per column, whether it holds numbers; a column not named is numeric when
            every recorded value reads as a number.

    Returns:
        ``(X, info)``: ``X`` a pandas DataFrame with a ``const`` column first, one row per
        subject; ``info[col]`` with ``kind`` (``number``, ``category`` or ``dropped``),
        ``terms`` (the X columns of this attribute), ``reference`` (the reference level of
        a category), ``levels`` (level -> X column, the reference mapped to None),
        ``counts`` (level -> subjects) and ``mean`` (a number's mean over recorded values).
    """
    n = len(rows)
    data: dict[str, np.ndarray] = {"const": np.ones(n)}
    info: dict[str, dict[str, Any]] = {}
    for col in columns:
        raw = [r.get(col) for r in rows]
        missing = np.array([is_missing(v) for v in raw])
        recorded = [v for v, m in zip(raw, missing, strict=True) if not m]
        is_num = (
            bool(numeric[col])
            if numeric is not None and col in numeric
            else bool(recorded) and all(math.isfinite(_as_number(v)) for v in recorded)
        )
        entry: dict[str, Any] = {"kind": "dropped", "terms": [], "reference": None, "levels": {}}
        info[col] = entry
        if not recorded:
            continue
        if is_num:
            _number_terms(col, raw, data, entry)
        else:
            _category_terms(col, raw, missing, data, entry)
    return pd.DataFrame(data), info


def _usable(v: np.ndarray) -> bool:
    """A design column that varies, and an indicator with two subjects on either side."""
    if np.ptp(v) == 0.0:
        return False
    binary = np.isin(v, (0.0, 1.0)).all()
    return not binary or 2 <= int(v.sum()) <= v.size - 2


def _number_terms(
    col: str, raw: Sequence[Any], data: dict[str, np.ndarray], entry: dict[str, Any]
) -> None:
    """A number's columns (the values, mean-filled, and a missing indicator) into ``data``."""
    x = np.array([_as_number(v) for v in raw])
    miss = ~np.isfinite(x)
    if miss.all():
        return
    mean = float(x[~miss].mean())
    entry["mean"] = mean
    x = np.where(miss, mean, x)
    terms = []
    if _usable(x):
        data[col] = x
        terms.append(col)
    ind = miss.astype(np.float64)
    if miss.any() and _usable(ind):
        data[f"{col}[{MISSING_LEVEL}]"] = ind
        terms.append(f"{col}[{MISSING_LEVEL}]")
    if terms:
        entry.update(kind="number", terms=terms)


def _level_counts(levels: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for lv in levels:
        counts[lv] = counts.get(lv, 0) + 1
    return counts


def _category_terms(
    col: str,
    raw: Sequence[Any],
    missing: np.ndarray,
    data: dict[str, np.ndarray],
    entry: dict[str, Any],
) -> None:
    """A category's dummies against its most frequent level into ``data`` (rare levels
    pooled, see :func:`design_matrix`)."""
    levels = [MISSING_LEVEL if m else level_name(v) for v, m in zip(raw, missing, strict=True)]
    counts = _level_counts(levels)
    rare = {lv for lv, c in counts.items() if c < 2}
    if rare:
        levels = [OTHER_LEVEL if lv in rare else lv for lv in levels]
        counts = _level_counts(levels)
    reference = sorted(counts, key=lambda lv: (-counts[lv], lv))[0]
    if counts.get(OTHER_LEVEL, 2) < 2:
        levels = [reference if lv == OTHER_LEVEL else lv for lv in levels]
        counts.pop(OTHER_LEVEL)
    arr = np.array(levels, dtype=object)
    mapping: dict[str, str | None] = {reference: None}
    for lv in sorted(counts):
        if lv == reference:
            continue
        d = (arr == lv).astype(np.float64)
        if _usable(d):
            name = f"{col}[{lv}]"
            data[name] = d
            mapping[lv] = name
    entry["reference"] = reference
    entry["levels"] = mapping
    entry["counts"] = {lv: int(np.sum(arr == lv)) for lv in mapping}
    entry["pooled"] = sorted(rare)
    terms = [t for t in mapping.values() if t is not None]
    if terms:
        entry.update(kind="category", terms=terms)


def ols_hc3_contrasts(
    X: Any,
    y: Sequence[float] | np.ndarray,
    contrasts: Mapping[str, Mapping[str, float]],
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """OLS of ``y`` on ``X`` with HC3 robust covariance, and linear contrasts of its terms.

    HC3 (MacKinnon and White 1985; statsmodels ``cov_type="HC3"``) does not assume equal
    residual variance across subjects, and is the heteroscedasticity-consistent estimator
    that behaves best in small samples.  Subjects with a non-finite ``y`` are dropped, and
    columns other than ``const`` that become constant over the remaining subjects with
    them.

    Args:
        X: pandas DataFrame (subjects x terms) with a ``const`` column, from
            :func:`design_matrix`.
        y: the response, one value per row of ``X``.
        contrasts: ``{name: {term: weight}}``; the estimate is ``sum(weight * coef)``.

    Returns:
        ``{name: {estimate, se, ci_low, ci_high, p_value, n, n_parameters}}`` with a
        normal-theory interval and two-sided p (the robust covariance is asymptotic).  A
        contrast naming a term not in the fit, or not estimable (outside the row space of
        ``X``, e.g. aliased with another attribute), or a fit with no residual degree of
        freedom, gives NaN numbers.
    """
    # lazy statsmodels, scipy.stats (~2 s): unveil report imports this module, fits nothing
    import statsmodels.api as sm
    from scipy import stats
    from statsmodels.tools.sm_exceptions import SingularMatrixWarning

    ya = np.asarray(y, dtype=np.float64).ravel()
    keep = np.isfinite(ya)
    Xk = X.loc[keep]
    cols = [c for c in Xk.columns if c == "const" or np.ptp(Xk[c].to_numpy()) > 0]
    Xk = Xk[cols]
    n = Xk.shape[0]
    nan = math.nan
    empty = {"estimate": nan, "se": nan, "ci_low": nan, "ci_high": nan, "p_value": nan}
    out: dict[str, dict[str, float]] = {}
    rank = int(np.linalg.matrix_rank(Xk.to_numpy())) if n else 0
    if n == 0 or n <= rank:
        return {name: {**empty, "n": n, "n_parameters": rank} for name in contrasts}
    with warnings.catch_warnings():
        # A leverage of 1 (a subject alone in its cell) makes HC3 divide by zero; the
        # resulting NaN is reported as an undefined interval.  A rank-deficient design
        # (pack-years missing exactly for never-smokers) is expected in clinical tables:
        # each contrast's estimability is checked below instead of warning for the fit.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=SingularMatrixWarning)
        fit = sm.OLS(ya[keep], Xk).fit(cov_type="HC3")
        params = np.asarray(fit.params, dtype=np.float64)
        cov = np.asarray(fit.cov_params(), dtype=np.float64)
    xm = Xk.to_numpy()
    proj = np.linalg.pinv(xm) @ xm  # projection onto the row space of X
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    for name, weights in contrasts.items():
        c = _contrast_vector(weights, cols, proj)
        est = _contrast_estimate(c, params, cov, z) if c is not None else empty
        out[name] = {**est, "n": n, "n_parameters": rank}
    return out


def _contrast_vector(
    weights: Mapping[str, float], cols: Sequence[str], proj: np.ndarray
) -> np.ndarray | None:
    """The contrast's weights over ``cols``; None when it names a term not in the fit or is
    not estimable (outside the row space, whose projection is ``proj``)."""
    if not weights or any(t not in cols for t in weights):
        return None
    c = np.zeros(len(cols))
    for t, w in weights.items():
        c[list(cols).index(t)] += float(w)
    if np.linalg.norm(proj @ c - c) > 1e-8 * max(1.0, float(np.linalg.norm(c))):
        return None
    return c


def _contrast_estimate(
    c: np.ndarray, params: np.ndarray, cov: np.ndarray, z: float
) -> dict[str, float]:
    """Estimate, SE, normal interval (``z``) and two-sided p of the contrast ``c``."""
    # lazy scipy.stats (~1 s): unveil report imports this module, fits nothing
    from scipy import stats

    est = float(c @ params)
    var = float(c @ cov @ c)
    se = math.sqrt(var) if math.isfinite(var) and var >= 0 else math.nan
    if math.isfinite(se) and se > 0:
        p = float(2.0 * stats.norm.sf(abs(est) / se))
    elif se == 0.0:
        p = 1.0 if est == 0.0 else 0.0
    else:
        p = math.nan
    return {
        "estimate": est,
        "se": se,
        "ci_low": est - z * se,
        "ci_high": est + z * se,
        "p_value": p,
    }
