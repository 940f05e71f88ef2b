"""Known answers for paired fidelity, Dice and the bootstrap intervals over subjects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unveil.metrics.intervals import mean_ci, median_ci, summarize
from unveil.metrics.paired import (
    body_mask,
    dice,
    mask_consistency,
    ms_ssim_min_size,
    paired_fidelity,
    window01,
)

WINDOW = (-1000.0, 500.0)


def _ct(shape=(16, 16, 16), seed=0):
    """Smooth-ish random HU volume well inside the window, and a lung cube."""
    rng = np.random.default_rng(seed)
    hu = rng.uniform(-900.0, -100.0, size=shape)
    lung = np.zeros(shape, dtype=bool)
    lung[4:12, 4:12, 4:12] = True
    return hu, lung


def test_identical_volumes_give_mae_0_ssim_1_psnr_inf():
    hu, lung = _ct(shape=(20, 20, 20))
    r = paired_fidelity(hu, hu.copy(), lung, WINDOW)
    assert r["mae_hu"] == 0.0 and r["mae_hu_lung"] == 0.0 and r["mae_hu_outside"] == 0.0
    assert r["psnr"] == math.inf and r["psnr_lung"] == math.inf and r["psnr_outside"] == math.inf
    assert r["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert r["ssim_lung"] == pytest.approx(1.0, abs=1e-5)
    assert r["ssim_outside"] == pytest.approx(1.0, abs=1e-5)
    assert r["ssim_kernel"] == 11
    assert r["n_lung"] == 512 and r["n_outside"] == 20**3 - 512
    # the valid-convolution SSIM map of an 11-kernel covers voxels 5..14 only; on 16^3 it
    # lies inside the lung cube, so the outside SSIM is missing rather than made up
    hu16, lung16 = _ct()
    assert paired_fidelity(hu16, hu16, lung16, WINDOW)["ssim_outside"] is None


def test_shift_inside_lung_gives_exact_region_and_overall_mae():
    hu, lung = _ct()
    fake = hu + 10.0 * lung
    r = paired_fidelity(hu, fake, lung, WINDOW)
    assert r["mae_hu_lung"] == pytest.approx(10.0, abs=1e-9)
    assert r["mae_hu_outside"] == 0.0
    assert r["mae_hu"] == pytest.approx(10.0 * 512 / 16**3, abs=1e-9)
    # PSNR with data range = window width (1500 HU) and MSE = 100 HU^2 inside the lung.
    assert r["psnr_lung"] == pytest.approx(10 * math.log10(1500.0**2 / 100.0), abs=1e-9)
    assert r["psnr"] == pytest.approx(10 * math.log10(1500.0**2 / (100.0 * 512 / 4096)), abs=1e-9)
    assert r["psnr_outside"] == math.inf
    assert r["ssim_lung"] < 1.0


def test_values_are_clipped_to_the_window_before_comparison():
    hu, lung = _ct()
    real = hu.copy()
    real[0, 0, 0] = 900.0  # bone above the window
    fake = hu.copy()
    fake[0, 0, 0] = 500.0  # the most the generator can produce
    r = paired_fidelity(real, fake, lung, WINDOW)
    assert r["mae_hu"] == 0.0


def test_body_mask_limits_outside_and_is_found():
    shape = (16, 16, 16)
    hu = np.full(shape, -1000.0)
    hu[2:14, 2:14, :] = 40.0  # body
    hu[5:11, 5:11, :] = -850.0  # lung inside it (a hole in every axial slice)
    lung = hu < -800
    lung[:2], lung[14:], lung[:, :2], lung[:, 14:] = False, False, False, False
    body = body_mask(hu)
    assert body.sum() == 12 * 12 * 16  # holes (the lungs) filled slice by slice
    r = paired_fidelity(hu, hu + 5.0, lung, WINDOW, body_mask=body)
    assert r["n_outside"] == 12 * 12 * 16 - 6 * 6 * 16
    assert r["mae_hu_outside"] == pytest.approx(5.0)


def test_ms_ssim_reports_reason_when_too_small_and_a_value_when_large_enough():
    assert ms_ssim_min_size(11, 5) == 176
    assert ms_ssim_min_size(7, 5) == 112
    assert ms_ssim_min_size(3, 3) == 12
    hu, lung = _ct()
    r = paired_fidelity(hu, hu + 1.0, lung, WINDOW)
    assert r["ms_ssim"] is None
    assert "112" in r["ms_ssim_reason"] and "16" in r["ms_ssim_reason"]
    ok = paired_fidelity(hu, hu, lung, WINDOW, ms_ssim_kernel=3, ms_ssim_scales=3)
    assert ok["ms_ssim_reason"] is None
    assert ok["ms_ssim"] == pytest.approx(1.0, abs=1e-5)
    noisy = hu + np.random.default_rng(1).normal(0, 150, size=hu.shape)
    worse = paired_fidelity(hu, noisy, lung, WINDOW, ms_ssim_kernel=3, ms_ssim_scales=3)
    assert 0.0 < worse["ms_ssim"] < 0.99
    small = paired_fidelity(hu[:11, :11, :11], hu[:11, :11, :11], lung[:11, :11, :11], WINDOW,
                            ms_ssim_kernel=3, ms_ssim_scales=3)  # fmt: skip
    assert small["ms_ssim"] is None and "12" in small["ms_ssim_reason"]


def test_ssim_kernel_shrinks_on_small_volumes_and_noise_lowers_ssim():
    hu, lung = _ct(shape=(8, 8, 8))
    lung = np.zeros((8, 8, 8), bool)
    lung[2:6, 2:6, 2:6] = True
    r = paired_fidelity(hu, hu + np.random.default_rng(2).normal(0, 200, hu.shape), lung, WINDOW)
    assert r["ssim_kernel"] == 7
    assert r["ssim"] < 0.95
    # the 2-voxel map of a 7-kernel on 8^3 covers voxels 3..4 of each axis: inside the lung
    assert r["ssim_lung"] == pytest.approx(r["ssim"])


def test_window01_maps_window_ends_to_0_and_1():
    x = window01(np.array([-2000.0, -1000.0, -250.0, 500.0, 3000.0]), WINDOW)
    np.testing.assert_allclose(x, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_dice_known_values_and_mask_consistency():
    a = np.zeros((8, 8, 8), bool)
    a[:4] = True
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # empty-empty agrees
    assert dice(a, np.zeros_like(a)) == 0.0
    b = np.zeros_like(a)
    b[2:6] = True
    assert dice(a, b) == pytest.approx(0.5)
    labels = np.zeros((8, 8, 8), np.int16)
    labels[:4] = 1
    labels[4:] = 2
    derived = labels.copy()
    derived[4:6] = 1  # half of the left lung taken for the right one
    d = mask_consistency(derived, labels, {"lung": (1, 2), "right_lung": 1, "left_lung": 2})
    assert d["dice_lung"] == 1.0
    assert d["dice_right_lung"] == pytest.approx(2 * 256 / (384 + 256))
    assert d["dice_left_lung"] == pytest.approx(2 * 128 / (128 + 256))


def test_mean_ci_edge_cases():
    rng = np.random.default_rng(0)
    assert all(math.isnan(v) for v in mean_ci([], rng))
    m, lo, hi = mean_ci([3.0], rng)
    assert m == 3.0 and math.isnan(lo) and math.isnan(hi)
    assert mean_ci([2.0, 2.0, 2.0], rng) == (2.0, 2.0, 2.0)
    m, lo, hi = mean_ci([1.0, None, float("nan"), 3.0], rng)
    assert m == 2.0 and 1.0 <= lo <= m <= hi <= 3.0
    # inf is kept (never NaN): mean inf, bounds are real resampled statistics.
    m, lo, hi = mean_ci([30.0, 31.0, math.inf], rng, n_boot=500)
    assert m == math.inf and hi == math.inf and not math.isnan(lo)
    # the median stays finite while fewer than half of the subjects are infinite
    med, lo, hi = median_ci([30.0, 31.0, 32.0, 33.0, math.inf], rng, n_boot=500)
    assert med == 32.0 and math.isfinite(lo)


def test_mean_ci_coverage_is_near_nominal():
    rng = np.random.default_rng(1)
    hits = 0
    reps = 300
    for _ in range(reps):
        x = rng.normal(5.0, 2.0, size=30)
        _, lo, hi = mean_ci(x, rng, n_boot=400)
        hits += lo <= 5.0 <= hi
    # percentile bootstrap with n=30 covers a bit under 95 %; far off means a bug
    assert 0.86 <= hits / reps <= 0.99


def test_summarize_skips_non_numbers_and_uses_the_median_where_asked():
    recs = [
        {"id": "a", "mae_hu": 10.0, "psnr": 40.0, "ms_ssim": None, "ms_ssim_reason": "small"},
        {"id": "b", "mae_hu": 20.0, "psnr": math.inf, "ms_ssim": None, "ms_ssim_reason": "small"},
        {"id": "c", "mae_hu": 30.0, "psnr": 42.0, "ms_ssim": None, "ms_ssim_reason": "small"},
    ]
    s = summarize(recs, np.random.default_rng(0), n_boot=300, statistic={"psnr": "median"})
    assert list(s) == ["mae_hu", "psnr"]
    assert s["mae_hu"][0] == 20.0 and 10.0 <= s["mae_hu"][1] <= 20.0 <= s["mae_hu"][2] <= 30.0
    assert s["psnr"][0] == 42.0
    s2 = summarize(recs, np.random.default_rng(0), n_boot=300)
    assert s2["psnr"][0] == math.inf
    # the same generator seed gives the same intervals
    assert summarize(recs, np.random.default_rng(5), n_boot=50) == summarize(
        recs, np.random.default_rng(5), n_boot=50
    )


def test_separable_ssim_and_ms_ssim_equal_monai():
    import torch
    from monai.metrics.regression import compute_ms_ssim, compute_ssim_and_cs

    from unveil.metrics.paired import MS_SSIM_WEIGHTS, _ms_ssim, _ssim_map

    rng = np.random.default_rng(3)
    a = rng.uniform(size=(16, 14, 12))
    b = np.clip(a + rng.normal(0, 0.1, size=a.shape), 0, 1)
    ta, tb = (torch.from_numpy(v).float()[None, None] for v in (a, b))
    for k in (5, 11):
        ref, _ = compute_ssim_and_cs(tb, ta, spatial_dims=3, kernel_size=(k,) * 3,
                                     kernel_sigma=(1.5,) * 3)  # fmt: skip
        np.testing.assert_allclose(_ssim_map(a, b, k, 1.5), ref[0, 0].numpy(), atol=2e-5)
    for k, scales in ((3, 3), (5, 2)):
        w = np.asarray(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
        ref = compute_ms_ssim(tb, ta, spatial_dims=3, kernel_size=k, weights=tuple(w.tolist()))
        ours, reason = _ms_ssim(a, b, k, scales, 1.5)
        assert reason is None and ours == pytest.approx(float(ref.reshape(-1)[0]), abs=2e-5)


def test_subject_bootstrap_gives_an_interval_for_a_set_level_figure():
    from unveil.metrics.distribution import fid
    from unveil.metrics.intervals import subject_bootstrap

    rng = np.random.default_rng(8)
    real = [rng.normal(size=(10, 3)) for _ in range(8)]  # 8 subjects, 10 slices each
    fake = [g + 1.0 for g in real]
    point, lo, hi = subject_bootstrap(real, fake, fid, np.random.default_rng(0), n_boot=100)
    assert point == pytest.approx(3.0, rel=1e-6)  # a mean shift of 1 in 3 dimensions
    # paired resampling keeps each subject with its own shifted copy: the shift is exact
    assert lo == pytest.approx(3.0, rel=1e-6) and hi == pytest.approx(3.0, rel=1e-6)
    noisy = [rng.normal(size=(10, 3)) + 1.0 for _ in range(8)]
    point, lo, hi = subject_bootstrap(real, noisy, fid, np.random.default_rng(0), n_boot=100)
    assert lo < point < hi and lo > 0.5
    unpaired = subject_bootstrap(real, noisy[:5], fid, np.random.default_rng(0), 50, paired=False)
    assert unpaired[1] < unpaired[2]
    with pytest.raises(ValueError, match="paired=False"):
        subject_bootstrap(real, noisy[:5], fid, np.random.default_rng(0))
    assert math.isnan(subject_bootstrap(real[:1], fake[:1], fid, np.random.default_rng(0))[1])
