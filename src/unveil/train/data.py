"""Training data: a cohort's training split, preprocessed once, plus the prompt sampler.

The preprocessed training volumes are held in memory unless ``data.memory_budget_gb`` is
set and they do not fit it; then they are written once to ``RUN/data-cache`` and read a
patch at a time through memory maps (:mod:`unveil.data.stream`), with the same values,
so the same patches are drawn and the run trains to the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unveil.config import Config
from unveil.data.cohort import Cohort, not_hu_sentence
from unveil.data.preprocess import Preprocessor
from unveil.data.splits import load_or_make_splits
from unveil.data.stream import StreamedPrepared, VolumeCache, entry_key
from unveil.errors import DataError
from unveil.text.dropout import draw_dropout

log = logging.getLogger(__name__)


@dataclass
class SubjectData:
    """One preprocessed subject (ids stay out of checkpoints and logs)."""

    id: str
    #: unveil.data.preprocess.Prepared in memory, or unveil.data.stream.StreamedPrepared
    #: (``image`` and ``mask`` read from disk a patch at a time).
    prepared: Any
    row: Mapping[str, Any]


@dataclass
class TrainingData:
    train: list[SubjectData]
    val: list[SubjectData]
    mask_channels: list[str]
    splits: dict[str, list[str]]
    #: training subjects read from the on-disk cache (0: all in memory)
    streamed: int = 0
    #: cache entries found and written by this call
    cache_hits: int = 0
    cache_writes: int = 0


#: Folder of the on-disk cache of preprocessed volumes inside the run folder.
DATA_CACHE = "data-cache"


def load_training_data(
    cfg: Config,
    cohort_root: str | Path,
    run_dir: Path,
    progress: bool = True,
    allow_non_hu: bool = False,
) -> TrainingData:
    """Open the cohort, make or reuse the split (``RUN/splits.json``), preprocess train and val.

    With ``data.memory_budget_gb`` null (the default) everything is held in memory after
    preprocessing: patches are cut from these tensors, so no file is read per step.  With
    a budget, training subjects are held in memory while their preprocessed size (image,
    mask and label map) stays within it; once it would not, every training subject is
    streamed instead (see the module docstring) and the memory goes back.  A subject
    already in the cache is always streamed from it, without being read or preprocessed
    again.  The validation subject stays in memory.

    An image whose value range is evidently not Hounsfield units (the test of ``unveil
    check``) raises :class:`DataError` unless ``allow_non_hu``: preprocessing clips to an
    HU window, so such an image would train on noise silently.  (A cached subject is
    judged by the range recorded when it was written.)
    """
    cohort = Cohort.open(cohort_root, cfg.data)
    splits = load_or_make_splits(
        split_file(cfg, cohort_root, run_dir), [s.id for s in cohort.subjects], cfg.split
    )
    if not splits.get("train"):
        raise DataError(
            f"the split has no training subjects; raise split.fractions[0] or add subjects to {cohort_root}."
        )
    prep = _Preparer(
        cfg, cohort, Preprocessor(cfg.preprocess, cfg.data), cohort.rows(), progress, allow_non_hu
    )
    if cfg.data.memory_budget_gb is None:
        train = prep.load(splits["train"], "preprocess train")
        val = prep.load(splits.get("val", [])[:1], "preprocess val")
        return TrainingData(train, val, prep.pre.mask_channels, splits)

    cache = VolumeCache(Path(run_dir) / DATA_CACHE)
    train = _load_within_budget(prep, splits["train"], cache)
    train = _small_ones_in_memory(train, cfg.preprocess.patch_size)
    val = prep.load(splits.get("val", [])[:1], "preprocess val")
    streamed = sum(isinstance(s.prepared, StreamedPrepared) for s in train)
    if streamed:
        log.info(
            "%d of %d training subjects are read from %s (%d found there, %d written)",
            streamed,
            len(train),
            cache.folder,
            cache.hits,
            cache.writes,
        )
    return TrainingData(
        train, val, prep.pre.mask_channels, splits, streamed, cache.hits, cache.writes
    )


@dataclass
class _Preparer:
    """Reads subjects of a cohort (refusing values that are not HU) and preprocesses them."""

    cfg: Config
    cohort: Cohort
    pre: Preprocessor
    rows: Mapping[str, Mapping[str, Any]]
    progress: bool
    allow_non_hu: bool

    def bar(self, ids: list[str], desc: str) -> Iterable[str]:
        """``ids`` behind a progress bar (shown for 4 subjects or more)."""
        return tqdm(ids, desc=desc, disable=not self.progress or len(ids) < 4, leave=False)

    def read(self, sid: str) -> tuple[Any, Any]:
        """The image and mask volumes of ``sid``, HU-checked unless ``allow_non_hu``."""
        image, mask = self.cohort.load(sid)
        if not self.allow_non_hu:
            _refuse_non_hu(self.cohort[sid].image, image.array)
        return image, mask

    def load(self, ids: list[str], desc: str) -> list[SubjectData]:
        """The subjects ``ids``, preprocessed and held in memory."""
        out = []
        for sid in self.bar(ids, desc):
            image, mask = self.read(sid)
            out.append(SubjectData(sid, self.pre.prepare(image, mask), self.rows[sid]))
        return out

    def prepare_with_range(self, sid: str) -> tuple[Any, list[float] | None]:
        """``sid`` preprocessed, and the value range of its source image (None when empty),
        recorded with a cache entry so a later run can HU-check it without reading it."""
        image, mask = self.read(sid)
        a = image.array
        source_range = None if a.size == 0 else [float(a.min()), float(a.max())]
        return self.pre.prepare(image, mask), source_range


def _load_within_budget(prep: _Preparer, ids: list[str], cache: VolumeCache) -> list[SubjectData]:
    """The training subjects under ``data.memory_budget_gb``: held in memory while their
    preprocessed size fits it, else every one written to ``cache`` and streamed from it.
    A subject already in the cache is streamed from it without being read again."""
    cfg = prep.cfg
    budget = float(cfg.data.memory_budget_gb) * 2**30
    held = 0  # bytes of the subjects kept in memory
    streaming = False
    ranges: dict[str, list[float] | None] = {}  # source HU range, recorded with an entry
    train: list[SubjectData] = []
    for sid in prep.bar(ids, "preprocess train"):
        found = _from_cache(prep, cache, sid)
        if found is not None:
            train.append(found)
            continue
        prepared, ranges[sid] = prep.prepare_with_range(sid)
        size = _nbytes(prepared)
        if not streaming and held + size > budget:
            streaming = True
            log.info(
                "the preprocessed training volumes exceed data.memory_budget_gb=%g: they are "
                "written to %s and read a patch at a time",
                cfg.data.memory_budget_gb,
                cache.folder,
            )
            # Spill what was held so far: nothing stays in memory once streaming.
            train = [
                s
                if isinstance(s.prepared, StreamedPrepared)
                else _put(prep, cache, s.id, s.prepared, ranges[s.id])
                for s in train
            ]
            held = 0
        if streaming:
            train.append(_put(prep, cache, sid, prepared, ranges[sid]))
        else:
            held += size
            train.append(SubjectData(sid, prepared, prep.rows[sid]))
    return train


def _from_cache(prep: _Preparer, cache: VolumeCache, sid: str) -> SubjectData | None:
    """``sid`` streamed from its cache entry (HU-checked by its recorded range), or None."""
    subject = prep.cohort[sid]
    found = cache.get(entry_key(prep.cfg, subject.image, subject.mask))
    if found is None:
        return None
    entry, record = found
    if not prep.allow_non_hu and record.get("source_range"):
        _refuse_non_hu_range(subject.image, *record["source_range"])
    return SubjectData(sid, entry, prep.rows[sid])


def _put(
    prep: _Preparer,
    cache: VolumeCache,
    sid: str,
    prepared: Any,
    source_range: list[float] | None,
) -> SubjectData:
    """Write ``sid``'s preprocessed volumes to the cache; the subject streamed from there."""
    subject = prep.cohort[sid]
    key = entry_key(prep.cfg, subject.image, subject.mask)
    entry = cache.put(key, prepared.image, prepared.mask, source_range=source_range)
    return SubjectData(sid, entry, prep.rows[sid])


def _small_ones_in_memory(train: list[SubjectData], patch: Any) -> list[SubjectData]:
    """PatchSampler pads a volume smaller than a patch along an axis, which needs it in
    memory: such (rare) streamed subjects are read back whole."""
    return [
        SubjectData(s.id, s.prepared.in_memory(), s.row)
        if isinstance(s.prepared, StreamedPrepared)
        and any(d < q for d, q in zip(s.prepared.shape, patch, strict=True))
        else s
        for s in train
    ]


def _nbytes(prepared: Any) -> int:
    """Bytes a preprocessed subject holds in memory (image, mask, label map)."""
    return sum(
        int(t.numel()) * t.element_size()
        for t in (prepared.image, prepared.mask, prepared.label_map)
        if t is not None
    )


def _refuse_non_hu_range(path: Path, low: float, high: float) -> None:
    """:func:`_refuse_non_hu` for a cached subject, from the range recorded with it."""
    _refuse_non_hu(path, np.asarray([low, high], dtype=np.float64))


def _refuse_non_hu(path: Path, array: np.ndarray) -> None:
    """Raise :class:`DataError` when ``array`` (finite: :meth:`Cohort.load` checked it) does
    not look like HU, with the sentence ``unveil check`` warns with plus the way out."""
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
        texts, null = [], []
        for i in indices:
            dropped, is_null = draw_dropout(self.template, self.field_p, self.prompt_p, rng)
            texts.append(
                self.template.render(self.rows[i], drop=dropped) if dropped else self.full[i]
            )
            null.append(is_null)
        return texts, torch.tensor(null, dtype=torch.bool)
