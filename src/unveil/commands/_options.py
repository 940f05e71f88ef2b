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
