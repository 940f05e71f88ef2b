"""``unveil evaluate``: fidelity, realism, mask consistency and condition adherence of a model.

Every test subject is generated from its *own* mask and clinical sentence with the noise of
``seed`` (:func:`unveil.infer.counterfactual.subject_noise`, the same draw ``unveil generate``
uses), mapped back to HU on the subject's source grid, and set beside the real scan:

Fidelity (paired, per subject; :func:`~unveil.metrics.paired.paired_fidelity`)
    MAE in HU, PSNR, 3D SSIM, each overall, inside the lung mask and outside it (inside
    the body, from :func:`~unveil.metrics.paired.body_mask` of the real scan), and MS-SSIM
    where the volume is large enough for its kernel (``ms_ssim_reason`` says so
    otherwise).  Both volumes are clipped to the model's HU window first.
Realism without weights (always computed, before anything that needs a network)
    ``wasserstein_<region>``: 1-Wasserstein distance (HU) between the HU values of the real
    and generated scan inside each region of :mod:`unveil.data.regions` (lung, each lung,
    upper / middle / lower zone, core / periphery, airway);
    ``texture_<region>/<feature>``: absolute difference of each texture statistic of
    :mod:`unveil.metrics.texture` (HU moments and percentiles, LAA-950 %, HAA %, GLCM);
    ``texture_z_<region>``: one texture distance per region, the mean over features of
    ``|fake - real|`` in units of the real subjects' standard deviation of that feature
    (so features in HU, % and unitless GLCM values can be averaged; the scale is a
    property of the real evaluated subjects, so models evaluated on the same subjects
    share it; it needs at least two subjects).
Realism with a feature network (only when the user names a file)
    ``fid_2d`` / ``kid_2d`` on the axial slices through the lungs (fixed HU window, one
    slice replicated to three channels, :func:`~unveil.metrics.features.slices_for_fid`),
    ``fid_3d`` / ``kid_3d`` on whole volumes.  Without a file the figure is ``null`` and
    ``<figure>_reason`` holds the one sentence of
    :func:`~unveil.metrics.features.missing_network_message`.  Intervals come from
    resampling subjects (:func:`~unveil.metrics.intervals.subject_bootstrap`, paired).
Mask consistency
    ``dice_<structure>``: ``unveil lungmask`` re-run on the generated CT against the input
    mask; ``ref_dice_<structure>``: the same on the real CT, the ceiling set by the
    classical segmenter itself.  A generated CT on which no lungs are found is a failure
    (``lungmask_failed`` = 1, Dice 0 since nothing overlaps), never a crash.
Condition adherence (:mod:`unveil.metrics.adherence`)
    one small 3D CNN per template attribute, trained on the real training split of the
    run's ``splits.json``; ``adherence_<field>_auroc_real|generated`` (categories) or
    ``adherence_<field>_mae_real|generated`` (numbers); with ``edits``, counterfactual
    volumes are generated on the fly (same mask, same noise, edited prompt) and
    ``effectiveness_<edit>`` is the fraction of subjects whose reading moves towards the
    edit, ``effectiveness_<edit>_change`` the mean change.

Every per-subject figure is aggregated over subjects with a bootstrap interval
(:func:`~unveil.metrics.intervals.summarize`; the PSNR figures by the median, since a
perfect subject has PSNR ``inf``).

Outputs in ``EVAL/`` (built aside and moved into place at the end, so the folder is
complete or absent):

- ``per_subject.csv``: one row per subject, every per-subject figure and reading (a text
  cell a spreadsheet would run as a formula, an id ``=cmd``, is written ``'=cmd``, see
  :mod:`unveil.csvsafe`; the raw ids are in ``info.json``);
- ``summary.json``: figure -> ``{value, ci_low, ci_high, n, statistic, unit}``, or
  ``null`` with ``<figure>_reason`` (one sentence) when it could not be computed;
  ``inf`` is written as the string ``"inf"`` (JSON has no infinity);
- ``summary.md``: the same as tables;
- ``info.json``: checkpoint, family, fusion, variant name, split, subjects, seed,
  feature network files, edits, the reader settings and the model's config.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from unveil.csvsafe import neutralise_cell
from unveil.errors import UnveilError
from unveil.fusion_registry import DISPLAY_NAMES
from unveil.metrics.adherence import figure

log = logging.getLogger(__name__)

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
#: Model families and fusion kinds in the order of the published ablation.  The fusion
#: kinds and their display names are the fusion registry's (a live view: a kind
#: registered later is named too).
FUSION_NAMES: Mapping[str, str] = DISPLAY_NAMES
FAMILY_NAMES: dict[str, str] = {"gan": "GAN", "diffusion": "diffusion"}
#: Resamples of the set-level FID / KID intervals (each one recomputes the figure).
N_BOOT_SET = 200
#: KID settings: random subsets and samples per subset.
KID_SUBSETS, KID_SUBSET_SIZE = 50, 1000
#: The reader of :mod:`unveil.metrics.adherence`, described in the outputs.
READER = (
    "3D CNN (three stride-2 convolutions of 8/16/32 channels, global average pooling, "
    "linear head) on the lungs' bounding box of the preprocessed volume, reduced to "
    "size^3 cells, channels lung fraction and mean windowed lung intensity"
)


def variant_name(family: str, fusion: str) -> str:
    """``"GAN mask-only"``, ``"diffusion cross-attention"``... from the config's names."""
    return f"{FAMILY_NAMES.get(family, family)} {FUSION_NAMES.get(fusion, fusion)}"


def structures(data_cfg: Any) -> dict[str, tuple[int, ...]]:
    """Structures for the mask-consistency Dice: ``lung`` (all lung labels), each lung
    label, and the airway, as label values of ``data_cfg``."""
    labels = data_cfg.labels
    lung = tuple(int(labels[n]) for n in data_cfg.lung_labels)
    out: dict[str, tuple[int, ...]] = {"lung": lung}
    if len(lung) > 1:
        for name in data_cfg.lung_labels:
            out[name] = (int(labels[name]),)
    if data_cfg.airway_label:
        out[data_cfg.airway_label] = (int(labels[data_cfg.airway_label]),)
    return out


def evaluate(
    checkpoint: str | Path,
    cohort: str | Path,
    out: str | Path,
    split: str | None = "test",
    ids: Sequence[str] | None = None,
    seed: int = 0,
    features_2d: str | Path | None = None,
    features_3d: str | Path | None = None,
    edits: Sequence[str] = (),
    n_boot: int = 1000,
    progress: bool = True,
    *,
    device: str = "cpu",
    guidance_scale: float | None = None,
    steps: int | None = None,
    amp: str = "none",
    attributes: Sequence[str] | None = None,
    adherence: bool = True,
    adherence_size: int = 32,
    adherence_epochs: int = 150,
    fid_size_2d: int | None = None,
    fid_size_3d: int | None = None,
    n_boot_set: int = N_BOOT_SET,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate one checkpoint on one split of a cohort and write ``out`` (see module text).

    Args:
        checkpoint: ``ckpt-*.pt`` or a training run folder.
        cohort: the cohort folder.
        out: the evaluation folder to write (must not exist or be empty, unless
            ``overwrite``).
        split: ``train`` / ``val`` / ``test`` of the run's ``splits.json``; ignored when
            ``ids`` is given; ``None`` evaluates every subject.
        ids: explicit subject ids.
        seed: noise seed of every generated volume (and of the bootstrap streams).
        features_2d: TorchScript (or ``.pt2``) file of a 2D feature network, ``(B, 3, H,
            W)`` in ``[0, 1]`` -> features; ``None`` skips the 2D FID/KID with a reason.
        features_3d: the same for 3D, ``(B, 1, X, Y, Z)``.
        edits: edits such as ``smoking=current`` for the effectiveness figures.
        n_boot: bootstrap resamples of the per-subject intervals.
        progress: show progress bars.
        device: where the generator (and the feature networks) run.
        guidance_scale: diffusion guidance (default the config's).
        steps: diffusion sampling steps (default the config's).
        amp: precision of the generator's network: ``none`` (float32) or ``bf16``.
        attributes: template fields to read (default all).
        adherence: train the readers and report adherence (needs ``splits.json``).
        adherence_size: reader input cells per axis.
        adherence_epochs: reader training passes.
        fid_size_2d: resize slices to this size for the 2D network (``None`` = native).
        fid_size_3d: resize volumes to this size for the 3D network (``None`` = native).
        n_boot_set: resamples of the FID / KID intervals.
        overwrite: replace an existing ``out``.

    Returns:
        The summary (what ``summary.json`` holds, with ``inf`` as a float).

    Raises:
        UnveilError: a bad checkpoint, cohort, split, edit, attribute or feature file, or
            an existing ``out``; nothing is written then.
    """
    from tqdm.auto import tqdm

    from unveil.data.cohort import Cohort
    from unveil.infer.counterfactual import Generator, subject_ids
    from unveil.metrics.features import load_feature_network
    from unveil.text.edits import parse_edit

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UnveilError(
            f"output folder {out} already exists and is not empty; choose another --out or "
            "pass --overwrite."
        )
    if n_boot < 1 or n_boot_set < 1:
        raise UnveilError(f"--n-boot must be at least 1, not {min(n_boot, n_boot_set)}.")
    # A named network that cannot be loaded is refused before hours of generation.
    net2d = load_feature_network(features_2d, "2d", device=device) if features_2d else None
    net3d = load_feature_network(features_3d, "3d", device=device) if features_3d else None

    gen = Generator(checkpoint, device=device, guidance_scale=guidance_scale, steps=steps, amp=amp)
    cfg = gen.cfg
    template = gen.template
    window = (float(cfg.preprocess.hu_window[0]), float(cfg.preprocess.hu_window[1]))
    parsed = {str(parse_edit(e, template)): parse_edit(e, template) for e in edits}
    fields = list(attributes) if attributes else list(template.field_names)
    for name in fields:
        if name not in template.field_names:
            raise UnveilError(
                f"--attributes names '{name}', which is not a field of template {template.name}; "
                f"its fields are: {', '.join(template.field_names)}."
            )
    cohort_obj = Cohort.open(cohort, cfg.data)
    subjects = subject_ids(
        cohort_obj, list(ids) if ids else None, None if ids else split, gen.lm.path
    )
    if not subjects:
        raise UnveilError(
            f"no subject of {cohort} to evaluate (split {split} is empty or lists none of its "
            "subjects); pass --ids or another --split."
        )
    rows = cohort_obj.rows()
    lung_values = structures(cfg.data)["lung"]

    # ---- condition adherence: readers trained on the real training split
    models: dict[str, Any] = {}
    adh_reasons: dict[str, str] = {}
    train_ids: list[str] = []
    adh_note: str | None = None
    if adherence:
        try:
            train_ids = subject_ids(cohort_obj, None, "train", gen.lm.path)
        except UnveilError as err:
            adh_note = (
                "condition adherence was not measured: its readers are trained on the training "
                f"split of the run, which could not be read ({str(err).rstrip('.')})."
            )
        if train_ids:
            models, adh_reasons = _train_readers(
                gen,
                cohort_obj,
                rows,
                train_ids,
                fields,
                lung_values,
                seed,
                adherence_size,
                adherence_epochs,
                progress,
            )
        elif adh_note is None:
            adh_note = "condition adherence was not measured: the training split lists no subject of this cohort."
    else:
        adh_note = "condition adherence was not asked for (--no-adherence)."

    # ---- per subject
    labels = structures(cfg.data)
    records: list[dict[str, Any]] = []
    extras: list[dict[str, Any]] = []
    tex_real: list[dict[str, Any]] = []
    tex_fake: list[dict[str, Any]] = []
    feats: dict[str, list[np.ndarray]] = {"r2": [], "f2": [], "r3": [], "f3": []}
    adh_in: dict[str, list[np.ndarray]] = {"real": [], "fake": []}
    edited_in: dict[str, dict[int, np.ndarray]] = {name: {} for name in parsed}
    edit_targets: dict[str, dict[int, Any]] = {name: {} for name in parsed}
    edit_reasons = _edit_reasons(parsed, models, adh_reasons, adh_note, template)

    for i, sid in enumerate(tqdm(subjects, desc="evaluate", unit="scan", disable=not progress)):
        rec, t_real, t_fake, f2, f3, a_real, a_fake, edited = _evaluate_subject(
            gen,
            cohort_obj,
            sid,
            rows[sid],
            seed,
            window,
            labels,
            net2d,
            net3d,
            fid_size_2d,
            fid_size_3d,
            models,
            parsed,
            edit_reasons,
            adherence_size,
        )
        records.append(rec)
        extras.append({})  # filled with the adherence readings below
        tex_real.append(t_real)
        tex_fake.append(t_fake)
        if f2 is not None:
            feats["r2"].append(f2[0])
            feats["f2"].append(f2[1])
        if f3 is not None:
            feats["r3"].append(f3[0])
            feats["f3"].append(f3[1])
        if models:
            adh_in["real"].append(a_real)
            adh_in["fake"].append(a_fake)
        for name, (target, x) in edited.items():
            edit_targets[name][i] = target
            edited_in[name][i] = x

    _add_texture_z(records, tex_real, tex_fake)

    # ---- summary: weight-free and paired figures first, then the feature networks
    summary: dict[str, Any] = {}
    summary.update(_summarize_records(records, seed, n_boot))
    if not any(r.get("ms_ssim") is not None for r in records):
        summary["ms_ssim"] = None
        summary["ms_ssim_reason"] = next(
            (str(r["ms_ssim_reason"]) for r in records if r.get("ms_ssim_reason")),
            "MS-SSIM was not computed for any subject.",
        )
    if len(records) < 2:
        summary["texture_z_reason"] = (
            "the texture distances in units of the real subjects' spread need at least two "
            "subjects; the per-feature differences are reported instead."
        )
    summary.update(_feature_figures(feats, net2d, net3d, seed, n_boot_set, len(subjects)))

    # ---- adherence and effectiveness
    adh_summary, adh_columns = _adherence_summary(
        models,
        adh_reasons,
        adh_note,
        fields,
        template,
        [rows[s] for s in subjects],
        adh_in,
        parsed,
        edit_targets,
        edited_in,
        edit_reasons,
        seed,
        n_boot,
    )
    summary.update(adh_summary)
    for i, cols in enumerate(adh_columns):
        extras[i].update(cols)
    overlap = sorted(set(subjects) & set(train_ids))
    if overlap and models:
        summary["adherence_note"] = (
            f"{len(overlap)} of the {len(subjects)} evaluated subjects are in the training split "
            "the readers were trained on, so their real-scan adherence figures are optimistic."
        )

    for reason in dict.fromkeys(v for k, v in summary.items() if k.endswith("_reason") and v):
        log.warning("%s", reason)

    info = _info(
        gen,
        checkpoint,
        cohort,
        split if not ids else None,
        subjects,
        seed,
        n_boot,
        n_boot_set,
        features_2d,
        features_3d,
        list(parsed),
        fields,
        models,
        train_ids,
        adherence_size,
        adherence_epochs,
        net2d,
        net3d,
        fid_size_2d,
        fid_size_3d,
    )
    _write_outputs(out, overwrite, records, extras, summary, info)
    return summary


# ------------------------------------------------------------------------ readers


def _train_readers(
    gen, cohort_obj, rows, train_ids, fields, lung_values, seed, size, epochs, progress
):
    from tqdm.auto import tqdm

    from unveil.metrics.adherence import adherence_input, train_attribute_models

    inputs = []
    for sid in tqdm(
        train_ids, desc="adherence: real training scans", unit="scan", disable=not progress
    ):
        image, mask = cohort_obj.load(sid)
        prepared = gen.pre.prepare(image, mask)
        inputs.append(
            _reader_input(prepared.image[0], prepared, lung_values, size, adherence_input)
        )
    x = np.stack(inputs)
    models, reasons = train_attribute_models(
        gen.template, fields, [rows[s] for s in train_ids], x, seed=seed, epochs=epochs
    )
    return models, reasons


def _reader_input(unit_tensor, prepared, lung_values, size, adherence_input) -> np.ndarray:
    """A ``[-1, 1]`` tensor ``(X', Y', Z')`` on the preprocessed grid -> reader input."""
    x01 = (np.asarray(unit_tensor.detach().cpu().numpy(), dtype=np.float32) + 1.0) / 2.0
    lung = np.isin(np.asarray(prepared.label_map), lung_values)
    return adherence_input(x01, lung, size)


def _edit_reasons(parsed, models, adh_reasons, adh_note, template) -> dict[str, str]:
    """Why an edit's effectiveness cannot be measured (edits absent here are measured)."""
    reasons = {}
    for name, e in parsed.items():
        if e.op == "unset":
            reasons[name] = (
                f"effectiveness of {name} was not measured: an edit that removes a value has no "
                "direction to move the reader in."
            )
        elif adh_note is not None:
            reasons[name] = f"effectiveness of {name} was not measured: {adh_note}"
        elif e.field not in models:
            why = adh_reasons.get(e.field, f"{e.field} is not among the --attributes read")
            reasons[name] = f"effectiveness of {name} was not measured: {why}."
        elif e.op == "set" and models[e.field].kind == "classifier":
            from unveil.metrics.adherence import MIN_PER_CLASS

            target = template.value({template.field(e.field).column: e.value}, e.field)
            if target not in models[e.field].classes:
                reasons[name] = (
                    f"effectiveness of {name} was not measured: the training split has fewer than "
                    f"{MIN_PER_CLASS} subjects with {e.field}={e.value}, so its reader has no such class."
                )
    return reasons


# ------------------------------------------------------------------------ one subject


def _evaluate_subject(
    gen,
    cohort_obj,
    sid,
    row,
    seed,
    window,
    labels,
    net2d,
    net3d,
    size2d,
    size3d,
    models,
    parsed,
    edit_reasons,
    adh_size,
):
    from unveil.data.lungmask import lungmask
    from unveil.data.regions import region_masks
    from unveil.errors import DataError
    from unveil.infer.counterfactual import check_finite, subject_noise
    from unveil.metrics.adherence import adherence_input, edit_target
    from unveil.metrics.distribution import histogram_distances
    from unveil.metrics.features import slices_for_fid, volumes_for_fid
    from unveil.metrics.paired import body_mask, mask_consistency, paired_fidelity
    from unveil.metrics.texture import texture_distance, texture_stats_regions
    from unveil.text.edits import apply_edits

    cfg = gen.cfg
    template = gen.template
    image, mask = cohort_obj.load(sid)
    prepared = gen.pre.prepare(image, mask)
    noise = subject_noise(tuple(prepared.image.shape[-3:]), sid, seed)
    fake = gen.generate(prepared, template.render(row), noise)
    fake_vol = gen.to_hu(fake, prepared)
    check_finite(fake_vol, sid, seed, "evaluation")  # NaN metrics would read as results
    real = np.asarray(image.array, dtype=np.float32)
    fake_hu = np.asarray(fake_vol.array, dtype=np.float32)
    label_map = np.asarray(mask.array)
    lung = np.isin(label_map, labels["lung"])

    rec: dict[str, Any] = {"id": sid}
    rec.update(paired_fidelity(real, fake_hu, lung, window, body_mask=body_mask(real)))

    # Weight-free realism, per region; both sides clipped to the window the model can produce.
    regions = region_masks(label_map, mask.affine, cfg.data)
    for name, d in histogram_distances([real], [fake_hu], [regions], hu_window=window).items():
        rec[f"wasserstein_{name}"] = d
    t_real = texture_stats_regions(np.clip(real, *window), regions)
    t_fake = texture_stats_regions(np.clip(fake_hu, *window), regions)
    texture = {f"texture_{k}": v for k, v in texture_distance(t_real, t_fake).items()}

    # Mask consistency, and the same segmenter on the real scan as its ceiling.
    for prefix, vol in (("", fake_vol), ("ref_", image)):
        try:
            derived = np.asarray(lungmask(vol, cfg.data).array)
            failed, error = 0, None
        except DataError as err:
            derived = np.zeros_like(label_map)
            failed, error = 1, str(err)
        for key, value in mask_consistency(derived, label_map, labels).items():
            rec[f"{prefix}{key}"] = value
        rec[f"{prefix}lungmask_failed"] = failed
        rec[f"{prefix}lungmask_error"] = error
    rec.update(texture)

    f2 = f3 = None
    if net2d is not None:
        f2 = tuple(
            net2d.extract_2d(slices_for_fid(v, window, size=size2d, mask=lung))
            for v in (real, fake_hu)
        )
    if net3d is not None:
        f3 = tuple(
            net3d.extract_3d(volumes_for_fid([v], window, size=size3d)) for v in (real, fake_hu)
        )

    a_real = a_fake = None
    edited: dict[str, tuple[Any, np.ndarray]] = {}
    lung_values = labels["lung"]
    if models:
        a_real = _reader_input(prepared.image[0], prepared, lung_values, adh_size, adherence_input)
        a_fake = _reader_input(fake[0, 0], prepared, lung_values, adh_size, adherence_input)
        for name, e in parsed.items():
            if name in edit_reasons:
                continue
            target = edit_target(template, e, row)
            if target is None:
                continue
            x = gen.generate(prepared, template.render(apply_edits(row, [e], template)), noise)
            check_finite(SimpleNamespace(array=x.detach().cpu().numpy()), sid, seed, name)
            edited[name] = (
                target,
                _reader_input(x[0, 0], prepared, lung_values, adh_size, adherence_input),
            )
    return rec, t_real, t_fake, f2, f3, a_real, a_fake, edited


def _add_texture_z(records, tex_real, tex_fake) -> None:
    """``texture_z_<region>`` per subject: mean over features of ``|fake - real| / SD``, SD
    over the real evaluated subjects (ddof 1); features with no spread are left out."""
    if len(records) < 2:
        return
    for region in tex_real[0]:
        feats = [f for f in tex_real[0][region] if f != "n_voxels"]
        scale = {}
        for f in feats:
            vals = [t[region][f] for t in tex_real if t[region][f] is not None]
            if len(vals) >= 2 and np.std(vals, ddof=1) > 0:
                scale[f] = float(np.std(vals, ddof=1))
        for rec, tr, tf in zip(records, tex_real, tex_fake, strict=True):
            z = [
                abs(float(tf[region][f]) - float(tr[region][f])) / s
                for f, s in scale.items()
                if tr[region][f] is not None and tf[region][f] is not None
            ]
            rec[f"texture_z_{region}"] = float(np.mean(z)) if z else None


# ------------------------------------------------------------------------ summary


def _unit(key: str) -> str:
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


def _summarize_records(
    records: Sequence[Mapping[str, Any]], seed: int, n_boot: int
) -> dict[str, Any]:
    from unveil.metrics.intervals import summarize

    table = summarize(
        records, np.random.default_rng([seed, 7]), n_boot=n_boot, statistic=MEDIAN_FIGURES
    )
    out: dict[str, Any] = {}
    order = [k for k in FIDELITY_KEYS if k in table] + [k for k in table if k not in FIDELITY_KEYS]
    for key in order:
        if key in NOT_FIGURES:
            continue
        n = sum(1 for r in records if _is_number(r.get(key)))
        v, lo, hi = table[key]
        out[key] = figure(
            v, lo, hi, n=n, statistic=MEDIAN_FIGURES.get(key, "mean"), unit=_unit(key)
        )
    return out


def _is_number(v: Any) -> bool:
    return (
        isinstance(v, (int, float, np.integer, np.floating))
        and not isinstance(v, bool)
        and not math.isnan(float(v))
    )


def _feature_figures(feats, net2d, net3d, seed, n_boot_set, n_subjects) -> dict[str, Any]:
    from unveil.metrics.distribution import fid, kid
    from unveil.metrics.features import missing_network_message
    from unveil.metrics.intervals import subject_bootstrap

    out: dict[str, Any] = {}
    for kind, net, (ra, fa) in (("2d", net2d, ("r2", "f2")), ("3d", net3d, ("r3", "f3"))):
        if net is None:
            reason = missing_network_message(kind)  # type: ignore[arg-type]
            for name in ("fid", "kid"):
                out[f"{name}_{kind}"] = None
                out[f"{name}_{kind}_reason"] = reason
            continue
        real, fake = feats[ra], feats[fa]
        rows_real = sum(len(g) for g in real)
        if rows_real < 2:
            what = "subjects" if kind == "3d" else "lung slices"
            reason = (
                f"FID and KID ({kind}) need at least 2 {what} on each side and the evaluation has "
                f"{rows_real}; evaluate more subjects."
            )
            for name in ("fid", "kid"):
                out[f"{name}_{kind}"] = None
                out[f"{name}_{kind}_reason"] = reason
            continue
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
                out[f"{name}_{kind}_reason"] = (
                    f"{name.upper()} ({kind}) could not be computed: {err}."
                )
                continue
            out[f"{name}_{kind}"] = figure(
                v, lo, hi, n=n_subjects, statistic="set (interval over subjects)"
            )
    return out


def _adherence_summary(
    models,
    adh_reasons,
    adh_note,
    fields,
    template,
    test_rows,
    adh_in,
    parsed,
    edit_targets,
    edited_in,
    edit_reasons,
    seed,
    n_boot,
):
    """Adherence and effectiveness figures, and the per-subject reading columns."""
    from unveil.metrics.adherence import attribute_kind, effectiveness, reading_figures

    summary: dict[str, Any] = {}
    columns: list[dict[str, Any]] = [{} for _ in test_rows]
    if adh_note is not None:
        summary["adherence_reason"] = adh_note
    for k, name in enumerate(fields):
        kind = attribute_kind(template, name)
        metric = "auroc" if kind == "classifier" else "mae"
        if name not in models:
            if adh_note is None:
                for side in ("real", "generated"):
                    summary[f"adherence_{name}_{metric}_{side}"] = None
                summary[f"adherence_{name}_reason"] = (
                    f"adherence of {name} was not measured: {adh_reasons[name]}."
                )
            continue
        model = models[name]
        values = [template.value(r, name) for r in test_rows]
        for j, (side, key) in enumerate((("real", "real"), ("generated", "fake"))):
            fig, readings = reading_figures(
                model,
                values,
                np.stack(adh_in[key]),
                np.random.default_rng([seed, 20, k, j]),
                n_boot,
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
    for k, (name, e) in enumerate(parsed.items()):
        if name in edit_reasons:
            summary[f"effectiveness_{name}"] = None
            summary[f"effectiveness_{name}_reason"] = edit_reasons[name]
            continue
        idx = sorted(edit_targets[name])
        if not idx:
            summary[f"effectiveness_{name}"] = None
            summary[f"effectiveness_{name}_reason"] = (
                f"effectiveness of {name} was not measured: it changes the prompt of none of the "
                "evaluated subjects (all already have that value, or the value it shifts is missing)."
            )
            continue
        model = models[e.field]
        moved, change, per = effectiveness(
            model,
            np.stack([adh_in["fake"][i] for i in idx]),
            np.stack([edited_in[name][i] for i in idx]),
            [edit_targets[name][i] for i in idx],
            np.random.default_rng([seed, 30, k]),
            n_boot,
        )
        summary[f"effectiveness_{name}"] = moved
        summary[f"effectiveness_{name}_change"] = change
        intended = [edit_targets[name][i].intended for i in idx]
        if all(v is not None for v in intended):
            summary[f"effectiveness_{name}_intended"] = figure(
                float(np.mean(np.abs(intended))),
                n=len(intended),
                statistic="mean",
                unit=model.unit,
            )
        for i, c in zip(idx, per, strict=True):
            columns[i][f"effectiveness_{name}_change"] = c
    return summary, columns


# ------------------------------------------------------------------------ outputs


def _info(
    gen,
    checkpoint,
    cohort,
    split,
    subjects,
    seed,
    n_boot,
    n_boot_set,
    f2,
    f3,
    edits,
    fields,
    models,
    train_ids,
    adh_size,
    adh_epochs,
    net2d,
    net3d,
    size2d,
    size3d,
) -> dict[str, Any]:
    cfg = gen.cfg
    ck = Path(gen.lm.path).resolve()
    run_dir = ck.parent.parent if ck.parent.name == "checkpoints" else ck.parent
    return {
        "checkpoint": str(ck),
        "step": int(gen.lm.step),
        "run_name": run_dir.name,
        "family": cfg.model.family,
        "fusion": cfg.model.fusion,
        "variant": variant_name(cfg.model.family, cfg.model.fusion),
        "cohort": str(Path(cohort).resolve()),
        "split": split,
        "n_subjects": len(subjects),
        "subjects": list(subjects),
        "seed": int(seed),
        "hu_window": list(cfg.preprocess.hu_window),
        "n_boot": int(n_boot),
        "n_boot_set": int(n_boot_set),
        "guidance_scale": gen.guidance_scale,
        "amp": gen.amp,
        "sample_steps": gen.steps,
        "features_2d": str(Path(f2).resolve()) if f2 else None,
        "features_3d": str(Path(f3).resolve()) if f3 else None,
        "fid_slices": "axial slices through the lung mask, fixed HU window, one slice in 3 channels",
        "fid_size_2d": size2d,
        "fid_size_3d": size3d,
        "edits": list(edits),
        "adherence": {
            "reader": READER,
            "input_size": int(adh_size),
            "epochs": int(adh_epochs),
            "train_subjects": len(train_ids),
            "attributes": list(fields),
            "models": {
                name: {"kind": m.kind, "classes": [str(c) for c in m.classes], "n_train": m.n_train}
                for name, m in models.items()
            },
        },
        "versions": dict(gen.lm.versions),
        "config": cfg.to_dict(),
    }


def json_safe(obj: Any) -> Any:
    """A copy for strict JSON: NaN -> ``None``, ``±inf`` -> ``"inf"`` / ``"-inf"``."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def _csv_cell(v: Any) -> str:
    """A CSV cell: numbers with 6 significant digits (``inf``/``-inf``, NaN empty) and
    text through :func:`unveil.csvsafe.neutralise_cell` (``=cmd`` -> ``'=cmd``), so no id
    or name runs as a spreadsheet formula; the raw ids stay in ``info.json``."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6g}"
    if isinstance(v, (int, np.integer)):
        return str(v)
    return neutralise_cell(str(v))


def per_subject_csv(
    records: Sequence[Mapping[str, Any]], extras: Sequence[Mapping[str, Any]]
) -> str:
    """One row per subject; columns in first-seen order, the per-feature texture columns
    last; missing values empty."""
    merged = [dict(r) | dict(e) for r, e in zip(records, extras, strict=True)]
    cols: list[str] = []
    for r in merged:
        cols.extend(k for k in r if k not in cols)
    late = [c for c in cols if c.startswith("texture_") and "/" in c]
    cols = [c for c in cols if c not in late] + late
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([neutralise_cell(c) for c in cols])
    for r in merged:
        w.writerow([_csv_cell(r.get(c)) for c in cols])
    return buf.getvalue()


def fmt(v: Any) -> str:
    """A figure for a table: ``n/a`` for missing, ``inf``, 4 significant digits."""
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    v = float(v)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


_SECTIONS: tuple[tuple[str, Any], ...] = (
    ("Fidelity against the real scan (paired)", lambda k: k in FIDELITY_KEYS),
    (
        "Realism without weights: HU histogram distance per region",
        lambda k: k.startswith("wasserstein_"),
    ),
    ("Realism without weights: texture distance per region", lambda k: k.startswith("texture_z_")),
    (
        "Mask consistency (unveil lungmask on the generated CT against the input mask)",
        lambda k: k.startswith(("dice_", "lungmask_")),
    ),
    ("Reference: unveil lungmask on the real CT", lambda k: k.startswith("ref_")),
    ("Realism with a feature network (FID, KID)", lambda k: k.startswith(("fid_", "kid_"))),
    (
        "Condition adherence (reader trained on real training scans)",
        lambda k: k.startswith("adherence_"),
    ),
    ("Counterfactual effectiveness", lambda k: k.startswith("effectiveness_")),
    ("Texture statistics, |generated - real| per feature", lambda k: k.startswith("texture_")),
)


def summary_markdown(summary: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    """``summary.md``: one table per group of figures, then every reason."""
    lines = [
        f"# Evaluation: {info['variant']}",
        "",
        f"- checkpoint: `{info['checkpoint']}` (step {info['step']})",
        f"- cohort: `{info['cohort']}`, split: {info['split'] or 'explicit ids'}, "
        f"{info['n_subjects']} subjects, noise seed {info['seed']}",
        f"- intervals: 95% bootstrap over subjects ({info['n_boot']} resamples; FID/KID "
        f"{info['n_boot_set']})",
        "",
    ]
    figures = {k: v for k, v in summary.items() if not k.endswith(("_reason", "_note"))}
    done: set[str] = set()
    for title, pick in _SECTIONS:
        keys = [k for k in figures if k not in done and pick(k)]
        if not keys:
            continue
        done.update(keys)
        lines += [
            f"## {title}",
            "",
            "| figure | statistic | value | 95% CI | n | unit |",
            "|---|---|---|---|---|---|",
        ]
        for k in keys:
            f = figures[k]
            if f is None:
                lines.append(f"| {k} | | n/a | | 0 | |")
                continue
            ci = f"[{fmt(f['ci_low'])}, {fmt(f['ci_high'])}]" if f["ci_low"] is not None else ""
            lines.append(
                f"| {k} | {f['statistic']} | {fmt(f['value'])} | {ci} | {f['n']} | {f['unit']} |"
            )
        lines.append("")
    # One bullet per distinct sentence (FID and KID of one kind share theirs).
    notes: dict[str, list[str]] = {}
    for k, v in summary.items():
        if k.endswith(("_reason", "_note")) and v:
            notes.setdefault(str(v), []).append(k.removesuffix("_reason").removesuffix("_note"))
    if notes:
        lines += ["## Not computed, and notes", ""]
        lines += [f"- **{', '.join(keys)}**: {text}" for text, keys in notes.items()]
        lines.append("")
    lines += [
        "FID and KID depend on the feature network and on the number of samples; compare them "
        "only between models evaluated on the same subjects with the same network file.",
        "",
    ]
    return "\n".join(lines)


def _write_outputs(out, overwrite, records, extras, summary, info) -> None:
    from unveil.fs import atomic_dir, write_json, write_text

    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_text(tmp / "per_subject.csv", per_subject_csv(records, extras))
        write_json(tmp / "summary.json", json_safe(summary))
        write_text(tmp / "summary.md", summary_markdown(summary, info))
        write_json(tmp / "info.json", json_safe(info))
