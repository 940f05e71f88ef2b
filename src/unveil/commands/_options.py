"""Command-line options shared by several commands."""

from __future__ import annotations

import argparse

from unveil.precision import AMP_CHOICES


def add_amp_option(p: argparse.ArgumentParser) -> None:
    """``--amp``: the precision of the generator's network at inference."""
    p.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        default="none",
        help="precision of the network: none (float32, default) or bf16 (about 2x faster on "
        "CPUs with AMX and on recent GPUs, a few HU of rounding per voxel)",
    )


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """``--guidance-scale``, ``--steps``, ``--device`` and ``--amp``: how a checkpoint samples.

    Shared by ``generate``, ``counterfactual`` and ``evaluate``; the values are checked by
    the library (:func:`unveil.infer.counterfactual.check_sampling_options`), so a script
    calling it directly gets the same refusals.
    """
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance, a finite number from 0 to 100 "
        "(default diffusion.guidance_scale)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="sampling steps, 1 or more (default diffusion.sample_steps)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    add_amp_option(p)


def seed_int(text: str) -> int:
    """argparse type of a random seed: an integer of 0 or more (numpy refuses negatives)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer seed") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give a seed of 0 or more")
    return value


def positive_float(text: str) -> float:
    """argparse type of a finite value above zero (a scale, a limit)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value
