"""Statistics on synthetic numbers with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from unveil.analysis.stats import (
    benjamini_hochberg,
    bootstrap_ci,
    effect_size_dz,
    paired_test,
    slope_with_ci,
    two_group_difference,
)


def test_percentile_ci_covers_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    reps, hits = 300, 0
    for _ in range(reps):
        x = rng.normal(5.0, 2.0, size=30)
        lo, hi = bootstrap_ci(x, rng, n_boot=500, method="percentile")
        assert lo < x.mean() < hi
        hits += lo <= 5.0 <= hi
    assert 0.91 <= hits / reps <= 0.98


def test_bca_ci_covers_on_skewed_data():
    rng = np.random.default_rng(1)
    reps, hits = 80, 0
    for _ in range(reps):
        x = rng.exponential(3.0, size=40)  # true mean 3, skewed: where BCa matters
        lo, hi = bootstrap_ci(x, rng, n_boot=500, method="BCa")
        hits += lo <= 3.0 <= hi
    assert 0.85 <= hits / reps <= 1.0


def test_ci_width_shrinks_with_n_and_is_reproducible():
    x_small = np.random.default_rng(2).normal(0, 1, 10)
    x_big = np.random.default_rng(2).normal(0, 1, 200)
    w_small = np.diff(bootstrap_ci(x_small, np.random.default_rng(0), 500))[0]
    w_big = np.diff(bootstrap_ci(x_big, np.random.default_rng(0), 500))[0]
    assert w_big < w_small / 2.5  # about sqrt(20) ~ 4.5 narrower
    assert bootstrap_ci(x_small, np.random.default_rng(7), 300) == bootstrap_ci(
        x_small, np.random.default_rng(7), 300
    )


def test_ci_degenerate_inputs_without_warnings():
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bootstrap_ci([4.0], rng) == (4.0, 4.0)
        assert bootstrap_ci([2.5, 2.5, 2.5], rng) == (2.5, 2.5)
        assert bootstrap_ci([1.0, np.nan, 1.0], rng) == (1.0, 1.0)
        lo, hi = bootstrap_ci([], rng)
        assert math.isnan(lo) and math.isnan(hi)
        # nearly constant: BCa may fail inside scipy, the answer must still be finite
        lo, hi = bootstrap_ci([1.0, 1.0, 1.0, 1.0, 1.0 + 1e-9], rng, 200)
        assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi


def test_paired_test_detects_planted_shift_not_null():
    rng = np.random.default_rng(3)
    floor = rng.normal(0.0, 3.0, size=12)
    shifted = rng.normal(-20.0, 3.0, size=12)
    null = rng.normal(0.0, 3.0, size=12)
    for test in ("wilcoxon", "t"):
        stat, p, name = paired_test(shifted, floor, test=test)
        assert p < 0.001, (test, p)
        _, p_null, _ = paired_test(null, floor, test=test)
        assert p_null > 0.05, (test, p_null)
    assert name == "paired t"
    # exact signed-rank: all 12 differences negative -> p = 2 / 2**12
    stat, p, name = paired_test(shifted, floor)
    assert name == "wilcoxon signed-rank"
    assert stat == 0.0 and p == pytest.approx(2.0 / 2**12)


def test_paired_test_zero_and_tiny_inputs():
    z = np.zeros(8)
    assert paired_test(z, z) == (0.0, 1.0, "wilcoxon signed-rank")
    assert paired_test(z, z, test="t") == (0.0, 1.0, "paired t")
    assert paired_test([1.0], [0.0])[1] == 1.0
    stat, p, _ = paired_test(np.full(5, 3.0), np.zeros(5), test="t")
    assert math.isinf(stat) and stat > 0 and p == 0.0
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0])


def test_paired_test_null_p_values_are_uniform():
    # Under the null the rejection rate at 0.05 must be at most about 5%.
    rng = np.random.default_rng(4)
    rejections = sum(
        paired_test(rng.normal(size=10), rng.normal(size=10))[1] < 0.05 for _ in range(300)
    )
    assert rejections / 300 <= 0.08


def test_effect_size_dz_known_values():
    effect = np.array([1.0, 2.0, 3.0, 4.0])
    floor = np.zeros(4)
    # d = 1..4: mean 2.5, sd (ddof=1) = sqrt(5/3)
    assert effect_size_dz(effect, floor) == pytest.approx(2.5 / math.sqrt(5.0 / 3.0))
    assert effect_size_dz(-effect, floor) == pytest.approx(-2.5 / math.sqrt(5.0 / 3.0))
    assert effect_size_dz(np.ones(4), np.ones(4)) == 0.0
    assert effect_size_dz(np.full(4, 2.0), np.ones(4)) == math.inf
    assert effect_size_dz(np.full(4, -2.0), np.ones(4)) == -math.inf
    assert math.isnan(effect_size_dz([1.0], [0.0]))


def test_bh_matches_hand_computed_example():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
    # sorted: 0.005, 0.01, 0.03, 0.04, 0.2 -> p * m / rank = 0.025, 0.025, 0.05, 0.05, 0.2
    # (cumulative minimum from the top keeps them monotone)
    expected = np.array([0.025, 0.05, 0.05, 0.025, 0.2])
    np.testing.assert_allclose(benjamini_hochberg(p), expected)
    q = benjamini_hochberg([0.01, np.nan, 0.02])
    assert math.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2]], [0.02, 0.02])
    assert benjamini_hochberg([]).shape == (0,)


def test_bh_controls_fdr_on_all_null_input():
    rng = np.random.default_rng(5)
    reps = 400
    any_rejection = sum(
        (benjamini_hochberg(rng.uniform(size=40)) < 0.05).any() for _ in range(reps)
    )
    # all hypotheses null: FDR = FWER = P(any rejection) <= 0.05 (+ simulation slack)
    assert any_rejection / reps <= 0.07


def test_bh_keeps_strong_signals():
    p = np.concatenate([np.full(5, 1e-6), np.random.default_rng(6).uniform(0.2, 1.0, 20)])
    q = benjamini_hochberg(p)
    assert (q[:5] < 0.05).all() and not (q[5:] < 0.05).any()


def test_two_group_difference_known_shift_and_coverage():
    rng = np.random.default_rng(7)
    reps, hits = 150, 0
    for _ in range(reps):
        a = rng.normal(-60.0, 10.0, 25)
        b = rng.normal(-40.0, 10.0, 35)
        diff, lo, hi = two_group_difference(a, b, rng, n_boot=400, method="percentile")
        assert diff == pytest.approx(a.mean() - b.mean())
        hits += lo <= -20.0 <= hi
    assert 0.88 <= hits / reps <= 0.99


def test_two_group_degenerate():
    rng = np.random.default_rng(0)
    d, lo, hi = two_group_difference([1.0], [0.0, 2.0], rng)
    assert d == 0.0 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in two_group_difference([], [1.0, 2.0], rng))
    assert two_group_difference([3.0, 3.0], [1.0, 1.0], rng) == (2.0, 2.0, 2.0)


def test_slope_with_ci_recovers_known_slope():
    rng = np.random.default_rng(8)
    x = rng.uniform(40, 80, 60)
    y = -870.0 + 1.5 * (x - 60.0) + rng.normal(0, 5.0, 60)
    slope, lo, hi = slope_with_ci(x, y, rng, n_boot=500)
    assert slope == pytest.approx(np.polyfit(x, y, 1)[0])
    assert lo < 1.5 < hi and hi - lo < 0.5
    # many tied x values (resamples with constant x) still give a finite interval
    x2 = np.array([0, 0, 0, 0, 0, 0, 10.0])
    y2 = np.array([0, 1, 0, 1, 0, 1, 20.0])
    s2, lo2, hi2 = slope_with_ci(x2, y2, rng, n_boot=300)
    assert math.isfinite(lo2) and lo2 <= s2 <= hi2
    assert all(math.isnan(v) for v in slope_with_ci([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], rng))


def test_paired_test_margin_ignores_shifts_below_the_minimum_effect():
    from unveil.analysis.stats import paired_test

    rng = np.random.default_rng(0)
    floor = rng.normal(0.0, 0.2, 20)
    small = floor + 3.0 + rng.normal(0.0, 0.3, 20)  # systematic, but only 3 HU
    large = floor - 20.0 + rng.normal(0.0, 0.3, 20)
    assert paired_test(small, floor)[1] < 1e-3  # the plain test calls 3 HU significant
    assert paired_test(small, floor, margin=5.0)[1] > 0.5
    stat, p, name = paired_test(large, floor, margin=5.0)
    assert p < 1e-3 and "margin 5 HU" in name
    assert paired_test(large, floor, test="t", margin=5.0)[1] < 1e-3
    with pytest.raises(ValueError):
        paired_test(large, floor, margin=-1.0)
