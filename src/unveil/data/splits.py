"""Deterministic patient-level train / val / test splits, saved once and reused.

The split is made per subject id (a patient never appears in two splits), from the sorted
ids shuffled by ``numpy.random.default_rng(seed)``, so the same cohort and seed always give
the same split on any machine.  It is written to ``splits.json`` with the seed and
fractions that made it; later runs read the file instead of splitting again, and refuse a
file that does not match the cohort rather than silently re-splitting (which would leak
test subjects into training).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unveil.errors import DataError
from unveil.fs import write_json

if TYPE_CHECKING:
    from unveil.config import SplitConfig

#: The split names, in the order of ``split.fractions``.
SPLIT_NAMES = ("train", "val", "test")

_log = logging.getLogger(__name__)


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """How many of ``n`` subjects go to each split.

    Largest-remainder rounding (the counts sum to ``n``); then, when ``n`` allows, every
    split with a non-zero fraction gets at least one subject, taken from the largest split.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    raw = fr * n
    counts = np.floor(raw).astype(int)
    # Ties go to the earlier split (stable sort), so train wins over val over test.
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    wanted = fr > 0
    if n >= int(wanted.sum()):
        for i in np.flatnonzero(wanted & (counts == 0)):
            donor = int(np.argmax(counts))
            counts[donor] -= 1
            counts[i] += 1
    return [int(c) for c in counts]


def make_splits(ids: Iterable[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Split subject ids into ``train`` / ``val`` / ``test``.

    Args:
        ids: unique subject ids (any order: they are sorted first).
        fractions: three non-negative fractions summing to 1.
        seed: seed of the shuffle.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each list sorted; every id is in
        exactly one list.

    Raises:
        DataError: an id appears twice.
    """
    ids = [str(i) for i in ids]
    dupes = sorted(i for i, c in Counter(ids).items() if c > 1)
    if dupes:
        raise DataError(
            f"subject ids {', '.join(dupes[:5])} appear more than once in the cohort; give "
            "every subject a unique id."
        )
    if len(fractions) != len(SPLIT_NAMES):
        raise ValueError(f"fractions must have {len(SPLIT_NAMES)} entries, got {len(fractions)}")
    order = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(order))
    shuffled = [order[i] for i in perm]
    counts = split_counts(len(order), fractions)
    out: dict[str, list[str]] = {}
    start = 0
    for name, c in zip(SPLIT_NAMES, counts, strict=True):
        out[name] = sorted(shuffled[start : start + c])
        start += c
    return out


def load_or_make_splits(
    path: str | os.PathLike, ids: Iterable[str], split_cfg: SplitConfig
) -> dict[str, list[str]]:
    """Read the split saved at ``path``, or make it and save it there.

    Args:
        path: the ``splits.json`` file, or a folder (then ``split_cfg.file`` inside it).
        ids: subject ids of the cohort.
        split_cfg: ``split`` section (fractions, seed, file).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.

    Raises:
        DataError: the saved file is unreadable, malformed, or lists a different set of ids
            than the cohort (it is never re-split silently).
    """
    path = Path(path)
    if path.is_dir():
        path = path / split_cfg.file
    ids = [str(i) for i in ids]
    if not path.exists():
        splits = make_splits(ids, split_cfg.fractions, split_cfg.seed)
        write_json(
            path,
            {
                "seed": split_cfg.seed,
                "fractions": list(split_cfg.fractions),
                "n_subjects": len(ids),
                "splits": splits,
            },
        )
        return splits

    splits, saved = read_splits(path)
    cohort = set(ids)
    listed = {i for names in splits.values() for i in names}
    extra, missing = sorted(listed - cohort), sorted(cohort - listed)
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"{len(extra)} ids not in the cohort ({_some(extra)})")
        if missing:
            parts.append(f"misses {len(missing)} cohort ids ({_some(missing)})")
        raise DataError(
            f"split file {path} lists {' and '.join(parts)}; delete it to make a new split "
            "(the old test subjects may then land in training) or use the cohort it was made for."
        )
    if saved.get("seed") != split_cfg.seed or _floats(saved.get("fractions")) != _floats(
        split_cfg.fractions
    ):
        # The file is the record of which subject is held out: it wins over the config.
        _log.warning(
            "using the split saved in %s (seed %s, fractions %s), not split.seed=%s / "
            "split.fractions=%s from the config; delete the file to re-split.",
            path,
            saved.get("seed"),
            saved.get("fractions"),
            split_cfg.seed,
            list(split_cfg.fractions),
        )
    return splits


def read_splits(path: Path) -> tuple[dict[str, list[str]], dict]:
    """Read and check a saved ``splits.json``: the split lists and the whole record.

    Raises:
        DataError: unreadable, not JSON, lists missing or an id in two splits.
    """
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(
            f"split file {path} is unreadable or not valid JSON; delete it to make a new split."
        ) from None
    splits = saved.get("splits") if isinstance(saved, dict) else None
    ok = (
        isinstance(splits, dict)
        and set(splits) == set(SPLIT_NAMES)
        and all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in splits.values())
    )
    if not ok:
        raise DataError(
            f"split file {path} does not hold 'splits' with lists 'train', 'val' and 'test'; "
            "delete it to make a new split."
        )
    flat = [i for name in SPLIT_NAMES for i in splits[name]]
    if len(flat) != len(set(flat)):
        dup = sorted(i for i, c in Counter(flat).items() if c > 1)
        raise DataError(
            f"split file {path} puts ids {_some(dup)} in more than one split; delete it to make "
            "a new split."
        )
    return {name: list(splits[name]) for name in SPLIT_NAMES}, saved


def _some(ids: list[str], k: int = 5) -> str:
    return ", ".join(ids[:k]) + (", ..." if len(ids) > k else "")


def _floats(v: object) -> list[float] | None:
    try:
        return [round(float(x), 9) for x in v]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
