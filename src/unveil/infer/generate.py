"""Whole-volume generation for one preprocessed subject (any family of the registry)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from unveil.conditioning import TextCondition
from unveil.config import Config
from unveil.generative.registry import family_for
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

    def window(fn, progress: bool = False):
        return windowed(
            fn, cfg.preprocess.patch_size, inf.overlap, inf.sw_batch_size, inf.blend, progress
        )

    # The family decides how a volume comes out of the noise: sampling over steps
    # (diffusion; guidance mixes the outputs in float32) or one windowed pass (GAN).
    return family_for(cfg).sample_volume(
        cfg,
        _in_precision(model, amp, device),
        window,
        mask,
        cond,
        noise,
        guidance_scale=guidance_scale,
        steps=steps,
        progress=progress,
    )
