"""Diffusion process: losses, targets, samplers, guidance, inversion (CPU, tiny, analytic toys).

Two toy data sets have a known optimal denoiser, so the samplers can be checked against
exact answers rather than "it runs":

* a single image ``c``: the optimal x0-estimate is ``c`` at every level, so any correct
  sampler returns ``c`` exactly;
* i.i.d. Gaussian voxels ``N(mu, s^2)``: the posterior mean is linear, and the probability
  flow ODE has the closed-form solution ``x_t = m_t + sd_t * (x0 - mu) / s``; DDIM, RFlow
  and the inversions must approach it as the number of steps grows.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unveil.conditioning import TextCondition
from unveil.config import DiffusionConfig
from unveil.errors import ConfigError
from unveil.generative.diffusion import (
    DenoisingProcess,
    DiffusionProcess,
    null_condition,
)
from unveil.generative.rflow import RFlowProcess

SHAPE = (2, 1, 8, 8, 8)
MU, SD = 0.1, 0.25


class TinyNet(nn.Module):
    """Stand-in for the conditional UNet: uses x, mask, t and cond.pooled / cond.null."""

    def __init__(self, c: int = 1, m: int = 2, e: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c + m, 4, 3, padding=1)
        self.temb = nn.Linear(1, 4)
        self.text = nn.Linear(e, 4)
        self.null = nn.Parameter(torch.randn(e))
        self.conv2 = nn.Conv3d(4, c, 3, padding=1)
        self.calls = 0

    def forward(self, x, mask, t, cond):
        self.calls += 1
        h = self.conv1(torch.cat([x, mask.to(x.dtype)], 1))
        h = h + self.temb(t.float()[:, None] / 1000.0)[..., None, None, None]
        if cond is not None:
            pooled = cond.pooled
            if cond.null is not None:
                pooled = torch.where(cond.null[:, None], self.null.expand_as(pooled), pooled)
            h = h + self.text(pooled)[..., None, None, None]
        return self.conv2(torch.tanh(h))


def _cond(b: int = 2, e: int = 6, seed: int = 0) -> TextCondition:
    g = torch.Generator().manual_seed(seed)
    return TextCondition(
        tokens=torch.randn(b, 3, e, generator=g),
        mask=torch.ones(b, 3, dtype=torch.bool),
        pooled=torch.randn(b, e, generator=g),
    )


def _mask(b: int = 2) -> torch.Tensor:
    m = torch.zeros(b, 2, 8, 8, 8)
    m[:, 1, 2:6, 2:6, 2:6] = 1
    m[:, 0] = 1 - m[:, 1]
    return m


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------ analytic denoisers


def point_denoiser(proc: DenoisingProcess, c: torch.Tensor):
    """Optimal prediction when the data set is the single image ``c``."""
    if proc.cfg.process == "rflow":
        t_max = proc.num_timesteps

        def velocity(x, t):
            tau = (t.to(x.dtype) / t_max).view(-1, 1, 1, 1, 1)
            return (c - x) / tau  # x = (1 - tau) c + tau eps  ->  v = c - eps

        return velocity
    ac = proc.alphas_cumprod

    def pred(x, t):
        a = ac[t].to(x.dtype).view(-1, 1, 1, 1, 1)
        eps = (x - a.sqrt() * c) / (1 - a).sqrt()
        if proc.cfg.prediction == "sample":
            return c.expand_as(x)
        if proc.cfg.prediction == "epsilon":
            return eps
        return a.sqrt() * eps - (1 - a).sqrt() * c

    return pred


def gaussian_denoiser(proc: DenoisingProcess, mu: float = MU, s: float = SD):
    """Optimal prediction for i.i.d. ``N(mu, s^2)`` voxels (posterior mean is linear)."""
    if proc.cfg.process == "rflow":
        t_max = proc.num_timesteps

        def velocity(x, t):
            tau = (t.to(x.dtype) / t_max).view(-1, 1, 1, 1, 1)
            var = (1 - tau) ** 2 * s * s + tau**2
            r = x - (1 - tau) * mu
            return mu + (1 - tau) * s * s / var * r - tau / var * r  # E[x0|x] - E[eps|x]

        return velocity
    ac = proc.alphas_cumprod

    def pred(x, t):
        a = ac[t].to(x.dtype).view(-1, 1, 1, 1, 1)
        x0_hat = mu + a.sqrt() * s * s / (a * s * s + 1 - a) * (x - a.sqrt() * mu)
        eps = (x - a.sqrt() * x0_hat) / (1 - a).sqrt()
        if proc.cfg.prediction == "sample":
            return x0_hat
        if proc.cfg.prediction == "epsilon":
            return eps
        return a.sqrt() * eps - (1 - a).sqrt() * x0_hat

    return pred


def gaussian_flow_end(proc: DenoisingProcess, x0: torch.Tensor, mu: float = MU, s: float = SD):
    """Closed-form end point of the probability-flow ODE started at ``x0``."""
    z = (x0 - mu) / s
    if proc.cfg.process == "rflow":
        return z  # tau = 1: pure noise
    a = proc.alphas_cumprod[-1].to(x0.dtype)
    return a.sqrt() * mu + (a * s * s + 1 - a).sqrt() * z


def _x0(seed: int = 3) -> torch.Tensor:
    return (MU + SD * torch.randn(SHAPE, generator=_gen(seed), dtype=torch.float64)).clamp(-1, 1)


DDPM_CFGS = [
    DiffusionConfig(prediction="epsilon", zero_terminal_snr=False),
    DiffusionConfig(prediction="v_prediction", schedule="cosine"),
    DiffusionConfig(prediction="sample"),
]
RFLOW_CFG = DiffusionConfig(process="rflow", sampler="rflow")


def _process(cfg: DiffusionConfig) -> DenoisingProcess:
    """The process of the family that trains with ``cfg.process`` (rflow: the rflow family)."""
    return RFlowProcess(cfg) if cfg.process == "rflow" else DiffusionProcess(cfg)


# ------------------------------------------------------------------ training loss


@pytest.mark.parametrize("cfg", [*DDPM_CFGS, RFLOW_CFG, DiffusionConfig(loss="l1")])
def test_training_loss_reproducible_and_differentiable(cfg):
    torch.manual_seed(0)
    net = TinyNet()
    proc = _process(cfg)
    x0 = torch.rand(SHAPE) * 2 - 1
    mask, cond = _mask(), _cond()
    cond.null = torch.tensor([True, False])  # both the text and the null embedding train
    loss_a, logs = proc.training_loss(net, x0, mask, cond, generator=_gen(7))
    loss_b, _ = proc.training_loss(net, x0, mask, cond, generator=_gen(7))
    loss_c, _ = proc.training_loss(net, x0, mask, cond, generator=_gen(8))
    assert torch.isfinite(loss_a) and loss_a.ndim == 0
    assert loss_a.item() == loss_b.item() == logs["loss"]
    assert loss_a.item() != loss_c.item()
    loss_a.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_training_loss_needs_randomness_source():
    proc = DiffusionProcess(DiffusionConfig())
    with pytest.raises(ValueError, match="generator"):
        proc.training_loss(TinyNet(), torch.zeros(SHAPE), _mask(), None)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddpm_targets_match_closed_form(prediction):
    proc = DiffusionProcess(
        DiffusionConfig(prediction=prediction, zero_terminal_snr=prediction != "epsilon")
    )
    g = _gen(1)
    x0 = torch.rand(SHAPE, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    t = torch.tensor([17, 803])
    a = proc.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    eps_target = noise
    v_target = a.sqrt() * noise - (1 - a).sqrt() * x0
    want = eps_target if prediction == "epsilon" else v_target
    wrong = v_target if prediction == "epsilon" else eps_target

    seen = {}

    def oracle(out):
        def net(x, mask, tt, cond):
            seen["x_t"], seen["t"] = x, tt
            return out

        return net

    torch.testing.assert_close(proc.q_sample(x0, noise, t), x_t)
    torch.testing.assert_close(proc.training_target(x0, noise, t), want)
    loss, _ = proc.training_loss(oracle(want), x0, _mask(), None, noise=noise, t=t)
    torch.testing.assert_close(seen["x_t"], x_t)
    assert torch.equal(seen["t"], t)
    assert loss.item() < 1e-12
    loss_wrong, _ = proc.training_loss(oracle(wrong), x0, _mask(), None, noise=noise, t=t)
    assert loss_wrong.item() > 0.01
    # l2 of a constant offset 0.5 is 0.25; l1 is 0.5
    loss_off, _ = proc.training_loss(oracle(want + 0.5), x0, _mask(), None, noise=noise, t=t)
    assert loss_off.item() == pytest.approx(0.25, rel=1e-6)
    proc_l1 = DiffusionProcess(proc.cfg.model_copy(update={"loss": "l1"}))
    loss_l1, _ = proc_l1.training_loss(oracle(want + 0.5), x0, _mask(), None, noise=noise, t=t)
    assert loss_l1.item() == pytest.approx(0.5, rel=1e-6)


def test_rflow_target_is_velocity():
    proc = RFlowProcess(RFLOW_CFG)
    g = _gen(2)
    x0 = torch.rand(SHAPE, generator=g) * 2 - 1
    noise = torch.randn(SHAPE, generator=g)
    t = torch.tensor([250.0, 900.5])
    tau = (t / 1000).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(proc.q_sample(x0, noise, t), (1 - tau) * x0 + tau * noise)
    torch.testing.assert_close(proc.training_target(x0, noise, t), x0 - noise)
    ts = proc.sample_timesteps(1000, _gen(0), x0)
    assert ts.dtype == torch.float32 and ts.min() >= 0 and ts.max() < 1000
    assert 0.4 < (ts / 1000).mean() < 0.6
    td = DiffusionProcess(DiffusionConfig()).sample_timesteps(1000, _gen(0), x0)
    assert td.dtype == torch.long and td.min() >= 0 and td.max() <= 999


# ------------------------------------------------------------------ conditional dropout


def test_classifier_free_guidance_combination():
    torch.manual_seed(0)
    net = TinyNet()
    proc = DiffusionProcess(DiffusionConfig())
    mask, cond = _mask(), _cond()
    x = torch.randn(SHAPE, generator=_gen(5))
    t = torch.tensor([500, 500])
    with torch.no_grad():
        c_out = net(x, mask, t, cond)
        u_out = net(x, mask, t, null_condition(cond))
        assert (c_out - u_out).abs().max() > 1e-3  # the text matters to this net
        torch.testing.assert_close(proc.model_fn(net, mask, cond, 1.0)(x, t), c_out)
        net.calls = 0
        torch.testing.assert_close(proc.model_fn(net, mask, cond, 0.0)(x, t), u_out)
        assert net.calls == 1  # both branches in one batched call
        torch.testing.assert_close(
            proc.model_fn(net, mask, cond, 2.5)(x, t), u_out + 2.5 * (c_out - u_out)
        )
        # no condition: guidance is irrelevant, the plain model runs
        torch.testing.assert_close(proc.model_fn(net, mask, None, 3.0)(x, t), net(x, mask, t, None))


# ------------------------------------------------------------------ samplers


def test_ddim_deterministic_and_pairs_share_noise():
    torch.manual_seed(0)
    net = TinyNet()
    proc = DiffusionProcess(DiffusionConfig(sample_steps=5))
    noise = torch.randn(1, 1, 8, 8, 8, generator=_gen(9)).expand(2, -1, -1, -1, -1).contiguous()
    mask = _mask()
    same = _cond(b=1).index([0, 0])
    a = proc.sample(proc.model_fn(net, mask, same), noise)
    b = proc.sample(proc.model_fn(net, mask, same), noise.clone())
    assert torch.equal(a, b)  # eta = 0 is deterministic
    # same noise + same prompt -> identical pair members (up to the last float bit, which
    # batched convolution kernels may round differently per batch position)
    torch.testing.assert_close(a[0], a[1], atol=1e-6, rtol=0)
    assert a.abs().max() <= 1.0
    differ = TextCondition.cat([_cond(b=1, seed=0), _cond(b=1, seed=1)])
    c = proc.sample(proc.model_fn(net, mask, differ), noise)
    assert torch.equal(c[0], a[0])  # batch members do not leak into each other
    assert (c[0] - c[1]).abs().max() > 1e-4  # only the prompt differs
    other = proc.sample(
        proc.model_fn(net, mask, same), torch.randn(noise.shape, generator=_gen(10))
    )
    assert (other - a).abs().max() > 1e-3


@pytest.mark.parametrize("cfg", DDPM_CFGS)
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_and_ddpm_return_the_single_data_point(cfg, steps):
    proc = DiffusionProcess(cfg)
    c = torch.rand(SHAPE, generator=_gen(11), dtype=torch.float64) * 1.8 - 0.9
    noise = torch.randn(SHAPE, generator=_gen(12), dtype=torch.float64)
    den = point_denoiser(proc, c)
    torch.testing.assert_close(proc.sample(den, noise, "ddim", steps), c, atol=1e-5, rtol=0)
    out = proc.sample(den, noise, "ddim", steps, eta=1.0, generator=_gen(1))
    torch.testing.assert_close(out, c, atol=1e-5, rtol=0)
    out = proc.sample(den, noise, "ddpm", steps, generator=_gen(1))
    torch.testing.assert_close(out, c, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [10, 50])
def test_rflow_returns_the_single_data_point(steps):
    proc = RFlowProcess(RFLOW_CFG)
    c = torch.rand(SHAPE, generator=_gen(11), dtype=torch.float64) * 1.8 - 0.9
    noise = torch.randn(SHAPE, generator=_gen(12), dtype=torch.float64)
    out = proc.sample(point_denoiser(proc, c), noise, steps=steps)
    torch.testing.assert_close(out, c, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cfg", [*DDPM_CFGS, RFLOW_CFG])
def test_deterministic_samplers_solve_the_gaussian_flow(cfg):
    """Started at the exact ODE end point, the sampler must return x0; first-order error."""
    proc = _process(cfg)
    x0 = _x0()
    xt = gaussian_flow_end(proc, x0)
    den = gaussian_denoiser(proc)
    errs = [_rel(proc.sample(den, xt, steps=n), x0) for n in (25, 100, 400)]
    assert errs[2] < 0.01
    assert errs[0] > 2.5 * errs[1] > 6 * errs[2]  # converges like 1/steps


@pytest.mark.parametrize("cfg", [*DDPM_CFGS, RFLOW_CFG])
def test_inversion_round_trip(cfg):
    proc = _process(cfg)
    x0 = _x0()
    den = gaussian_denoiser(proc)
    xt = proc.invert(den, x0, steps=300)
    # lands on the ODE end point (an x0-predicting network starts one level late: the
    # clean level gives it no noise estimate, an error of order sqrt(1 - alpha_bar_0))
    tol = 0.015 if cfg.prediction == "sample" else 0.01
    assert _rel(xt, gaussian_flow_end(proc, x0)) < tol
    back = proc.sample(den, xt, steps=300)
    assert _rel(back, x0) < 0.02
    # and not trivially: another image inverts elsewhere
    assert _rel(proc.invert(den, _x0(seed=4), steps=300), xt) > 0.5


def test_ddpm_sampler_is_seeded_and_matches_the_data_distribution():
    proc = DiffusionProcess(DiffusionConfig())
    den = gaussian_denoiser(proc)
    noise = torch.randn(1, 1, 16, 16, 16, generator=_gen(13), dtype=torch.float64)
    with pytest.raises(ValueError, match="generator"):
        proc.sample(den, noise, "ddpm", 10)
    a = proc.sample(den, noise, "ddpm", 1000, generator=_gen(1))
    b = proc.sample(den, noise, "ddpm", 1000, generator=_gen(1))
    c = proc.sample(den, noise, "ddpm", 1000, generator=_gen(2))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2
    assert a.mean().item() == pytest.approx(MU, abs=0.02)
    assert a.std().item() == pytest.approx(SD, rel=0.06)
    # ancestral DDIM (eta = 1) on the shortened chain is seeded too
    d1 = proc.sample(den, noise, "ddim", 20, eta=1.0, generator=_gen(3))
    d2 = proc.sample(den, noise, "ddim", 20, eta=1.0, generator=_gen(3))
    assert torch.equal(d1, d2)
    assert (d1 - proc.sample(den, noise, "ddim", 20)).abs().max() > 1e-2


def test_bad_sampler_settings_are_one_sentence_errors():
    proc = DiffusionProcess(DiffusionConfig(timesteps=100))
    den = point_denoiser(proc, torch.zeros(SHAPE))
    noise = torch.randn(SHAPE)
    with pytest.raises(ConfigError, match="sample_steps"):
        proc.sample(den, noise, steps=101)
    with pytest.raises(ConfigError, match="rflow"):
        proc.sample(den, noise, sampler="rflow")
    with pytest.raises(ConfigError, match="schedule"):
        DiffusionProcess(DiffusionConfig(schedule="nonsense"))
    # Each process runs its own diffusion.process only (rflow is the rflow family's).
    with pytest.raises(ConfigError, match="RFlowProcess|family_for"):
        DiffusionProcess(RFLOW_CFG)
    with pytest.raises(ConfigError, match="family_for"):
        RFlowProcess(DiffusionConfig())
    with pytest.raises(ConfigError, match="cannot sample"):
        RFlowProcess(RFLOW_CFG).sample(den, noise, sampler="ddim")


# ------------------------------------------------------------------ zero terminal SNR


def test_zero_terminal_snr_last_level_is_pure_noise():
    """With the rescaled schedule the last training level holds no trace of the image, so
    a network cannot take a region's mean intensity from x_T (docs/diffusion.md)."""
    proc = DiffusionProcess(DiffusionConfig())
    assert proc.cfg.zero_terminal_snr and float(proc.alphas_cumprod[-1]) == 0.0
    first = DiffusionProcess(DiffusionConfig(zero_terminal_snr=False)).alphas_cumprod[0]
    assert float(proc.alphas_cumprod[0]) == pytest.approx(float(first), rel=1e-6)
    assert bool((proc.alphas_cumprod[1:] < proc.alphas_cumprod[:-1]).all())
    noise = torch.randn(SHAPE, generator=_gen(3))
    t = torch.full((SHAPE[0],), proc.num_timesteps - 1)
    a = proc.q_sample(torch.full(SHAPE, -0.9), noise, t)
    b = proc.q_sample(torch.full(SHAPE, 0.9), noise, t)
    torch.testing.assert_close(a, b)
    # The original schedule keeps a signal whose regional mean is readable: with 4096
    # voxels the mean's SNR is N * alpha_bar / (1 - alpha_bar), about 3 for T = 1000.
    old = DiffusionProcess(DiffusionConfig(zero_terminal_snr=False, prediction="sample"))
    ab = float(old.alphas_cumprod[-1])
    assert 4096 * ab / (1 - ab) > 1.0


def test_epsilon_prediction_with_zero_terminal_snr_is_refused_and_old_checkpoints_keep_theirs():
    from unveil.config import config_from_dict

    with pytest.raises(ValueError, match="zero_terminal_snr"):
        DiffusionConfig(prediction="epsilon")
    # A config stored before the option existed describes the original schedule.
    cfg = config_from_dict({"diffusion": {"prediction": "epsilon"}})
    assert cfg.diffusion.zero_terminal_snr is False
    assert float(DiffusionProcess(cfg.diffusion).alphas_cumprod[-1]) > 0.0
