"""Region masks: exact partitions, world orientation, intersections, vocabulary errors."""

from __future__ import annotations

import numpy as np
import pytest

from unveil.config import DataConfig
from unveil.data.regions import REGIONS, parse_region, region_mask, region_masks
from unveil.errors import ConfigError


def _labels() -> tuple[np.ndarray, np.ndarray]:
    """A 16 x 12 x 18 label map with two box lungs (1 at high i = +x, 2 at low i) and an airway."""
    lab = np.zeros((16, 12, 18), dtype=np.uint8)
    lab[9:15, 2:10, 2:17] = 1
    lab[1:7, 2:10, 4:16] = 2
    lab[7:9, 5:7, 10:18] = 3
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = [-12.0, -10.0, -20.0]
    return lab, affine


def _flip(lab: np.ndarray, affine: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip the array along ``axis`` and the affine with it: same anatomy in world space."""
    n = lab.shape[axis]
    flip = np.eye(4)
    flip[axis, axis] = -1.0
    flip[axis, 3] = n - 1
    return np.flip(lab, axis=axis).copy(), affine @ flip


def test_partitions_are_exact():
    lab, aff = _labels()
    m = region_masks(lab, aff)
    assert tuple(m) == REGIONS
    lung = m["lung"]
    assert lung.sum() == np.isin(lab, [1, 2]).sum()
    for parts in (
        ("upper_lung", "middle_lung", "lower_lung"),
        ("lung_core", "lung_periphery"),
        ("right_lung", "left_lung"),
    ):
        stack = np.stack([m[p] for p in parts]).astype(int)
        assert (stack.sum(0) <= 1).all(), f"{parts} overlap"
        assert np.array_equal(stack.sum(0) > 0, lung), f"{parts} do not cover the lungs"
        assert all(m[p].any() for p in parts)
    assert np.array_equal(m["airway"], lab == 3)
    assert np.array_equal(m["right_lung"], lab == 1)


def test_zones_follow_world_superior_axis():
    lab, aff = _labels()
    m = region_masks(lab, aff)
    k = np.arange(lab.shape[2])[None, None, :] * np.ones(lab.shape)
    z = aff[2, 2] * k + aff[2, 3]
    lung_z = z[m["lung"]]
    z0, length = lung_z.min(), lung_z.max() - lung_z.min()
    assert z[m["upper_lung"]].min() >= z0 + 2 * length / 3
    assert z[m["lower_lung"]].max() < z0 + length / 3
    # Core lies deeper than periphery: the box centre is core, the box faces periphery.
    assert m["lung_core"][11, 6, 9] and m["lung_periphery"][9, 6, 9]


@pytest.mark.parametrize("axis", [0, 2])
def test_flipping_array_and_affine_gives_same_world_regions(axis):
    lab, aff = _labels()
    ref = region_masks(lab, aff)
    lab_f, aff_f = _flip(lab, aff, axis)
    got = region_masks(lab_f, aff_f)
    for name in REGIONS:
        assert np.array_equal(np.flip(got[name], axis=axis), ref[name]), name


def test_upper_zone_ignores_array_order_for_inferior_first_scans():
    # An LPI-like affine: k increases towards inferior; the upper zone must sit at low k.
    lab, aff = _labels()
    aff2 = aff.copy()
    aff2[2, 2] = -aff2[2, 2]
    upper = region_masks(lab, aff2)["upper_lung"]
    ks = np.nonzero(upper)[2]
    lung_ks = np.nonzero(np.isin(lab, [1, 2]))[2]
    assert ks.max() < lung_ks.mean()


def test_periphery_uses_mm_spacing():
    # A slab 6 voxels thick in i (1 mm) and 30 in j (5 mm): depth is limited by i, so the
    # periphery is the outer third along i, not along j.
    lab = np.zeros((8, 32, 32), dtype=np.uint8)
    lab[1:7, 1:31, 1:31] = 1
    aff = np.diag([1.0, 5.0, 5.0, 1.0])
    m = region_masks(lab, aff, names=["lung_core", "lung_periphery"])
    assert m["lung_core"][3, 15, 15] and m["lung_periphery"][1, 15, 15]
    assert not m["lung_core"][:, 1, 15].any()  # the j face is surface: periphery


def test_intersection_and_vocabulary():
    lab, aff = _labels()
    m = region_masks(lab, aff, names=["lower_lung&lung_periphery"])
    full = region_masks(lab, aff)
    assert np.array_equal(
        m["lower_lung&lung_periphery"], full["lower_lung"] & full["lung_periphery"]
    )
    assert np.array_equal(region_mask(lab, aff, "right_lung"), lab == 1)
    assert parse_region(" lower_lung & lung_core ") == ("lower_lung", "lung_core")
    with pytest.raises(ConfigError, match="valid names are lung, right_lung"):
        parse_region("upper_lobe")
    with pytest.raises(ConfigError, match="'bogus'"):
        region_masks(lab, aff, names=["lung&bogus"])


def test_custom_labels_and_missing_airway():
    lab, aff = _labels()
    cfg = DataConfig(labels={"lungs": 1, "other": 2}, lung_labels=["lungs"], airway_label=None)
    m = region_masks(lab, aff, cfg)
    assert np.array_equal(m["lung"], lab == 1)
    assert not m["airway"].any()
    assert np.array_equal(m["right_lung"] | m["left_lung"], lab == 1)
    assert not (m["right_lung"] & m["left_lung"]).any()
