"""``unveil counterfactual``: factual / edited / noise-floor volumes sharing mask and noise."""

from __future__ import annotations

import argparse

from unveil.commands._options import add_sampling_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "counterfactual",
        help="generate counterfactual pairs (same mask, same noise, one field edited)",
        description=(
            "For each subject and seed, generate the factual volume and one volume per edit from the "
            "same mask and the same noise, plus a noise-floor volume (same prompt, another seed). "
            "Several processes: torchrun --nproc-per-node N -m unveil counterfactual ..."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="ckpt-*.pt or a training run folder")
    p.add_argument("--cohort", required=True)
    p.add_argument(
        "--out",
        required=True,
        help="run folder to write (an interrupted run with the same parameters is resumed; "
        "never a cohort's images/ or masks/ folder)",
    )
    p.add_argument(
        "--edit",
        action="append",
        default=[],
        help="edit such as smoking=current or age+=10 (repeatable)",
    )
    p.add_argument(
        "--null-edit",
        action="append",
        default=[],
        help="negative-control edit of an attribute with no expected effect",
    )
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="set a field on the factual side for every subject, e.g. smoking=never (repeatable)",
    )
    p.add_argument(
        "--permuted-controls",
        type=int,
        default=2,
        help="permuted-label negative controls per --null-edit field (default 2; 0 for none)",
    )
    p.add_argument("--seeds", type=int, default=3, help="noise seeds per subject (default 3)")
    p.add_argument("--ids", nargs="+", default=None, help="subject ids (default all, or --split)")
    p.add_argument(
        "--split", default=None, help="train, val or test of the training run's splits.json"
    )
    p.add_argument(
        "--from-scan", action="store_true", help="diffusion: invert each real scan and edit it"
    )
    add_sampling_options(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in a folder holding a complete or interrupted run",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run, lock_folder=lambda a: a.out)


def run(args: argparse.Namespace) -> int:
    from unveil.infer.counterfactual import run_counterfactual

    out = run_counterfactual(
        args.checkpoint,
        args.cohort,
        args.out,
        edits=args.edit,
        null_edits=args.null_edit,
        baseline=args.baseline,
        seeds=args.seeds,
        n_permuted=args.permuted_controls,
        ids=args.ids,
        split=args.split,
        from_scan=args.from_scan,
        guidance_scale=args.guidance_scale,
        steps=args.steps,
        amp=args.amp,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"counterfactual run written to {out}; next: unveil analyze {out}")
    return 0
