"""The rflow family: a registry entry of its own (rectified flow), its config spellings,
and a tiny model that trains, samples and inverts; the older spelling (``model.family:
diffusion`` with ``diffusion.process: rflow``) trains, samples and inverts identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unveil.conditioning import TextCondition
from unveil.config import config_from_dict, load_config, resolve_config_path
from unveil.errors import ConfigError
from unveil.family_registry import family_names, family_spec
from unveil.generative.registry import FAMILIES, DenoisingFamily, family_for
from unveil.generative.rflow import RFlowFamily, RFlowProcess
from unveil.infer.generate import generate_prepared
from unveil.model import load_model
from unveil.runtime.checkpoint import load_checkpoint, save_checkpoint
from unveil.train.loop import train

FAST = ["train.val_every=1000", "train.ckpt_every=1000", "train.log_every=1"]
RFLOW = ["model.family=rflow"]
LEGACY = ["diffusion.process=rflow", "diffusion.sampler=rflow"]
SIZE = 16


def _cfg(*overrides: str):
    return load_config(resolve_config_path("tiny-diffusion"), [*FAST, *overrides])


def _losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def rflow_run(tiny_phantom, tmp_path_factory) -> Path:
    """``tiny-diffusion`` as ``model.family: rflow``, trained 2 steps; its run folder."""
    folder = tmp_path_factory.mktemp("tiny-rflow") / "run"
    train(_cfg(*RFLOW), tiny_phantom, folder, steps=2, progress=False)
    return folder


class _Prepared:
    """A preprocessed scan of ``SIZE^3`` voxels: a cube of label 1 in background."""

    def __init__(self, channels: int, seed: int = 0) -> None:
        self.mask = torch.zeros(channels, SIZE, SIZE, SIZE)
        self.mask[0] = 1.0
        self.mask[0, 4:12, 4:12, 4:12] = 0.0
        self.mask[1, 4:12, 4:12, 4:12] = 1.0
        g = torch.Generator().manual_seed(seed)
        self.image = torch.rand(1, SIZE, SIZE, SIZE, generator=g) * 1.6 - 0.8


def _condition(lm, seed: int = 1) -> TextCondition:
    g = torch.Generator().manual_seed(seed)
    return TextCondition(
        torch.randn(1, 4, lm.meta.encoder_width, generator=g),
        torch.ones(1, 4, dtype=torch.bool),
        torch.randn(1, lm.meta.encoder_pooled_width, generator=g),
        torch.zeros(1, dtype=torch.bool),
    )


def _noise(seed: int = 2) -> torch.Tensor:
    return torch.randn(1, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _invert(lm, prepared, cond, steps: int) -> torch.Tensor:
    mask = prepared.mask.unsqueeze(0)
    return lm.family.invert(
        lm.cfg,
        lambda x, t: lm.generator(x, mask, t, cond),
        prepared.image.unsqueeze(0),
        steps=steps,
    )


# ------------------------------------------------------------------ the registry entry


def test_registry_lists_gan_diffusion_and_rflow() -> None:
    assert {"gan", "diffusion", "rflow"} <= set(family_names())
    rflow, diff = FAMILIES["rflow"], FAMILIES["diffusion"]
    assert isinstance(rflow, RFlowFamily) and isinstance(rflow, DenoisingFamily)
    assert family_spec("rflow").behaviour == "unveil.generative.rflow:RFlowFamily"
    # The same role as the diffusion family: a time-conditioned UNet, linear output, no
    # discriminator, steps and guidance, inversion.
    for flag in (
        "needs_discriminator",
        "time_conditioned",
        "output_activation_default",
        "allows_noise_input",
        "supports_inversion",
        "iterative",
    ):
        assert getattr(rflow, flag) == getattr(diff, flag), flag


def test_config_spellings_of_rectified_flow() -> None:
    cfg = load_config(overrides=RFLOW)
    # The rflow family reads the diffusion section; its process and sampler are filled in.
    assert (cfg.model.family, cfg.diffusion.process, cfg.diffusion.sampler) == (
        "rflow",
        "rflow",
        "rflow",
    )
    assert isinstance(family_for(cfg).process(cfg), RFlowProcess)
    # The older spelling is read as the rflow family, to the same config.
    assert _cfg(*LEGACY) == _cfg(*RFLOW)
    stored = cfg.to_dict()  # what a checkpoint stores, and its older spelling
    assert config_from_dict(stored) == cfg
    assert config_from_dict({**stored, "model": {**stored["model"], "family": "diffusion"}}) == cfg
    # A DDPM config stays the diffusion family; the GAN ignores the diffusion section.
    assert load_config().model.family == "diffusion"
    assert load_config(overrides=["model.family=gan", *LEGACY]).model.family == "gan"
    with pytest.raises(ConfigError, match="model.family rflow trains rectified flow"):
        load_config(overrides=[*RFLOW, "diffusion.process=ddpm"])
    with pytest.raises(ConfigError, match="cannot sample"):
        load_config(overrides=[*RFLOW, "diffusion.sampler=ddim"])
    with pytest.raises(ConfigError, match="cannot sample"):
        load_config(overrides=["diffusion.process=rflow"])  # as before: sampler ddim


# ------------------------------------------------------------------ a tiny model


def test_tiny_rflow_model_trains_samples_and_inverts(rflow_run) -> None:
    losses = _losses(rflow_run)
    assert [r["step"] for r in losses] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in losses)
    lm = load_model(rflow_run / "checkpoints" / "ckpt-00000002.pt")
    assert lm.cfg.model.family == "rflow" and isinstance(lm.family, RFlowFamily)
    assert isinstance(lm.process(), RFlowProcess)
    assert lm.family.describe(lm.cfg).startswith("velocity, T=100")

    prepared, cond = _Prepared(len(lm.meta.mask_channels)), _condition(lm)
    vol = generate_prepared(lm.generator, lm.cfg, prepared, cond, _noise(), guidance_scale=3.0)
    assert vol.shape == (1, 1, SIZE, SIZE, SIZE)
    assert torch.isfinite(vol).all() and float(vol.abs().max()) <= 1.0
    again = generate_prepared(lm.generator, lm.cfg, prepared, cond, _noise(), guidance_scale=3.0)
    assert torch.equal(vol, again)  # the Euler sampler is deterministic
    other = generate_prepared(lm.generator, lm.cfg, prepared, cond, _noise(3), guidance_scale=3.0)
    assert (other - vol).abs().max() > 1e-3

    # Inversion, then sampling from the inverted noise, returns to the scan (up to the
    # discretisation error of the Euler steps, which shrinks with their number).
    errors = []
    for steps in (4, 20):
        latent = _invert(lm, prepared, cond, steps)
        assert latent.shape == (1, 1, SIZE, SIZE, SIZE) and torch.isfinite(latent).all()
        back = generate_prepared(
            lm.generator, lm.cfg, prepared, cond, latent, guidance_scale=1.0, steps=steps
        )
        errors.append(float((back - prepared.image).abs().mean()))
    # Measured: 0.021 and 0.0042 for a spread of 0.40 (first order: 5x the steps, 1/5).
    spread = float((prepared.image - prepared.image.mean()).abs().mean())
    assert errors[1] < 0.03 * spread
    assert errors[1] < errors[0] / 2


def test_trainer_of_the_rflow_family_runs_its_process() -> None:
    from unveil.generative.trainers import DiffusionTrainer
    from unveil.nn.build import build_generator

    cfg = load_config(overrides=RFLOW)
    gen = build_generator(cfg.model.model_copy(update={"channels": (8, 16)}), 1, 2, 16)
    trainer = family_for(cfg).trainer(cfg, gen, None)
    assert isinstance(trainer, DiffusionTrainer) and isinstance(trainer.process, RFlowProcess)
    assert set(trainer.optimizer_states()) == {"generator", "scaler"}  # as checkpoints store


# ------------------------------------------------------------------ the older spelling


def test_legacy_spelling_trains_identically(rflow_run, tiny_phantom, tmp_path) -> None:
    legacy = tmp_path / "legacy"
    train(_cfg(*LEGACY), tiny_phantom, legacy, steps=2, progress=False)
    assert _losses(legacy) == _losses(rflow_run)
    name = "checkpoints/ckpt-00000002.pt"
    wa = load_checkpoint(rflow_run / name)["models"]["generator"]
    wb = load_checkpoint(legacy / name)["models"]["generator"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert load_checkpoint(legacy / name)["config"]["model"]["family"] == "rflow"


def test_legacy_checkpoint_samples_and_inverts_identically(rflow_run, tmp_path) -> None:
    ck = load_checkpoint(rflow_run / "checkpoints" / "ckpt-00000002.pt")
    old = {k: v for k, v in ck.items() if k not in ("format", "format_version", "versions")}
    old["config"] = {**ck["config"], "model": {**ck["config"]["model"], "family": "diffusion"}}
    assert old["config"]["diffusion"]["process"] == "rflow"
    path = save_checkpoint(tmp_path / "ckpt-00000002.pt", old)

    new_lm = load_model(rflow_run / "checkpoints" / "ckpt-00000002.pt")
    old_lm = load_model(path)
    assert old_lm.cfg == new_lm.cfg and old_lm.cfg.model.family == "rflow"
    prepared, cond = _Prepared(len(new_lm.meta.mask_channels)), _condition(new_lm)
    vols = [
        generate_prepared(lm.generator, lm.cfg, prepared, cond, _noise(), guidance_scale=2.0)
        for lm in (new_lm, old_lm)
    ]
    assert torch.equal(vols[0], vols[1])
    latents = [_invert(lm, prepared, cond, 5) for lm in (new_lm, old_lm)]
    assert torch.equal(latents[0], latents[1])
