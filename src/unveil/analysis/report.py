"""``RUN/report.html``: one self-contained page that a clinician can read at a glance.

The page is built from what ``unveil analyze`` wrote (``RUN/analysis/results.json``, or
the CSV files beside it, and the difference maps in ``RUN/analysis/maps/``) and from the
run's volumes (the factual and edited slices).  It opens with no network: every image is a
base64 ``data:`` URI, the CSS is inline, there is no script, no link, no font to fetch and
no URL anywhere in the file.

Load, then render: :func:`load_results` and the run record give the records
(:mod:`unveil.records`), :mod:`unveil.analysis.report_views` the slice views; the page is
put together from :mod:`unveil.analysis.report_verdict` (the verdict lines),
:mod:`unveil.analysis.report_tables` (text and tables) and the figures.  Nothing the
analysis recorded is computed again.

Layout, top to bottom: the verdict (one line per edit and null control, one for the
permuted-label controls, the empirical calibration, the spill of each edit and the
planted-effect check: the same lines ``unveil report`` and ``unveil demo`` print), what
was asked (edits, controls, seeds, subjects, model), the noise floor per region with its
minimum detectable effect and the calibration, then one section per contrast (region bar
chart, the table of tests against zero with raw and calibrated p and q, the specificity,
one table setting the counterfactual beside the raw and the adjusted association in the
real cohort, planted against recovered where the cohort has planted effects, slice panels
and an animated GIF for the first subjects; none for permuted controls), then the
planted-vs-recovered plot, methods and limitations.  What the numbers mean is in
``docs/statistics.md``.

Every string that comes from a file (edit names, ids, paths, config values) is
HTML-escaped (:func:`~unveil.analysis.report_html.esc`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from unveil.analysis import charts
from unveil.analysis.load import data_config, find_cohort
from unveil.analysis.report_html import CSS, esc, figure, img
from unveil.analysis.report_tables import (
    LIMITS,
    asked,
    comparison_table,
    methods,
    noise_section,
    notes,
    recovery_table,
    specificity_text,
    tests_table,
)
from unveil.analysis.report_verdict import (  # noqa: F401  (public names of the report)
    PLANTED_EPS_HU,
    contrast_lists,
    fmt_hu,
    fmt_p,
    permuted_names,
    verdict_items,
    verdict_lines,
)
from unveil.analysis.report_views import diff_range, load_view, view_html
from unveil.errors import UnveilError
from unveil.fs import write_text
from unveil.records import TABLES, Results, RunLayout, RunRecord, read_results, read_run
from unveil.text.edits import edit_field

__all__ = [
    "TABLES",
    "edit_field",
    "esc",
    "fmt_hu",
    "fmt_p",
    "load_results",
    "render_report",
    "verdict_lines",
    "write_report",
]


def load_results(run_root: str | os.PathLike) -> Results:
    """Read ``RUN/analysis/results.json``, filling missing tables from the CSV files.

    Raises:
        UnveilError: when the run folder or ``results.json`` is missing or not valid JSON
        (one sentence saying to run ``unveil analyze RUN`` first), or a field is missing,
        unknown or of the wrong type.
    """
    return read_results(run_root)


def run_record(root: Path, results: Results) -> RunRecord:
    """The run record: ``counterfactual.json`` when the folder has it (it holds the config:
    family, fusion, labels), else the copy ``results.json`` keeps."""
    if RunLayout(root).json_path.is_file():
        return read_run(root, check_volumes=False)
    return results.run


def _edit_tables(edit: str, results: Results) -> list[str]:
    """The bar chart, tests, specificity, associations and recovery of one contrast."""
    rows = results.rows(edit)
    rec_rows = [r for r in results.recovery if r.contrast == edit]
    field = edit_field(edit) or edit.strip()
    if any(r.contrast for r in results.observed):
        # Rows name their edit: the attribute column may differ from the edit's field name.
        obs_rows = [r for r in results.observed if r.contrast == edit]
    else:
        obs_rows = [r for r in results.observed if r.attribute == field]
    adj_rows = [r for r in results.adjusted if r.contrast == edit]
    if obs_rows:
        field = obs_rows[0].attribute or field
    spec = next((r for r in results.specificity if r.contrast == edit), None)
    parts = []
    if rows:
        bars = charts.region_bars(results.cohort_stats, edit, rec_rows)
        parts.append(
            figure(
                img(bars, "image/png", f"region bars {edit}"),
                "Mean difference counterfactual &minus; factual per region with 95% CI (bars), "
                "the noise floor for scale (grey band: mean &plusmn; SD across subjects), "
                "significant regions in red with the q that decided them"
                + (", planted shift as a black diamond." if rec_rows else "."),
            )
        )
        parts.append("<h3>Counterfactual: tests against zero</h3>" + tests_table(rows))
    else:
        parts.append("<p>No statistics for this edit in the analysis.</p>")
    if spec is not None and spec.peak_region not in (None, "", "nan"):
        parts.append(specificity_text(spec))
    if obs_rows or adj_rows:
        parts.append(
            f"<h3>Counterfactual, observed and adjusted association: {esc(field)}</h3>"
            '<p class="caution">The raw association compares groups of real patients, and '
            "other attributes can confound it (smokers are older, for instance); the adjusted "
            "one holds every other recorded attribute fixed in a linear model; the "
            "counterfactual changes this attribute alone, in the model.</p>"
            + comparison_table(rows, obs_rows, adj_rows)
        )
    else:
        parts.append(
            f"<h3>Observed in the real cohort: {esc(field)}</h3>"
            "<p class='note'>No association in the real cohort was computed for this "
            "contrast.</p>"
        )
    if rec_rows:
        parts.append("<h3>Planted against recovered</h3>" + recovery_table(rec_rows))
    return parts


def _edit_section(
    edit: str, null: bool, results: Results, run: RunRecord, root: Path, subjects_shown: int
) -> str:
    """One contrast: its tables, then the slice views of its first subjects."""
    parts = [f"<h2>{'null control: ' if null else ''}{esc(edit)}</h2>"]
    parts += _edit_tables(edit, results)
    subjects = list(run.subjects)[: max(0, int(subjects_shown))]
    if subjects:
        layout, cohort, cfg = RunLayout(root), find_cohort(run, root), data_config(run, False)
        views = [load_view(layout, run, sid, edit, cohort, cfg) for sid in subjects]
        scale = diff_range(views)
        for view in views:
            parts.append(f"<h3>Subject {esc(view.subject)}</h3>")
            parts.append(view_html(view, edit, run.window, scale, run.seeds))
    return "<section>" + "".join(parts) + "</section>"


def _recovery_figure(results: Results) -> str:
    """Planted against recovered for every edit (empty without planted effects)."""
    rec = [r for r in results.recovery if math.isfinite(r.planted_hu)]
    if not rec:
        return ""
    tol = results.settings.recovery_tolerance
    tol = tol if tol is not None and math.isfinite(tol) and tol > 0 else 0.30
    return "<h2>Planted against recovered, all edits</h2>" + figure(
        img(charts.recovery_plot(rec, tol), "image/png", "planted vs recovered"),
        "Each point is one edit and region: planted shift (x) against the recovered "
        "mean difference with its 95% CI (y); on the diagonal the tool recovers exactly; "
        f"grey band: within {100 * tol:.0f}% of the planted size.",
    )


def render_report(run_root: str | os.PathLike, subjects_shown: int = 2) -> str:
    """The report page as an HTML string (see :func:`write_report`)."""
    root = Path(run_root)
    results = load_results(root)
    run = run_record(root, results)
    edits, nulls = contrast_lists(results)
    items = verdict_items(results)
    verdict = "".join(f'<li class="{k}">{esc(t)}</li>' for k, t in items) or "<li>no results</li>"
    body = [
        "<h1>What the model changes: counterfactual report</h1>",
        f'<p class="sub">run {esc(root.resolve().name)}</p>',
        f'<div class="verdict"><h2 style="margin-top:.2rem;border:0">Verdict</h2><ul>{verdict}</ul>'
        '<p class="note">Differences are counterfactual &minus; factual in HU, mean over '
        "subjects [95% CI]; q is the false-discovery-rate-corrected p-value, calibrated q "
        "the same after calibration on the negative controls.</p>"
        f"{notes(results)}</div>",
        "<h2>What was asked</h2>",
        asked(run, results),
        noise_section(results),
    ]
    body += [_edit_section(e, False, results, run, root, subjects_shown) for e in edits]
    permuted = permuted_names(results)
    for e in nulls:
        # A permuted-label control's slices show only noise; its table is what matters.
        shown = 0 if e in permuted else subjects_shown
        body.append(_edit_section(e, True, results, run, root, shown))
    body += [_recovery_figure(results), "<h2>Methods</h2>", methods(run, results), LIMITS]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>unveil report: {esc(root.resolve().name)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_report(
    run_root: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    subjects_shown: int = 2,
) -> Path:
    """Build the self-contained report page of a run, atomically.

    Args:
        run_root: the counterfactual run folder, analysed by ``unveil analyze``.
        out_path: where to write the page (default ``RUN/report.html``).
        subjects_shown: slice panels and GIFs are drawn for this many subjects (the first
            of the run's list) per edit.

    Returns:
        The path of the written page.

    Raises:
        UnveilError: when ``RUN/analysis/results.json`` is missing or corrupt.
    """
    if int(subjects_shown) < 0:
        raise UnveilError(f"--subjects must be 0 or more, got {subjects_shown}.")
    root = Path(run_root)
    page = render_report(root, subjects_shown=subjects_shown)
    out = Path(out_path) if out_path is not None else root / "report.html"
    return write_text(out, page)
