"""Tests of unveil.data.lungmask and ``unveil lungmask``.

A phantom made here (an elliptic body, two air boxes, a vertical tube) has a known
answer, checked voxel for voxel; the committed real-anatomy fixture must be re-derived
exactly; the real CT in ``../shared`` (skipped where absent) must give plausible lungs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from unveil.cli import main
from unveil.config import DataConfig
from unveil.data.io import Volume, read_volume, write_volume
from unveil.data.lungmask import lung_volume_litres, lungmask
from unveil.errors import DataError

LABELS = DataConfig().labels
FIXTURE = Path(__file__).parent / "fixtures" / "chest_small"
CHEST_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_ct"

SPACING = 10.0
SHAPE = (32, 24, 24)


def phantom(joined: bool = False, spacing: float = SPACING) -> tuple[Volume, np.ndarray]:
    """A CT ``SHAPE`` at ``spacing`` mm (RAS affine) and its exact label map.

    Body 40 HU in an elliptic cylinder, outside air -1000 HU; lungs -850 HU boxes left and
    right of the midline (the right lung at larger i, hence larger RAS x); a 2 x 2 voxel
    trachea at -1000 HU from slice 12 to the top, not touching the lungs.  With
    ``joined`` a one-voxel-thick -850 HU bridge joins the lungs (an anterior junction);
    its voxels are marked -1 in the expected map (either lung is right for them).
    """
    nx, ny, nz = SHAPE
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    body = ((i - cx) / (0.47 * nx)) ** 2 + ((j - cy) / (0.47 * ny)) ** 2 <= 1.0
    ct = np.full(SHAPE, -1000, dtype=np.int16)
    ct[body] = 40
    expect = np.zeros(SHAPE, dtype=np.int16)
    ic, jc = nx // 2, ny // 2
    right = (slice(ic + 3, ic + 10), slice(jc - 4, jc + 5), slice(3, 18))
    left = (slice(ic - 10, ic - 3), slice(jc - 4, jc + 5), slice(3, 18))
    tube = (slice(ic - 1, ic + 1), slice(jc - 1, jc + 1), slice(12, nz))
    ct[right] = ct[left] = -850
    ct[tube] = -1000
    expect[right], expect[left], expect[tube] = 1, 2, 3
    if joined:
        bridge = (slice(ic - 3, ic + 3), slice(jc + 3, jc + 4), slice(5, 10))
        ct[bridge] = -850
        expect[bridge] = -1
    # The lungs must be enclosed by the body, or the test would test the phantom.
    inner = ndimage.binary_erosion(body, iterations=1)
    assert inner[right[0], right[1]].all() and inner[left[0], left[1]].all()
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-150.0, -110.0, -50.0]
    return Volume(ct, affine), expect


# ------------------------------------------------------------------ library, phantom


@pytest.mark.parametrize("spacing", [10.0, 6.0])
def test_phantom_gives_exact_lungs_and_airway(spacing: float) -> None:
    # At 6 mm the closing (6 mm) is active; at 10 mm it is below one voxel.
    ct, expect = phantom(spacing=spacing)
    out = lungmask(ct)
    assert out.array.dtype == np.int16
    assert out.same_grid(ct)
    np.testing.assert_array_equal(out.array, expect)


@pytest.mark.parametrize("spacing", [10.0, 6.0])
def test_joined_lungs_are_split_at_the_junction(spacing: float) -> None:
    ct, expect = phantom(joined=True, spacing=spacing)
    got = lungmask(ct).array
    # Beside the bridge the closing may fill the inner corners (at 6 mm, where it acts).
    known = ~ndimage.binary_dilation(expect == -1)
    np.testing.assert_array_equal(got[known], expect[known])
    near = ~known & (expect != -1)
    assert np.isin(got[near], [0, 1, 2]).all()
    bridge = np.argwhere(expect == -1)
    # Each bridge voxel goes to the lung on its own side of the midline.
    ic = SHAPE[0] // 2
    for i, j, k in bridge:
        assert got[i, j, k] == (1 if i >= ic else 2)


def test_orientation_and_axis_order_do_not_change_the_answer() -> None:
    ct, expect = phantom()
    # Same anatomy stored L-P-S (first two axes flipped): the world positions are equal.
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [SHAPE[0] - 1, SHAPE[1] - 1]
    lps = Volume(ct.array[::-1, ::-1, :].copy(), ct.affine @ flip)
    assert lps.orientation == "LPS"
    np.testing.assert_array_equal(lungmask(lps).array[::-1, ::-1, :], expect)
    # Axial axis first: (Z, X, Y) array, affine columns permuted to match.
    perm = Volume(ct.array.transpose(2, 0, 1).copy(), ct.affine[:, [2, 0, 1, 3]])
    np.testing.assert_array_equal(lungmask(perm).array.transpose(1, 2, 0), expect)


def test_label_values_follow_the_data_config() -> None:
    ct, expect = phantom()
    cfg = DataConfig(
        labels={"lungs": 5, "trachea": 7}, lung_labels=["lungs"], airway_label="trachea"
    )
    got = lungmask(ct, cfg).array
    np.testing.assert_array_equal(got, np.select([expect == 3, expect > 0], [7, 5], 0))
    no_airway = DataConfig(airway_label=None)
    got = lungmask(ct, no_airway).array
    np.testing.assert_array_equal(got, np.where(expect == 3, 0, expect))


def test_lung_volume_litres() -> None:
    ct, expect = phantom()
    vols = lung_volume_litres(expect, ct.affine, LABELS)
    # 7 x 9 x 15 voxels of 1 ml per lung, 2 x 2 x 12 of the tube.
    assert vols == pytest.approx({"right_lung": 0.945, "left_lung": 0.945, "airway": 0.048})
    assert lung_volume_litres(expect, ct.affine, {"other": 9}) == {"other": 0.0}


def test_no_air_is_a_data_error() -> None:
    ct, expect = phantom()
    no_lungs = np.where(expect > 0, 40, ct.array).astype(np.int16)  # outside air only
    with pytest.raises(DataError, match="no lungs found"):
        lungmask(Volume(no_lungs, ct.affine))
    with pytest.raises(DataError, match="no body"):
        lungmask(Volume(np.full((8, 8, 8), -1000, dtype=np.int16), np.eye(4)))


def test_air_smaller_than_a_lung_is_a_data_error() -> None:
    ct, _ = phantom()
    small = np.where(ct.array < -500, -1000, 40).astype(np.int16)
    small[np.asarray(ct.array) == -850] = 40
    small[14:17, 10:13, 5:8] = -850  # a 27 ml bubble
    with pytest.raises(DataError, match="50 ml"):
        lungmask(Volume(small, ct.affine))


# ------------------------------------------------------------------ committed fixture


def test_fixture_mask_is_what_lungmask_gives() -> None:
    image = read_volume(FIXTURE / "images" / "chest.nii.gz")
    mask = read_volume(FIXTURE / "masks" / "chest.nii.gz")
    assert image.array.dtype == np.int16 and mask.array.dtype == np.int16
    assert image.same_grid(mask)
    assert all(40 <= s <= 60 for s in image.shape)
    assert image.spacing == pytest.approx((6.0, 6.0, 6.0))
    assert sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file()) < 1_000_000
    np.testing.assert_array_equal(lungmask(image).array, mask.array)
    vols = lung_volume_litres(mask.array, mask.affine, LABELS)
    assert 0.8 < vols["right_lung"] < 5 and 0.8 < vols["left_lung"] < 5
    assert 0.005 < vols["airway"] < 0.2
    with open(FIXTURE / "clinical.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["chest"]
    assert {"age", "sex", "smoking", "pack_years", "diagnosis", "blood_group"} <= set(rows[0])
    assert "Apache License" in (FIXTURE / "LICENSE").read_text()
    assert "TotalSegmentator" in (FIXTURE / "README.md").read_text()


# ------------------------------------------------------------------ real CT (optional)


@pytest.fixture(scope="module")
def real_ct():
    path = CHEST_CT / "ct.nii.gz"
    if not path.exists():
        pytest.skip(f"real chest CT not found at {path} (../shared/data/chest_ct beside the repo)")
    ct = read_volume(path)
    # Its speed is measured in benchmarks/, never asserted here (timings vary by machine).
    return ct, lungmask(ct)


def test_real_ct_lungs_and_airway(real_ct) -> None:
    ct, mask = real_ct
    assert mask.same_grid(ct) and mask.array.dtype == np.int16
    vols = lung_volume_litres(mask.array, mask.affine, LABELS)
    assert 2.0 < vols["right_lung"] + vols["left_lung"] < 8.0
    assert 0.8 < vols["right_lung"] < 5.0 and 0.8 < vols["left_lung"] < 5.0
    assert 0.005 < vols["airway"] < 0.2

    def centre_x(m: np.ndarray) -> float:
        return float((ct.affine @ np.append(np.argwhere(m).mean(axis=0), 1.0))[0])

    # RAS+ x grows towards the patient's right: the right lung has the larger x, and the
    # heart (mask beside the CT, an independent landmark) leans to the left lung.
    x_right, x_left = centre_x(mask.array == 1), centre_x(mask.array == 2)
    assert x_right > x_left
    heart = read_volume(CHEST_CT / "heart.nii.gz").array > 0
    x_heart = centre_x(heart)
    assert abs(x_heart - x_left) < abs(x_heart - x_right)
    # The airway lies between the lungs.
    assert x_left < centre_x(mask.array == 3) < x_right


def test_real_ct_on_a_6mm_grid_agrees_with_full_resolution(real_ct) -> None:
    # What the evaluation does: re-derive the mask from a coarse volume and compare.
    ct, mask = real_ct
    f = 4
    nx, ny, nz = (s // f * f for s in ct.shape)
    small = ct.array[:nx, :ny, :nz].astype(np.float32).reshape(nx // f, f, ny // f, f, nz // f, f)
    scale = np.diag([f, f, f, 1.0])
    scale[:3, 3] = (f - 1) / 2
    coarse = lungmask(
        Volume(np.round(small.mean(axis=(1, 3, 5))).astype(np.int16), ct.affine @ scale)
    )
    ref = mask.array[f // 2 : nx : f, f // 2 : ny : f, f // 2 : nz : f]
    for value in (1, 2):
        a, b = coarse.array == value, ref == value
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.93, f"label {value}: Dice {dice:.3f}"
    assert (coarse.array == 3).sum() > 0


# ------------------------------------------------------------------ command line


def test_cli_writes_mask_with_input_affine(tmp_path, capsys) -> None:
    ct, expect = phantom()
    ct.affine[:3, 3] = [12.5, -30.0, 400.0]
    src = write_volume(ct, tmp_path / "ct.nii.gz")
    out = tmp_path / "sub" / "mask.nii"  # NRRD would work too, but importing ITK takes seconds
    assert main(["lungmask", str(src), "--out", str(out)]) == 0
    got = read_volume(out)
    np.testing.assert_allclose(got.affine, ct.affine, atol=1e-4)
    np.testing.assert_array_equal(got.array, expect)
    printed = capsys.readouterr().out
    # 0.945 l per lung, 48 ml of tube.
    assert "right lung 0.9" in printed and "left lung 0.9" in printed
    assert "total 1.89 l" in printed and "airway 48 ml" in printed


def test_cli_no_lungs_exits_2_with_one_line(tmp_path, capsys) -> None:
    ct, expect = phantom()
    no_lungs = np.where(expect > 0, 40, ct.array).astype(np.int16)
    src = write_volume(ct.with_array(no_lungs), tmp_path / "ct.nii.gz")
    out = tmp_path / "mask.nii.gz"
    assert main(["lungmask", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no lungs found" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["lungmask", str(src)]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["lungmask", str(src), "--out", str(tmp_path / "m.png")]) == 2


def test_cli_cohort_fills_missing_masks(tmp_path, capsys) -> None:
    ct, expect = phantom()
    cohort = tmp_path / "cohort"
    write_volume(ct, cohort / "images" / "a.nii.gz")
    write_volume(ct, cohort / "images" / "b.nii.gz")
    kept = write_volume(ct.with_array(np.ones(SHAPE, np.int16)), cohort / "masks" / "b.nii.gz")
    assert main(["lungmask", "--cohort", str(cohort)]) == 0
    np.testing.assert_array_equal(read_volume(cohort / "masks" / "a.nii.gz").array, expect)
    assert (read_volume(kept).array == 1).all()  # existing masks are never overwritten
    assert "wrote 1 mask" in capsys.readouterr().out
    # A scan without lungs fails alone: the others still get their mask, exit status 2.
    write_volume(ct.with_array(np.full(SHAPE, 40, np.int16)), cohort / "images" / "c.nii.gz")
    write_volume(ct, cohort / "images" / "d.nii.gz")
    assert main(["lungmask", "--cohort", str(cohort)]) == 2
    assert (cohort / "masks" / "d.nii.gz").exists() and not (cohort / "masks" / "c.nii.gz").exists()
    assert "(c)" in capsys.readouterr().err
    assert main(["lungmask", "--cohort", str(cohort), "x.nii.gz"]) == 2


def test_cli_takes_label_values_from_config(tmp_path, capsys) -> None:
    ct, expect = phantom()
    src = write_volume(ct, tmp_path / "ct.nii.gz")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data:\n  labels: {lungs: 4, airway: 9}\n  lung_labels: [lungs]\n")
    out = tmp_path / "mask.nii.gz"
    assert main(["lungmask", str(src), "--out", str(out), "--config", str(cfg)]) == 0
    np.testing.assert_array_equal(
        read_volume(out).array, np.select([expect == 3, expect > 0], [9, 4], 0)
    )
    assert "lungs 1.89 l, airway 48 ml" in capsys.readouterr().out
