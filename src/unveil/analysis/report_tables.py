"""The text and tables of the report page: what was asked, the noise floor and calibration,
the tests of a contrast, the associations beside it, planted against recovered, methods.

Pure: records (:mod:`unveil.records`) in, escaped HTML out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from unveil.analysis.charts import region_order
from unveil.analysis.report_html import (
    count_cell,
    esc,
    group_cell,
    num_cell,
    p_cell,
    table,
)
from unveil.analysis.report_verdict import contrast_lists, fmt_hu, permuted_names
from unveil.records import (
    AdjustedRow,
    CohortRow,
    ObservedRow,
    RecoveryRow,
    Results,
    RunRecord,
    SpecificityRow,
)

TESTS_HEADER = [
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


def tests_table(rows: Sequence[CohortRow]) -> str:
    """The tests of one contrast against zero, one row per region."""
    by_region = {r.region: r for r in rows}
    cells, classes = [], []
    for r in (by_region[g] for g in region_order(list(by_region))):
        cells.append(
            [
                esc(r.region),
                count_cell(r.n_subjects),
                esc(fmt_hu(r.mean_diff_hu, r.ci_low, r.ci_high)),
                num_cell(r.effect_size_dz, 2),
                p_cell(r.p_value),
                p_cell(r.q_value),
                p_cell(r.p_calibrated),
                p_cell(r.q_calibrated),
                num_cell(r.mde_hu, 1),
                "<b>yes</b>" if r.significant else "no",
            ]
        )
        classes.append("sig" if r.significant else "")
    tests = sorted({r.test for r in rows if r.test})
    rule = (
        "negative control: significant on the raw q (FDR over the controls); its calibrated "
        "p is leave-one-out, for display"
        if any(r.null_control for r in rows)
        else "significant on the calibrated q when the run has enough negative controls, "
        "else on the raw q"
    )
    note = (
        f'<p class="note">test of the per-subject effects against zero: '
        f"{esc(', '.join(tests)) or 'n/a'}; {rule}; MDE: minimum detectable effect of the "
        "noise floor (80% power).</p>"
    )
    return table(TESTS_HEADER, cells, classes) + note


def recovery_table(rows: Sequence[RecoveryRow]) -> str:
    """Planted against recovered shift of one contrast, one row per region."""
    by_region = {r.region: r for r in rows}
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
    for r in (by_region[g] for g in region_order(list(by_region))):
        rel = r.relative_error
        cells.append(
            [
                esc(r.region),
                num_cell(r.planted_hu, 1),
                esc(fmt_hu(r.recovered_hu, r.ci_low, r.ci_high)),
                num_cell(r.error_hu, 1),
                f"{100 * abs(rel):.0f}%" if math.isfinite(rel) else "n/a",
                "yes" if r.sign_ok else "no",
                "yes" if r.within else "no",
            ]
        )
        classes.append("" if r.sign_ok and r.within else "warn")
    note = (
        '<p class="note">Where nothing was planted, "sign right" and "within tolerance" '
        "both mean that the recovered shift stays within the spill limit.</p>"
    )
    return table(header, cells, classes) + note


def comparison_table(
    cf_rows: Sequence[CohortRow],
    obs_rows: Sequence[ObservedRow],
    adj_rows: Sequence[AdjustedRow],
) -> str:
    """Counterfactual, raw and adjusted association side by side, one row per region."""
    cf = {r.region: r for r in cf_rows}
    obs = {r.region: r for r in obs_rows}
    adj = {r.region: r for r in adj_rows}
    header = [
        "region",
        "counterfactual (model) [95% CI]",
        "raw association in the cohort [95% CI]",
        "adjusted association [95% CI]",
    ]
    cells = []
    for g in region_order(list(dict.fromkeys([*cf, *obs, *adj]))):
        c, o, a = cf.get(g), obs.get(g), adj.get(g)
        cells.append(
            [
                esc(g),
                esc(fmt_hu(c.mean_diff_hu, c.ci_low, c.ci_high) if c else fmt_hu(None)),
                esc(fmt_hu(o.diff_hu, o.ci_low, o.ci_high) if o else fmt_hu(None)),
                esc(fmt_hu(a.diff_hu, a.ci_low, a.ci_high) if a else fmt_hu(None)),
            ]
        )
    notes = []
    if obs_rows:
        o = obs_rows[0]
        groups = f"{group_cell(o.group_a, o.n_a)} against {group_cell(o.group_b, o.n_b)}"
        notes.append(f"raw: {groups}; {esc(o.method)}")
    if adj_rows:
        a = adj_rows[0]
        term_b = a.term_b.strip()
        if term_b and term_b != "nan":
            terms = f"{esc(a.term_a)} &minus; {esc(term_b)}"
        else:
            terms = f"slope of {esc(a.term_a)} &times; {num_cell(a.scale, 3)}"
        notes.append(f"adjusted: {terms}; {esc(a.method)}")
    return table(header, cells) + "".join(f'<p class="note">{n}</p>' for n in notes)


def specificity_text(spec: SpecificityRow) -> str:
    """The specificity paragraph of a contrast (its peak, the rest of the lung, the airway)."""
    frac = spec.spill_fraction
    return (
        "<h3>Specificity</h3>"
        f"<p>Largest in <b>{esc(spec.peak_region)}</b> "
        f"{esc(fmt_hu(spec.peak_hu, spec.peak_ci_low, spec.peak_ci_high))}; "
        "in the rest of the lung "
        f"{esc(fmt_hu(spec.spill_hu, spec.spill_ci_low, spec.spill_ci_high))}"
        + (f" (spill {100 * frac:.0f}% of the peak)" if math.isfinite(frac) else "")
        + "; in the airway "
        f"{esc(fmt_hu(spec.airway_hu, spec.airway_ci_low, spec.airway_ci_high))}."
        "</p>"
    )


def asked(run: RunRecord, results: Results) -> str:
    """What was asked: edits, controls, seeds, subjects, model, HU window, the rule."""
    model = run.config_section("model")
    family = run.family or model.get("family") or "unknown"
    fusion = model.get("fusion") or "unknown"
    edits, nulls = contrast_lists(results)
    permuted = permuted_names(results)
    seeds, subjects, window = run.seeds, run.subjects, run.window
    calibrated = results.calibration is not None and results.calibration.available
    rule = (
        "calibrated q &lt; {a} (Benjamini&ndash;Hochberg, empirical null of the negative controls)"
        if calibrated
        else "q &lt; {a} (Benjamini&ndash;Hochberg)"
    ).format(a=esc(results.alpha))
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
            if run.per_subject_noise
            else "shared across subjects (older run)",
        ),
        ("model", f"{family}, fusion {fusion}"),
        ("checkpoint", Path(run.checkpoint).name if run.checkpoint else "unknown"),
        ("cohort", str(run.cohort or "unknown")),
        ("HU window", f"{window[0]} to {window[1]} HU"),
        ("significance", rule),
    ]
    body = "".join(
        f"<dt>{esc(k)}</dt><dd>{v if k == 'significance' else esc(v)}</dd>" for k, v in items
    )
    return f'<dl class="asked">{body}</dl>'


def notes(results: Results) -> str:
    """The analysis's cautions (too few subjects for the test, HU window edges...)."""
    lines = [n for n in (results.verdict.notes if results.verdict else []) if n.strip()]
    if not lines:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in lines)
    return (
        f'<p class="caution"><b>Cautions from the analysis:</b></p><ul class="caution">{items}</ul>'
    )


def noise_section(results: Results) -> str:
    """The noise floor per region and the empirical calibration, once for the run."""
    parts = []
    floor = {r.region: r for r in results.noise_floor}
    if floor:
        cells = [
            [
                esc(g),
                count_cell(floor[g].n_subjects),
                num_cell(floor[g].floor_mean_hu, 2),
                num_cell(floor[g].floor_sd_hu, 2),
                num_cell(floor[g].seed_sd_hu, 2),
                num_cell(floor[g].mde_hu, 2),
            ]
            for g in region_order(list(floor))
        ]
        header = [
            "region",
            "n",
            "floor mean HU",
            "SD across subjects HU",
            "seed-to-seed SD HU",
            "MDE HU",
        ]
        parts.append(
            "<h2>Noise floor</h2>"
            "<p>Two generations under the same prompt with different noise: what a change of "
            "seed alone produces. It is reported for scale, not used as the comparator (the "
            "tests are against zero). The minimum detectable effect (MDE) is the smallest "
            "mean shift a two-sided test over these subjects would find with 80% power.</p>"
            + table(header, cells)
        )
    cal = results.calibration
    if cal is not None:
        if cal.available:
            text = (
                f"The negative controls ({esc(cal.n_controls)} contrast(s), "
                f"{esc(cal.n_rows)} region rows) fit the model's systematic error as "
                f"N(&mu;, &tau;&sup2;) with &mu; = {num_cell(cal.mu_hu, 2)} HU and &tau; = "
                f"{num_cell(cal.tau_hu, 2)} HU. A real edit's calibrated p is "
                "2&Phi;(&minus;|estimate &minus; &mu;| / &radic;(&tau;&sup2; + SE&sup2;)): "
                "it must stand out from what an attribute without effect produces through "
                "this model."
            )
        else:
            text = (
                f"Only {esc(cal.n_rows)} negative-control row(s): too few to fit the "
                "empirical null, so real edits are judged on the raw test against zero."
            )
        parts.append(f"<h2>Empirical calibration</h2><p>{text}</p>")
    return "".join(parts)


def methods(run: RunRecord, results: Results) -> str:
    """The methods paragraph, with the run's seeds, noise, tests and HU window."""
    # Runs record how their noise was drawn; older ones used seed k + offset for the floor.
    floor_noise = (
        "a second noise volume drawn for the same subject and seed"
        if run.per_subject_noise
        else f"noise of seed k+{esc(run.floor_offset)}, shared by all subjects"
    )
    window = run.window
    tests = sorted({r.test for r in results.cohort_stats if r.test})
    n_boot = results.bootstraps
    boot = f"{esc(n_boot)} bootstrap resamples" if n_boot else "bootstrap resampling"
    if results.settings.bootstrap:
        boot += f" ({esc(results.settings.bootstrap)})"
    alpha = esc(results.alpha)
    return (
        "<p>Each counterfactual pair is generated from the subject's own segmentation mask "
        "and the same noise, and differs only in the edited clinical field; "
        f"{len(run.seeds) or 'several'} seed(s) per subject. For each subject and region the "
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


LIMITS = (
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
