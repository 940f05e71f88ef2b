"""The training steps of the generator families, behind :meth:`GenerativeFamily.trainer`.

A trainer owns a family's optimisers and grad scalers and runs one optimiser step
(gradient accumulation over ``train.grad_accum`` micro-batches, DDP ``no_sync`` on all
but the last).  The training loop (:mod:`unveil.train.loop`) builds one with
``family_for(cfg).trainer(cfg, gen, disc)`` and calls only the :class:`Trainer`
interface:

* ``generator`` (the module, unwrapped) and ``modules()`` (the attribute names of the
  modules it trains, wrapped by ``wrap_ddp(info)``);
* ``step(next_batch, g, global_bs, shard, cfg, device)``: one optimiser step; returns the
  losses to log, as detached tensors (float64, on the device: no sync) or floats;
* ``optimizers()`` (the learning-rate schedule sets their groups' ``lr``),
  ``optimizer_states()`` / ``load_optimizers(states)`` (the checkpoint's ``optimizers``
  entry: its keys are the trainer's own and must not change between versions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from unveil.conditioning import TextCondition
from unveil.nn.build import param_groups
from unveil.runtime.device import autocast, micro_context, to_device
from unveil.runtime.distributed import DistInfo

#: ``next_batch() -> (image, mask, cond)``: this rank's shard of the next global batch,
#: on the device.
NextBatch = Callable[[], tuple[torch.Tensor, torch.Tensor, TextCondition]]


def f64(v: torch.Tensor | float) -> torch.Tensor | float:
    """A loss value for the log: a detached float64 tensor where it is (no device sync),
    or the Python float it already is.  float64 keeps the log's arithmetic (averages over
    micro-batches) what Python floats gave."""
    if isinstance(v, torch.Tensor):
        return v.detach().to(torch.float64)
    return float(v)


class Trainer:
    """The interface the training loop uses (see the module docstring)."""

    generator: nn.Module

    def wrap_ddp(self, info: DistInfo) -> None:
        """Wrap the trained modules in ``DistributedDataParallel`` when ``info`` is distributed."""
        self.info = info
        self._ddp: dict[str, nn.Module] = {}
        if info.enabled:
            ids = [info.device.index] if info.device.type == "cuda" else None
            for name in self.modules():
                # Which parameters take part varies by batch (the learned null condition only
                # when a prompt is dropped), so DDP must look for unused ones each step.
                self._ddp[name] = nn.parallel.DistributedDataParallel(
                    getattr(self, name), device_ids=ids, find_unused_parameters=True
                )

    def ddp(self, name: str) -> nn.Module:
        """The module ``name`` as the step calls it (its DDP wrapper when there is one)."""
        return getattr(self, "_ddp", {}).get(name, getattr(self, name))

    def modules(self) -> list[str]:
        """The attribute names of the trained modules."""
        raise NotImplementedError

    def step(
        self,
        next_batch: NextBatch,
        g: torch.Generator,
        global_bs: int,
        shard: slice,
        cfg: Any,
        device: torch.device,
    ) -> dict[str, torch.Tensor | float]:
        """One optimiser step; the losses to log (tensors stay on the device)."""
        raise NotImplementedError

    def optimizers(self) -> list[torch.optim.Optimizer]:
        raise NotImplementedError

    def optimizer_states(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_optimizers(self, st: dict[str, Any]) -> None:
        raise NotImplementedError


class DiffusionTrainer(Trainer):
    """The iterative families (diffusion, rectified flow): AdamW on the denoiser, one loss
    per micro-batch.

    ``process`` is the family's :class:`~unveil.generative.diffusion.DenoisingProcess`
    (default: the one of ``cfg``'s family).
    """

    def __init__(self, cfg: Any, gen: nn.Module, process: Any = None) -> None:
        if process is None:
            from unveil.generative.registry import family_for

            process = family_for(cfg).process(cfg)
        self.process = process
        self.generator = gen
        self.opt = torch.optim.AdamW(
            param_groups(gen, cfg.diffusion.lr, cfg.text.lr_scale), weight_decay=0.0
        )
        self.scaler = torch.amp.GradScaler(enabled=cfg.train.amp == "fp16")
        self.grad_clip = cfg.train.grad_clip

    def modules(self) -> list[str]:
        return ["generator"]

    def step(self, next_batch, g, global_bs, shard, cfg, device):
        model = self.ddp("generator")
        self.opt.zero_grad(set_to_none=True)
        accum = cfg.train.grad_accum
        total: torch.Tensor | float = 0.0
        for micro in range(accum):
            x0, mask, cond = next_batch()
            # Drawn for the global batch, then sliced: N ranks reproduce one process.
            noise = torch.randn((global_bs, *x0.shape[1:]), generator=g)[shard]
            t = self.process.sample_timesteps(global_bs, g, torch.empty(0))[shard]
            noise, t = to_device(noise, device), to_device(t, device)
            with micro_context(model, micro == accum - 1), autocast(cfg, device):
                loss, _ = self.process.training_loss(model, x0, mask, cond, noise=noise, t=t)
            self.scaler.scale(loss / accum).backward()
            total = total + f64(loss) / accum  # stays on the device: no sync
        self.scaler.unscale_(self.opt)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), self.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        return {"loss": total}  # type: ignore[dict-item]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt]

    def optimizer_states(self) -> dict[str, Any]:
        return {"generator": self.opt.state_dict(), "scaler": self.scaler.state_dict()}

    def load_optimizers(self, st: dict[str, Any]) -> None:
        self.opt.load_state_dict(st["generator"])
        self.scaler.load_state_dict(st["scaler"])


class GanTrainer(Trainer):
    """The conditional GAN: two-time-scale Adam, a discriminator then a generator update."""

    def __init__(self, cfg: Any, gen: nn.Module, disc: nn.Module) -> None:
        from unveil.generative.gan import GanProcess, make_gan_optimizers

        self.process = GanProcess(cfg.gan, label_channels=len(cfg.data.labels))
        self.generator, self.discriminator = gen, disc
        self.opt_g, self.opt_d = make_gan_optimizers(gen, disc, cfg.gan, cfg.text.lr_scale)
        self.scaler_g = torch.amp.GradScaler(enabled=cfg.train.amp == "fp16")
        self.scaler_d = torch.amp.GradScaler(enabled=cfg.train.amp == "fp16")
        self.noise_input = cfg.model.noise_input
        self.grad_clip = cfg.train.grad_clip

    def modules(self) -> list[str]:
        return ["generator", "discriminator"]

    def step(self, next_batch, g, global_bs, shard, cfg, device):
        accum = cfg.train.grad_accum
        batches = []
        for _ in range(accum):
            real, mask, cond = next_batch()
            noise = None
            if self.noise_input:
                noise = torch.randn((global_bs, 1, *real.shape[2:]), generator=g)[shard]
                noise = to_device(noise, device)
            batches.append((real, mask, cond, noise))
        logs: dict[str, torch.Tensor | float] = {}
        gm, d = self.ddp("generator"), self.ddp("discriminator")
        # The fake of each micro-batch is generated once, with gradients (pix2pix): the
        # discriminator update sees it detached, the generator update reuses its graph.
        fakes = []
        for i, (_real, mask, cond, noise) in enumerate(batches):
            with micro_context(gm, i == accum - 1), autocast(cfg, device):
                fakes.append(self.process.generate(gm, mask, cond, noise))
        if cfg.gan.adv_weight > 0:  # with no adversarial term the discriminator is idle
            self.opt_d.zero_grad(set_to_none=True)
            for i, ((real, mask, cond, _), fake) in enumerate(zip(batches, fakes, strict=False)):
                with micro_context(d, i == accum - 1), autocast(cfg, device):
                    loss_d, ld = self.process.d_loss_on(d, real, fake, mask, cond)
                self.scaler_d.scale(loss_d / accum).backward()
                for k, v in ld.items():
                    logs[k] = logs.get(k, 0.0) + f64(v) / accum
            self.scaler_d.step(self.opt_d)
            self.scaler_d.update()
        # Generator update: the discriminator is frozen and called unwrapped, so it gets no
        # gradients and its DDP reducer does not wait for any.
        self.discriminator.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        try:
            for (real, mask, cond, _), fake in zip(batches, fakes, strict=False):
                with autocast(cfg, device):
                    loss_g, lg = self.process.g_loss_on(self.discriminator, real, fake, mask, cond)
                self.scaler_g.scale(loss_g / accum).backward()
                for k, v in lg.items():
                    logs[k] = logs.get(k, 0.0) + f64(v) / accum
        finally:
            self.discriminator.requires_grad_(True)
        if self.grad_clip:
            self.scaler_g.unscale_(self.opt_g)
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), self.grad_clip)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        return logs

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.opt_g, self.opt_d]

    def optimizer_states(self) -> dict[str, Any]:
        return {
            "generator": self.opt_g.state_dict(),
            "discriminator": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
        }

    def load_optimizers(self, st: dict[str, Any]) -> None:
        self.opt_g.load_state_dict(st["generator"])
        self.opt_d.load_state_dict(st["discriminator"])
        self.scaler_g.load_state_dict(st["scaler_g"])
        self.scaler_d.load_state_dict(st["scaler_d"])


__all__ = ["DiffusionTrainer", "GanTrainer", "NextBatch", "Trainer", "f64"]
