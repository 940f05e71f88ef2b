"""The family registry: names and flags (torch-free), behaviour objects, config validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from unveil.config import Config, load_config
from unveil.errors import ConfigError, UnveilError
from unveil.family_registry import SPECS, FamilySpec, family_names, family_spec
from unveil.generative.diffusion import DiffusionProcess
from unveil.generative.gan import GanProcess
from unveil.generative.registry import (
    FAMILIES,
    DiffusionFamily,
    GanFamily,
    GenerativeFamily,
    family_for,
    register_family,
    unregister_family,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "unveil"


def test_registry_lists_gan_and_diffusion() -> None:
    assert {"gan", "diffusion", "rflow"} <= set(family_names())
    assert set(FAMILIES) == set(SPECS)
    assert isinstance(FAMILIES["gan"], GanFamily)
    assert isinstance(FAMILIES["diffusion"], DiffusionFamily)
    assert FAMILIES["gan"] is FAMILIES["gan"]  # built once


def test_flags_match_the_roles_of_the_families() -> None:
    gan, diff = FAMILIES["gan"], FAMILIES["diffusion"]
    assert gan.needs_discriminator and not diff.needs_discriminator
    assert diff.time_conditioned and not gan.time_conditioned
    assert (gan.output_activation_default, diff.output_activation_default) == ("tanh", "linear")
    assert gan.allows_noise_input and not diff.allows_noise_input
    assert diff.supports_inversion and not gan.supports_inversion
    assert diff.iterative and not gan.iterative


def test_process_objects_and_rflow_family() -> None:
    from unveil.generative.rflow import RFlowFamily, RFlowProcess

    cfg = Config()
    assert family_for(cfg) is FAMILIES["diffusion"]
    assert isinstance(family_for(cfg).process(cfg), DiffusionProcess)
    assert family_for(cfg).variant(cfg) == "ddpm"
    gan_cfg = load_config(overrides=["model.family=gan"])
    assert isinstance(family_for(gan_cfg).process(gan_cfg), GanProcess)
    # Rectified flow is a family of its own; its older spelling (the diffusion family with
    # diffusion.process rflow) is read as that family.
    rf = load_config(overrides=["diffusion.process=rflow", "diffusion.sampler=rflow"])
    assert rf.model.family == "rflow"
    fam = family_for(rf)
    assert fam is FAMILIES["rflow"] and isinstance(fam, RFlowFamily) and fam.variant(rf) == "rflow"
    assert isinstance(fam.process(rf), RFlowProcess) and fam.process(rf).cfg.process == "rflow"
    assert fam.describe(rf).startswith("velocity,")
    assert "L1" in family_for(gan_cfg).describe(gan_cfg)


def test_sampling_steps_and_inversion_refusal() -> None:
    cfg = Config()
    diff = family_for(cfg)
    assert diff.sampling_steps(cfg, None) == cfg.diffusion.sample_steps
    assert diff.sampling_steps(cfg, 7) == 7
    with pytest.raises(UnveilError, match="--steps"):
        diff.check_sampling(cfg, cfg.diffusion.timesteps + 1, None, "checkpoint X", 100.0)
    gan_cfg = load_config(overrides=["model.family=gan"])
    gan = family_for(gan_cfg)
    assert gan.sampling_steps(gan_cfg, 7) is None
    gan.check_sampling(gan_cfg, 10**6, None, "checkpoint X", 100.0)  # nothing to check
    with pytest.raises(UnveilError, match="--from-scan.*'?diffusion"):
        gan.check_inversion()
    diff.check_inversion()


def test_config_refuses_an_unknown_family_naming_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["model.family=vae"])
    msg = str(err.value)
    assert "model.family" in msg
    for name in family_names():
        assert f"'{name}'" in msg
    with pytest.raises(ValueError, match="'gan'"):
        family_spec("vae")


class _ToyFamily(GenerativeFamily):
    """One windowed pass of the network, no noise: the smallest family there is."""

    def process(self, cfg):
        return "toy-process"

    def sample_volume(self, cfg, net, window, mask, cond, noise, **kw):
        return window(net)(None, mask, None, cond).clamp(-1.0, 1.0)

    def describe(self, cfg):
        return "a toy"


@pytest.fixture
def toy():
    spec = FamilySpec("toy", "a test family", behaviour=_ToyFamily)
    fam = register_family(spec)
    try:
        yield fam
    finally:
        unregister_family("toy")
    assert "toy" not in FAMILIES


def test_a_family_registered_at_run_time_is_accepted(toy, tmp_path) -> None:
    cfg = load_config(overrides=["model.family=toy"])
    assert cfg.model.family == "toy"
    assert family_for(cfg) is toy and FAMILIES["toy"] is toy
    assert toy.process(cfg) == "toy-process"
    # The network builder reads the toy's flags: no time embedding, tanh output, no disc.
    from unveil.nn.build import build_discriminator, build_generator

    net = build_generator(cfg.model.model_copy(update={"channels": (8, 16)}), 1, 2, 16)
    assert not net.with_time
    assert net.out_activation == "tanh"
    with pytest.raises(ConfigError, match="model.family gan"):
        build_discriminator(cfg.gan, cfg.model, 2, 16)
    # Whole-volume generation goes through the family's hook.
    from unveil.infer.generate import generate_prepared

    class _Prepared:
        mask = torch.zeros(2, 16, 16, 16)
        mask[0] = 1.0

    out = generate_prepared(
        lambda x, m, t, c: torch.full((m.shape[0], 1, *m.shape[2:]), 3.0),
        cfg,
        _Prepared(),
        None,
        torch.zeros(1, 1, 16, 16, 16),
    )
    assert out.shape == (1, 1, 16, 16, 16) and float(out.max()) == 1.0


def test_registering_a_taken_name_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_family(FamilySpec("gan", "again", behaviour=GanFamily))


def test_no_module_outside_the_registry_compares_the_family_to_a_name() -> None:
    allowed = {SRC / "family_registry.py"}
    pattern = re.compile(r"""family\s*(==|!=)\s*["']|["']\s*(==|!=)\s*\S*family\b""")
    offenders = []
    for path in SRC.rglob("*.py"):
        if path in allowed or (SRC / "generative") in path.parents:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize(
    ("family", "keys"),
    [
        ("diffusion", {"generator", "scaler"}),
        ("rflow", {"generator", "scaler"}),
        ("gan", {"generator", "discriminator", "scaler_g", "scaler_d"}),
    ],
)
def test_trainer_hook_builds_the_training_step_with_the_checkpoint_keys(family, keys) -> None:
    from unveil.generative.trainers import DiffusionTrainer, GanTrainer
    from unveil.nn.build import build_discriminator, build_generator

    cfg = load_config(overrides=[f"model.family={family}"])
    model = cfg.model.model_copy(update={"channels": (8, 16)})
    gen = build_generator(model, 1, 2, 16)
    disc = build_discriminator(cfg.gan, model, 2, 16) if family == "gan" else None
    trainer = family_for(cfg).trainer(cfg, gen, disc)
    assert isinstance(trainer, GanTrainer if family == "gan" else DiffusionTrainer)
    assert trainer.generator is gen
    assert set(trainer.optimizer_states()) == keys  # what checkpoints store, unchanged
    assert trainer.modules()[0] == "generator" and len(trainer.optimizers()) == len(
        trainer.modules()
    )


def test_a_family_without_a_trainer_is_refused(toy) -> None:
    cfg = load_config(overrides=["model.family=toy"])
    with pytest.raises(NotImplementedError, match="toy"):
        toy.trainer(cfg, torch.nn.Linear(1, 1), None)
