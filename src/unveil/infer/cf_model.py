"""A loaded model ready to turn (prepared subject, prompt, noise) into HU volumes."""

from __future__ import annotations

from pathlib import Path

import torch

from unveil.conditioning import TextCondition
from unveil.data.preprocess import Preprocessor
from unveil.errors import UnveilError
from unveil.generative.registry import family_for
from unveil.infer.cf_checks import MAX_GUIDANCE_SCALE, check_sampling_options, check_text_setup
from unveil.infer.generate import generate_prepared
from unveil.infer.sliding import windowed
from unveil.model import load_model
from unveil.precision import AMP_CHOICES
from unveil.text.cache import EmbeddingCache
from unveil.text.encoders import build_encoder


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
        if amp not in AMP_CHOICES:  # before the model is loaded or anything is written
            raise UnveilError(f"--amp must be one of {', '.join(AMP_CHOICES)}, not '{amp}'.")
        check_sampling_options(guidance_scale, steps)
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
