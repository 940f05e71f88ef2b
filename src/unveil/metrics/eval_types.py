"""The in-memory records ``unveil evaluate`` hands between its stages (no logic here).

Loading (:mod:`unveil.metrics.evaluate`) gives :class:`SubjectSettings` and
:class:`Readers`; one subject (:mod:`unveil.metrics.eval_subject`) gives a
:class:`SubjectResult`; the summary (:mod:`unveil.metrics.eval_summary`) turns the results
into figures; the files are typed in :mod:`unveil.records.evaluation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unveil.metrics.adherence import AttributeModel, EditTarget

#: A per-subject row: figure or bookkeeping name -> number, text or ``None``.
Row = dict[str, Any]
#: Texture statistics of one volume: region -> feature -> value.
TextureStats = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class SubjectSettings:
    """What is the same for every subject of one evaluation.

    Attributes:
        seed: the noise seed of every generated volume.
        window: the model's HU window ``(low, high)``; both volumes are clipped to it.
        labels: structure name -> mask label values (:func:`structures`); ``lung`` is
            every lung label.
        size_2d, size_3d: resize for the 2D / 3D feature networks (``None`` = native).
        reader_size: cells per axis of the adherence readers' input.
    """

    seed: int
    window: tuple[float, float]
    labels: Mapping[str, tuple[int, ...]]
    size_2d: int | None = None
    size_3d: int | None = None
    reader_size: int = 32


@dataclass
class Readers:
    """The condition-adherence readers, trained on the real training split.

    Attributes:
        models: field -> trained reader (empty when adherence is not measured).
        reasons: field -> why it has no reader (too few subjects, one class...).
        train_ids: the training subjects the readers saw.
        note: why adherence as a whole was not measured (``None`` when it was).
    """

    models: dict[str, AttributeModel] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    train_ids: list[str] = field(default_factory=list)
    note: str | None = None


@dataclass
class SubjectResult:
    """Everything measured on one subject, before anything is aggregated.

    Attributes:
        record: the per-subject row (``id``, fidelity, Wasserstein, Dice, texture
            differences), in column order.
        texture_real, texture_fake: texture statistics per region of the real and the
            generated scan (for the texture distance in units of the real spread).
        features_2d, features_3d: ``(real, generated)`` feature rows of the named
            networks, ``None`` without a network.
        reader_real, reader_fake: the readers' input of the real and the generated scan,
            ``None`` without readers.
        edited: edit name -> (what it asks of this subject, reader input of the edited
            volume), for the edits that change this subject's prompt.
    """

    record: Row
    texture_real: TextureStats
    texture_fake: TextureStats
    features_2d: tuple[np.ndarray, np.ndarray] | None = None
    features_3d: tuple[np.ndarray, np.ndarray] | None = None
    reader_real: np.ndarray | None = None
    reader_fake: np.ndarray | None = None
    edited: dict[str, tuple[EditTarget, np.ndarray]] = field(default_factory=dict)
