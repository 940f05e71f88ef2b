"""The trained object: text adapter + network(s), rebuilt from a checkpoint alone.

Networks map tensors to tensors; the frozen text encoder stays outside (its embeddings are
cached).  What *is* trained on the text side is the small :class:`TextAdapter`, so the
generator is wrapped together with it: ``TextConditionedGenerator(x, mask, t, text)``
takes the encoder-width :class:`TextCondition` (or None) and adapts it internally.  This
keeps DDP simple (one module per optimiser) and keeps the adapter in the saved weights —
the published code re-drew its text projection at random at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unveil.conditioning import TextCondition
from unveil.config import Config, config_from_dict
from unveil.data.preprocess import DEPTH_CHANNEL, POSITION_CHANNEL
from unveil.errors import CheckpointError
from unveil.family_registry import family_spec
from unveil.fusion_registry import fusion_spec
from unveil.generative.registry import family_for
from unveil.nn.build import build_discriminator, build_generator
from unveil.runtime.checkpoint import load_checkpoint, resolve_checkpoint
from unveil.text.adapter import TextAdapter
from unveil.text.template import Template


class TextConditionedGenerator(nn.Module):
    """``forward(x (B,Cx,D,H,W)|None, mask (B,M,D,H,W), t (B,)|None, text) -> (B,C,D,H,W)``.

    ``text`` is the *encoder-width* condition (tokens ``(B,L,E)``, mask ``(B,L)``, pooled
    ``(B,E_p)``, null ``(B,)``) or None for the unconditional model.
    """

    def __init__(self, net: nn.Module, adapter: TextAdapter | None) -> None:
        super().__init__()
        self.net = net
        self.adapter = adapter

    def forward(
        self,
        x: torch.Tensor | None,
        mask: torch.Tensor,
        t: torch.Tensor | None = None,
        text: TextCondition | None = None,
    ) -> torch.Tensor:
        cond = self.adapter(text) if (text is not None and self.adapter is not None) else None
        return self.net(x, mask, t, cond)


class TextConditionedDiscriminator(nn.Module):
    """``forward(image (B,1,D,H,W), mask (B,M,D,H,W), text) -> patch logits``; own adapter."""

    def __init__(self, net: nn.Module, adapter: TextAdapter | None) -> None:
        super().__init__()
        self.net = net
        self.adapter = adapter

    def forward(
        self, image: torch.Tensor, mask: torch.Tensor, text: TextCondition | None = None
    ) -> torch.Tensor:
        cond = self.adapter(text) if (text is not None and self.adapter is not None) else None
        return self.net(image, mask, cond)


@dataclass
class ModelMeta:
    """What a checkpoint must carry besides the config to rebuild and use its model.

    Nothing here identifies a patient: names of mask channels, the encoder's name and
    identity and widths, the template's content (fields and vocabularies, no rows).
    """

    mask_channels: list[str]
    image_channels: int
    encoder_name: str
    encoder_identity: str
    encoder_width: int
    encoder_pooled_width: int
    template: dict[str, Any]
    template_identity: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "checkpoint") -> ModelMeta:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as err:
            raise CheckpointError(
                f"{source} lacks model metadata ({err}); it was not written by `unveil train`."
            ) from None


def build_models(
    cfg: Config, meta: ModelMeta
) -> tuple[TextConditionedGenerator, TextConditionedDiscriminator | None]:
    """Fresh generator (and discriminator when the family trains one) for ``cfg`` and ``meta``."""
    text_on = fusion_spec(cfg.model.fusion).uses_text
    cond_dim = cfg.text.cond_dim
    m = len(meta.mask_channels)
    names = list(meta.mask_channels)
    height = names.index(POSITION_CHANNEL) if POSITION_CHANNEL in names else None
    depth = names.index(DEPTH_CHANNEL) if DEPTH_CHANNEL in names else None
    net = build_generator(
        cfg.model, meta.image_channels, m, cond_dim, height_channel=height, depth_channel=depth
    )
    adapter = (
        TextAdapter(meta.encoder_width, cond_dim, pooled_in_dim=meta.encoder_pooled_width)
        if text_on
        else None
    )
    gen = TextConditionedGenerator(net, adapter)
    disc = None
    if family_spec(cfg.model.family).needs_discriminator:
        dnet = build_discriminator(cfg.gan, cfg.model, m, cond_dim, meta.image_channels)
        dadapter = (
            TextAdapter(meta.encoder_width, cond_dim, pooled_in_dim=meta.encoder_pooled_width)
            if (text_on and cfg.gan.disc_text)
            else None
        )
        disc = TextConditionedDiscriminator(dnet, dadapter)
    return gen, disc


@dataclass
class LoadedModel:
    """A checkpoint made usable: config, metadata, generator (EMA weights when present)."""

    cfg: Config
    meta: ModelMeta
    generator: TextConditionedGenerator
    step: int
    path: Path
    versions: dict[str, str]

    def process(self):
        """The generative process object of this model's family."""
        return self.family.process(self.cfg)

    @property
    def family(self):
        """The :class:`~unveil.generative.registry.GenerativeFamily` of this model."""
        return family_for(self.cfg)

    def template(self):
        return Template.from_dict(self.meta.template, source=f"template stored in {self.path}")


def load_model(
    path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True
) -> LoadedModel:
    """Rebuild the generator of a checkpoint from the checkpoint alone."""
    path = resolve_checkpoint(path)
    ck = load_checkpoint(path)
    cfg = config_from_dict(ck["config"], source=f"checkpoint {path}")
    meta = ModelMeta.from_dict(ck.get("meta", {}), source=str(path))
    gen, _ = build_models(cfg, meta)
    state = ck["models"]["generator"]
    if use_ema and ck.get("ema") and ck["ema"].get("weights"):
        state = ck["ema"]["weights"]
    try:
        gen.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path} does not match the model its config describes ({str(err).splitlines()[0][:120]}); "
            "it may have been edited or written by an incompatible unveil version."
        ) from None
    gen.to(device).eval().requires_grad_(False)
    return LoadedModel(cfg, meta, gen, int(ck["step"]), path, dict(ck.get("versions", {})))
