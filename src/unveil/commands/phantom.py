"""``unveil phantom``: write a synthetic chest-CT cohort with planted, known effects."""

from __future__ import annotations

import argparse

from unveil.commands._options import seed_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "phantom",
        help="write a synthetic chest-CT cohort with planted effects (ground truth in effects.json)",
        description=(
            "Write a synthetic chest-CT cohort (images/, masks/, clinical.csv, truth.csv, "
            "effects.json) in HU, with spatially localised effects of smoking, pack-years, age "
            "and diagnosis planted exactly, and blood_group as an attribute with no effect. "
            "The same seed gives byte-identical files."
        ),
    )
    p.add_argument("--out", required=True, help="output cohort folder (must not exist or be empty)")
    p.add_argument("--n", type=int, default=64, help="number of subjects (at least 4; default 64)")
    p.add_argument(
        "--size",
        type=int,
        default=64,
        help="grid size per axis, >= 16 and divisible by 8 (default 64)",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=run, lock_folder=lambda a: a.out)


def run(args: argparse.Namespace) -> int:
    from unveil.data.phantom import FOV_MM, default_effects, make_phantom

    out = make_phantom(
        args.out, n=args.n, size=args.size, seed=args.seed, overwrite=args.overwrite, progress=True
    )
    print(
        f"wrote {args.n} phantom subjects ({args.size}^3 voxels of {FOV_MM / args.size:.2f} mm, "
        f"seed {args.seed}) to {out}: images/, masks/, clinical.csv, truth.csv, effects.json"
    )
    print("planted effects:")
    for e in default_effects():
        print(f"  {e.describe()}")
    print("  blood_group: none (negative control); sex: none")
    return 0
