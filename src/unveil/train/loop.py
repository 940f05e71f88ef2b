"""One training loop for both families (GAN and diffusion).

Readable top to bottom: set up (distributed, data, text, models, optimisers, EMA), maybe
resume, then ``for step``: draw a global batch, take this rank's shard, one optimiser step
per family, log, validate, checkpoint.  Every random draw comes from a generator whose
state is checkpointed, so ``--resume`` continues exactly (on CPU the losses after
resuming equal those of an uninterrupted run) and N ranks with batch B reproduce one
process with batch N*B: the global batch is drawn identically on every rank and each rank
trains on its slice; DDP averages the gradients.

Nothing in a step waits for the device: the family step returns its losses as tensors,
which stay where they were computed until a logging point (every ``train.log_every``
steps, at every checkpoint and at the end), where all the steps since the last one are
brought to the host together, checked for non-finite values and appended to
``losses.jsonl`` (one record per step).  Host-to-device copies of a CUDA run go through
pinned memory without blocking, so the CPU draws the next batch while the GPU computes.
The loss log lives in :mod:`unveil.train.losses`, what a checkpoint holds of the run in
:mod:`unveil.train.state`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from unveil.conditioning import TextCondition
from unveil.config import Config, config_from_dict
from unveil.data.io import write_volume
from unveil.data.patches import PatchSampler
from unveil.data.preprocess import Preprocessor
from unveil.errors import UnveilError
from unveil.fs import write_text
from unveil.generative.ema import EMA
from unveil.generative.registry import family_for
from unveil.generative.trainers import Trainer
from unveil.infer.generate import generate_prepared
from unveil.model import ModelMeta, build_models
from unveil.runtime import checkpoint as ckpt
from unveil.runtime.device import to_device, unwrap
from unveil.runtime.distributed import DistInfo, barrier, init_distributed, shutdown
from unveil.text.cache import EmbeddingCache
from unveil.text.encoders import build_encoder
from unveil.text.template import Template, load_template
from unveil.train.data import PromptSampler, TrainingData, ensure_splits, load_training_data
from unveil.train.losses import (  # noqa: F401  (_append_jsonl, read_jsonl: names of this module before the split)
    _append_jsonl,
    _LossLog,
    _truncate_jsonl,
    read_jsonl,
)
from unveil.train.state import RunState, checkpoint_payload, restore_run

log = logging.getLogger(__name__)


def train(
    cfg: Config,
    cohort: str | Path,
    out: str | Path,
    steps: int | None = None,
    resume: bool = False,
    progress: bool = True,
    allow_non_hu: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Train the model described by ``cfg`` on ``cohort``; checkpoints go to ``out/checkpoints``.

    Returns the path of the last checkpoint.  With ``resume`` the newest checkpoint in
    ``out`` is loaded and training continues to ``steps`` (default the config's).  Images
    that do not look like Hounsfield units are refused unless ``allow_non_hu``.
    ``on_step(step)``, when given, is called at the end of every step (after its
    checkpoint and validation, if any): a hook for benchmarks, which timestamp it; it is
    called on the host without waiting for the device.
    """
    out = Path(out)
    _check_steps(cfg, steps)  # before anything is written
    info = init_distributed(cfg.train.device)
    try:
        run = _set_up(cfg, cohort, out, steps, resume, progress, allow_non_hu, info)
        _run_steps(run, on_step)
        return _finish(run)
    finally:
        shutdown(info)


@dataclass
class _Run:
    """What the loop works with, set up once by :func:`_set_up`; ``state`` changes per step."""

    cfg: Config
    out: Path
    info: DistInfo
    total: int  #: the step this call stops at
    data: TrainingData
    template: Template
    cache: EmbeddingCache
    prompts: PromptSampler
    meta: ModelMeta
    gen: nn.Module
    disc: nn.Module | None
    family: Trainer
    ema: EMA
    state: RunState
    sampler: PatchSampler
    writer: SummaryWriter | None
    bar: tqdm
    losses: _LossLog
    last_path: Path | None = None  #: the last checkpoint this call wrote

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def global_bs(self) -> int:
        return self.cfg.train.batch_size * self.info.world_size

    @property
    def shard(self) -> slice:
        """This rank's slice of the global batch."""
        bs = self.cfg.train.batch_size
        return slice(self.info.rank * bs, (self.info.rank + 1) * bs)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, TextCondition]:
        """Draw the next global batch (identically on every rank) and return this rank's
        shard of it on the device: image, mask and text condition."""
        shard, device = self.shard, self.device
        batch = self.sampler.sample(self.global_bs)
        idx = [int(i) for i in batch["index"]]
        texts, null = self.prompts.draw(idx, self.state.prompt_rng)
        enc = self.cache.get(texts[shard])
        cond = TextCondition(
            *(to_device(t, device) for t in (enc.tokens, enc.mask, enc.pooled, null[shard]))
        )
        image, mask = batch["image"][shard], batch["mask"][shard]
        return to_device(image, device), to_device(mask, device), cond


# ---------------------------------------------------------------------------- set-up


def _check_steps(cfg: Config, steps: int | None) -> None:
    """Refuse a run of no steps: it would have no checkpoint to show."""
    if steps is not None and steps < 1:
        raise UnveilError(
            f"--steps is {steps}, but a run needs at least 1 step; give the total number of "
            "training steps, for example --steps 1000."
        )
    if steps is None and cfg.train.steps < 1:
        raise UnveilError(
            f"train.steps is {cfg.train.steps}, but a run needs at least 1 step; set "
            "train.steps=N in the config or the overrides, or pass --steps N."
        )


def _set_up(
    cfg: Config,
    cohort: str | Path,
    out: Path,
    steps: int | None,
    resume: bool,
    progress: bool,
    allow_non_hu: bool,
    info: DistInfo,
) -> _Run:
    """Everything before the first step: the run folder, text, data, models, optimisers
    and EMA (same seed on every rank; DDP also broadcasts rank 0), and, with ``resume``,
    the state of the newest checkpoint."""
    cfg, loaded = _start_or_resume(cfg, out, resume, info)
    total = _plan_length(cfg, steps)
    if cfg.train.amp == "fp16" and info.device.type != "cuda":
        raise UnveilError("train.amp=fp16 needs a GPU; use train.amp=bf16 or none on CPU.")
    _write_run_files(cfg, cohort, out, info)
    template, cache = _text_side(cfg, out, info)
    data, prompts = _training_inputs(
        cfg, cohort, out, template, cache, progress and info.is_main, allow_non_hu
    )
    meta = _model_meta(cfg, data, cache, template)
    if loaded is not None:
        _check_same_text(loaded, meta)
    gen, disc, family, ema = _models(cfg, meta, cache, prompts, info.device)
    state = RunState.for_seed(cfg.train.seed)
    sampler = _patch_sampler(cfg, data, state)
    if loaded is not None:
        restore_run(loaded, gen, disc, family, ema, state)
    family.wrap_ddp(info)
    if info.is_main:
        # Before the first append: drop what follows the checkpoint (and lines cut by a
        # crash), so the log holds one record per step of this run.
        _truncate_jsonl(out / "losses.jsonl", state.step)
    writer = SummaryWriter(str(out / "tensorboard")) if info.is_main else None
    bar = _progress_bar(cfg, total, state.step, show=progress and info.is_main)
    losses = _LossLog(out / "losses.jsonl" if info.is_main else None)
    return _Run(
        cfg=cfg,
        out=out,
        info=info,
        total=total,
        data=data,
        template=template,
        cache=cache,
        prompts=prompts,
        meta=meta,
        gen=gen,
        disc=disc,
        family=family,
        ema=ema,
        state=state,
        sampler=sampler,
        writer=writer,
        bar=bar,
        losses=losses,
    )


def _start_or_resume(
    cfg: Config, out: Path, resume: bool, info: DistInfo
) -> tuple[Config, dict[str, Any] | None]:
    """``(config, checkpoint)`` to start from: with ``resume`` the newest checkpoint and the
    config it was made with, else ``(cfg, None)`` in a folder that holds no checkpoint."""
    if info.is_main:
        # A process killed while writing a checkpoint leaves its hidden temporary file.
        for p in ckpt.remove_temporary_checkpoints(out):
            log.info("removed %s, left by a checkpoint write that was interrupted", p)
    if not resume:
        if ckpt.list_checkpoints(out):
            raise UnveilError(
                f"{out} already holds checkpoints; pass --resume to continue that run or choose another --out."
            )
        return cfg, None
    last = ckpt.latest_checkpoint(out)
    if last is None:
        raise UnveilError(
            f"--resume found no checkpoint in {out}/checkpoints; start without --resume."
        )
    loaded = ckpt.load_checkpoint(last)
    saved = config_from_dict(loaded["config"], source=f"checkpoint {last}")
    # The run continues under the config it was started with; only the length may change.
    if saved.model_dump(exclude={"train": {"steps"}}) != cfg.model_dump(
        exclude={"train": {"steps"}}
    ):
        log.warning("resuming with the configuration stored in %s (the one given differs)", last)
    return saved, loaded


def _plan_length(cfg: Config, steps: int | None) -> int:
    """The step this call stops at; raises ``cfg.train.steps`` to it when it is beyond.

    train.steps is the planned length of the run (the learning-rate schedule spans it);
    --steps may stop earlier and resume later on the same schedule, or extend it.
    """
    total = int(steps if steps is not None else cfg.train.steps)
    cfg.train.steps = max(cfg.train.steps, total)
    return total


def _write_run_files(cfg: Config, cohort: str | Path, out: Path, info: DistInfo) -> None:
    """Rank 0 writes ``config.yaml`` and the split; every rank waits until they are there."""
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", cfg.to_yaml())
        ensure_splits(cfg, cohort, out)  # only rank 0 writes; the others read it below
    barrier(info)


def _text_side(cfg: Config, out: Path, info: DistInfo) -> tuple[Template, EmbeddingCache]:
    """The template and the frozen encoder behind a cache (every unique prompt encoded once)."""
    template = load_template(cfg.text.template)
    template.check_identifiers(cfg.data.id_column)
    encoder = build_encoder(cfg.text.encoder, max_length=cfg.text.max_length)
    cache_dir = Path(cfg.text.cache_dir) if cfg.text.cache_dir else out / "text-cache"
    # Only rank 0 writes to disk; other ranks keep their (identical) embeddings in memory.
    cache = EmbeddingCache(encoder, cache_dir=cache_dir if info.is_main else None)
    return template, cache


def _training_inputs(
    cfg: Config,
    cohort: str | Path,
    out: Path,
    template: Template,
    cache: EmbeddingCache,
    progress: bool,
    allow_non_hu: bool,
) -> tuple[TrainingData, PromptSampler]:
    """The preprocessed subjects and their prompt sampler; every full prompt is encoded."""
    data = load_training_data(cfg, cohort, out, progress=progress, allow_non_hu=allow_non_hu)
    template.check_columns(
        next(iter(data.train)).row.keys(), source=f"the clinical table of {cohort}"
    )
    prompts = PromptSampler(
        template, [s.row for s in data.train], cfg.text.field_dropout, cfg.text.prompt_dropout
    )
    cache.prefetch(prompts.full)
    return data, prompts


def _model_meta(
    cfg: Config, data: TrainingData, cache: EmbeddingCache, template: Template
) -> ModelMeta:
    encoder = cache.encoder
    return ModelMeta(
        mask_channels=list(data.mask_channels),
        image_channels=1,
        encoder_name=cfg.text.encoder,
        encoder_identity=encoder.identity,
        encoder_width=encoder.width,
        encoder_pooled_width=encoder.pooled_width,
        template=template.spec.model_dump(),
        template_identity=template.identity(),
    )


def _check_same_text(loaded: dict[str, Any], meta: ModelMeta) -> None:
    """Refuse to resume a checkpoint trained with another text encoder or template."""
    old = ModelMeta.from_dict(loaded.get("meta", {}))
    if (
        old.encoder_identity != meta.encoder_identity
        or old.template_identity != meta.template_identity
    ):
        raise UnveilError(
            "the checkpoint was trained with another text encoder or template than this "
            "installation provides; resume where it was made or start a new run."
        )


def _models(
    cfg: Config,
    meta: ModelMeta,
    cache: EmbeddingCache,
    prompts: PromptSampler,
    device: torch.device,
) -> tuple[nn.Module, nn.Module | None, Trainer, EMA]:
    """Generator, discriminator (GAN), the family's trainer (optimisers) and the EMA."""
    torch.manual_seed(cfg.train.seed)
    gen, disc = build_models(cfg, meta)
    gen.to(device)
    if disc is not None:
        disc.to(device)
    # Standardise the frozen text embeddings over the training prompts (before the EMA
    # copy is made, so both hold the same statistics; a resumed run loads them back).
    all_prompts = cache.get(list(dict.fromkeys(prompts.full)))
    for mod in (gen, disc):
        if mod is not None and getattr(mod, "adapter", None) is not None:
            mod.adapter.fit_normalization(all_prompts)
    family = family_for(cfg).trainer(cfg, gen, disc)  # optimisers + the training step
    ema = EMA(gen, decay=cfg.train.ema_decay)
    return gen, disc, family, ema


def _patch_sampler(cfg: Config, data: TrainingData, state: RunState) -> PatchSampler:
    """The sampler of training patches, drawing from ``state.sampler_rng``."""
    return PatchSampler(
        [s.prepared.image for s in data.train],
        [s.prepared.mask for s in data.train],
        cfg.preprocess.patch_size,
        cfg.preprocess.pos_fraction,
        state.sampler_rng,
        fg_channels=_lung_channel_indices(cfg, data.mask_channels),
    )


def _progress_bar(cfg: Config, total: int, step: int, show: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=step,
        disable=not show,
        desc=f"train {cfg.model.family}",
        unit="it",
        dynamic_ncols=True,
    )


# ---------------------------------------------------------------------------- the loop


def _run_steps(run: _Run, on_step: Callable[[int], None] | None) -> None:
    """Step until ``run.total``, logging, checkpointing and validating when due."""
    t0 = time.perf_counter()
    try:
        while run.state.step < run.total:
            _step(run)
            _after_step(run, t0)
            if on_step is not None:
                on_step(run.state.step)
    except BaseException:
        # Best effort, for a run stopped by an error or Ctrl-C: the steps computed since
        # the last logging point reach the log too (a resume cuts them at the checkpoint).
        with contextlib.suppress(Exception):
            run.losses.flush()
        raise


def _step(run: _Run) -> None:
    """One optimiser step of the family at the scheduled learning rate, then the EMA."""
    cfg, state = run.cfg, run.state
    # The schedule spans the planned run (train.steps), not this call's --steps, so
    # stopping early and resuming follows the same curve.
    factor = lr_factor(cfg.train.lr_schedule, state.step, cfg.train.steps, cfg.train.warmup_steps)
    for opt in run.family.optimizers():
        for group in opt.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * factor
    logs = run.family.step(
        run.next_batch, state.torch_gen, run.global_bs, run.shard, cfg, run.device
    )
    run.ema.update(unwrap(run.family.generator))
    state.step += 1
    run.bar.update(1)
    run.losses.add(state.step, logs)


def _after_step(run: _Run, t0: float) -> None:
    """Log, checkpoint and validate where the step is due for it (the last one always is)."""
    step, total, tc = run.state.step, run.total, run.cfg.train
    log_step = step % tc.log_every == 0 or step == total
    ckpt_step = step % tc.ckpt_every == 0 or step == total
    if log_step or ckpt_step:
        _log_losses(run, log_step, t0)
    if ckpt_step:
        _checkpoint(run)
    if run.info.is_main and run.data.val and (step % tc.val_every == 0 or step == total):
        _validate(
            run.out,
            run.cfg,
            run.meta,
            run.ema,
            run.family,
            run.data,
            run.cache,
            run.template,
            run.writer,
            step,
            run.device,
        )


def _checkpoint(run: _Run) -> None:
    """Rank 0 writes the checkpoint of this step; every rank waits until it is written."""
    if run.info.is_main:
        run.last_path = _save(
            run.out, run.cfg, run.meta, run.state, run.gen, run.disc, run.family, run.ema
        )
    barrier(run.info)


def _log_losses(run: _Run, to_tensorboard: bool, t0: float) -> None:
    """Append the losses since the last logging point to ``losses.jsonl`` (raises on a
    non-finite one), show the newest on the bar and, with ``to_tensorboard``, write them.

    The only point where the host waits for the device's loss values: every log_every
    steps, and before a checkpoint, so the log is complete up to every checkpoint (a
    resumed run cuts it there).
    """
    records = run.losses.flush()
    run.bar.set_postfix(
        {k: f"{v:.4f}" for k, v in records[-1].items() if k != "step"},
        refresh=False,
    )
    if run.writer is None or not to_tensorboard:
        return
    step = run.state.step
    for k, v in records[-1].items():
        if k != "step":
            run.writer.add_scalar(f"train/{k}", v, step)
    run.writer.add_scalar("train/it_per_s", step / max(time.perf_counter() - t0, 1e-9), step)


def _finish(run: _Run) -> Path:
    """Close the bar and the writer; the path of the last checkpoint (``out`` if none)."""
    run.bar.close()
    if run.writer is not None:
        run.writer.close()
    last_path = run.last_path
    if last_path is None:
        last_path = ckpt.latest_checkpoint(run.out)
    return Path(last_path) if last_path else run.out


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """Learning-rate multiplier for the update that follows ``step`` completed steps.

    Linear warm-up over ``warmup`` steps, then ``constant`` (1), ``cosine`` (half a cosine
    from 1 to 0 at ``total``) or ``linear`` (straight to 0 at ``total``).  A function of
    the step alone, so a resumed run follows the same schedule as an uninterrupted one.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    raise ValueError(
        f"unknown learning-rate schedule '{schedule}'; use constant, cosine or linear."
    )


def _lung_channel_indices(cfg: Config, names: list[str]) -> list[int]:
    return [names.index(n) for n in cfg.data.lung_labels if n in names]


def _save(out, cfg, meta, state, gen, disc, family, ema) -> Path:
    """Write the checkpoint of ``state.step`` and keep the newest ``train.keep_last``.

    ``_save`` and ``_validate`` are looked up in this module at each call and keep their
    positional arguments: ``benchmarks/train_loop.py`` wraps both to time them.
    """
    payload = checkpoint_payload(cfg, meta, state, gen, disc, family, ema)
    path = ckpt.save_checkpoint(out / "checkpoints" / ckpt.checkpoint_name(state.step), payload)
    ckpt.prune_checkpoints(out, cfg.train.keep_last)
    return path


@torch.no_grad()
def _validate(out, cfg, meta, ema, family, data, cache, template, writer, step, device) -> None:
    """Generate the first validation subject with EMA weights; NIfTI in HU on its source grid."""
    subj = data.val[0]
    enc = cache.get([template.render(subj.row)])
    cond = TextCondition(enc.tokens, enc.mask, enc.pooled, torch.zeros(1, dtype=torch.bool))
    gen = torch.Generator().manual_seed(cfg.train.seed)
    noise = torch.randn((1, 1, *subj.prepared.image.shape[-3:]), generator=gen)
    with ema.average_parameters(unwrap(family.generator)):
        model = unwrap(family.generator).eval()
        fake = generate_prepared(
            model, cfg, subj.prepared, cond.to(device), noise.to(device), device
        )
        model.train()
    pre = Preprocessor(cfg.preprocess, cfg.data)
    vol = pre.to_source(fake[0].cpu(), subj.prepared, is_unit=True)
    write_volume(vol, out / "samples" / f"step-{step:08d}_{subj.id}.nii.gz")
    if writer is not None:
        z = fake.shape[-1] // 2
        real = subj.prepared.image[0, :, :, z]
        img = torch.cat([real.cpu(), fake[0, 0, :, :, z].cpu()], dim=1)
        writer.add_image("val/real_vs_generated", ((img + 1) / 2).clamp(0, 1).unsqueeze(0), step)
