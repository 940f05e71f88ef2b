"""``unveil analyze RUN``: what each edit changes, in HU, per region, against chance.

Reads a counterfactual run (:mod:`unveil.analysis.layout`) and its cohort, and writes
``RUN/analysis/``:

``subject_regions.csv``
    one row per subject, contrast (an edit, or ``noise_floor``), seed and region: the
    voxel mean of (edited - factual), or (floor - factual), inside the region, in HU.
``cohort_stats.csv``
    per edit and region, over subjects (the unit of replication; each subject's value is
    the mean over its seeds): mean difference with a bootstrap CI, the noise floor's mean
    and SD, Cohen's d_z and a paired test of effect against floor, Benjamini-Hochberg
    q-values over *all* (edit, region) rows including the null edits, ``significant =
    q < alpha``.
``observed.csv``
    the association in the real cohort for each edited attribute: regional mean HU of the
    real scans, target group vs the rest (category), or a least-squares slope scaled to the
    edit (number).  It may be confounded (age and smoking travel together); the
    counterfactual should isolate one attribute.
``recovery.csv``
    only when the cohort has ``effects.json``: planted vs recovered shift per edit and
    region.
``results.json``
    all of the above plus the run description, a verdict and the settings.
``maps/<id>/<edit>_mean_diff.nii.gz|.png``
    mean over seeds of (edited - factual) in HU on the source grid, and a PNG of its
    mid-lung slices; ``maps/<id>/noise_floor_mean_diff.*`` is the same for (floor -
    factual), the picture of chance on the same colour scale.

The whole ``analysis/`` folder is built aside and moved into place at the end, so it is
complete or absent; a re-run replaces it.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unveil.analysis.layout import RUN_JSON, RunLayout, read_run
from unveil.analysis.stats import (
    benjamini_hochberg,
    bootstrap_ci,
    effect_size_dz,
    paired_test,
    slope_with_ci,
    two_group_difference,
)
from unveil.errors import UnveilError

log = logging.getLogger(__name__)

#: Contrast name of the noise floor (floor - factual) in subject_regions.csv.
NOISE_FLOOR = "noise_floor"

#: Column orders of the CSV outputs.
SUBJECT_COLUMNS = ("id", "contrast", "seed", "region", "n_voxels", "mean_diff_hu")
COHORT_COLUMNS = (
    "contrast",
    "region",
    "n_subjects",
    "mean_diff_hu",
    "ci_low",
    "ci_high",
    "floor_mean_hu",
    "floor_sd_hu",
    "effect_size_dz",
    "statistic",
    "p_value",
    "q_value",
    "significant",
    "test",
    "null_control",
    "n_seeds",
)
OBSERVED_COLUMNS = (
    "attribute",
    "group_a",
    "group_b",
    "region",
    "n_a",
    "n_b",
    "mean_hu_a",
    "mean_hu_b",
    "diff_hu",
    "ci_low",
    "ci_high",
    "contrast",
    "method",
)
RECOVERY_COLUMNS = (
    "contrast",
    "region",
    "planted_hu",
    "recovered_hu",
    "ci_low",
    "ci_high",
    "error_hu",
    "relative_error",
    "sign_ok",
    "within_30pct",
    "null_control",
)

#: Relative error allowed for a recovery to count as "within 30%".
RECOVERY_TOLERANCE = 0.30


# ------------------------------------------------------------------------------ edits


@dataclass(frozen=True)
class ParsedEdit:
    """An edit as the analysis needs it.

    Attributes:
        text: the edit string of the run (``smoking=current``).
        field: the template field (``smoking``).
        column: the table column that field reads (the field name when no template).
        op: ``set``, ``add``, ``sub`` or ``unset``.
        value: the raw code (category) or a float (number); None for ``unset``.
        numeric: True when the field holds numbers (slopes, not groups, for the observed
            association).
    """

    text: str
    field: str
    column: str
    op: str
    value: Any
    numeric: bool

    def apply(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``attributes`` (column -> value) with this edit applied."""
        from unveil.data.effects import is_missing

        out = dict(attributes)
        current = out.get(self.column)
        if self.op == "set":
            out[self.column] = self.value
        elif self.op == "unset":
            out[self.column] = None
        else:
            x = None if is_missing(current) else _number(current)
            sign = 1.0 if self.op == "add" else -1.0
            out[self.column] = None if x is None else x + sign * float(self.value)
        return out


_EDIT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(\+=|-=|=)(.*)$", re.S)
_UNSET_RE = re.compile(r"^\s*unset(?:\s+|-)([A-Za-z_][A-Za-z0-9_]*)\s*$")


def _number(text: Any) -> float | None:
    """``text`` as a finite float (numbers and numeric strings), else None."""
    if text is None or isinstance(text, bool):
        return None
    try:
        v = float(str(text).strip())
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_run_edit(text: str, template: Any | None = None) -> ParsedEdit:
    """Parse an edit string of a run; with a template, through :func:`unveil.text.edits.parse_edit`.

    Without a template (none could be rebuilt from the run's config) the stable text form
    ``str(edit)`` is parsed directly (``field=value``, ``field+=x``, ``field-=x``,
    ``unset-field``), the field is taken to be the table column of the same name, and a
    ``set`` value is numeric when it reads as a number.
    """
    if template is not None:
        from unveil.text.edits import parse_edit

        try:
            e = parse_edit(text, template)
        except UnveilError as err:
            # The run was made with the checkpoint's own template; a shipped template of the
            # same name may have changed since, so fall back on the edit's text form.
            log.warning(
                "edit %s does not fit template %s (%s); parsing its text", text, template.name, err
            )
        else:
            f = template.field(e.field)
            numeric = f.kind in ("number", "days")
            value = float(e.value) if numeric and e.value is not None else e.value
            return ParsedEdit(text, e.field, f.column, e.op, value, numeric)
    m = _UNSET_RE.match(text)
    if m:
        return ParsedEdit(text, m.group(1), m.group(1), "unset", None, False)
    m = _EDIT_RE.match(text)
    if not m or not m.group(3).strip():
        raise UnveilError(
            f"edit '{text}' in {RUN_JSON} is not of the form field=value, field+=number, "
            "field-=number or unset-field; re-run unveil counterfactual."
        )
    name, sign, raw = m.group(1), m.group(2), m.group(3).strip()
    if sign != "=":
        delta = _number(raw)
        if delta is None:
            raise UnveilError(
                f"edit '{text}' in {RUN_JSON} shifts by '{raw}', which is not a number; "
                "re-run unveil counterfactual."
            )
        return ParsedEdit(text, name, name, "add" if sign == "+=" else "sub", delta, True)
    num = _number(raw)
    return ParsedEdit(text, name, name, "set", raw if num is None else num, num is not None)


def _template_from_run(run: Mapping[str, Any]) -> Any | None:
    """The run's template, rebuilt cheaply from its config (no model is loaded); None if not."""
    cfg = run.get("config") or {}
    name = (cfg.get("text") or {}).get("template")
    id_column = (cfg.get("data") or {}).get("id_column", "id")
    if not name:
        return None
    from unveil.text.template import load_template

    try:
        return load_template(name, id_column=id_column)
    except UnveilError as err:
        log.warning("template %s not found (%s); edits are parsed from their text form", name, err)
        return None


# ------------------------------------------------------------------------------ inputs


def _data_cfg(run: Mapping[str, Any]):
    from unveil.config import DataConfig

    data = (run.get("config") or {}).get("data")
    if not data:
        return DataConfig()
    try:
        return DataConfig.model_validate(data)
    except Exception as err:  # pydantic.ValidationError; one sentence for the user
        raise UnveilError(
            f"the data section of the config in {RUN_JSON} does not validate ({err.__class__.__name__}); "
            "re-run unveil counterfactual with a valid config."
        ) from None


def _cohort_root(run: Mapping[str, Any], root: Path) -> Path:
    """The cohort folder named in the run, absolute or relative to the cwd or the run."""
    p = Path(str(run["cohort"]))
    for cand in (p, root / p) if not p.is_absolute() else (p,):
        if cand.is_dir():
            return cand
    raise UnveilError(
        f"cohort folder {p} named in {root / RUN_JSON} does not exist; restore it or fix the "
        "'cohort' key of that file."
    )


def load_effects(cohort: Path) -> tuple[list[Any], list[str]] | None:
    """``(effects, null_attributes)`` from ``cohort/effects.json``, or None if there is none.

    Reads the record written by :func:`unveil.data.effects.effects_record` (its ``kind`` and
    ``description`` keys are derived and ignored).
    """
    import json

    from unveil.data.effects import EffectSpec

    path = cohort / "effects.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        effects = []
        for e in record.get("effects", []):
            keep = {k: v for k, v in e.items() if k in EffectSpec.model_fields and v is not None}
            if keep.get("per_unit") is not None:
                keep.pop("shift_hu", None)  # a per-unit effect's size is per_unit
            effects.append(EffectSpec.model_validate(keep))
    except Exception as err:
        raise UnveilError(
            f"{path} is not a valid effects record ({err.__class__.__name__}); regenerate the "
            "cohort with unveil phantom or unveil plant, or remove the file."
        ) from None
    return effects, [str(a) for a in record.get("null_attributes", [])]


def _truth_rows(cohort: Path, id_column: str, fallback: Mapping[str, dict]) -> dict[str, dict]:
    """True attributes by id: ``truth.csv`` when the cohort has one, else the clinical rows."""
    from unveil.data.table import read_clinical_table

    path = cohort / "truth.csv"
    if not path.is_file():
        return {k: dict(v) for k, v in fallback.items()}
    for idc in dict.fromkeys((id_column, "id")):
        try:
            df = read_clinical_table(path, idc)
        except UnveilError:
            continue
        rows = {}
        for _, r in df.iterrows():
            rows[str(r[idc])] = {
                str(k): (None if _missing(v) else v) for k, v in r.items() if k != idc
            }
        return rows
    return {k: dict(v) for k, v in fallback.items()}


def _missing(v: Any) -> bool:
    from unveil.data.effects import is_missing

    return is_missing(v)


def region_names(data_cfg: Any, effects: Sequence[Any] | None = None) -> list[str]:
    """Regions measured: the vocabulary, any other label, and each planted effect's region.

    Labels other than the lungs and airway (e.g. ``heart``) are measured under their label
    name; a planted intersection such as ``lower_lung&lung_periphery`` is added so the
    recovery is also read exactly where the effect was put.
    """
    from unveil.data.regions import REGIONS

    names = list(REGIONS)
    for label in data_cfg.labels:
        if label not in names:
            names.append(label)
    for e in effects or ():
        if e.region not in names:
            names.append(e.region)
    return names


def _region_indices(
    label_map: np.ndarray, affine: np.ndarray, data_cfg: Any, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """``{region: flat voxel indices}`` for every name; label names beyond the vocabulary
    (e.g. ``heart``) are the voxels with that label value."""
    from unveil.data.regions import REGIONS, region_masks

    vocab = [n for n in names if all(p.strip() in REGIONS for p in n.split("&"))]
    masks = region_masks(label_map, affine, data_cfg, names=vocab)
    for n in names:
        if n not in masks:
            masks[n] = label_map == data_cfg.labels[n]
    # Flat indices: each region is gathered once per volume instead of masking a full grid.
    return {n: np.flatnonzero(masks[n]) for n in names}


def _region_means(flat: np.ndarray, idx: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Voxel mean of ``flat`` (a raveled volume) in each region; NaN for an empty region."""
    return {
        r: (float(flat[i].mean(dtype=np.float64)) if i.size else math.nan) for r, i in idx.items()
    }


def _read_generated(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from unveil.data.io import read_volume

    vol = read_volume(path, dtype=np.float32)
    if vol.shape != tuple(shape):
        raise UnveilError(
            f"{path} has shape {vol.shape} but the subject's mask has {tuple(shape)}; generated "
            "volumes must be on the source grid, re-run unveil counterfactual."
        )
    return vol.array


def expected_shift_means(
    effects: Sequence[Any],
    edit: ParsedEdit,
    attributes: Mapping[str, Any],
    idx: Mapping[str, np.ndarray],
) -> dict[str, float]:
    """Planted shift an edit should produce, averaged in each region, for one subject.

    The expected difference map is built voxelwise as (effects of the edited attributes)
    minus (effects of the true attributes), each effect added exactly inside its region,
    which is what :func:`unveil.data.effects.apply_effects` does; it is done here on the
    flat region indices already computed, instead of recomputing the region masks for
    every edit.  An effect planted in ``upper_lung`` thus counts in ``lung`` in proportion
    to its voxels.

    Args:
        effects: the planted :class:`~unveil.data.effects.EffectSpec` list.
        edit: the edit; attributes: the subject's TRUE attributes (column -> value).
        idx: ``{region: flat voxel indices}``; it must hold every effect's region.

    Returns:
        ``{region: mean expected HU}`` for every region of ``idx`` (NaN where empty).
    """
    from unveil.data.effects import effect_shift

    n = 1 + max((int(i.max()) for i in idx.values() if i.size), default=0)
    expected = np.zeros(n)
    for region, hu in effect_shift(effects, edit.apply(attributes)):
        expected[idx[region]] += hu
    for region, hu in effect_shift(effects, attributes):
        expected[idx[region]] -= hu
    return _region_means(expected, idx)


# ------------------------------------------------------------------------------ maps


def display_slices(volume: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    """Axial and coronal slices through the centre of ``mask``, ready for ``imshow``.

    The arrays are reoriented to RAS first, so the result does not depend on how the
    volume is stored, and laid out in radiological convention for
    ``imshow(..., origin="lower")``: patient's right on the image's left, anterior (axial)
    or superior (coronal) at the top.

    Args:
        volume: ``(X, Y, Z)`` values; mask: bool ``(X, Y, Z)`` (the lungs) whose bounding-box
            centre chooses the slices (the grid centre when it is empty).
        affine: ``(4, 4)`` voxel -> RAS mm.

    Returns:
        ``{"axial", "axial_mask", "coronal", "coronal_mask"}`` 2D arrays (rows, columns),
        ``"axial_aspect"`` / ``"coronal_aspect"`` (row mm / column mm, for ``aspect=``)
        and ``"centre"`` (RAS voxel indices of the slices).
    """
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    d = nib.orientations.apply_orientation(volume, ornt)
    m = nib.orientations.apply_orientation(mask.astype(np.uint8), ornt) > 0
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    centre = []
    for ax in range(3):
        hit = np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != ax)))
        centre.append(int(hit.min() + hit.max()) // 2 if hit.size else d.shape[ax] // 2)
    # In the RAS array index 0 grows towards the patient's right, 1 towards anterior, 2
    # towards superior.  Transposing puts A (or S) on the rows, and reversing the columns
    # puts the patient's right on the image's left.
    return {
        "axial": d[:, :, centre[2]].T[:, ::-1],
        "axial_mask": m[:, :, centre[2]].T[:, ::-1],
        "coronal": d[:, centre[1], :].T[:, ::-1],
        "coronal_mask": m[:, centre[1], :].T[:, ::-1],
        "axial_aspect": float(spacing[1] / spacing[0]),
        "coronal_aspect": float(spacing[2] / spacing[0]),
        "centre": tuple(centre),
    }


def save_map_png(
    diff: np.ndarray,
    lung: np.ndarray,
    affine: np.ndarray,
    path: Path,
    title: str,
    limit_hu: float,
    label: str = "HU (edited - factual, mean over seeds)",
) -> None:
    """Axial and coronal mid-lung slices of a difference map with a diverging HU colour bar.

    Slices come from :func:`display_slices` (radiological convention, lung outline drawn),
    on a fixed symmetric scale ``[-limit_hu, +limit_hu]`` so maps of different subjects and
    edits compare by eye.

    Args:
        diff: HU difference, ``(X, Y, Z)``; lung: bool lung mask on the same grid.
        affine: ``(4, 4)`` voxel -> RAS mm.
        path: the PNG to write (atomically).
        label: the colour bar's label.
    """
    # The object API with an explicit Agg canvas: no pyplot global state, no backend switch,
    # and fixed axes positions (layout engines cost more than the drawing at these sizes).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from unveil.fs import atomic_path

    sl = display_slices(diff, lung, affine)
    centre = sl["centre"]
    axial, axial_m, coronal, coronal_m = (
        sl["axial"],
        sl["axial_mask"],
        sl["coronal"],
        sl["coronal_mask"],
    )
    fig = Figure(figsize=(9, 4.4))
    FigureCanvasAgg(fig)
    axes = [fig.add_axes((0.02, 0.05, 0.4, 0.8)), fig.add_axes((0.45, 0.05, 0.4, 0.8))]
    cax = fig.add_axes((0.88, 0.12, 0.02, 0.66))
    im = None
    for ax, img, msk, name, aspect in (
        (axes[0], axial, axial_m, f"axial (slice {centre[2]})", sl["axial_aspect"]),
        (axes[1], coronal, coronal_m, f"coronal (slice {centre[1]})", sl["coronal_aspect"]),
    ):
        im = ax.imshow(
            img, cmap="RdBu_r", vmin=-limit_hu, vmax=limit_hu, origin="lower", aspect=aspect
        )
        if msk.any() and not msk.all():
            ax.contour(msk.astype(float), levels=[0.5], colors="k", linewidths=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.01, 0.5, "R", transform=ax.transAxes, fontsize=9, va="center")
        ax.text(0.97, 0.5, "L", transform=ax.transAxes, fontsize=9, va="center")
    cbar = fig.colorbar(im, cax=cax, extend="both")
    cbar.set_label(label)
    fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


# ------------------------------------------------------------------------------ analysis


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=list(columns))
    return df.to_csv(index=False, na_rep="", lineterminator="\n", float_format="%.6g")


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN and inf become None (JSON has no such numbers), numpy -> python."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _contains_zero(lo: float, hi: float) -> bool:
    return bool(math.isfinite(lo) and math.isfinite(hi) and lo <= 0.0 <= hi)


def _rng(seed: int, *key: int) -> np.random.Generator:
    # One independent stream per output row, so a row's interval does not depend on how
    # many rows came before it (adding a region leaves the others' intervals unchanged).
    return np.random.default_rng(np.random.SeedSequence([int(seed), *key]))


def analyze_run(
    root: str | os.PathLike,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    test: str = "wilcoxon",
    map_limit_hu: float = 100.0,
    progress: bool = True,
    min_effect_hu: float = 0.0,
) -> dict[str, Any]:
    """Analyse a counterfactual run and write ``RUN/analysis/`` (see the module doc).

    Args:
        root: the run folder written by ``unveil counterfactual``.
        n_boot: bootstrap resamples per interval.
        alpha: false-discovery rate for ``significant`` (BH over all edit x region rows).
        seed: seed of the bootstrap streams (results are reproducible for a given seed).
        test: paired test, ``"wilcoxon"`` (signed-rank, default) or ``"t"``; see
            :func:`unveil.analysis.stats.paired_test`.
        map_limit_hu: the PNG colour scale is ``[-map_limit_hu, +map_limit_hu]`` HU for
            every subject and edit, so maps compare by eye.
        progress: show a progress bar over subjects.
        min_effect_hu: minimum effect of interest; a region is significant only when its
            shift beyond the noise floor exceeds this many HU (0: any shift; see
            :func:`unveil.analysis.stats.paired_test`).

    Returns:
        The ``results.json`` content (NaN written as None).
    """
    from tqdm import tqdm

    from unveil.data.cohort import Cohort
    from unveil.data.io import Volume, write_volume
    from unveil.data.regions import REGIONS_RULE
    from unveil.fs import atomic_dir, write_json, write_text

    if not 0.0 < alpha < 1.0:
        raise UnveilError(
            f"--alpha {alpha} is not a rate; give a number between 0 and 1, e.g. 0.05."
        )
    if n_boot < 100:
        raise UnveilError(
            f"--n-boot {n_boot} is too few resamples for a 95% interval; use at least 100 (2000 for reporting)."
        )
    if test not in ("wilcoxon", "t"):
        raise UnveilError(f"--test {test} is unknown; use wilcoxon or t.")
    root = Path(root)
    layout = RunLayout(root)
    run = read_run(root)
    data_cfg = _data_cfg(run)
    cohort_root = _cohort_root(run, root)
    cohort = Cohort.open(cohort_root, data_cfg, require_table=True)
    eff_info = load_effects(cohort_root)
    effects = eff_info[0] if eff_info else None
    regions = region_names(data_cfg, effects)
    template = _template_from_run(run)
    edits = [str(e) for e in run["edits"]]
    null_edits = [str(e) for e in run["null_edits"]]
    all_edits = edits + [e for e in null_edits if e not in edits]
    parsed = {e: parse_run_edit(e, template) for e in all_edits}
    # Baseline edits were applied to every subject's row before both the factual and the
    # edited prompts were rendered, so the planted expectation starts from them too.
    baseline = [parse_run_edit(str(b), template) for b in run.get("baseline") or []]
    # Negative controls: the run's null edits, and any edit of an attribute the cohort's
    # effects.json declares effect-free (it is a null edit whatever the run called it).
    null_attrs = set(eff_info[1]) if eff_info else set()
    controls = [e for e in all_edits if e in null_edits or parsed[e].column in null_attrs]
    seeds = [int(k) for k in run["seeds"]]
    subjects = [str(s) for s in run["subjects"]]
    absent = [s for s in subjects if s not in cohort.ids]
    if absent:
        raise UnveilError(
            f"subject {absent[0]} of {layout.json_path} is not a complete subject of cohort "
            f"{cohort_root}; run unveil check {cohort_root}, or re-run unveil counterfactual."
        )
    clinical = cohort.rows()
    truth = _truth_rows(cohort_root, data_cfg.id_column, clinical) if effects else {}
    hu_lo, hu_hi = (float(v) for v in run.get("hu_window") or (-1000.0, 500.0))

    n_s, n_r, n_e = len(subjects), len(regions), len(all_edits)
    edit_vals = np.full((n_e, n_s, n_r), math.nan)  # per subject, mean over seeds
    floor_vals = np.full((n_s, n_r), math.nan)
    planted = np.full((n_e, n_s, n_r), math.nan)
    real_means: dict[str, np.ndarray] = {}
    saturated: list[float] = []
    subject_rows: list[dict[str, Any]] = []
    notes: list[str] = []

    with atomic_dir(layout.analysis_dir, overwrite=True) as out:
        for si, sid in enumerate(
            tqdm(subjects, desc="analyze", unit="subject", disable=not progress)
        ):
            image, mask = cohort.load(sid)
            idx = _region_indices(mask.array, mask.affine, data_cfg, regions)
            nvox = {r: int(i.size) for r, i in idx.items()}
            real_means[sid] = np.array(list(_region_means(image.array.ravel(), idx).values()))
            del image
            shape = mask.shape
            # float32 running sums: a few seeds of HU differences need no more precision, and
            # one full-grid array per edit is the analysis' largest memory cost.
            sums = {e: np.zeros(shape, dtype=np.float32) for e in [NOISE_FLOOR, *all_edits]}
            per_seed_floor = np.zeros((len(seeds), n_r))
            per_seed_edit = np.zeros((n_e, len(seeds), n_r))
            lung = idx["lung"]
            for kk, k in enumerate(seeds):
                fac = _read_generated(layout.factual(sid, k), shape)
                if lung.size:
                    v = fac.ravel()[lung]
                    saturated.append(float(np.mean((v <= hu_lo + 0.5) | (v >= hu_hi - 0.5))))
                diff = _read_generated(layout.floor(sid, k), shape) - fac
                sums[NOISE_FLOOR] += diff
                means = _region_means(diff.ravel(), idx)
                per_seed_floor[kk] = list(means.values())
                subject_rows += [
                    dict(
                        id=sid,
                        contrast=NOISE_FLOOR,
                        seed=k,
                        region=r,
                        n_voxels=nvox[r],
                        mean_diff_hu=m,
                    )
                    for r, m in means.items()
                ]
                for ei, e in enumerate(all_edits):
                    diff = _read_generated(layout.edited(sid, e, k), shape) - fac
                    sums[e] += diff
                    means = _region_means(diff.ravel(), idx)
                    per_seed_edit[ei, kk] = list(means.values())
                    subject_rows += [
                        dict(id=sid, contrast=e, seed=k, region=r, n_voxels=nvox[r], mean_diff_hu=m)
                        for r, m in means.items()
                    ]
            floor_vals[si] = per_seed_floor.mean(axis=0)
            edit_vals[:, si] = per_seed_edit.mean(axis=1)
            lung_mask = np.zeros(shape, dtype=bool)
            lung_mask.ravel()[lung] = True
            # The noise floor gets a map too, on the same colour scale: what a change of seed
            # alone looks like is the reference a reader needs beside each edit's map.
            for e in [*all_edits, NOISE_FLOOR]:
                mean_map = (sums[e] / len(seeds)).astype(np.float32)
                rel = layout.map_nifti(sid, e).relative_to(layout.analysis_dir)
                write_volume(Volume(mean_map, mask.affine), out / rel)
                save_map_png(
                    mean_map,
                    lung_mask,
                    mask.affine,
                    out / layout.map_png(sid, e).relative_to(layout.analysis_dir),
                    f"{sid}: {e} (mean of {len(seeds)} seed(s))",
                    map_limit_hu,
                    "HU (floor - factual, mean over seeds)"
                    if e == NOISE_FLOOR
                    else "HU (edited - factual, mean over seeds)",
                )
            del sums
            if effects and sid in truth:
                start = dict(truth[sid])
                for b in baseline:
                    start = b.apply(start)
                for ei, e in enumerate(all_edits):
                    if parsed[e].op != "unset":
                        exp = expected_shift_means(effects, parsed[e], start, idx)
                        planted[ei, si] = list(exp.values())

        # The observed association uses every complete subject of the real cohort, not only
        # the run's: it is a property of the cohort, and more subjects narrow its interval.
        others = [s for s in cohort.ids if s not in real_means]
        for sid in tqdm(
            others, desc="observed", unit="subject", disable=not progress or not others
        ):
            image, mask = cohort.load(sid)
            idx = _region_indices(mask.array, mask.affine, data_cfg, regions)
            real_means[sid] = np.array(list(_region_means(image.array.ravel(), idx).values()))

        cohort_rows = _cohort_stats(
            all_edits,
            controls,
            regions,
            edit_vals,
            floor_vals,
            n_boot,
            seed,
            test,
            len(seeds),
            min_effect_hu,
        )
        q = benjamini_hochberg([r["p_value"] for r in cohort_rows])
        for r, qv in zip(cohort_rows, q, strict=True):
            r["q_value"] = float(qv)
            r["significant"] = bool(math.isfinite(qv) and qv < alpha)
        observed_rows = _observed(
            all_edits, parsed, regions, real_means, clinical, n_boot, seed, notes
        )
        recovery_rows = (
            _recovery(
                all_edits,
                controls,
                parsed,
                regions,
                edit_vals,
                planted,
                cohort_rows,
                n_boot,
                seed,
            )
            if effects
            else []
        )

        if saturated and float(np.mean(saturated)) > 0.01:
            notes.append(
                f"{100 * float(np.mean(saturated)):.1f}% of lung voxels of the factual volumes lie at "
                f"an edge of the HU window [{hu_lo:g}, {hu_hi:g}], where a shift beyond the window "
                "cannot show: differences there are underestimated."
            )
        n_min = min((r["n_subjects"] for r in cohort_rows), default=0)
        if test == "wilcoxon" and n_min and 2.0 / 2**n_min >= alpha:
            notes.append(
                f"with {n_min} subject(s) the two-sided signed-rank test cannot reach p < {alpha:g} "
                f"(its smallest p is {2.0 / 2**n_min:.3g}); use more subjects or --test t."
            )
        if not controls:
            notes.append("the run has no null edit, so there is no negative control.")

        verdict = _verdict(
            all_edits, controls, parsed, cohort_rows, recovery_rows, effects, alpha, test, notes
        )
        results = _clean(
            {
                "run": {k: v for k, v in run.items() if k != "config"},
                "settings": {
                    "n_boot": n_boot,
                    "alpha": alpha,
                    "seed": seed,
                    "test": test,
                    "min_effect_hu": min_effect_hu,
                    "bootstrap": "BCa over subjects (percentile where BCa is undefined)",
                    "fdr": f"Benjamini-Hochberg over all {len(cohort_rows)} (edit, region) rows",
                    "unit": "subject (regional voxel mean, averaged over seeds)",
                    "regions": regions,
                    "regions_rule": REGIONS_RULE,
                    "null_controls": controls,
                    "map_limit_hu": map_limit_hu,
                },
                "cohort_stats": cohort_rows,
                "observed": observed_rows,
                "recovery": recovery_rows,
                "verdict": verdict,
                "alpha": alpha,
            }
        )
        write_text(out / "subject_regions.csv", _csv_text(subject_rows, SUBJECT_COLUMNS))
        write_text(out / "cohort_stats.csv", _csv_text(cohort_rows, COHORT_COLUMNS))
        write_text(out / "observed.csv", _csv_text(observed_rows, OBSERVED_COLUMNS))
        write_text(out / "recovery.csv", _csv_text(recovery_rows, RECOVERY_COLUMNS))
        write_json(out / "results.json", results)
    return results


def _cohort_stats(
    all_edits: Sequence[str],
    null_edits: Sequence[str],
    regions: Sequence[str],
    edit_vals: np.ndarray,
    floor_vals: np.ndarray,
    n_boot: int,
    seed: int,
    test: str,
    n_seeds: int,
    min_effect_hu: float = 0.0,
) -> list[dict[str, Any]]:
    """One row per (edit, region) with subjects; p-values filled, q-values left to the caller."""
    rows = []
    for ei, e in enumerate(all_edits):
        for ri, r in enumerate(regions):
            ev, fv = edit_vals[ei, :, ri], floor_vals[:, ri]
            keep = np.isfinite(ev) & np.isfinite(fv)
            n = int(keep.sum())
            if n == 0:
                continue  # region absent in every subject (e.g. no airway label)
            ev, fv = ev[keep], fv[keep]
            lo, hi = bootstrap_ci(ev, _rng(seed, 0, ei, ri), n_boot)
            stat, p, name = paired_test(ev, fv, test=test, margin=min_effect_hu)
            rows.append(
                {
                    "contrast": e,
                    "region": r,
                    "n_subjects": n,
                    "mean_diff_hu": float(ev.mean()),
                    "ci_low": lo,
                    "ci_high": hi,
                    "floor_mean_hu": float(fv.mean()),
                    "floor_sd_hu": float(fv.std(ddof=1)) if n > 1 else math.nan,
                    "effect_size_dz": effect_size_dz(ev, fv),
                    "statistic": stat,
                    "p_value": p,
                    "q_value": math.nan,
                    "significant": False,
                    "test": name,
                    "null_control": e in null_edits,
                    "n_seeds": n_seeds,
                }
            )
    return rows


def _observed(
    all_edits: Sequence[str],
    parsed: Mapping[str, ParsedEdit],
    regions: Sequence[str],
    real_means: Mapping[str, np.ndarray],
    clinical: Mapping[str, Mapping[str, Any]],
    n_boot: int,
    seed: int,
    notes: list[str],
) -> list[dict[str, Any]]:
    """The association in the real cohort, per edit and region (see :func:`analyze_run`).

    Category ``set`` edits: subjects whose value is the target (group a) against those with
    any other recorded value (group b), difference of regional mean HU with a bootstrap CI.
    Numeric edits: the least-squares slope of regional mean HU on the attribute, scaled to
    what the edit changes: ``delta`` for ``+=``/``-=``, and ``target - mean(x)`` for a
    ``set`` (the mean change a linear association predicts).  ``unset`` edits have no
    real-cohort counterpart (a missing value is not a value) and are skipped.  Subjects with
    the attribute missing are excluded.
    """
    from unveil.data.effects import same_value

    ids = list(real_means)
    rows: list[dict[str, Any]] = []
    for ei, e in enumerate(all_edits):
        pe = parsed[e]
        if pe.op == "unset":
            notes.append(
                f"{e}: no observed association for an unset edit (a missing value is not a group)."
            )
            continue
        values = {s: clinical.get(s, {}).get(pe.column) for s in ids}
        known = [s for s in ids if not _missing(values[s])]
        if not known:
            notes.append(
                f"{e}: column '{pe.column}' has no recorded value in the cohort table; no observed association."
            )
            continue
        y = np.stack([real_means[s] for s in known])  # (N, R)
        if pe.numeric:
            x = np.array(
                [_number(values[s]) if _number(values[s]) is not None else math.nan for s in known]
            )
            if pe.op == "set":
                scale = float(pe.value) - float(np.nanmean(x))
            else:
                scale = float(pe.value) if pe.op == "add" else -float(pe.value)
            for ri, r in enumerate(regions):
                slope, lo, hi = slope_with_ci(x, y[:, ri], _rng(seed, 1, ei, ri), n_boot)
                ends = sorted([lo * scale, hi * scale])
                ok = np.isfinite(x) & np.isfinite(y[:, ri])
                rows.append(
                    {
                        "attribute": pe.column,
                        "group_a": f"slope x {scale:+.4g} {pe.column}",
                        "group_b": "",
                        "region": r,
                        "n_a": int(ok.sum()),
                        "n_b": 0,
                        "mean_hu_a": float(y[ok, ri].mean()) if ok.any() else math.nan,
                        "mean_hu_b": math.nan,
                        "diff_hu": slope * scale,
                        "ci_low": ends[0],
                        "ci_high": ends[1],
                        "contrast": e,
                        "method": "least-squares slope x edit change, bootstrap over subjects",
                    }
                )
            continue
        in_a = np.array([same_value(values[s], pe.value) for s in known])
        small = min(int(in_a.sum()), int((~in_a).sum()))
        if small < 5:
            notes.append(
                f"{e}: the observed association compares groups of {int(in_a.sum())} and "
                f"{int((~in_a).sum())} subjects; a bootstrap interval from fewer than 5 subjects "
                "per group is too narrow to trust."
            )
        for ri, r in enumerate(regions):
            a, b = y[in_a, ri], y[~in_a, ri]
            diff, lo, hi = two_group_difference(a, b, _rng(seed, 1, ei, ri), n_boot)
            a_f, b_f = a[np.isfinite(a)], b[np.isfinite(b)]
            rows.append(
                {
                    "attribute": pe.column,
                    "group_a": f"{pe.column}={pe.value}",
                    "group_b": f"{pe.column}!={pe.value}",
                    "region": r,
                    "n_a": int(a_f.size),
                    "n_b": int(b_f.size),
                    "mean_hu_a": float(a_f.mean()) if a_f.size else math.nan,
                    "mean_hu_b": float(b_f.mean()) if b_f.size else math.nan,
                    "diff_hu": diff,
                    "ci_low": lo,
                    "ci_high": hi,
                    "contrast": e,
                    "method": "difference of group means, bootstrap over subjects",
                }
            )
    return rows


def _recovery(
    all_edits: Sequence[str],
    null_edits: Sequence[str],
    parsed: Mapping[str, ParsedEdit],
    regions: Sequence[str],
    edit_vals: np.ndarray,
    planted: np.ndarray,
    cohort_rows: Sequence[Mapping[str, Any]],
    n_boot: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Planted vs recovered mean shift per edit and region.

    ``planted_hu`` is the mean over subjects of the expected regional shift (edited minus
    factual true attributes); ``recovered_hu`` the mean measured difference over the same
    subjects, with its bootstrap CI.  Where nothing was planted (``planted_hu == 0``) a
    relative error is undefined and ``sign_ok`` / ``within_30pct`` both mean "the CI holds
    zero"; otherwise ``sign_ok`` is agreement of signs and ``within_30pct`` is
    ``|error| <= 0.3 |planted|``.
    """
    ci_of = {(r["contrast"], r["region"]): r for r in cohort_rows}
    rows = []
    for ei, e in enumerate(all_edits):
        if parsed[e].op == "unset":
            continue
        for ri, r in enumerate(regions):
            ev, pv = edit_vals[ei, :, ri], planted[ei, :, ri]
            keep = np.isfinite(ev) & np.isfinite(pv)
            if not keep.any() or (e, r) not in ci_of:
                continue
            row = ci_of[(e, r)]
            if int(keep.sum()) == row["n_subjects"]:
                lo, hi = row["ci_low"], row["ci_high"]
            else:  # some subjects lack a truth row: the interval over those with one
                lo, hi = bootstrap_ci(ev[keep], _rng(seed, 2, ei, ri), n_boot)
            plant = float(pv[keep].mean())
            rec = float(ev[keep].mean())
            err = rec - plant
            if plant == 0.0:
                rel = math.nan
                sign_ok = within = _contains_zero(lo, hi)
            else:
                rel = err / abs(plant)
                sign_ok = bool(np.sign(rec) == np.sign(plant))
                within = bool(abs(err) <= RECOVERY_TOLERANCE * abs(plant))
            rows.append(
                {
                    "contrast": e,
                    "region": r,
                    "planted_hu": plant,
                    "recovered_hu": rec,
                    "ci_low": lo,
                    "ci_high": hi,
                    "error_hu": err,
                    "relative_error": rel,
                    "sign_ok": sign_ok,
                    "within_30pct": within,
                    "null_control": e in null_edits,
                }
            )
    return rows


def _fmt_ci(row: Mapping[str, Any]) -> str:
    return f"{row['mean_diff_hu']:+.1f} HU [{row['ci_low']:+.1f}, {row['ci_high']:+.1f}]"


def _verdict(
    all_edits: Sequence[str],
    null_edits: Sequence[str],
    parsed: Mapping[str, ParsedEdit],
    cohort_rows: Sequence[Mapping[str, Any]],
    recovery_rows: Sequence[Mapping[str, Any]],
    effects: Sequence[Any] | None,
    alpha: float,
    test: str,
    notes: list[str],
) -> dict[str, Any]:
    """Per edit the regions significant after correction; the null control; the recovery."""
    per_edit = []
    for e in all_edits:
        sig = [r for r in cohort_rows if r["contrast"] == e and r["significant"]]
        is_null = e in null_edits
        if is_null:
            summary = (
                "null control passed: no region differs from the noise floor"
                if not sig
                else "null control FAILED: significant in " + ", ".join(r["region"] for r in sig)
            )
        elif sig:
            summary = "significant in " + "; ".join(f"{r['region']} {_fmt_ci(r)}" for r in sig)
        else:
            summary = f"no region differs from the noise floor at FDR {alpha:g}"
        per_edit.append(
            {
                "contrast": e,
                "null_control": is_null,
                "significant_regions": [r["region"] for r in sig],
                "summary": summary,
            }
        )
    null_passed = (
        None
        if not null_edits
        else all(not v["significant_regions"] for v in per_edit if v["null_control"])
    )
    recovery = None
    if effects:
        # Judge each edit in the regions where its attribute's effects were planted: size
        # (within 30%), sign, and place (significant there after correction).
        sig_of = {(r["contrast"], r["region"]): r["significant"] for r in cohort_rows}
        checked = []
        for row in recovery_rows:
            e = row["contrast"]
            if row["null_control"] or row["planted_hu"] == 0.0:
                continue
            places = {x.region for x in effects if x.attribute == parsed[e].column}
            if row["region"] not in places:
                continue
            ok = bool(
                row["sign_ok"] and row["within_30pct"] and sig_of.get((e, row["region"]), False)
            )
            checked.append(
                {
                    "contrast": e,
                    "region": row["region"],
                    "planted_hu": row["planted_hu"],
                    "recovered_hu": row["recovered_hu"],
                    "ok": ok,
                }
            )
        recovery = {
            "checked": checked,
            "passed": (
                None
                if not checked and null_passed is None
                else all(c["ok"] for c in checked) and null_passed is not False
            ),
            "rule": (
                "in each region where the edited attribute's effect was planted: sign right, "
                "size within 30%, significant after correction; and nothing significant for "
                "the null edits"
            ),
        }
    return {
        "alpha": alpha,
        "test": test,
        "edits": per_edit,
        "null_control_passed": null_passed,
        "recovery": recovery,
        "notes": notes,
    }


def format_table(results: Mapping[str, Any], max_rows: int | None = None) -> str:
    """The cohort rows as a compact plain table: contrast, region, mean [CI], q, significance."""
    rows = list(results.get("cohort_stats", []))
    if max_rows is not None:
        rows = rows[:max_rows]

    def num(v: Any, spec: str) -> str:
        return "nan" if v is None else format(v, spec)

    width = max([len("contrast"), *(len(r["contrast"]) for r in rows)])
    rwidth = max([len("region"), *(len(r["region"]) for r in rows)])
    lines = [
        f"{'contrast':<{width}}  {'region':<{rwidth}}  {'mean HU [95% CI]':>28}  {'q':>8}  sig"
    ]
    for r in rows:
        ci = f"{num(r['mean_diff_hu'], '+.1f')} [{num(r['ci_low'], '+.1f')}, {num(r['ci_high'], '+.1f')}]"
        mark = "*" if r["significant"] else ""
        if r["null_control"]:
            mark += " (null)"
        lines.append(
            f"{r['contrast']:<{width}}  {r['region']:<{rwidth}}  {ci:>28}  {num(r['q_value'], '8.3g')}  {mark}"
        )
    return "\n".join(lines)
