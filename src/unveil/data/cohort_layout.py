"""The layout of a cohort folder: which images, masks and table rows it holds, by id.

Everything here is visible without reading a volume: missing folders, files that are not
volumes, an unreadable table, empty or repeated table ids, images without a mask (or the
reverse) and images without a table row (or the reverse).  :mod:`unveil.data.cohort`
builds :class:`~unveil.data.cohort.Cohort` and ``unveil check`` on it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from unveil.data.cohort_checks import Problem, listing
from unveil.data.io import volume_stem, volume_suffix
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

    from unveil.config import DataConfig

IMAGES_DIR = "images"
MASKS_DIR = "masks"

# Data files that sit next to a header (.mhd/.nhdr) and are not volumes of their own.
_COMPANION_SUFFIXES = (".raw", ".zraw", ".raw.gz")


def find_volumes(folder: str | os.PathLike) -> dict[str, list[Path]]:
    """Volumes in ``folder`` by subject id, ids sorted.

    A file with a volume suffix is one volume (id = name without the suffix); a sub-folder
    is one DICOM series (id = folder name).  Hidden entries (``.name``, e.g. half-written
    temporary files) are ignored, and so are other files.  An id with more than one entry
    (``a.nii.gz`` and ``a.nrrd``) maps to all of them.
    """
    return scan_folder(Path(folder))[0]


def scan_folder(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
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
class Layout:
    """What the folder holds, before reading any volume."""

    images: dict[str, list[Path]]
    masks: dict[str, list[Path]]
    table_path: Path | None
    table: pd.DataFrame | None  # as read: index = row number in the file
    problems: list[Problem] = field(default_factory=list)
    table_counts: dict[str, int] = field(default_factory=dict)  # rows per id


def read_layout(root: Path, data_cfg: DataConfig, *, strict: bool, require_table: bool) -> Layout:
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
        folders[name], ignored = scan_folder(folder)
        if ignored:
            problems.append(
                Problem(
                    "warning",
                    None,
                    ignored[0],
                    f"{folder} holds {len(ignored)} file(s) that are not volumes and are "
                    f"ignored ({listing(p.name for p in ignored)}); use .nii.gz, .nii, "
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
    layout = Layout(folders[IMAGES_DIR], folders[MASKS_DIR], table_path, table, problems)
    if table is not None:
        layout.table_counts = {
            str(k): int(v) for k, v in table[data_cfg.id_column].value_counts().items()
        }
    pairing_problems(layout, data_cfg, require_table)
    return layout


def pairing_problems(layout: Layout, data_cfg: DataConfig, require_table: bool) -> None:
    """Add the problems of matching images, masks and table rows by id."""
    table_ids = _table_id_problems(layout, data_cfg.id_column)
    _duplicate_volume_problems(layout)
    _unpaired_volume_problems(layout)
    if layout.table is None:
        return
    _table_pairing_problems(layout, table_ids, data_cfg.id_column, require_table)


def _table_id_problems(layout: Layout, idc: str) -> list[str]:
    """Add the table's empty-id rows and repeated ids; return its sorted non-empty ids."""
    if layout.table is None:
        return []
    problems, tpath, df = layout.problems, layout.table_path, layout.table
    empty_rows = [int(r) for r in df.index[df[idc] == ""]]
    if empty_rows:
        problems.append(
            Problem(
                "warning",
                None,
                tpath,
                f"{tpath} has {len(empty_rows)} row(s) with an empty '{idc}' "
                f"(row {listing(empty_rows)}); fill in the id or delete the row(s).",
            )
        )
    for sid in duplicate_ids(df, idc):
        rows = [int(r) for r in df.index[df[idc] == sid]]
        problems.append(
            Problem(
                "error",
                sid,
                tpath,
                f"{tpath} has id '{sid}' on {len(rows)} rows ({listing(rows)}); keep one "
                "row per subject.",
            )
        )
    return sorted({i for i in df[idc] if i})


def _duplicate_volume_problems(layout: Layout) -> None:
    """Add an error for every id with more than one image (or mask) entry."""
    for vols in (layout.images, layout.masks):
        for sid, paths in vols.items():
            if len(paths) > 1:
                layout.problems.append(
                    Problem(
                        "error",
                        sid,
                        paths[0],
                        f"{paths[0].parent} holds {len(paths)} entries for subject '{sid}' "
                        f"({listing(p.name for p in paths)}); keep exactly one.",
                    )
                )


def _unpaired_volume_problems(layout: Layout) -> None:
    """Add an error for every image without a mask and every mask without an image."""
    problems, images, masks = layout.problems, layout.images, layout.masks
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


def _table_pairing_problems(
    layout: Layout, table_ids: list[str], idc: str, require_table: bool
) -> None:
    """Add the images without a table row and the table rows without an image."""
    problems, tpath, images = layout.problems, layout.table_path, layout.images
    table_set = set(table_ids)
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
                f"{_images_dir(tpath)} ({listing(orphans)}); add the images or ignore "
                "these rows (they are not used).",
            )
        )


def _images_dir(table_path: Path | None) -> str:
    """The images/ folder next to a cohort's table, for messages."""
    return f"{table_path.parent / IMAGES_DIR}/" if table_path is not None else "images/"


def _partner(path: Path, folder: str) -> Path:
    """Where the missing image/mask of ``path`` belongs (NIfTI for a DICOM folder)."""
    return path.parent.parent / folder / f"{volume_stem(path)}{volume_suffix(path) or '.nii.gz'}"
