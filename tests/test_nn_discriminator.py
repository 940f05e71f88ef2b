"""The 3D PatchGAN discriminator: it must see the mask, and the text when asked to."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unveil.conditioning import TextCondition
from unveil.config import GanConfig, ModelConfig
from unveil.errors import ConfigError
from unveil.nn.build import build_discriminator, count_parameters
from unveil.nn.discriminator import ConditionalPatchDiscriminator

E, L, M = 12, 4, 3
S = (16, 16, 16)


@pytest.fixture
def gen() -> torch.Generator:
    torch.manual_seed(0)
    return torch.Generator().manual_seed(3)


def _mask(gen: torch.Generator, batch: int = 2) -> torch.Tensor:
    labels = torch.randint(0, M, (batch, *S), generator=gen)
    return nn.functional.one_hot(labels, M).permute(0, 4, 1, 2, 3).float()


def _cond(gen: torch.Generator, batch: int = 2, null=None) -> TextCondition:
    return TextCondition(
        torch.randn(batch, L, E, generator=gen),
        torch.ones(batch, L, dtype=torch.bool),
        torch.randn(batch, E, generator=gen),
        null,
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm()).detach())


def test_shape_and_mask_is_seen(gen: torch.Generator) -> None:
    d = ConditionalPatchDiscriminator(1, M, channels=8, layers=2)
    image, mask = torch.randn(2, 1, *S, generator=gen), _mask(gen)
    logits = d(image, mask)
    assert logits.shape == (2, 1, *d.output_shape(S)) == (2, 1, 3, 3, 3)
    assert d.output_shape((64, 64, 32)) == (15, 15, 7)
    assert _rel(d(image, mask.flip(2)), logits) > 1e-2
    # Without the text term the condition is ignored.
    torch.testing.assert_close(d(image, mask, _cond(gen)), logits)


def test_text_projection_term(gen: torch.Generator) -> None:
    d = ConditionalPatchDiscriminator(1, M, channels=8, layers=2, cond_dim=E)
    nn.init.normal_(d.embed.weight, std=0.5)  # a trained projection, not the small init
    image, mask, cond = torch.randn(2, 1, *S, generator=gen), _mask(gen), _cond(gen)
    logits = d(image, mask, cond)
    assert logits.shape == (2, 1, 3, 3, 3)
    other = TextCondition(cond.tokens, cond.mask, torch.randn(2, E, generator=gen), None)
    assert _rel(d(image, mask, other), logits) > 1e-2
    assert _rel(d(image, mask.flip(3), cond), logits) > 1e-2
    # The term is the per-patch inner product of the last features with the embedded text.
    feats = d.net(torch.cat([image, mask], 1))
    ref = feats[-1] + torch.einsum("bfdhw,bf->bdhw", feats[-2], d.embed(cond.pooled))[:, None]
    torch.testing.assert_close(logits, ref)
    # Dropped or missing text takes the learned null vector: same as cond=None.
    dropped = TextCondition(cond.tokens, cond.mask, cond.pooled, torch.tensor([True, True]))
    torch.testing.assert_close(d(image, mask, dropped), d(image, mask, None))
    empty = TextCondition(cond.tokens, torch.zeros(2, L, dtype=torch.bool), cond.pooled, None)
    torch.testing.assert_close(d(image, mask, empty), d(image, mask, None))


def test_gradients_reach_text_parameters(gen: torch.Generator) -> None:
    d = ConditionalPatchDiscriminator(1, M, channels=8, layers=2, cond_dim=E)
    image = torch.randn(2, 1, *S, generator=gen, requires_grad=True)
    d(image, _mask(gen), _cond(gen, null=torch.tensor([False, True]))).square().mean().backward()
    for name, p in d.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert image.grad.abs().sum() > 0


def test_bad_inputs_raise(gen: torch.Generator) -> None:
    d = ConditionalPatchDiscriminator(1, M, channels=8, layers=3)
    with pytest.raises(ValueError, match="too small for a 3-layer PatchGAN"):
        d(torch.randn(1, 1, 8, 8, 8), torch.zeros(1, M, 8, 8, 8))
    with pytest.raises(ValueError, match="mask must be"):
        d(torch.randn(1, 1, *S), torch.zeros(1, M + 1, *S))
    with pytest.raises(ValueError, match="layers >= 1"):
        ConditionalPatchDiscriminator(1, M, layers=0)


def test_build_discriminator_from_config() -> None:
    gan_model = ModelConfig(family="gan", channels=(8, 16))
    d = build_discriminator(GanConfig(disc_channels=8, disc_layers=2), gan_model, M, E)
    assert d.cond_dim == E and d.mask_channels == M and d.feature_channels == 32
    blind = build_discriminator(GanConfig(disc_text=False), gan_model, M, E)
    assert blind.cond_dim is None and blind.embed is None
    baseline = ModelConfig(family="gan", channels=(8, 16), fusion="none")
    assert build_discriminator(GanConfig(), baseline, M, E).cond_dim is None
    assert (
        count_parameters(d)
        - count_parameters(
            build_discriminator(
                GanConfig(disc_channels=8, disc_layers=2, disc_text=False), gan_model, M, E
            )
        )
        == E * 32 + E
    )
    with pytest.raises(ConfigError, match="model.family gan"):
        build_discriminator(GanConfig(), ModelConfig(family="diffusion"), M, E)
