"""The on-disk layout of a counterfactual run and the records it holds: one place that names every file.

``unveil counterfactual`` writes a run with these paths and ``unveil analyze`` reads it
back with the same ones, so writer and reader cannot disagree about a file name::

    RUN/
      counterfactual.json
      subjects/<id>/factual_s<k>.nii.gz   subject's own prompt, noise of seed k
      subjects/<id>/floor_s<k>.nii.gz     same prompt, noise of seed k + floor_seed_offset
      subjects/<id>/<slug>_s<k>.nii.gz    edited prompt, the SAME noise as factual_s<k>
      analysis/                           written by ``unveil analyze``

``<slug>`` is :func:`edit_slug` of the edit's text form (``str(edit)``), or of a permuted
control's name.

``counterfactual.json`` holds ``cohort``, ``edits``, ``seeds`` and ``subjects`` (required),
and optionally ``null_edits`` (negative-control edits), ``permuted_controls`` (names of
contrasts whose volumes lie at :meth:`RunLayout.edited` like an edit's, made by setting
each subject's null field to the value of another, randomly permuted, subject: negative
controls by construction, not parseable as edits), ``noise`` (``"per-subject"`` when each
(subject, seed) drew its own noise; older runs shared seed k's noise across subjects),
``baseline``, ``floor_seed_offset``, ``hu_window`` and ``config``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from unveil.errors import UnveilError

#: File name of the run description.
RUN_JSON = "counterfactual.json"

#: Keys every counterfactual.json must hold.
RUN_KEYS: tuple[str, ...] = ("cohort", "edits", "seeds", "subjects")

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def edit_slug(edit_text: str) -> str:
    """The file-name form of an edit: characters outside ``[A-Za-z0-9._+=-]`` become ``_``.

    ``smoking=current`` -> ``smoking=current``; ``diagnosis=non IPF`` -> ``diagnosis=non_IPF``;
    ``age-=5`` -> ``age-=5``.  Distinct edits of one run must have distinct slugs (checked by
    :func:`read_run`).
    """
    return _UNSAFE.sub("_", str(edit_text).strip())


class RunLayout:
    """Paths inside a counterfactual run folder (nothing is read or created here)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def json_path(self) -> Path:
        """``RUN/counterfactual.json``."""
        return self.root / RUN_JSON

    @property
    def subjects_dir(self) -> Path:
        return self.root / "subjects"

    def subject_dir(self, subject: str) -> Path:
        return self.subjects_dir / subject

    def factual(self, subject: str, seed: int) -> Path:
        """Generated under the subject's own prompt with the noise of ``seed``."""
        return self.subject_dir(subject) / f"factual_s{int(seed)}.nii.gz"

    def floor(self, subject: str, seed: int) -> Path:
        """Same prompt as :meth:`factual`, noise of ``seed + floor_seed_offset``.

        Indexed by the factual seed ``seed`` (the file of pair ``seed``), not by the seed
        actually used for its noise.
        """
        return self.subject_dir(subject) / f"floor_s{int(seed)}.nii.gz"

    def edited(self, subject: str, edit: str, seed: int) -> Path:
        """Edited prompt with the same noise as :meth:`factual` of ``seed``."""
        return self.subject_dir(subject) / f"{edit_slug(edit)}_s{int(seed)}.nii.gz"

    @property
    def analysis_dir(self) -> Path:
        """``RUN/analysis``: everything ``unveil analyze`` writes."""
        return self.root / "analysis"

    @property
    def maps_dir(self) -> Path:
        return self.analysis_dir / "maps"

    def map_nifti(self, subject: str, edit: str) -> Path:
        """Mean over seeds of (edited - factual) in HU for one subject and edit."""
        return self.maps_dir / subject / f"{edit_slug(edit)}_mean_diff.nii.gz"

    def map_png(self, subject: str, edit: str) -> Path:
        return self.maps_dir / subject / f"{edit_slug(edit)}_mean_diff.png"

    def volumes(self, run: dict[str, Any]) -> list[Path]:
        """Every volume the run description says exists, in a fixed order."""
        out: list[Path] = []
        edits = [
            *run.get("edits", []),
            *run.get("null_edits", []),
            *run.get("permuted_controls", []),
        ]
        for sid in run["subjects"]:
            for k in run["seeds"]:
                out.append(self.factual(sid, k))
                out.append(self.floor(sid, k))
                out.extend(self.edited(sid, e, k) for e in edits)
        return out


def read_run(root: str | os.PathLike, check_volumes: bool = True) -> dict[str, Any]:
    """Read and validate ``RUN/counterfactual.json``.

    Args:
        root: the run folder.
        check_volumes: also check that every factual, floor and edited volume exists.

    Returns:
        The json content, with ``null_edits`` and ``permuted_controls`` defaulting to
        ``[]`` and ``floor_seed_offset`` to 1000 (``noise`` is left absent when absent: its
        absence marks an older run with noise shared across subjects).

    Raises:
        UnveilError: one sentence naming the missing/corrupt file and saying to re-run
        ``unveil counterfactual``.
    """
    layout = RunLayout(root)
    path = layout.json_path
    redo = "re-run unveil counterfactual to write the run again"
    if not layout.root.is_dir():
        raise UnveilError(
            f"run folder {layout.root} does not exist; give the folder written by unveil "
            "counterfactual."
        )
    if not path.is_file():
        raise UnveilError(
            f"{path} is missing, so {layout.root} is not a counterfactual run; give the folder "
            f"written by unveil counterfactual, or {redo}."
        )
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UnveilError(f"{path} is corrupt (not valid JSON); {redo}.") from None
    if not isinstance(run, dict):
        raise UnveilError(f"{path} is corrupt (not a JSON object); {redo}.")
    missing = [k for k in RUN_KEYS if k not in run]
    if missing:
        raise UnveilError(f"{path} lacks the key(s) {', '.join(missing)}; {redo}.")
    run.setdefault("null_edits", [])
    run.setdefault("permuted_controls", [])
    if "noise" not in run:  # older runs: the floor used the noise of seed k + offset
        run.setdefault("floor_seed_offset", 1000)
    for key in ("edits", "null_edits", "permuted_controls", "seeds", "subjects"):
        if not isinstance(run[key], list):
            raise UnveilError(f"{path}: '{key}' must be a list; {redo}.")
    if not run["subjects"] or not run["seeds"]:
        raise UnveilError(f"{path} lists no subjects or no seeds; {redo}.")
    if not run["edits"] and not run["null_edits"]:
        raise UnveilError(f"{path} lists no edits; {redo} with at least one --edit.")
    if "noise" in run and not isinstance(run["noise"], str):
        raise UnveilError(f"{path}: 'noise' must be a string such as 'per-subject'; {redo}.")
    all_edits = [str(e) for e in (*run["edits"], *run["null_edits"], *run["permuted_controls"])]
    slugs = [edit_slug(e) for e in all_edits]
    if len(set(slugs)) != len(slugs):
        raise UnveilError(
            f"{path} lists contrasts whose file names collide ({', '.join(all_edits)}); {redo} "
            "with distinct edits."
        )
    if check_volumes:
        for vol in layout.volumes(run):
            if not vol.is_file():
                raise UnveilError(f"{vol} is missing from the run; {redo}.")
    return run
