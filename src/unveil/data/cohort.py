"""A cohort on disk: layout, reader and checker.

A cohort is a folder::

    COHORT/
      images/<id>.nii.gz    one CT per subject, in HU (NIfTI, NRRD, MHA, or a folder holding
                            one DICOM series, named <id>)
      masks/<id>.nii.gz     integer label map on the image grid (0 background; the other
                            values are named by ``data.labels``)
      clinical.csv          one row per subject (or clinical.xlsx, or ``data.table``), with
                            an id column (``data.id_column``, default ``id``)

:class:`Cohort` opens the layout without reading any volume, keeps the complete subjects
(image, mask and table row) and lists why the others were left out; :meth:`Cohort.load`
reads one subject and verifies it.  :func:`check_cohort` reads every volume once, one
subject at a time, and reports everything that would make the cohort unusable or
suspicious (``unveil check``).  What is visible without reading a volume is found in
:mod:`unveil.data.cohort_layout`; the sentences about volumes are in
:mod:`unveil.data.cohort_checks`.

What counts as an error and what as a warning: an error is something that makes a subject
unusable or inconsistent (a missing mask, a mask off the image grid, a file that cannot be
read); rows of the clinical table without an image are only a warning, since a registry
table often covers more patients than were scanned, and so are values that look like they
are not HU, since only the user can tell for sure.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from unveil.data.cohort_checks import (  # noqa: F401  (names of this module before the split)
    GRID_TOLERANCE_MM,
    Level,
    Problem,
    finite_range,
    fractional_sentence,
    grid_sentences,
    label_values,
    nonfinite,
    nonfinite_sentence,
    not_hu_sentence,
    unknown_labels_sentence,
)
from unveil.data.cohort_layout import (  # noqa: F401  (names of this module before the split)
    IMAGES_DIR,
    MASKS_DIR,
    find_volumes,
    read_layout,
)
from unveil.data.io import Volume, read_volume
from unveil.data.table import duplicate_ids
from unveil.errors import DataError

if TYPE_CHECKING:
    from unveil.config import Config, DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subject:
    """A subject of a cohort: its files and its clinical row.

    ``row`` maps column name -> value with the id column left out; missing values are
    ``None`` (never imputed).  ``image``/``mask``/``row`` are ``None`` only for subjects of
    a cohort opened with ``require_table=False`` (``row``) or in check reports.
    """

    id: str
    image: Path | None
    mask: Path | None
    row: dict[str, Any] | None


@dataclass
class SubjectRow:
    """What ``unveil check`` found for one subject (fields are ``None`` when unreadable).

    Attributes:
        shape: image shape ``(X, Y, Z)``.
        spacing: image voxel size in mm along each array axis.
        orientation: image axis codes, e.g. ``RAS``.
        hu_min, hu_max: range of the finite image values.
        labels: distinct mask values present (``None`` if unreadable or non-integer).
        table_rows: number of rows of the clinical table with this id.
        complete: image, mask and one table row present, and no error for this subject.
    """

    id: str
    image: Path | None = None
    mask: Path | None = None
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    orientation: str | None = None
    hu_min: float | None = None
    hu_max: float | None = None
    labels: tuple[int, ...] | None = None
    table_rows: int = 0
    complete: bool = False

    @property
    def in_table(self) -> bool:
        return self.table_rows > 0


@dataclass
class CheckReport:
    """Result of :func:`check_cohort`: one row per subject found in images/ or masks/."""

    root: Path
    table: Path | None
    rows: list[SubjectRow]
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def complete(self) -> list[str]:
        """Ids of the subjects that can be used."""
        return [r.id for r in self.rows if r.complete]

    @property
    def usable(self) -> bool:
        """No error and at least one complete subject."""
        return not self.errors and bool(self.complete)


# ------------------------------------------------------------------------------ cohort


class Cohort:
    """The complete subjects of a cohort folder; volumes are read on demand.

    Attributes:
        root: the cohort folder.
        data_cfg: the ``data`` config section used to open it.
        subjects: complete subjects (image, mask and, if required, one table row), sorted
            by id.
        problems: why other subjects were left out, and other layout problems.
        table: the clinical table indexed by id (rows with a unique, non-empty id; the id
            column is the index), or ``None`` when there is none and none was required.
        table_path: where the table was read from.
    """

    def __init__(
        self,
        root: Path,
        data_cfg: DataConfig,
        subjects: list[Subject],
        problems: list[Problem],
        table: pd.DataFrame | None,
        table_path: Path | None,
    ) -> None:
        self.root = root
        self.data_cfg = data_cfg
        self.subjects = subjects
        self.problems = problems
        self.table = table
        self.table_path = table_path
        self._by_id = {s.id: s for s in subjects}

    @classmethod
    def open(
        cls, root: str | os.PathLike, data_cfg: DataConfig, require_table: bool = True
    ) -> Cohort:
        """Open the cohort at ``root`` without reading any volume.

        Raises :class:`DataError` (one sentence) when the layout is absent (no folder, no
        images/ or masks/, no readable table when ``require_table``), when the table is a
        workbook whose formula cells have no stored value (they would read as missing), or
        when no subject is complete.  Subjects with a problem are left out and listed in
        ``problems``.
        """
        root = Path(root)
        lay = read_layout(root, data_cfg, strict=True, require_table=require_table)
        idc = data_cfg.id_column
        table = None
        if lay.table is not None:
            df = lay.table
            dups = set(duplicate_ids(df, idc))
            keep = (df[idc] != "") & ~df[idc].isin(dups)
            table = df[keep].set_index(idc)
        bad = {p.subject for p in lay.problems if p.level == "error" and p.subject}
        subjects = []
        for sid in lay.images:
            if sid in bad or sid not in lay.masks:
                continue
            row = _row_dict(table, sid)
            if require_table and row is None:
                continue
            subjects.append(Subject(sid, lay.images[sid][0], lay.masks[sid][0], row))
        if not subjects:
            first = next((p.message for p in lay.problems if p.level == "error"), None)
            why = f" (first problem: {first.rstrip('.')})" if first else ""
            raise DataError(
                f"cohort {root} has no complete subject with an image, a mask"
                f"{' and a table row' if require_table else ''}{why}; run `unveil check "
                f"{root}` to see every problem."
            )
        left_out = len(set(lay.images) | set(lay.masks)) - len(subjects)
        if left_out:
            log.warning(
                "cohort %s: %d subject(s) left out for problems; run `unveil check %s` for details",
                root,
                left_out,
                root,
            )
        return cls(root, data_cfg, subjects, lay.problems, table, lay.table_path)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.subjects]

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self) -> Iterator[Subject]:
        return iter(self.subjects)

    def __getitem__(self, subject_id: str) -> Subject:
        try:
            return self._by_id[subject_id]
        except KeyError:
            raise DataError(
                f"subject '{subject_id}' is not among the {len(self)} complete subjects of "
                f"{self.root}; run `unveil check {self.root}` to see which ids are usable."
            ) from None

    def rows(self) -> dict[str, dict[str, Any]]:
        """Clinical row of every subject, by id (id column left out, missing -> ``None``)."""
        return {s.id: dict(s.row) if s.row is not None else {} for s in self.subjects}

    def load(self, subject_id: str) -> tuple[Volume, Volume]:
        """Read one subject: ``(image, mask)`` on the same grid.

        ``image.array`` is float32 HU, ``mask.array`` int16 labels, both ``(X, Y, Z)``;
        the mask carries the image's affine.  Raises :class:`DataError` (one sentence)
        when a file is unreadable, the image holds NaN/inf, the mask is not on the image
        grid, or the mask holds non-integer or unconfigured values.
        """
        subject = self[subject_id]
        assert subject.image is not None and subject.mask is not None
        image = read_volume(subject.image, dtype=np.float32)
        n_nan, n_inf = nonfinite(image.array)
        if n_nan or n_inf:
            raise DataError(nonfinite_sentence(subject.image, n_nan, n_inf))
        mask = read_volume(subject.mask)
        for msg in grid_sentences(image, mask):
            raise DataError(msg)
        values, n_frac, example = label_values(mask.array)
        if values is None:
            raise DataError(fractional_sentence(subject.mask, n_frac, example))
        msg = unknown_labels_sentence(subject.mask, values, self.data_cfg)
        if msg:
            raise DataError(msg)
        # Values were checked to be integers within data.labels, so this cast is exact.
        labels = np.rint(mask.array) if mask.array.dtype.kind == "f" else mask.array
        labels = labels.astype(np.int16, copy=False)
        return image, Volume(labels, image.affine.copy(), subject.mask)


def _row_dict(table: pd.DataFrame | None, sid: str) -> dict[str, Any] | None:
    if table is None or sid not in table.index:
        return None
    return {str(k): _plain(v) for k, v in table.loc[sid].items()}


def _plain(value: Any) -> Any:
    """Missing -> None and numpy scalars -> Python, so rows are plain data."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------------------- check


def check_cohort(root: str | os.PathLike, cfg: Config, progress: bool = False) -> CheckReport:
    """Check the cohort at ``root`` and report every problem found.

    Every volume is read once, one subject at a time (nothing is kept in memory between
    subjects).  Raises :class:`DataError` only when ``root`` is not a folder; everything
    else becomes a :class:`Problem`.  ``progress`` shows a bar on stderr when there are
    more than a handful of subjects.
    """
    root = Path(root)
    data_cfg = cfg.data
    lay = read_layout(root, data_cfg, strict=False, require_table=True)
    problems = list(lay.problems)
    bad = {p.subject for p in problems if p.level == "error" and p.subject}
    ids = sorted(set(lay.images) | set(lay.masks))
    rows: list[SubjectRow] = []
    bar = tqdm(
        ids,
        desc="checking",
        unit="subject",
        disable=not progress or len(ids) <= 8,
        leave=False,
    )
    for sid in bar:
        images, masks = lay.images.get(sid, []), lay.masks.get(sid, [])
        row = SubjectRow(
            sid,
            image=images[0] if images else None,
            mask=masks[0] if masks else None,
            table_rows=lay.table_counts.get(sid, 0),
        )
        # An id with two image files is ambiguous: reading either would check the wrong scan.
        found = _inspect_subject(
            row,
            row.image if len(images) == 1 else None,
            row.mask if len(masks) == 1 else None,
            data_cfg,
        )
        problems.extend(found)
        row.complete = (
            len(images) == 1
            and len(masks) == 1
            and row.table_rows == 1
            and sid not in bad
            and not any(p.level == "error" for p in found)
        )
        rows.append(row)
    report = CheckReport(root, lay.table_path, rows, problems)
    if not report.errors and not report.complete:
        report.problems.append(
            Problem(
                "error",
                None,
                root / IMAGES_DIR,
                f"{root / IMAGES_DIR} holds no subject; put one image per subject there, a "
                "mask of the same name in masks/ and a row in the clinical table.",
            )
        )
    return report


def _inspect_subject(
    row: SubjectRow, image_path: Path | None, mask_path: Path | None, data_cfg: DataConfig
) -> list[Problem]:
    """Read one subject's image and mask, fill ``row`` and return the problems found."""
    sid = row.id
    problems: list[Problem] = []
    image = mask = None
    hu_suspect = False
    if image_path is not None:
        try:
            image = read_volume(image_path)
        except DataError as err:
            problems.append(Problem("error", sid, image_path, str(err)))
    if image is not None:
        row.shape, row.spacing, row.orientation = image.shape, image.spacing, image.orientation
        n_nan, n_inf = nonfinite(image.array)
        if n_nan or n_inf:
            problems.append(
                Problem("error", sid, image_path, nonfinite_sentence(image_path, n_nan, n_inf))
            )
        lo, hi = finite_range(image.array)
        row.hu_min, row.hu_max = lo, hi
        msg = not_hu_sentence(image_path, lo, hi)
        if msg:
            hu_suspect = True
            problems.append(Problem("warning", sid, image_path, msg))
    if mask_path is not None:
        try:
            mask = read_volume(mask_path)
        except DataError as err:
            problems.append(Problem("error", sid, mask_path, str(err)))
    if mask is None:
        return problems

    grid = grid_sentences(image, mask) if image is not None else []
    for msg in grid:
        problems.append(Problem("error", sid, mask_path, msg))
    values, n_frac, example = label_values(mask.array)
    if values is None:
        problems.append(
            Problem("error", sid, mask_path, fractional_sentence(mask_path, n_frac, example))
        )
        return problems
    row.labels = tuple(int(v) for v in values)
    msg = unknown_labels_sentence(mask_path, values, data_cfg)
    if msg:
        problems.append(Problem("error", sid, mask_path, msg))
    lung_values = [data_cfg.labels[n] for n in data_cfg.lung_labels]
    if not np.isin(values, lung_values).any():
        named = ", ".join(f"{n}={data_cfg.labels[n]}" for n in data_cfg.lung_labels)
        problems.append(
            Problem(
                "error",
                sid,
                mask_path,
                f"{mask_path} has no lung voxels (none of {named}); segment the lungs "
                "(unveil lungmask) or fix data.labels / data.lung_labels.",
            )
        )
    elif image is not None and not hu_suspect and not grid:
        # Lungs are mostly air; if the masked voxels are not, the mask does not overlay
        # the image (flipped, shifted) or the image is not HU, both fatal for the analysis.
        lung = np.isin(mask.array, lung_values)
        vals = image.array[lung]
        vals = vals[np.isfinite(vals)] if vals.dtype.kind == "f" else vals
        median = float(np.median(vals)) if vals.size else math.nan
        if median > -300:
            problems.append(
                Problem(
                    "warning",
                    sid,
                    mask_path,
                    f"the lungs of {mask_path} have a median of {median:.0f} HU in "
                    f"{image_path}, not air-like (about -850 HU); check that the mask "
                    "overlays the image (flips, orientation) and that the image is in HU.",
                )
            )
    return problems
