"""Shared fixtures: tiny cohorts built once per test session (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


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
