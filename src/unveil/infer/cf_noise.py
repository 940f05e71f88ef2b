"""The random draws of a generation, each a pure function of fixed keys.

The noise of one (subject, seed index, stream) (:func:`subject_noise`) and the fixed
permutations of the permuted-label controls (:func:`permuted_controls`): every machine,
rank and re-run draws the same values, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

#: How the noise of a run is drawn (written to counterfactual.json as ``noise``).
NOISE_RULE = "per-subject"
#: Noise streams of one (subject, seed): the pair's shared noise and the floor's own.
NOISE_STREAMS = {"pair": 0, "floor": 1}
#: Default number of permuted-label controls per null-edit field.
PERMUTED_CONTROLS = 2


def _subject_key(subject: str) -> int:
    # A stable 64-bit key of the id (Python's hash() is salted per process).
    return int.from_bytes(hashlib.sha256(str(subject).encode("utf-8")).digest()[:8], "little")


def subject_seed(subject: str, seed: int, stream: str = "pair") -> int:
    """The torch seed of ``(subject, seed, stream)``: distinct subjects, seeds and streams
    get unrelated noise, and the same triple the same noise on every machine and rank."""
    ss = np.random.SeedSequence([_subject_key(subject), int(seed), NOISE_STREAMS[stream]])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def subject_noise(
    shape: tuple[int, ...], subject: str, seed: int, stream: str = "pair"
) -> torch.Tensor:
    """Standard normal noise ``(1, 1, *shape)`` of one subject, seed index and stream."""
    g = torch.Generator().manual_seed(subject_seed(subject, seed, stream))
    return torch.randn((1, 1, *shape), generator=g)


def permuted_controls(
    subjects: list[str],
    rows: dict[str, dict[str, Any]],
    columns: list[str],
    n: int,
) -> dict[str, dict[str, Any]]:
    """Permuted-label negative controls: ``{name: {subject: value}}``.

    For each null-edit column and ``j = 1..n``, a fixed random permutation ``pi_j`` of the
    run's subjects (seeded by the column and ``j``, so every rank and every re-run agrees)
    gives subject ``i`` the recorded value of subject ``pi_j(i)`` (None where that one is
    missing: the field is then left out of the prompt).  Names are
    ``permuted-<j>:<column>``.
    """
    out: dict[str, dict[str, Any]] = {}
    ordered = sorted(subjects)
    for col in columns:
        for j in range(1, int(n) + 1):
            rng = np.random.default_rng([_subject_key(col), j])
            perm = rng.permutation(len(ordered))
            out[f"permuted-{j}:{col}"] = {
                sid: rows[ordered[p]].get(col) for sid, p in zip(ordered, perm, strict=True)
            }
    return out
