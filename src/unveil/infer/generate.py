"""Whole-volume generation for one preprocessed subject (both families)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from unveil.conditioning import TextCondition
from unveil.config import Config
from unveil.infer.sliding import windowed
from unveil.precision import AMP_CHOICES


def _in_precision(fn: Callable[..., torch.Tensor], amp: str, device: torch.device):
    """``fn`` run under bfloat16 autocast when ``amp`` is ``bf16``, its output as float32."""
    if amp == "none":
        return fn

    def run(*args, **kwargs) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = fn(*args, **kwargs)
        return out.float()

    return run


@torch.no_grad()
def generate_prepared(
    model: nn.Module,
    cfg: Config,
    prepared,
    cond: TextCondition | None,
    noise: torch.Tensor,
    device: torch.device | str = "cpu",
    guidance_scale: float | None = None,
    steps: int | None = None,
    progress: bool = False,
    amp: str = "none",
) -> torch.Tensor:
    """Generate the image of a whole preprocessed scan; returns ``(1, 1, X, Y, Z)`` in [-1, 1].

    Args:
        model: a :class:`unveil.model.TextConditionedGenerator` (eval mode).
        prepared: :class:`unveil.data.preprocess.Prepared` (its one-hot ``mask`` is used).
        cond: encoder-width text condition of batch 1.
        noise: ``(1, 1, X, Y, Z)`` standard normal on the preprocessed grid.  Diffusion
            starts from it (one noise volume for the whole scan, shared by every window);
            a GAN with ``model.noise_input`` uses it as its noise channel.  Counterfactual
            pairs pass the *same* tensor, so they share noise by construction.
        amp: ``bf16`` runs the network under bfloat16 autocast (about 2x faster on CPUs
            with AMX and on recent GPUs; about 3 significant digits per voxel, i.e. errors
            of a few HU, which paired counterfactuals share only in part); ``none``
            (default) is float32.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, not '{amp}'.")
    device = torch.device(device)
    mask = (
        prepared.mask.unsqueeze(0).to(device)
        if prepared.mask.dim() == 4
        else prepared.mask.to(device)
    )
    noise = noise.to(device)
    inf = cfg.infer
    if cfg.model.family == "diffusion":
        from unveil.generative.diffusion import DiffusionProcess

        process = DiffusionProcess(cfg.diffusion)
        scale = cfg.diffusion.guidance_scale if guidance_scale is None else guidance_scale

        net = _in_precision(model, amp, device)  # guidance mixes the outputs in float32

        def guided(x, m, t, c):
            # Classifier-free guidance inside each window: one batched call per window.
            return process.model_fn(net, m, c, scale)(x, t)

        run = windowed(guided, cfg.preprocess.patch_size, inf.overlap, inf.sw_batch_size, inf.blend)

        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return run(x_t, mask, t, cond)

        # DDPM and DDIM with eta > 0 draw fresh noise at every step: seed it from the
        # starting noise, so a counterfactual pair (same starting noise) also shares the
        # per-step noise and differs only by its prompt.
        step_noise = torch.Generator(device=noise.device).manual_seed(_noise_seed(noise))
        return process.sample(denoise, noise, steps=steps, progress=progress, generator=step_noise)
    run = windowed(
        _in_precision(model, amp, device),
        cfg.preprocess.patch_size,
        inf.overlap,
        inf.sw_batch_size,
        inf.blend,
        progress=progress,
    )
    x = noise if cfg.model.noise_input else None
    return run(x, mask, None, cond).clamp(-1.0, 1.0)


def _noise_seed(noise: torch.Tensor) -> int:
    """A 63-bit seed determined by the bytes of ``noise`` (same noise, same seed)."""
    import hashlib

    digest = hashlib.sha256(noise.detach().cpu().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
