"""``unveil lungmask``: lung and airway label maps from CT, for cohorts without masks.

    unveil lungmask CT --out MASK [--threshold -320] [--config CONFIG]
    unveil lungmask --cohort DIR [--threshold -320] [--config CONFIG]

The first form reads one CT (any format :func:`unveil.data.io.read_volume` reads), writes
its label map atomically on the same grid and affine, and prints the volume of each lung
(litres) and of the airway (ml).  The second fills ``DIR/masks/`` with a mask for every
image of ``DIR/images/`` that has none yet (existing masks are never overwritten).  Label
values come from ``data.labels`` of the config (default: right lung 1, left lung 2,
airway 3).  No lungs found: one sentence and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: the command module stays light to import
    from unveil.config import DataConfig
    from unveil.data.io import Volume

HELP = "derive lung and airway masks from CT (thresholds, components, morphology)"

# Formats a mask is written in: the image's own when it is a single file we can write,
# otherwise NIfTI (DICOM series folders, MHD/NHDR header-plus-data pairs).
_WRITABLE = (".nii.gz", ".nii", ".nrrd", ".mha")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lungmask",
        help=HELP,
        description=(
            "Label the two lungs and the airway of a chest CT by HU threshold, connected "
            "components and morphology (no network, no download), for one scan or for every "
            "image of a cohort that lacks a mask."
        ),
    )
    p.add_argument(
        "ct", nargs="?", default=None, help="CT volume (NIfTI, NRRD, MHA or a DICOM folder)"
    )
    p.add_argument(
        "--out", "-o", default=None, help="mask file to write (.nii.gz, .nii, .nrrd, .mha)"
    )
    p.add_argument(
        "--cohort",
        default=None,
        metavar="DIR",
        help="instead of CT: write DIR/masks/<id> for every DIR/images/<id> without a mask",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=-320.0,
        help="air threshold of the lungs in HU (default: -320)",
    )
    p.add_argument(
        "--config", default=None, help="config YAML whose data.labels gives the label values"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unveil.config import load_config
    from unveil.errors import UnveilError

    if (args.ct is None) == (args.cohort is None):
        raise UnveilError("give either a CT file with --out MASK, or --cohort DIR (not both).")
    data_cfg = load_config(args.config).data
    if args.cohort is not None:
        if args.out is not None:
            raise UnveilError("--out is for a single CT; with --cohort the masks go to DIR/masks/.")
        return _run_cohort(Path(args.cohort), data_cfg, args.threshold)
    if args.out is None:
        raise UnveilError(f"no output given for {args.ct}; add --out MASK.nii.gz.")
    return _run_one(Path(args.ct), Path(args.out), data_cfg, args.threshold)


def _run_one(ct_path: Path, out: Path, data_cfg: DataConfig, threshold: float) -> int:
    from unveil.data.io import read_volume, volume_suffix, write_volume
    from unveil.data.lungmask import lungmask
    from unveil.errors import UnveilError

    if volume_suffix(out) not in _WRITABLE:
        raise UnveilError(f"--out {out} is not a mask file name; use .nii.gz, .nii, .nrrd or .mha.")
    if out.exists() and ct_path.exists() and out.resolve() == ct_path.resolve():
        raise UnveilError(f"--out {out} is the CT itself; choose another file name.")
    ct = read_volume(ct_path)
    mask = lungmask(ct, data_cfg, threshold_hu=threshold)
    write_volume(mask, out)
    print(f"{out}: {_summary(mask, data_cfg)}")
    return 0


def _run_cohort(cohort: Path, data_cfg: DataConfig, threshold: float) -> int:
    from tqdm import tqdm

    from unveil.data.io import read_volume, volume_stem, volume_suffix, write_volume
    from unveil.data.lungmask import lungmask
    from unveil.errors import DataError, UnveilError

    images = cohort / "images"
    if not images.is_dir():
        raise DataError(
            f"{cohort} has no images/ folder; a cohort holds images/<id>.<ext> and masks/."
        )
    masks = cohort / "masks"
    have = (
        {volume_stem(p) for p in masks.iterdir() if not p.name.startswith(".")}
        if masks.is_dir()
        else set()
    )
    todo = [
        p
        for p in sorted(images.iterdir())
        if not p.name.startswith(".")
        and (volume_suffix(p) or p.is_dir())
        and volume_stem(p) not in have
    ]
    if not todo:
        print(f"{cohort}: every image already has a mask; nothing to do.")
        return 0
    failed: list[tuple[str, str]] = []
    for path in tqdm(todo, desc="lungmask", unit="scan", file=sys.stderr):
        sid = volume_stem(path)
        suffix = volume_suffix(path)
        out = masks / f"{sid}{suffix if suffix in _WRITABLE else '.nii.gz'}"
        try:
            mask = lungmask(read_volume(path), data_cfg, threshold_hu=threshold)
        except UnveilError as err:
            # One bad scan must not cost the masks of the others; all are listed at the end.
            failed.append((sid, str(err)))
            continue
        write_volume(mask, out)
        tqdm.write(f"{sid}: {_summary(mask, data_cfg)}", file=sys.stdout)
    done = len(todo) - len(failed)
    print(f"{cohort}: wrote {done} mask(s) to {masks}.")
    if failed:
        ids = ", ".join(sid for sid, _ in failed)
        raise DataError(
            f"no mask for {len(failed)} of {len(todo)} images ({ids}); the first reason: "
            f"{failed[0][1].rstrip('.')}."
        )
    return 0


def _summary(mask: Volume, data_cfg: DataConfig) -> str:
    """One line of volumes: lungs in litres, airway in millilitres."""
    from unveil.data.lungmask import lung_volume_litres

    vols = lung_volume_litres(mask.array, mask.affine, data_cfg.labels)
    lungs = list(dict.fromkeys(data_cfg.lung_labels))
    parts = [f"{name.replace('_', ' ')} {vols[name]:.2f} l" for name in lungs]
    if len(lungs) > 1:
        parts.append(f"total {sum(vols[n] for n in lungs):.2f} l")
    if data_cfg.airway_label:
        parts.append(
            f"{data_cfg.airway_label.replace('_', ' ')} {vols[data_cfg.airway_label] * 1000:.0f} ml"
        )
    return ", ".join(parts)
