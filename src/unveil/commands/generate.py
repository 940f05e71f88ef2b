"""``unveil generate``: whole-volume generation from each subject's mask and clinical row."""

from __future__ import annotations

import argparse

from unveil.commands._options import add_sampling_options, seed_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate whole volumes (NIfTI in HU, source affine) from masks and clinical rows",
        description="Gaussian-blended sliding windows; for diffusion one noise volume per scan shared by all windows.",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--cohort", required=True)
    p.add_argument(
        "--out",
        required=True,
        help="folder for <id>.nii.gz (never a cohort's images/ or masks/ folder)",
    )
    p.add_argument("--ids", nargs="+", default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed, 0 or more (default 0)")
    p.add_argument(
        "--set", dest="edits", action="append", default=[], help="edit applied to every prompt"
    )
    add_sampling_options(p)
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing <id>.nii.gz files in --out"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run, lock_folder=lambda a: a.out)


def run(args: argparse.Namespace) -> int:
    from unveil.infer.counterfactual import generate_cohort

    written = generate_cohort(
        args.checkpoint,
        args.cohort,
        args.out,
        ids=args.ids,
        split=args.split,
        seed=args.seed,
        edits=args.edits,
        device=args.device,
        guidance_scale=args.guidance_scale,
        steps=args.steps,
        amp=args.amp,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(f"wrote {len(written)} volume(s) to {args.out}")
    return 0
