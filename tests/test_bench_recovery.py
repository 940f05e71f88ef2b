"""benchmarks/recovery.py: the summary arithmetic, and one tiny end-to-end cell (slow)."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    return importlib.import_module("recovery")


def test_slope_is_the_mean_ratio_with_a_bootstrap_interval(bench):
    rows = [
        {"planted_hu": -30.0, "recovered_hu": -24.0, "spill_fraction": 0.1, "null_max_hu": 0.5},
        {"planted_hu": 60.0, "recovered_hu": 54.0, "spill_fraction": -0.3, "null_max_hu": 1.5},
    ]
    s = bench.summarize(rows, np.random.default_rng(0))
    assert s["slope"] == pytest.approx(0.85)
    assert s["low"] <= 0.85 <= s["high"] and s["low"] >= 0.8 and s["high"] <= 0.9
    assert s["spill_max"] == pytest.approx(0.3) and s["null_max_hu"] == pytest.approx(1.5)
    empty = bench.summarize([], np.random.default_rng(0))
    assert math.isnan(empty["slope"])


def test_planted_effects_have_the_grid_size_and_opposite_signs(bench):
    eff = bench.planted_effects(-15.0)
    assert [(e.attribute, e.region, e.shift_hu) for e in eff] == [
        ("smoking", "upper_lung", -15.0),
        ("diagnosis", "lower_lung&lung_periphery", 30.0),
    ]


@pytest.mark.slow
def test_one_tiny_cell_end_to_end(bench, tmp_path, capsys):
    args = [
        "--out", str(tmp_path / "rb"), "--families", "gan", "--sizes", "-60", "--n", "24",
        "--grid", "16", "--steps", "2", "--seeds", "1",
        "--set", "preprocess.patch_size=[16,16,16]", "--set", "model.channels=[8,16]",
        "--set", "model.norm_groups=4", "--set", "train.batch_size=2",
    ]  # fmt: skip
    assert bench.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("summary: gan slope")
    assert any("smoking=current" in line and "upper_lung" in line for line in out)
    assert (tmp_path / "rb" / "recovery.json").is_file()
    # a re-run reuses the trained model and the analysed runs
    assert bench.main(args) == 0
