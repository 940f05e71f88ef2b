"""Networks from config sections: the generator/denoiser UNet and the discriminator.

``model.family`` decides the role of the UNet through the flags of its entry in the family
registry (:mod:`unveil.family_registry`): ``time_conditioned`` -> time embedding;
``output_activation_default`` -> the output when ``model.out_activation`` is ``auto``
(linear for diffusion, ``tanh`` for the GAN); ``allows_noise_input`` -> one noise input
channel when ``model.noise_input`` is set (the GAN).  A discriminator is built only for a
family with ``needs_discriminator``.  An invalid combination is raised as
:class:`~unveil.errors.ConfigError` with one sentence naming the config keys, so the CLI
shows it without a traceback.
"""

from __future__ import annotations

from torch import nn

from unveil.config import GanConfig, ModelConfig
from unveil.errors import ConfigError
from unveil.family_registry import SPECS, family_spec
from unveil.nn.discriminator import ConditionalPatchDiscriminator
from unveil.nn.fusion import fusion_spec
from unveil.nn.unet import ConditionalUNet


def build_generator(
    model_cfg: ModelConfig,
    image_channels: int,
    mask_channels: int,
    cond_dim: int,
    height_channel: int | None = None,
    depth_channel: int | None = None,
) -> ConditionalUNet:
    """The UNet of ``model_cfg``: the diffusion denoiser or the GAN generator.

    Args:
        model_cfg: the ``model`` config section.
        image_channels: image channels (input of the denoiser, output of both families).
        mask_channels: one-hot mask channels (background included if the caller keeps it).
        cond_dim: width of the text tokens / pooled vector (``text.cond_dim``).
        height_channel: index of the lung-height mask channel (the regional effect head
            needs it), or None when the preprocessing adds none.
        depth_channel: index of the lung-depth mask channel (used by the effect head
            when present), or None.
    """
    family = _spec(model_cfg.family)
    if model_cfg.effect_knots and height_channel is None:
        raise ConfigError(
            "model.effect_knots needs the lung-height channel; set "
            "preprocess.position_channel: true or model.effect_knots: 0."
        )
    if model_cfg.noise_input and not family.allows_noise_input:
        allowed = ", ".join(n for n, s in SPECS.items() if s.allows_noise_input) or "none"
        raise ConfigError(
            f"model.noise_input adds a noise channel to the generator of the families that "
            f"take one ({allowed}) only; set it to false for model.family {family.name}."
        )
    try:
        return ConditionalUNet(
            image_channels=image_channels,
            mask_channels=mask_channels,
            out_channels=image_channels,
            channels=tuple(model_cfg.channels),
            res_blocks=model_cfg.res_blocks,
            norm_groups=model_cfg.norm_groups,
            fusion=model_cfg.fusion,
            fusion_levels=tuple(model_cfg.fusion_levels),
            heads=model_cfg.heads,
            cond_dim=cond_dim,
            with_time=family.time_conditioned,
            noise_channels=1 if model_cfg.noise_input else 0,
            out_activation=(
                family.output_activation_default
                if model_cfg.out_activation == "auto"
                else model_cfg.out_activation
            ),
            effect_knots=model_cfg.effect_knots,
            height_channel=height_channel if model_cfg.effect_knots else None,
            depth_channel=depth_channel if model_cfg.effect_knots else None,
        )
    except ValueError as err:
        raise ConfigError(f"model config: {err}") from None


def build_discriminator(
    gan_cfg: GanConfig,
    model_cfg: ModelConfig,
    mask_channels: int,
    cond_dim: int,
    image_channels: int = 1,
) -> ConditionalPatchDiscriminator:
    """The PatchGAN discriminator of ``gan_cfg`` for the generator of ``model_cfg``.

    The text projection term is used when ``gan.disc_text`` is set and the generator fuses
    text at all (``model.fusion`` is not the mask-only placement of the fusion registry): a
    mask-only baseline keeps a text-blind discriminator so that the comparison with text
    models is fair.
    ``image_channels`` is an argument because the config has no field for it (1 for CT).
    """
    if not _spec(model_cfg.family).needs_discriminator:
        trained = " or ".join(n for n, s in SPECS.items() if s.needs_discriminator) or "none"
        raise ConfigError(
            f"a discriminator is only built for model.family {trained}, not '{model_cfg.family}'."
        )
    use_text = gan_cfg.disc_text and fusion_spec(model_cfg.fusion).uses_text
    try:
        return ConditionalPatchDiscriminator(
            image_channels=image_channels,
            mask_channels=mask_channels,
            channels=gan_cfg.disc_channels,
            layers=gan_cfg.disc_layers,
            cond_dim=cond_dim if use_text else None,
        )
    except ValueError as err:
        raise ConfigError(f"gan config: {err}") from None


def _spec(name: str):
    """The family registry's entry of ``name``, its refusal as a :class:`ConfigError`."""
    try:
        return family_spec(name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


#: Parameter-name parts of the text path: the adapter, the fusion units (``*fusion*``), the
#: ``norm`` fusions' embedding, null vector and per-block modules (``text_mlp``,
#: ``text_null``, ``text_proj``; AdaGN) and the effect head.
TEXT_PARAM_KEYS: tuple[str, ...] = ("adapter.", "fusion", "text_", "effect_")


def param_groups(module: nn.Module, lr: float, text_lr_scale: float = 1.0) -> list[dict]:
    """Optimiser parameter groups: the text path at ``lr * text_lr_scale``, the rest at ``lr``.

    Why: the clinical text is a weak signal beside the mask, and with one learning rate the
    anatomy is learned long before the text path has moved; a text effect then stays
    attenuated (measured in docs/recovery.md).  Only trainable parameters are returned;
    an empty group is left out.
    """
    text, rest = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (text if any(k in name for k in TEXT_PARAM_KEYS) else rest).append(p)
    groups = [{"params": rest, "lr": lr}]
    if text:
        groups.append({"params": text, "lr": lr * float(text_lr_scale)})
    return [g for g in groups if g["params"]]
