"""``unveil plant``: a semi-synthetic cohort from real scans with planted, known effects."""

from __future__ import annotations

import argparse

from unveil.commands._options import seed_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plant",
        help="build pseudo-patients from real CTs with effects planted in mask regions",
        description=(
            "Build a semi-synthetic cohort: each pseudo-patient is a randomly cropped, "
            "mirrored and slightly deformed copy of a real scan with its mask, with "
            "attributes drawn from SPEC and the SPEC's effects planted exactly inside lung "
            "regions; ground truth goes to effects.json and truth.csv. See docs/plant.md."
        ),
    )
    p.add_argument("--cohort", required=True, help="source cohort with images/ and masks/")
    p.add_argument("--spec", required=True, help="YAML spec of attributes and effects")
    p.add_argument("--out", required=True, help="output cohort folder (must not exist or be empty)")
    p.add_argument("--n", type=int, default=32, help="number of pseudo-patients (default 32)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--spacing",
        type=float,
        nargs="+",
        metavar="MM",
        help="resample sources to this voxel spacing first (one or three values, mm)",
    )
    p.add_argument(
        "--crop",
        type=int,
        nargs="+",
        metavar="VOXELS",
        help="crop size in voxels (one or three values) instead of random 80-95%% crops",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=run, lock_folder=lambda a: a.out)


def run(args: argparse.Namespace) -> int:
    from unveil.data.effects import load_spec
    from unveil.data.plant import plant_cohort

    spec = load_spec(args.spec)
    out = plant_cohort(
        args.cohort,
        spec,
        args.out,
        n=args.n,
        seed=args.seed,
        crop=args.crop,
        spacing=args.spacing,
        overwrite=args.overwrite,
        progress=True,
    )
    print(
        f"wrote {args.n} pseudo-patients from {args.cohort} to {out}: images/, masks/, "
        "clinical.csv, truth.csv, provenance.csv, effects.json"
    )
    print("planted effects:")
    for e in spec.effects:
        print(f"  {e.describe()}")
    nulls = spec.null_attributes
    print(f"  null attributes (no effect): {', '.join(nulls) if nulls else 'none'}")
    return 0
