"""``unveil train``: train a conditional generator on a cohort."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a GAN or diffusion model on a cohort",
        description=(
            "Train the model of a config on a cohort. Checkpoints (config, versions, step, "
            "models, optimisers, EMA, RNG states) go to OUT/checkpoints every "
            "train.ckpt_every steps; validation samples to OUT/samples as NIfTI in HU; "
            "TensorBoard logs to OUT/tensorboard. Several processes: "
            "torchrun --nproc-per-node N -m unveil train ..."
        ),
    )
    p.add_argument(
        "--config",
        required=True,
        help="YAML config file, or the name of a shipped one (e.g. diffusion-affine)",
    )
    p.add_argument("--cohort", required=True, help="cohort folder (images/, masks/, clinical.csv)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--steps", type=int, default=None, help="total training steps (default train.steps)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in OUT"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--allow-non-hu",
        action="store_true",
        help="train on images whose values do not look like Hounsfield units (8-bit display "
        "values, stored values without the rescale intercept, ...), which are refused otherwise",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.batch_size=4",
    )
    p.set_defaults(func=run, lock_folder=lambda a: a.out)


def run(args: argparse.Namespace) -> int:
    from unveil.config import load_config, resolve_config_path
    from unveil.train.loop import train

    cfg = load_config(resolve_config_path(args.config), args.overrides)
    last = train(
        cfg,
        args.cohort,
        args.out,
        steps=args.steps,
        resume=args.resume,
        progress=not args.no_progress,
        allow_non_hu=args.allow_non_hu,
    )
    print(f"last checkpoint: {last}")
    return 0
