"""``unveil evaluate``: fidelity, realism, mask consistency and condition adherence of a model."""

from __future__ import annotations

import argparse

from unveil.commands._options import add_sampling_options, seed_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a split: fidelity, realism, mask Dice, condition adherence",
        description=(
            "Generate every subject of the split from its own mask and clinical sentence, then "
            "measure paired fidelity against the real scan (MAE in HU, PSNR, SSIM, MS-SSIM where "
            "the volume is large enough; overall, inside and outside the lungs), weight-free "
            "realism (per-region HU Wasserstein distance and texture statistics), FID/KID on 2D "
            "slices and 3D volumes when a local feature network file is named, the Dice of "
            "unveil lungmask on the generated CT against the input mask, and condition adherence "
            "(small 3D readers trained on the real training split; with --edit, whether an edit "
            "moves the reading the right way).  Every figure has a 95% bootstrap interval over "
            "subjects.  Writes per_subject.csv, summary.json, summary.md and info.json."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="ckpt-*.pt or a training run folder")
    p.add_argument("--cohort", required=True)
    p.add_argument(
        "--split", default="test", help="train, val or test of the run's splits.json (default test)"
    )
    p.add_argument(
        "--ids", nargs="+", default=None, help="explicit subject ids (instead of --split)"
    )
    p.add_argument("--out", required=True, help="evaluation folder to write")
    p.add_argument(
        "--features-2d",
        default=None,
        metavar="FILE",
        help="TorchScript/.pt2 2D feature network (B,3,H,W) in [0,1] for FID/KID on slices",
    )
    p.add_argument(
        "--features-3d",
        default=None,
        metavar="FILE",
        help="TorchScript/.pt2 3D feature network (B,1,X,Y,Z) in [0,1] for FID/KID on volumes",
    )
    p.add_argument(
        "--fid-size-2d",
        type=int,
        default=None,
        help="resize slices to this size for the 2D network (e.g. 299 for Inception)",
    )
    p.add_argument(
        "--fid-size-3d",
        type=int,
        default=None,
        help="resize volumes to this size for the 3D network",
    )
    p.add_argument(
        "--edit",
        action="append",
        default=[],
        help="edit such as smoking=current for the effectiveness figures (repeatable)",
    )
    p.add_argument(
        "--attributes", nargs="+", default=None, help="template fields to read (default all)"
    )
    p.add_argument(
        "--no-adherence", action="store_true", help="skip the condition-adherence readers"
    )
    p.add_argument(
        "--seed", type=seed_int, default=0, help="noise seed of the generated volumes (default 0)"
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    add_sampling_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run, lock_folder=lambda a: a.out)


def run(args: argparse.Namespace) -> int:
    from unveil.metrics.evaluate import EvaluationRequest, fmt, run_evaluation

    request = EvaluationRequest.create(
        checkpoint=args.checkpoint,
        cohort=args.cohort,
        out=args.out,
        split=args.split,
        ids=args.ids,
        seed=args.seed,
        features_2d=args.features_2d,
        features_3d=args.features_3d,
        edits=args.edit,
        n_boot=args.n_boot,
        progress=not args.no_progress,
        device=args.device,
        guidance_scale=args.guidance_scale,
        steps=args.steps,
        amp=args.amp,
        attributes=args.attributes,
        adherence=not args.no_adherence,
        fid_size_2d=args.fid_size_2d,
        fid_size_3d=args.fid_size_3d,
        overwrite=args.overwrite,
    )
    summary = run_evaluation(request).summary
    for key in ("mae_hu_lung", "ssim", "psnr", "wasserstein_lung", "dice_lung", "fid_2d", "fid_3d"):
        f = summary.figure(key)
        if f is not None:
            print(
                f"{key}: {fmt(f.value)} [{fmt(f.ci_low)}, {fmt(f.ci_high)}] "
                f"({f.statistic}, n={f.n})"
            )
        elif summary.reason(key) is not None:
            print(f"{key}: not computed: {summary.reason(key)}")
    print(
        f"evaluation written to {args.out} (summary.md, summary.json, per_subject.csv, info.json)"
    )
    return 0
