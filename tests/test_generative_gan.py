"""GAN objective: textbook loss values, which network each half updates, optimisers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unveil.conditioning import TextCondition
from unveil.config import GanConfig
from unveil.generative.gan import (
    GanProcess,
    make_gan_optimizers,
    masked_block_means,
    pearson_correlation,
)

SHAPE = (2, 1, 8, 8, 8)


class TinyGenerator(nn.Module):
    """Stand-in for the GAN UNet: (noise | None, mask, t=None, cond) -> tanh image."""

    def __init__(self, noise_channels: int = 1, m: int = 2, e: int = 6) -> None:
        super().__init__()
        self.noise_channels = noise_channels
        self.conv1 = nn.Conv3d(noise_channels + m, 4, 3, padding=1)
        self.text = nn.Linear(e, 4)
        self.conv2 = nn.Conv3d(4, 1, 3, padding=1)

    def forward(self, x, mask, t, cond):
        assert t is None
        h = mask if x is None else torch.cat([x, mask], 1)
        h = torch.relu(self.conv1(h))
        if cond is not None:
            h = h + self.text(cond.pooled)[..., None, None, None]
        return torch.tanh(self.conv2(h))


class TinyDisc(nn.Module):
    """Stand-in PatchGAN: (image, mask, cond) -> (B, 1, 4, 4, 4) logits."""

    def __init__(self, m: int = 2, e: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1 + m, 4, 4, stride=2, padding=1)
        self.text = nn.Linear(e, 4)
        self.conv2 = nn.Conv3d(4, 1, 3, padding=1)
        self.seen_cond = []

    def forward(self, image, mask, cond):
        self.seen_cond.append(cond)
        h = nn.functional.leaky_relu(self.conv1(torch.cat([image, mask], 1)), 0.2)
        if cond is not None:
            h = h + self.text(cond.pooled)[..., None, None, None]
        return self.conv2(h)


class ConstDisc(nn.Module):
    """Outputs ``on_real`` for the real tensor (by identity) and ``on_fake`` otherwise."""

    def __init__(self, real: torch.Tensor, on_real: float, on_fake: float) -> None:
        super().__init__()
        self.real, self.on_real, self.on_fake = real, on_real, on_fake
        self.w = nn.Parameter(torch.zeros(()))  # so the fake keeps a graph to G

    def forward(self, image, mask, cond):
        value = self.on_real if image is self.real else self.on_fake
        return torch.full((image.shape[0], 1, 2, 2, 2), value) + 0 * self.w + 0 * image.mean()


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    real = torch.rand(SHAPE, generator=g) * 2 - 1
    mask = torch.zeros(2, 2, 8, 8, 8)
    mask[:, 1, 2:6, 2:6, 2:6] = 1
    mask[:, 0] = 1 - mask[:, 1]
    cond = TextCondition(
        tokens=torch.randn(2, 3, 6, generator=g),
        mask=torch.ones(2, 3, dtype=torch.bool),
        pooled=torch.randn(2, 6, generator=g),
    )
    noise = torch.randn(SHAPE, generator=g)
    return real, mask, cond, noise


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _changed(a: dict, b: dict) -> bool:
    # "any", not "all": under the hinge loss the text bias of the stand-in D gets equal and
    # opposite gradients from the real and the fake term, so it legitimately stays put.
    return any(not torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ textbook values


@pytest.mark.parametrize(
    ("loss", "on_real", "on_fake", "d_want", "g_adv_want"),
    [
        ("lsgan", 1.0, 0.0, 0.0, 1.0),  # perfect D: zero loss; G is 1 away from "real"
        ("lsgan", 1.0, -1.0, 0.5, 4.0),
        ("lsgan", 0.0, 0.0, 0.5, 1.0),
        ("hinge", 1.0, -1.0, 0.0, 1.0),  # margins met exactly
        ("hinge", 0.0, 0.0, 2.0, 0.0),
        ("hinge", 2.0, 1.0, 2.0, -1.0),
    ],
)
def test_losses_on_known_logits(loss, on_real, on_fake, d_want, g_adv_want):
    proc = GanProcess(GanConfig(loss=loss, l1_weight=0.0))
    real, mask, cond, noise = _batch()
    disc = ConstDisc(real, on_real, on_fake)
    gen = TinyGenerator()
    d_loss, d_logs = proc.discriminator_loss(gen, disc, real, mask, cond, noise)
    assert d_loss.item() == pytest.approx(d_want)
    assert d_logs["d_real"] == pytest.approx(on_real) and d_logs["d_fake"] == pytest.approx(on_fake)
    g_loss, g_logs = proc.generator_loss(gen, disc, real, mask, cond, noise)
    assert g_loss.item() == pytest.approx(g_adv_want)
    assert g_logs["g_adv"] == pytest.approx(g_adv_want)
    # the logit functions agree with the networks' path
    r = torch.full((2, 1, 2, 2, 2), on_real)
    f = torch.full((2, 1, 2, 2, 2), on_fake)
    assert proc.d_loss_from_logits(r, f).item() == pytest.approx(d_want)
    assert proc.g_adv_loss_from_logits(f).item() == pytest.approx(g_adv_want)


def test_pearson_correlation():
    a = torch.randn(3, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pearson_correlation(a, 2 * a + 3), torch.ones(3))
    torch.testing.assert_close(pearson_correlation(a, -a), -torch.ones(3))
    b = torch.randn(3, 1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    want = torch.stack(
        [torch.corrcoef(torch.stack([a[i].flatten(), b[i].flatten()]))[0, 1] for i in range(3)]
    )
    torch.testing.assert_close(pearson_correlation(a, b), want)


def test_generator_loss_adds_l1_and_correlation_terms():
    real, mask, cond, noise = _batch()
    gen = TinyGenerator()
    disc = ConstDisc(real, 1.0, 0.5)
    proc = GanProcess(GanConfig(loss="lsgan", l1_weight=10.0, corr_weight=3.0))
    loss, logs = proc.generator_loss(gen, disc, real, mask, cond, noise)
    with torch.no_grad():
        fake = gen(noise, mask, None, cond)
    l1 = (fake - real).abs().mean()
    corr = (1 - pearson_correlation(fake, real)).mean()
    want = 0.25 + 10.0 * l1 + 3.0 * corr  # lsgan adversarial (0.5 - 1)^2 = 0.25
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert logs["g_l1"] == pytest.approx(l1.item(), rel=1e-5)
    assert logs["g_corr"] == pytest.approx(corr.item(), rel=1e-5)
    assert fake.abs().max() <= 1.0
    assert "g_corr" not in GanProcess(GanConfig()).g_loss_on(disc, real, fake, mask, cond)[1]


def test_discriminator_sees_text_only_when_configured():
    real, mask, cond, noise = _batch()
    gen, disc = TinyGenerator(), TinyDisc()
    GanProcess(GanConfig(disc_text=True)).discriminator_loss(gen, disc, real, mask, cond, noise)
    assert all(c is cond for c in disc.seen_cond)
    disc.seen_cond.clear()
    GanProcess(GanConfig(disc_text=False)).discriminator_loss(gen, disc, real, mask, cond, noise)
    assert disc.seen_cond and all(c is None for c in disc.seen_cond)


def test_discriminator_loss_builds_no_generator_graph():
    real, mask, cond, noise = _batch()
    gen, disc = TinyGenerator(), TinyDisc()
    loss, _ = GanProcess(GanConfig()).discriminator_loss(gen, disc, real, mask, cond, noise)
    loss.backward()
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is not None for p in disc.parameters())


def test_generator_without_noise_input():
    real, mask, cond, _ = _batch()
    gen = TinyGenerator(noise_channels=0)
    fake = GanProcess(GanConfig()).generate(gen, mask, cond)
    assert fake.shape == SHAPE


# ------------------------------------------------------------------ the two halves


class SpyAdam(torch.optim.Adam):
    """Adam that records both networks right after each of its steps."""

    def __init__(self, params, nets, log, name, **kw):
        super().__init__(params, **kw)
        self.nets, self.log, self.name = nets, log, name

    def step(self, closure=None):
        out = super().step(closure)
        g, d = self.nets
        self.log.append(
            (
                self.name,
                _snapshot(g),
                _snapshot(d),
                [None if p.grad is None else p.grad.clone() for p in d.parameters()],
            )
        )
        return out


@pytest.mark.parametrize("loss", ["lsgan", "hinge"])
def test_train_step_updates_each_network_in_its_own_half(loss):
    torch.manual_seed(0)
    real, mask, cond, noise = _batch()
    gen, disc = TinyGenerator(), TinyDisc()
    cfg = GanConfig(loss=loss, corr_weight=1.0)
    log: list = []
    opt_g = SpyAdam(gen.parameters(), (gen, disc), log, "g", lr=cfg.lr_g, betas=cfg.betas)
    opt_d = SpyAdam(disc.parameters(), (gen, disc), log, "d", lr=cfg.lr_d, betas=cfg.betas)
    g0, d0 = _snapshot(gen), _snapshot(disc)

    logs = GanProcess(cfg).train_step(gen, disc, opt_g, opt_d, real, mask, cond, noise)

    assert [entry[0] for entry in log] == ["d", "g"]  # D first, then G
    _, g_after_d, d_after_d, d_grads_after_d = log[0]
    _, g_after_g, d_after_g, d_grads_after_g = log[1]
    assert _same(g_after_d, g0) and _changed(d_after_d, d0)  # D half: only D moved
    assert _same(d_after_g, d_after_d) and _changed(g_after_g, g0)  # G half: only G
    for a, b in zip(d_grads_after_d, d_grads_after_g, strict=True):
        assert torch.equal(a, b)  # the generator loss added nothing to D's gradients
    assert all(p.requires_grad for p in disc.parameters())  # flags restored
    assert {"d_loss", "d_real", "d_fake", "g_loss", "g_adv", "g_l1", "g_corr"} <= logs.keys()
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())


def test_no_adversarial_term_leaves_the_discriminator_idle():
    torch.manual_seed(0)
    real, mask, cond, noise = _batch()
    gen, disc = TinyGenerator(), TinyDisc()
    cfg = GanConfig(adv_weight=0.0, lowpass_weight=10.0, lowpass_size=2)
    log: list = []
    opt_g = SpyAdam(gen.parameters(), (gen, disc), log, "g", lr=cfg.lr_g, betas=cfg.betas)
    opt_d = SpyAdam(disc.parameters(), (gen, disc), log, "d", lr=cfg.lr_d, betas=cfg.betas)
    g0, d0 = _snapshot(gen), _snapshot(disc)
    logs = GanProcess(cfg).train_step(gen, disc, opt_g, opt_d, real, mask, cond, noise)
    assert [entry[0] for entry in log] == ["g"]
    assert _same(_snapshot(disc), d0) and _changed(_snapshot(gen), g0)
    assert "d_loss" not in logs and "g_adv" not in logs and {"g_l1", "g_lowpass"} <= logs.keys()


def test_make_gan_optimizers_two_time_scales():
    gen, disc = TinyGenerator(), TinyDisc()
    gen.text.weight.requires_grad_(False)
    cfg = GanConfig(lr_g=1e-4, lr_d=4e-4, betas=(0.5, 0.99))
    opt_g, opt_d = make_gan_optimizers(gen, disc, cfg)
    assert opt_g.param_groups[0]["lr"] == 1e-4 and opt_d.param_groups[0]["lr"] == 4e-4
    assert opt_g.param_groups[0]["betas"] == (0.5, 0.99)
    ids = {id(p) for p in opt_g.param_groups[0]["params"]}
    assert id(gen.text.weight) not in ids and id(gen.conv1.weight) in ids
    assert len(opt_d.param_groups[0]["params"]) == len(list(disc.parameters()))


def test_mask_weighted_l1_weighs_labelled_voxels():
    import torch

    from unveil.config import GanConfig
    from unveil.generative.gan import GanProcess

    real = torch.zeros(1, 1, 4, 4, 4)
    fake = torch.zeros(1, 1, 4, 4, 4)
    mask = torch.zeros(1, 2, 4, 4, 4)
    mask[:, 0, :2] = 1.0  # half the voxels labelled
    fake[:, :, :2] = 1.0  # error only inside the mask

    class D(torch.nn.Module):
        def forward(self, image, mask, cond=None):
            return torch.ones(image.shape[0], 1, 1, 1, 1)

    plain = GanProcess(GanConfig(l1_weight=1.0)).g_loss_on(D(), real, fake, mask, None)[1]["g_l1"]
    weighted = GanProcess(GanConfig(l1_weight=1.0, l1_mask_weight=3.0)).g_loss_on(
        D(), real, fake, mask, None
    )[1]["g_l1"]
    assert plain == 0.5
    # weights 4 inside (32 voxels) and 1 outside (32): (4 * 32) / (4 * 32 + 32) = 0.8
    assert abs(weighted - 0.8) < 1e-6


def test_block_means_weighted_and_partial_blocks():
    x = torch.arange(2 * 1 * 6 * 4 * 4, dtype=torch.float32).reshape(2, 1, 6, 4, 4)
    w = (torch.rand(2, 1, 6, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.4).float()
    w[0, 0, 4:, 2:, :2] = 0.0  # one partial border block with no weight at all
    means, bw = masked_block_means(x, w, 4)
    assert means.shape == bw.shape == (2, 1, 2, 1, 1)
    for b in range(2):
        for i, sl in enumerate((slice(0, 4), slice(4, 6))):
            xs, ws = x[b, 0, sl], w[b, 0, sl]
            want = (xs * ws).sum() / ws.sum()
            assert torch.isclose(means[b, 0, i, 0, 0], want)
    # A block without weight has mean 0 and weight 0.
    empty = torch.zeros(1, 1, 4, 4, 4)
    m, bw = masked_block_means(torch.ones(1, 1, 4, 4, 4), empty, 4)
    assert float(m) == 0.0 and float(bw) == 0.0


def test_lowpass_term_sees_regional_shift_not_block_texture():
    class D(nn.Module):
        def forward(self, image, mask, cond=None):
            return torch.ones(image.shape[0], 1, 1, 1, 1)

    real = torch.zeros(1, 1, 8, 8, 8)
    mask = torch.zeros(1, 1, 8, 8, 8)
    mask[:, :, :4] = 1.0  # the labelled half: four of the eight 4^3 blocks
    # Zero-mean texture inside every 4^3 block: the block means are unchanged.
    checker = torch.arange(8)[:, None, None] + torch.arange(8)[None, :, None] + torch.arange(8)
    texture = (checker % 2).float().mul(2).sub(1).view(1, 1, 8, 8, 8) * 0.5
    gan = GanProcess(GanConfig(l1_weight=1.0, lowpass_weight=10.0, lowpass_size=4))
    loss, logs = gan.g_loss_on(D(), real, real + texture, mask, None)
    assert abs(logs["g_lowpass"]) < 1e-7 and abs(logs["g_l1"] - 0.5) < 1e-6
    # A shift of 0.2 inside the labelled blocks only (the outside is not scored).
    shifted = real + 0.2 * mask + 0.7 * (1 - mask)
    loss, logs = gan.g_loss_on(D(), real, shifted, mask, None)
    assert abs(logs["g_lowpass"] - 0.2) < 1e-6
    assert abs(float(loss) - (0.0 + 1.0 * logs["g_l1"] + 10.0 * 0.2)) < 1e-5


def test_adv_weight_scales_the_adversarial_term():
    class D(nn.Module):
        def forward(self, image, mask, cond=None):
            return torch.zeros(image.shape[0], 1, 1, 1, 1)  # lsgan g_adv = (0 - 1)^2 = 1

    real, fake = torch.zeros(1, 1, 4, 4, 4), torch.ones(1, 1, 4, 4, 4)
    mask = torch.ones(1, 1, 4, 4, 4)
    for w in (0.0, 1.0, 2.5):
        loss, logs = GanProcess(GanConfig(l1_weight=3.0, adv_weight=w)).g_loss_on(
            D(), real, fake, mask, None
        )
        assert logs.get("g_adv") == (1.0 if w > 0 else None)  # not evaluated at weight 0
        assert abs(float(loss) - (w * 1.0 + 3.0 * 1.0)) < 1e-6
