"""Known answers for FID, KID, the FID inputs, feature-network loading and HU Wasserstein."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from unveil.errors import UnveilError
from unveil.metrics.distribution import (
    draw_subsets,
    fid,
    histogram_distances,
    kid,
    region_wasserstein,
)
from unveil.metrics.features import (
    FeatureExtractor,
    RandomProjectionFeatures,
    load_feature_network,
    slices_for_fid,
    volumes_for_fid,
)

WINDOW = (-1000.0, 500.0)


# --------------------------------------------------------------------------- FID


def test_fid_of_a_set_with_itself_is_zero_and_a_mean_shift_gives_its_square():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-8)
    delta = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    # same covariance, means apart by delta: FID = |delta|^2 exactly
    assert fid(a, a + delta) == pytest.approx(float(delta @ delta), rel=1e-8)
    values = [fid(a, a + s) for s in (0.5, 1.0, 2.0)]
    assert values[0] < values[1] < values[2]


def test_fid_matches_the_sqrtm_formula():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(80, 5)) @ rng.normal(size=(5, 5)) + 0.3
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    d = a.mean(0) - b.mean(0)
    ref = d @ d + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean)
    assert fid(a, b) == pytest.approx(ref, rel=1e-6)


def test_fid_on_windowed_slices_grows_with_an_hu_shift():
    rng = np.random.default_rng(2)
    net = RandomProjectionFeatures(dim=16, grid=4, seed=0)
    vols = [rng.uniform(-950, -300, size=(16, 16, 12)) for _ in range(4)]

    def feats(shift):
        return net.extract_2d(np.concatenate([slices_for_fid(v + shift, WINDOW) for v in vols]))

    base = feats(0.0)
    assert fid(base, feats(0.0)) == pytest.approx(0.0, abs=1e-8)
    f = [fid(base, feats(s)) for s in (25.0, 50.0, 100.0)]
    assert 0 < f[0] < f[1] < f[2]


# --------------------------------------------------------------------------- KID


def test_kid_subsets_are_drawn_without_replacement_and_capped():
    idx_a, idx_b = draw_subsets(30, 12, subsets=20, subset_size=1000, rng=np.random.default_rng(0))
    assert idx_a.shape == (20, 12) and idx_b.shape == (20, 12)  # capped at the smaller set
    for row in idx_a:
        assert len(set(row.tolist())) == 12 and row.max() < 30
    for row in idx_b:
        assert sorted(row.tolist()) == list(range(12))  # the whole smaller set, each once
    assert len({tuple(r) for r in idx_a.tolist()}) > 1  # subsets differ


def test_kid_uses_those_subsets_and_the_unbiased_cubic_kernel_estimate():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(15, 3)), rng.normal(size=(15, 3)) + 0.5
    idx_a, idx_b = draw_subsets(15, 15, 4, 6, np.random.default_rng(7))
    vals = []
    for ia, ib in zip(idx_a, idx_b, strict=True):
        x, y = a[ia], b[ib]
        k = lambda p, q: (p @ q / 3 + 1) ** 3  # noqa: E731
        xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
        yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
        xy = sum(k(x[i], y[j]) for i in range(6) for j in range(6)) / 36
        vals.append(xx + yy - 2 * xy)
    mean, std = kid(a, b, subsets=4, subset_size=6, rng=np.random.default_rng(7))
    assert mean == pytest.approx(np.mean(vals), rel=1e-10)
    assert std == pytest.approx(np.std(vals), rel=1e-10)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_larger_when_shifted():
    rng = np.random.default_rng(4)
    m, dim, trials = 20, 4, 300
    unbiased, biased = [], []
    for _ in range(trials):
        a, b = rng.normal(size=(m, dim)), rng.normal(size=(m, dim))
        unbiased.append(kid(a, b, subsets=1, subset_size=m, rng=rng)[0])
        # the biased (V-statistic) estimate keeps the diagonal terms
        k = lambda p, q: (p @ q.T / dim + 1) ** 3  # noqa: E731
        biased.append(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())
    se = np.std(unbiased) / np.sqrt(trials)
    assert abs(np.mean(unbiased)) < 3 * se
    assert min(unbiased) < 0  # unbiased estimates scatter around 0, below it too
    assert np.mean(biased) > 10 * se
    a, b = rng.normal(size=(200, dim)), rng.normal(size=(200, dim))
    same, _ = kid(a, b, subsets=50, subset_size=100, rng=rng)
    shifted = [kid(a, b + s, subsets=50, subset_size=100, rng=rng)[0] for s in (0.5, 1.0)]
    assert abs(same) < 0.1 * shifted[0] and shifted[0] < shifted[1]


# --------------------------------------------------------------------------- FID inputs


def test_slices_for_fid_windows_and_replicates_one_slice():
    vol = np.full((6, 5, 4), -1000.0)
    vol[:, :, 1] = 500.0
    vol[:, :, 2] = -250.0
    vol[0, 0, 3] = 2000.0
    s = slices_for_fid(vol, WINDOW)
    assert s.shape == (4, 3, 6, 5) and s.dtype == np.float32
    assert np.array_equal(s[:, 0], s[:, 1]) and np.array_equal(s[:, 0], s[:, 2])
    assert np.all(s[0] == 0.0) and np.all(s[1] == 1.0) and np.allclose(s[2], 0.5)
    assert s[3, 0, 0, 0] == 1.0 and s[3, 0, 1, 1] == 0.0
    assert slices_for_fid(vol, WINDOW, every=2).shape == (2, 3, 6, 5)
    assert slices_for_fid(vol, WINDOW, size=8).shape == (4, 3, 8, 8)
    mask = np.zeros_like(vol, bool)
    mask[2, 2, 2] = True
    only = slices_for_fid(vol, WINDOW, mask=mask)
    assert only.shape == (1, 3, 6, 5) and np.allclose(only, 0.5)
    assert slices_for_fid(vol, WINDOW, axis=0).shape == (6, 3, 5, 4)


def test_an_hu_shift_changes_the_slices_unlike_per_slice_min_max():
    rng = np.random.default_rng(5)
    vol = rng.uniform(-900, -200, size=(8, 8, 3))
    a = slices_for_fid(vol, WINDOW)
    b = slices_for_fid(vol + 100.0, WINDOW)
    np.testing.assert_allclose(b - a, 100.0 / 1500.0, atol=1e-6)

    def minmax(x):  # what the published code did: blind to the shift
        return (x - x.min()) / (x.max() - x.min())

    np.testing.assert_allclose(minmax(vol[:, :, 0]), minmax(vol[:, :, 0] + 100.0), atol=1e-12)


def test_volumes_for_fid_and_random_features():
    vols = [np.full((8, 8, 8), -1000.0), np.full((8, 8, 8), 500.0)]
    v = volumes_for_fid(vols, WINDOW)
    assert v.shape == (2, 1, 8, 8, 8) and v[0].max() == 0.0 and v[1].min() == 1.0
    assert volumes_for_fid([np.zeros((8, 8, 8)), np.zeros((6, 6, 6))], WINDOW, size=4).shape == (
        2, 1, 4, 4, 4,
    )  # fmt: skip
    with pytest.raises(ValueError, match="size="):
        volumes_for_fid([np.zeros((8, 8, 8)), np.zeros((6, 6, 6))], WINDOW)
    net = RandomProjectionFeatures(dim=5, grid=2, seed=3)
    assert isinstance(net, FeatureExtractor)
    f3 = net.extract_3d(v)
    assert f3.shape == (2, 5)
    assert np.array_equal(f3, RandomProjectionFeatures(dim=5, grid=2, seed=3).extract_3d(v))
    assert not np.allclose(f3, RandomProjectionFeatures(dim=5, grid=2, seed=4).extract_3d(v))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        net.extract_3d(np.full((2, 1, 4, 4, 4), -500.0))  # raw HU by mistake


# --------------------------------------------------------------------------- networks


def test_missing_feature_network_is_one_sentence():
    for kind in ("2d", "3d"):
        with pytest.raises(UnveilError) as exc:
            load_feature_network(None, kind)
        msg = str(exc.value)
        assert "\n" not in msg and ". " not in msg and msg.endswith(".")
        assert "FID and KID" in msg and "torch.jit.trace" in msg and "weight-free" in msg


class _Tiny2d(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)  # a feature map (B, 4, H-2, W-2): pooled by the extractor


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_torchscript_network_round_trip_and_bad_files(tmp_path):
    torch.manual_seed(0)
    net = _Tiny2d().eval()
    path = tmp_path / "net.pt"
    torch.jit.trace(net, torch.rand(1, 3, 8, 8)).save(str(path))
    ext = load_feature_network(path, "2d", batch_size=2)
    x = np.random.default_rng(0).uniform(size=(5, 3, 8, 8)).astype(np.float32)
    f = ext.extract_2d(x)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).mean(dim=(2, 3)).double().numpy()
    assert f.shape == (5, 4) and np.allclose(f, ref, atol=1e-5)
    with pytest.raises(UnveilError, match="loaded as 2d"):
        ext.extract_3d(np.zeros((1, 1, 4, 4, 4), np.float32))
    with pytest.raises(UnveilError, match="does not exist"):
        load_feature_network(tmp_path / "nope.pt", "2d")
    sd = tmp_path / "state.pt"
    torch.save(net.state_dict(), sd)
    with pytest.raises(UnveilError, match="is not a TorchScript"):
        load_feature_network(sd, "2d")


def test_exported_pt2_network_loads(tmp_path):
    torch.manual_seed(0)
    net = _Tiny2d().eval()
    batch = torch.export.Dim("batch", min=1)
    ep = torch.export.export(net, (torch.rand(2, 3, 8, 8),), dynamic_shapes={"x": {0: batch}})
    path = tmp_path / "net.pt2"
    torch.export.save(ep, str(path))
    ext = load_feature_network(path, "2d", batch_size=3)
    x = np.random.default_rng(1).uniform(size=(4, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).mean(dim=(2, 3)).double().numpy()
    assert np.allclose(ext.extract_2d(x), ref, atol=1e-5)


# --------------------------------------------------------------------------- HU histograms


def test_region_wasserstein_known_values():
    rng = np.random.default_rng(6)
    x = rng.normal(-850, 60, size=2000)
    assert region_wasserstein(x, x) == 0.0
    assert region_wasserstein(x, x + 30.0) == pytest.approx(30.0, abs=1e-9)
    assert region_wasserstein(x, x[:500] - 30.0) > 0
    with pytest.raises(ValueError):
        region_wasserstein(x, np.empty(0))


def test_histogram_distances_per_region():
    rng = np.random.default_rng(7)
    shape = (8, 8, 8)
    lung = np.zeros(shape, bool)
    lung[2:6, 2:6, 2:6] = True
    masks = {"lung": lung, "outside": ~lung, "empty": np.zeros(shape, bool)}
    reals = [rng.normal(-500, 200, size=shape) for _ in range(2)]
    fakes = [r + 30.0 * lung for r in reals]
    d = histogram_distances(reals, fakes, [masks, masks])
    assert d["lung"] == pytest.approx(30.0, abs=1e-9)
    assert d["outside"] == pytest.approx(0.0, abs=1e-12)
    assert d["empty"] is None
    # unequal sets need the generated volumes' own masks
    with pytest.raises(ValueError, match="fake_region_masks"):
        histogram_distances(reals, fakes[:1], [masks, masks])
    d1 = histogram_distances(reals, fakes[:1], [masks, masks], [masks])
    assert d1["lung"] > 0
    # clipping to the window removes differences above it
    hi = [np.full(shape, 900.0)]
    assert histogram_distances(hi, [np.full(shape, 600.0)], [masks], hu_window=WINDOW)[
        "lung"
    ] == pytest.approx(0.0)
