"""``unveil compare``: one table across model variants from their ``unveil evaluate`` folders."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare evaluations of several models in one table (Markdown, CSV, plot)",
        description=(
            "Read the folders written by unveil evaluate and write comparison.md, comparison.csv "
            "and comparison.png: one row per model variant (GAN before diffusion, mask-only first "
            "as the reference, then concat, affine, cross-attention), the key figures with their "
            "95% intervals, ratios against mask-only, and planted-vs-recovered columns for "
            "folders that hold a recovery.csv."
        ),
    )
    p.add_argument("evals", nargs="+", metavar="EVAL", help="folders written by unveil evaluate")
    p.add_argument("--out", required=True, help="folder for comparison.md/.csv/.png")
    p.set_defaults(func=run, lock_folder=lambda a: a.out)


def run(args: argparse.Namespace) -> int:
    from unveil.metrics.compare import compare

    _, rows = compare(args.evals, args.out)
    print(f"compared {len(rows)} model(s): {', '.join(str(r['model']) for r in rows)}")
    print(f"wrote {args.out}/comparison.md, comparison.csv and comparison.png")
    return 0
