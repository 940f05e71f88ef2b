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
suspicious (``unveil check``).

What counts as an error and what as a warning: an error is something that makes a subject
unusable or inconsistent (a missing mask, a mask off the image grid, a file that cannot be
read); rows of the clinical table without an image are only a warning, since a registry
table often covers more patients than were scanned, and so are values that look like they
are not HU, since only the user can tell for sure.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from unveil.data.io import Volume, read_volume, volume_stem, volume_suffix
from unveil.data.table import (
    TABLE_NAMES,
    duplicate_ids,
    find_table,
    read_clinical_table,
    require_computed,
    uncomputed_formulas_sentence,
)
from unveil.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from unveil.config import Config, DataConfig

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
MASKS_DIR = "masks"

#: Two grids are the same when no corner voxel centre moves by more than this (mm).  NIfTI
#: stores the affine in float32 and ITK formats store spacing/direction separately, so a
#: grid copied between formats differs by ~1e-5 mm; 0.01 mm is far below any voxel size.
GRID_TOLERANCE_MM = 0.01

# Data files that sit next to a header (.mhd/.nhdr) and are not volumes of their own.
_COMPANION_SUFFIXES = (".raw", ".zraw", ".raw.gz")

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a cohort, worded as a sentence naming the file and the fix.

    Attributes:
        level: ``"error"`` (the subject or the cohort cannot be used as it is) or
            ``"warning"`` (usable, but probably not what the user meant).
        subject: the subject id concerned, or ``None`` for cohort-level problems.
        path: the file concerned, if one.
        message: the sentence.
    """

    level: Level
    subject: str | None
    path: Path | None
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


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


# ------------------------------------------------------------------------------- layout


def find_volumes(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """Volumes in ``folder`` by subject id, ids sorted.

    A file with a volume suffix is one volume (id = name without the suffix); a sub-folder
    is one DICOM series (id = folder name).  Hidden entries (``.name``, e.g. half-written
    temporary files) are ignored, and so are other files.  An id with more than one entry
    (``a.nii.gz`` and ``a.nrrd``) maps to all of them.
    """
    return _scan(Path(folder))[0]


def _scan(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """``(volumes by id, ignored non-volume files)`` of ``folder``."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; create it with one volume per subject.")
    found: dict[str, list[Path]] = {}
    ignored: list[Path] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            found.setdefault(p.name, []).append(p)
        elif volume_suffix(p):
            found.setdefault(volume_stem(p), []).append(p)
        elif not p.name.lower().endswith(_COMPANION_SUFFIXES):
            ignored.append(p)
    return {k: found[k] for k in sorted(found)}, ignored


@dataclass
class _Layout:
    """What the folder holds, before reading any volume."""

    images: dict[str, list[Path]]
    masks: dict[str, list[Path]]
    table_path: Path | None
    table: pd.DataFrame | None  # as read: index = row number in the file
    problems: list[Problem] = field(default_factory=list)
    table_counts: dict[str, int] = field(default_factory=dict)  # rows per id


def _layout(root: Path, data_cfg: DataConfig, *, strict: bool, require_table: bool) -> _Layout:
    """Inventory of a cohort folder and the problems visible without reading volumes.

    With ``strict`` a missing folder, an unreadable table or a workbook whose formula cells
    have no stored value raises :class:`DataError` (for :meth:`Cohort.open`); otherwise it
    becomes a problem (an error, or a warning for the formulas; for ``unveil check``, which
    reports as much as it can).
    """
    if not root.is_dir():
        raise DataError(
            f"cohort folder {root} does not exist; give the folder holding images/, masks/ "
            "and the clinical table."
        )
    problems: list[Problem] = []
    folders: dict[str, dict[str, list[Path]]] = {}
    for name in (IMAGES_DIR, MASKS_DIR):
        folder = root / name
        if not folder.is_dir():
            msg = (
                f"{root} has no {name}/ folder; a cohort holds images/<id>.nii.gz, "
                "masks/<id>.nii.gz and clinical.csv, so create it with one file per subject."
            )
            if strict:
                raise DataError(msg)
            problems.append(Problem("error", None, folder, msg))
            folders[name] = {}
            continue
        folders[name], ignored = _scan(folder)
        if ignored:
            problems.append(
                Problem(
                    "warning",
                    None,
                    ignored[0],
                    f"{folder} holds {len(ignored)} file(s) that are not volumes and are "
                    f"ignored ({_listing(p.name for p in ignored)}); use .nii.gz, .nii, "
                    ".nrrd, .mha/.mhd or a DICOM folder, or move them out.",
                )
            )

    table_path: Path | None = None
    table = None
    # An optional table may be absent; one that is there (or named) must still be readable.
    absent_ok = (
        not require_table
        and not data_cfg.table
        and not any((root / n).is_file() for n in TABLE_NAMES)
    )
    if not absent_ok:
        try:
            table_path = find_table(root, data_cfg.table)
            table = read_clinical_table(table_path, data_cfg.id_column)
        except DataError as err:
            if strict:
                raise
            problems.append(Problem("error", None, table_path or root, str(err)))
    if table is not None and table_path is not None:
        # Formula cells of a workbook without a stored value read as missing: every use of
        # the values (train, counterfactual, evaluate, analyze) refuses them, while
        # ``unveil check`` only warns, since the rest of the cohort is still worth checking.
        if strict:
            require_computed(table, table_path)
        msg = uncomputed_formulas_sentence(table, table_path)
        if msg:
            problems.append(Problem("warning", None, table_path, msg))
    layout = _Layout(folders[IMAGES_DIR], folders[MASKS_DIR], table_path, table, problems)
    if table is not None:
        layout.table_counts = {
            str(k): int(v) for k, v in table[data_cfg.id_column].value_counts().items()
        }
    _pairing_problems(layout, data_cfg, require_table)
    return layout


def _pairing_problems(layout: _Layout, data_cfg: DataConfig, require_table: bool) -> None:
    """Add the problems of matching images, masks and table rows by id."""
    problems = layout.problems
    idc = data_cfg.id_column
    tpath = layout.table_path
    table_ids: list[str] = []
    if layout.table is not None:
        df = layout.table
        empty_rows = [int(r) for r in df.index[df[idc] == ""]]
        if empty_rows:
            problems.append(
                Problem(
                    "warning",
                    None,
                    tpath,
                    f"{tpath} has {len(empty_rows)} row(s) with an empty '{idc}' "
                    f"(row {_listing(empty_rows)}); fill in the id or delete the row(s).",
                )
            )
        for sid in duplicate_ids(df, idc):
            rows = [int(r) for r in df.index[df[idc] == sid]]
            problems.append(
                Problem(
                    "error",
                    sid,
                    tpath,
                    f"{tpath} has id '{sid}' on {len(rows)} rows ({_listing(rows)}); keep one "
                    "row per subject.",
                )
            )
        table_ids = sorted({i for i in df[idc] if i})
    table_set = set(table_ids)

    for vols in (layout.images, layout.masks):
        for sid, paths in vols.items():
            if len(paths) > 1:
                problems.append(
                    Problem(
                        "error",
                        sid,
                        paths[0],
                        f"{paths[0].parent} holds {len(paths)} entries for subject '{sid}' "
                        f"({_listing(p.name for p in paths)}); keep exactly one.",
                    )
                )

    images, masks = layout.images, layout.masks
    for sid in images:
        if sid not in masks:
            problems.append(
                Problem(
                    "error",
                    sid,
                    images[sid][0],
                    f"{images[sid][0]} has no mask; add {_partner(images[sid][0], MASKS_DIR)} "
                    "(unveil lungmask can make one) or remove the image.",
                )
            )
    for sid in masks:
        if sid not in images:
            problems.append(
                Problem(
                    "error",
                    sid,
                    masks[sid][0],
                    f"{masks[sid][0]} has no image; add {_partner(masks[sid][0], IMAGES_DIR)} "
                    "or remove the mask.",
                )
            )
    if layout.table is None:
        return
    for sid in images:
        if sid not in table_set:
            close = difflib.get_close_matches(sid, table_ids, n=1)
            hint = f" (the closest table id is '{close[0]}')" if close else ""
            problems.append(
                Problem(
                    "error" if require_table else "warning",
                    sid,
                    images[sid][0],
                    f"{images[sid][0]} has no row in {tpath}{hint}; add a row with "
                    f"{idc}={sid} or rename the file to match the table.",
                )
            )
    orphans = [sid for sid in table_ids if sid not in images]
    if 0 < len(orphans) <= 5:
        for sid in orphans:
            problems.append(
                Problem(
                    "warning",
                    sid,
                    tpath,
                    f"{tpath} has a row for '{sid}' but {_images_dir(tpath)} has no "
                    f"image '{sid}'; add the image or ignore this row (it is not used).",
                )
            )
    elif orphans:
        problems.append(
            Problem(
                "warning",
                None,
                tpath,
                f"{tpath} has {len(orphans)} ids without an image in "
                f"{_images_dir(tpath)} ({_listing(orphans)}); add the images or ignore "
                "these rows (they are not used).",
            )
        )


def _images_dir(table_path: Path | None) -> str:
    """The images/ folder next to a cohort's table, for messages."""
    return f"{table_path.parent / IMAGES_DIR}/" if table_path is not None else "images/"


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
        lay = _layout(root, data_cfg, strict=True, require_table=require_table)
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
        n_nan, n_inf = _nonfinite(image.array)
        if n_nan or n_inf:
            raise DataError(_nonfinite_sentence(subject.image, n_nan, n_inf))
        mask = read_volume(subject.mask)
        for msg in _grid_sentences(image, mask):
            raise DataError(msg)
        values, n_frac, example = _label_values(mask.array)
        if values is None:
            raise DataError(_fractional_sentence(subject.mask, n_frac, example))
        msg = _unknown_labels_sentence(subject.mask, values, self.data_cfg)
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
    import pandas as pd

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
    from tqdm import tqdm

    root = Path(root)
    data_cfg = cfg.data
    lay = _layout(root, data_cfg, strict=False, require_table=True)
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
        n_nan, n_inf = _nonfinite(image.array)
        if n_nan or n_inf:
            problems.append(
                Problem("error", sid, image_path, _nonfinite_sentence(image_path, n_nan, n_inf))
            )
        lo, hi = _finite_range(image.array)
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

    grid = _grid_sentences(image, mask) if image is not None else []
    for msg in grid:
        problems.append(Problem("error", sid, mask_path, msg))
    values, n_frac, example = _label_values(mask.array)
    if values is None:
        problems.append(
            Problem("error", sid, mask_path, _fractional_sentence(mask_path, n_frac, example))
        )
        return problems
    row.labels = tuple(int(v) for v in values)
    msg = _unknown_labels_sentence(mask_path, values, data_cfg)
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


# ------------------------------------------------------------------- volume sentences


def _nonfinite(array: np.ndarray) -> tuple[int, int]:
    """``(NaN count, inf count)``; integer arrays have neither."""
    if array.dtype.kind not in "fc":
        return 0, 0
    n_nan = int(np.isnan(array).sum())
    n_inf = int(np.isinf(array).sum())
    return n_nan, n_inf


def _finite_range(array: np.ndarray) -> tuple[float | None, float | None]:
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            array = array[finite]
    if array.size == 0:
        return None, None
    return float(array.min()), float(array.max())


def _nonfinite_sentence(path: Path, n_nan: int, n_inf: int) -> str:
    return (
        f"{path} has {n_nan} NaN and {n_inf} infinite voxel(s); replace them with a real HU "
        "value (for example -1024 outside the body) and save it again."
    )


def not_hu_sentence(path: Path, lo: float | None, hi: float | None) -> str | None:
    """A warning sentence when the value range is evidently not Hounsfield units.

    A chest CT in HU always holds air (outside the body and in the lungs, about -1000)
    and soft tissue (about 0 to 100), so its range spans well over a thousand; what
    breaks that is a normalised image, 8-bit display values, stored values whose
    rescale intercept was not applied, or a wrong rescale slope.
    """
    if lo is None or hi is None:
        return None  # no finite value at all: already an error (NaN/inf)
    rng = f"[{lo:.4g}, {hi:.4g}]"
    if hi - lo < 10:
        return (
            f"{path} only spans {rng}, which looks normalised, not HU; use the scan in "
            "Hounsfield units (air about -1000, water 0)."
        )
    if lo >= -200:
        if lo >= 0 and hi <= 255:
            why = "looks like 8-bit display values"
        elif lo >= 0 and hi <= 4095:
            why = "looks like stored values without the rescale intercept (usually -1024)"
        else:
            why = "has no voxel below -200 HU, so no air"
        return (
            f"{path} spans {rng} and {why}, while a chest CT in HU always holds air near "
            "-1000; convert it to HU (apply the DICOM rescale slope and intercept)."
        )
    if hi < -500:
        return (
            f"{path} spans {rng}, with no soft tissue or bone above -500 HU; check for a "
            "wrong offset or a lung-only crop and use the full scan in HU."
        )
    if lo < -50000 or hi > 50000:
        return (
            f"{path} spans {rng}, far outside the HU range of CT (about -1024 to 3071); "
            "check the rescale slope and convert it to HU."
        )
    return None


def _grid_sentences(image: Volume, mask: Volume) -> list[str]:
    """Sentences for a mask whose shape or placement differs from its image."""
    out = []
    if image.shape != mask.shape:
        out.append(
            f"{mask.path} has shape {_dims(mask.shape)} but its image {image.path} has "
            f"{_dims(image.shape)}; resample the mask onto the image grid (nearest neighbour)."
        )
    dist = _corner_distance(image.affine, mask.affine, image.shape)
    if dist > GRID_TOLERANCE_MM:
        out.append(
            f"{mask.path} is placed up to {dist:.3g} mm away from its image {image.path} "
            "(their affines differ); resample the mask onto the image grid, or copy the "
            "image's header into it if only the header is wrong."
        )
    return out


def _corner_distance(a: np.ndarray, b: np.ndarray, shape: tuple[int, int, int]) -> float:
    """Largest distance (mm) between where two affines put the corner voxels of ``shape``."""
    corners = np.array(
        [[i, j, k, 1.0] for i, j, k in itertools.product(*[(0, n - 1) for n in shape])]
    ).T
    return float(np.linalg.norm(((a - b) @ corners)[:3], axis=0).max())


def _label_values(array: np.ndarray) -> tuple[np.ndarray | None, int, float | None]:
    """``(sorted distinct values, 0, None)`` of an integer-valued mask, or
    ``(None, count, example)`` when ``count`` voxels are fractional or not finite."""
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        bad = ~finite
        bad[finite] = array[finite] != np.round(array[finite])
        n = int(bad.sum())
        if n:
            return None, n, float(array[bad][0])
        array = array.astype(np.int64)
    lo, hi = int(array.min()), int(array.max())
    if hi - lo < 1 << 16:
        # A bincount over the value range is linear time; np.unique would sort the volume.
        counts = np.bincount((array.astype(np.int64, copy=False) - lo).ravel())
        return np.flatnonzero(counts) + lo, 0, None
    return np.unique(array), 0, None


def _fractional_sentence(path: Path, n: int, example: float | None) -> str:
    return (
        f"{path} holds {n} non-integer voxel value(s) (e.g. {example:g}) but a mask must be "
        "an integer label map; resample it with nearest-neighbour interpolation and save "
        "it with an integer type."
    )


def _unknown_labels_sentence(path: Path, values: np.ndarray, data_cfg: DataConfig) -> str | None:
    known = {0, *data_cfg.labels.values()}
    unknown = [int(v) for v in values if int(v) not in known]
    if not unknown:
        return None
    configured = ", ".join(f"{n}={v}" for n, v in data_cfg.labels.items())
    looks_like_image = (
        " (so many values suggest an image saved as a mask)" if len(unknown) > 50 else ""
    )
    return (
        f"{path} has label value(s) {_listing(unknown)} that data.labels does not name "
        f"(it has 0=background, {configured}){looks_like_image}; relabel the mask or set "
        "data.labels to name them."
    )


# --------------------------------------------------------------------------- helpers


def _listing(items: Any, limit: int = 6) -> str:
    """``a, b, c`` or ``a, b, c and 7 more``."""
    items = [str(i) for i in items]
    head = ", ".join(items[:limit])
    return head if len(items) <= limit else f"{head} and {len(items) - limit} more"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _partner(path: Path, folder: str) -> Path:
    """Where the missing image/mask of ``path`` belongs (NIfTI for a DICOM folder)."""
    return path.parent.parent / folder / f"{volume_stem(path)}{volume_suffix(path) or '.nii.gz'}"
