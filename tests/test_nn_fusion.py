"""Fusion units: shapes, identity at init, null handling, and that the text is really used."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unveil.conditioning import TextCondition
from unveil.nn.fusion import (
    AffineCrossAttentionFusion,
    AffineFusion,
    ConcatFusion,
    CrossAttentionFusion,
    NoFusion,
    fusion_names,
    fusion_spec,
    make_fusion,
)

#: The kinds that make_fusion builds as a separate unit (``none`` is a pass-through).
UNIT_KINDS = tuple(k for k in fusion_names() if fusion_spec(k).placement in ("none", "unit"))

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


@pytest.mark.parametrize("kind", UNIT_KINDS)
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


# ------------------------------------------------------------------ the fusion registry


def _tiny_unet(fusion: str, with_time: bool = True, **kw):
    from unveil.nn.unet import ConditionalUNet

    return ConditionalUNet(
        1, 3, 1, channels=(8, 16), fusion=fusion, cond_dim=E, with_time=with_time, **kw
    )


def _mask(gen: torch.Generator, batch: int = 2) -> torch.Tensor:
    labels = torch.randint(0, 3, (batch, 4, 4, 4), generator=gen)
    return nn.functional.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float()


def _unet_forward(net, gen: torch.Generator, cond: TextCondition | None) -> torch.Tensor:
    x = torch.randn(2, 1, 4, 4, 4, generator=gen) if net.with_time else None
    t = torch.tensor([1, 900]) if net.with_time else None
    return net(x, _mask(gen), t, cond)


@pytest.mark.parametrize("with_time", [True, False])
@pytest.mark.parametrize("kind", fusion_names())
def test_every_registry_entry_builds_and_runs_in_a_tiny_unet(
    kind: str, with_time: bool, gen: torch.Generator
) -> None:
    spec = fusion_spec(kind)
    net = _tiny_unet(kind, with_time, fusion_levels=("bottleneck", "decoder"))
    fusion_params = [n for n, _ in net.named_parameters() if "fusion" in n or "text_" in n]
    if spec.placement == "none":
        assert not fusion_params and net.fusion_levels == ()
    elif spec.placement == "unit":
        assert net.mid_fusion is not None and net.decoder[0].fusion is not None
        assert net.encoder[0].fusion is None and net.text_mlp is None
    else:  # norm: inside the residual blocks of the fused levels
        assert net.mid_fusion is None and net.text_mlp is not None
        assert net.mid_in.text_proj is not None and net.encoder[0].blocks[0].text_proj is None
    for cond in (_cond(gen), _cond(gen, null=torch.tensor([True, False])), None):
        out = _unet_forward(net, gen, cond)
        assert out.shape == (2, 1, 4, 4, 4)
        assert torch.isfinite(out).all()


def test_registry_lists_the_published_kinds_with_their_names() -> None:
    from unveil.nn.fusion import FUSIONS, FusionSpec

    assert fusion_names()[:6] == (
        "none",
        "concat",
        "affine",
        "cross_attention",
        "affine+cross_attention",
        "adagn",
    )
    for name, spec in FUSIONS.items():
        assert isinstance(spec, FusionSpec) and spec.name == name
        assert spec.display and spec.description and "\n" not in spec.description
    assert fusion_spec("none").display == "mask-only" and not fusion_spec("none").uses_text
    assert fusion_spec("adagn").placement == "norm"
    assert [k for k in fusion_names() if fusion_spec(k).needs_heads] == [
        "cross_attention",
        "affine+cross_attention",
    ]
    # The lazily named factories are the classes of this module.
    assert isinstance(make_fusion("concat", C, E), ConcatFusion)
    with pytest.raises(ValueError, match="'adagn' is not a separate unit"):
        make_fusion("adagn", C, E)


def test_registry_refuses_bad_specs_and_duplicates() -> None:
    from unveil.nn.fusion import FusionSpec, register_fusion

    with pytest.raises(ValueError, match="already registered"):
        register_fusion(FusionSpec("affine", "affine", "again", "unit", factory=AffineFusion))
    with pytest.raises(ValueError, match="placement must be one of"):
        FusionSpec("x", "x", "x", "sideways", factory=AffineFusion)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a factory"):
        FusionSpec("x", "x", "x", "unit")
    with pytest.raises(ValueError, match="block_factory goes with placement 'norm'"):
        FusionSpec("x", "x", "x", "norm", factory=nn.Identity)
    with pytest.raises(ValueError, match="unknown fusion kind 'film'; use one of: 'none'"):
        fusion_spec("film")


def test_config_refuses_an_unknown_fusion_naming_the_registered_ones() -> None:
    from unveil.config import load_config
    from unveil.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(overrides=["model.fusion=film"])
    msg = str(info.value)
    assert "model.fusion" in msg and "'film'" in msg and "\n" not in msg
    for name in fusion_names():
        assert f"'{name}'" in msg


def test_display_names_come_from_the_registry() -> None:
    from unveil.metrics.evaluate import FUSION_NAMES, variant_name

    assert dict(FUSION_NAMES) == {k: fusion_spec(k).display for k in fusion_names()}
    assert variant_name("gan", "none") == "GAN mask-only"
    assert variant_name("diffusion", "cross_attention") == "diffusion cross-attention"
    assert variant_name("diffusion", "adagn") == "diffusion AdaGN"
    assert variant_name("gan", "unregistered") == "GAN unregistered"


def test_config_module_does_not_import_torch() -> None:
    """The registry is torch-free so that reading a config stays light (``unveil --help``)."""
    import subprocess
    import sys

    code = "import sys, unveil.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


class _ToyGate(nn.Module):
    """A toy ``unit`` fusion: ``h * (1 + tanh(W pooled))`` per channel, identity at init."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(cond_dim, channels)
        self.null_pooled = nn.Parameter(torch.zeros(cond_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, h: torch.Tensor, cond: TextCondition | None = None) -> torch.Tensor:
        from unveil.nn.fusion import pooled_or_null

        g = torch.tanh(self.gate(pooled_or_null(cond, self.null_pooled, h.shape[0], h)))
        return h * (1 + g[:, :, None, None, None])


class _ToyBias(nn.Module):
    """A toy ``norm`` block: adds a per-channel bias from the text embedding."""

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, channels)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.proj(emb)[:, :, None, None, None]


@pytest.fixture
def toy_fusions():
    """Register two toy kinds (one unit, one norm) for the test, and remove them after."""
    from unveil.nn.fusion import FUSIONS, FusionSpec, register_fusion

    specs = [
        FusionSpec("toy_gate", "toy gate", "a per-channel gate", "unit", factory=_ToyGate),
        FusionSpec(
            "toy_bias",
            "toy bias",
            "a bias in every block",
            "norm",
            factory=nn.Linear,
            block_factory=_ToyBias,
        ),
    ]
    for spec in specs:
        register_fusion(spec)
    try:
        yield specs
    finally:
        for spec in specs:
            FUSIONS.pop(spec.name, None)


def test_a_registered_fusion_is_accepted_built_and_named_without_other_edits(
    toy_fusions, gen: torch.Generator
) -> None:
    from unveil.config import load_config
    from unveil.metrics.evaluate import variant_name
    from unveil.nn.build import build_generator

    for spec in toy_fusions:
        cfg = load_config(
            overrides=[f"model.fusion={spec.name}", "model.channels=[8, 16]"]
        )  # config validation reads the registry
        assert cfg.model.fusion == spec.name
        net = build_generator(cfg.model, 1, 3, E)
        assert net.fusion_kind == spec.name
        if spec.placement == "unit":
            assert isinstance(net.mid_fusion, _ToyGate)
        else:
            assert isinstance(net.text_mlp, nn.Linear)
            assert isinstance(net.mid_in.text_proj, _ToyBias)
            assert isinstance(net.mid_out.text_proj, _ToyBias)
        _perturb(net, gen, 0.1)
        cond = _cond(gen)
        out = _unet_forward(net, torch.Generator().manual_seed(3), cond)
        other = TextCondition(cond.tokens, cond.mask, cond.pooled + 1.0, None)
        moved = _unet_forward(net, torch.Generator().manual_seed(3), other)
        assert out.shape == (2, 1, 4, 4, 4) and not torch.allclose(out, moved)
        assert variant_name("diffusion", spec.name) == f"diffusion {spec.display}"
    # A registered unit also goes through make_fusion.
    assert isinstance(make_fusion("toy_gate", C, E), _ToyGate)


def test_an_unregistered_toy_is_refused_again(toy_fusions) -> None:
    from unveil.config import load_config
    from unveil.errors import ConfigError
    from unveil.nn.fusion import FUSIONS

    assert load_config(overrides=["model.fusion=toy_gate"]).model.fusion == "toy_gate"
    FUSIONS.pop("toy_gate")
    with pytest.raises(ConfigError, match="registered fusion kinds"):
        load_config(overrides=["model.fusion=toy_gate"])
    with pytest.raises(ValueError, match="unknown fusion kind 'toy_gate'"):
        _tiny_unet("toy_gate")


def test_needs_heads_of_a_registered_kind_is_checked_by_config_and_unet(toy_fusions) -> None:
    from unveil.config import config_from_dict
    from unveil.errors import ConfigError
    from unveil.nn.fusion import FusionSpec, register_fusion

    class _HeadsToy(_ToyGate):
        def __init__(self, channels: int, cond_dim: int, heads: int) -> None:
            super().__init__(channels, cond_dim)
            self.heads = heads

    register_fusion(FusionSpec("toy_heads", "toy heads", "x", "unit", _HeadsToy, needs_heads=True))
    try:
        model = {"fusion": "toy_heads", "channels": [8, 12], "heads": 8, "norm_groups": 4}
        with pytest.raises(ConfigError, match="divisible by model.heads"):
            config_from_dict({"model": model})
        with pytest.raises(ValueError, match="divisible by heads"):
            _tiny_unet("toy_heads", heads=3)
        assert _tiny_unet("toy_heads", heads=4).mid_fusion.heads == 4
    finally:
        from unveil.nn.fusion import FUSIONS

        FUSIONS.pop("toy_heads", None)
