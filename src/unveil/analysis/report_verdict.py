"""The verdict lines of a report, and the number formats they share with the page.

Pure: the :class:`~unveil.records.results.Results` record in, text out.  The same lines
are printed by ``unveil report`` and ``unveil demo`` and open the report page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from unveil.analysis.charts import decisive_q
from unveil.records import CohortRow, Results, as_results

#: Below this size (HU) a planted shift counts as "nothing planted" in the verdict.
PLANTED_EPS_HU = 0.5


def _num(v: Any) -> float:
    """A float from a record field or a caller's value; NaN for None or non-numeric."""
    if v is None or isinstance(v, bool):
        return math.nan if v is None else float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _decimals(*values: float) -> int:
    finite = [abs(v) for v in values if math.isfinite(v)]
    top = max(finite, default=0.0)
    return 0 if top >= 10 else 1 if top >= 1 else 2


def fixed(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, without the ``-0.0`` that rounding a tiny negative gives."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt_hu(mean: Any, lo: Any = None, hi: Any = None) -> str:
    """``-58 HU [-64, -52]``: signed mean, 95% CI, precision following the magnitude."""
    m, a, b = _num(mean), _num(lo), _num(hi)
    if not math.isfinite(m):
        return "n/a"
    d = _decimals(m, a, b)
    sign = "" if round(m, d) == 0 else "+" if m > 0 else ""
    text = f"{sign}{fixed(m, d)} HU"
    if math.isfinite(a) and math.isfinite(b):
        text += f" [{fixed(a, d)}, {fixed(b, d)}]"
    return text


def fmt_p(p: Any, name: str = "q") -> str:
    """``q<0.001``, ``q=0.012``, ``q=0.43``."""
    v = _num(p)
    if not math.isfinite(v):
        return f"{name}=n/a"
    if v < 0.001:
        return f"{name}<0.001"
    return f"{name}={v:.2g}" if v < 0.1 else f"{name}={v:.2f}"


def contrast_lists(results: Results) -> tuple[list[str], list[str]]:
    """(edits, negative controls): from the run description (null edits, then permuted
    controls, then edits the analysis flagged as controls, e.g. of an effect-free
    attribute), else from the table's ``null_control``."""
    run = results.run
    edits = list(run.edits)
    nulls = list(run.null_edits)
    nulls += [e for e in run.permuted_controls if e not in nulls]
    if not edits and not nulls:
        for r in results.cohort_stats:
            target = nulls if r.null_control else edits
            if r.contrast != "noise_floor" and r.contrast not in target:
                target.append(r.contrast)
        return edits, nulls
    flagged = {r.contrast for r in results.cohort_stats if r.null_control}
    moved = [e for e in edits if e in flagged]
    return [e for e in edits if e not in flagged], nulls + [e for e in moved if e not in nulls]


def permuted_names(results: Results) -> set[str]:
    """Names of the permuted-label controls (from the run, else from control_kind)."""
    names = set(results.run.permuted_controls)
    return names | {r.contrast for r in results.cohort_stats if r.control_kind == "permuted"}


def _by_size(rows: Sequence[CohortRow]) -> list[CohortRow]:
    """Rows by decreasing |mean difference| (NaN last)."""
    return sorted(
        rows, key=lambda r: -abs(r.mean_diff_hu) if math.isfinite(r.mean_diff_hu) else math.inf
    )


def _region_text(r: CohortRow) -> str:
    q, cal = decisive_q(r)
    return (
        f"{r.region} {fmt_hu(r.mean_diff_hu, r.ci_low, r.ci_high)}, "
        f"{fmt_p(q, 'calibrated q' if cal else 'q')}"
    )


def _edit_item(results: Results, e: str, after: str) -> tuple[str, str]:
    """The verdict line of one real edit: its strongest significant region (with the
    planted size where there is one), or the largest non-significant one."""
    rows = results.rows(e)
    if not rows:
        return ("info", f"{e}: no statistics in the analysis; run unveil analyze again.")
    planted = {(p.contrast, p.region): p for p in results.recovery}
    sig = _by_size([r for r in rows if r.significant])
    if not sig:
        text = f"{e}: nothing significant {after} (largest: {_region_text(_by_size(rows)[0])})"
        big = [p for (c, _), p in planted.items() if c == e and abs(p.planted_hu) >= PLANTED_EPS_HU]
        if not big:
            return ("none", text)
        best = max(big, key=lambda p: abs(p.planted_hu))
        text += (
            f"; planted {best.planted_hu:+.{_decimals(best.planted_hu)}f} HU "
            f"in {best.region} NOT recovered"
        )
        return ("missed", text)
    top = sig[0]
    text = f"{e}: {_region_text(top)}"
    p = planted.get((e, top.region))
    if p is not None:
        ph, rh = p.planted_hu, top.mean_diff_hu
        if abs(ph) >= PLANTED_EPS_HU:
            err = abs(rh - ph) / abs(ph) * 100.0
            text += f" (planted {ph:+.{_decimals(ph)}f} HU, error {err:.0f}%)"
        elif math.isfinite(ph):
            text += " (nothing was planted in this region)"
    others = [r.region for r in sig[1:]]
    if others:
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        text += f"; also significant in {len(others)} other region(s): {shown}"
    return ("effect", text)


def verdict_items(results: Results) -> list[tuple[str, str]]:
    """``(kind, text)`` per verdict line; kind is effect, none, missed, pass, fail or info."""
    edits, nulls = contrast_lists(results)
    permuted = permuted_names(results)
    calibrated = results.calibration is not None and results.calibration.available
    after = "after calibration and FDR" if calibrated else "after FDR"
    items = [_edit_item(results, e, after) for e in edits]
    items.extend(_null_items(results, [e for e in nulls if e not in permuted], permuted))
    items.extend(_calibration_items(results))
    items.extend(_specificity_items(results))
    items.extend(_recovery_items(results))
    return items


def _judge_controls(label: str, rows: Sequence[CohortRow], named: bool) -> tuple[str, str]:
    """Pass or fail of a group of control rows, with the largest |effect|."""
    sig = _by_size([r for r in rows if r.significant])
    sizes = [abs(r.mean_diff_hu) for r in rows if math.isfinite(r.mean_diff_hu)]
    largest = f"; largest |effect| {max(sizes):.2f} HU" if sizes else ""
    if not sig:
        return ("pass", f"{label}: nothing significant after FDR (passed){largest}")

    def where(r: CohortRow) -> str:
        return f"{r.contrast} {r.region}" if named else r.region

    top = sig[0]
    return (
        "fail",
        f"{label}: FAILED, significant in {len(sig)} region(s) "
        f"({', '.join(where(r) for r in sig[:4])}; largest {where(top)} "
        f"{fmt_hu(top.mean_diff_hu, top.ci_low, top.ci_high)}, "
        f"{fmt_p(top.q_value)}); treat the other findings with caution",
    )


def _null_items(
    results: Results, nulls: Sequence[str], permuted: set[str]
) -> list[tuple[str, str]]:
    """One line per null edit, and one for all permuted-label controls together.

    A control is judged on its raw test against zero (FDR over the controls, no margin);
    the line gives its largest |effect|, which should stay under a HU.
    """
    items: list[tuple[str, str]] = []
    for e in nulls:
        rows = results.rows(e)
        if not rows:
            items.append(("info", f"null control {e}: no statistics in the analysis."))
            continue
        items.append(_judge_controls(f"null control {e}", rows, named=False))
    perm = [r for r in results.cohort_stats if r.contrast in permuted]
    if perm:
        n = len({r.contrast for r in perm})
        items.append(_judge_controls(f"permuted-label controls ({n})", perm, named=True))
    return items


def _calibration_items(results: Results) -> list[tuple[str, str]]:
    """The empirical-null line: the fitted systematic error, or why there is none."""
    cal = results.calibration
    if cal is None:
        return []
    n_rows = cal.n_rows or 0
    if not cal.available:
        return [
            (
                "info",
                f"calibration unavailable ({n_rows} null-control row(s)); real edits are "
                "judged on the raw test against zero",
            )
        ]
    return [
        (
            "info",
            f"empirical null from {n_rows} null-control row(s): systematic error "
            f"{cal.mu_hu:+.2f} HU, spread {cal.tau_hu:.2f} HU; real edits are judged against it",
        )
    ]


def _specificity_items(results: Results) -> list[tuple[str, str]]:
    """One spill line per edit, as ``unveil analyze`` wrote it in its verdict."""
    lines = results.verdict.specificity if results.verdict is not None else []
    return [("info", f"specificity: {line}") for line in lines if line.strip()]


def _recovery_items(results: Results) -> list[tuple[str, str]]:
    """The planted-effect line: from the analysis verdict's checked regions when present.

    ``unveil analyze`` judges each region where the edited attribute's effect was planted
    (right sign, size within the tolerance, significant) and each lung zone where nothing
    was planted (no shift beyond the spill limit); that is the check a user needs.
    Without it (an older analysis), every edit-region row with a planted shift is counted
    instead.
    """
    recovery = results.verdict.recovery if results.verdict is not None else None
    if recovery is not None and recovery.checked:
        checked = recovery.checked
        tol, spill = recovery.tolerance, recovery.spill_limit_hu
        tol_text = f"within {100 * tol:.0f}%" if math.isfinite(tol) else "within 30%"
        planted = [c for c in checked if c.check == "planted"]
        empty = [c for c in checked if c.check != "planted"]
        ok = [c for c in checked if c.ok]
        text = (
            f"planted effects recovered in {sum(c.ok for c in planted)}/"
            f"{len(planted)} planted region(s) (right sign, {tol_text}, significant)"
        )
        if empty:
            limit = f"{spill:g} HU" if math.isfinite(spill) else "the spill limit"
            text += (
                f"; {sum(c.ok for c in empty)}/{len(empty)} zone(s) where "
                f"nothing was planted within {limit}"
            )
        missed = [f"{c.contrast} in {c.region}" for c in checked if c not in ok]
        if missed:
            text += f"; missed: {', '.join(missed[:4])}" + (", ..." if len(missed) > 4 else "")
        return [("pass" if len(ok) == len(checked) else "fail", text)]
    rec = [r for r in results.recovery if abs(r.planted_hu) >= PLANTED_EPS_HU]
    if not rec:
        return []
    n_sign = sum(r.sign_ok for r in rec)
    n_30 = sum(r.within_30pct for r in rec)
    kind = "pass" if n_sign == len(rec) and n_30 == len(rec) else "info"
    return [
        (
            kind,
            f"planted effects: right sign in {n_sign}/{len(rec)} edit-region pairs, within 30% "
            f"of the planted size in {n_30}/{len(rec)}",
        )
    ]


def verdict_lines(results: Results | Mapping[str, Any]) -> list[str]:
    """A short plain-text verdict: per edit, per null control, calibration, spill, recovery.

    Args:
        results: the record (:func:`unveil.analysis.report.load_results`), or the
            ``results.json`` content (what :func:`unveil.analysis.analyze.analyze_run`
            returns).

    Returns:
        Lines such as ``smoking=current: upper_lung -58 HU [-64, -52], calibrated q<0.001
        (planted -60 HU, error 3%); also significant in 2 other region(s): lung,
        right_lung`` and ``null control blood_group=O: nothing significant after FDR
        (passed); largest |effect| 0.40 HU``.  For an edit with significant regions the
        region with the largest mean difference is named first.  The permuted-label
        controls share one line.  Used by the report page, ``unveil report`` and
        ``unveil demo``.
    """
    return [text for _, text in verdict_items(as_results(results))]
