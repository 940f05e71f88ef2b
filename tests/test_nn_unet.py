"""The conditional 3D UNet: shapes, conditioning, init contract, validation, no dead weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unveil.conditioning import TextCondition
from unveil.config import ModelConfig
from unveil.errors import ConfigError
from unveil.nn.build import build_generator, count_parameters
from unveil.nn.fusion import AffineFusion, fusion_names, make_fusion
from unveil.nn.unet import ConditionalUNet

E, L, M = 12, 6, 3
CH = (8, 16)


@pytest.fixture
def gen() -> torch.Generator:
    torch.manual_seed(0)
    return torch.Generator().manual_seed(2)


def _cond(gen: torch.Generator, batch: int = 2, null=None) -> TextCondition:
    mask = torch.ones(batch, L, dtype=torch.bool)
    mask[0, -2:] = False
    return TextCondition(
        torch.randn(batch, L, E, generator=gen), mask, torch.randn(batch, E, generator=gen), null
    )


def _mask(gen: torch.Generator, batch: int = 2, size=(8, 8, 8)) -> torch.Tensor:
    labels = torch.randint(0, M, (batch, *size), generator=gen)
    return nn.functional.one_hot(labels, M).permute(0, 4, 1, 2, 3).float()


def _perturb(module: nn.Module, gen: torch.Generator, scale: float = 0.1) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def _unet(fusion="affine", with_time=True, **kw) -> ConditionalUNet:
    return ConditionalUNet(
        1, M, 1, channels=CH, fusion=fusion, cond_dim=E, with_time=with_time, **kw
    )


@pytest.mark.parametrize("with_time", [True, False])
@pytest.mark.parametrize("fusion", fusion_names())
def test_output_shapes(fusion: str, with_time: bool, gen: torch.Generator) -> None:
    net = _unet(fusion, with_time, fusion_levels=("bottleneck", "decoder"))
    mask = _mask(gen, size=(8, 16, 8))
    x = torch.randn(2, 1, 8, 16, 8, generator=gen) if with_time else None
    t = torch.tensor([0, 999]) if with_time else None
    out = net(x, mask, t, _cond(gen))
    assert out.shape == (2, 1, 8, 16, 8)
    assert torch.isfinite(out).all()
    if not with_time:
        assert out.abs().max() <= 1.0  # tanh: images live in [-1, 1]
    assert net.downsample_factor == 2


def test_gan_noise_input_and_diffusion_linear_output(gen: torch.Generator) -> None:
    g = _unet("cross_attention", with_time=False, noise_channels=1)
    mask = _mask(gen)
    a = g(torch.randn(2, 1, 8, 8, 8, generator=gen), mask, None, _cond(gen))
    b = g(torch.randn(2, 1, 8, 8, 8, generator=gen), mask, None, _cond(gen))
    assert a.shape == (2, 1, 8, 8, 8) and not torch.allclose(a, b)  # the noise is used
    d = ConditionalUNet(1, M, 2, channels=(8, 16, 16), fusion="none", with_time=True)
    _perturb(d, gen, 1.0)
    out = d(
        torch.randn(1, 1, 8, 8, 8, generator=gen) * 10, _mask(gen, 1), torch.tensor([5.5]), None
    )
    assert out.shape == (1, 2, 8, 8, 8) and out.abs().max() > 1.0  # linear, not squashed
    assert d.downsample_factor == 4


def test_time_is_used_and_broadcast(gen: torch.Generator) -> None:
    net = _unet("affine")
    _perturb(net, gen)
    x, mask, cond = torch.randn(2, 1, 8, 8, 8, generator=gen), _mask(gen), _cond(gen)
    a = net(x, mask, torch.tensor([10, 10]), cond)
    assert not torch.allclose(a, net(x, mask, torch.tensor([900, 900]), cond), atol=1e-4)
    torch.testing.assert_close(net(x, mask, torch.tensor([10.0]), cond), a)


def test_mask_is_used(gen: torch.Generator) -> None:
    net = _unet("none", with_time=False)
    mask = _mask(gen)
    assert not torch.allclose(net(None, mask), net(None, mask.flip(2)), atol=1e-4)


@pytest.mark.parametrize(
    "fusion", ["cross_attention", "affine+cross_attention", "affine", "concat", "adagn"]
)
def test_text_changes_the_output_and_null_equals_none(fusion: str, gen: torch.Generator) -> None:
    net = _unet(fusion, fusion_levels=("bottleneck", "decoder"))
    _perturb(net, gen)
    x, mask, t = torch.randn(2, 1, 8, 8, 8, generator=gen), _mask(gen), torch.tensor([3, 300])
    cond = _cond(gen)
    out = net(x, mask, t, cond)
    other = TextCondition(
        torch.randn(2, L, E, generator=gen), cond.mask, torch.randn(2, E, generator=gen), None
    )
    assert (net(x, mask, t, other) - out).norm() / out.norm() > 1e-2
    dropped = TextCondition(cond.tokens, cond.mask, cond.pooled, torch.tensor([True, True]))
    torch.testing.assert_close(net(x, mask, t, dropped), net(x, mask, t, None))


def test_fusion_none_ignores_text(gen: torch.Generator) -> None:
    net = _unet("none")
    _perturb(net, gen)
    x, mask, t = torch.randn(2, 1, 8, 8, 8, generator=gen), _mask(gen), torch.tensor([1, 2])
    torch.testing.assert_close(net(x, mask, t, _cond(gen)), net(x, mask, t, None))


@pytest.mark.parametrize("fusion", ["affine", "affine+cross_attention"])
def test_affine_identity_after_global_init_and_init_weights(
    fusion: str, gen: torch.Generator
) -> None:
    net = _unet(fusion, fusion_levels=("bottleneck", "decoder", "encoder"))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    units = [m for m in net.modules() if isinstance(m, AffineFusion)]
    assert len(units) == 3
    for u in units:
        u.register_forward_hook(lambda _m, inp, out: seen.append((inp[0], out)))

    def run() -> None:
        seen.clear()
        net(torch.randn(2, 1, 8, 8, 8, generator=gen), _mask(gen), torch.tensor([1, 2]), _cond(gen))

    run()
    assert len(seen) == 3 and all(torch.equal(i, o) for i, o in seen)

    def some_init(m: nn.Module) -> None:  # what the published code applied globally
        if isinstance(m, nn.Conv3d | nn.Linear | nn.ConvTranspose3d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.1)

    net.apply(some_init)
    run()
    assert not all(torch.equal(i, o) for i, o in seen)  # the global init breaks it ...
    net.init_weights()
    run()
    assert all(torch.equal(i, o) for i, o in seen)  # ... init_weights restores it


def test_init_weights_restores_zero_init_res_blocks(gen: torch.Generator) -> None:
    net = _unet("cross_attention")
    net.apply(lambda m: nn.init.ones_(m.weight) if isinstance(m, nn.Conv3d) else None)
    net.init_weights()
    zeros = [n for n, p in net.named_parameters() if n.endswith("conv2.weight")]
    assert zeros and all(net.get_parameter(n).abs().sum() == 0 for n in zeros)
    assert net.mid_fusion.to_out.weight.abs().sum() == 0


@pytest.mark.parametrize("fusion", ["affine+cross_attention", "adagn"])
@pytest.mark.parametrize("with_time", [True, False])
def test_every_parameter_gets_a_gradient(
    fusion: str, with_time: bool, gen: torch.Generator
) -> None:
    net = _unet(
        fusion,
        with_time,
        fusion_levels=("bottleneck", "decoder", "encoder"),
        noise_channels=0 if with_time else 1,
    )
    x = torch.randn(2, 1, 8, 8, 8, generator=gen)
    t = torch.tensor([4, 400]) if with_time else None
    # Sample 1 has its prompt dropped, so the learned null vectors are used too.
    cond = _cond(gen, null=torch.tensor([False, True]))
    # At init every parameter is wired into the graph (no dead weights) ...
    net(x, mask := _mask(gen), t, cond).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"
    # ... and once off the zero inits, every gradient is non-zero.
    net.zero_grad()
    _perturb(net, gen)
    net(x, mask, t, cond).square().mean().backward()
    zero = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not zero, f"parameters with zero gradient: {zero}"


def test_count_parameters_accounts_for_fusion_units() -> None:
    base = _unet("none")
    for kind in ("concat", "affine", "cross_attention", "affine+cross_attention"):
        fused = _unet(kind, fusion_levels=("bottleneck", "decoder"))
        unit_params = count_parameters(make_fusion(kind, CH[-1], E)) + count_parameters(
            make_fusion(kind, CH[0], E)
        )
        assert count_parameters(fused) - count_parameters(base) == unit_params
    n = count_parameters(base)
    assert n == sum(p.numel() for p in base.parameters()) and n > 10_000
    # adagn: a text MLP and null vector, plus one scale-shift projection per fused block.
    adagn = _unet("adagn", fusion_levels=("bottleneck",))
    td = 4 * CH[0]
    expected = (E * td + td) + (td * td + td) + E + 2 * (td * 2 * CH[-1] + 2 * CH[-1])
    assert count_parameters(adagn) - n == expected
    base.in_conv.weight.requires_grad_(False)
    assert count_parameters(base, trainable_only=True) == n - base.in_conv.weight.numel()


def test_bad_arguments_raise_one_sentence(gen: torch.Generator) -> None:
    with pytest.raises(ValueError, match="unknown fusion kind 'film'; use one of"):
        _unet("film")
    with pytest.raises(ValueError, match="divisible by heads"):
        ConditionalUNet(
            1, M, 1, channels=(8, 12), norm_groups=4, fusion="cross_attention", heads=8, cond_dim=E
        )
    with pytest.raises(ValueError, match="divisible by norm_groups"):
        ConditionalUNet(1, M, 1, channels=(8, 12), norm_groups=8, cond_dim=E)
    with pytest.raises(ValueError, match="unknown fusion level"):
        _unet("affine", fusion_levels=("middle",))
    with pytest.raises(ValueError, match="at least one of fusion_levels"):
        _unet("affine", fusion_levels=())
    with pytest.raises(ValueError, match="noise_channels"):
        _unet("affine", with_time=True, noise_channels=1)
    net = _unet("affine")
    with pytest.raises(ValueError, match="not divisible by the UNet downsampling factor 2"):
        net(torch.randn(1, 1, 8, 9, 8), _mask(gen, 1, (8, 9, 8)), torch.tensor([1]), None)
    with pytest.raises(ValueError, match="needs timesteps t"):
        net(torch.randn(1, 1, 8, 8, 8), _mask(gen, 1), None, None)
    with pytest.raises(ValueError, match=r"mask must be \(B, 3"):
        net(torch.randn(1, 1, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8), torch.tensor([1]), None)
    g = _unet("affine", with_time=False)
    with pytest.raises(ValueError, match="takes x=None"):
        g(torch.randn(1, 1, 8, 8, 8), _mask(gen, 1))
    with pytest.raises(ValueError, match="pass t=None"):
        g(None, _mask(gen, 1), torch.tensor([1]))


def test_build_generator_from_config(gen: torch.Generator) -> None:
    diff = build_generator(ModelConfig(channels=(8, 16), fusion="cross_attention"), 1, M, E)
    assert diff.with_time and diff.x_channels == 1 and diff.out_activation == "linear"
    assert diff.fusion_kind == "cross_attention" and diff.fusion_levels == ("bottleneck",)
    gan_cfg = ModelConfig(
        family="gan", channels=(8, 16), noise_input=True, fusion_levels=["decoder"]
    )
    g = build_generator(gan_cfg, 1, M, E)
    assert not g.with_time and g.noise_channels == 1 and g.out_activation == "tanh"
    assert g(torch.randn(1, 1, 8, 8, 8), _mask(gen, 1), None, None).shape == (1, 1, 8, 8, 8)
    with pytest.raises(ConfigError, match="model.noise_input"):
        build_generator(ModelConfig(noise_input=True), 1, M, E)
