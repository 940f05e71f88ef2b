"""Known answers for the weight-free texture statistics."""

from __future__ import annotations

import numpy as np
import pytest

from unveil.metrics.texture import (
    FEATURES,
    texture_distance,
    texture_stats,
    texture_stats_regions,
)


def test_laa_and_haa_percentages_on_a_constructed_volume():
    hu = np.full((8, 8, 8), -900.0)
    hu[:4, :4, :4] = -980.0  # 64 emphysema-like voxels
    hu[4:, 4:, 4:6] = -400.0  # 32 ground-glass-like voxels
    hu[0, 7, 7] = -950.0  # on the threshold: not below it
    hu[1, 7, 7] = -600.0  # band edges are included
    hu[2, 7, 7] = -250.0
    s = texture_stats(hu, np.ones_like(hu, bool))
    assert s["n_voxels"] == 512
    assert s["laa950_pct"] == pytest.approx(100 * 64 / 512)
    assert s["haa_pct"] == pytest.approx(100 * 34 / 512)


def test_first_order_statistics_match_their_definitions():
    rng = np.random.default_rng(0)
    hu = rng.normal(-800, 50, size=(10, 10, 10))
    mask = np.zeros(hu.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    hu[~mask] = 3000.0  # outside the region: must not count
    s = texture_stats(hu, mask)
    v = hu[mask]
    assert s["mean_hu"] == pytest.approx(v.mean())
    assert s["sd_hu"] == pytest.approx(v.std())
    assert s["p5_hu"] == pytest.approx(np.percentile(v, 5))
    assert s["p50_hu"] == pytest.approx(np.median(v))
    assert s["p95_hu"] == pytest.approx(np.percentile(v, 95))
    z = (v - v.mean()) / v.std()
    assert s["skewness"] == pytest.approx((z**3).mean())
    assert s["kurtosis"] == pytest.approx((z**4).mean() - 3.0)
    assert abs(s["skewness"]) < 0.3 and abs(s["kurtosis"]) < 0.5  # Gaussian-ish


def test_glcm_contrast_and_homogeneity_known_on_stripes():
    # rows alternate between the two ends of the window: 64 levels -> grey levels 0 and 63
    hu = np.empty((8, 8, 3))
    hu[0::2] = -1000.0
    hu[1::2] = 500.0
    mask = np.ones(hu.shape, bool)
    along = texture_stats(hu, mask, glcm_angles=(0.0,))  # pairs within a row: same level
    across = texture_stats(hu, mask, glcm_angles=(np.pi / 2,))  # pairs across rows
    assert along["glcm_contrast"] == pytest.approx(0.0)
    assert along["glcm_homogeneity"] == pytest.approx(1.0)
    assert across["glcm_contrast"] == pytest.approx(63.0**2)
    assert across["glcm_homogeneity"] == pytest.approx(1.0 / (1.0 + 63.0**2))


def test_glcm_ignores_pairs_that_leave_the_region():
    rng = np.random.default_rng(1)
    hu = rng.uniform(-950, -700, size=(12, 12, 4))
    mask = np.zeros(hu.shape, bool)
    mask[3:9, 3:9, :] = True
    a = texture_stats(hu, mask)
    other = hu.copy()
    other[~mask] = rng.uniform(-1000, 500, size=(~mask).sum())
    b = texture_stats(other, mask)
    assert a["glcm_contrast"] == pytest.approx(b["glcm_contrast"])
    assert a["glcm_homogeneity"] == pytest.approx(b["glcm_homogeneity"])
    assert a["glcm_contrast"] > 0


def test_constant_and_empty_regions():
    hu = np.full((6, 6, 6), -850.0)
    s = texture_stats(hu, np.ones(hu.shape, bool))
    assert s["sd_hu"] == 0.0 and s["skewness"] is None and s["kurtosis"] is None
    assert s["glcm_contrast"] == 0.0 and s["glcm_homogeneity"] == 1.0
    e = texture_stats(hu, np.zeros(hu.shape, bool))
    assert e["n_voxels"] == 0 and all(e[k] is None for k in FEATURES)


def test_texture_distance_flat_and_per_region():
    rng = np.random.default_rng(2)
    hu = rng.normal(-850, 40, size=(8, 8, 8))
    lung = np.zeros(hu.shape, bool)
    lung[2:6, 2:6, 2:6] = True
    masks = {"lung": lung, "rest": ~lung}
    real = texture_stats_regions(hu, masks)
    fake = texture_stats_regions(hu + 30.0 * lung, masks)
    d = texture_distance(real, fake)
    assert d["lung/mean_hu"] == pytest.approx(30.0)
    assert d["lung/p50_hu"] == pytest.approx(30.0)
    assert d["lung/sd_hu"] == pytest.approx(0.0, abs=1e-9)
    assert d["rest/mean_hu"] == 0.0 and d["rest/laa950_pct"] == 0.0
    assert "lung/n_voxels" not in d
    flat = texture_distance(real["lung"], real["lung"])
    assert set(flat) == set(FEATURES) and all(v == 0.0 for v in flat.values())
    assert texture_distance({"skewness": None}, {"skewness": 1.0}) == {"skewness": None}
