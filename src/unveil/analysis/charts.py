"""Charts of the report: the region bar chart of a contrast and the planted-vs-recovered plot.

Pure: statistics rows (:mod:`unveil.records.rows`) in, PNG bytes out; matplotlib is used
as in :mod:`unveil.analysis.figures` (the object API on an Agg canvas, no pyplot).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from unveil.analysis.figures import _new_figure, _png
from unveil.data.regions import REGIONS
from unveil.records.rows import CohortRow, RecoveryRow

#: Bar colours: significant, not significant, and the noise-floor band.
SIGNIFICANT, NOT_SIGNIFICANT, FLOOR = "#b2182b", "#9ecae1", "0.85"


def decisive_q(row: CohortRow) -> tuple[float, bool]:
    """The q-value that decided a cohort row's ``significant``, and whether it is calibrated.

    A real edit is judged on its calibrated q when the analysis could calibrate (the cell
    is filled), else on the raw q; a negative control always on its raw q (its calibrated
    q is leave-one-out, for display only).
    """
    if not row.null_control and math.isfinite(row.q_calibrated):
        return row.q_calibrated, True
    return row.q_value, False


def region_order(regions: Sequence[str]) -> list[str]:
    """Regions in the vocabulary order of :data:`unveil.data.regions.REGIONS`, others after."""
    known = [r for r in REGIONS if r in regions]
    rest = [r for r in dict.fromkeys(regions) if r not in REGIONS]
    return known + rest


def region_bars(
    cohort_rows: Sequence[CohortRow],
    contrast: str,
    recovery_rows: Sequence[RecoveryRow] | None = None,
) -> bytes:
    """Mean difference per region with 95% CI, noise floor band and planted markers (PNG).

    Args:
        cohort_rows: rows of ``cohort_stats``; those of ``contrast`` are drawn.
        contrast: the edit whose rows are drawn.
        recovery_rows: optional ``recovery`` rows; the planted value of each region is
            drawn as a black diamond.

    Returns:
        PNG bytes: one horizontal bar per region (significant regions in a strong colour
        and starred with the q that decided it, :func:`decisive_q`), the noise floor (mean
        +/- SD across subjects) as a grey band behind each bar for scale (the tests are
        against zero, not against it), a vertical line at 0 HU.
    """
    by_region = {r.region: r for r in cohort_rows if r.contrast == contrast}
    if not by_region:
        raise ValueError(f"no cohort rows for contrast {contrast!r}")
    regions = region_order(list(by_region))
    rows = [by_region[g] for g in regions]
    planted = {r.region: r.planted_hu for r in recovery_rows or () if r.contrast == contrast}
    fig = _new_figure(7.0, 1.2 + 0.38 * len(rows))
    ax = fig.subplots()
    ys = np.arange(len(rows))[::-1]  # first region at the top
    means = np.array([r.mean_diff_hu for r in rows])
    lo = np.array([r.ci_low for r in rows])
    hi = np.array([r.ci_high for r in rows])
    lo, hi = np.where(np.isfinite(lo), lo, means), np.where(np.isfinite(hi), hi, means)
    fm = np.array([r.floor_mean_hu for r in rows])
    fs = np.array([r.floor_sd_hu for r in rows])
    for y, m_, s_ in zip(ys, fm, fs, strict=True):
        if np.isfinite(m_) and np.isfinite(s_):
            ax.barh(y, 2 * s_, left=m_ - s_, height=0.86, color=FLOOR, zorder=0)
    safe_means = np.nan_to_num(means)
    ax.barh(
        ys,
        safe_means,
        height=0.55,
        color=[SIGNIFICANT if r.significant else NOT_SIGNIFICANT for r in rows],
        zorder=2,
    )
    err = np.vstack([np.clip(safe_means - lo, 0, None), np.clip(hi - safe_means, 0, None)])
    err = np.nan_to_num(err)
    ax.errorbar(safe_means, ys, xerr=err, fmt="none", ecolor="black", capsize=3, lw=1, zorder=3)
    marks = [(y, planted.get(g, math.nan)) for y, g in zip(ys, regions, strict=True)]
    marks = [(y, p) for y, p in marks if np.isfinite(p)]
    for y, p in marks:
        ax.plot([p], [y], marker="D", color="black", markersize=5, zorder=4, ls="none")
    span = np.nanmax(np.abs(np.concatenate([lo, hi, safe_means, fm - fs, fm + fs, [1.0]])))
    for y, r, h in zip(ys, rows, hi, strict=True):
        if r.significant:
            q, cal = decisive_q(r)
            label = f"* {'cal. ' if cal else ''}q{_fmt_q(q)}"
            ax.text(max(h, 0) + 0.03 * span, y, label, va="center", fontsize=8)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels(regions, fontsize=9)
    ax.set_xlabel("mean difference, counterfactual \u2212 factual (HU), 95% CI")
    ax.set_xlim(-1.25 * span, 1.35 * span)
    ax.set_title(contrast, fontsize=10)
    _bars_legend(fig, has_planted=bool(marks))
    return _png(fig)


def _bars_legend(fig, has_planted: bool) -> None:
    """The legend of :func:`region_bars`, below the axes so it never hides a bar."""
    handles = [
        Patch(color=SIGNIFICANT, label="significant"),
        Patch(color=NOT_SIGNIFICANT, label="not significant"),
        Patch(color=FLOOR, label="noise floor (mean \u00b1 SD)"),
    ]
    if has_planted:
        handles.append(Line2D([], [], marker="D", color="black", ls="none", label="planted"))
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncol=len(handles))


def recovery_plot(recovery_rows: Sequence[RecoveryRow], tolerance: float = 0.30) -> bytes:
    """Planted against recovered HU with 95% CIs, the identity line and a tolerance band (PNG).

    Args:
        recovery_rows: ``recovery`` rows; one point per row with a finite planted shift,
            one colour per contrast.
        tolerance: half-width of the grey band, as a fraction of the planted shift.
    """
    rows = [r for r in recovery_rows if np.isfinite(r.planted_hu)]
    if not rows:
        raise ValueError("no recovery rows with a planted value")
    fig = _new_figure(5.2, 4.6)
    ax = fig.subplots()
    x = np.array([r.planted_hu for r in rows])
    y = np.array([r.recovered_hu for r in rows])
    lo = np.array([r.ci_low for r in rows])
    hi = np.array([r.ci_high for r in rows])
    lo, hi = np.where(np.isfinite(lo), lo, y), np.where(np.isfinite(hi), hi, y)
    span = float(np.nanmax(np.abs(np.concatenate([x, y, lo, hi, [1.0]])))) * 1.15
    line = np.array([-span, span])
    ax.fill_between(
        line,
        (1 - tolerance) * line,
        (1 + tolerance) * line,
        color="0.9",
        label=f"\u00b1{100 * tolerance:.0f}% of planted",
    )
    ax.plot(line, line, color="black", lw=0.8, label="recovered = planted")
    cmap = matplotlib.colormaps["tab10"]
    contrasts = list(dict.fromkeys(r.contrast for r in rows))
    for ci, c in enumerate(contrasts):
        sel = np.array([r.contrast == c for r in rows])
        yy = np.nan_to_num(y[sel])
        err = np.nan_to_num(
            np.vstack([np.clip(yy - lo[sel], 0, None), np.clip(hi[sel] - yy, 0, None)])
        )
        ax.errorbar(x[sel], yy, yerr=err, fmt="o", ms=4, capsize=2, color=cmap(ci % 10), label=c)
    ax.set_xlim(-span, span)
    ax.set_ylim(-span, span)
    ax.set_aspect("equal")
    ax.axhline(0, color="0.6", lw=0.5)
    ax.axvline(0, color="0.6", lw=0.5)
    ax.set_xlabel("planted shift (HU)")
    ax.set_ylabel("recovered mean difference (HU), 95% CI")
    ax.set_title("planted vs recovered, one point per edit and region", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def _fmt_q(q: float) -> str:
    """``<0.001``, ``=0.012``, ``=0.43`` (to follow a ``q``)."""
    if not np.isfinite(q):
        return "=n/a"
    if q < 0.001:
        return "<0.001"
    return f"={q:.2g}" if q < 0.1 else f"={q:.2f}"
