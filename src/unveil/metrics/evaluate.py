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
  feature network files, edits, the reader settings and the model's config (typed, with
  ``summary.json``, in :mod:`unveil.records.evaluation`).

The code is load -> compute -> render: :func:`run_evaluation` takes one validated
:class:`EvaluationRequest`, loads the checkpoint, cohort and feature networks
(:func:`load_setup`) and trains the readers (:func:`load_readers`), measures each subject
(:func:`unveil.metrics.eval_subject.evaluate_subject`), aggregates with the pure
functions of :mod:`unveil.metrics.eval_summary`, renders with
:mod:`unveil.metrics.eval_render` and writes through
:func:`unveil.records.evaluation.write_evaluation`.  :func:`evaluate` is the same with
keyword options.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from tqdm.auto import tqdm

from unveil.data.cohort import Cohort
from unveil.errors import UnveilError
from unveil.infer.counterfactual import Generator, subject_ids
from unveil.metrics.adherence import train_attribute_models
from unveil.metrics.eval_render import (  # noqa: F401  (names of this module before the split)
    FAMILY_NAMES,
    FUSION_NAMES,
    csv_cell,
    fmt,
    json_safe,
    per_subject_csv,
    summary_markdown,
    variant_name,
)
from unveil.metrics.eval_subject import Instruments, evaluate_subject, reader_input, structures
from unveil.metrics.eval_summary import (  # noqa: F401  (names of this module before the split)
    FIDELITY_KEYS,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    MEDIAN_FIGURES,
    N_BOOT_SET,
    NOT_FIGURES,
    AttributePlan,
    SummaryOptions,
    build_summary,
    edit_reasons,
)
from unveil.metrics.eval_types import Readers, SubjectSettings
from unveil.metrics.features import load_feature_network
from unveil.records.evaluation import (
    AdherenceInfo,
    Evaluation,
    EvaluationInfo,
    EvaluationSummary,
    ReaderModelInfo,
    write_evaluation,
)
from unveil.text.edits import Edit, parse_edit

log = logging.getLogger(__name__)

#: The reader of :mod:`unveil.metrics.adherence`, described in the outputs.
READER = (
    "3D CNN (three stride-2 convolutions of 8/16/32 channels, global average pooling, "
    "linear head) on the lungs' bounding box of the preprocessed volume, reduced to "
    "size^3 cells, channels lung fraction and mean windowed lung intensity"
)
#: How the 2D FID slices are taken, recorded in ``info.json``.
FID_SLICES = "axial slices through the lung mask, fixed HU window, one slice in 3 channels"


# ------------------------------------------------------------------------ the request


class EvaluationRequest(BaseModel):
    """Every option of one evaluation, validated once; the defaults are the CLI's.

    See :func:`evaluate` for the meaning of each.  Empty ``ids`` / ``attributes`` and
    empty feature-file names mean "not given".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: Path
    cohort: Path
    out: Path
    split: str | None = "test"
    ids: tuple[str, ...] | None = None
    seed: int = 0
    features_2d: Path | None = None
    features_3d: Path | None = None
    edits: tuple[str, ...] = ()
    n_boot: int = 1000
    progress: bool = True
    device: str = "cpu"
    guidance_scale: float | None = None
    steps: int | None = None
    amp: str = "none"
    attributes: tuple[str, ...] | None = None
    adherence: bool = True
    adherence_size: int = 32
    adherence_epochs: int = 150
    fid_size_2d: int | None = None
    fid_size_3d: int | None = None
    n_boot_set: int = N_BOOT_SET
    overwrite: bool = False

    @field_validator("ids", "attributes", "features_2d", "features_3d", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v is not None and not isinstance(v, Path) and not v else v

    @field_validator("n_boot", "n_boot_set")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"--n-boot must be at least 1, not {v}")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"--seed must be 0 or more, not {v}")
        return v

    @classmethod
    def create(cls, **options: Any) -> EvaluationRequest:
        """Validate ``options``; one-sentence :class:`UnveilError` for a bad value (an
        unknown option is a programming error: ``TypeError``, as for any function)."""
        try:
            return cls(**options)
        except ValidationError as err:
            e = err.errors()[0]
            name = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                raise TypeError(f"evaluate() got an unexpected keyword argument '{name}'") from None
            if e["type"] == "value_error":
                raise UnveilError(f"{e['ctx']['error']}.") from None
            raise UnveilError(
                f"the evaluation option {name} is invalid: {e['msg']} (got {e.get('input')!r})."
            ) from None


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
    **options: Any,
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
        options: the keyword-only options of :class:`EvaluationRequest`: ``device``
            (where the generator and feature networks run), ``guidance_scale`` and
            ``steps`` (diffusion sampling, default the config's), ``amp`` (``none`` or
            ``bf16``), ``attributes`` (template fields to read, default all),
            ``adherence`` (train the readers; needs ``splits.json``), ``adherence_size``
            (reader input cells per axis), ``adherence_epochs``, ``fid_size_2d`` /
            ``fid_size_3d`` (resize for the networks, ``None`` = native), ``n_boot_set``
            (resamples of the FID / KID intervals), ``overwrite`` (replace ``out``).

    Returns:
        The summary (what ``summary.json`` holds, with ``inf`` as a float).

    Raises:
        UnveilError: a bad checkpoint, cohort, split, edit, attribute or feature file, or
            an existing ``out``; nothing is written then.
    """
    request = EvaluationRequest.create(
        checkpoint=checkpoint,
        cohort=cohort,
        out=out,
        split=split,
        ids=ids,
        seed=seed,
        features_2d=features_2d,
        features_3d=features_3d,
        edits=edits,
        n_boot=n_boot,
        progress=progress,
        **options,
    )
    return run_evaluation(request).summary.to_dict()


# ------------------------------------------------------------------------ orchestration


def run_evaluation(request: EvaluationRequest) -> Evaluation:
    """Load, measure every subject, summarise, render and write ``request.out``."""
    setup = load_setup(request)
    readers = load_readers(setup)
    reasons = edit_reasons(setup.edits, readers, setup.gen.template)
    tools = Instruments(
        gen=setup.gen,
        cohort=setup.cohort,
        net2d=setup.net2d,
        net3d=setup.net3d,
        readers=readers.models,
        edits={k: e for k, e in setup.edits.items() if k not in reasons},
    )
    results = [
        evaluate_subject(tools, setup.settings, sid, setup.rows[sid])
        for sid in tqdm(setup.subjects, desc="evaluate", unit="scan", disable=not request.progress)
    ]
    plan = AttributePlan(
        template=setup.gen.template,
        fields=setup.fields,
        rows=[setup.rows[s] for s in setup.subjects],
        edits=setup.edits,
        edit_reasons=reasons,
    )
    opts = SummaryOptions(
        seed=request.seed,
        n_boot=request.n_boot,
        n_boot_set=request.n_boot_set,
        networks={"2d": setup.net2d is not None, "3d": setup.net3d is not None},
    )
    summary, rows = build_summary(results, setup.subjects, readers, plan, opts)
    for reason in dict.fromkeys(v for k, v in summary.items() if k.endswith("_reason") and v):
        log.warning("%s", reason)
    evaluation = Evaluation(
        info=evaluation_info(setup, readers),
        summary=EvaluationSummary.model_validate(summary),
    )
    write_evaluation(
        request.out,
        evaluation,
        per_subject_csv=per_subject_csv(rows),
        summary_md=summary_markdown(evaluation.summary, evaluation.info),
        overwrite=request.overwrite,
    )
    return evaluation


# ------------------------------------------------------------------------ loading


@dataclass
class EvaluationSetup:
    """What loading gives: the generator, the cohort, the subjects and the instruments.

    Attributes:
        request: the validated options.
        gen: the :class:`~unveil.infer.counterfactual.Generator` of the checkpoint.
        cohort: the opened :class:`~unveil.data.cohort.Cohort`.
        subjects: the evaluated subject ids, in order.
        rows: subject id -> clinical row (every subject of the cohort).
        fields: the template fields read by the adherence readers.
        edits: edit text -> parsed edit.
        settings: what every subject shares (seed, window, structures, sizes).
        net2d, net3d: the named feature networks, ``None`` otherwise.
    """

    request: EvaluationRequest
    gen: Any
    cohort: Any
    subjects: list[str]
    rows: dict[str, dict[str, Any]]
    fields: list[str]
    edits: dict[str, Edit]
    settings: SubjectSettings
    net2d: Any | None = None
    net3d: Any | None = None


def load_setup(request: EvaluationRequest) -> EvaluationSetup:
    """Open everything the evaluation reads, refusing bad input before any generation."""
    r = request
    out = r.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not r.overwrite:
        raise UnveilError(
            f"output folder {out} already exists and is not empty; choose another --out or "
            "pass --overwrite."
        )
    # A named network that cannot be loaded is refused before hours of generation.
    net2d = load_feature_network(r.features_2d, "2d", device=r.device) if r.features_2d else None
    net3d = load_feature_network(r.features_3d, "3d", device=r.device) if r.features_3d else None
    gen = Generator(
        r.checkpoint, device=r.device, guidance_scale=r.guidance_scale, steps=r.steps, amp=r.amp
    )
    cfg, template = gen.cfg, gen.template
    window = (float(cfg.preprocess.hu_window[0]), float(cfg.preprocess.hu_window[1]))
    parsed = {str(parse_edit(e, template)): parse_edit(e, template) for e in r.edits}
    fields = list(r.attributes) if r.attributes else list(template.field_names)
    for name in fields:
        if name not in template.field_names:
            raise UnveilError(
                f"--attributes names '{name}', which is not a field of template {template.name}; "
                f"its fields are: {', '.join(template.field_names)}."
            )
    cohort = Cohort.open(r.cohort, cfg.data)
    ids = list(r.ids) if r.ids else None
    subjects = subject_ids(cohort, ids, None if ids else r.split, gen.lm.path)
    if not subjects:
        raise UnveilError(
            f"no subject of {r.cohort} to evaluate (split {r.split} is empty or lists none of its "
            "subjects); pass --ids or another --split."
        )
    settings = SubjectSettings(
        seed=r.seed,
        window=window,
        labels=structures(cfg.data),
        size_2d=r.fid_size_2d,
        size_3d=r.fid_size_3d,
        reader_size=r.adherence_size,
    )
    return EvaluationSetup(
        r, gen, cohort, subjects, cohort.rows(), fields, parsed, settings, net2d, net3d
    )


def load_readers(setup: EvaluationSetup) -> Readers:
    """The condition-adherence readers, trained on the real training split of the run;
    empty with a note when adherence is not asked for or the split cannot be read."""
    if not setup.request.adherence:
        return Readers(note="condition adherence was not asked for (--no-adherence).")
    try:
        train_ids = subject_ids(setup.cohort, None, "train", setup.gen.lm.path)
    except UnveilError as err:
        return Readers(
            note="condition adherence was not measured: its readers are trained on the training "
            f"split of the run, which could not be read ({str(err).rstrip('.')})."
        )
    if not train_ids:
        return Readers(
            note="condition adherence was not measured: the training split lists no subject of "
            "this cohort."
        )
    r, gen = setup.request, setup.gen
    inputs = []
    for sid in tqdm(
        train_ids, desc="adherence: real training scans", unit="scan", disable=not r.progress
    ):
        image, mask = setup.cohort.load(sid)
        prepared = gen.pre.prepare(image, mask)
        lung_values = setup.settings.labels["lung"]
        inputs.append(
            reader_input(prepared.image[0], prepared.label_map, lung_values, r.adherence_size)
        )
    models, reasons = train_attribute_models(
        gen.template,
        setup.fields,
        [setup.rows[s] for s in train_ids],
        np.stack(inputs),
        seed=r.seed,
        epochs=r.adherence_epochs,
    )
    return Readers(models=models, reasons=reasons, train_ids=train_ids)


# ------------------------------------------------------------------------ the record


def evaluation_info(setup: EvaluationSetup, readers: Readers) -> EvaluationInfo:
    """``info.json``: what was evaluated, with which settings and which readers."""
    r, gen = setup.request, setup.gen
    cfg = gen.cfg
    ck = Path(gen.lm.path).resolve()
    run_dir = ck.parent.parent if ck.parent.name == "checkpoints" else ck.parent
    adherence = AdherenceInfo(
        reader=READER,
        input_size=r.adherence_size,
        epochs=r.adherence_epochs,
        train_subjects=len(readers.train_ids),
        attributes=setup.fields,
        models={
            name: ReaderModelInfo(
                kind=m.kind, classes=[str(c) for c in m.classes], n_train=m.n_train
            )
            for name, m in readers.models.items()
        },
    )
    return EvaluationInfo(
        checkpoint=str(ck),
        step=int(gen.lm.step),
        run_name=run_dir.name,
        family=cfg.model.family,
        fusion=cfg.model.fusion,
        variant=variant_name(cfg.model.family, cfg.model.fusion),
        cohort=str(r.cohort.resolve()),
        split=None if r.ids else r.split,
        n_subjects=len(setup.subjects),
        subjects=list(setup.subjects),
        seed=r.seed,
        hu_window=list(cfg.preprocess.hu_window),
        n_boot=r.n_boot,
        n_boot_set=r.n_boot_set,
        guidance_scale=gen.guidance_scale,
        amp=gen.amp,
        sample_steps=gen.steps,
        features_2d=str(r.features_2d.resolve()) if r.features_2d else None,
        features_3d=str(r.features_3d.resolve()) if r.features_3d else None,
        fid_slices=FID_SLICES,
        fid_size_2d=r.fid_size_2d,
        fid_size_3d=r.fid_size_3d,
        edits=list(setup.edits),
        adherence=adherence,
        versions=dict(gen.lm.versions),
        config=cfg.to_dict(),
    )
