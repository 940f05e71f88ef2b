"""Shared fixtures: tiny cohorts and tiny trained runs, built once per test session (no
downloads)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"

#: Overrides for the shared tiny runs: no validation pass, one checkpoint at the end.
TINY_RUN_FAST = ("train.val_every=1000", "train.ckpt_every=1000")


@dataclass(frozen=True)
class TinyRun:
    """A trained tiny run: the cohort it learned from, its run folder, its last checkpoint.

    Shared by every test of the session, so read-only: a test that writes into the run
    folder copies it first (``shutil.copytree(run.folder, tmp_path / "run")``).
    """

    cohort: Path
    folder: Path
    checkpoint: Path


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Put torch's thread count back after every test.

    Some tests (the benchmark smoke tests, the tiny diffusion run) set it; without this a
    later test, the demo above all, ran with whatever the last one left, and CPU training
    is reproducible only for a fixed thread count (the demo came out 4 HU apart).
    """
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """A 6-subject phantom cohort at 16^3 (read-only for tests: copy it to modify)."""
    from unveil.data.phantom import make_phantom

    out = tmp_path_factory.mktemp("phantom") / "cohort"
    make_phantom(out, n=6, size=16, seed=0)
    return out


def _train_tiny(cohort: Path, folder: Path, config: str, overrides: list[str], steps: int):
    from unveil.config import load_config, resolve_config_path
    from unveil.train.loop import train

    cfg = load_config(resolve_config_path(config), [*TINY_RUN_FAST, *overrides])
    checkpoint = train(cfg, cohort, folder, steps=steps, progress=False)
    return TinyRun(cohort, folder, checkpoint)


@pytest.fixture(scope="session")
def tiny_gan_run(tiny_phantom, tmp_path_factory) -> TinyRun:
    """``tiny-gan`` with a noise input, trained 2 steps on ``tiny_phantom`` (read-only)."""
    folder = tmp_path_factory.mktemp("tiny-gan") / "run"
    return _train_tiny(tiny_phantom, folder, "tiny-gan", ["model.noise_input=true"], steps=2)


@pytest.fixture(scope="session")
def tiny_diffusion_run(tiny_phantom, tmp_path_factory) -> TinyRun:
    """``tiny-diffusion`` with 2 sampling steps, trained 1 step on ``tiny_phantom``
    (read-only)."""
    folder = tmp_path_factory.mktemp("tiny-diffusion") / "run"
    return _train_tiny(
        tiny_phantom, folder, "tiny-diffusion", ["diffusion.sample_steps=2"], steps=1
    )
