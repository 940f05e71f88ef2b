"""Shared fixtures: tiny cohorts built once per test session (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """A 6-subject phantom cohort at 16^3 (read-only for tests: copy it to modify)."""
    from unveil.data.phantom import make_phantom

    out = tmp_path_factory.mktemp("phantom") / "cohort"
    make_phantom(out, n=6, size=16, seed=0)
    return out
