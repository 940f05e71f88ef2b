"""Preprocessing: HU window map, one-hot labels, and the round trip back to the source grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unveil.config import DataConfig, PreprocessConfig
from unveil.data.io import Volume
from unveil.data.preprocess import (
    Preprocessor,
    airway_channel,
    hu_to_unit,
    lung_channels,
    mask_channel_names,
    one_hot,
    unit_to_hu,
)
from unveil.errors import DataError

WINDOW = (-1000.0, 500.0)


def _lps_affine(spacing=(1.5, 1.0, 2.0), origin=(10.0, 20.0, -5.0)) -> np.ndarray:
    """An LPS grid (i -> Left, j -> Posterior, k -> Superior) as a RAS affine."""
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = origin
    return aff


def _ramp(shape=(12, 10, 8), slope=(20.0, 15.0, 30.0), offset=-900.0) -> np.ndarray:
    """A linear ramp in HU: linear interpolation reproduces it exactly away from the edge."""
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (offset + slope[0] * i + slope[1] * j + slope[2] * k).astype(np.float32)


def _labels(shape=(12, 10, 8)) -> np.ndarray:
    i, j, _ = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    lab = np.zeros(shape, np.int16)
    lab[(i < 6) & (j > 1)] = 1
    lab[(i >= 6) & (j > 1)] = 2
    lab[(j <= 1) & (i > 3) & (i < 8)] = 3
    return lab


def test_hu_map_inverse_is_exact_in_float64():
    rng = np.random.default_rng(0)
    hu = rng.uniform(*WINDOW, size=1000)
    unit = hu_to_unit(hu, WINDOW)
    assert unit.dtype == np.float64
    assert unit.min() >= -1 and unit.max() <= 1
    np.testing.assert_allclose(unit_to_hu(unit, WINDOW), hu, rtol=0, atol=1e-9)
    # the end points and the centre map where they should
    np.testing.assert_allclose(hu_to_unit(np.array([-1000.0, -250.0, 500.0]), WINDOW), [-1, 0, 1])
    # torch, float64, same numbers
    t = torch.from_numpy(hu)
    np.testing.assert_allclose(unit_to_hu(hu_to_unit(t, WINDOW), WINDOW).numpy(), hu, atol=1e-9)


def test_hu_map_clips_outside_window_and_handles_ints():
    hu = np.array([-3000, -1000, 0, 500, 3000], dtype=np.int16)
    unit = hu_to_unit(hu, WINDOW)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit_to_hu(unit, WINDOW), [-1000, -1000, 0, 500, 500], atol=1e-3)
    t = hu_to_unit(torch.tensor([-3000, 3000]), WINDOW)
    assert t.dtype == torch.float32 and t.tolist() == [-1.0, 1.0]
    # the inverse does not clip
    assert float(unit_to_hu(np.array([1.2]), WINDOW)[0]) == pytest.approx(650.0)


def test_one_hot_order_and_values():
    cfg = DataConfig(
        labels={"airway": 3, "left_lung": 2, "right_lung": 1},
        lung_labels=["right_lung", "left_lung"],
    )
    lab = _labels()
    oh = one_hot(lab, cfg)
    assert oh.shape == (3, *lab.shape) and oh.dtype == np.float32
    assert mask_channel_names(cfg) == ["airway", "left_lung", "right_lung"]
    np.testing.assert_array_equal(oh[0], lab == 3)
    np.testing.assert_array_equal(oh[1], lab == 2)
    np.testing.assert_array_equal(oh[2], lab == 1)
    assert set(np.unique(oh)) == {0.0, 1.0}
    assert lung_channels(cfg) == [2, 1] and airway_channel(cfg) == 0
    oht = one_hot(torch.from_numpy(lab), cfg)
    assert oht.dtype == torch.float32
    np.testing.assert_array_equal(oht.numpy(), oh)


def test_round_trip_orientation_only():
    aff = _lps_affine()
    hu = _ramp()
    pre = Preprocessor(
        PreprocessConfig(orientation="RAS", spacing=None, hu_window=WINDOW), DataConfig()
    )
    p = pre.prepare(Volume(hu, aff), Volume(_labels(), aff))
    assert p.image.shape == (1, 12, 10, 8) and p.image.dtype == torch.float32
    assert float(p.image.min()) >= -1 and float(p.image.max()) <= 1
    # canonical RAS: the diagonal of the new affine is positive, spacing unchanged
    np.testing.assert_allclose(np.diag(p.affine)[:3], [1.5, 1.0, 2.0])
    # the first axis was flipped: preprocessed voxel 0 is source voxel X-1
    np.testing.assert_allclose(
        unit_to_hu(p.image[0, 0].numpy().astype(np.float64), WINDOW), hu[-1, ::-1], atol=1e-3
    )
    back = pre.to_source(p.image, p)
    assert back.shape == hu.shape and back.array.dtype == np.float32
    np.testing.assert_array_equal(back.affine, aff)
    assert np.abs(back.array - hu).max() < 1.0
    # a Preprocessor rebuilt from the same config inverts it as well (no instance coupling)
    again = Preprocessor(PreprocessConfig(spacing=None, hu_window=WINDOW), DataConfig())
    np.testing.assert_array_equal(again.to_source(p.image, p).array, back.array)
    # HU input (is_unit=False), e.g. a difference map
    diff = pre.to_source(torch.full(p.image.shape, 7.0), p, is_unit=False)
    np.testing.assert_allclose(diff.array, 7.0)


def test_round_trip_with_resampling_on_a_ramp():
    aff = _lps_affine()
    hu = _ramp()
    cfg = PreprocessConfig(spacing=(1.0, 0.7, 1.3), hu_window=WINDOW)
    pre = Preprocessor(cfg, DataConfig())
    p = pre.prepare(Volume(hu, aff), Volume(_labels(), aff))
    spatial = p.image.shape[1:]
    assert spatial != hu.shape and p.mask.shape == (3, *spatial)
    np.testing.assert_allclose(np.sqrt((p.affine[:3, :3] ** 2).sum(0)), [1.0, 0.7, 1.3], atol=1e-6)
    back = pre.to_source(p.image, p)
    assert back.shape == hu.shape
    np.testing.assert_allclose(back.affine, aff)
    err = np.abs(back.array - hu)
    assert err[1:-1, 1:-1, 1:-1].max() < 1.0
    # the border is where padding enters: it is allowed to be off, but not wildly
    assert err.max() < 50.0


def test_values_outside_window_come_back_as_window_edges():
    aff = _lps_affine()
    hu = _ramp()
    hu[2:4, 2:4, 2:4] = -3000.0
    hu[8:10, 6:8, 5:7] = 2000.0
    pre = Preprocessor(PreprocessConfig(spacing=None, hu_window=WINDOW), DataConfig())
    p = pre.prepare(Volume(hu, aff))
    assert p.mask is None and p.label_map is None
    back = pre.to_source(p.image, p).array
    np.testing.assert_allclose(back[2:4, 2:4, 2:4], -1000.0, atol=1e-3)
    np.testing.assert_allclose(back[8:10, 6:8, 5:7], 500.0, atol=1e-3)
    np.testing.assert_allclose(back, np.clip(hu, *WINDOW), atol=1e-2)


def test_mask_goes_through_nearest_and_back():
    aff = _lps_affine()
    lab = _labels()
    cfg = DataConfig()
    pre = Preprocessor(PreprocessConfig(spacing=(0.8, 0.9, 1.1)), cfg)
    p = pre.prepare(Volume(_ramp(), aff), Volume(lab, aff))
    assert set(torch.unique(p.label_map).tolist()) == {0, 1, 2, 3}
    # one-hot: one channel per label, at most one channel on per voxel, matching label_map
    assert p.mask.sum(0).max() == 1
    for c, v in enumerate(cfg.labels.values()):
        torch.testing.assert_close(p.mask[c], (p.label_map == v).float())
    # nearest: each preprocessed voxel holds the label of the source voxel nearest to it
    # in world space (bilinear would put 2s on the 1|3 borders and fail this)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in p.shape], indexing="ij"), -1)
    world = ijk @ p.affine[:3, :3].T + p.affine[:3, 3]
    src = (world - aff[:3, 3]) @ np.linalg.inv(aff[:3, :3]).T
    near = np.rint(src).astype(int)
    inside = np.all((near >= 0) & (near < np.array(lab.shape)), axis=-1)
    expect = lab[tuple(near[inside].T)]
    assert (p.label_map.numpy()[inside] == expect).mean() > 0.98
    # every label keeps roughly its volume in mm^3 (nearest does not grow or shrink it)
    src_vox = np.prod(np.abs(np.diag(aff))[:3])
    dst_vox = 0.8 * 0.9 * 1.1
    for v in (1, 2, 3):
        src = (lab == v).sum() * src_vox
        dst = float((p.label_map == v).sum()) * dst_vox
        assert abs(dst - src) / src < 0.25
    back = pre.labels_to_source(p.label_map, p)
    assert back.array.dtype == np.int32 and set(np.unique(back.array)) <= {0, 1, 2, 3}
    assert (back.array == lab).mean() > 0.95


def test_bad_masks_are_refused_with_one_sentence():
    aff = _lps_affine()
    pre = Preprocessor(PreprocessConfig(), DataConfig())
    with pytest.raises(DataError, match="not on the grid"):
        pre.prepare(Volume(_ramp(), aff), Volume(_labels(), np.eye(4)))
    lab = _labels()
    lab[0, 0, 0] = 7
    with pytest.raises(DataError, match="label values 7"):
        pre.prepare(Volume(_ramp(), aff), Volume(lab, aff))


def test_to_source_checks_the_shape():
    aff = _lps_affine()
    pre = Preprocessor(PreprocessConfig(), DataConfig())
    p = pre.prepare(Volume(_ramp(), aff))
    with pytest.raises(ValueError, match="preprocessed grid"):
        pre.to_source(torch.zeros(1, 4, 4, 4), p)


def test_position_channel_runs_from_lung_base_to_apex_in_world_space():
    from unveil.config import DataConfig, PreprocessConfig
    from unveil.data.io import Volume
    from unveil.data.preprocess import POSITION_CHANNEL, Preprocessor

    labels = np.zeros((8, 8, 12), dtype=np.int16)
    labels[2:4, 2:6, 3:9] = 1
    labels[5:7, 2:6, 3:9] = 2
    image = Volume(np.full(labels.shape, -800.0, dtype=np.float32), np.eye(4))
    pre = Preprocessor(PreprocessConfig(position_channel=True), DataConfig())
    assert pre.mask_channels[-1] == POSITION_CHANNEL
    prep = pre.prepare(image, Volume(labels, np.eye(4)))
    height = prep.mask[-1].numpy()
    assert prep.mask.shape[0] == 4
    assert height[:, :, 3].max() == pytest.approx(-1.0) and height[:, :, 8].min() == pytest.approx(
        1.0
    )
    assert np.all(np.diff(height[4, 4, :]) > 0)  # increases towards superior (RAS +z)
    # Stored upside down (z flipped in the affine): the same anatomy gets the same map.
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    flip[2, 3] = 11.0
    prep2 = pre.prepare(
        Volume(image.array[:, :, ::-1].copy(), flip), Volume(labels[:, :, ::-1].copy(), flip)
    )
    back = pre.to_source(prep2.mask[-1:].clone(), prep2, is_unit=False).array
    assert np.allclose(back[:, :, ::-1], height, atol=1e-5)
