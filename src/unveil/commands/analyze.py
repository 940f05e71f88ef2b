"""``unveil analyze RUN``: difference maps and statistics of a counterfactual run."""

from __future__ import annotations

import argparse

from unveil.commands._options import positive_float, seed_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="difference maps in HU and per-region statistics of a counterfactual run",
        description=(
            "Measure what each edit of a counterfactual run changes, in HU, per region: "
            "difference maps (NIfTI and PNG) per subject and edit, per-region means per "
            "subject, and per edit and region the cohort mean with a BCa bootstrap 95% CI "
            "and a test of the per-subject effects against zero, Benjamini-Hochberg "
            "corrected, and calibrated on the negative controls (null edits, effect-free "
            "attributes, permuted labels) by an empirical null; the noise floor (same "
            "prompt, another seed) with its minimum detectable effect; the spill of each "
            "effect outside its peak region; beside it the raw and the adjusted association "
            "in the real cohort; and planted-vs-recovered effects when the cohort has "
            "effects.json. Writes RUN/analysis/ (replacing an earlier one); "
            "docs/statistics.md explains the numbers."
        ),
    )
    p.add_argument("run", metavar="RUN", help="folder written by unveil counterfactual")
    p.add_argument(
        "--n-boot", type=int, default=2000, help="bootstrap resamples per interval (default 2000)"
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="false-discovery rate for 'significant' (default 0.05)",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument(
        "--test",
        choices=("wilcoxon", "t"),
        default="wilcoxon",
        help="test of the per-subject effects against zero: signed-rank (default) or t",
    )
    p.add_argument(
        "--map-limit",
        type=positive_float,
        default=100.0,
        metavar="HU",
        help="colour scale of the PNG maps is [-HU, +HU] (default 100)",
    )
    p.add_argument(
        "--all-rows", action="store_true", help="print every row, not only significant ones"
    )
    p.add_argument(
        "--min-effect",
        type=float,
        default=0.0,
        metavar="HU",
        help=(
            "minimum effect of interest: an edit's region is significant only beyond this "
            "many HU (default 0; not applied to the negative controls)"
        ),
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.30,
        metavar="FRACTION",
        help="relative error allowed for a planted shift to count as recovered (default 0.30)",
    )
    p.add_argument(
        "--spill-limit",
        type=float,
        default=5.0,
        metavar="HU",
        help=(
            "largest |shift| allowed in a lung zone where nothing was planted, for the "
            "recovery verdict (default 5)"
        ),
    )
    p.set_defaults(func=run, lock_folder=lambda a: a.run)


def run(args: argparse.Namespace) -> int:
    from unveil.analysis.analyze import analyze, format_table
    from unveil.analysis.inputs import AnalysisOptions
    from unveil.records import RunLayout

    options = AnalysisOptions(
        n_boot=args.n_boot,
        alpha=args.alpha,
        seed=args.seed,
        test=args.test,
        map_limit_hu=args.map_limit,
        min_effect_hu=args.min_effect,
        recovery_tolerance=args.tolerance,
        spill_limit_hu=args.spill_limit,
    )
    results = analyze(args.run, options, progress=True)
    shown = results
    if not args.all_rows:
        # Every significant row, plus every row of the null edits (the negative control is
        # worth seeing even when, as it should, it shows nothing).
        rows = [r for r in results.cohort_stats if r.significant or r.null_control]
        shown = results.model_copy(update={"cohort_stats": rows})
    print(format_table(shown))
    verdict = results.verdict
    for v in verdict.edits:
        print(f"{v.contrast}: {v.summary}")
    cal = results.calibration
    if cal is not None and cal.available:
        print(
            f"empirical null from {cal.n_rows} control row(s): systematic error "
            f"{cal.mu_hu:+.2f} HU, spread {cal.tau_hu:.2f} HU"
        )
    for line in verdict.specificity:
        print(f"specificity: {line}")
    rec = verdict.recovery
    if rec is not None and rec.passed is not None:
        bad = [c for c in rec.checked if not c.ok]
        word = "passed" if rec.passed else "FAILED"
        print(
            f"planted-effect recovery {word} ({len(rec.checked) - len(bad)}/{len(rec.checked)} checks)"
        )
    for note in verdict.notes:
        print(f"note: {note}")
    print(f"wrote {RunLayout(args.run).analysis_dir}")
    return 0
