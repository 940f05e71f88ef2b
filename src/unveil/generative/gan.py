"""The conditional GAN objective (pix2pix-like generator, PatchGAN discriminator).

The process owns no weights: the generator and the discriminator are arguments, as in the
diffusion process.  Both networks see the mask, and the discriminator also sees the text
unless ``gan.disc_text`` is off (the published code's discriminator saw neither, so it
could not penalise an image that ignores its condition).

Network interfaces:

* generator ``G(x, mask, t, cond) -> (B, C, D, H, W)`` in ``[-1, 1]`` (the GAN variant
  of the shared UNet ends in ``tanh``); ``x`` is the noise ``(B, Cn, D, H, W)`` or None
  when the generator takes the mask alone, ``t`` is always None;
* discriminator ``D(image, mask, cond) -> logits (B, 1, d, h, w)`` (PatchGAN).

Losses (``gan.loss``), with ``D(x)`` the patch logits averaged over patches and batch:

* ``lsgan`` (pix2pix / Mao et al.): ``L_D = 0.5 [(D(real) - 1)^2 + D(fake)^2]``,
  ``L_G,adv = (D(fake) - 1)^2``;
* ``hinge`` (Miyato et al., SAGAN): ``L_D = relu(1 - D(real)) + relu(1 + D(fake))``,
  ``L_G,adv = -D(fake)``.

The generator's adversarial term is scaled by ``adv_weight``; it adds ``l1_weight *
|fake - real|`` (pix2pix) and, when ``corr_weight > 0``,
``corr_weight * (1 - r)`` with ``r`` the Pearson correlation between fake and real per
sample (the paper's correlation loss), averaged over the batch, and, when
``lowpass_weight > 0``, ``lowpass_weight * |m(fake) - m(real)|`` with ``m`` the mean over
blocks of ``lowpass_size^3`` voxels inside the labelled mask (:func:`masked_block_means`).

Why the block-mean term: a clinical attribute shifts the *regional density* (tens of HU)
under texture that the mask does not determine (vessels, noise: hundreds of HU per voxel).
The per-voxel L1 gradient is a sign per voxel, so that texture drowns the shift and the
text pathway learns it slowly; the mean of a block averages the texture out and leaves the
shift, so the same shift yields a clean gradient.  What the term measurably did on the
phantom: see docs/demo.md ("The block-mean term, measured").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unveil.conditioning import TextCondition
from unveil.config import GanConfig
from unveil.nn.build import param_groups

Network = nn.Module | Callable[..., torch.Tensor]


def masked_block_means(
    x: torch.Tensor, weight: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of ``x`` over ``size^3`` blocks, weighted by ``weight``; and each block's weight.

    ``x`` ``(B, C, D, H, W)``, ``weight`` ``(B, 1, D, H, W)`` (e.g. the labelled mask) ->
    ``(means (B, C, d, h, w), block weight (B, 1, d, h, w))`` with ``d = ceil(D / size)``;
    a block with no weight has mean 0 and weight 0.  Partial blocks at the border are
    averaged over their voxels inside the volume.
    """
    num = F.avg_pool3d(x * weight, size, stride=size, ceil_mode=True)
    den = F.avg_pool3d(weight, size, stride=size, ceil_mode=True)
    return num / den.clamp_min(1e-6), den


def pearson_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation per sample between ``a`` and ``b`` ``(B, ...)`` -> ``(B,)``.

    Computed in float32 over every voxel and channel of a sample; ``eps`` keeps a constant
    image (zero variance) from dividing by zero (its correlation is then 0).
    """
    a = a.float().flatten(1)
    b = b.float().flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    cov = (a * b).sum(dim=1)
    return cov / torch.sqrt((a * a).sum(dim=1) * (b * b).sum(dim=1) + eps)


class GanProcess:
    """Adversarial objective, reconstruction terms and a two-network update.

    Args:
        cfg: the ``gan`` config section (loss, l1_weight, corr_weight, lr_g, lr_d, betas,
            disc_text).
        label_channels: how many leading mask channels are label one-hots (the rest, such
            as the position channel, are not foreground); None means all.
    """

    def __init__(self, cfg: GanConfig, label_channels: int | None = None) -> None:
        self.cfg = cfg
        self.label_channels = label_channels

    # ------------------------------------------------------------------ building blocks

    def generate(
        self,
        generator: Network,
        mask: torch.Tensor,
        cond: TextCondition | None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The generated image ``(B, C, D, H, W)`` in ``[-1, 1]`` for ``mask (B, M, D, H, W)``.

        ``noise`` ``(B, Cn, D, H, W)`` is passed as the generator's ``x`` (None for a
        generator that takes the mask alone); gradients flow unless the caller disables
        them.
        """
        return generator(noise, mask, None, cond)

    def _disc(
        self,
        discriminator: Network,
        image: torch.Tensor,
        mask: torch.Tensor,
        cond: TextCondition | None,
    ) -> torch.Tensor:
        return discriminator(image, mask, cond if self.cfg.disc_text else None)

    def d_loss_from_logits(
        self, real_logits: torch.Tensor, fake_logits: torch.Tensor
    ) -> torch.Tensor:
        """Discriminator loss (scalar, float32) from patch logits on real and fake images."""
        real_logits, fake_logits = real_logits.float(), fake_logits.float()
        if self.cfg.loss == "hinge":
            return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
        return 0.5 * (
            F.mse_loss(real_logits, torch.ones_like(real_logits))
            + F.mse_loss(fake_logits, torch.zeros_like(fake_logits))
        )

    def g_adv_loss_from_logits(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Adversarial part of the generator loss (scalar, float32)."""
        fake_logits = fake_logits.float()
        if self.cfg.loss == "hinge":
            return -fake_logits.mean()
        return F.mse_loss(fake_logits, torch.ones_like(fake_logits))

    def d_loss_on(
        self,
        discriminator: Network,
        real: torch.Tensor,
        fake: torch.Tensor,
        mask: torch.Tensor,
        cond: TextCondition | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        real_logits = self._disc(discriminator, real, mask, cond)
        fake_logits = self._disc(discriminator, fake.detach(), mask, cond)
        loss = self.d_loss_from_logits(real_logits, fake_logits)
        logs = {
            "d_loss": loss.detach(),
            "d_real": real_logits.detach().float().mean(),
            "d_fake": fake_logits.detach().float().mean(),
        }
        return loss, logs

    def g_loss_on(
        self,
        discriminator: Network,
        real: torch.Tensor,
        fake: torch.Tensor,
        mask: torch.Tensor,
        cond: TextCondition | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # adv_weight 0 makes the generator a conditional regressor (reconstruction terms
        # only): the discriminator is then not evaluated at all.
        adversarial = self.cfg.adv_weight > 0
        adv = (
            self.g_adv_loss_from_logits(self._disc(discriminator, fake, mask, cond))
            if adversarial
            else fake.new_zeros(())
        )
        labels = mask if self.label_channels is None else mask[:, : self.label_channels]
        inside = (labels.sum(dim=1, keepdim=True) > 0).float()  # the labelled organs
        if self.cfg.l1_mask_weight > 0:
            # The clinical claims concern the labelled organs; outside them the image is not
            # constrained by the condition (body habitus, bones), so the reconstruction can
            # weigh the labelled voxels more.  Normalised so the weights average to 1.
            w = 1.0 + self.cfg.l1_mask_weight * inside
            l1 = ((fake.float() - real.float()).abs() * w).sum() / (w.sum() * fake.shape[1])
        else:
            l1 = F.l1_loss(fake.float(), real.float())
        loss = self.cfg.adv_weight * adv + self.cfg.l1_weight * l1
        logs = {"g_l1": l1.detach()}
        if adversarial:
            logs["g_adv"] = adv.detach()
        if self.cfg.lowpass_weight > 0:
            mf, w = masked_block_means(fake.float(), inside, self.cfg.lowpass_size)
            mr, _ = masked_block_means(real.float(), inside, self.cfg.lowpass_size)
            lowpass = ((mf - mr).abs() * w).sum() / (w.sum().clamp_min(1e-6) * fake.shape[1])
            loss = loss + self.cfg.lowpass_weight * lowpass
            logs["g_lowpass"] = lowpass.detach()
        if self.cfg.corr_weight > 0:
            corr = (1.0 - pearson_correlation(fake, real)).mean()
            loss = loss + self.cfg.corr_weight * corr
            logs["g_corr"] = corr.detach()
        logs["g_loss"] = loss.detach()
        return loss, logs

    # ------------------------------------------------------------------ public losses

    def discriminator_loss(
        self,
        generator: Network,
        discriminator: Network,
        real: torch.Tensor,
        mask: torch.Tensor,
        cond: TextCondition | None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Discriminator loss on one batch; the fake is generated without gradients.

        Args:
            real: real images ``(B, C, D, H, W)`` in ``[-1, 1]``.
            mask: one-hot mask ``(B, M, D, H, W)``.
            cond: text condition or None.
            noise: generator input ``x`` or None.

        Returns:
            ``(loss, {"d_loss", "d_real", "d_fake"})`` (the last two: mean logits).
        """
        with torch.no_grad():
            fake = self.generate(generator, mask, cond, noise)
        return self.d_loss_on(discriminator, real, fake, mask, cond)

    def generator_loss(
        self,
        generator: Network,
        discriminator: Network,
        real: torch.Tensor,
        mask: torch.Tensor,
        cond: TextCondition | None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Generator loss: adversarial + ``l1_weight`` L1 (+ ``corr_weight`` (1 - r)).

        Gradients reach the discriminator's parameters too unless they are frozen; use
        :meth:`train_step` (which freezes them) or freeze them yourself.

        Returns:
            ``(loss, {"g_loss", "g_adv", "g_l1"[, "g_corr"]})``.
        """
        fake = self.generate(generator, mask, cond, noise)
        return self.g_loss_on(discriminator, real, fake, mask, cond)

    # ------------------------------------------------------------------ one update

    def train_step(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        real: torch.Tensor,
        mask: torch.Tensor,
        cond: TextCondition | None,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One discriminator update, then one generator update; returns both logs merged.

        The fake is generated once (with gradients): the discriminator half sees it
        detached, and the generator half reuses the same graph, as pix2pix does, which
        saves a generator forward pass.  The discriminator's ``requires_grad`` flags are
        off during the generator half (and restored afterwards, even on error), so the
        generator loss leaves the discriminator's gradients untouched.
        """
        fake = self.generate(generator, mask, cond, noise)

        logs: dict[str, torch.Tensor] = {}
        if self.cfg.adv_weight > 0:  # with no adversarial term the discriminator is idle
            d_loss, logs = self.d_loss_on(discriminator, real, fake, mask, cond)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()

        params = list(discriminator.parameters())
        flags = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(False)
            g_loss, g_logs = self.g_loss_on(discriminator, real, fake, mask, cond)
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
        logs.update(g_logs)
        return logs


def make_gan_optimizers(
    generator: nn.Module, discriminator: nn.Module, cfg: GanConfig, text_lr_scale: float = 1.0
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Two-time-scale Adam (Heusel et al.): ``lr_g`` for G, ``lr_d`` for D, shared ``betas``.

    Only trainable parameters are handed to each optimiser (a frozen text encoder inside a
    network stays frozen).  Returns ``(opt_g, opt_d)``.
    """
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    opt_g = torch.optim.Adam(param_groups(generator, cfg.lr_g, text_lr_scale), betas=betas)
    opt_d = torch.optim.Adam(
        [p for p in discriminator.parameters() if p.requires_grad], lr=cfg.lr_d, betas=betas
    )
    return opt_g, opt_d
