"""Statistics on synthetic numbers with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from unveil.analysis.stats import (
    benjamini_hochberg,
    bootstrap_ci,
    calibrated_p,
    design_matrix,
    effect_size_dz,
    fit_systematic_error,
    minimum_detectable_effect,
    ols_hc3_contrasts,
    one_sample_test,
    slope_with_ci,
    specificity,
    standard_error,
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
        # one subject has no spread: no interval (the rule of unveil.metrics.intervals)
        lo, hi = bootstrap_ci([4.0], rng)
        assert math.isnan(lo) and math.isnan(hi)
        assert bootstrap_ci([2.5, 2.5, 2.5], rng) == (2.5, 2.5)
        assert bootstrap_ci([1.0, np.nan, 1.0], rng) == (1.0, 1.0)
        lo, hi = bootstrap_ci([], rng)
        assert math.isnan(lo) and math.isnan(hi)
        # nearly constant: BCa may fail inside scipy, the answer must still be finite
        lo, hi = bootstrap_ci([1.0, 1.0, 1.0, 1.0, 1.0 + 1e-9], rng, 200)
        assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi


def test_one_rule_for_a_single_subject():
    # Every bootstrap of the package answers one subject with a figure but no interval.
    from unveil.metrics.adherence import auroc_ci
    from unveil.metrics.intervals import mean_ci, median_ci, subject_bootstrap

    rng = np.random.default_rng(0)
    assert all(math.isnan(v) for v in bootstrap_ci([4.0], rng))
    assert all(math.isnan(v) for v in mean_ci([4.0], rng)[1:])
    assert all(math.isnan(v) for v in median_ci([4.0], rng)[1:])
    assert all(math.isnan(v) for v in two_group_difference([4.0], [1.0, 2.0], rng)[1:])
    one = [np.ones((3, 2))]
    assert all(math.isnan(v) for v in subject_bootstrap(one, one, lambda a, b: 0.0, rng)[1:])
    assert all(math.isnan(v) for v in slope_with_ci([1.0], [2.0], rng))
    assert all(math.isnan(v) for v in auroc_ci(["a"], np.array([[0.9, 0.1]]), ["a", "b"], rng))


def test_one_sample_test_detects_shift_not_null():
    rng = np.random.default_rng(3)
    shifted = rng.normal(-20.0, 3.0, size=12)
    null = rng.normal(0.0, 3.0, size=12)
    for test in ("wilcoxon", "t"):
        _, p, name = one_sample_test(shifted, test=test)
        assert p < 0.001, (test, p)
        assert one_sample_test(null, test=test)[1] > 0.05
    assert name == "one-sample t"
    # exact signed-rank: all 12 values negative -> p = 2 / 2**12
    stat, p, name = one_sample_test(shifted)
    assert name == "wilcoxon signed-rank"
    assert stat == 0.0 and p == pytest.approx(2.0 / 2**12)


def test_one_sample_test_compares_with_zero_not_with_a_floor():
    # The old design tested effect - floor; a floor biased by +50 HU made a null edit
    # "significant".  The effect alone, centred on zero, must show nothing.
    rng = np.random.default_rng(11)
    effect = rng.normal(0.0, 1.0, 15)
    assert one_sample_test(effect)[1] > 0.05
    biased_floor = 50.0 + rng.normal(0.0, 1.0, 15)
    assert one_sample_test(effect - biased_floor)[1] < 1e-3  # what the old test did


def test_one_sample_test_zero_and_tiny_inputs():
    z = np.zeros(8)
    assert one_sample_test(z) == (0.0, 1.0, "wilcoxon signed-rank")
    assert one_sample_test(z, test="t") == (0.0, 1.0, "one-sample t")
    assert one_sample_test([1.0])[1] == 1.0
    assert one_sample_test([1.0, np.nan])[1] == 1.0  # one finite value left
    stat, p, _ = one_sample_test(np.full(5, 3.0), test="t")
    assert math.isinf(stat) and stat > 0 and p == 0.0
    with pytest.raises(ValueError):
        one_sample_test([1.0, 2.0], test="sign")
    with pytest.raises(ValueError):
        one_sample_test([1.0, 2.0], margin=-1.0)


def test_one_sample_test_null_p_values_are_uniform():
    # Under the null the rejection rate at 0.05 must be at most about 5%.
    rng = np.random.default_rng(4)
    for test in ("wilcoxon", "t"):
        rejections = sum(one_sample_test(rng.normal(size=10), test)[1] < 0.05 for _ in range(300))
        assert rejections / 300 <= 0.08, test


def test_one_sample_test_margin_ignores_shifts_below_the_minimum_effect():
    rng = np.random.default_rng(0)
    small = 3.0 + rng.normal(0.0, 0.3, 20)  # systematic, but only 3 HU
    large = -20.0 + rng.normal(0.0, 0.3, 20)
    assert one_sample_test(small)[1] < 1e-3  # the plain test calls 3 HU significant
    assert one_sample_test(small, margin=5.0)[1] > 0.5
    _, p, name = one_sample_test(large, margin=5.0)
    assert p < 1e-3 and "margin 5 HU" in name
    assert one_sample_test(large, test="t", margin=5.0)[1] < 1e-3
    # constant values: certain beyond the margin, no evidence within it
    assert one_sample_test(np.full(6, 8.0), test="t", margin=5.0)[1] == 0.0
    assert one_sample_test(np.full(6, 3.0), test="t", margin=5.0)[1] == 1.0


def test_effect_size_dz_and_standard_error_known_values():
    d = np.array([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sd (ddof=1) = sqrt(5/3)
    assert effect_size_dz(d) == pytest.approx(2.5 / math.sqrt(5.0 / 3.0))
    assert effect_size_dz(-d) == pytest.approx(-2.5 / math.sqrt(5.0 / 3.0))
    assert effect_size_dz(np.zeros(4)) == 0.0
    assert effect_size_dz(np.ones(4)) == math.inf
    assert effect_size_dz(-np.ones(4)) == -math.inf
    assert math.isnan(effect_size_dz([1.0]))
    assert standard_error(d) == pytest.approx(math.sqrt(5.0 / 3.0) / 2.0)
    assert math.isnan(standard_error([1.0, np.nan]))


def test_minimum_detectable_effect_formula():
    # (z_0.975 + z_0.8) * 10 / sqrt(25) = (1.959964 + 0.841621) * 2
    assert minimum_detectable_effect(10.0, 25) == pytest.approx(5.60317, abs=1e-4)
    assert minimum_detectable_effect(10.0, 100) == pytest.approx(5.60317 / 2, abs=1e-4)
    assert minimum_detectable_effect(10.0, 25, alpha=0.01) > 5.61
    assert math.isnan(minimum_detectable_effect(math.nan, 25))
    assert math.isnan(minimum_detectable_effect(1.0, 1))


def test_minimum_detectable_effect_has_the_stated_power():
    # A true shift of one MDE is detected about 80% of the time by a z-like test.
    rng = np.random.default_rng(12)
    sd, n = 4.0, 30
    mde = minimum_detectable_effect(sd, n)
    hits = sum(one_sample_test(rng.normal(mde, sd, n), "t")[1] < 0.05 for _ in range(400))
    assert 0.70 <= hits / 400 <= 0.88


def test_fit_systematic_error_recovers_mu_and_tau():
    rng = np.random.default_rng(13)
    k = 400
    se = rng.uniform(0.5, 2.0, k)
    est = rng.normal(2.0, 1.5, k) + rng.normal(0.0, se)  # theta_i ~ N(2, 1.5^2), plus noise
    mu, tau = fit_systematic_error(est, se)
    assert mu == pytest.approx(2.0, abs=0.3)
    assert tau == pytest.approx(1.5, abs=0.3)
    # the fit is the maximum: nudging either parameter lowers the likelihood
    from unveil.analysis.stats import _neg_loglik

    best = _neg_loglik(est, se**2, mu, tau)
    for dm, dt in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        assert _neg_loglik(est, se**2, mu + dm, tau + dt) > best


def test_fit_systematic_error_without_systematic_spread():
    rng = np.random.default_rng(14)
    se = np.full(200, 1.0)
    est = -3.0 + rng.normal(0.0, se)  # every control shifted by exactly -3 HU
    mu, tau = fit_systematic_error(est, se)
    assert mu == pytest.approx(-3.0, abs=0.25)
    assert tau < 0.35
    # identical controls with zero SE: no infinite likelihood, tau 0
    mu0, tau0 = fit_systematic_error([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert mu0 == pytest.approx(1.0) and tau0 == pytest.approx(0.0, abs=1e-3)
    assert all(math.isnan(v) for v in fit_systematic_error([1.0], [0.5]))
    with pytest.raises(ValueError):
        fit_systematic_error([1.0, 2.0], [1.0])


def test_calibrated_p_known_values_and_biased_controls():
    # no systematic error: the calibrated p is the two-sided z test
    assert calibrated_p(1.96, 1.0, 0.0, 0.0) == pytest.approx(0.05, abs=1e-3)
    # estimate exactly on the systematic error: nothing stands out
    assert calibrated_p(3.0, 0.1, 3.0, 0.5) == 1.0
    # |3 - 0| / sqrt(1^2 + 1^2) = 2.1213 -> p = 0.0339
    assert calibrated_p(3.0, 1.0, 0.0, 1.0) == pytest.approx(0.03389, abs=1e-4)
    assert calibrated_p(8.0, 1.0, 0.0, 0.0, margin=5.0) == pytest.approx(2 * 0.0013499, rel=1e-3)
    assert calibrated_p(4.0, 1.0, 0.0, 0.0, margin=5.0) == 1.0
    assert calibrated_p(0.0, 0.0, 0.0, 0.0) == 1.0 and calibrated_p(1.0, 0.0, 0.0, 0.0) == 0.0
    assert math.isnan(calibrated_p(1.0, 1.0, math.nan, 0.0))
    # Controls biased by +3 HU: a +3 HU "effect" is significant raw, not once calibrated.
    rng = np.random.default_rng(15)
    ctrl = [3.0 + rng.normal(0.0, 0.5) + rng.normal(0.0, 0.3, 20) for _ in range(12)]
    est = [c.mean() for c in ctrl]
    se = [standard_error(c) for c in ctrl]
    mu, tau = fit_systematic_error(est, se)
    assert mu == pytest.approx(3.0, abs=0.5)
    edit = 3.2 + rng.normal(0.0, 0.3, 20)
    raw = one_sample_test(edit, "t")[1]
    cal = calibrated_p(edit.mean(), standard_error(edit), mu, tau)
    assert raw < 1e-6 and cal > 0.3 and cal > raw


def test_specificity_hand_made_example():
    # Two subjects, lung of 100 voxels: peak zone of 20 (-50 HU), the rest -1 HU.
    lung_mean = (20 * -50.0 + 80 * -1.0) / 100  # -10.8
    effects = {
        "lung": np.array([lung_mean, lung_mean]),
        "upper_lung": np.array([-50.0, -50.0]),
        "lower_lung": np.array([-1.0, -1.0]),
        "airway": np.array([0.5, 1.5]),
    }
    n_vox = {
        "lung": np.array([100, 100]),
        "upper_lung": np.array([20, 20]),
        "lower_lung": np.array([40, 40]),
    }
    row = specificity(effects, n_vox, ["upper_lung", "lower_lung"], np.random.default_rng(0), 200)
    assert row["peak_region"] == "upper_lung" and row["peak_hu"] == pytest.approx(-50.0)
    assert row["spill_hu"] == pytest.approx(-1.0)
    assert row["spill_ci_low"] == pytest.approx(-1.0) == row["spill_ci_high"]
    assert row["spill_fraction"] == pytest.approx(0.02)
    assert row["airway_hu"] == pytest.approx(1.0)
    assert row["n_subjects"] == 2
    # per subject: subject 2 spills +3 HU outside a -30 HU peak (lung mean from the counts)
    effects2 = {
        "lung": np.array([(50 * -30.0 + 50 * 1.0) / 100, (50 * -30.0 + 50 * 3.0) / 100]),
        "upper_lung": np.array([-30.0, -30.0]),
    }
    n2 = {"lung": np.array([100, 100]), "upper_lung": np.array([50, 50])}
    row2 = specificity(effects2, n2, ["upper_lung"], np.random.default_rng(0), 200)
    assert row2["spill_hu"] == pytest.approx(2.0)
    assert row2["spill_fraction"] == pytest.approx(2.0 / 30.0)
    assert math.isnan(row2["airway_hu"])
    empty = specificity({"lung": np.zeros(2)}, {"lung": np.ones(2)}, [], np.random.default_rng(0))
    assert empty["peak_region"] is None and math.isnan(empty["spill_hu"])


def test_design_matrix_codes_every_attribute():
    smoking = ["current", "current", "never", "never", "never", None, None, "former"]
    rows = [
        {"age": 50 + 3 * i, "smoking": sm, "pack": None, "date": f"2020-01-{i + 1:02d}"}
        for i, sm in enumerate(smoking)
    ]
    rows[2]["pack"], rows[4]["pack"] = 10.0, 20.0
    X, info = design_matrix(rows, ["age", "smoking", "pack", "date"])
    assert list(X.columns) == [
        "const", "age", "smoking[current]", "smoking[missing]", "pack", "pack[missing]",
    ]  # fmt: skip
    assert info["smoking"]["reference"] == "never"  # the most frequent level
    assert info["smoking"]["levels"]["never"] is None
    # 'former' has one subject (leverage 1): pooled, and a pool of one into the reference
    assert info["smoking"]["pooled"] == ["former"] and "former" not in info["smoking"]["levels"]
    np.testing.assert_allclose(X["smoking[missing]"], [0, 0, 0, 0, 0, 1, 1, 0])
    assert info["pack"]["mean"] == pytest.approx(15.0)
    np.testing.assert_allclose(X["pack"], [15, 15, 10, 15, 20, 15, 15, 15])
    np.testing.assert_allclose(X["pack[missing]"], [1, 1, 0, 1, 0, 1, 1, 1])
    assert info["date"]["kind"] == "dropped"  # every value distinct: nothing to estimate
    # numbers declared to be category codes: every age distinct, so nothing is left
    X2, info2 = design_matrix(rows, ["age"], numeric={"age": False})
    assert info2["age"]["kind"] == "dropped" and list(X2.columns) == ["const"]


def test_ols_hc3_contrasts_recover_the_adjusted_effect():
    rng = np.random.default_rng(16)
    n = 300
    smoker = rng.random(n) < 0.4
    age = np.where(smoker, rng.normal(70, 6, n), rng.normal(55, 6, n))  # smokers older
    y = -850.0 - 60.0 * smoker + 1.0 * (age - 60) + rng.normal(0, 5, n)
    rows = [
        {"smoking": "current" if s else "never", "age": a} for s, a in zip(smoker, age, strict=True)
    ]
    X, _ = design_matrix(rows, ["smoking", "age"])
    raw = y[smoker].mean() - y[~smoker].mean()
    assert raw > -50.0  # confounded: the age effect hides part of the smoking effect
    res = ols_hc3_contrasts(X, y, {"smoke": {"smoking[current]": 1.0}, "age10": {"age": 10.0}})
    assert res["smoke"]["estimate"] == pytest.approx(-60.0, abs=2.0)
    assert res["smoke"]["ci_low"] < -60.0 < res["smoke"]["ci_high"]
    assert res["age10"]["estimate"] == pytest.approx(10.0, abs=1.5)
    assert res["smoke"]["n"] == n and res["smoke"]["n_parameters"] == 3
    # the HC3 standard error is the one statsmodels reports
    import statsmodels.api as sm

    fit = sm.OLS(y, X).fit(cov_type="HC3")
    assert res["smoke"]["se"] == pytest.approx(float(fit.bse["smoking[current]"]))
    # a term not in the design, and a contrast that is not estimable, give NaN
    X["dup"] = X["age"]
    res2 = ols_hc3_contrasts(X, y, {"none": {"sex[F]": 1.0}, "alias": {"dup": 1.0}})
    assert math.isnan(res2["none"]["estimate"]) and math.isnan(res2["alias"]["estimate"])


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
