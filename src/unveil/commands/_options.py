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
