"""Counterfactual pairs: the same mask and the same noise, prompts differing in one field.

For every subject and seed ``k`` we draw ONE noise volume on the subject's preprocessed
grid from a ``torch.Generator`` seeded by (subject id, ``k``) (:func:`subject_noise`), and
generate with it under the factual prompt and under every edited prompt, so a pair
differs only in the text, by construction.  Each subject has its own noise: were every
subject given the same seed-``k`` volume, the subjects' floors and effects would share
that volume's idiosyncrasies and would not be independent replicates (the subject is the
unit of inference).  The noise floor is the factual prompt with a second, independent noise
volume of the same (subject, ``k``); a null edit (an attribute known to have no effect) is
the negative control, and each null edit's field also gets ``permuted_controls``
*permuted-label* controls: every subject's value of that field replaced by the value of
another subject under a fixed random permutation, which is again an edit with no planted
meaning, so the analysis has several negative controls to calibrate against.  With ``from_scan`` (diffusion), the subject's real scan is inverted with
DDIM under its factual prompt and regenerated from that latent under each prompt, so the
counterfactual is of the patient's own image.

An optional *baseline* (e.g. ``smoking=never``) is applied to the factual and floor
prompts and under every edit, so ``--baseline smoking=never --edit smoking=current``
contrasts never with current for every subject instead of only for those who were not
current smokers already.

Writes the layout of :mod:`unveil.records`; ``counterfactual.json`` is written
last, so a run without it is incomplete (and ``unveil analyze`` says so).

Resuming: before the first volume, the run's parameters (checkpoint file, cohort files,
edits, baseline, controls, seeds, subjects, noise rule, guidance, steps, precision) are
written to ``counterfactual.plan.json``.  Re-running an interrupted run (the plan there,
``counterfactual.json`` not) with the same parameters keeps every volume already written
(volumes are written atomically, so a file that exists is complete) and generates only the
missing ones; since each volume depends only on its (subject, seed, prompt) and noise, the
result is the one an uninterrupted run gives.  Other parameters are refused unless
``overwrite`` (which starts the run again from scratch).

Safety: no output may land in a cohort's ``images/`` or ``masks/`` folder (not even with
``overwrite``), guidance scale and steps are checked before the model is loaded, and every
generated volume is checked for NaN/inf before it is written (:func:`check_finite`).

This module holds the entry points (:func:`run_counterfactual`, :func:`generate_cohort`)
and keeps every name it has always offered; the work lies in :mod:`~unveil.infer.cf_checks`
(the checks of inputs and volumes), :mod:`~unveil.infer.cf_noise` (the noise and the
permutations), :mod:`~unveil.infer.cf_model` (:class:`Generator`, the loaded model),
:mod:`~unveil.infer.cf_plan` (the request, the plan and record, resuming) and
:mod:`~unveil.infer.cf_generate` (the volumes of a planned run).
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from unveil.data.cohort import Cohort
from unveil.data.io import write_volume
from unveil.errors import UnveilError
from unveil.infer.cf_checks import (  # noqa: F401  (names of this module before the split)
    MAX_GUIDANCE_SCALE,
    NONFINITE_CAUSE,
    check_finite,
    check_sampling_options,
    check_text_setup,
    refuse_cohort_folders,
    subject_ids,
)
from unveil.infer.cf_generate import generate_volumes
from unveil.infer.cf_model import Generator
from unveil.infer.cf_noise import (  # noqa: F401  (names of this module before the split)
    NOISE_RULE,
    NOISE_STREAMS,
    PERMUTED_CONTROLS,
    permuted_controls,
    subject_noise,
    subject_seed,
)
from unveil.infer.cf_plan import (
    CounterfactualRequest,
    check_request,
    finish_run,
    pending_volumes,
    plan_run,
    start_run,
)
from unveil.records import PLAN_JSON  # noqa: F401  (the plan's file name, defined with the run layout)
from unveil.runtime.distributed import barrier, init_distributed, shutdown
from unveil.text.edits import apply_edits, parse_edit


def run_counterfactual(
    checkpoint: str | Path,
    cohort_root: str | Path,
    out: str | Path,
    edits: list[str],
    null_edits: list[str] = (),
    baseline: list[str] = (),
    seeds: int = 3,
    ids: list[str] | None = None,
    split: str | None = None,
    from_scan: bool = False,
    guidance_scale: float | None = None,
    steps: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    amp: str = "none",
    n_permuted: int = PERMUTED_CONTROLS,
) -> Path:
    """Generate the factual / edited / noise-floor volumes of every subject and seed.

    ``n_permuted`` permuted-label controls are generated per null-edit field (0: none).
    An interrupted run in ``out`` with the same parameters is resumed (volumes already
    written are kept); ``overwrite`` starts over, also over a complete run.
    """
    request = CounterfactualRequest(
        checkpoint=checkpoint,
        cohort_root=cohort_root,
        out=Path(out),
        edits=edits,
        null_edits=null_edits,
        baseline=baseline,
        seeds=seeds,
        ids=ids,
        split=split,
        from_scan=from_scan,
        guidance_scale=guidance_scale,
        steps=steps,
        overwrite=overwrite,
        amp=amp,
        n_permuted=n_permuted,
    )
    check_request(request)  # before the model is loaded or anything is written
    info = init_distributed(device)
    try:
        # Load: the model, then the subjects, contrasts, record and plan of the run.
        gen = Generator(
            checkpoint, device=str(info.device), guidance_scale=guidance_scale, steps=steps, amp=amp
        )
        run = plan_run(request, gen)
        start_run(run, info)  # a fresh start clears the folder and writes the plan
        # Compute: this rank's volumes not yet written.
        generate_volumes(run, pending_volumes(run, info), progress=progress and info.is_main)
        barrier(info)
        # Write: the record, last (its presence marks a complete run).
        if info.is_main:
            finish_run(run)
        return run.out
    finally:
        shutdown(info)


def generate_cohort(
    checkpoint: str | Path,
    cohort_root: str | Path,
    out: str | Path,
    ids: list[str] | None = None,
    split: str | None = None,
    seed: int = 0,
    edits: list[str] = (),
    device: str = "cpu",
    guidance_scale: float | None = None,
    steps: int | None = None,
    progress: bool = True,
    amp: str = "none",
    overwrite: bool = False,
) -> list[Path]:
    """Generate each subject from its own mask and clinical row: ``OUT/<id>.nii.gz`` in HU.

    ``out`` may never be (or lie in) a cohort's ``images/`` or ``masks/``; an existing
    ``OUT/<id>.nii.gz`` is replaced only with ``overwrite`` (checked for every subject
    before anything is generated).  A volume with NaN/inf is refused, not written.
    """
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise UnveilError(f"--seed {seed} is not a whole number of 0 or more; give e.g. 0.")
    check_sampling_options(guidance_scale, steps)
    refuse_cohort_folders(out, cohort_root)
    gen = Generator(checkpoint, device=device, guidance_scale=guidance_scale, steps=steps, amp=amp)
    parsed = [parse_edit(e, gen.template) for e in edits]
    cohort = Cohort.open(cohort_root, gen.cfg.data)
    rows = cohort.rows()
    subjects = subject_ids(cohort, ids, split, gen.lm.path)
    targets = {sid: Path(out) / f"{sid}.nii.gz" for sid in subjects}
    folders = [p for p in targets.values() if p.is_dir()]
    if folders:
        raise UnveilError(
            f"{folders[0]} is a folder, so the generated volume cannot be written there; "
            "move it away or choose another --out."
        )
    existing = [p for p in targets.values() if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise UnveilError(
            f"{existing[0]} already exists ({len(existing)} of the {len(targets)} output "
            "file(s) do); choose another --out, or pass --overwrite to replace them."
        )
    written = []
    for sid in tqdm(subjects, desc="generate", unit="scan", disable=not progress):
        image, mask = cohort.load(sid)
        prepared = gen.pre.prepare(image, mask)
        row = apply_edits(rows[sid], parsed, gen.template) if parsed else rows[sid]
        fake = gen.generate(
            prepared,
            gen.template.render(row),
            subject_noise(tuple(prepared.image.shape[-3:]), sid, seed),
        )
        volume = gen.to_hu(fake, prepared)
        check_finite(volume, sid, seed)
        written.append(write_volume(volume, targets[sid]))
    return written
