"""Generating the volumes of a planned counterfactual run.

For each subject and seed, one noise volume drawn for (subject, seed) is shared by the
factual prompt and every edited prompt (edits, null edits, permuted-label controls); the
noise floor is the factual prompt with the second, independent noise of (subject, seed).
With ``from_scan`` the subject's inverted scan replaces the pair's noise.  Every volume is
checked for NaN/inf before it is written, atomically.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from unveil.data.io import Volume, write_volume
from unveil.infer.cf_checks import check_finite
from unveil.infer.cf_noise import subject_noise
from unveil.infer.cf_plan import CounterfactualRun, PendingVolumes, VolumeJob, contrast_prompts


def generate_volumes(run: CounterfactualRun, pending: PendingVolumes, progress: bool) -> None:
    """Generate and write every pending volume, one subject at a time."""
    bar = tqdm(
        total=pending.total,
        initial=pending.skipped,
        desc="counterfactual",
        unit="vol",
        disable=not progress,
    )
    for sid, jobs in pending.jobs.items():
        if not jobs:
            continue
        _subject_volumes(run, sid, jobs, bar)
    bar.close()


def subject_prompts(run: CounterfactualRun, sid: str) -> tuple[str, dict[str, str]]:
    """The factual prompt of a subject (with the baseline) and its prompt under each contrast."""
    return contrast_prompts(run.gen.template, run.rows[sid], run.base, run.edits, run.perms, sid)


def _subject_volumes(run: CounterfactualRun, sid: str, jobs: list[VolumeJob], bar) -> None:
    """Generate one subject's pending volumes; the pair's noise is drawn once per seed."""
    gen = run.gen
    image, mask = run.cohort.load(sid)
    prepared = gen.pre.prepare(image, mask)
    factual_prompt, prompts = subject_prompts(run, sid)
    latent = gen.invert(prepared, factual_prompt) if run.request.from_scan else None
    shape = tuple(prepared.image.shape[-3:])
    pair_noise: dict[int, torch.Tensor] = {}
    factual: dict[int, Volume] = {}  # per seed, this call's factual volume
    for k, what, path in jobs:
        if what == "floor":
            prompt, noise = factual_prompt, subject_noise(shape, sid, k, stream="floor")
            label = "noise floor"
        else:
            if k not in pair_noise:
                pair_noise[k] = latent if latent is not None else subject_noise(shape, sid, k)
            noise = pair_noise[k]
            prompt = factual_prompt if what == "factual" else prompts[what]
            label = what if what == "factual" else f"contrast {what}"
        if what not in ("floor", "factual") and prompt == factual_prompt and k in factual:
            # A contrast that leaves the prompt as it is (RunRecord.unchanged): same prompt,
            # same noise, so its volume is the factual one; no second network pass.
            volume = factual[k]
        else:
            volume = gen.to_hu(gen.generate(prepared, prompt, noise), prepared)
            check_finite(volume, sid, k, label)
        if what == "factual":
            factual[k] = volume
        write_volume(volume, path)
        bar.update(1)
