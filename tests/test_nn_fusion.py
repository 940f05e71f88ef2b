"""Fusion units: shapes, identity at init, null handling, and that the text is really used."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unveil.conditioning import TextCondition
from unveil.nn.fusion import (
    FUSION_KINDS,
    AffineCrossAttentionFusion,
    AffineFusion,
    ConcatFusion,
    CrossAttentionFusion,
    NoFusion,
    make_fusion,
)

C, E, L = 8, 12, 5


def _cond(gen: torch.Generator, batch: int = 2, null=None, mask=None) -> TextCondition:
    tokens = torch.randn(batch, L, E, generator=gen)
    if mask is None:
        mask = torch.ones(batch, L, dtype=torch.bool)
        mask[:, -2:] = False  # padding at the end, as a tokenizer produces
    pooled = torch.randn(batch, E, generator=gen)
    return TextCondition(tokens, mask, pooled, null)


def _perturb(module: nn.Module, gen: torch.Generator, scale: float = 0.3) -> None:
    """Move every parameter off its (identity) initialisation."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


@pytest.fixture
def gen() -> torch.Generator:
    torch.manual_seed(0)
    return torch.Generator().manual_seed(1)


@pytest.mark.parametrize("kind", FUSION_KINDS)
def test_shapes_every_kind(kind: str, gen: torch.Generator) -> None:
    unit = make_fusion(kind, C, E, heads=4)
    h = torch.randn(2, C, 4, 6, 2, generator=gen)
    for cond in (_cond(gen), None):
        out = unit(h, cond)
        assert out.shape == h.shape
        assert torch.isfinite(out).all()


def test_make_fusion_types_and_errors() -> None:
    assert isinstance(make_fusion("none", C, E), NoFusion)
    assert isinstance(make_fusion("concat", C, E), ConcatFusion)
    assert isinstance(make_fusion("affine", C, E), AffineFusion)
    assert isinstance(make_fusion("cross_attention", C, E), CrossAttentionFusion)
    assert isinstance(make_fusion("affine+cross_attention", C, E), AffineCrossAttentionFusion)
    with pytest.raises(ValueError, match="unknown fusion kind 'film'.*affine\\+cross_attention"):
        make_fusion("film", C, E)
    with pytest.raises(ValueError, match="divisible by heads"):
        make_fusion("cross_attention", 10, E, heads=4)
    with pytest.raises(ValueError, match="divisible by heads"):
        CrossAttentionFusion(10, E, heads=3)
    # Heads only matter for attention.
    assert isinstance(make_fusion("affine", 10, E, heads=4), AffineFusion)


@pytest.mark.parametrize("kind", ["affine", "cross_attention", "affine+cross_attention"])
def test_identity_at_init_exactly(kind: str, gen: torch.Generator) -> None:
    unit = make_fusion(kind, C, E)
    h = torch.randn(2, C, 4, 4, 4, generator=gen)
    assert torch.equal(unit(h, _cond(gen)), h)
    assert torch.equal(unit(h, None), h)


def test_affine_identity_survives_global_init_then_reset(gen: torch.Generator) -> None:
    unit = AffineFusion(C, E)
    h = torch.randn(2, C, 4, 4, 4, generator=gen)
    cond = _cond(gen)

    def global_init(m: nn.Module) -> None:
        if isinstance(m, nn.Conv3d | nn.Linear):
            nn.init.normal_(m.weight, std=0.5)
            nn.init.normal_(m.bias, std=0.5)

    unit.apply(global_init)
    assert not torch.allclose(unit(h, cond), h)  # the global init does break it ...
    unit.reset_parameters()
    assert torch.equal(unit(h, cond), h)  # ... and the unit's own init restores it


def test_affine_uses_pooled_text_once_not_identity(gen: torch.Generator) -> None:
    unit = AffineFusion(C, E)
    _perturb(unit, gen)
    h = torch.randn(2, C, 4, 4, 4, generator=gen)
    cond = _cond(gen)
    out = unit(h, cond)
    other = TextCondition(cond.tokens, cond.mask, cond.pooled + 1.0, None)
    delta = (unit(h, other) - out).norm() / out.norm()
    assert delta > 1e-2
    # Tokens do not enter the affine unit: only the pooled vector does.
    tok = TextCondition(cond.tokens + 1.0, cond.mask, cond.pooled, None)
    assert torch.allclose(unit(h, tok), out)


def test_concat_uses_pooled_and_equals_conv_on_tiled_concat(gen: torch.Generator) -> None:
    unit = ConcatFusion(C, E)
    h = torch.randn(2, C, 3, 4, 5, generator=gen)
    cond = _cond(gen)
    out = unit(h, cond)
    # The documented equivalence: a 1x1x1 conv over [h ; tiled pooled], plus the residual.
    tiled = cond.pooled[:, :, None, None, None].expand(-1, -1, 3, 4, 5)
    weight = torch.cat([unit.conv_h.weight, unit.proj_text.weight[:, :, None, None, None]], 1)
    ref = h + nn.functional.conv3d(torch.cat([h, tiled], 1), weight, unit.conv_h.bias)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    other = TextCondition(cond.tokens, cond.mask, cond.pooled * -1.0, None)
    assert (unit(h, other) - out).norm() / out.norm() > 1e-2


@pytest.mark.parametrize("kind", ["concat", "affine", "cross_attention", "affine+cross_attention"])
def test_missing_text_is_the_null_path(kind: str, gen: torch.Generator) -> None:
    unit = make_fusion(kind, C, E)
    _perturb(unit, gen)
    h = torch.randn(2, C, 4, 4, 4, generator=gen)
    ref = unit(h, None)
    assert torch.isfinite(ref).all()
    assert not torch.allclose(ref, h)  # the null condition does something once trained
    dropped = _cond(gen, null=torch.tensor([True, True]))
    no_tokens = _cond(gen, mask=torch.zeros(2, L, dtype=torch.bool))
    for cond in (dropped, no_tokens):
        out = unit(h, cond)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # A mixed batch: only the dropped sample takes the null path.
    mixed = _cond(gen, null=torch.tensor([True, False]))
    out = unit(h, mixed)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[1], ref[1], atol=1e-4)


def test_cross_attention_uses_the_tokens(gen: torch.Generator) -> None:
    unit = CrossAttentionFusion(C, E, heads=4)
    nn.init.normal_(unit.to_out.weight, std=0.5)  # leave the identity init
    h = torch.randn(2, C, 4, 4, 4, generator=gen)
    cond = _cond(gen)
    out = unit(h, cond)
    changed = TextCondition(torch.randn(2, L, E, generator=gen), cond.mask, cond.pooled, None)
    rel = (unit(h, changed) - out).norm() / out.norm()
    assert rel > 1e-2, f"text changed the output by only {rel:.2e}"
    # Padding tokens are masked out of the keys ...
    padded = cond.tokens.clone()
    padded[:, -1] += 100.0
    torch.testing.assert_close(
        unit(h, TextCondition(padded, cond.mask, cond.pooled, None)), out, rtol=1e-5, atol=1e-6
    )
    # ... and each sample sees only its own text.
    one = cond.tokens.clone()
    one[1] = torch.randn(L, E, generator=gen)
    out1 = unit(h, TextCondition(one, cond.mask, cond.pooled, None))
    torch.testing.assert_close(out1[0], out[0])
    assert not torch.allclose(out1[1], out[1], atol=1e-4)
    # Voxels attend independently: different voxels get different outputs (the published
    # unit collapsed the text into one vector shared by all voxels).
    delta = unit(h, cond) - h
    assert delta.std(dim=(2, 3, 4)).min() > 1e-3


@pytest.mark.parametrize("kind", ["concat", "affine", "cross_attention", "affine+cross_attention"])
def test_gradients_reach_every_fusion_parameter(kind: str, gen: torch.Generator) -> None:
    unit = make_fusion(kind, C, E)
    _perturb(unit, gen)
    h = torch.randn(2, C, 4, 4, 4, generator=gen, requires_grad=True)
    # One sample with text, one dropped: the learned null vector/token gets a gradient too.
    cond = _cond(gen, null=torch.tensor([False, True]))
    unit(h, cond).square().mean().backward()
    for name, p in unit.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_wrong_text_width_raises(gen: torch.Generator) -> None:
    h = torch.randn(1, C, 2, 2, 2, generator=gen)
    bad = TextCondition(
        torch.randn(1, L, E + 1), torch.ones(1, L, dtype=torch.bool), torch.randn(1, E + 1)
    )
    for kind in ("affine", "cross_attention"):
        with pytest.raises(ValueError, match="cond_dim"):
            make_fusion(kind, C, E)(h, bad)
    with pytest.raises(ValueError, match="one TextCondition row per image"):
        make_fusion("affine", C, E)(torch.randn(2, C, 2, 2, 2), bad)
