"""Training data: a cohort's training split, preprocessed once, plus the prompt sampler."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unveil.config import Config
from unveil.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class SubjectData:
    """One preprocessed subject held in memory (ids stay out of checkpoints and logs)."""

    id: str
    prepared: Any  # unveil.data.preprocess.Prepared
    row: Mapping[str, Any]


@dataclass
class TrainingData:
    train: list[SubjectData]
    val: list[SubjectData]
    mask_channels: list[str]
    splits: dict[str, list[str]]


def load_training_data(
    cfg: Config,
    cohort_root: str | Path,
    run_dir: Path,
    progress: bool = True,
    allow_non_hu: bool = False,
) -> TrainingData:
    """Open the cohort, make or reuse the split (``RUN/splits.json``), preprocess train and val.

    Everything is held in memory after preprocessing: patches are cut from these tensors,
    so no file is read per step.  An image whose value range is evidently not Hounsfield
    units (the test of ``unveil check``) raises :class:`DataError` unless ``allow_non_hu``:
    preprocessing clips to an HU window, so such an image would train on noise silently.
    """
    from tqdm.auto import tqdm

    from unveil.data.cohort import Cohort
    from unveil.data.preprocess import Preprocessor
    from unveil.data.splits import load_or_make_splits

    cohort = Cohort.open(cohort_root, cfg.data)
    splits = load_or_make_splits(
        split_file(cfg, cohort_root, run_dir), [s.id for s in cohort.subjects], cfg.split
    )
    if not splits.get("train"):
        raise DataError(
            f"the split has no training subjects; raise split.fractions[0] or add subjects to {cohort_root}."
        )
    pre = Preprocessor(cfg.preprocess, cfg.data)
    rows = cohort.rows()

    def load(which: list[str], desc: str) -> list[SubjectData]:
        out = []
        for sid in tqdm(which, desc=desc, disable=not progress or len(which) < 4, leave=False):
            image, mask = cohort.load(sid)
            if not allow_non_hu:
                _refuse_non_hu(cohort[sid].image, image.array)
            out.append(SubjectData(sid, pre.prepare(image, mask), rows[sid]))
        return out

    train = load(splits["train"], "preprocess train")
    val = load(splits.get("val", [])[:1], "preprocess val")
    return TrainingData(train, val, pre.mask_channels, splits)


def _refuse_non_hu(path: Path, array: np.ndarray) -> None:
    """Raise :class:`DataError` when ``array`` (finite: :meth:`Cohort.load` checked it) does
    not look like HU, with the sentence ``unveil check`` warns with plus the way out."""
    from unveil.data.cohort import not_hu_sentence

    if array.size == 0:
        return
    msg = not_hu_sentence(path, float(array.min()), float(array.max()))
    if msg:
        raise DataError(
            f"{msg.rstrip('.')}, or pass --allow-non-hu to `unveil train` to use the values as "
            "they are."
        )


def split_file(cfg: Config, cohort_root: str | Path, run_dir: Path) -> Path:
    """``COHORT/splits.json`` when the user keeps one with the cohort, else ``RUN/splits.json``."""
    in_cohort = Path(cohort_root) / cfg.split.file
    return in_cohort if in_cohort.is_file() else Path(run_dir) / cfg.split.file


def ensure_splits(cfg: Config, cohort_root: str | Path, run_dir: Path) -> dict[str, list[str]]:
    """Make (or check) the split file; called by rank 0 alone before the others read it."""
    from unveil.data.cohort import Cohort
    from unveil.data.splits import load_or_make_splits

    cohort = Cohort.open(cohort_root, cfg.data)
    return load_or_make_splits(
        split_file(cfg, cohort_root, run_dir), [s.id for s in cohort.subjects], cfg.split
    )


class PromptSampler:
    """Prompts for a batch of subject indices, with field and prompt dropout.

    Randomness comes from the injected ``numpy.random.Generator`` so that resuming restores
    the same dropout draws.  A dropped prompt keeps its real text for the cache lookup and
    is flagged ``null`` so the model uses its learned null condition.
    """

    def __init__(
        self, template, rows: list[Mapping[str, Any]], field_p: float, prompt_p: float
    ) -> None:
        self.template = template
        self.rows = rows
        self.field_p = field_p
        self.prompt_p = prompt_p
        self.full = [template.render(r) for r in rows]

    def draw(self, indices: list[int], rng: np.random.Generator) -> tuple[list[str], torch.Tensor]:
        from unveil.text.dropout import draw_dropout

        texts, null = [], []
        for i in indices:
            dropped, is_null = draw_dropout(self.template, self.field_p, self.prompt_p, rng)
            texts.append(
                self.template.render(self.rows[i], drop=dropped) if dropped else self.full[i]
            )
            null.append(is_null)
        return texts, torch.tensor(null, dtype=torch.bool)
