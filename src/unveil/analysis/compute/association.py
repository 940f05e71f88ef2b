"""Beside the counterfactual: the raw and the adjusted association in the real cohort.

Pure: the clinical rows and the regional mean HU of the real scans in, rows of
:mod:`unveil.records.rows` and cautions out.  ``docs/statistics.md`` ("Beside the
counterfactual") gives the methods.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unveil.analysis.compute import row_rng
from unveil.analysis.edits import ParsedEdit, baseline_value, number, numeric_change
from unveil.analysis.regression import (
    MISSING_LEVEL,
    design_matrix,
    level_name,
    ols_hc3_contrasts,
)
from unveil.analysis.stats import slope_with_ci, two_group_difference
from unveil.data.effects import is_missing, same_value
from unveil.records import AdjustedRow, ObservedRow


def observed_rows(
    all_edits: Sequence[str],
    parsed: Mapping[str, ParsedEdit],
    regions: Sequence[str],
    real_means: Mapping[str, np.ndarray],
    clinical: Mapping[str, Mapping[str, Any]],
    n_boot: int,
    seed: int,
    baseline: Sequence[ParsedEdit] = (),
) -> tuple[list[ObservedRow], list[str]]:
    """The raw association in the real cohort, per edit and region, and its cautions.

    Category ``set`` edits: subjects whose value is the target (group a) against those
    whose value is the run's baseline value of that column (group b) when the run has one
    (``baseline smoking=never``, edit ``smoking=current``: current against never, the
    contrast the counterfactual makes), else against every other recorded value;
    difference of regional mean HU with a bootstrap CI.  Numeric edits: the least-squares
    slope of regional mean HU on the attribute, scaled by
    :func:`unveil.analysis.edits.numeric_change`.  ``unset`` edits have no real-cohort
    counterpart (a missing value is not a value) and are skipped.  Subjects with the
    attribute missing are excluded.

    Args:
        real_means: ``{id: (R,) regional mean HU of the real scan}`` (every subject used).
        clinical: ``{id: {column: value}}`` clinical rows.
    """
    ids = list(real_means)
    rows: list[ObservedRow] = []
    notes: list[str] = []
    for ei, e in enumerate(all_edits):
        pe = parsed[e]
        if pe.op == "unset":
            notes.append(
                f"{e}: no observed association for an unset edit (a missing value is not a group)."
            )
            continue
        values = {s: clinical.get(s, {}).get(pe.column) for s in ids}
        known = [s for s in ids if not is_missing(values[s])]
        if not known:
            notes.append(
                f"{e}: column '{pe.column}' has no recorded value in the cohort table; no observed association."
            )
            continue
        y = np.stack([real_means[s] for s in known])  # (N, R)
        base = baseline_value(baseline, pe.column)
        rngs = [row_rng(seed, 1, ei, ri) for ri in range(len(regions))]
        if pe.numeric:
            x = np.array(
                [number(values[s]) if number(values[s]) is not None else math.nan for s in known]
            )
            rows += _slope_rows(pe, regions, x, y, base, rngs, n_boot)
        else:
            found, note = _group_rows(
                pe, regions, [values[s] for s in known], y, base, rngs, n_boot
            )
            rows += found
            notes += [note] if note else []
    return rows, notes


def _slope_rows(
    pe: ParsedEdit,
    regions: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    base: Any | None,
    rngs: Sequence[np.random.Generator],
    n_boot: int,
) -> list[ObservedRow]:
    """A numeric edit: the slope of regional mean HU on ``x`` times the edit's change."""
    scale = numeric_change(pe, float(np.nanmean(x)), base)
    rows = []
    for ri, r in enumerate(regions):
        slope, lo, hi = slope_with_ci(x, y[:, ri], rngs[ri], n_boot)
        ends = sorted([lo * scale, hi * scale])
        ok = np.isfinite(x) & np.isfinite(y[:, ri])
        rows.append(
            ObservedRow(
                attribute=pe.column,
                group_a=f"slope x {scale:+.4g} {pe.column}",
                group_b="",
                region=r,
                n_a=int(ok.sum()),
                n_b=0,
                mean_hu_a=float(y[ok, ri].mean()) if ok.any() else math.nan,
                mean_hu_b=math.nan,
                diff_hu=slope * scale,
                ci_low=ends[0],
                ci_high=ends[1],
                contrast=pe.text,
                method="least-squares slope x edit change, bootstrap over subjects",
            )
        )
    return rows


def _group_rows(
    pe: ParsedEdit,
    regions: Sequence[str],
    values: Sequence[Any],
    y: np.ndarray,
    base: Any | None,
    rngs: Sequence[np.random.Generator],
    n_boot: int,
) -> tuple[list[ObservedRow], str | None]:
    """A category edit: the target group against the baseline group (or the rest), and a
    caution when a group has fewer than 5 subjects."""
    in_a = np.array([same_value(v, pe.value) for v in values])
    if base is not None and not same_value(base, pe.value):
        in_b = np.array([same_value(v, base) for v in values])
        label_b = f"{pe.column}={base}"
    else:
        in_b = ~in_a
        label_b = f"{pe.column}!={pe.value}"
    note = None
    if min(int(in_a.sum()), int(in_b.sum())) < 5:
        note = (
            f"{pe.text}: the observed association compares groups of {int(in_a.sum())} and "
            f"{int(in_b.sum())} subjects; a bootstrap interval from fewer than 5 subjects "
            "per group is too narrow to trust."
        )
    rows = []
    for ri, r in enumerate(regions):
        a, b = y[in_a, ri], y[in_b, ri]
        diff, lo, hi = two_group_difference(a, b, rngs[ri], n_boot)
        a_f, b_f = a[np.isfinite(a)], b[np.isfinite(b)]
        rows.append(
            ObservedRow(
                attribute=pe.column,
                group_a=f"{pe.column}={pe.value}",
                group_b=label_b,
                region=r,
                n_a=int(a_f.size),
                n_b=int(b_f.size),
                mean_hu_a=float(a_f.mean()) if a_f.size else math.nan,
                mean_hu_b=float(b_f.mean()) if b_f.size else math.nan,
                diff_hu=diff,
                ci_low=lo,
                ci_high=hi,
                contrast=pe.text,
                method="difference of group means, bootstrap over subjects",
            )
        )
    return rows, note


#: One adjusted contrast: the edit, its term weights, the two terms shown, and the scale.
_Wanted = tuple[ParsedEdit, dict[str, float], str, str, float]


def adjusted_association(
    table: Mapping[str, Mapping[str, Any]],
    region_means: Mapping[str, np.ndarray],
    regions: Sequence[str],
    edits: Sequence[ParsedEdit],
    baseline: Sequence[ParsedEdit] = (),
    columns: Sequence[str] | None = None,
    level: float = 0.95,
) -> tuple[list[AdjustedRow], list[str]]:
    """The association of each edit in the real cohort, adjusted for every other attribute.

    Per region, the subjects' regional mean HU of the real scans is regressed (OLS, HC3
    covariance) on every attribute of the clinical table, coded by
    :func:`unveil.analysis.regression.design_matrix` (numbers as they are, categories
    one-hot against their most frequent level, missing values as a level or a mean fill
    plus an indicator).  It removes confounding by the recorded attributes (age travels
    with smoking) but assumes effects add up linearly.

    For a category edit ``col=target`` the contrast is ``coef(target) - coef(base)``,
    ``base`` being the run's baseline value of ``col`` when it has one, else the reference
    level (whose coefficient is 0); its variance comes from the covariance matrix.  When
    the target is itself the reference and the run has no baseline, that difference would
    be 0 by construction, so the target is compared with the frequency-weighted mean of the
    other recorded levels.  For a numeric edit it is the slope times the edit's change
    (:func:`unveil.analysis.edits.numeric_change`).  An ``unset`` edit is skipped.

    Args:
        table: ``{id: {column: value}}`` clinical rows (id column left out).
        region_means: ``{id: (R,) regional mean HU of the real scan}``; the subjects used
            are those present in both.
        regions: the ``R`` region names.
        edits: the parsed edits (their ``text`` names the row's contrast).
        baseline: the run's baseline edits.
        columns: attributes to use (default: every column of the rows, in first-seen order).
        level: confidence level of the interval.

    Returns:
        The rows and the cautions (attributes left out, contrasts not estimable).
    """
    ids = [s for s in region_means if s in table]
    rows_in = [table[s] for s in ids]
    if columns is None:
        columns = list(dict.fromkeys(c for r in rows_in for c in r))
    numeric: dict[str, bool] = {}
    for pe in edits:
        numeric.setdefault(pe.column, pe.numeric)
    X, info = design_matrix(rows_in, list(columns), numeric)
    notes: list[str] = []
    dropped = [c for c in columns if info[c]["kind"] == "dropped"]
    if dropped:
        notes.append(
            "adjusted association: attribute(s) "
            + ", ".join(dropped)
            + " left out of the regression (no variation once values recorded for fewer "
            "than two subjects are pooled)."
        )
    method = (
        f"OLS on {len(columns) - len(dropped)} attribute(s) of the clinical table, HC3 "
        "covariance, normal interval"
    )
    wanted: dict[str, _Wanted] = {}
    for pe in edits:
        if pe.op != "unset":
            found, note = _adjusted_contrast(pe, info.get(pe.column), baseline)
            if found is not None:
                wanted[pe.text] = found
            notes += [note] if note else []
    if not wanted or not ids:
        return [], notes
    y = np.stack([np.asarray(region_means[s], dtype=np.float64) for s in ids])
    return _adjusted_rows(X, y, regions, wanted, method, level), notes


def _adjusted_contrast(
    pe: ParsedEdit, entry: Mapping[str, Any] | None, baseline: Sequence[ParsedEdit]
) -> tuple[_Wanted | None, str | None]:
    """The term weights of one edit's adjusted contrast (see :func:`adjusted_association`),
    or None with the caution saying why there is none."""
    if entry is None or entry["kind"] == "dropped":
        return None, (
            f"{pe.text}: column '{pe.column}' does not vary in the clinical table; no "
            "adjusted association."
        )
    base = baseline_value(baseline, pe.column)
    if entry["kind"] == "number":
        if pe.column not in entry["terms"]:
            return None, None
        scale = numeric_change(pe, float(entry["mean"]), base)
        return (pe, {pe.column: scale}, pe.column, "", scale), None
    levels = entry["levels"]
    target = level_name(pe.value)
    ref = level_name(base) if base is not None else entry["reference"]
    missing = [lv for lv in (target, ref) if lv not in levels]
    if missing:
        return None, (
            f"{pe.text}: level(s) {', '.join(missing)} of '{pe.column}' recorded for fewer "
            "than two subjects of the cohort; no adjusted association."
        )
    weights: dict[str, float] = {}
    if levels[target] is not None:
        weights[levels[target]] = weights.get(levels[target], 0.0) + 1.0
    if base is None and target == ref:
        # The target is the reference level: "target minus reference" would be 0 by
        # construction.  Compare it with the other recorded levels instead, weighted by
        # their frequency: the adjusted counterpart of the raw "target vs the rest".
        others = {
            lv: n
            for lv, n in entry["counts"].items()
            if lv not in (target, MISSING_LEVEL) and levels.get(lv) is not None
        }
        total = sum(others.values())
        for lv, n in others.items():
            weights[levels[lv]] = weights.get(levels[lv], 0.0) - n / total
        term_b = f"{pe.column}[other recorded levels, by frequency]"
    else:
        if levels[ref] is not None:
            weights[levels[ref]] = weights.get(levels[ref], 0.0) - 1.0
        term_b = levels[ref] or f"{pe.column}[{ref}] (reference)"
    weights = {t: w for t, w in weights.items() if w != 0.0}
    term_a = levels[target] or f"{pe.column}[{target}] (reference)"
    # target == base: the contrast is zero by construction, with no uncertainty
    return (pe, weights or {"const": 0.0}, term_a, term_b, 1.0), None


def _adjusted_rows(
    X: Any,
    y: np.ndarray,
    regions: Sequence[str],
    wanted: Mapping[str, _Wanted],
    method: str,
    level: float,
) -> list[AdjustedRow]:
    """One OLS fit per region, one row per wanted contrast."""
    out = []
    for ri, r in enumerate(regions):
        fit = ols_hc3_contrasts(X, y[:, ri], {k: v[1] for k, v in wanted.items()}, level)
        for name, (pe, _, term_a, term_b, scale) in wanted.items():
            res = fit[name]
            out.append(
                AdjustedRow(
                    contrast=name,
                    attribute=pe.column,
                    region=r,
                    term_a=term_a,
                    term_b=term_b,
                    scale=scale,
                    n_subjects=res["n"],
                    n_parameters=res["n_parameters"],
                    diff_hu=res["estimate"],
                    se_hu=res["se"],
                    ci_low=res["ci_low"],
                    ci_high=res["ci_high"],
                    p_value=res["p_value"],
                    method=method,
                )
            )
    return out
