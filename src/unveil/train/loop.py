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
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unveil.conditioning import TextCondition
from unveil.config import Config, config_from_dict
from unveil.errors import UnveilError
from unveil.fs import write_text
from unveil.generative.registry import family_for
from unveil.model import ModelMeta, build_models
from unveil.runtime import checkpoint as ckpt
from unveil.runtime.device import to_device, unwrap
from unveil.runtime.distributed import barrier, init_distributed, shutdown

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Everything that changes during training and goes into a checkpoint."""

    step: int = 0
    sampler_rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    prompt_rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(1))
    torch_gen: torch.Generator = field(default_factory=torch.Generator)


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    # PCG64's 128-bit integers are stored as strings: weights_only loading accepts them
    # either way, but strings keep the checkpoint readable by any tool.
    st = rng.bit_generator.state
    return {
        "bit_generator": st["bit_generator"],
        "state": {k: str(v) for k, v in st["state"].items()},
        "has_uint32": int(st["has_uint32"]),
        "uinteger": int(st["uinteger"]),
    }


def _set_rng_state(rng: np.random.Generator, st: dict[str, Any]) -> None:
    rng.bit_generator.state = {
        "bit_generator": st["bit_generator"],
        "state": {k: int(v) for k, v in st["state"].items()},
        "has_uint32": st["has_uint32"],
        "uinteger": st["uinteger"],
    }


class _LossLog:
    """Per-step loss values, kept as returned (tensors on the device) until :meth:`flush`.

    ``flush`` brings every pending step to the host in one transfer per device, checks
    that all values are finite, and (``path`` given: the main rank) appends one record per
    step to ``losses.jsonl`` with a single write and fsync.  Records of steps before a
    non-finite one are written; then :class:`UnveilError` names the first bad step.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.pending: list[tuple[int, dict[str, torch.Tensor | float]]] = []

    def add(self, step: int, logs: dict[str, torch.Tensor | float]) -> None:
        self.pending.append((step, logs))

    def flush(self) -> list[dict[str, Any]]:
        """The host records of the pending steps, in order (``[]`` when none)."""
        if not self.pending:
            return []
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for _, logs in self.pending:
            for v in logs.values():
                if isinstance(v, torch.Tensor):
                    by_device.setdefault(v.device, []).append(v.reshape(()).to(torch.float64))
        host = {
            dev: iter(torch.stack(vals).tolist()) for dev, vals in by_device.items()
        }  # one device -> host copy (one sync) per device
        records = []
        for step, logs in self.pending:
            rec: dict[str, Any] = {"step": step}
            for k, v in logs.items():
                rec[k] = next(host[v.device]) if isinstance(v, torch.Tensor) else float(v)
            records.append(rec)
        self.pending = []
        bad = next(
            (i for i, r in enumerate(records) if not all(math.isfinite(r[k]) for k in r)), None
        )
        good = records if bad is None else records[:bad]
        if self.path is not None and good:
            _append_records(self.path, good)
        if bad is not None:
            step = records[bad]["step"]
            values = {k: v for k, v in records[bad].items() if k != "step"}
            raise UnveilError(
                f"training diverged at step {step} (loss {values}); lower the learning rate or "
                "use train.amp=none, then --resume from the last checkpoint."
            )
        return records


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
    from tqdm.auto import tqdm

    from unveil.generative.ema import EMA
    from unveil.text.cache import EmbeddingCache
    from unveil.text.encoders import build_encoder
    from unveil.text.template import load_template
    from unveil.train.data import PromptSampler, ensure_splits, load_training_data

    out = Path(out)
    # Refused before anything is written: a run of no steps has no checkpoint to show.
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
    info = init_distributed(cfg.train.device)
    try:
        if info.is_main:
            # A process killed while writing a checkpoint leaves its hidden temporary file.
            for p in ckpt.remove_temporary_checkpoints(out):
                log.info("removed %s, left by a checkpoint write that was interrupted", p)
        loaded = None
        if resume:
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
                log.warning(
                    "resuming with the configuration stored in %s (the one given differs)", last
                )
            cfg = saved
        elif ckpt.list_checkpoints(out):
            raise UnveilError(
                f"{out} already holds checkpoints; pass --resume to continue that run or choose another --out."
            )
        total = int(steps if steps is not None else cfg.train.steps)
        # train.steps is the planned length of the run (the learning-rate schedule spans
        # it); --steps may stop earlier and resume later on the same schedule, or extend it.
        cfg.train.steps = max(cfg.train.steps, total)
        device = info.device
        if cfg.train.amp == "fp16" and device.type != "cuda":
            raise UnveilError("train.amp=fp16 needs a GPU; use train.amp=bf16 or none on CPU.")
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_text(out / "config.yaml", cfg.to_yaml())
            ensure_splits(cfg, cohort, out)  # only rank 0 writes; the others read it below
        barrier(info)

        # ---- text: template, frozen encoder, cache (every unique prompt encoded once)
        template = load_template(cfg.text.template)
        template.check_identifiers(cfg.data.id_column)
        encoder = build_encoder(cfg.text.encoder, max_length=cfg.text.max_length)
        cache_dir = Path(cfg.text.cache_dir) if cfg.text.cache_dir else out / "text-cache"
        # Only rank 0 writes to disk; other ranks keep their (identical) embeddings in memory.
        cache = EmbeddingCache(encoder, cache_dir=cache_dir if info.is_main else None)

        # ---- data
        data = load_training_data(
            cfg, cohort, out, progress=progress and info.is_main, allow_non_hu=allow_non_hu
        )
        template.check_columns(
            next(iter(data.train)).row.keys(), source=f"the clinical table of {cohort}"
        )
        prompts = PromptSampler(
            template, [s.row for s in data.train], cfg.text.field_dropout, cfg.text.prompt_dropout
        )
        cache.prefetch(prompts.full)

        meta = ModelMeta(
            mask_channels=list(data.mask_channels),
            image_channels=1,
            encoder_name=cfg.text.encoder,
            encoder_identity=encoder.identity,
            encoder_width=encoder.width,
            encoder_pooled_width=encoder.pooled_width,
            template=template.spec.model_dump(),
            template_identity=template.identity(),
        )
        if loaded is not None:
            old = ModelMeta.from_dict(loaded.get("meta", {}))
            if (
                old.encoder_identity != meta.encoder_identity
                or old.template_identity != meta.template_identity
            ):
                raise UnveilError(
                    "the checkpoint was trained with another text encoder or template than this "
                    "installation provides; resume where it was made or start a new run."
                )

        # ---- models, optimisers, EMA (same seed on every rank; DDP also broadcasts rank 0)
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

        state = RunState(
            step=0,
            sampler_rng=np.random.default_rng([cfg.train.seed, 1]),
            prompt_rng=np.random.default_rng([cfg.train.seed, 2]),
            torch_gen=torch.Generator().manual_seed(cfg.train.seed + 3),
        )
        from unveil.data.patches import PatchSampler

        sampler = PatchSampler(
            [s.prepared.image for s in data.train],
            [s.prepared.mask for s in data.train],
            cfg.preprocess.patch_size,
            cfg.preprocess.pos_fraction,
            state.sampler_rng,
            fg_channels=_lung_channel_indices(cfg, data.mask_channels),
        )
        if loaded is not None:
            gen.load_state_dict(loaded["models"]["generator"])
            if disc is not None:
                disc.load_state_dict(loaded["models"]["discriminator"])
            family.load_optimizers(loaded["optimizers"])
            ema.load_state_dict(loaded["ema"])
            state.step = int(loaded["step"])
            _set_rng_state(state.sampler_rng, loaded["rng"]["sampler"])
            _set_rng_state(state.prompt_rng, loaded["rng"]["prompt"])
            state.torch_gen.set_state(loaded["rng"]["torch_gen"])
            torch.set_rng_state(loaded["rng"]["torch"])
        family.wrap_ddp(info)
        if info.is_main:
            # Before the first append: drop what follows the checkpoint (and lines cut by a
            # crash), so the log holds one record per step of this run.
            _truncate_jsonl(out / "losses.jsonl", state.step)

        writer = None
        if info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))

        bs = cfg.train.batch_size
        shard = slice(info.rank * bs, (info.rank + 1) * bs)
        global_bs = bs * info.world_size

        def next_batch() -> tuple[torch.Tensor, torch.Tensor, TextCondition]:
            batch = sampler.sample(global_bs)
            idx = [int(i) for i in batch["index"]]
            texts, null = prompts.draw(idx, state.prompt_rng)
            enc = cache.get(texts[shard])
            cond = TextCondition(
                *(to_device(t, device) for t in (enc.tokens, enc.mask, enc.pooled, null[shard]))
            )
            image, mask = batch["image"][shard], batch["mask"][shard]
            return to_device(image, device), to_device(mask, device), cond

        bar = tqdm(
            total=total,
            initial=state.step,
            disable=not (progress and info.is_main),
            desc=f"train {cfg.model.family}",
            unit="it",
            dynamic_ncols=True,
        )
        last_path = None
        losses = _LossLog(out / "losses.jsonl" if info.is_main else None)
        t0 = time.perf_counter()
        try:
            while state.step < total:
                # The schedule spans the planned run (train.steps), not this call's --steps, so
                # stopping early and resuming follows the same curve.
                factor = lr_factor(
                    cfg.train.lr_schedule, state.step, cfg.train.steps, cfg.train.warmup_steps
                )
                for opt in family.optimizers():
                    for group in opt.param_groups:
                        group.setdefault("base_lr", group["lr"])
                        group["lr"] = group["base_lr"] * factor
                logs = family.step(next_batch, state.torch_gen, global_bs, shard, cfg, device)
                ema.update(unwrap(family.generator))
                state.step += 1
                bar.update(1)
                losses.add(state.step, logs)
                log_step = state.step % cfg.train.log_every == 0 or state.step == total
                ckpt_step = state.step % cfg.train.ckpt_every == 0 or state.step == total
                if log_step or ckpt_step:
                    # The only point where the host waits for the device's loss values: every
                    # log_every steps, and before a checkpoint, so the log is complete up to
                    # every checkpoint (a resumed run cuts it there).  Raises on non-finite.
                    records = losses.flush()
                    bar.set_postfix(
                        {k: f"{v:.4f}" for k, v in records[-1].items() if k != "step"},
                        refresh=False,
                    )
                    if writer is not None and log_step:
                        for k, v in records[-1].items():
                            if k != "step":
                                writer.add_scalar(f"train/{k}", v, state.step)
                        writer.add_scalar(
                            "train/it_per_s",
                            state.step / max(time.perf_counter() - t0, 1e-9),
                            state.step,
                        )
                if ckpt_step:
                    if info.is_main:
                        last_path = _save(out, cfg, meta, state, gen, disc, family, ema)
                    barrier(info)
                if (
                    info.is_main
                    and data.val
                    and (state.step % cfg.train.val_every == 0 or state.step == total)
                ):
                    _validate(
                        out,
                        cfg,
                        meta,
                        ema,
                        family,
                        data,
                        cache,
                        template,
                        writer,
                        state.step,
                        device,
                    )
                if on_step is not None:
                    on_step(state.step)
        except BaseException:
            # Best effort, for a run stopped by an error or Ctrl-C: the steps computed since
            # the last logging point reach the log too (a resume cuts them at the checkpoint).
            with contextlib.suppress(Exception):
                losses.flush()
            raise
        bar.close()
        if writer is not None:
            writer.close()
        if last_path is None:
            last_path = ckpt.latest_checkpoint(out)
        return Path(last_path) if last_path else out
    finally:
        shutdown(info)


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


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one line, with a single ``write`` and an ``fsync``.

    A crash (kill -9, power loss, a full disk) can only cut the line being written; a
    resumed or restarted run repairs the file before it appends (:func:`_truncate_jsonl`).
    """
    _append_records(path, [record])


def _append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records, one line each, with a single ``write`` (looped only when the OS
    writes less) and one ``fsync``: a crash cuts at most the last line being written."""
    import json

    data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        while data:  # os.write may write less than asked (a disk filling up)
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The loss records of a run's ``losses.jsonl``, read tolerantly.

    A line that is not a JSON record with an integer ``step`` is left out with a logged
    warning naming the file: the last line when a crash cut it, any other when the file
    was damaged.  Returns ``[]`` when the file does not exist.
    """
    records, _ = _read_jsonl(Path(path))
    return records


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """``(records, clean)``; ``clean`` is false when a line was dropped or the file does not
    end with a newline (the next append would run on from its last line)."""
    import json

    if not path.is_file():
        return [], True
    # Loss records are ASCII; "replace" keeps bytes a crash garbled from raising here.
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")  # not splitlines(): it also breaks at other control characters
    ends_cleanly = lines[-1] == ""
    if ends_cleanly:
        lines.pop()
    records: list[dict[str, Any]] = []
    clean = ends_cleanly
    for i, line in enumerate(lines):
        if not line.strip():
            clean = False
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict) and type(rec.get("step")) is int:
            records.append(rec)
            continue
        clean = False
        if i == len(lines) - 1:
            log.warning(
                "%s: dropped its last line (%.40r), cut short by an interrupted write (a "
                "crash or a full disk)",
                path,
                line,
            )
        else:
            log.warning(
                "%s: dropped line %d, which is not a JSON loss record (%.40r)", path, i + 1, line
            )
    return records, clean


def _truncate_jsonl(path: Path, step: int) -> None:
    """Keep only the records up to ``step`` (a resumed run rewrites what follows).

    Also the repair after a crash: unreadable lines are dropped (with a warning) and the
    file is rewritten atomically, so the next append starts on a line of its own.
    """
    import json

    records, clean = _read_jsonl(path)
    keep = [r for r in records if r["step"] <= step]
    if clean and len(keep) == len(records):
        return
    write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def _lung_channel_indices(cfg: Config, names: list[str]) -> list[int]:
    return [names.index(n) for n in cfg.data.lung_labels if n in names]


def _save(out, cfg, meta, state, gen, disc, family, ema) -> Path:
    payload = {
        "config": cfg.to_dict(),
        "step": state.step,
        "meta": meta.to_dict(),
        "models": {
            "generator": unwrap(gen).state_dict(),
            **({"discriminator": unwrap(disc).state_dict()} if disc is not None else {}),
        },
        "optimizers": family.optimizer_states(),
        "ema": ema.state_dict(),
        "rng": {
            "sampler": _rng_state(state.sampler_rng),
            "prompt": _rng_state(state.prompt_rng),
            "torch_gen": state.torch_gen.get_state(),
            "torch": torch.get_rng_state(),
        },
    }
    path = ckpt.save_checkpoint(out / "checkpoints" / ckpt.checkpoint_name(state.step), payload)
    ckpt.prune_checkpoints(out, cfg.train.keep_last)
    return path


@torch.no_grad()
def _validate(out, cfg, meta, ema, family, data, cache, template, writer, step, device) -> None:
    """Generate the first validation subject with EMA weights; NIfTI in HU on its source grid."""
    from unveil.data.io import write_volume
    from unveil.data.preprocess import Preprocessor
    from unveil.infer.generate import generate_prepared

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
