"""Rectified flow, the ``rflow`` generator family: its process and its registry behaviour.

``x_t = (1 - t/T) x0 + (t/T) eps`` with real ``t`` in ``[0, T]``; the network predicts the
velocity ``x0 - eps`` (MONAI's sign convention: the sampler moves from ``t = T`` to
``t = 0`` by ``x += v dt``).  Sampled with Euler steps on an integer grid, inverted by the
same steps run backwards.  The interpolation and the per-step update are MONAI's
``RFlowScheduler``.

The family shares the ``diffusion`` config section with the diffusion family (timesteps,
loss, sample_steps, guidance_scale, lr; ``diffusion.process`` and ``diffusion.sampler``
are ``rflow``, filled in when a config leaves them out) and everything but the process
with it: the denoising loss and the classifier-free guided denoiser
(:class:`~unveil.generative.diffusion.DenoisingProcess`), whole-volume sampling, the
``--steps`` / ``--guidance-scale`` checks and the trainer
(:class:`~unveil.generative.registry.DenoisingFamily`).  A config or checkpoint written
before ``rflow`` was a family (``model.family: diffusion`` with ``diffusion.process:
rflow``) is read as this family (:mod:`unveil.family_registry`), with the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.schedulers import RFlowScheduler
from tqdm.auto import tqdm

from unveil.config import DiffusionConfig
from unveil.generative.diffusion import Denoiser, DenoisingProcess, _unit_times
from unveil.generative.registry import DenoisingFamily


class RFlowProcess(DenoisingProcess):
    """Rectified-flow training target, Euler sampler, Euler inversion.

    Args:
        cfg: the ``diffusion`` config section (process ``rflow``, timesteps, loss, sampler
            ``rflow``, sample_steps, guidance_scale); ``schedule``, ``prediction`` and
            ``zero_terminal_snr`` do not apply.
        clip_denoised: kept for the signature of :class:`DenoisingProcess`; the Euler steps
            predict no ``x0`` to clip (the result is clamped to ``[-1, 1]``).

    The network's ``t`` is real (``float32``), in ``[0, T]``.
    """

    process_name = "rflow"
    samplers = ("rflow",)
    scheduler: RFlowScheduler

    def __init__(self, cfg: DiffusionConfig, clip_denoised: bool = True) -> None:
        super().__init__(cfg, clip_denoised)
        self.scheduler = RFlowScheduler(
            num_train_timesteps=self.num_timesteps, use_discrete_timesteps=True
        )

    # ------------------------------------------------------------------ forward process

    def sample_timesteps(
        self, batch: int, generator: torch.Generator, like: torch.Tensor
    ) -> torch.Tensor:
        """Training timesteps ``(B,)`` on ``like``'s device: uniform reals in ``[0, T)``."""
        t = self._uniform_times(batch, generator)
        return t.to(device=like.device, dtype=torch.float32)

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """The velocity ``x0 - eps`` (whatever ``diffusion.prediction`` says)."""
        return x0 - noise

    # ------------------------------------------------------------------ sampler

    def _grid_scheduler(self, steps: int) -> RFlowScheduler:
        # Integer levels T, T - T/n, ..., then 0: MONAI's RFlow step casts the next level
        # to int, so only an integer grid makes the step sizes add up to exactly 1.
        sch = RFlowScheduler(num_train_timesteps=self.num_timesteps, use_discrete_timesteps=True)
        sch.set_timesteps(steps)
        return sch

    @torch.no_grad()
    def sample(
        self,
        denoise: Denoiser,
        noise: torch.Tensor,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate ``x0`` from the given starting ``noise`` with Euler steps.

        Args:
            denoise: ``denoise(x_t, t)`` as returned by :meth:`model_fn` (or a sliding-
                window wrapper of it).
            noise: the starting point ``x_T`` ``(B, C, D, H, W)``, standard normal; never
                drawn here, so two calls with the same ``noise`` share it exactly.
            sampler: ``rflow`` (the default, ``diffusion.sampler``).
            steps: number of network evaluations (default ``diffusion.sample_steps``).
            eta, generator: not used (the sampler is deterministic); accepted so that
                every process is called alike.
            progress: show a tqdm bar.

        Returns:
            ``x0`` ``(B, C, D, H, W)`` clamped to ``[-1, 1]``.
        """
        sampler = self.cfg.sampler if sampler is None else sampler
        self._check_sampler(sampler)
        n = self._steps(steps)
        batch = noise.shape[0]
        x = noise
        sch = self._grid_scheduler(n)
        grid = torch.cat([sch.timesteps.long().cpu(), torch.zeros(1, dtype=torch.long)])
        for i in tqdm(range(n), disable=not progress, desc="rflow", leave=False):
            t, t_next = int(grid[i]), int(grid[i + 1])
            out = denoise(x, _unit_times(grid[i], batch, x, torch.float32))
            x, _ = sch.step(out, t, x, t_next)
        return x.clamp(-1.0, 1.0)

    @torch.no_grad()
    def invert(
        self, denoise: Denoiser, x0: torch.Tensor, steps: int | None = None, progress: bool = False
    ) -> torch.Tensor:
        """Deterministic inversion: the Euler ODE run backwards on the sampler's grid.

        ``sample(denoise, invert(denoise, x0, n), "rflow", n)`` reconstructs ``x0`` up to
        the discretisation error.

        Args:
            denoise: ``denoise(x_t, t)``.
            x0: images ``(B, C, D, H, W)``.
            steps: number of network evaluations (default ``diffusion.sample_steps``).
            progress: show a tqdm bar.

        Returns:
            ``x_T`` ``(B, C, D, H, W)``, not clamped.
        """
        n = self._steps(steps)
        batch = x0.shape[0]
        x = x0
        sch = self._grid_scheduler(n)
        grid = torch.cat([torch.zeros(1, dtype=torch.long), sch.timesteps.long().cpu().flip(0)])
        for i in tqdm(range(n), disable=not progress, desc="invert", leave=False):
            t, t_next = int(grid[i]), int(grid[i + 1])
            out = denoise(x, _unit_times(grid[i], batch, x, torch.float32))
            # step() adds v * (t - t_next) / T; with t_next > t that is the backward move.
            x, _ = sch.step(out, t, x, t_next)
        return x


class RFlowFamily(DenoisingFamily):
    """The ``rflow`` family: :class:`RFlowProcess` behind the shared iterative hooks."""

    def process(self, cfg: Any) -> RFlowProcess:
        return RFlowProcess(cfg.diffusion)

    def describe(self, cfg: Any) -> str:
        d = cfg.diffusion
        return f"velocity, T={d.timesteps}, sampler {d.sampler} x{d.sample_steps}"


__all__ = ["RFlowFamily", "RFlowProcess"]
