"""``unveil check COHORT``: is this cohort usable, and if not, what to fix.

Prints one row per subject (id, shape, spacing, orientation, HU range, labels present,
table row present), then every problem as ``error: ...`` or ``warning: ...`` (one sentence
naming the file and the fix), then a summary.  Exit status 0 when the cohort is usable
(warnings allowed), 2 when it is not.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check",
        help="check a cohort folder (images/, masks/, clinical table) before training",
        description=(
            "Read every image and mask of a cohort once and report, per subject, shape, "
            "spacing, orientation, HU range, labels and table row, then every problem with "
            "the file and the fix. Exit status 0 when usable, 2 when not."
        ),
    )
    p.add_argument("cohort", metavar="COHORT", help="folder with images/, masks/ and clinical.csv")
    p.add_argument(
        "--id-column", metavar="ID", help="id column of the clinical table (data.id_column)"
    )
    p.add_argument("--config", metavar="C.yaml", help="config file (its data section is used)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides such as data.table=patients.xlsx",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unveil.config import load_config
    from unveil.data.cohort import check_cohort

    cfg = load_config(args.config, args.overrides)
    if args.id_column:
        # Assigned, not passed as an override, so an id column named "1" stays a string.
        cfg.data.id_column = args.id_column
    report = check_cohort(args.cohort, cfg, progress=True)
    print_report(report, sys.stdout)
    return 0 if report.usable else 2


def print_report(report, out: TextIO) -> None:
    """Write the subject table, the problems and a summary line of a ``CheckReport``."""
    header = ("id", "shape", "spacing mm", "orient", "HU min..max", "labels", "table")
    lines = [header]
    for r in report.rows:
        lines.append(
            (
                r.id,
                "x".join(str(s) for s in r.shape) if r.shape else "-",
                "x".join(f"{s:.2f}" for s in r.spacing) if r.spacing else "-",
                r.orientation or "-",
                f"{r.hu_min:.0f}..{r.hu_max:.0f}" if r.hu_min is not None else "-",
                ",".join(str(v) for v in r.labels) if r.labels is not None else "-",
                {0: "no", 1: "yes"}.get(r.table_rows, f"{r.table_rows} rows"),
            )
        )
    print(f"cohort {report.root}  (table: {report.table or 'none'})", file=out)
    if report.rows:
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        for row in lines:
            print(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out
            )
    if report.problems:
        print(file=out)
        # Errors first: they decide the exit status and are what to fix.
        for problem in sorted(report.problems, key=lambda q: q.level != "error"):
            print(str(problem), file=out)
    n_err, n_warn = len(report.errors), len(report.warnings)
    verdict = "usable" if report.usable else "NOT usable"
    print(
        f"\n{len(report.rows)} subject(s), {len(report.complete)} complete; "
        f"{n_err} error(s), {n_warn} warning(s): {verdict}.",
        file=out,
    )
