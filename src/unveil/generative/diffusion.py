"""The diffusion process: training loss, guided denoiser, samplers and inversion.

After OpenAI guided-diffusion and diffusers, the process is a plain object that takes the
network as an argument; it owns no weights.  The noise schedules, ``add_noise`` and the
per-step updates are MONAI's (``DDPMScheduler``, ``DDIMScheduler``).

:class:`DenoisingProcess` is what the iterative families share: the denoising loss, the
classifier-free guided denoiser (:meth:`DenoisingProcess.model_fn`), the number of
sampling steps and the sampler check.  :class:`DiffusionProcess` is the ``diffusion``
family's process (``diffusion.process: ddpm``):

* ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` with ``a_t = alphas_cumprod[t]``, integer
  ``t`` in ``[0, T)``, by default on the zero-terminal-SNR rescaling of the schedule
  (:func:`_rescale_zero_terminal_snr`); the network predicts ``x0`` (``sample``), ``eps``
  (``epsilon``) or ``v = sqrt(a_t) eps - sqrt(1 - a_t) x0`` (``v_prediction``).  Sampled
  with DDIM (deterministic for ``eta = 0``) or ancestral DDPM in any number of steps.

Rectified flow (the ``rflow`` family) is the other subclass of :class:`DenoisingProcess`:
:class:`unveil.generative.rflow.RFlowProcess`.

Every sampler starts from a ``noise`` tensor given by the caller, so counterfactual pairs
share their noise by construction; stochastic samplers draw their per-step noise from an
injected ``torch.Generator``.  A sampler sees the network only through a callable
``denoise(x_t, t) -> prediction`` (see :meth:`DenoisingProcess.model_fn`), which is what
whole-volume sliding-window inference wraps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, NoiseSchedules
from torch import nn
from tqdm.auto import tqdm

from unveil.conditioning import TextCondition
from unveil.config import DiffusionConfig
from unveil.errors import ConfigError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x_t (B, C, D, H, W), t (B,)) -> prediction (B, C, D, H, W)``."""


def _draw_rand(
    shape: tuple[int, ...],
    generator: torch.Generator,
    like: torch.Tensor,
    normal: bool,
) -> torch.Tensor:
    """Draw on the generator's own device, then move: the same seed gives the same
    numbers whether the data live on CPU or GPU."""
    fn = torch.randn if normal else torch.rand
    out = fn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return out.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)


def _rescale_zero_terminal_snr(scheduler: DDPMScheduler) -> None:
    """Rescale a DDPM schedule in place so that its last timestep is pure noise.

    Why: the usual schedules end at a small but non-zero signal level (``alpha_bar_T`` about
    7e-4 for 1000 scaled-linear steps, 0.48 for 100).  Per voxel that is negligible, but the
    *mean* of a region of ``N`` voxels keeps a signal-to-noise ratio of ``N * SNR_T``: for a
    lung zone of a few thousand voxels the zone's mean intensity is still readable in
    ``x_T``.  The network learns to take the low-frequency content from ``x_T`` instead of
    from the condition, and sampling, which starts from pure noise, then draws the regional
    mean intensity from the noise: text edits move nothing and two seeds differ by tens of
    HU (measured: docs/diffusion.md).  Lin, Liu, Li, Yang, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", WACV 2024, Algorithm 1: shift and scale
    ``sqrt(alpha_bar)`` so that its last value is 0 and its first is unchanged.  MONAI's
    schedulers do not offer this rescaling, hence the few lines here.
    """
    sqrt_ab = scheduler.alphas_cumprod.to(torch.float64).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ac = sqrt_ab**2
    alphas = torch.cat([ac[:1], ac[1:] / ac[:-1]])
    scheduler.alphas_cumprod = ac.float()
    scheduler.alphas = alphas.float()
    scheduler.betas = (1.0 - alphas).float()


def null_condition(cond: TextCondition) -> TextCondition:
    """The same batch with every prompt dropped (``null`` all True): the unconditional branch."""
    null = torch.ones(cond.batch_size, dtype=torch.bool, device=cond.pooled.device)
    return TextCondition(cond.tokens, cond.mask, cond.pooled, null)


def _unit_times(
    values: torch.Tensor, batch: int, like: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """A scalar timestep broadcast to the ``(B,)`` vector the network expects."""
    return values.to(device=like.device, dtype=dtype).reshape(1).expand(batch).contiguous()


#: Every sampler name ``diffusion.sampler`` accepts, over all the processes.
SAMPLERS: tuple[str, ...] = ("ddim", "ddpm", "rflow")


class DenoisingProcess:
    """What the iterative processes share: the denoising loss, the classifier-free guided
    denoiser, the number of sampling steps and the sampler check.

    A subclass runs one ``diffusion.process`` (:attr:`process_name`), sampled by the
    samplers in :attr:`samplers`, and defines the forward process (``self.scheduler``,
    whose ``add_noise`` is :meth:`q_sample`; :meth:`sample_timesteps`;
    :meth:`training_target`), :meth:`sample` and :meth:`invert`.

    Args:
        cfg: the ``diffusion`` config section (process, timesteps, prediction, loss,
            sampler, eta, sample_steps, guidance_scale, ...).
        clip_denoised: clip the predicted ``x0`` to ``[-1, 1]`` inside the sampler steps
            that predict it, as guided-diffusion does; right for images that live in
            ``[-1, 1]`` (an HU window).

    The network is always an argument: ``model(x_t (B, C, D, H, W), mask (B, M, D, H, W),
    t (B,), cond) -> (B, C, D, H, W)``.
    """

    #: The ``diffusion.process`` this class runs.
    process_name: ClassVar[str] = ""
    #: The ``diffusion.sampler`` values that sample it.
    samplers: ClassVar[tuple[str, ...]] = ()
    scheduler: Any

    def __init__(self, cfg: DiffusionConfig, clip_denoised: bool = True) -> None:
        if cfg.process != self.process_name:
            raise ConfigError(
                f"diffusion.process '{cfg.process}' is not the process {type(self).__name__} "
                f"runs ('{self.process_name}'); build the process of a config with "
                "unveil.generative.registry.family_for(cfg).process(cfg)."
            )
        self.cfg = cfg
        self.clip_denoised = clip_denoised
        self.num_timesteps = int(cfg.timesteps)

    # ------------------------------------------------------------------ forward process

    def _uniform_times(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """``(B,)`` float64 uniform reals in ``[0, T)``, on the generator's device.

        Drawn here rather than with a scheduler's ``sample_timesteps`` because MONAI's use
        the global RNG, and all randomness must come from the injected generator.
        """
        u = torch.rand((batch,), generator=generator, device=generator.device, dtype=torch.float64)
        return u * self.num_timesteps

    def sample_timesteps(
        self, batch: int, generator: torch.Generator, like: torch.Tensor
    ) -> torch.Tensor:
        """Training timesteps ``(B,)`` on ``like``'s device, drawn from ``generator``."""
        raise NotImplementedError

    def q_sample(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise ``x0 (B, C, D, H, W)`` to level ``t (B,)`` with ``noise`` of the same shape."""
        return self.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """What the network must predict at ``(x_t, t)``; shape of ``x0``."""
        raise NotImplementedError

    def training_loss(
        self,
        model: nn.Module | Callable[..., torch.Tensor],
        x0: torch.Tensor,
        mask: torch.Tensor,
        cond: TextCondition | None,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Denoising loss on one batch.

        Args:
            model: the network ``model(x_t, mask, t, cond)``.
            x0: clean images ``(B, C, D, H, W)`` in ``[-1, 1]``.
            mask: one-hot mask ``(B, M, D, H, W)``, passed through to the network.
            cond: the text condition (prompt dropout already applied by the data pipeline,
                for classifier-free guidance training) or None.
            noise: ``(B, C, D, H, W)``; drawn from ``generator`` when None.
            t: ``(B,)`` timesteps; drawn from ``generator`` when None.
            generator: the source of ``noise`` and ``t`` when they are not given.

        Returns:
            ``(loss, logs)``: the scalar ``diffusion.loss`` (l1 or l2, mean over every
            voxel, computed in float32) and ``{"loss": loss.detach()}`` (a tensor where
            it was computed: logging it needs no device sync).
        """
        if (noise is None or t is None) and generator is None:
            raise ValueError(
                "training_loss draws noise and timesteps from an injected generator; pass "
                "generator= (or both noise= and t=)."
            )
        if t is None:
            t = self.sample_timesteps(x0.shape[0], generator, x0)
        if noise is None:
            noise = _draw_rand(tuple(x0.shape), generator, x0, normal=True)
        x_t = self.q_sample(x0, noise, t)
        pred = model(x_t, mask, t, cond)
        target = self.training_target(x0, noise, t)
        if pred.shape != target.shape:
            raise ValueError(
                f"the network returned {tuple(pred.shape)} but the target is "
                f"{tuple(target.shape)}; build it with out_channels equal to the image channels."
            )
        if self.cfg.loss == "l1":
            loss = F.l1_loss(pred.float(), target.float())
        else:
            loss = F.mse_loss(pred.float(), target.float())
        return loss, {"loss": loss.detach()}

    # ------------------------------------------------------------------ guided denoiser

    def model_fn(
        self,
        model: nn.Module | Callable[..., torch.Tensor],
        mask: torch.Tensor,
        cond: TextCondition | None,
        guidance_scale: float = 1.0,
    ) -> Denoiser:
        """Wrap the network as ``denoise(x_t, t)`` with the mask and text bound.

        With ``guidance_scale != 1`` the conditional and the unconditional (``null`` all
        True) predictions come from ONE batched call of size ``2B`` and are combined as
        ``uncond + s * (cond - uncond)`` (classifier-free guidance; ``s = 0`` is the
        unconditional model).  Without a condition the scale is irrelevant.

        Args:
            model: the network.
            mask: ``(B, M, D, H, W)``, matching the ``x_t`` the sampler will pass.
            cond: the text condition for the batch, or None.
            guidance_scale: ``s`` above.
        """
        if cond is None or guidance_scale == 1.0:

            def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return model(x_t, mask, t, cond)

            return denoise

        both = TextCondition.cat([cond, null_condition(cond)])
        mask2 = torch.cat([mask, mask])
        scale = float(guidance_scale)

        def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = model(torch.cat([x_t, x_t]), mask2, torch.cat([t, t]), both)
            out_c, out_u = out.chunk(2)
            return out_u + scale * (out_c - out_u)

        return guided

    # ------------------------------------------------------------------ samplers

    def _steps(self, steps: int | None) -> int:
        n = int(self.cfg.sample_steps if steps is None else steps)
        if not 1 <= n <= self.num_timesteps:
            raise ConfigError(
                f"diffusion.sample_steps ({n}) must be between 1 and diffusion.timesteps "
                f"({self.num_timesteps}); lower it."
            )
        return n

    def _check_sampler(self, sampler: str) -> None:
        if sampler not in SAMPLERS:
            raise ConfigError(f"diffusion.sampler '{sampler}' is unknown; use ddim, ddpm or rflow.")
        if sampler not in self.samplers:
            raise ConfigError(
                f"diffusion.sampler '{sampler}' cannot sample a model trained with "
                f"diffusion.process '{self.cfg.process}'; use rflow with rflow, ddim or ddpm "
                "with ddpm."
            )

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
        """Generate ``x0`` ``(B, C, D, H, W)`` in ``[-1, 1]`` from the given starting ``noise``
        (see :meth:`DiffusionProcess.sample` for the arguments)."""
        raise NotImplementedError

    def invert(
        self, denoise: Denoiser, x0: torch.Tensor, steps: int | None = None, progress: bool = False
    ) -> torch.Tensor:
        """The starting noise that the deterministic sampler maps to ``x0``."""
        raise NotImplementedError


class DiffusionProcess(DenoisingProcess):
    """DDPM training, DDIM/DDPM samplers, DDIM inversion (``diffusion.process: ddpm``).

    Args:
        cfg: the ``diffusion`` config section (process ``ddpm``, timesteps, schedule,
            prediction, loss, sampler, eta, sample_steps, guidance_scale).
        clip_denoised: clip the predicted ``x0`` to ``[-1, 1]`` inside DDIM/DDPM steps, as
            guided-diffusion does; right for images that live in ``[-1, 1]`` (an HU window).

    The network's ``t`` is integer (``long``), in ``[0, T)``.
    """

    process_name = "ddpm"
    samplers = ("ddim", "ddpm")
    scheduler: DDPMScheduler

    def __init__(self, cfg: DiffusionConfig, clip_denoised: bool = True) -> None:
        super().__init__(cfg, clip_denoised)
        if cfg.schedule not in NoiseSchedules.names:
            raise ConfigError(
                f"diffusion.schedule '{cfg.schedule}' is not a known noise schedule; use one "
                f"of: {', '.join(NoiseSchedules.names)}."
            )
        self.scheduler = DDPMScheduler(
            num_train_timesteps=self.num_timesteps,
            schedule=cfg.schedule,
            prediction_type=cfg.prediction,
            clip_sample=clip_denoised,
        )
        if cfg.zero_terminal_snr:
            _rescale_zero_terminal_snr(self.scheduler)
        # A private float64 copy: MONAI's add_noise casts the scheduler's own table to
        # the dtype of whatever it last saw (bf16 under AMP), which must not leak into
        # the samplers.
        self._alphas_cumprod = self.scheduler.alphas_cumprod.detach().to(torch.float64).clone()

    # ------------------------------------------------------------------ forward process

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``(T,)`` float64 cumulative product of alphas."""
        return self._alphas_cumprod

    def sample_timesteps(
        self, batch: int, generator: torch.Generator, like: torch.Tensor
    ) -> torch.Tensor:
        """Training timesteps ``(B,)`` on ``like``'s device: uniform integers in ``[0, T)``."""
        t = self._uniform_times(batch, generator)
        return t.long().clamp_(max=self.num_timesteps - 1).to(like.device)

    def training_target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """What the network must predict at ``(x_t, t)``: ``x0``, ``eps`` or ``v``
        (``diffusion.prediction``); shape of ``x0``."""
        if self.cfg.prediction == "v_prediction":
            return self.scheduler.get_velocity(sample=x0, noise=noise, timesteps=t)
        if self.cfg.prediction == "sample":
            return x0
        return noise

    # ------------------------------------------------------------------ samplers

    def _respaced(
        self, kind: str, steps: int
    ) -> tuple[DDIMScheduler | DDPMScheduler, torch.Tensor]:
        """A MONAI scheduler over ``steps`` training timesteps plus the clean state.

        Returns ``(scheduler, ts)`` with ``ts`` ``(n,)`` the ascending training timesteps
        (``linspace(T - 1, 0, n)`` rounded, as MONAI's ``set_timesteps``) and a scheduler
        whose index ``k = 0`` is clean data (``alpha_cumprod = 1``) and ``k >= 1`` is
        ``ts[k - 1]``.

        Why respace instead of ``set_timesteps``: MONAI's DDIM ``step`` goes from ``t`` to
        ``t - T // n`` while ``set_timesteps`` visits ``linspace(T - 1, 0, n)``, so the two
        disagree by a step whenever ``n`` does not divide ``T - 1``, and its DDPM ``step``
        always goes to ``t - 1``, which is only right with all ``T`` steps.  On the
        respaced table (guided-diffusion's ``space_timesteps``) every step goes exactly
        from one visited level to the next, DDPM becomes the true ancestral sampler of the
        shortened chain, and DDIM's ``reversed_step`` is the exact mirror of ``step``.
        """
        ac_full = self.alphas_cumprod
        ts = torch.linspace(self.num_timesteps - 1, 0, steps).round().long().flip(0)
        ac = torch.cat([torch.ones(1, dtype=torch.float64), ac_full[ts]])
        alphas = ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        common = dict(
            num_train_timesteps=steps + 1,
            prediction_type=self.cfg.prediction,
            clip_sample=self.clip_denoised,
        )
        sch: DDIMScheduler | DDPMScheduler
        # ratio T'/n' = 1 for DDIM: its constructor sets num_inference_steps = steps + 1.
        sch = DDIMScheduler(**common) if kind == "ddim" else DDPMScheduler(**common)
        sch.alphas_cumprod = ac.float()
        sch.alphas = alphas.float()
        sch.betas = (1.0 - alphas).float()
        return sch, ts

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
        """Generate ``x0`` from the given starting ``noise``.

        Args:
            denoise: ``denoise(x_t, t)`` as returned by :meth:`model_fn` (or a sliding-
                window wrapper of it).
            noise: the starting point ``x_T`` ``(B, C, D, H, W)``, standard normal; never
                drawn here, so two calls with the same ``noise`` share it exactly.
            sampler: ``ddim`` or ``ddpm`` (default ``diffusion.sampler``).
            steps: number of network evaluations (default ``diffusion.sample_steps``).
            eta: DDIM stochasticity (default ``diffusion.eta``; 0 is deterministic).
            generator: source of the per-step noise of DDPM and of DDIM with ``eta > 0``;
                it must live on ``noise``'s device.
            progress: show a tqdm bar.

        Returns:
            ``x0`` ``(B, C, D, H, W)`` clamped to ``[-1, 1]``.
        """
        sampler = self.cfg.sampler if sampler is None else sampler
        self._check_sampler(sampler)
        n = self._steps(steps)
        eta = float(self.cfg.eta if eta is None else eta)
        batch = noise.shape[0]
        x = noise
        stochastic = sampler == "ddpm" or eta > 0
        if stochastic and generator is None:
            raise ValueError(
                f"sampler {sampler} (eta={eta}) draws noise at every step; pass "
                "generator=torch.Generator(device=noise.device).manual_seed(...)."
            )
        sch, ts = self._respaced(sampler, n)
        for k in tqdm(range(n, 0, -1), disable=not progress, desc=sampler, leave=False):
            out = denoise(x, _unit_times(ts[k - 1], batch, x, torch.long))
            if sampler == "ddim":
                x, _ = sch.step(out, k, x, eta=eta, generator=generator)
            else:
                x, _ = sch.step(out, k, x, generator=generator)
        return x.clamp(-1.0, 1.0)

    @torch.no_grad()
    def invert(
        self, denoise: Denoiser, x0: torch.Tensor, steps: int | None = None, progress: bool = False
    ) -> torch.Tensor:
        """Deterministic inversion: the ``x_T`` that the deterministic sampler maps to ``x0``.

        DDIM run backwards (MONAI's ``reversed_step`` on the same respaced levels as
        :meth:`sample`; the network is evaluated at the current, less noisy point, as in
        guided-diffusion's ``ddim_reverse_sample``).  ``sample(denoise, invert(denoise, x0,
        n), "ddim", n)`` reconstructs ``x0`` up to the discretisation error.

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
        sch, ts = self._respaced("ddim", n)
        for k in tqdm(range(n), disable=not progress, desc="invert", leave=False):
            if k == 0 and self.cfg.prediction == "sample":
                # The clean level has alpha_bar = 1, where an x0-predicting network gives
                # no noise estimate (0 / 0); the scan itself is taken as the point of the
                # first visited level, which is where the network is evaluated anyway.
                continue
            # k = 0 is the clean image, which has no level of its own: use the first one.
            out = denoise(x, _unit_times(ts[max(k - 1, 0)], batch, x, torch.long))
            x, _ = sch.reversed_step(out, k, x)
        return x
