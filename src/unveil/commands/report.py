"""``unveil report RUN``: one self-contained HTML page of an analysed counterfactual run.

    unveil report RUN [--out FILE] [--subjects 2]

Reads ``RUN/analysis/`` (written by ``unveil analyze RUN``) and the run's volumes, writes
``RUN/report.html`` (or ``--out``) atomically, and prints its path and the verdict lines.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write one self-contained HTML page of an analysed counterfactual run",
        description=(
            "Write RUN/report.html: the verdict, the noise floor and the calibration on the "
            "negative controls, per-region bar charts and tables of tests against zero, the "
            "spill of each effect, the counterfactual beside the raw and the adjusted "
            "association in the real cohort, planted against recovered effects, and factual "
            "/ counterfactual / difference slices with an animated GIF. The page opens with "
            "no network. Run `unveil analyze RUN` first."
        ),
    )
    p.add_argument("run", help="counterfactual run folder, analysed by `unveil analyze`")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN/report.html)")
    p.add_argument(
        "--subjects",
        type=int,
        default=2,
        help="show slice panels and GIFs for this many subjects per edit (default 2)",
    )
    p.set_defaults(func=run, lock_folder=lambda a: a.run)


def run(args: argparse.Namespace) -> int:
    from unveil.analysis.report import load_results, verdict_lines, write_report

    path = write_report(args.run, out_path=args.out, subjects_shown=args.subjects)
    print(f"report: {path}")
    for line in verdict_lines(load_results(args.run)):
        print(f"  {line}")
    return 0
