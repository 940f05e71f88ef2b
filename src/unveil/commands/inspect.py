"""``unveil inspect``: how a checkpoint was made."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="print how a checkpoint was made",
        description="Print a checkpoint's step, versions, model, text setup, parameter counts and full config.",
    )
    p.add_argument("checkpoint", help="a ckpt-*.pt file or a run folder (newest checkpoint)")
    p.add_argument("--config-only", action="store_true", help="print only the config as YAML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unveil.model import load_model
    from unveil.nn.build import count_parameters
    from unveil.runtime.checkpoint import load_checkpoint

    lm = load_model(args.checkpoint)
    if args.config_only:
        print(lm.cfg.to_yaml(), end="")
        return 0
    ck = load_checkpoint(lm.path)
    c = lm.cfg
    lines = [
        f"checkpoint   {lm.path}",
        f"step         {lm.step} (run planned for {c.train.steps})",
        "made with    " + ", ".join(f"{k} {v}" for k, v in lm.versions.items()),
        f"family       {c.model.family} ({lm.family.describe(c)})",
        f"fusion       {c.model.fusion} at {', '.join(c.model.fusion_levels)}; channels {list(c.model.channels)}",
        f"mask         {', '.join(lm.meta.mask_channels)}",
        f"text         template {c.text.template} ({lm.meta.template_identity}), encoder {lm.meta.encoder_name} ({lm.meta.encoder_width}-d)",
        f"preprocess   orientation {c.preprocess.orientation}, spacing {c.preprocess.spacing or 'native'}, HU window {list(c.preprocess.hu_window)}, patch {list(c.preprocess.patch_size)}",
        f"parameters   generator {count_parameters(lm.generator):,}",
        f"contents     {', '.join(k for k in ck if k not in ('format', 'format_version'))}",
    ]
    if "discriminator" in ck["models"]:
        n = sum(v.numel() for v in ck["models"]["discriminator"].values() if hasattr(v, "numel"))
        lines.append(f"             discriminator {n:,} (state tensors)")
    print("\n".join(lines))
    return 0
