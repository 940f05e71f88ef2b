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
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unveil.conditioning import TextCondition
from unveil.errors import UnveilError
from unveil.generative.registry import family_for
from unveil.records import PLAN_JSON  # noqa: F401  (the plan's file name, defined with the run layout)

log = logging.getLogger(__name__)

#: How the noise of a run is drawn (written to counterfactual.json as ``noise``).
NOISE_RULE = "per-subject"
#: Noise streams of one (subject, seed): the pair's shared noise and the floor's own.
NOISE_STREAMS = {"pair": 0, "floor": 1}
#: Default number of permuted-label controls per null-edit field.
PERMUTED_CONTROLS = 2
#: Largest accepted classifier-free guidance scale.  Useful scales are about 1 to 15 (the
#: config default is 1); far above that the guided prediction is dominated by the amplified
#: conditional-minus-unconditional difference, samples saturate at the HU window and, at
#: ~1e30, overflow to inf/NaN.  0 (unconditional) is the lower bound, as in the config.
MAX_GUIDANCE_SCALE = 100.0
#: What a non-finite generated volume most likely means (part of the error sentence).
NONFINITE_CAUSE = "a diverged checkpoint or a non-finite/huge --guidance-scale"


def check_sampling_options(guidance_scale: float | None, steps: int | None) -> None:
    """Refuse a guidance scale or step count that cannot give a usable volume.

    Called before the model is loaded and before anything is written.  ``None`` means the
    checkpoint's own ``diffusion.guidance_scale`` / ``diffusion.sample_steps``.
    """
    if guidance_scale is not None:
        g = float(guidance_scale)
        if not math.isfinite(g) or not 0.0 <= g <= MAX_GUIDANCE_SCALE:
            raise UnveilError(
                f"--guidance-scale {guidance_scale} is not a finite number between 0 and "
                f"{MAX_GUIDANCE_SCALE:g}; give a value such as 3, or omit it to use the "
                "checkpoint's diffusion.guidance_scale."
            )
    if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps < 1):
        raise UnveilError(
            f"--steps {steps} is not a whole number of at least 1; give the number of sampling "
            "steps, e.g. 50, or omit it to use the checkpoint's diffusion.sample_steps."
        )


def check_finite(volume, subject: str, seed: int, what: str | None = None) -> None:
    """Refuse a generated volume holding NaN or inf (it is then not written)."""
    array = np.asarray(volume.array)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        kind = f" ({what})" if what else ""
        raise UnveilError(
            f"the generated volume of subject {subject}, seed {seed}{kind} holds {bad} "
            f"non-finite value(s) (NaN or inf) and was not written; the likely cause is "
            f"{NONFINITE_CAUSE}, so use an earlier checkpoint or a smaller --guidance-scale."
        )


def refuse_cohort_folders(out: str | Path, cohort_root: str | Path) -> None:
    """Refuse an output folder that is, or lies in, a cohort's ``images/`` or ``masks/``.

    Checked against the given cohort, and against any ``images``/``masks`` folder that sits
    next to a clinical table (another cohort).  Not even ``--overwrite`` allows it: those
    folders hold the real scans and masks.
    """
    from unveil.data.cohort import IMAGES_DIR, MASKS_DIR
    from unveil.data.table import TABLE_NAMES

    target = Path(os.path.abspath(Path(out).expanduser())).resolve()
    root = Path(os.path.abspath(Path(cohort_root).expanduser())).resolve()
    hit: tuple[Path, Path] | None = None
    for name in (IMAGES_DIR, MASKS_DIR):
        folder = root / name
        if target == folder or folder in target.parents:
            hit = (folder, root)
            break
    if hit is None:
        for folder in (target, *target.parents):
            if folder.name in (IMAGES_DIR, MASKS_DIR) and any(
                (folder.parent / t).is_file() for t in TABLE_NAMES
            ):
                hit = (folder, folder.parent)
                break
    if hit is not None:
        folder, cohort = hit
        raise UnveilError(
            f"--out {out} lies in {folder}, the {folder.name}/ folder of the cohort at {cohort}, "
            "where generated volumes would replace real data (refused even with --overwrite); "
            "choose a folder outside the cohort's images/ and masks/."
        )


def _subject_key(subject: str) -> int:
    # A stable 64-bit key of the id (Python's hash() is salted per process).
    return int.from_bytes(hashlib.sha256(str(subject).encode("utf-8")).digest()[:8], "little")


def subject_seed(subject: str, seed: int, stream: str = "pair") -> int:
    """The torch seed of ``(subject, seed, stream)``: distinct subjects, seeds and streams
    get unrelated noise, and the same triple the same noise on every machine and rank."""
    ss = np.random.SeedSequence([_subject_key(subject), int(seed), NOISE_STREAMS[stream]])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def subject_noise(
    shape: tuple[int, ...], subject: str, seed: int, stream: str = "pair"
) -> torch.Tensor:
    """Standard normal noise ``(1, 1, *shape)`` of one subject, seed index and stream."""
    g = torch.Generator().manual_seed(subject_seed(subject, seed, stream))
    return torch.randn((1, 1, *shape), generator=g)


def permuted_controls(
    subjects: list[str],
    rows: dict[str, dict[str, Any]],
    columns: list[str],
    n: int,
) -> dict[str, dict[str, Any]]:
    """Permuted-label negative controls: ``{name: {subject: value}}``.

    For each null-edit column and ``j = 1..n``, a fixed random permutation ``pi_j`` of the
    run's subjects (seeded by the column and ``j``, so every rank and every re-run agrees)
    gives subject ``i`` the recorded value of subject ``pi_j(i)`` (None where that one is
    missing: the field is then left out of the prompt).  Names are
    ``permuted-<j>:<column>``.
    """
    out: dict[str, dict[str, Any]] = {}
    ordered = sorted(subjects)
    for col in columns:
        for j in range(1, int(n) + 1):
            rng = np.random.default_rng([_subject_key(col), j])
            perm = rng.permutation(len(ordered))
            out[f"permuted-{j}:{col}"] = {
                sid: rows[ordered[p]].get(col) for sid, p in zip(ordered, perm, strict=True)
            }
    return out


def check_text_setup(lm, encoder, template=None) -> None:
    """Refuse an encoder or template other than the one the checkpoint was trained with."""
    if encoder.identity != lm.meta.encoder_identity:
        raise UnveilError(
            f"checkpoint {lm.path} was trained with text encoder {lm.meta.encoder_name} "
            f"({lm.meta.encoder_identity[:24]}...) but this installation builds a different one "
            f"({encoder.identity[:24]}...); use the same encoder weights or retrain."
        )
    if template is not None and template.identity() != lm.meta.template_identity:
        raise UnveilError(
            f"template {template.name} differs from the one checkpoint {lm.path} was trained with; "
            "omit --template (the checkpoint's own is used) or retrain with this template."
        )


def subject_ids(cohort, ids: list[str] | None, split: str | None, checkpoint: Path) -> list[str]:
    """The subjects to generate: explicit ids, a split of the training run, or all."""
    available = [s.id for s in cohort.subjects]
    if ids:
        unknown = [i for i in ids if i not in available]
        if unknown:
            raise UnveilError(
                f"subject(s) {', '.join(unknown[:5])} are not complete subjects of {cohort.root}; "
                f"run `unveil check {cohort.root}`."
            )
        return list(ids)
    if split:
        run_dir = (
            checkpoint.parent.parent
            if checkpoint.parent.name == "checkpoints"
            else checkpoint.parent
        )
        path = Path(cohort.root) / "splits.json"
        if not path.is_file():
            path = run_dir / "splits.json"
        if not path.is_file():
            raise UnveilError(
                f"--split {split} needs the training run's splits.json next to {checkpoint}; pass --ids instead."
            )
        from unveil.data.splits import read_splits

        splits, _ = read_splits(path)
        if split not in splits:
            raise UnveilError(f"--split must be one of {', '.join(splits)}, not {split}.")
        return [i for i in splits[split] if i in available]
    return available


class Generator:
    """A loaded model ready to turn (prepared subject, prompt, noise) into HU volumes."""

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "cpu",
        guidance_scale: float | None = None,
        steps: int | None = None,
        template=None,
        amp: str = "none",
    ) -> None:
        from unveil.data.preprocess import Preprocessor
        from unveil.model import load_model
        from unveil.precision import AMP_CHOICES

        if amp not in AMP_CHOICES:  # before the model is loaded or anything is written
            raise UnveilError(f"--amp must be one of {', '.join(AMP_CHOICES)}, not '{amp}'.")
        check_sampling_options(guidance_scale, steps)
        from unveil.text.cache import EmbeddingCache
        from unveil.text.encoders import build_encoder

        self.lm = load_model(checkpoint, device=device)
        self.cfg = self.lm.cfg
        self.device = torch.device(device)
        self.template = self.lm.template()
        encoder = build_encoder(self.lm.meta.encoder_name, max_length=self.cfg.text.max_length)
        check_text_setup(self.lm, encoder, template)
        self.cache = EmbeddingCache(encoder, cache_dir=None)
        self.pre = Preprocessor(self.cfg.preprocess, self.cfg.data)
        self.family = family_for(self.cfg)
        self.family.check_sampling(
            self.cfg, steps, guidance_scale, f"checkpoint {self.lm.path}", MAX_GUIDANCE_SCALE
        )
        self.guidance_scale = guidance_scale
        self.steps = steps
        self.amp = amp

    @property
    def effective_guidance_scale(self) -> float:
        """The guidance scale sampling uses (``--guidance-scale`` or the checkpoint's)."""
        if self.guidance_scale is not None:
            return float(self.guidance_scale)
        return float(self.cfg.diffusion.guidance_scale)

    @property
    def effective_steps(self) -> int | None:
        """Sampling steps of an iterative family (None for a GAN, which has none)."""
        return self.family.sampling_steps(self.cfg, self.steps)

    def condition(self, prompt: str) -> TextCondition:
        enc = self.cache.get([prompt])
        return TextCondition(enc.tokens, enc.mask, enc.pooled, torch.zeros(1, dtype=torch.bool)).to(
            self.device
        )

    @torch.no_grad()
    def generate(self, prepared, prompt: str, noise: torch.Tensor) -> torch.Tensor:
        """``(1, 1, X', Y', Z')`` in [-1, 1] on the preprocessed grid."""
        from unveil.infer.generate import generate_prepared

        return generate_prepared(
            self.lm.generator,
            self.cfg,
            prepared,
            self.condition(prompt),
            noise,
            self.device,
            guidance_scale=self.guidance_scale,
            steps=self.steps,
            amp=self.amp,
        )

    @torch.no_grad()
    def invert(self, prepared, prompt: str) -> torch.Tensor:
        """DDIM inversion of the real (preprocessed) scan under ``prompt`` -> ``x_T``.

        Always float32, whatever ``amp``: inversion accumulates the network's error over
        every step and must return to the scan it started from.  The family must support
        inversion (its ``invert`` refuses otherwise).
        """
        from unveil.infer.sliding import windowed

        self.family.check_inversion()
        cond = self.condition(prompt)
        mask = prepared.mask.unsqueeze(0).to(self.device)
        run = windowed(
            self.lm.generator,
            self.cfg.preprocess.patch_size,
            self.cfg.infer.overlap,
            self.cfg.infer.sw_batch_size,
            self.cfg.infer.blend,
        )
        return self.family.invert(
            self.cfg,
            lambda x, t: run(x, mask, t, cond),
            prepared.image.unsqueeze(0).to(self.device),
            steps=self.steps,
        )

    def to_hu(self, fake: torch.Tensor, prepared):
        return self.pre.to_source(fake[0].cpu(), prepared, is_unit=True)


def _file_identity(path: str | Path) -> dict[str, Any]:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cohort_fingerprint(cohort, subjects: list[str]) -> str:
    """A digest of the clinical table's bytes and of each subject's image and mask files
    (name, size, modification time): it changes when the inputs of the run change."""
    h = hashlib.sha256()
    if cohort.table_path is not None:
        h.update(Path(cohort.table_path).read_bytes())
    for sid in subjects:
        subject = cohort[sid]
        for f in (subject.image, subject.mask):
            st = Path(f).stat()
            h.update(f"{sid}\0{Path(f).name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


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
    from tqdm.auto import tqdm

    from unveil.data.cohort import Cohort
    from unveil.data.io import write_volume
    from unveil.records import (
        FileIdentity,
        RunLayout,
        RunPlan,
        RunRecord,
        edit_slug,
        read_run_plan,
        write_run_plan,
        write_run_record,
    )
    from unveil.runtime.distributed import barrier, init_distributed, shutdown
    from unveil.text.edits import apply_edits, parse_edit

    out = Path(out)
    layout = RunLayout(out)
    if not edits and not null_edits:
        raise UnveilError("give at least one --edit (for example --edit smoking=current).")
    if isinstance(seeds, bool) or int(seeds) != seeds or seeds < 1:
        raise UnveilError(f"--seeds {seeds} is not a whole number of at least 1; give e.g. 3.")
    if n_permuted < 0:
        raise UnveilError("--permuted-controls must be 0 or more.")
    check_sampling_options(guidance_scale, steps)
    refuse_cohort_folders(out, cohort_root)
    if layout.json_path.exists() and not overwrite:
        raise UnveilError(
            f"{out} already holds a counterfactual run; choose another --out or pass --overwrite."
        )
    info = init_distributed(device)
    try:
        gen = Generator(
            checkpoint,
            device=str(info.device),
            guidance_scale=guidance_scale,
            steps=steps,
            amp=amp,
        )
        if from_scan:  # before the plan is written
            gen.family.check_inversion()
        template = gen.template
        parsed = {e: parse_edit(e, template) for e in [*edits, *null_edits]}
        base = [parse_edit(b, template) for b in baseline]
        names = [str(parsed[e]) for e in [*edits, *null_edits]]
        slugs = [edit_slug(n) for n in names]
        if len(set(slugs)) != len(slugs):
            raise UnveilError(
                f"two edits share a file name ({', '.join(names)}); give each edit once."
            )
        cohort = Cohort.open(cohort_root, gen.cfg.data)
        subjects = subject_ids(cohort, ids, split, gen.lm.path)
        rows = cohort.rows()
        null_columns = list(dict.fromkeys(parsed[e].field for e in null_edits))
        column_of = {f.name: f.column for f in template.fields}
        perms = permuted_controls(
            subjects, rows, [column_of.get(c, c) for c in null_columns], n_permuted
        )
        seed_list = [0] if from_scan else list(range(int(seeds)))
        # The final record, known before the first volume; written last.
        record = RunRecord(
            checkpoint=str(Path(gen.lm.path).resolve()),
            cohort=str(Path(cohort_root).resolve()),
            family=gen.cfg.model.family,
            edits=[str(parsed[e]) for e in edits],
            null_edits=[str(parsed[e]) for e in null_edits],
            baseline=[str(b) for b in base],
            permuted_controls=list(perms),
            seeds=seed_list,
            noise=NOISE_RULE,
            subjects=subjects,
            from_scan=bool(from_scan),
            guidance_scale=guidance_scale
            if guidance_scale is not None
            else gen.cfg.diffusion.guidance_scale,
            steps=gen.effective_steps,
            hu_window=tuple(gen.cfg.preprocess.hu_window),
            amp=amp,
            config=gen.cfg.to_dict(),
        )
        # What the volumes depend on: a rerun with the same plan may keep them.
        plan = RunPlan(
            checkpoint=FileIdentity(**_file_identity(gen.lm.path), step=gen.lm.step),
            cohort=record.cohort,
            cohort_files=_cohort_fingerprint(cohort, subjects),
            family=record.family,
            edits=record.edits,
            null_edits=record.null_edits,
            baseline=record.baseline,
            permuted_controls=record.permuted_controls,
            seeds=seed_list,
            noise=NOISE_RULE,
            subjects=subjects,
            from_scan=bool(from_scan),
            guidance_scale=gen.effective_guidance_scale,
            steps=gen.effective_steps,
            amp=amp,
        )
        resume = False
        if layout.plan_path.exists() and not overwrite:
            old = read_run_plan(layout.plan_path)
            if old is None:
                raise UnveilError(
                    f"{layout.plan_path} is unreadable, so the interrupted run in {out} cannot be "
                    "resumed; choose another --out or pass --overwrite to start it again."
                )
            differ = plan.differences(old)
            if differ:
                raise UnveilError(
                    f"{out} holds an interrupted counterfactual run made with other parameters "
                    f"({', '.join(differ)} differ); choose another --out, or pass --overwrite "
                    "to discard it and start again."
                )
            resume = True
        every = layout.volumes(record)
        barrier(info)  # every rank has read the old plan before the main one replaces it
        if info.is_main and not resume:
            # A fresh start: nothing in the folder belongs to this run yet.  The old record
            # goes first (the folder must not look complete while it is rewritten), then
            # any volume at one of this run's paths (it would be kept by a resume).
            layout.json_path.unlink(missing_ok=True)
            for path in every:
                path.unlink(missing_ok=True)
            write_run_plan(layout.plan_path, plan)
        barrier(info)

        mine = subjects[info.rank :: info.world_size]  # subjects sharded over ranks
        contrasts = [*names, *perms]
        todo: dict[str, list[tuple[int, str, Path]]] = {}
        total = 0
        for sid in mine:
            jobs = []
            for k in seed_list:
                jobs.append((k, "factual", layout.factual(sid, k)))
                jobs.append((k, "floor", layout.floor(sid, k)))
                jobs.extend((k, n, layout.edited(sid, n, k)) for n in contrasts)
            total += len(jobs)
            todo[sid] = [j for j in jobs if not (resume and j[2].is_file())]
        skipped = total - sum(len(j) for j in todo.values())
        if resume:
            log.info(
                "resuming the counterfactual run in %s%s: %d of %d volume(s) already written are "
                "kept (skipped), %d to generate",
                out,
                f" (rank {info.rank})" if info.world_size > 1 else "",
                skipped,
                total,
                total - skipped,
            )
        bar = tqdm(
            total=total,
            initial=skipped,
            desc="counterfactual",
            unit="vol",
            disable=not (progress and info.is_main),
        )
        for sid in mine:
            if not todo[sid]:
                continue
            image, mask = cohort.load(sid)
            prepared = gen.pre.prepare(image, mask)
            row = apply_edits(rows[sid], base, template) if base else dict(rows[sid])
            factual_prompt = template.render(row)
            prompts = {
                n: template.render(apply_edits(row, [parsed[e]], template))
                for n, e in zip(names, [*edits, *null_edits], strict=False)
            }
            for name, values in perms.items():
                col = name.split(":", 1)[1]
                prompts[name] = template.render({**row, col: values[sid]})
            latent = gen.invert(prepared, factual_prompt) if from_scan else None
            shape = tuple(prepared.image.shape[-3:])
            pair_noise: dict[int, torch.Tensor] = {}
            for k, what, path in todo[sid]:
                if what == "floor":
                    prompt, noise = factual_prompt, subject_noise(shape, sid, k, stream="floor")
                    label = "noise floor"
                else:
                    if k not in pair_noise:
                        pair_noise[k] = (
                            latent if latent is not None else subject_noise(shape, sid, k)
                        )
                    noise = pair_noise[k]
                    prompt = factual_prompt if what == "factual" else prompts[what]
                    label = what if what == "factual" else f"contrast {what}"
                volume = gen.to_hu(gen.generate(prepared, prompt, noise), prepared)
                check_finite(volume, sid, k, label)
                write_volume(volume, path)
                bar.update(1)
        bar.close()
        barrier(info)
        if info.is_main:
            missing = [p for p in every if not p.is_file()]
            if missing:
                raise UnveilError(
                    f"{missing[0]} and {len(missing) - 1} other volume(s) of the run in {out} are "
                    "missing after generation; re-run the same command to generate them."
                )
            write_run_record(layout.json_path, record)  # last: its presence marks a complete run
        return out
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
    from tqdm.auto import tqdm

    from unveil.data.cohort import Cohort
    from unveil.data.io import write_volume
    from unveil.text.edits import apply_edits, parse_edit

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
