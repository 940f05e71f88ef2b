"""``RUN/report.html``: one self-contained page that a clinician can read at a glance.

The page is built from what ``unveil analyze`` wrote (``RUN/analysis/results.json``, or
the CSV files beside it) and from the run's volumes (for the slice views).  It opens with
no network: every image is a base64 ``data:`` URI, the CSS is inline, there is no script,
no link, no font to fetch and no URL anywhere in the file.

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
HTML-escaped; ``://`` and ``@`` are written as character references as well, so even a
path that contains a URL cannot put a live reference into the page (it renders the same).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unveil.config import DEFAULT_HU_WINDOW
from unveil.errors import UnveilError
from unveil.text.edits import edit_field

#: Tables ``unveil analyze`` writes, by results.json key.
TABLES: tuple[str, ...] = (
    "cohort_stats",
    "noise_floor",
    "specificity",
    "observed",
    "adjusted",
    "recovery",
)

#: Below this size (HU) a planted shift counts as "nothing planted" in the verdict.
PLANTED_EPS_HU = 0.5


# --------------------------------------------------------------------------- loading


def _num(v: Any) -> float:
    """A float from a JSON/CSV cell; NaN for empty, missing or non-numeric."""
    if v is None or isinstance(v, bool):
        return math.nan if v is None else float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _truthy(v: Any) -> bool:
    """A boolean from a JSON bool or a CSV cell (``True``/``true``/``1``)."""
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return bool(v)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV written by ``unveil analyze``, with the quote it puts in front of
    formula-like text cells removed (:func:`unveil.csvsafe.restore_cell`)."""
    from unveil.csvsafe import restore_cell

    with path.open(newline="", encoding="utf-8") as fh:
        return [
            {restore_cell(k): restore_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)
        ]


def load_results(run_root: str | os.PathLike) -> dict[str, Any]:
    """Read ``RUN/analysis/results.json``, filling missing tables from the CSV files.

    Returns:
        The results dict with the keys ``run``, ``alpha`` and every table of
        :data:`TABLES` (lists of row dicts, possibly empty).  Rows read from CSV keep
        their cells as strings; the report converts cells where it uses them.

    Raises:
        UnveilError: when the run folder or ``results.json`` is missing or not valid JSON
        (one sentence saying to run ``unveil analyze RUN`` first).
    """
    root = Path(run_root)
    path = root / "analysis" / "results.json"
    if not root.is_dir():
        raise UnveilError(
            f"run folder {root} does not exist; give the folder written by unveil counterfactual."
        )
    if not path.is_file():
        raise UnveilError(
            f"{path} is missing; run `unveil analyze {root}` first, then `unveil report {root}`."
        )
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UnveilError(
            f"{path} is corrupt (not valid JSON); run `unveil analyze {root}` again."
        ) from None
    if not isinstance(results, dict):
        raise UnveilError(f"{path} is not a JSON object; run `unveil analyze {root}` again.")
    for key in TABLES:
        rows = results.get(key)
        csv_path = path.parent / f"{key}.csv"
        if not rows and csv_path.is_file():
            rows = _read_csv(csv_path)
        results[key] = [dict(r) for r in (rows or []) if isinstance(r, Mapping)]
    if not isinstance(results.get("run"), dict):
        results["run"] = {}
    results.setdefault("alpha", 0.05)
    return results


# --------------------------------------------------------------------------- formatting


def _decimals(*values: float) -> int:
    finite = [abs(v) for v in values if math.isfinite(v)]
    top = max(finite, default=0.0)
    return 0 if top >= 10 else 1 if top >= 1 else 2


def fmt_hu(mean: Any, lo: Any = None, hi: Any = None) -> str:
    """``-58 HU [-64, -52]``: signed mean, 95% CI, precision following the magnitude."""
    m, a, b = _num(mean), _num(lo), _num(hi)
    if not math.isfinite(m):
        return "n/a"
    d = _decimals(m, a, b)
    sign = "" if round(m, d) == 0 else "+" if m > 0 else ""
    text = f"{sign}{_fixed(m, d)} HU"
    if math.isfinite(a) and math.isfinite(b):
        text += f" [{_fixed(a, d)}, {_fixed(b, d)}]"
    return text


def _fixed(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, without the ``-0.0`` that rounding a tiny negative gives."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def fmt_p(p: Any, name: str = "q") -> str:
    """``q<0.001``, ``q=0.012``, ``q=0.43``."""
    v = _num(p)
    if not math.isfinite(v):
        return f"{name}=n/a"
    if v < 0.001:
        return f"{name}<0.001"
    return f"{name}={v:.2g}" if v < 0.1 else f"{name}={v:.2f}"


def _contrast_rows(results: Mapping[str, Any], contrast: str) -> list[dict[str, Any]]:
    return [r for r in results.get("cohort_stats", []) if str(r.get("contrast")) == contrast]


def _edits(results: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(edits, negative controls): from the run description (null edits, then permuted
    controls, then edits of an effect-free attribute), else from the table's null_control."""
    run = results.get("run") or {}
    edits = [str(e) for e in run.get("edits") or []]
    nulls = [str(e) for e in run.get("null_edits") or []]
    nulls += [str(e) for e in run.get("permuted_controls") or [] if str(e) not in nulls]
    if not edits and not nulls:
        for r in results.get("cohort_stats", []):
            c = str(r.get("contrast"))
            if c == "noise_floor":
                continue
            target = nulls if _truthy(r.get("null_control")) else edits
            if c not in target:
                target.append(c)
        return edits, nulls
    # An edit of an attribute effects.json declares effect-free is a control too.
    flagged = {
        str(r.get("contrast"))
        for r in results.get("cohort_stats", [])
        if _truthy(r.get("null_control"))
    }
    moved = [e for e in edits if e in flagged]
    return [e for e in edits if e not in flagged], nulls + [e for e in moved if e not in nulls]


def _permuted(results: Mapping[str, Any]) -> set[str]:
    """Names of the permuted-label controls (from the run, else from control_kind)."""
    run = results.get("run") or {}
    names = {str(e) for e in run.get("permuted_controls") or []}
    names |= {
        str(r.get("contrast"))
        for r in results.get("cohort_stats", [])
        if str(r.get("control_kind") or "") == "permuted"
    }
    return names


def _calibration(results: Mapping[str, Any]) -> Mapping[str, Any]:
    cal = results.get("calibration")
    return cal if isinstance(cal, Mapping) else {}


def _planted(results: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(str(r.get("contrast")), str(r.get("region"))): r for r in results.get("recovery", [])}


def _by_size(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows by decreasing |mean difference| (NaN last)."""

    def key(r: Mapping[str, Any]) -> float:
        m = _num(r.get("mean_diff_hu"))
        return -abs(m) if math.isfinite(m) else math.inf

    return sorted(rows, key=key)


def _verdict_items(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(kind, text)`` per verdict line; kind is effect, none, missed, pass, fail or info."""
    from unveil.analysis.figures import decisive_q

    edits, nulls = _edits(results)
    permuted = _permuted(results)
    planted = _planted(results)
    calibrated = bool(_calibration(results).get("available"))
    after = "after calibration and FDR" if calibrated else "after FDR"
    items: list[tuple[str, str]] = []

    def region_text(r: Mapping[str, Any]) -> str:
        q, cal = decisive_q(r)
        return (
            f"{r.get('region')} {fmt_hu(r.get('mean_diff_hu'), r.get('ci_low'), r.get('ci_high'))}, "
            f"{fmt_p(q, 'calibrated q' if cal else 'q')}"
        )

    for e in edits:
        rows = _contrast_rows(results, e)
        if not rows:
            items.append(("info", f"{e}: no statistics in the analysis; run unveil analyze again."))
            continue
        sig = _by_size([r for r in rows if _truthy(r.get("significant"))])
        planted_rows = [
            p
            for (c, _), p in planted.items()
            if c == e and abs(_num(p.get("planted_hu"))) >= PLANTED_EPS_HU
        ]
        if sig:
            top = sig[0]
            text = f"{e}: {region_text(top)}"
            p = planted.get((e, str(top.get("region"))))
            if p is not None:
                ph, rh = _num(p.get("planted_hu")), _num(top.get("mean_diff_hu"))
                if abs(ph) >= PLANTED_EPS_HU:
                    err = abs(rh - ph) / abs(ph) * 100.0
                    d = _decimals(ph)
                    text += f" (planted {ph:+.{d}f} HU, error {err:.0f}%)"
                elif math.isfinite(ph):
                    text += " (nothing was planted in this region)"
            others = [str(r.get("region")) for r in sig[1:]]
            if others:
                shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
                text += f"; also significant in {len(others)} other region(s): {shown}"
            items.append(("effect", text))
        else:
            top = _by_size(rows)[0]
            text = f"{e}: nothing significant {after} (largest: {region_text(top)})"
            if planted_rows:
                best = max(planted_rows, key=lambda p: abs(_num(p.get("planted_hu"))))
                text += (
                    f"; planted {_num(best.get('planted_hu')):+.{_decimals(_num(best.get('planted_hu')))}f} HU "
                    f"in {best.get('region')} NOT recovered"
                )
                items.append(("missed", text))
            else:
                items.append(("none", text))
    items.extend(_null_items(results, [e for e in nulls if e not in permuted], permuted))
    items.extend(_calibration_items(results))
    items.extend(_specificity_items(results))
    items.extend(_recovery_items(results))
    return items


def _null_items(
    results: Mapping[str, Any], nulls: Sequence[str], permuted: set[str]
) -> list[tuple[str, str]]:
    """One line per null edit, and one for all permuted-label controls together.

    A control is judged on its raw test against zero (FDR over the controls, no margin);
    the line gives its largest |effect|, which should stay under a HU.
    """
    items: list[tuple[str, str]] = []

    def judge(label: str, rows: Sequence[Mapping[str, Any]], named: bool) -> tuple[str, str]:
        sig = _by_size([r for r in rows if _truthy(r.get("significant"))])
        sizes = [abs(_num(r.get("mean_diff_hu"))) for r in rows]
        sizes = [s for s in sizes if math.isfinite(s)]
        largest = f"; largest |effect| {max(sizes):.2f} HU" if sizes else ""
        if not sig:
            return ("pass", f"{label}: nothing significant after FDR (passed){largest}")

        def where(r: Mapping[str, Any]) -> str:
            return f"{r.get('contrast')} {r.get('region')}" if named else str(r.get("region"))

        top = sig[0]
        return (
            "fail",
            f"{label}: FAILED, significant in {len(sig)} region(s) "
            f"({', '.join(where(r) for r in sig[:4])}; largest {where(top)} "
            f"{fmt_hu(top.get('mean_diff_hu'), top.get('ci_low'), top.get('ci_high'))}, "
            f"{fmt_p(top.get('q_value'))}); treat the other findings with caution",
        )

    for e in nulls:
        rows = _contrast_rows(results, e)
        if not rows:
            items.append(("info", f"null control {e}: no statistics in the analysis."))
            continue
        items.append(judge(f"null control {e}", rows, named=False))
    perm = [r for r in results.get("cohort_stats", []) if str(r.get("contrast")) in permuted]
    if perm:
        n = len({str(r.get("contrast")) for r in perm})
        items.append(judge(f"permuted-label controls ({n})", perm, named=True))
    return items


def _calibration_items(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The empirical-null line: the fitted systematic error, or why there is none."""
    cal = _calibration(results)
    if not cal:
        return []
    n_rows = int(_num(cal.get("n_rows")) or 0) if math.isfinite(_num(cal.get("n_rows"))) else 0
    if not _truthy(cal.get("available")):
        return [
            (
                "info",
                f"calibration unavailable ({n_rows} null-control row(s)); real edits are "
                "judged on the raw test against zero",
            )
        ]
    mu, tau = _num(cal.get("mu_hu")), _num(cal.get("tau_hu"))
    return [
        (
            "info",
            f"empirical null from {n_rows} null-control row(s): systematic error "
            f"{mu:+.2f} HU, spread {tau:.2f} HU; real edits are judged against it",
        )
    ]


def _specificity_items(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One spill line per edit, as ``unveil analyze`` wrote it in its verdict."""
    verdict = results.get("verdict") if isinstance(results.get("verdict"), Mapping) else {}
    lines = verdict.get("specificity") or []
    return [("info", f"specificity: {line}") for line in lines if str(line).strip()]


def _recovery_items(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The planted-effect line: from the analysis verdict's checked regions when present.

    ``unveil analyze`` judges each region where the edited attribute's effect was planted
    (right sign, size within the tolerance, significant) and each lung zone where nothing
    was planted (no shift beyond the spill limit); that is the check a user needs.
    Without it (an older analysis), every edit-region row with a planted shift is counted
    instead.
    """
    verdict = results.get("verdict") if isinstance(results.get("verdict"), Mapping) else {}
    recovery = verdict.get("recovery") if isinstance(verdict.get("recovery"), Mapping) else None
    if recovery is not None and recovery.get("checked"):
        checked = [c for c in recovery["checked"] if isinstance(c, Mapping)]
        tol = _num(recovery.get("tolerance"))
        tol_text = f"within {100 * tol:.0f}%" if math.isfinite(tol) else "within 30%"
        spill = _num(recovery.get("spill_limit_hu"))
        planted = [c for c in checked if str(c.get("check", "planted")) == "planted"]
        empty = [c for c in checked if str(c.get("check", "planted")) != "planted"]
        ok = [c for c in checked if _truthy(c.get("ok"))]
        text = (
            f"planted effects recovered in {sum(_truthy(c.get('ok')) for c in planted)}/"
            f"{len(planted)} planted region(s) (right sign, {tol_text}, significant)"
        )
        if empty:
            limit = f"{spill:g} HU" if math.isfinite(spill) else "the spill limit"
            text += (
                f"; {sum(_truthy(c.get('ok')) for c in empty)}/{len(empty)} zone(s) where "
                f"nothing was planted within {limit}"
            )
        missed = [f"{c.get('contrast')} in {c.get('region')}" for c in checked if c not in ok]
        if missed:
            text += f"; missed: {', '.join(missed[:4])}" + (", ..." if len(missed) > 4 else "")
        return [("pass" if len(ok) == len(checked) else "fail", text)]
    rec = [
        r for r in results.get("recovery", []) if abs(_num(r.get("planted_hu"))) >= PLANTED_EPS_HU
    ]
    if not rec:
        return []
    n_sign = sum(_truthy(r.get("sign_ok")) for r in rec)
    n_30 = sum(_truthy(r.get("within_30pct")) for r in rec)
    kind = "pass" if n_sign == len(rec) and n_30 == len(rec) else "info"
    return [
        (
            kind,
            f"planted effects: right sign in {n_sign}/{len(rec)} edit-region pairs, within 30% "
            f"of the planted size in {n_30}/{len(rec)}",
        )
    ]


def verdict_lines(results: Mapping[str, Any]) -> list[str]:
    """A short plain-text verdict: per edit, per null control, calibration, spill, recovery.

    Args:
        results: the ``results.json`` content (see :func:`load_results`), with
            ``cohort_stats`` rows and, where effects were planted, ``recovery`` rows.

    Returns:
        Lines such as ``smoking=current: upper_lung -58 HU [-64, -52], calibrated q<0.001
        (planted -60 HU, error 3%); also significant in 2 other region(s): lung,
        right_lung`` and ``null control blood_group=O: nothing significant after FDR
        (passed); largest |effect| 0.40 HU``.  For an edit with significant regions the
        region with the largest mean difference is named first.  The permuted-label
        controls share one line.  Used by the report page, ``unveil report`` and
        ``unveil demo``.
    """
    return [text for _, text in _verdict_items(results)]


# --------------------------------------------------------------------------- HTML pieces


def esc(value: Any) -> str:
    """HTML-escape text from a file; ``://`` and ``@`` become character references too.

    The page must hold no URL and no CSS ``@import``, even where a user's path or edit
    name contains one; the references render as the same characters.
    """
    return html.escape(str(value), quote=True).replace("://", "&#58;//").replace("@", "&#64;")


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, mime: str, alt: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<img{c} alt="{esc(alt)}" src="{_data_uri(data, mime)}">'


def _figure(img_html: str, caption: str) -> str:
    return f"<figure>{img_html}<figcaption>{caption}</figcaption></figure>"


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], row_classes: Sequence[str] = ()
) -> str:
    """A table; header and cells must already be escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, cells in enumerate(rows):
        cls = row_classes[i] if i < len(row_classes) and row_classes[i] else ""
        attr = f' class="{cls}"' if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(v: Any, digits: int = 2) -> str:
    x = _num(v)
    if not math.isfinite(x):
        return "n/a" if v is None or str(v).strip() in ("", "nan", "None") else esc(v)
    return _fixed(x, digits)


def _fmt_pnum(v: Any) -> str:
    x = _num(v)
    if not math.isfinite(x):
        return "n/a"
    return "&lt;0.001" if x < 0.001 else f"{x:.3f}"


def _tests_table(rows: Sequence[Mapping[str, Any]]) -> str:
    from unveil.analysis.figures import region_order

    by_region = {str(r.get("region")): r for r in rows}
    ordered = [by_region[g] for g in region_order(list(by_region))]
    header = [
        "region",
        "n",
        "mean HU [95% CI]",
        "d<sub>z</sub>",
        "p",
        "q",
        "calibrated p",
        "calibrated q",
        "MDE HU",
        "significant",
    ]
    cells, classes = [], []
    for r in ordered:
        sig = _truthy(r.get("significant"))
        n = _num(r.get("n_subjects"))
        cells.append(
            [
                esc(r.get("region")),
                f"{n:.0f}" if math.isfinite(n) else "n/a",
                esc(fmt_hu(r.get("mean_diff_hu"), r.get("ci_low"), r.get("ci_high"))),
                _fmt(r.get("effect_size_dz"), 2),
                _fmt_pnum(r.get("p_value")),
                _fmt_pnum(r.get("q_value")),
                _fmt_pnum(r.get("p_calibrated")),
                _fmt_pnum(r.get("q_calibrated")),
                _fmt(r.get("mde_hu"), 1),
                "<b>yes</b>" if sig else "no",
            ]
        )
        classes.append("sig" if sig else "")
    tests = sorted({str(r.get("test")) for r in rows if r.get("test")})
    null = any(_truthy(r.get("null_control")) for r in rows)
    rule = (
        "negative control: significant on the raw q (FDR over the controls); its calibrated "
        "p is leave-one-out, for display"
        if null
        else "significant on the calibrated q when the run has enough negative controls, "
        "else on the raw q"
    )
    note = (
        f'<p class="note">test of the per-subject effects against zero: '
        f"{esc(', '.join(tests)) or 'n/a'}; {rule}; MDE: minimum detectable effect of the "
        "noise floor (80% power).</p>"
    )
    return _table(header, cells, classes) + note


def _recovery_table(rows: Sequence[Mapping[str, Any]]) -> str:
    from unveil.analysis.figures import region_order

    by_region = {str(r.get("region")): r for r in rows}
    ordered = [by_region[g] for g in region_order(list(by_region))]
    header = [
        "region",
        "planted HU",
        "recovered HU [95% CI]",
        "error HU",
        "relative error",
        "sign right",
        "within tolerance",
    ]
    cells, classes = [], []
    for r in ordered:
        rel = _num(r.get("relative_error"))
        within = r.get("within_tolerance", r.get("within_30pct"))
        ok = _truthy(r.get("sign_ok")) and _truthy(within)
        cells.append(
            [
                esc(r.get("region")),
                _fmt(r.get("planted_hu"), 1),
                esc(fmt_hu(r.get("recovered_hu"), r.get("ci_low"), r.get("ci_high"))),
                _fmt(r.get("error_hu"), 1),
                f"{100 * abs(rel):.0f}%" if math.isfinite(rel) else "n/a",
                "yes" if _truthy(r.get("sign_ok")) else "no",
                "yes" if _truthy(within) else "no",
            ]
        )
        classes.append("" if ok else "warn")
    note = (
        '<p class="note">Where nothing was planted, "sign right" and "within tolerance" '
        "both mean that the recovered shift stays within the spill limit.</p>"
    )
    return _table(header, cells, classes) + note


def _comparison_table(
    cf_rows: Sequence[Mapping[str, Any]],
    obs_rows: Sequence[Mapping[str, Any]],
    adj_rows: Sequence[Mapping[str, Any]],
) -> str:
    """Counterfactual, raw and adjusted association side by side, one row per region."""
    from unveil.analysis.figures import region_order

    cf = {str(r.get("region")): r for r in cf_rows}
    obs = {str(r.get("region")): r for r in obs_rows}
    adj = {str(r.get("region")): r for r in adj_rows}
    header = [
        "region",
        "counterfactual (model) [95% CI]",
        "raw association in the cohort [95% CI]",
        "adjusted association [95% CI]",
    ]
    cells = []
    for g in region_order(list(dict.fromkeys([*cf, *obs, *adj]))):
        c, o, a = cf.get(g, {}), obs.get(g, {}), adj.get(g, {})
        cells.append(
            [
                esc(g),
                esc(fmt_hu(c.get("mean_diff_hu"), c.get("ci_low"), c.get("ci_high"))),
                esc(fmt_hu(o.get("diff_hu"), o.get("ci_low"), o.get("ci_high"))),
                esc(fmt_hu(a.get("diff_hu"), a.get("ci_low"), a.get("ci_high"))),
            ]
        )
    notes = []
    if obs_rows:
        o = obs_rows[0]
        groups = (
            f"{_group(o.get('group_a'), o.get('n_a'))} against "
            f"{_group(o.get('group_b'), o.get('n_b'))}"
        )
        method = str(o.get("method") or "")
        notes.append(f"raw: {groups}; {esc(method)}")
    if adj_rows:
        a = adj_rows[0]
        term_b = str(a.get("term_b") or "").strip()
        if term_b and term_b != "nan":
            terms = f"{esc(a.get('term_a'))} &minus; {esc(term_b)}"
        else:
            terms = f"slope of {esc(a.get('term_a'))} &times; {_fmt(a.get('scale'), 3)}"
        notes.append(f"adjusted: {terms}; {esc(a.get('method'))}")
    note = "".join(f'<p class="note">{n}</p>' for n in notes)
    return _table(header, cells) + note


def _group(name: Any, n: Any) -> str:
    """``name (n)``; a dash for the empty second group of a numeric (slope) row."""
    text = "" if name is None else str(name).strip()
    if not text or text == "nan":
        return "&mdash;"
    count = _num(n)
    return f"{esc(text)} ({count:.0f})" if math.isfinite(count) else esc(text)


# --------------------------------------------------------------------------- volumes


def _resolve_cohort(run: Mapping[str, Any], run_root: Path) -> Path | None:
    cohort = run.get("cohort")
    if not cohort:
        return None
    p = Path(str(cohort))
    for cand in (p, run_root / p, run_root.parent / p):
        if cand.is_dir():
            return cand
    return None


def _data_cfg(run: Mapping[str, Any]):
    from pydantic import ValidationError

    from unveil.config import DataConfig

    data = (run.get("config") or {}).get("data") if isinstance(run.get("config"), dict) else None
    try:
        return DataConfig.model_validate(data or {})
    except ValidationError:  # a foreign or older config: the default labels are the best guess
        return DataConfig()


def _lung_mask(
    cohort: Path | None, sid: str, data_cfg, shape: tuple[int, ...]
) -> np.ndarray | None:
    """Bool lung mask ``(X, Y, Z)`` of a subject from the cohort's masks, or None."""
    if cohort is None or not (cohort / "masks").is_dir():
        return None
    from unveil.data.cohort import find_volumes
    from unveil.data.io import read_volume
    from unveil.errors import DataError

    paths = find_volumes(cohort / "masks").get(sid)
    if not paths:
        return None
    try:
        labels = read_volume(paths[0]).array
    except DataError:
        return None
    if tuple(labels.shape) != tuple(shape):
        return None
    values = [data_cfg.labels[n] for n in data_cfg.lung_labels if n in data_cfg.labels]
    return np.isin(labels, values)


def _subject_views(
    layout, run: Mapping[str, Any], sid: str, edit: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(factual, edited, mean diff, affine)`` for one subject and edit, or None if missing.

    factual and edited are the pair of the first seed; the difference is the mean over all
    seeds of (edited - factual), the same map ``unveil analyze`` writes.
    """
    from unveil.data.io import read_volume

    seeds = list(run.get("seeds") or [])
    if not seeds:
        return None
    paths = [(layout.factual(sid, k), layout.edited(sid, edit, k)) for k in seeds]
    if not all(f.is_file() and e.is_file() for f, e in paths):
        return None
    first_f = read_volume(paths[0][0])
    first_e = read_volume(paths[0][1])
    factual = np.asarray(first_f.array, dtype=np.float32)
    edited = np.asarray(first_e.array, dtype=np.float32)
    diff = edited.astype(np.float64) - factual
    for f, e in paths[1:]:
        diff += np.asarray(read_volume(e).array, dtype=np.float64) - np.asarray(
            read_volume(f).array, dtype=np.float64
        )
    diff /= len(paths)
    return factual, edited, diff.astype(np.float32), first_f.affine


# --------------------------------------------------------------------------- page


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
max-width:1200px;margin:0 auto;padding:1.5rem;color:#1a1a1a;line-height:1.45;font-size:16px}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.3rem;border-bottom:2px solid #ddd;
padding-bottom:.2rem;margin-top:2.2rem}h3{font-size:1.05rem;margin-bottom:.3rem}
.sub{color:#555;margin-top:0}
.verdict{border:2px solid #333;border-radius:8px;padding:.6rem 1rem;background:#fafafa}
.verdict ul{margin:.3rem 0;padding-left:1.2rem}.verdict li{margin:.25rem 0;font-size:1.05rem}
li.effect{color:#7a0019;font-weight:600}li.pass{color:#1b6e20}li.fail{color:#b00020;font-weight:700}
li.missed{color:#b00020;font-weight:600}li.none{color:#333}li.info{color:#555}
dl.asked{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem}
dl.asked dt{font-weight:600}dl.asked dd{margin:0}
table{border-collapse:collapse;margin:.4rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f0f0f0}td:first-child,td:nth-child(2),th:first-child{text-align:left}
tr.sig td{background:#fde0dd}tr.warn td{background:#fff3cd}
.pair{display:flex;flex-wrap:wrap;gap:1.5rem;align-items:flex-start}.pair>div{flex:1 1 420px}
figure{margin:.6rem 0}figcaption{font-size:.85rem;color:#444}
img{max-width:100%;height:auto}img.gif{image-rendering:pixelated;width:100%;max-width:720px}
.note{font-size:.85rem;color:#555}.caution{font-size:.9rem;color:#8a4b00}
code{background:#f3f3f3;padding:0 .2rem;border-radius:3px}
"""


def _asked(run: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    cfg = run.get("config") if isinstance(run.get("config"), dict) else {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    family = run.get("family") or model.get("family") or "unknown"
    fusion = model.get("fusion") or "unknown"
    ckpt = run.get("checkpoint")
    edits, nulls = _edits(results)
    permuted = _permuted(results)
    seeds = list(run.get("seeds") or [])
    subjects = list(run.get("subjects") or [])
    window = run.get("hu_window") or DEFAULT_HU_WINDOW
    cal = _calibration(results)
    rule = (
        "calibrated q &lt; {a} (Benjamini&ndash;Hochberg, empirical null of the negative controls)"
        if _truthy(cal.get("available"))
        else "q &lt; {a} (Benjamini&ndash;Hochberg)"
    ).format(a=esc(results.get("alpha", 0.05)))
    plain = [e for e in nulls if e not in permuted]
    items = [
        ("edits", ", ".join(edits) or "none"),
        ("null edits (negative controls)", ", ".join(plain) or "none"),
        ("permuted-label controls", str(len(permuted)) if permuted else "none"),
        (
            "seeds per subject",
            f"{len(seeds)} ({', '.join(str(s) for s in seeds)})" if seeds else "unknown",
        ),
        ("subjects", str(len(subjects)) if subjects else "unknown"),
        (
            "noise",
            "drawn per subject and seed"
            if run.get("noise") == "per-subject"
            else "shared across subjects (older run)",
        ),
        ("model", f"{family}, fusion {fusion}"),
        ("checkpoint", Path(str(ckpt)).name if ckpt else "unknown"),
        ("cohort", str(run.get("cohort") or "unknown")),
        ("HU window", f"{window[0]} to {window[1]} HU"),
        ("significance", rule),
    ]
    body = "".join(
        f"<dt>{esc(k)}</dt><dd>{v if k == 'significance' else esc(v)}</dd>" for k, v in items
    )
    return f'<dl class="asked">{body}</dl>'


def _notes(results: Mapping[str, Any]) -> str:
    """The analysis's cautions (too few subjects for the test, HU window edges...)."""
    verdict = results.get("verdict") if isinstance(results.get("verdict"), Mapping) else {}
    notes = [str(n) for n in verdict.get("notes") or [] if str(n).strip()]
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return (
        f'<p class="caution"><b>Cautions from the analysis:</b></p><ul class="caution">{items}</ul>'
    )


def _noise_section(results: Mapping[str, Any]) -> str:
    """The noise floor per region and the empirical calibration, once for the run."""
    from unveil.analysis.figures import region_order

    parts = []
    floor = {str(r.get("region")): r for r in results.get("noise_floor", [])}
    if floor:
        cells = []
        for g in region_order(list(floor)):
            r = floor[g]
            n = _num(r.get("n_subjects"))
            cells.append(
                [
                    esc(g),
                    f"{n:.0f}" if math.isfinite(n) else "n/a",
                    _fmt(r.get("floor_mean_hu"), 2),
                    _fmt(r.get("floor_sd_hu"), 2),
                    _fmt(r.get("seed_sd_hu"), 2),
                    _fmt(r.get("mde_hu"), 2),
                ]
            )
        parts.append(
            "<h2>Noise floor</h2>"
            "<p>Two generations under the same prompt with different noise: what a change of "
            "seed alone produces. It is reported for scale, not used as the comparator (the "
            "tests are against zero). The minimum detectable effect (MDE) is the smallest "
            "mean shift a two-sided test over these subjects would find with 80% power.</p>"
            + _table(
                [
                    "region",
                    "n",
                    "floor mean HU",
                    "SD across subjects HU",
                    "seed-to-seed SD HU",
                    "MDE HU",
                ],
                cells,
            )
        )
    cal = _calibration(results)
    if cal:
        if _truthy(cal.get("available")):
            text = (
                f"The negative controls ({esc(cal.get('n_controls'))} contrast(s), "
                f"{esc(cal.get('n_rows'))} region rows) fit the model's systematic error as "
                f"N(&mu;, &tau;&sup2;) with &mu; = {_fmt(cal.get('mu_hu'), 2)} HU and &tau; = "
                f"{_fmt(cal.get('tau_hu'), 2)} HU. A real edit's calibrated p is "
                "2&Phi;(&minus;|estimate &minus; &mu;| / &radic;(&tau;&sup2; + SE&sup2;)): "
                "it must stand out from what an attribute without effect produces through "
                "this model."
            )
        else:
            text = (
                f"Only {esc(cal.get('n_rows'))} negative-control row(s): too few to fit the "
                "empirical null, so real edits are judged on the raw test against zero."
            )
        parts.append(f"<h2>Empirical calibration</h2><p>{text}</p>")
    return "".join(parts)


def _methods(run: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    seeds = list(run.get("seeds") or [])
    # Runs record how their noise was drawn; older ones used seed k + offset for the floor.
    floor_noise = (
        "a second noise volume drawn for the same subject and seed"
        if run.get("noise") == "per-subject"
        else f"noise of seed k+{esc(run.get('floor_seed_offset', 1000))}, shared by all subjects"
    )
    window = run.get("hu_window") or DEFAULT_HU_WINDOW
    tests = sorted({str(r.get("test")) for r in results.get("cohort_stats", []) if r.get("test")})
    settings = results.get("settings") if isinstance(results.get("settings"), Mapping) else {}
    n_boot = settings.get("n_boot", results.get("n_boot"))
    boot = f"{esc(n_boot)} bootstrap resamples" if n_boot else "bootstrap resampling"
    if settings.get("bootstrap"):
        boot += f" ({esc(settings['bootstrap'])})"
    alpha = esc(results.get("alpha", 0.05))
    return (
        "<p>Each counterfactual pair is generated from the subject's own segmentation mask "
        "and the same noise, and differs only in the edited clinical field; "
        f"{len(seeds) or 'several'} seed(s) per subject. For each subject and region the "
        "effect is the mean over the region's voxels of (counterfactual &minus; factual), "
        "averaged over seeds; the subject is the unit. Cohort means carry 95% confidence "
        f"intervals from {boot} over subjects. The per-subject effects are tested against "
        f"zero ({esc(', '.join(tests)) or 'see table'}); d<sub>z</sub> is their mean over "
        "their standard deviation. The <b>noise floor</b> (same prompt, "
        f"{floor_noise}) is reported with the minimum detectable effect it implies, not "
        "used as the comparator. <b>Negative controls</b> (null edits of attributes known to "
        "have no effect, and permuted labels) give the empirical null: their estimates fit "
        "the model's systematic error N(&mu;, &tau;&sup2;) by maximum likelihood, and each "
        "real edit's calibrated p measures how far it stands from that null (Schuemie et al., "
        "Stat Med 2014). P-values are corrected by Benjamini&ndash;Hochberg over the real "
        "edits' regions (raw and calibrated separately) and over the controls' regions; a "
        f"real edit's region is significant when its calibrated q &lt; {alpha} (raw q when "
        "there are too few controls), a control's when its raw q is. The <b>spill</b> is "
        "the effect in the lung outside the region where it is largest. Beside the "
        "counterfactual stand the raw association in the real cohort (group means, or a "
        "slope) and the association adjusted for every recorded attribute (least squares, "
        "HC3 robust covariance). Images are shown in a fixed window of "
        f"{esc(window[0])} to {esc(window[1])} HU, the same for every subject, and "
        "differences in HU on a colour scale symmetric around 0.</p>"
    )


_LIMITS = (
    "<p><b>Limitations.</b> A counterfactual shows what the model learned, not a causal "
    "effect in patients: a pattern that is absent from, or confounded in, the training data "
    "can be missed or reproduced. Significance is measured against zero, with the sampling "
    "error of the training cohort (the adjusted regression's standard error) added to the "
    "subjects' own, and calibrated on "
    "this model's own negative controls, for this cohort and this checkpoint only; the "
    "calibration is as good as the controls are representative of the real edits. The "
    "adjusted association assumes that the recorded attributes act additively and that no "
    "unrecorded one confounds. Regions are defined from the masks, and a small region or "
    "few subjects give wide intervals.</p>"
)


def _edit_section(
    edit: str,
    null: bool,
    results: Mapping[str, Any],
    run: Mapping[str, Any],
    run_root: Path,
    subjects_shown: int,
) -> str:
    from unveil.analysis import figures
    from unveil.records import RunLayout

    rows = _contrast_rows(results, edit)
    rec_rows = [r for r in results.get("recovery", []) if str(r.get("contrast")) == edit]
    field = edit_field(edit) or edit.strip()
    observed_all = results.get("observed", [])
    if any(r.get("contrast") for r in observed_all):
        # Rows name their edit: the attribute column may differ from the edit's field name.
        obs_rows = [r for r in observed_all if str(r.get("contrast")) == edit]
    else:
        obs_rows = [r for r in observed_all if str(r.get("attribute")) == field]
    adj_rows = [r for r in results.get("adjusted", []) if str(r.get("contrast")) == edit]
    if obs_rows:
        field = str(obs_rows[0].get("attribute") or field)
    spec = next((r for r in results.get("specificity", []) if str(r.get("contrast")) == edit), None)
    window = tuple(run.get("hu_window") or DEFAULT_HU_WINDOW)
    parts = [f"<h2>{'null control: ' if null else ''}{esc(edit)}</h2>"]
    if rows:
        parts.append(
            _figure(
                _img(figures.region_bars(rows, edit, rec_rows), "image/png", f"region bars {edit}"),
                "Mean difference counterfactual &minus; factual per region with 95% CI (bars), "
                "the noise floor for scale (grey band: mean &plusmn; SD across subjects), "
                "significant regions in red with the q that decided them"
                + (", planted shift as a black diamond." if rec_rows else "."),
            )
        )
        parts.append("<h3>Counterfactual: tests against zero</h3>" + _tests_table(rows))
    else:
        parts.append("<p>No statistics for this edit in the analysis.</p>")
    if spec is not None and spec.get("peak_region") not in (None, "", "nan"):
        frac = _num(spec.get("spill_fraction"))
        parts.append(
            "<h3>Specificity</h3>"
            f"<p>Largest in <b>{esc(spec.get('peak_region'))}</b> "
            f"{esc(fmt_hu(spec.get('peak_hu'), spec.get('peak_ci_low'), spec.get('peak_ci_high')))}; "
            "in the rest of the lung "
            f"{esc(fmt_hu(spec.get('spill_hu'), spec.get('spill_ci_low'), spec.get('spill_ci_high')))}"
            + (f" (spill {100 * frac:.0f}% of the peak)" if math.isfinite(frac) else "")
            + "; in the airway "
            f"{esc(fmt_hu(spec.get('airway_hu'), spec.get('airway_ci_low'), spec.get('airway_ci_high')))}."
            "</p>"
        )
    if obs_rows or adj_rows:
        parts.append(
            f"<h3>Counterfactual, observed and adjusted association: {esc(field)}</h3>"
            '<p class="caution">The raw association compares groups of real patients, and '
            "other attributes can confound it (smokers are older, for instance); the adjusted "
            "one holds every other recorded attribute fixed in a linear model; the "
            "counterfactual changes this attribute alone, in the model.</p>"
            + _comparison_table(rows, obs_rows, adj_rows)
        )
    else:
        parts.append(
            f"<h3>Observed in the real cohort: {esc(field)}</h3>"
            "<p class='note'>No association in the real cohort was computed for this "
            "contrast.</p>"
        )
    if rec_rows:
        parts.append("<h3>Planted against recovered</h3>" + _recovery_table(rec_rows))

    layout = RunLayout(run_root)
    subjects = list(run.get("subjects") or [])[: max(0, int(subjects_shown))]
    if subjects:
        cohort = _resolve_cohort(run, run_root)
        data_cfg = _data_cfg(run)
        views = []
        for sid in subjects:
            v = _subject_views(layout, run, sid, edit)
            if v is None:
                views.append((sid, None, None))
                continue
            mask = _lung_mask(cohort, sid, data_cfg, v[0].shape)
            views.append((sid, v, mask))
        # One difference scale for all subjects of an edit, so their panels compare.
        ranges = [figures.robust_diff_range(v[2], m) for _, v, m in views if v is not None]
        diff_range = max(ranges) if ranges else 1.0
        seeds = list(run.get("seeds") or [])
        for sid, v, mask in views:
            parts.append(f"<h3>Subject {esc(sid)}</h3>")
            if v is None:
                parts.append(
                    f"<p class='note'>The volumes of {esc(sid)} for this edit are not in the "
                    "run folder; slice views are omitted.</p>"
                )
                continue
            factual, edited, diff, affine = v
            diff_ras = figures.to_ras(diff, affine)[0]
            mask_ras = None if mask is None else figures.to_ras(mask, affine)[0]
            centre = figures.lung_centre(mask_ras, diff_ras.shape)
            if mask_ras is not None and mask_ras.any():
                where = "through the lung centre"
            else:
                where = "through the volume centre (lung mask not found)"
            # Axial: the level where the difference is strongest in the lungs, which a
            # mid-lung slice would miss for a zonal effect; coronal: through the lung centre,
            # which shows the upper, middle and lower zones together.
            axial = figures.strongest_slice(diff_ras, mask_ras, "axial")
            titles = ("factual", f"counterfactual: {edit}", "difference (mean over seeds)")
            panels = "".join(
                _img(
                    figures.slice_panel(
                        factual,
                        edited,
                        diff,
                        view,
                        index,
                        hu_window=window,
                        diff_range=diff_range,
                        affine=affine,
                        titles=titles,
                    ),
                    "image/png",
                    f"{view} slices of {sid}, {edit}",
                )
                for view, index in (("axial", axial), ("coronal", centre[1]))
            )
            parts.append(
                _figure(
                    panels,
                    f"Axial slice {axial + 1} where the mean |difference| in the lungs is largest "
                    "(radiological view: patient right on image left, anterior up) and coronal "
                    f"slice {where} (patient right on image left, superior up). Factual and "
                    f"counterfactual of seed {esc(seeds[0]) if seeds else '?'} in a fixed window "
                    f"of {esc(window[0])} to {esc(window[1])} HU; difference = counterfactual "
                    f"&minus; factual averaged over {len(seeds)} seed(s), colour scale "
                    f"&plusmn;{diff_range:.3g} HU (red higher, blue lower).",
                )
            )
            gif = figures.slices_gif(
                factual,
                edited,
                diff,
                affine=affine,
                hu_window=window,
                diff_range=diff_range,
                mask=mask,
            )
            parts.append(
                _figure(
                    _img(gif, "image/gif", f"axial slices of {sid}, {edit}", cls="gif"),
                    f"Animation through the axial slices (factual | counterfactual | difference), "
                    f"same windows: {esc(window[0])} to {esc(window[1])} HU and "
                    f"&plusmn;{diff_range:.3g} HU.",
                )
            )
    return "<section>" + "".join(parts) + "</section>"


def render_report(run_root: str | os.PathLike, subjects_shown: int = 2) -> str:
    """The report page as an HTML string (see :func:`write_report`)."""
    from unveil.analysis import figures
    from unveil.records import RUN_JSON, read_run

    root = Path(run_root)
    results = load_results(root)
    run: dict[str, Any] = dict(results.get("run") or {})
    if (root / RUN_JSON).is_file():
        # The run description has the config (family, fusion, labels) that results.json drops.
        run.update(read_run(root, check_volumes=False))
    edits, nulls = _edits(results)
    items = _verdict_items(results)
    verdict = "".join(f'<li class="{k}">{esc(t)}</li>' for k, t in items) or "<li>no results</li>"

    body = [
        "<h1>What the model changes: counterfactual report</h1>",
        f'<p class="sub">run {esc(root.resolve().name)}</p>',
        f'<div class="verdict"><h2 style="margin-top:.2rem;border:0">Verdict</h2><ul>{verdict}</ul>'
        '<p class="note">Differences are counterfactual &minus; factual in HU, mean over '
        "subjects [95% CI]; q is the false-discovery-rate-corrected p-value, calibrated q "
        "the same after calibration on the negative controls.</p>"
        f"{_notes(results)}</div>",
        "<h2>What was asked</h2>",
        _asked(run, results),
    ]
    body.append(_noise_section(results))
    for e in edits:
        body.append(_edit_section(e, False, results, run, root, subjects_shown))
    permuted = _permuted(results)
    for e in nulls:
        # A permuted-label control's slices show only noise; its table is what matters.
        shown = 0 if e in permuted else subjects_shown
        body.append(_edit_section(e, True, results, run, root, shown))
    rec = [r for r in results.get("recovery", []) if math.isfinite(_num(r.get("planted_hu")))]
    if rec:
        settings = results.get("settings") if isinstance(results.get("settings"), Mapping) else {}
        tol = _num(settings.get("recovery_tolerance"))
        tol = tol if math.isfinite(tol) and tol > 0 else 0.30
        body.append("<h2>Planted against recovered, all edits</h2>")
        body.append(
            _figure(
                _img(figures.recovery_plot(rec, tol), "image/png", "planted vs recovered"),
                "Each point is one edit and region: planted shift (x) against the recovered "
                "mean difference with its 95% CI (y); on the diagonal the tool recovers exactly; "
                f"grey band: within {100 * tol:.0f}% of the planted size.",
            )
        )
    body.append("<h2>Methods</h2>")
    body.append(_methods(run, results))
    body.append(_LIMITS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>unveil report: {esc(root.resolve().name)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
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
    from unveil.fs import write_text

    if int(subjects_shown) < 0:
        raise UnveilError(f"--subjects must be 0 or more, got {subjects_shown}.")
    root = Path(run_root)
    page = render_report(root, subjects_shown=subjects_shown)
    out = Path(out_path) if out_path is not None else root / "report.html"
    return write_text(out, page)
