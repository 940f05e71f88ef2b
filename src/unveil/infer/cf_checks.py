"""Checks of a generation's inputs and outputs, made before anything is loaded or written.

The sampling options (guidance scale, steps), the output folder (never a cohort's
``images/`` or ``masks/``), the text encoder and template against the checkpoint's, the
subjects to generate, and every generated volume (no NaN/inf).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from unveil.data.cohort import IMAGES_DIR, MASKS_DIR
from unveil.data.splits import read_splits
from unveil.data.table import TABLE_NAMES
from unveil.errors import UnveilError

#: Largest accepted classifier-free guidance scale.  Useful scales are about 1 to 15 (the
#: config default is 1); far above that the guided prediction is dominated by the amplified
#: conditional-minus-unconditional difference, samples saturate at the HU window and, at
#: ~1e30, overflow to inf/NaN.  0 (unconditional) is the lower bound, as in the config.
MAX_GUIDANCE_SCALE = 100.0
#: What a non-finite generated volume most likely means (part of the error sentence).
NONFINITE_CAUSE = "a diverged checkpoint or a non-finite/huge --guidance-scale"


def check_sampling_options(guidance_scale: float | None, steps: int | None) -> None:
    """Refuse a guidance scale or step count that cannot give a usable volume.

    Called before the model is loaded and before anything is written.  ``None`` means the
    checkpoint's own ``diffusion.guidance_scale`` / ``diffusion.sample_steps``.
    """
    if guidance_scale is not None:
        g = float(guidance_scale)
        if not math.isfinite(g) or not 0.0 <= g <= MAX_GUIDANCE_SCALE:
            raise UnveilError(
                f"--guidance-scale {guidance_scale} is not a finite number between 0 and "
                f"{MAX_GUIDANCE_SCALE:g}; give a value such as 3, or omit it to use the "
                "checkpoint's diffusion.guidance_scale."
            )
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise UnveilError(
            f"--steps {steps} is not a whole number of at least 1; give the number of sampling "
            "steps, e.g. 50, or omit it to use the checkpoint's diffusion.sample_steps."
        )


def check_finite(volume, subject: str, seed: int, what: str | None = None) -> None:
    """Refuse a generated volume holding NaN or inf (it is then not written)."""
    array = np.asarray(volume.array)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        kind = f" ({what})" if what else ""
        raise UnveilError(
            f"the generated volume of subject {subject}, seed {seed}{kind} holds {bad} "
            f"non-finite value(s) (NaN or inf) and was not written; the likely cause is "
            f"{NONFINITE_CAUSE}, so use an earlier checkpoint or a smaller --guidance-scale."
        )


def refuse_cohort_folders(out: str | Path, cohort_root: str | Path) -> None:
    """Refuse an output folder that is, or lies in, a cohort's ``images/`` or ``masks/``.

    Checked against the given cohort, and against any ``images``/``masks`` folder that sits
    next to a clinical table (another cohort).  Not even ``--overwrite`` allows it: those
    folders hold the real scans and masks.
    """
    target = Path(os.path.abspath(Path(out).expanduser())).resolve()
    root = Path(os.path.abspath(Path(cohort_root).expanduser())).resolve()
    hit: tuple[Path, Path] | None = None
    for name in (IMAGES_DIR, MASKS_DIR):
        folder = root / name
        if target == folder or folder in target.parents:
            hit = (folder, root)
            break
    if hit is None:
        for folder in (target, *target.parents):
            if folder.name in (IMAGES_DIR, MASKS_DIR) and any(
                (folder.parent / t).is_file() for t in TABLE_NAMES
            ):
                hit = (folder, folder.parent)
                break
    if hit is not None:
        folder, cohort = hit
        raise UnveilError(
            f"--out {out} lies in {folder}, the {folder.name}/ folder of the cohort at {cohort}, "
            "where generated volumes would replace real data (refused even with --overwrite); "
            "choose a folder outside the cohort's images/ and masks/."
        )


def check_text_setup(lm, encoder, template=None) -> None:
    """Refuse an encoder or template other than the one the checkpoint was trained with."""
    if encoder.identity != lm.meta.encoder_identity:
        raise UnveilError(
            f"checkpoint {lm.path} was trained with text encoder {lm.meta.encoder_name} "
            f"({lm.meta.encoder_identity[:24]}...) but this installation builds a different one "
            f"({encoder.identity[:24]}...); use the same encoder weights or retrain."
        )
    if template is not None and template.identity() != lm.meta.template_identity:
        raise UnveilError(
            f"template {template.name} differs from the one checkpoint {lm.path} was trained with; "
            "omit --template (the checkpoint's own is used) or retrain with this template."
        )


def subject_ids(cohort, ids: list[str] | None, split: str | None, checkpoint: Path) -> list[str]:
    """The subjects to generate: explicit ids, a split of the training run, or all."""
    available = [s.id for s in cohort.subjects]
    if ids:
        unknown = [i for i in ids if i not in available]
        if unknown:
            raise UnveilError(
                f"subject(s) {', '.join(unknown[:5])} are not complete subjects of {cohort.root}; "
                f"run `unveil check {cohort.root}`."
            )
        return list(ids)
    if split:
        run_dir = (
            checkpoint.parent.parent
            if checkpoint.parent.name == "checkpoints"
            else checkpoint.parent
        )
        path = Path(cohort.root) / "splits.json"
        if not path.is_file():
            path = run_dir / "splits.json"
        if not path.is_file():
            raise UnveilError(
                f"--split {split} needs the training run's splits.json next to {checkpoint}; pass --ids instead."
            )
        splits, _ = read_splits(path)
        if split not in splits:
            raise UnveilError(f"--split must be one of {', '.join(splits)}, not {split}.")
        return [i for i in splits[split] if i in available]
    return available
