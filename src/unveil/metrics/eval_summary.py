"""The summary of ``unveil evaluate``: per-subject results in, figures and sentences out.

Every function here is pure (records and arrays in, records out; the bootstrap streams
come from the seed), so the aggregation is tested without a model or a file.  The order
in which :func:`build_summary` fills the summary is the order of ``summary.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unveil.metrics.adherence import (
    MIN_PER_CLASS,
    attribute_kind,
    effectiveness,
    figure,
    reading_figures,
)
from unveil.metrics.distribution import fid, kid
from unveil.metrics.eval_types import Readers, Row, SubjectResult, TextureStats
from unveil.metrics.features import missing_network_message
from unveil.metrics.intervals import subject_bootstrap, summarize
from unveil.text.edits import Edit

#: Figures aggregated by the median (``inf`` for a perfect subject).
MEDIAN_FIGURES: dict[str, str] = {"psnr": "median", "psnr_lung": "median", "psnr_outside": "median"}
#: Per-subject numbers that are bookkeeping, not figures: kept in the CSV, not summarised.
NOT_FIGURES: frozenset[str] = frozenset({"ssim_kernel", "n_lung", "n_outside"})
#: The paired-fidelity figures, in report order.
FIDELITY_KEYS: tuple[str, ...] = (
    "mae_hu",
    "mae_hu_lung",
    "mae_hu_outside",
    "psnr",
    "psnr_lung",
    "psnr_outside",
    "ssim",
    "ssim_lung",
    "ssim_outside",
    "ms_ssim",
)
#: Resamples of the set-level FID / KID intervals (each one recomputes the figure).
N_BOOT_SET = 200
#: KID settings: random subsets and samples per subset.
KID_SUBSETS, KID_SUBSET_SIZE = 50, 1000

Summary = dict[str, Any]


@dataclass(frozen=True)
class SummaryOptions:
    """How the figures are aggregated.

    Attributes:
        seed: base of every bootstrap stream.
        n_boot: resamples of the per-subject intervals.
        n_boot_set: resamples of the FID / KID intervals.
        networks: ``"2d"`` / ``"3d"`` -> whether that feature network was named.
    """

    seed: int
    n_boot: int = 1000
    n_boot_set: int = N_BOOT_SET
    networks: Mapping[str, bool] | None = None


@dataclass(frozen=True)
class AttributePlan:
    """What condition adherence reads.

    Attributes:
        template: the checkpoint's template.
        fields: the template fields read.
        rows: the clinical rows of the evaluated subjects, in order.
        edits: edit name -> edit, for the effectiveness figures.
        edit_reasons: edit name -> why its effectiveness is not measured.
    """

    template: Any
    fields: Sequence[str]
    rows: Sequence[Mapping[str, Any]]
    edits: Mapping[str, Edit]
    edit_reasons: Mapping[str, str]


# ------------------------------------------------------------------------ per subject


def texture_z(tex_real: Sequence[TextureStats], tex_fake: Sequence[TextureStats]) -> list[Row]:
    """``texture_z_<region>`` per subject: mean over features of ``|fake - real| / SD``, SD
    over the real evaluated subjects (ddof 1); features with no spread are left out.
    Empty rows for fewer than two subjects."""
    out: list[Row] = [{} for _ in tex_real]
    if len(tex_real) < 2:
        return out
    for region in tex_real[0]:
        feats = [f for f in tex_real[0][region] if f != "n_voxels"]
        scale = {}
        for f in feats:
            vals = [t[region][f] for t in tex_real if t[region][f] is not None]
            if len(vals) >= 2 and np.std(vals, ddof=1) > 0:
                scale[f] = float(np.std(vals, ddof=1))
        for row, tr, tf in zip(out, tex_real, tex_fake, strict=True):
            z = [
                abs(float(tf[region][f]) - float(tr[region][f])) / s
                for f, s in scale.items()
                if tr[region][f] is not None and tf[region][f] is not None
            ]
            row[f"texture_z_{region}"] = float(np.mean(z)) if z else None
    return out


def subject_rows(results: Sequence[SubjectResult]) -> list[Row]:
    """The per-subject rows: each result's record, then its texture distances."""
    z = texture_z([r.texture_real for r in results], [r.texture_fake for r in results])
    return [r.record | extra for r, extra in zip(results, z, strict=True)]


# ------------------------------------------------------------------------ figures


def unit(key: str) -> str:
    """The unit of a per-subject figure, from its name."""
    if key.startswith(("mae_hu", "wasserstein_")):
        return "HU"
    if key.startswith("psnr"):
        return "dB"
    if key.endswith("lungmask_failed"):
        return "fraction"
    if key.startswith("texture_z_"):
        return "SD of real subjects"
    if key.startswith("texture_"):
        feat = key.rsplit("/", 1)[-1]
        return "HU" if feat.endswith("_hu") else "%" if feat.endswith("_pct") else ""
    return ""


def is_number(v: Any) -> bool:
    """A finite-or-infinite number (not ``None``, not a bool, not NaN)."""
    return (
        isinstance(v, (int, float, np.integer, np.floating))
        and not isinstance(v, bool)
        and not math.isnan(float(v))
    )


def summarize_records(records: Sequence[Mapping[str, Any]], seed: int, n_boot: int) -> Summary:
    """Every per-subject figure over subjects with its bootstrap interval, fidelity first."""
    table = summarize(
        records, np.random.default_rng([seed, 7]), n_boot=n_boot, statistic=MEDIAN_FIGURES
    )
    out: Summary = {}
    order = [k for k in FIDELITY_KEYS if k in table] + [k for k in table if k not in FIDELITY_KEYS]
    for key in order:
        if key in NOT_FIGURES:
            continue
        n = sum(1 for r in records if is_number(r.get(key)))
        v, lo, hi = table[key]
        out[key] = figure(v, lo, hi, n=n, statistic=MEDIAN_FIGURES.get(key, "mean"), unit=unit(key))
    return out


def fidelity_notes(records: Sequence[Mapping[str, Any]]) -> Summary:
    """MS-SSIM's reason when no subject has it, and why texture distances in units of the
    real spread are missing for a single subject."""
    out: Summary = {}
    if not any(r.get("ms_ssim") is not None for r in records):
        out["ms_ssim"] = None
        out["ms_ssim_reason"] = next(
            (str(r["ms_ssim_reason"]) for r in records if r.get("ms_ssim_reason")),
            "MS-SSIM was not computed for any subject.",
        )
    if len(records) < 2:
        out["texture_z_reason"] = (
            "the texture distances in units of the real subjects' spread need at least two "
            "subjects; the per-feature differences are reported instead."
        )
    return out


FeatureGroups = tuple[list[np.ndarray], list[np.ndarray]]


def feature_groups(results: Sequence[SubjectResult], kind: str) -> FeatureGroups:
    """``(real, generated)`` feature rows per subject of the ``2d`` or ``3d`` network."""
    pairs = [r.features_2d if kind == "2d" else r.features_3d for r in results]
    present = [p for p in pairs if p is not None]
    return [p[0] for p in present], [p[1] for p in present]


def feature_figures(
    groups: Mapping[str, FeatureGroups | None], seed: int, n_boot_set: int, n_subjects: int
) -> Summary:
    """FID and KID of each kind (``2d``, ``3d``) with an interval over subjects, or
    ``None`` and the sentence why (no network named: ``groups[kind]`` is ``None``)."""
    out: Summary = {}
    for kind in ("2d", "3d"):
        group = groups.get(kind)
        if group is None:
            _not_computed(out, kind, missing_network_message(kind))  # type: ignore[arg-type]
            continue
        real, fake = group
        rows_real = sum(len(g) for g in real)
        if rows_real < 2:
            what = "subjects" if kind == "3d" else "lung slices"
            _not_computed(
                out,
                kind,
                f"FID and KID ({kind}) need at least 2 {what} on each side and the evaluation "
                f"has {rows_real}; evaluate more subjects.",
            )
            continue
        out.update(_fid_kid(kind, real, fake, seed, n_boot_set, n_subjects))
    return out


def _not_computed(out: Summary, kind: str, reason: str) -> None:
    for name in ("fid", "kid"):
        out[f"{name}_{kind}"] = None
        out[f"{name}_{kind}_reason"] = reason


def _fid_kid(kind, real, fake, seed, n_boot_set, n_subjects) -> Summary:
    out: Summary = {}
    kid_rng = np.random.default_rng([seed, 11])

    def kid_mean(a: np.ndarray, b: np.ndarray, rng: np.random.Generator = kid_rng) -> float:
        return kid(a, b, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, rng=rng)[0]

    for name, stat, seq in (("fid", fid, 12), ("kid", kid_mean, 13)):
        try:
            v, lo, hi = subject_bootstrap(
                real, fake, stat, np.random.default_rng([seed, seq]), n_boot=n_boot_set
            )
        except ValueError as err:
            out[f"{name}_{kind}"] = None
            out[f"{name}_{kind}_reason"] = f"{name.upper()} ({kind}) could not be computed: {err}."
            continue
        out[f"{name}_{kind}"] = figure(
            v, lo, hi, n=n_subjects, statistic="set (interval over subjects)"
        )
    return out


# ------------------------------------------------------------------------ adherence


def edit_reasons(edits: Mapping[str, Edit], readers: Readers, template: Any) -> dict[str, str]:
    """Why an edit's effectiveness cannot be measured (edits absent here are measured)."""
    reasons = {}
    for name, e in edits.items():
        if e.op == "unset":
            reasons[name] = (
                f"effectiveness of {name} was not measured: an edit that removes a value has no "
                "direction to move the reader in."
            )
        elif readers.note is not None:
            reasons[name] = f"effectiveness of {name} was not measured: {readers.note}"
        elif e.field not in readers.models:
            why = readers.reasons.get(e.field, f"{e.field} is not among the --attributes read")
            reasons[name] = f"effectiveness of {name} was not measured: {why}."
        elif e.op == "set" and readers.models[e.field].kind == "classifier":
            target = template.value({template.field(e.field).column: e.value}, e.field)
            if target not in readers.models[e.field].classes:
                reasons[name] = (
                    f"effectiveness of {name} was not measured: the training split has fewer than "
                    f"{MIN_PER_CLASS} subjects with {e.field}={e.value}, so its reader has no such class."
                )
    return reasons


def adherence_figures(
    results: Sequence[SubjectResult], readers: Readers, plan: AttributePlan, opts: SummaryOptions
) -> tuple[Summary, list[Row]]:
    """AUROC / MAE of each attribute's reader on the real and generated scans, and the
    per-subject columns (readings and values)."""
    summary: Summary = {}
    columns: list[Row] = [{} for _ in plan.rows]
    if readers.note is not None:
        summary["adherence_reason"] = readers.note
    inputs = {
        "real": [r.reader_real for r in results],
        "generated": [r.reader_fake for r in results],
    }
    for k, name in enumerate(plan.fields):
        kind = attribute_kind(plan.template, name)
        metric = "auroc" if kind == "classifier" else "mae"
        if name not in readers.models:
            if readers.note is None:
                for side in ("real", "generated"):
                    summary[f"adherence_{name}_{metric}_{side}"] = None
                summary[f"adherence_{name}_reason"] = (
                    f"adherence of {name} was not measured: {readers.reasons[name]}."
                )
            continue
        values = [plan.template.value(r, name) for r in plan.rows]
        for j, side in enumerate(("real", "generated")):
            fig, readings = reading_figures(
                readers.models[name],
                values,
                np.stack(inputs[side]),
                np.random.default_rng([opts.seed, 20, k, j]),
                opts.n_boot,
            )
            summary[f"adherence_{name}_{metric}_{side}"] = fig
            for i, r in enumerate(readings):
                columns[i][f"adherence_{name}_read_{side}"] = r
            if fig["value"] is None:
                summary[f"adherence_{name}_{metric}_{side}_reason"] = (
                    f"adherence of {name} on {side} scans is undefined here: the evaluated subjects "
                    + (
                        "hold fewer than two of its classes."
                        if kind == "classifier"
                        else "have no value of it."
                    )
                )
        for i, v in enumerate(values):
            columns[i][f"adherence_{name}_value"] = v
    return summary, columns


def effectiveness_figures(
    results: Sequence[SubjectResult], readers: Readers, plan: AttributePlan, opts: SummaryOptions
) -> tuple[Summary, list[Row]]:
    """Per edit: the fraction of subjects whose reading moves towards it, the mean change,
    the mean intended change (numbers), and the per-subject change column."""
    summary: Summary = {}
    columns: list[Row] = [{} for _ in plan.rows]
    for k, (name, e) in enumerate(plan.edits.items()):
        idx = [i for i, r in enumerate(results) if name in r.edited]
        if name in plan.edit_reasons or not idx:
            summary[f"effectiveness_{name}"] = None
            summary[f"effectiveness_{name}_reason"] = plan.edit_reasons.get(name) or (
                f"effectiveness of {name} was not measured: it changes the prompt of none of the "
                "evaluated subjects (all already have that value, or the value it shifts is missing)."
            )
            continue
        model = readers.models[e.field]
        targets = [results[i].edited[name][0] for i in idx]
        moved, change, per = effectiveness(
            model,
            np.stack([results[i].reader_fake for i in idx]),
            np.stack([results[i].edited[name][1] for i in idx]),
            targets,
            np.random.default_rng([opts.seed, 30, k]),
            opts.n_boot,
        )
        summary[f"effectiveness_{name}"] = moved
        summary[f"effectiveness_{name}_change"] = change
        intended = [t.intended for t in targets]
        if all(v is not None for v in intended):
            summary[f"effectiveness_{name}_intended"] = figure(
                float(np.mean(np.abs(intended))), n=len(intended), statistic="mean", unit=model.unit
            )
        for i, c in zip(idx, per, strict=True):
            columns[i][f"effectiveness_{name}_change"] = c
    return summary, columns


def overlap_note(subjects: Sequence[str], readers: Readers) -> Summary:
    """A note when evaluated subjects were among the readers' training subjects."""
    overlap = sorted(set(subjects) & set(readers.train_ids))
    if not (overlap and readers.models):
        return {}
    return {
        "adherence_note": (
            f"{len(overlap)} of the {len(subjects)} evaluated subjects are in the training split "
            "the readers were trained on, so their real-scan adherence figures are optimistic."
        )
    }


# ------------------------------------------------------------------------ all together


def build_summary(
    results: Sequence[SubjectResult],
    subjects: Sequence[str],
    readers: Readers,
    plan: AttributePlan,
    opts: SummaryOptions,
) -> tuple[Summary, list[Row]]:
    """The whole summary (in ``summary.json`` order) and the per-subject rows.

    Weight-free and paired figures first, then the feature networks, then adherence and
    effectiveness; the rows are :func:`subject_rows` with the adherence columns after.
    """
    rows = subject_rows(results)
    networks = opts.networks or {}
    groups = {k: feature_groups(results, k) if networks.get(k) else None for k in ("2d", "3d")}
    summary: Summary = {}
    summary.update(summarize_records(rows, opts.seed, opts.n_boot))
    summary.update(fidelity_notes(rows))
    summary.update(feature_figures(groups, opts.seed, opts.n_boot_set, len(subjects)))
    adh, adh_cols = adherence_figures(results, readers, plan, opts)
    eff, eff_cols = effectiveness_figures(results, readers, plan, opts)
    summary.update(adh)
    summary.update(eff)
    summary.update(overlap_note(subjects, readers))
    extras = [a | b for a, b in zip(adh_cols, eff_cols, strict=True)]
    return summary, [r | x for r, x in zip(rows, extras, strict=True)]
