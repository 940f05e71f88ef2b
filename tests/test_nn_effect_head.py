"""The regional effect head: identity at start, label-gated, piecewise linear in height."""

from __future__ import annotations

import pytest
import torch

from unveil.conditioning import TextCondition
from unveil.nn.unet import ConditionalUNet, RegionalEffectHead


def _mask(b: int = 2, size: int = 8) -> torch.Tensor:
    """Two labels (lung in the lower half of x, airway in the top rows) and a height channel."""
    m = torch.zeros(b, 3, size, size, size)
    m[:, 0, : size // 2] = 1.0  # lung
    m[:, 1, size // 2 :, :2] = 1.0  # airway
    m[:, 2] = torch.linspace(-1.0, 1.0, size).view(1, 1, 1, size)  # height along the last axis
    return m


def _cond(b: int = 2, e: int = 6, seed: int = 0) -> TextCondition:
    g = torch.Generator().manual_seed(seed)
    return TextCondition(
        torch.randn(b, 3, e, generator=g),
        torch.ones(b, 3, dtype=torch.bool),
        torch.randn(b, e, generator=g),
    )


def test_head_starts_at_zero_and_stays_inside_its_labels():
    head = RegionalEffectHead(
        cond_dim=6, mask_channels=3, height_channel=2, knots=4, out_channels=1
    )
    mask, cond = _mask(), _cond()
    assert torch.count_nonzero(head(mask, cond)) == 0  # identity at initialisation
    torch.nn.init.normal_(head.effect_mlp[-1].weight)
    out = head(mask, cond)
    assert out.shape == (2, 1, 8, 8, 8)
    outside = mask[:, :2].sum(1, keepdim=True) == 0
    assert torch.count_nonzero(out[outside]) == 0  # nothing outside the labelled structures
    assert torch.count_nonzero(out[:, :, :4]) > 0
    # piecewise linear in the height: second differences vanish inside each knot interval
    prof = out[0, 0, 0, 4].double()  # one lung line along the height axis
    height = mask[0, 2, 0, 4]
    knots = torch.linspace(-1.0, 1.0, 4)
    checked = 0
    for lo, hi in zip(knots[:-1], knots[1:], strict=True):
        seg = prof[((height >= lo) & (height <= hi)).nonzero().flatten()]
        if seg.numel() >= 3:
            second = seg[2:] - 2 * seg[1:-1] + seg[:-2]
            torch.testing.assert_close(second, torch.zeros_like(second), atol=1e-5, rtol=0)
            checked += 1
    assert checked >= 2


def test_head_gives_each_label_its_own_shift_and_follows_the_knots():
    head = RegionalEffectHead(
        cond_dim=6, mask_channels=3, height_channel=2, knots=2, out_channels=1
    )
    with torch.no_grad():
        head.effect_mlp[-1].bias.copy_(
            torch.tensor([1.0, 3.0, -2.0, -2.0])
        )  # lung (a0, a1), airway
    out = head(_mask(), _cond())
    lung = out[0, 0, 0, 4]  # height -1 .. +1: linear from 1 to 3
    torch.testing.assert_close(lung, torch.linspace(1.0, 3.0, 8))
    torch.testing.assert_close(out[0, 0, 6, 0], torch.full((8,), -2.0))  # airway constant


def test_unet_with_head_rebuilds_from_its_settings_and_refuses_bad_settings():
    settings = dict(
        channels=(8, 16),
        norm_groups=4,
        fusion="concat",
        cond_dim=6,
        with_time=False,
        effect_knots=4,
        height_channel=2,
    )
    net = ConditionalUNet(1, 3, 1, **settings)
    twin = ConditionalUNet(1, 3, 1, **settings)
    twin.load_state_dict(net.state_dict())
    with torch.no_grad():
        a = net(None, _mask(), None, _cond())
        b = twin(None, _mask(), None, _cond())
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="knots"):
        RegionalEffectHead(6, 3, 2, 1, 1)
    from unveil.config import ModelConfig

    with pytest.raises(ValueError, match="effect_knots"):
        ModelConfig(effect_knots=1)


def test_head_with_depth_is_bilinear_in_height_and_depth():
    mask = torch.cat([_mask(), torch.zeros(2, 1, 8, 8, 8)], dim=1)
    mask[:, 3] = torch.linspace(-1.0, 1.0, 8).view(1, 1, 8, 1)  # depth along the third axis
    head = RegionalEffectHead(6, 4, height_channel=2, knots=2, out_channels=1, depth_channel=3)
    with (
        torch.no_grad()
    ):  # lung: a(h, d) with corners (h-, d-)=0, (h-, d+)=0, (h+, d-)=4, (h+, d+)=0
        head.effect_mlp[-1].bias.copy_(torch.tensor([0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    out = head(mask, _cond())[0, 0, 0]  # lung plane: (depth, height)
    assert float(out[0, -1]) == pytest.approx(4.0)  # surface, apex
    assert float(out[-1, -1]) == pytest.approx(0.0)  # deep, apex
    assert float(out[0, 0]) == pytest.approx(0.0)  # surface, base


def test_lung_depth_is_minus_one_at_the_surface_and_one_at_the_centre():
    import numpy as np

    from unveil.config import DataConfig
    from unveil.data.regions import lung_depth

    labels = np.zeros((9, 9, 9), dtype=np.int32)
    labels[1:8, 1:8, 1:8] = 1
    d = lung_depth(labels, np.eye(4), DataConfig())
    assert d[0, 0, 0] == -1.0 and d[4, 4, 4] == pytest.approx(1.0)
    assert d[1, 4, 4] < d[2, 4, 4] < d[3, 4, 4] < d[4, 4, 4]
