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

Writes the layout of :mod:`unveil.analysis.layout`; ``counterfactual.json`` is written
last, so a run without it is incomplete (and ``unveil analyze`` says so).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unveil.conditioning import TextCondition
from unveil.errors import UnveilError

log = logging.getLogger(__name__)

#: How the noise of a run is drawn (written to counterfactual.json as ``noise``).
NOISE_RULE = "per-subject"
#: Noise streams of one (subject, seed): the pair's shared noise and the floor's own.
NOISE_STREAMS = {"pair": 0, "floor": 1}
#: Default number of permuted-label controls per null-edit field.
PERMUTED_CONTROLS = 2


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
        import json

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
        splits = json.loads(path.read_text())["splits"]
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
        self.guidance_scale = guidance_scale
        self.steps = steps
        self.amp = amp

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
        every step and must return to the scan it started from.
        """
        from unveil.generative.diffusion import DiffusionProcess
        from unveil.infer.sliding import windowed

        if self.cfg.model.family != "diffusion":
            raise UnveilError("--from-scan inverts a diffusion model; this checkpoint is a GAN.")
        process = DiffusionProcess(self.cfg.diffusion)
        cond = self.condition(prompt)
        mask = prepared.mask.unsqueeze(0).to(self.device)
        run = windowed(
            self.lm.generator,
            self.cfg.preprocess.patch_size,
            self.cfg.infer.overlap,
            self.cfg.infer.sw_batch_size,
            self.cfg.infer.blend,
        )
        return process.invert(
            lambda x, t: run(x, mask, t, cond),
            prepared.image.unsqueeze(0).to(self.device),
            steps=self.steps,
        )

    def to_hu(self, fake: torch.Tensor, prepared):
        return self.pre.to_source(fake[0].cpu(), prepared, is_unit=True)


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
    """
    from tqdm.auto import tqdm

    from unveil.analysis.layout import RUN_JSON, RunLayout, edit_slug
    from unveil.data.cohort import Cohort
    from unveil.data.io import write_volume
    from unveil.fs import write_json
    from unveil.text.edits import apply_edits, parse_edit
    from unveil.train.distributed import barrier, init_distributed, shutdown

    out = Path(out)
    layout = RunLayout(out)
    if not edits and not null_edits:
        raise UnveilError("give at least one --edit (for example --edit smoking=current).")
    if seeds < 1:
        raise UnveilError("--seeds must be at least 1.")
    if n_permuted < 0:
        raise UnveilError("--permuted-controls must be 0 or more.")
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
        mine = subjects[info.rank :: info.world_size]  # subjects sharded over ranks
        total = len(mine) * len(seed_list) * (2 + len(names) + len(perms))
        bar = tqdm(
            total=total, desc="counterfactual", unit="vol", disable=not (progress and info.is_main)
        )
        for sid in mine:
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
            for k in seed_list:
                noise = latent if latent is not None else subject_noise(shape, sid, k)
                write_volume(
                    gen.to_hu(gen.generate(prepared, factual_prompt, noise), prepared),
                    layout.factual(sid, k),
                )
                bar.update(1)
                floor_noise = subject_noise(shape, sid, k, stream="floor")
                write_volume(
                    gen.to_hu(gen.generate(prepared, factual_prompt, floor_noise), prepared),
                    layout.floor(sid, k),
                )
                bar.update(1)
                for n in [*names, *perms]:
                    write_volume(
                        gen.to_hu(gen.generate(prepared, prompts[n], noise), prepared),
                        layout.edited(sid, n, k),
                    )
                    bar.update(1)
        bar.close()
        barrier(info)
        if info.is_main:
            record: dict[str, Any] = {
                "checkpoint": str(Path(gen.lm.path).resolve()),
                "cohort": str(Path(cohort_root).resolve()),
                "family": gen.cfg.model.family,
                "edits": [str(parsed[e]) for e in edits],
                "null_edits": [str(parsed[e]) for e in null_edits],
                "baseline": [str(b) for b in base],
                "permuted_controls": list(perms),
                "seeds": seed_list,
                "noise": NOISE_RULE,
                "subjects": subjects,
                "from_scan": bool(from_scan),
                "guidance_scale": guidance_scale
                if guidance_scale is not None
                else gen.cfg.diffusion.guidance_scale,
                "hu_window": list(gen.cfg.preprocess.hu_window),
                "amp": amp,
                "config": gen.cfg.to_dict(),
            }
            write_json(out / RUN_JSON, record)
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
) -> list[Path]:
    """Generate each subject from its own mask and clinical row: ``OUT/<id>.nii.gz`` in HU."""
    from tqdm.auto import tqdm

    from unveil.data.cohort import Cohort
    from unveil.data.io import write_volume
    from unveil.text.edits import apply_edits, parse_edit

    gen = Generator(checkpoint, device=device, guidance_scale=guidance_scale, steps=steps, amp=amp)
    parsed = [parse_edit(e, gen.template) for e in edits]
    cohort = Cohort.open(cohort_root, gen.cfg.data)
    rows = cohort.rows()
    written = []
    for sid in tqdm(
        subject_ids(cohort, ids, split, gen.lm.path),
        desc="generate",
        unit="scan",
        disable=not progress,
    ):
        image, mask = cohort.load(sid)
        prepared = gen.pre.prepare(image, mask)
        row = apply_edits(rows[sid], parsed, gen.template) if parsed else rows[sid]
        fake = gen.generate(
            prepared,
            gen.template.render(row),
            subject_noise(tuple(prepared.image.shape[-3:]), sid, seed),
        )
        written.append(write_volume(gen.to_hu(fake, prepared), Path(out) / f"{sid}.nii.gz"))
    return written
