"""``unveil analyze RUN``: what each edit changes, in HU, per region, against chance.

Reads a counterfactual run (:mod:`unveil.records`) and its cohort, and writes
``RUN/analysis/``.  The statistics are explained in ``docs/statistics.md``; in short:

- the **subject is the unit**: a subject's effect in a region is the mean over its seeds
  of the regional mean of (edited - factual), and the test is those effects against
  zero across subjects (signed-rank or t), with a BCa bootstrap CI of the mean;
- the **noise floor** (floor - factual: same prompt, another seed) is reported, with the
  minimum detectable effect it implies, but it is not the comparator;
- **negative controls** (null edits, edits of an attribute ``effects.json`` declares
  effect-free, and ``permuted_controls``) calibrate: their estimates fit the model's
  systematic-error distribution N(mu, tau^2) (Schuemie et al., Stat Med 2014), and every
  real edit gets a calibrated p beside its raw p; ``significant`` uses the calibrated
  q-value when at least :data:`MIN_CALIBRATION_ROWS` control rows exist;
- **specificity**: each contrast's peak region and its spill outside it;
- beside the counterfactual, the **raw** and the **adjusted** association in the real
  cohort (OLS on every attribute of the table, HC3 covariance).

Files:

``subject_regions.csv``
    one row per subject, contrast (an edit, a control, or ``noise_floor``), seed and
    region: the voxel mean of (edited - factual), or (floor - factual), in HU.
``cohort_stats.csv``
    per contrast and region, over subjects: mean effect with a BCa CI, SD, SE, d_z, the
    test against zero (raw p and q), the calibrated p and q, ``significant``, the control
    kind, and the region's noise floor (mean, SD across subjects, seed-to-seed SD, minimum
    detectable effect).
``noise_floor.csv``
    the noise floor per region (the same numbers as in cohort_stats).
``specificity.csv``
    per contrast: peak region, spill outside it in the lung, spill fraction, airway.
``observed.csv``
    the raw association in the real cohort: regional mean HU of the real scans, target
    group vs the run's baseline value (or the rest, without a baseline) for a category, a
    least-squares slope scaled to the edit for a number.  It may be confounded.
``adjusted.csv``
    the association adjusted for every other attribute of the clinical table.
``recovery.csv``
    only when the cohort has ``effects.json``: planted vs recovered shift per edit and
    region, with the tolerance checks.
``results.json``
    all of the above plus the run description, the calibration, a verdict and the
    settings.
``maps/<id>/<contrast>_mean_diff.nii.gz|.png``
    mean over seeds of (edited - factual) in HU on the source grid, and a PNG of its
    mid-lung slices; ``maps/<id>/noise_floor_mean_diff.*`` is the same for (floor -
    factual), the picture of chance on the same colour scale.

The whole ``analysis/`` folder is built aside and moved into place at the end, so it is
complete or absent; a re-run replaces it.  A generated volume holding NaN or inf is
refused (:class:`~unveil.errors.DataError`) instead of being averaged into NaN rows.  A
CSV text cell a spreadsheet would run as a formula (an id ``=cmd``) is written ``'=cmd``
(:mod:`unveil.csvsafe`); the raw ids stay in ``results.json`` (``run.subjects``) and in
the ``maps/<id>/`` folder names.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unveil.analysis.stats import (
    MISSING_LEVEL,
    benjamini_hochberg,
    bootstrap_ci,
    calibrated_p,
    design_matrix,
    effect_size_dz,
    fit_systematic_error,
    level_name,
    minimum_detectable_effect,
    ols_hc3_contrasts,
    one_sample_test,
    slope_with_ci,
    specificity,
    standard_error,
    two_group_difference,
)
from unveil.config import DEFAULT_HU_WINDOW
from unveil.errors import DataError, UnveilError
from unveil.records import RUN_JSON, RunLayout, read_run
from unveil.text.edits import parse_edit, split_edit

log = logging.getLogger(__name__)

#: Contrast name of the noise floor (floor - factual) in subject_regions.csv.
NOISE_FLOOR = "noise_floor"

#: Kinds of negative control (``control_kind`` column); real edits have ``""``.
CONTROL_KINDS: tuple[str, ...] = ("null_edit", "effect_free", "permuted")

#: Fewest (control, region) rows for the empirical calibration to be fitted.
MIN_CALIBRATION_ROWS = 3

#: Power the minimum detectable effect is computed for.
MDE_POWER = 0.8

#: Lung partitions among which the peak of an effect is sought (with any ``&``
#: intersection of them that is in the region list, e.g. a planted region).
PEAK_REGIONS: tuple[str, ...] = (
    "upper_lung",
    "middle_lung",
    "lower_lung",
    "lung_core",
    "lung_periphery",
)
#: The lung zones checked for spill where nothing was planted.
ZONES: tuple[str, ...] = ("upper_lung", "middle_lung", "lower_lung")

#: Column orders of the CSV outputs.
SUBJECT_COLUMNS = ("id", "contrast", "seed", "region", "n_voxels", "mean_diff_hu")
COHORT_COLUMNS = (
    "contrast",
    "region",
    "n_subjects",
    "mean_diff_hu",
    "ci_low",
    "ci_high",
    "sd_hu",
    "se_hu",
    "effect_size_dz",
    "statistic",
    "p_value",
    "q_value",
    "se_train_hu",
    "se_total_hu",
    "p_total",
    "q_total",
    "p_calibrated",
    "q_calibrated",
    "significant",
    "test",
    "null_control",
    "control_kind",
    "floor_mean_hu",
    "floor_sd_hu",
    "seed_sd_hu",
    "mde_hu",
    "n_seeds",
)
NOISE_FLOOR_COLUMNS = (
    "region",
    "n_subjects",
    "n_seeds",
    "floor_mean_hu",
    "floor_sd_hu",
    "seed_sd_hu",
    "mde_hu",
)
SPECIFICITY_COLUMNS = (
    "contrast",
    "null_control",
    "peak_region",
    "peak_hu",
    "peak_ci_low",
    "peak_ci_high",
    "spill_hu",
    "spill_ci_low",
    "spill_ci_high",
    "spill_fraction",
    "airway_hu",
    "airway_ci_low",
    "airway_ci_high",
    "n_subjects",
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
ADJUSTED_COLUMNS = (
    "contrast",
    "attribute",
    "region",
    "term_a",
    "term_b",
    "scale",
    "n_subjects",
    "n_parameters",
    "diff_hu",
    "se_hu",
    "ci_low",
    "ci_high",
    "p_value",
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
    "within_tolerance",
    "within_30pct",
    "null_control",
)

#: Default relative error allowed for a planted shift to count as recovered.
RECOVERY_TOLERANCE = 0.30
#: Default largest |shift| (HU) allowed in a lung zone where nothing was planted.
SPILL_LIMIT_HU = 5.0
#: Below this size (HU) a planted shift counts as nothing planted.
PLANTED_EPS_HU = 1e-6


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
    parts = split_edit(text)
    if parts is not None and parts[1] == "unset":
        return ParsedEdit(text, parts[0], parts[0], "unset", None, False)
    if parts is None or not parts[2]:
        raise UnveilError(
            f"edit '{text}' in {RUN_JSON} is not of the form field=value, field+=number, "
            "field-=number or unset-field; re-run unveil counterfactual."
        )
    name, sign, raw = parts
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
    # A NaN or inf would make every regional mean it touches NaN, and the rows then read
    # as "no region differs from the noise floor"; the whole volume is checked (one pass).
    if not np.isfinite(vol.array).all():
        n_nan = int(np.isnan(vol.array).sum())
        n_inf = int(np.isinf(vol.array).sum())
        raise DataError(
            f"{path} holds {n_nan} NaN and {n_inf} infinite voxel(s): the generator produced "
            "non-finite values (a diverged model or a non-finite --guidance-scale); "
            "regenerate the run with unveil counterfactual."
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

    Slices come from :func:`unveil.analysis.figures.display_slices` (radiological
    convention, through the lung centroid of :func:`~unveil.analysis.figures.lung_centre`,
    lung outline drawn),
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

    from unveil.analysis.figures import display_slices
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
        im = ax.imshow(img, cmap="RdBu_r", vmin=-limit_hu, vmax=limit_hu, aspect=aspect)
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
    """A CSV of ``rows``; a text cell a spreadsheet would run as a formula (an id ``=cmd``)
    is written ``'=cmd`` (:mod:`unveil.csvsafe`; numbers are never changed, and the raw
    ids stay in ``results.json``'s ``run.subjects`` and the ``maps/<id>/`` folder names)."""
    import pandas as pd

    from unveil.csvsafe import neutralise_frame

    df = neutralise_frame(pd.DataFrame(list(rows), columns=list(columns)))
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


def _rng(seed: int, *key: int) -> np.random.Generator:
    # One independent stream per output row, so a row's interval does not depend on how
    # many rows came before it (adding a region leaves the others' intervals unchanged).
    return np.random.default_rng(np.random.SeedSequence([int(seed), *key]))


def _peak_candidates(regions: Sequence[str]) -> list[str]:
    """The regions of :data:`PEAK_REGIONS`, and ``&`` intersections of lung parts, present."""
    from unveil.data.regions import REGIONS

    lung_parts = {r for r in REGIONS if r not in ("lung", "airway")}
    out = [r for r in regions if r in PEAK_REGIONS]
    out += [
        r
        for r in regions
        if "&" in r and all(p.strip() in lung_parts for p in r.split("&")) and r not in out
    ]
    return out


def analyze_run(
    root: str | os.PathLike,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    test: str = "wilcoxon",
    map_limit_hu: float = 100.0,
    progress: bool = True,
    min_effect_hu: float = 0.0,
    recovery_tolerance: float = RECOVERY_TOLERANCE,
    spill_limit_hu: float = SPILL_LIMIT_HU,
) -> dict[str, Any]:
    """Analyse a counterfactual run and write ``RUN/analysis/`` (see the module doc).

    Args:
        root: the run folder written by ``unveil counterfactual``.
        n_boot: bootstrap resamples per interval.
        alpha: false-discovery rate for ``significant`` (Benjamini-Hochberg, over the
            real-edit rows and, separately, over the negative-control rows).
        seed: seed of the bootstrap streams (results are reproducible for a given seed).
        test: test of per-subject effects against zero, ``"wilcoxon"`` (signed-rank,
            default) or ``"t"``; see :func:`unveil.analysis.stats.one_sample_test`.
        map_limit_hu: the PNG colour scale is ``[-map_limit_hu, +map_limit_hu]`` HU for
            every subject and edit, so maps compare by eye.
        progress: show a progress bar over subjects.
        min_effect_hu: minimum effect of interest; a real edit's region is significant only
            when its shift exceeds this many HU (in the raw test against zero and, beyond
            the controls' systematic error, in the calibrated one).  Not applied to the
            negative controls, which must show nothing at all.
        recovery_tolerance: relative error allowed for a planted shift to count as
            recovered (0.30: within 30%).
        spill_limit_hu: largest |shift| allowed in a lung zone where nothing was planted.

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
    if not min_effect_hu >= 0.0:
        raise UnveilError(f"--min-effect {min_effect_hu} is negative; give 0 or more HU.")
    if not recovery_tolerance > 0.0:
        raise UnveilError(
            f"--tolerance {recovery_tolerance} is not a positive fraction; give e.g. 0.3."
        )
    if not spill_limit_hu >= 0.0:
        raise UnveilError(f"--spill-limit {spill_limit_hu} is negative; give 0 or more HU.")
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
    parseable = edits + [e for e in null_edits if e not in edits]
    permuted = [str(e) for e in run.get("permuted_controls") or [] if str(e) not in parseable]
    contrasts = parseable + permuted
    parsed = {e: parse_run_edit(e, template) for e in parseable}
    # Baseline edits were applied to every subject's row before both the factual and the
    # edited prompts were rendered, so the planted expectation starts from them too.
    baseline = [parse_run_edit(str(b), template) for b in run.get("baseline") or []]
    # Negative controls: the run's null edits, any edit of an attribute the cohort's
    # effects.json declares effect-free (it is a null edit whatever the run called it),
    # and the permuted-label contrasts (null by construction).
    null_attrs = set(eff_info[1]) if eff_info else set()
    kinds: dict[str, str] = {}
    for e in contrasts:
        if e in permuted:
            kinds[e] = "permuted"
        elif e in null_edits:
            kinds[e] = "null_edit"
        elif parsed[e].column in null_attrs:
            kinds[e] = "effect_free"
        else:
            kinds[e] = ""
    controls = [e for e in contrasts if kinds[e]]
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
    hu_lo, hu_hi = (float(v) for v in run.get("hu_window") or DEFAULT_HU_WINDOW)

    n_s, n_r, n_e, n_k = len(subjects), len(regions), len(contrasts), len(seeds)
    edit_vals = np.full((n_e, n_s, n_r), math.nan)  # per subject, mean over seeds
    floor_seed = np.full((n_s, n_k, n_r), math.nan)  # per subject and seed
    planted = np.full((n_e, n_s, n_r), math.nan)
    n_voxels = np.zeros((n_s, n_r))
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
            n_voxels[si] = [nvox[r] for r in regions]
            real_means[sid] = np.array(list(_region_means(image.array.ravel(), idx).values()))
            del image
            shape = mask.shape
            # float32 running sums: a few seeds of HU differences need no more precision, and
            # one full-grid array per contrast is the analysis' largest memory cost.
            sums = {e: np.zeros(shape, dtype=np.float32) for e in [NOISE_FLOOR, *contrasts]}
            per_seed_edit = np.zeros((n_e, n_k, n_r))
            lung = idx["lung"]
            for kk, k in enumerate(seeds):
                fac = _read_generated(layout.factual(sid, k), shape)
                if lung.size:
                    v = fac.ravel()[lung]
                    saturated.append(float(np.mean((v <= hu_lo + 0.5) | (v >= hu_hi - 0.5))))
                diff = _read_generated(layout.floor(sid, k), shape) - fac
                sums[NOISE_FLOOR] += diff
                means = _region_means(diff.ravel(), idx)
                floor_seed[si, kk] = list(means.values())
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
                for ei, e in enumerate(contrasts):
                    diff = _read_generated(layout.edited(sid, e, k), shape) - fac
                    sums[e] += diff
                    means = _region_means(diff.ravel(), idx)
                    per_seed_edit[ei, kk] = list(means.values())
                    subject_rows += [
                        dict(id=sid, contrast=e, seed=k, region=r, n_voxels=nvox[r], mean_diff_hu=m)
                        for r, m in means.items()
                    ]
            edit_vals[:, si] = per_seed_edit.mean(axis=1)
            lung_mask = np.zeros(shape, dtype=bool)
            lung_mask.ravel()[lung] = True
            # The noise floor gets a map too, on the same colour scale: what a change of seed
            # alone looks like is the reference a reader needs beside each edit's map.
            for e in [*contrasts, NOISE_FLOOR]:
                mean_map = (sums[e] / n_k).astype(np.float32)
                rel = layout.map_nifti(sid, e).relative_to(layout.analysis_dir)
                write_volume(Volume(mean_map, mask.affine), out / rel)
                save_map_png(
                    mean_map,
                    lung_mask,
                    mask.affine,
                    out / layout.map_png(sid, e).relative_to(layout.analysis_dir),
                    f"{sid}: {e} (mean of {n_k} seed(s))",
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
                for ei, e in enumerate(parseable):
                    if parsed[e].op != "unset":
                        exp = expected_shift_means(effects, parsed[e], start, idx)
                        planted[ei, si] = list(exp.values())

        # The observed and adjusted associations use every complete subject of the real
        # cohort, not only the run's: they are properties of the cohort, and more subjects
        # narrow their intervals.
        others = [s for s in cohort.ids if s not in real_means]
        for sid in tqdm(
            others, desc="observed", unit="subject", disable=not progress or not others
        ):
            image, mask = cohort.load(sid)
            idx = _region_indices(mask.array, mask.affine, data_cfg, regions)
            real_means[sid] = np.array(list(_region_means(image.array.ravel(), idx).values()))

        floor_rows = noise_floor_rows(regions, floor_seed, alpha)
        cohort_rows = _cohort_stats(
            contrasts, kinds, regions, edit_vals, n_boot, seed, test, n_k, min_effect_hu
        )
        by_region = {f["region"]: f for f in floor_rows}
        for r in cohort_rows:
            f = by_region[r["region"]]
            r.update({k: f[k] for k in ("floor_mean_hu", "floor_sd_hu", "seed_sd_hu", "mde_hu")})
        observed_rows = _observed(
            parseable, parsed, regions, real_means, clinical, n_boot, seed, notes, baseline
        )
        columns = list(dict.fromkeys(c for row in clinical.values() for c in row))
        adjusted_rows = adjusted_association(
            {s: clinical.get(s, {}) for s in real_means},
            real_means,
            regions,
            [parsed[e] for e in parseable],
            baseline,
            notes,
            columns=columns,
        )
        add_training_uncertainty(cohort_rows, adjusted_rows)
        calibration = calibrate_rows(cohort_rows, alpha, min_effect_hu)
        if not calibration["available"]:
            notes.append(
                f"calibration unavailable: {calibration['n_rows']} negative-control row(s), at "
                f"least {MIN_CALIBRATION_ROWS} are needed (add null edits or permuted "
                "controls); real edits are judged on the raw test against zero, which "
                "ignores the model's systematic error."
            )
        candidates = _peak_candidates(regions)
        spec_rows = _specificity(
            contrasts, kinds, regions, candidates, edit_vals, n_voxels, n_boot, seed, cohort_rows
        )
        recovery_rows = (
            _recovery(
                parseable,
                controls,
                parsed,
                regions,
                edit_vals,
                planted,
                cohort_rows,
                n_boot,
                seed,
                recovery_tolerance,
                spill_limit_hu,
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
        if run.get("noise") != "per-subject":
            notes.append(
                "the run record does not say 'noise': 'per-subject': older runs drew the noise "
                "of seed k once and shared it across subjects, so floor pairs (and effects) of "
                "different subjects are not independent, and the tests over subjects are "
                "optimistic; re-run unveil counterfactual for independent noise per subject."
            )

        verdict = _verdict(
            contrasts,
            kinds,
            parsed,
            cohort_rows,
            spec_rows,
            recovery_rows,
            effects,
            alpha,
            test,
            notes,
            calibration,
            recovery_tolerance,
            spill_limit_hu,
        )
        n_real = sum(1 for r in cohort_rows if not r["null_control"])
        results = _clean(
            {
                "run": {k: v for k, v in run.items() if k != "config"},
                "settings": {
                    "n_boot": n_boot,
                    "alpha": alpha,
                    "seed": seed,
                    "test": test,
                    "min_effect_hu": min_effect_hu,
                    "recovery_tolerance": recovery_tolerance,
                    "spill_limit_hu": spill_limit_hu,
                    "comparator": "zero (per-subject effects, edited - factual, mean over seeds)",
                    "bootstrap": "BCa over subjects (percentile where BCa is undefined)",
                    "fdr": (
                        f"Benjamini-Hochberg over the {n_real} real-edit (edit, region) rows "
                        f"(raw and calibrated p separately) and over the "
                        f"{len(cohort_rows) - n_real} negative-control rows"
                    ),
                    "mde": (
                        f"(z_(1-alpha/2) + z_{MDE_POWER:g}) * SD across subjects of the "
                        "per-subject noise floor / sqrt(n), two-sided alpha, normal approximation"
                    ),
                    "unit": "subject (regional voxel mean, averaged over seeds)",
                    "regions": regions,
                    "regions_rule": REGIONS_RULE,
                    "peak_regions": candidates,
                    "null_controls": controls,
                    "control_kinds": {e: kinds[e] for e in controls},
                    "map_limit_hu": map_limit_hu,
                },
                "cohort_stats": cohort_rows,
                "noise_floor": floor_rows,
                "calibration": calibration,
                "specificity": spec_rows,
                "observed": observed_rows,
                "adjusted": adjusted_rows,
                "recovery": recovery_rows,
                "verdict": verdict,
                "alpha": alpha,
            }
        )
        write_text(out / "subject_regions.csv", _csv_text(subject_rows, SUBJECT_COLUMNS))
        write_text(out / "cohort_stats.csv", _csv_text(cohort_rows, COHORT_COLUMNS))
        write_text(out / "noise_floor.csv", _csv_text(floor_rows, NOISE_FLOOR_COLUMNS))
        write_text(out / "specificity.csv", _csv_text(spec_rows, SPECIFICITY_COLUMNS))
        write_text(out / "observed.csv", _csv_text(observed_rows, OBSERVED_COLUMNS))
        write_text(out / "adjusted.csv", _csv_text(adjusted_rows, ADJUSTED_COLUMNS))
        write_text(out / "recovery.csv", _csv_text(recovery_rows, RECOVERY_COLUMNS))
        write_json(out / "results.json", results)
    return results


def noise_floor_rows(
    regions: Sequence[str], floor_seed: np.ndarray, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """The noise floor per region: what a change of seed alone produces, and what it hides.

    Args:
        regions: region names, length ``R``.
        floor_seed: ``(N, K, R)`` regional means of (floor - factual) per subject and seed.
        alpha: two-sided level of the minimum detectable effect.

    Returns:
        One row per region with subjects: ``floor_mean_hu`` and ``floor_sd_hu`` (mean and SD
        across subjects of the per-subject floor, the mean over seeds); ``seed_sd_hu``, the
        seed-to-seed SD of one generated volume's regional mean (the SD of (floor - factual)
        over all subject-seed pairs divided by sqrt(2), as each pair is two generations);
        ``mde_hu``, the smallest mean effect detectable with 80% power at two-sided
        ``alpha`` (:func:`unveil.analysis.stats.minimum_detectable_effect` on
        ``floor_sd_hu``).
    """
    fs = np.asarray(floor_seed, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        counts = np.isfinite(fs).sum(axis=1)
        per_subject = np.where(counts > 0, np.nansum(fs, axis=1) / np.maximum(counts, 1), np.nan)
    rows = []
    for ri, r in enumerate(regions):
        v = per_subject[:, ri]
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        pairs = fs[:, :, ri]
        pairs = pairs[np.isfinite(pairs)]
        sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
        rows.append(
            {
                "region": r,
                "n_subjects": int(v.size),
                "n_seeds": int(fs.shape[1]),
                "floor_mean_hu": float(v.mean()),
                "floor_sd_hu": sd,
                "seed_sd_hu": float(pairs.std(ddof=1) / math.sqrt(2.0))
                if pairs.size > 1
                else math.nan,
                "mde_hu": minimum_detectable_effect(sd, int(v.size), alpha, MDE_POWER),
            }
        )
    return rows


def _cohort_stats(
    contrasts: Sequence[str],
    kinds: Mapping[str, str],
    regions: Sequence[str],
    edit_vals: np.ndarray,
    n_boot: int,
    seed: int,
    test: str,
    n_seeds: int,
    min_effect_hu: float = 0.0,
) -> list[dict[str, Any]]:
    """One row per (contrast, region) with subjects: the test of the effects against zero.

    q-values, calibrated p-values and ``significant`` are left to :func:`calibrate_rows`;
    the noise-floor columns to the caller.  The margin applies to real edits only: a
    negative control must show nothing, not merely nothing beyond the margin.
    """
    rows = []
    for ei, e in enumerate(contrasts):
        control = bool(kinds.get(e))
        for ri, r in enumerate(regions):
            ev = edit_vals[ei, :, ri]
            ev = ev[np.isfinite(ev)]
            n = int(ev.size)
            if n == 0:
                continue  # region absent in every subject (e.g. no airway label)
            lo, hi = bootstrap_ci(ev, _rng(seed, 0, ei, ri), n_boot)
            stat, p, name = one_sample_test(ev, test=test, margin=0.0 if control else min_effect_hu)
            rows.append(
                {
                    "contrast": e,
                    "region": r,
                    "n_subjects": n,
                    "mean_diff_hu": float(ev.mean()),
                    "ci_low": lo,
                    "ci_high": hi,
                    "sd_hu": float(ev.std(ddof=1)) if n > 1 else math.nan,
                    "se_hu": standard_error(ev),
                    "effect_size_dz": effect_size_dz(ev),
                    "statistic": stat,
                    "p_value": p,
                    "q_value": math.nan,
                    "p_calibrated": math.nan,
                    "q_calibrated": math.nan,
                    "significant": False,
                    "test": name,
                    "null_control": control,
                    "control_kind": kinds.get(e, ""),
                    "floor_mean_hu": math.nan,
                    "floor_sd_hu": math.nan,
                    "seed_sd_hu": math.nan,
                    "mde_hu": math.nan,
                    "n_seeds": n_seeds,
                }
            )
    return rows


def _df(row: Mapping[str, Any]) -> float | None:
    """Degrees of freedom of a row's mean (``n_subjects - 1``), None when unknown."""
    n = row.get("n_subjects")
    return float(n) - 1.0 if isinstance(n, int | float) and n >= 2 else None


def add_training_uncertainty(
    rows: Sequence[dict[str, Any]], adjusted: Sequence[Mapping[str, Any]]
) -> None:
    """Add the training cohort's sampling error to each row's standard error (in place).

    ``se_hu`` is the spread of the effect over the held-out subjects *given the trained
    model*: it ignores that the model learned the effect from a finite training cohort.
    An attribute without effect still has a chance association in any finite cohort
    (blood group O had -2.9 HU lungs in the demo's phantom), a well-trained model learns
    it, and applies it to every held-out subject alike, so a test on ``se_hu`` alone
    declares it significant.  A model cannot know an effect better than the data it learned
    it from: the standard error of the same contrast in the adjusted regression on the real
    cohort (:func:`adjusted_association`) is taken as that sampling error, ``se_train_hu``,
    and ``se_total_hu = sqrt(se_hu^2 + se_train_hu^2)``.  Rows without an adjusted contrast
    (permuted-label controls, unset edits) get ``se_train_hu = 0``.  ``p_total`` is the
    two-sided Student's t p of ``mean / se_total`` on ``n - 1`` degrees of freedom.
    """
    from scipy import stats

    se_adj = {
        (a["contrast"], a["region"]): float(a["se_hu"])
        for a in adjusted
        if a.get("se_hu") is not None and math.isfinite(float(a["se_hu"]))
    }
    for r in rows:
        st = se_adj.get((r["contrast"], r["region"]), 0.0)
        se = float(r["se_hu"]) if math.isfinite(float(r["se_hu"])) else math.nan
        total = math.hypot(se, st) if math.isfinite(se) else math.nan
        r["se_train_hu"] = st
        r["se_total_hu"] = total
        df = _df(r)
        m = float(r["mean_diff_hu"])
        if not (math.isfinite(m) and math.isfinite(total)) or df is None:
            r["p_total"] = math.nan
        elif total == 0.0:
            r["p_total"] = 1.0 if m == 0.0 else 0.0
        else:
            r["p_total"] = float(2.0 * stats.t.sf(abs(m) / total, df))


def calibrate_rows(
    rows: Sequence[dict[str, Any]],
    alpha: float = 0.05,
    margin: float = 0.0,
    min_rows: int = MIN_CALIBRATION_ROWS,
) -> dict[str, Any]:
    """Empirical calibration of the cohort rows against the negative controls (in place).

    The null-control rows (``null_control`` true) give estimates ``mean_diff_hu`` with
    standard errors ``se_total_hu`` (subjects and training cohort, see
    :func:`add_training_uncertainty`; ``se_hu`` when that was not run);
    :func:`unveil.analysis.stats.fit_systematic_error` fits
    the model's systematic error N(mu, tau^2) to them, and each real-edit row gets
    ``p_calibrated`` (:func:`unveil.analysis.stats.calibrated_p`, with the margin, and
    Student's t on ``n_subjects - 1`` degrees of freedom when the row has ``n_subjects``)
    and ``q_calibrated`` (BH over the real-edit rows).  ``q_value`` is BH of the raw p within
    each family (real edits; controls).

    ``significant``: for a real edit, ``q_calibrated < alpha`` when at least ``min_rows``
    control rows exist, else ``q_total < alpha`` (BH of ``p_total``).  For a control,
    ``q_total < alpha`` always: judging a control against a null fitted on itself would be
    circular.  ``q_value`` (the subject-level test alone) is reported beside them.  A
    control's ``p_calibrated`` is leave-one-out (fitted on the other control rows), for
    display; its ``q_calibrated`` is BH of those within the controls.

    Returns:
        The ``calibration`` record: ``available``, ``mu_hu``, ``tau_hu``, ``n_rows``,
        ``n_controls`` (contrasts), ``controls``, ``min_rows``, ``method``, ``reference``.
    """
    real = [r for r in rows if not r["null_control"]]
    ctrl = [r for r in rows if r["null_control"]]
    for r in rows:
        r["p_calibrated"] = r["q_calibrated"] = math.nan
        # Without add_training_uncertainty the subject-level test is all there is.
        r.setdefault("se_total_hu", r["se_hu"])
        r.setdefault("se_train_hu", 0.0)
        r.setdefault("p_total", r["p_value"])
    for family in (real, ctrl):
        q = benjamini_hochberg([r["p_value"] for r in family])
        qt = benjamini_hochberg([r["p_total"] for r in family])
        for r, qv, qtv in zip(family, q, qt, strict=True):
            r["q_value"] = float(qv)
            r["q_total"] = float(qtv)
    usable = [
        r for r in ctrl if math.isfinite(r["mean_diff_hu"]) and math.isfinite(r["se_total_hu"])
    ]
    est = np.array([r["mean_diff_hu"] for r in usable])
    se = np.array([r["se_total_hu"] for r in usable])
    available = len(usable) >= min_rows
    mu, tau = fit_systematic_error(est, se) if available else (math.nan, math.nan)
    for r in real:
        r["p_calibrated"] = (
            calibrated_p(r["mean_diff_hu"], r["se_total_hu"], mu, tau, margin, _df(r))
            if available
            else math.nan
        )
    qc = benjamini_hochberg([r["p_calibrated"] for r in real])
    for r, qv in zip(real, qc, strict=True):
        r["q_calibrated"] = float(qv)
        q = r["q_calibrated"] if available else r["q_total"]
        r["significant"] = bool(math.isfinite(q) and q < alpha)
    for i, r in enumerate(usable):
        others = np.arange(len(usable)) != i
        if int(others.sum()) >= min_rows:
            m_i, t_i = fit_systematic_error(est[others], se[others])
            r["p_calibrated"] = calibrated_p(
                r["mean_diff_hu"], r["se_total_hu"], m_i, t_i, df=_df(r)
            )
    qc = benjamini_hochberg([r["p_calibrated"] for r in ctrl])
    for r, qv in zip(ctrl, qc, strict=True):
        r["q_calibrated"] = float(qv)
        r["significant"] = bool(math.isfinite(r["q_total"]) and r["q_total"] < alpha)
    names = list(dict.fromkeys(r["contrast"] for r in usable))
    return {
        "available": bool(available),
        "mu_hu": mu,
        "tau_hu": tau,
        "n_rows": len(usable),
        "n_controls": len(names),
        "controls": names,
        "min_rows": int(min_rows),
        "margin_hu": float(margin),
        "method": (
            "maximum-likelihood fit of N(mu, tau^2) to the negative-control estimates, each "
            "with its own standard error (estimate_i ~ N(mu, tau^2 + se_i^2)); calibrated "
            "p = 2 T_(n-1)(-max(|est - mu| - margin, 0) / sqrt(tau^2 + se^2)), Student's t "
            "on the row's n - 1 degrees of freedom in place of the normal (small samples)"
        ),
        "reference": (
            "Schuemie MJ, Ryan PB, DuMouchel W, Suchard MA, Madigan D. Interpreting "
            "observational studies: why empirical calibration is needed to correct p-values. "
            "Stat Med 2014;33(2):209-218."
        ),
    }


def _specificity(
    contrasts: Sequence[str],
    kinds: Mapping[str, str],
    regions: Sequence[str],
    candidates: Sequence[str],
    edit_vals: np.ndarray,
    n_voxels: np.ndarray,
    n_boot: int,
    seed: int,
    cohort_rows: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """One :func:`unveil.analysis.stats.specificity` row per contrast.

    The peak's and the airway's intervals are taken from the cohort rows when given, so
    the same number carries the same interval in every table.
    """
    if "lung" not in regions or not candidates:
        return []
    ci_of = {(r["contrast"], r["region"]): (r["ci_low"], r["ci_high"]) for r in cohort_rows}
    rows = []
    for ei, e in enumerate(contrasts):
        effects = {r: edit_vals[ei, :, ri] for ri, r in enumerate(regions)}
        counts = {r: n_voxels[:, ri] for ri, r in enumerate(regions)}
        row = specificity(effects, counts, candidates, _rng(seed, 3, ei), n_boot)
        for key, region in (("peak", row["peak_region"]), ("airway", "airway")):
            if (e, region) in ci_of:
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = ci_of[(e, region)]
        rows.append({"contrast": e, "null_control": bool(kinds.get(e)), **row})
    return rows


def _baseline_value(baseline: Sequence[ParsedEdit], column: str) -> Any | None:
    """The value a ``set`` baseline gives ``column`` (the last one wins), else None."""
    value = None
    for b in baseline:
        if b.column == column and b.op == "set":
            value = b.value
    return value


def _numeric_change(edit: ParsedEdit, x_mean: float, base: Any | None) -> float:
    """What a numeric edit changes the attribute by, for scaling a slope.

    ``+=``/``-=``: the delta.  ``set``: target minus the run's baseline value of the column
    when it has one (every subject started there), else target minus the cohort mean (the
    mean change a linear association predicts).
    """
    if edit.op == "add":
        return float(edit.value)
    if edit.op == "sub":
        return -float(edit.value)
    start = _number(base) if base is not None else None
    return float(edit.value) - (start if start is not None else x_mean)


def _observed(
    all_edits: Sequence[str],
    parsed: Mapping[str, ParsedEdit],
    regions: Sequence[str],
    real_means: Mapping[str, np.ndarray],
    clinical: Mapping[str, Mapping[str, Any]],
    n_boot: int,
    seed: int,
    notes: list[str],
    baseline: Sequence[ParsedEdit] = (),
) -> list[dict[str, Any]]:
    """The raw association in the real cohort, per edit and region (see :func:`analyze_run`).

    Category ``set`` edits: subjects whose value is the target (group a) against those
    whose value is the run's baseline value of that column (group b) when the run has one
    (``baseline smoking=never``, edit ``smoking=current``: current against never, the
    contrast the counterfactual makes), else against every other recorded value;
    difference of regional mean HU with a bootstrap CI.  Numeric edits: the least-squares
    slope of regional mean HU on the attribute, scaled by :func:`_numeric_change`.
    ``unset`` edits have no real-cohort counterpart (a missing value is not a value) and are
    skipped.  Subjects with the attribute missing are excluded.
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
        base = _baseline_value(baseline, pe.column)
        if pe.numeric:
            x = np.array(
                [_number(values[s]) if _number(values[s]) is not None else math.nan for s in known]
            )
            scale = _numeric_change(pe, float(np.nanmean(x)), base)
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
        if base is not None and not same_value(base, pe.value):
            in_b = np.array([same_value(values[s], base) for s in known])
            label_b = f"{pe.column}={base}"
        else:
            in_b = ~in_a
            label_b = f"{pe.column}!={pe.value}"
        small = min(int(in_a.sum()), int(in_b.sum()))
        if small < 5:
            notes.append(
                f"{e}: the observed association compares groups of {int(in_a.sum())} and "
                f"{int(in_b.sum())} subjects; a bootstrap interval from fewer than 5 subjects "
                "per group is too narrow to trust."
            )
        for ri, r in enumerate(regions):
            a, b = y[in_a, ri], y[in_b, ri]
            diff, lo, hi = two_group_difference(a, b, _rng(seed, 1, ei, ri), n_boot)
            a_f, b_f = a[np.isfinite(a)], b[np.isfinite(b)]
            rows.append(
                {
                    "attribute": pe.column,
                    "group_a": f"{pe.column}={pe.value}",
                    "group_b": label_b,
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


def adjusted_association(
    table: Mapping[str, Mapping[str, Any]],
    region_means: Mapping[str, np.ndarray],
    regions: Sequence[str],
    edits: Sequence[ParsedEdit],
    baseline: Sequence[ParsedEdit] = (),
    notes: list[str] | None = None,
    columns: Sequence[str] | None = None,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """The association of each edit in the real cohort, adjusted for every other attribute.

    Per region, the subjects' regional mean HU of the real scans is regressed (OLS, HC3
    covariance) on every attribute of the clinical table, coded by
    :func:`unveil.analysis.stats.design_matrix` (numbers as they are, categories one-hot
    against their most frequent level, missing values as a level or a mean fill plus an
    indicator).  This is what a statistician would estimate without a generative model;
    it removes confounding by the recorded attributes (age travels with smoking) but
    assumes effects add up linearly.

    For a category edit ``col=target`` the contrast is ``coef(target) - coef(base)``,
    ``base`` being the run's baseline value of ``col`` when it has one, else the reference
    level (whose coefficient is 0); its variance comes from the covariance matrix.  When
    the target is itself the reference and the run has no baseline, that difference would
    be 0 by construction, so the target is compared with the frequency-weighted mean of the
    other recorded levels (the adjusted form of the raw "target vs the rest").  For a
    numeric edit it is the slope times the edit's change (:func:`_numeric_change`).  An
    ``unset`` edit has no counterpart and is skipped.

    Args:
        table: ``{id: {column: value}}`` clinical rows (id column left out).
        region_means: ``{id: (R,) regional mean HU of the real scan}``; the subjects used
            are those present in both.
        regions: the ``R`` region names.
        edits: the parsed edits (their ``text`` names the row's contrast).
        baseline: the run's baseline edits.
        notes: cautions are appended here.
        columns: attributes to use (default: every column of the rows, in first-seen
            order).
        level: confidence level of the interval.

    Returns:
        Rows with the :data:`ADJUSTED_COLUMNS`.
    """
    notes = notes if notes is not None else []
    ids = [s for s in region_means if s in table]
    rows_in = [table[s] for s in ids]
    if columns is None:
        columns = list(dict.fromkeys(c for r in rows_in for c in r))
    numeric: dict[str, bool] = {}
    for pe in edits:
        numeric.setdefault(pe.column, pe.numeric)
    X, info = design_matrix(rows_in, list(columns), numeric)
    y = np.stack([np.asarray(region_means[s], dtype=np.float64) for s in ids]) if ids else None
    dropped = [c for c in columns if info[c]["kind"] == "dropped"]
    if dropped:
        notes.append(
            "adjusted association: attribute(s) "
            + ", ".join(dropped)
            + " left out of the regression (no variation once values recorded for fewer "
            "than two subjects are pooled)."
        )
    method = (
        f"OLS on {len(columns) - len(dropped)} attribute(s) of the clinical table, HC3 "
        "covariance, normal interval"
    )
    wanted: dict[str, tuple[ParsedEdit, dict[str, float], str, str, float]] = {}
    for pe in edits:
        if pe.op == "unset":
            continue
        entry = info.get(pe.column)
        if entry is None or entry["kind"] == "dropped":
            notes.append(
                f"{pe.text}: column '{pe.column}' does not vary in the clinical table; no "
                "adjusted association."
            )
            continue
        base = _baseline_value(baseline, pe.column)
        if entry["kind"] == "number":
            if pe.column not in entry["terms"]:
                continue
            scale = _numeric_change(pe, float(entry["mean"]), base)
            wanted[pe.text] = (pe, {pe.column: scale}, pe.column, "", scale)
            continue
        levels = entry["levels"]
        target = level_name(pe.value)
        ref = level_name(base) if base is not None else entry["reference"]
        missing = [lv for lv in (target, ref) if lv not in levels]
        if missing:
            notes.append(
                f"{pe.text}: level(s) {', '.join(missing)} of '{pe.column}' recorded for fewer "
                "than two subjects of the cohort; no adjusted association."
            )
            continue
        weights: dict[str, float] = {}
        if levels[target] is not None:
            weights[levels[target]] = weights.get(levels[target], 0.0) + 1.0
        if base is None and target == ref:
            # The target is the reference level: "target minus reference" would be 0 by
            # construction.  Compare it with the other recorded levels instead, weighted by
            # their frequency: the adjusted counterpart of the raw "target vs the rest".
            others = {
                lv: n
                for lv, n in entry["counts"].items()
                if lv not in (target, MISSING_LEVEL) and levels.get(lv) is not None
            }
            total = sum(others.values())
            for lv, n in others.items():
                weights[levels[lv]] = weights.get(levels[lv], 0.0) - n / total
            term_b = f"{pe.column}[other recorded levels, by frequency]"
        else:
            if levels[ref] is not None:
                weights[levels[ref]] = weights.get(levels[ref], 0.0) - 1.0
            term_b = levels[ref] or f"{pe.column}[{ref}] (reference)"
        weights = {t: w for t, w in weights.items() if w != 0.0}
        term_a = levels[target] or f"{pe.column}[{target}] (reference)"
        # target == base: the contrast is zero by construction, with no uncertainty
        wanted[pe.text] = (pe, weights or {"const": 0.0}, term_a, term_b, 1.0)
    out: list[dict[str, Any]] = []
    if not wanted or y is None:
        return out
    for ri, r in enumerate(regions):
        fit = ols_hc3_contrasts(X, y[:, ri], {k: v[1] for k, v in wanted.items()}, level)
        for name, (pe, _, term_a, term_b, scale) in wanted.items():
            res = fit[name]
            out.append(
                {
                    "contrast": name,
                    "attribute": pe.column,
                    "region": r,
                    "term_a": term_a,
                    "term_b": term_b,
                    "scale": scale,
                    "n_subjects": res["n"],
                    "n_parameters": res["n_parameters"],
                    "diff_hu": res["estimate"],
                    "se_hu": res["se"],
                    "ci_low": res["ci_low"],
                    "ci_high": res["ci_high"],
                    "p_value": res["p_value"],
                    "method": method,
                }
            )
    return out


def _recovery(
    all_edits: Sequence[str],
    controls: Sequence[str],
    parsed: Mapping[str, ParsedEdit],
    regions: Sequence[str],
    edit_vals: np.ndarray,
    planted: np.ndarray,
    cohort_rows: Sequence[Mapping[str, Any]],
    n_boot: int,
    seed: int,
    tolerance: float = RECOVERY_TOLERANCE,
    spill_limit_hu: float = SPILL_LIMIT_HU,
) -> list[dict[str, Any]]:
    """Planted vs recovered mean shift per edit and region (parseable edits only).

    ``planted_hu`` is the mean over subjects of the expected regional shift (edited minus
    factual true attributes); ``recovered_hu`` the mean measured difference over the same
    subjects, with its bootstrap CI.  Where something was planted, ``sign_ok`` is agreement
    of signs and ``within_tolerance`` is ``|error| <= tolerance * |planted|``
    (``within_30pct`` the same at 30%, kept for readers of older files).  Where nothing
    was planted a relative error is undefined, and all three say ``|recovered| <=
    spill_limit_hu``.
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
            if abs(plant) <= PLANTED_EPS_HU:
                rel = math.nan
                sign_ok = within = within30 = bool(abs(rec) <= spill_limit_hu)
            else:
                rel = err / abs(plant)
                sign_ok = bool(np.sign(rec) == np.sign(plant))
                within = bool(abs(err) <= tolerance * abs(plant))
                within30 = bool(abs(err) <= 0.30 * abs(plant))
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
                    "within_tolerance": within,
                    "within_30pct": within30,
                    "null_control": e in controls,
                }
            )
    return rows


def _fmt_ci(mean: float, lo: float, hi: float) -> str:
    return f"{mean:+.1f} HU [{lo:+.1f}, {hi:+.1f}]"


def specificity_line(row: Mapping[str, Any]) -> str:
    """One verdict line for a :data:`SPECIFICITY_COLUMNS` row."""
    if not row.get("peak_region"):
        return f"{row['contrast']}: no lung partition to locate the effect in."
    text = (
        f"{row['contrast']}: largest in {row['peak_region']} "
        f"{_fmt_ci(row['peak_hu'], row['peak_ci_low'], row['peak_ci_high'])}; "
        f"rest of the lung {_fmt_ci(row['spill_hu'], row['spill_ci_low'], row['spill_ci_high'])}"
    )
    frac = row.get("spill_fraction")
    if frac is not None and math.isfinite(frac):
        text += f" (spill {100 * frac:.0f}% of the peak)"
    if row.get("airway_hu") is not None and math.isfinite(row["airway_hu"]):
        text += "; airway " + _fmt_ci(row["airway_hu"], row["airway_ci_low"], row["airway_ci_high"])
    return text


def _verdict(
    contrasts: Sequence[str],
    kinds: Mapping[str, str],
    parsed: Mapping[str, ParsedEdit],
    cohort_rows: Sequence[Mapping[str, Any]],
    spec_rows: Sequence[Mapping[str, Any]],
    recovery_rows: Sequence[Mapping[str, Any]],
    effects: Sequence[Any] | None,
    alpha: float,
    test: str,
    notes: list[str],
    calibration: Mapping[str, Any],
    tolerance: float = RECOVERY_TOLERANCE,
    spill_limit_hu: float = SPILL_LIMIT_HU,
) -> dict[str, Any]:
    """Per contrast the significant regions; the null control; specificity; the recovery."""
    calibrated = bool(calibration.get("available"))
    spec_of = {r["contrast"]: r for r in spec_rows}
    per_edit = []
    for e in contrasts:
        rows = [r for r in cohort_rows if r["contrast"] == e]
        sig = [r for r in rows if r["significant"]]
        is_null = bool(kinds.get(e))
        if is_null:
            largest = max((abs(r["mean_diff_hu"]) for r in rows), default=math.nan)
            summary = (
                f"null control passed: no region differs from zero (raw test, FDR {alpha:g} "
                f"over the controls); largest |effect| {largest:.2f} HU (target < 1 HU)"
                if not sig
                else "null control FAILED: differs from zero in "
                + "; ".join(
                    f"{r['region']} {_fmt_ci(r['mean_diff_hu'], r['ci_low'], r['ci_high'])}"
                    for r in sig
                )
            )
        elif sig:
            how = "beyond the null controls (calibrated)" if calibrated else "(raw test)"
            summary = f"significant {how} in " + "; ".join(
                f"{r['region']} {_fmt_ci(r['mean_diff_hu'], r['ci_low'], r['ci_high'])}"
                for r in sig
            )
        elif calibrated:
            summary = (
                f"no region differs from zero beyond the null controls' systematic error at "
                f"FDR {alpha:g}"
            )
        else:
            summary = f"no region differs from zero at FDR {alpha:g}"
        entry = {
            "contrast": e,
            "null_control": is_null,
            "control_kind": kinds.get(e, ""),
            "significant_regions": [r["region"] for r in sig],
            "summary": summary,
        }
        if e in spec_of:
            entry["specificity"] = specificity_line(spec_of[e])
        per_edit.append(entry)
    ctrl_rows = [r for r in cohort_rows if r["null_control"]]
    null_passed = None if not ctrl_rows else not any(r["significant"] for r in ctrl_rows)
    null_max = max((abs(r["mean_diff_hu"]) for r in ctrl_rows), default=math.nan)
    recovery = None
    if effects:
        # In each region where the edited attribute's effect was planted: sign, size (within
        # the tolerance) and place (significant there); in each lung zone where nothing
        # was planted: no shift beyond the spill limit.
        sig_of = {(r["contrast"], r["region"]): r["significant"] for r in cohort_rows}
        checked = []
        for row in recovery_rows:
            e = row["contrast"]
            if row["null_control"]:
                continue
            nothing = abs(row["planted_hu"]) <= PLANTED_EPS_HU
            if nothing:
                if row["region"] not in ZONES:
                    continue
                ok = bool(abs(row["recovered_hu"]) <= spill_limit_hu)
            else:
                places = {x.region for x in effects if x.attribute == parsed[e].column}
                if row["region"] not in places:
                    continue
                ok = bool(
                    row["sign_ok"]
                    and row["within_tolerance"]
                    and sig_of.get((e, row["region"]), False)
                )
            checked.append(
                {
                    "contrast": e,
                    "region": row["region"],
                    "planted_hu": row["planted_hu"],
                    "recovered_hu": row["recovered_hu"],
                    "check": "nothing planted" if nothing else "planted",
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
            "tolerance": tolerance,
            "spill_limit_hu": spill_limit_hu,
            "rule": (
                "in each region where the edited attribute's effect was planted: sign right, "
                f"size within {100 * tolerance:g}%, significant "
                f"{'after calibration' if calibrated else 'after correction'}; in each lung "
                f"zone where nothing was planted: |shift| <= {spill_limit_hu:g} HU; and no "
                "null control significant"
            ),
        }
    return {
        "alpha": alpha,
        "test": test,
        "edits": per_edit,
        "null_control_passed": null_passed,
        "null_control_max_abs_hu": null_max,
        "calibrated": calibrated,
        "specificity": [
            v["specificity"] for v in per_edit if "specificity" in v and not v["null_control"]
        ],
        "recovery": recovery,
        "notes": notes,
    }


def format_table(results: Mapping[str, Any], max_rows: int | None = None) -> str:
    """The cohort rows as a compact plain table: contrast, region, mean [CI], q, significance.

    ``q`` is the raw q-value and ``q cal`` the calibrated one (a control's is leave-one-out,
    for display); ``*`` marks the rows ``significant``.
    """
    rows = list(results.get("cohort_stats", []))
    if max_rows is not None:
        rows = rows[:max_rows]

    def num(v: Any, spec: str) -> str:
        return "nan" if v is None else format(v, spec)

    width = max([len("contrast"), *(len(r["contrast"]) for r in rows)])
    rwidth = max([len("region"), *(len(r["region"]) for r in rows)])
    lines = [
        f"{'contrast':<{width}}  {'region':<{rwidth}}  {'mean HU [95% CI]':>28}  {'q':>8}  "
        f"{'q cal':>8}  sig"
    ]
    for r in rows:
        ci = f"{num(r['mean_diff_hu'], '+.1f')} [{num(r['ci_low'], '+.1f')}, {num(r['ci_high'], '+.1f')}]"
        mark = "*" if r["significant"] else ""
        if r["null_control"]:
            mark += " (null)"
        lines.append(
            f"{r['contrast']:<{width}}  {r['region']:<{rwidth}}  {ci:>28}  "
            f"{num(r['q_value'], '8.3g')}  {num(r.get('q_calibrated'), '8.3g')}  {mark}"
        )
    return "\n".join(lines)
