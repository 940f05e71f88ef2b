"""The phantom cohort: layout, anatomy, table realism, determinism, exact planted effects."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from unveil.cli import main
from unveil.data.effects import EffectSpec
from unveil.data.io import read_volume
from unveil.data.phantom import (
    NOISE_STD_HU,
    PHANTOM_COLUMNS,
    default_effects,
    make_phantom,
    phantom_table,
    render_subject,
)
from unveil.data.regions import region_masks
from unveil.errors import UnveilError

ATTRS = {
    "age": 60.0,
    "sex": "F",
    "smoking": "never",
    "pack_years": 0.0,
    "diagnosis": "none",
    "blood_group": "O",
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_phantom(tmp_path_factory.mktemp("ph") / "cohort", n=4, size=24, seed=3)


def _digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_layout_labels_and_hu(cohort):
    ids = [f"sub-{k:03d}" for k in range(4)]
    assert sorted(p.name for p in (cohort / "images").iterdir()) == [f"{i}.nii.gz" for i in ids]
    assert sorted(p.name for p in (cohort / "masks").iterdir()) == [f"{i}.nii.gz" for i in ids]
    clinical = pd.read_csv(cohort / "clinical.csv")
    assert list(clinical.columns) == ["id", *PHANTOM_COLUMNS]
    assert list(clinical["id"]) == ids
    assert not list(cohort.parent.glob(".cohort.*")), "temporary folder left behind"
    img, lab = (
        read_volume(cohort / "images/sub-000.nii.gz"),
        read_volume(cohort / "masks/sub-000.nii.gz"),
    )
    assert img.shape == lab.shape == (24, 24, 24)
    assert img.same_grid(lab) and img.orientation == "RAS"
    assert np.allclose(img.spacing, 350 / 24)
    a, m = img.array, lab.array
    assert a.dtype == np.float32 and set(np.unique(m)) == {0, 1, 2, 3}
    air = a[:2].ravel()  # outside the body: first slabs in x
    assert abs(np.median(air) + 1000) < 20
    assert -900 < np.median(a[np.isin(m, [1, 2])]) < -780
    assert a.max() > 300  # bone
    assert abs(np.median(a[(m == 0) & (a > -300)]) - 20) < 80  # soft tissue near 0..+40
    # RAS: the right lung (label 1) lies at positive world x, the left at negative.
    for value, sign in ((1, 1), (2, -1)):
        i = np.nonzero(m == value)[0].mean()
        x = img.affine[0, 0] * i + img.affine[0, 3]
        assert np.sign(x) == sign


def test_effects_json(cohort):
    rec = json.loads((cohort / "effects.json").read_text())
    assert rec["null_attributes"] == ["sex", "blood_group"]
    assert rec["negative_control"] == "blood_group"
    assert rec["noise_std_hu"] == NOISE_STD_HU and rec["hu_window"] == [-1000.0, 500.0]
    by = {(e["attribute"], e["value"]): e for e in rec["effects"]}
    assert by[("smoking", "current")]["shift_hu"] == -60.0
    assert by[("smoking", "current")]["region"] == "upper_lung"
    assert by[("diagnosis", "IPF")]["region"] == "lower_lung&lung_periphery"
    assert by[("age", None)]["per_unit"] == 1.0 and by[("age", None)]["reference"] == 60.0
    assert not any(e["attribute"] == "blood_group" for e in rec["effects"])
    assert "thirds" in rec["regions_rule"]


def test_images_carry_true_attributes_not_observed(cohort):
    truth = pd.read_csv(cohort / "truth.csv")
    assert not truth.isna().any().any()
    clinical = pd.read_csv(cohort / "clinical.csv")
    obs = clinical[list(PHANTOM_COLUMNS)]
    assert (obs.isna() | (obs.astype(str) == truth[list(PHANTOM_COLUMNS)].astype(str))).all().all()


def test_same_seed_identical_bytes_and_subject_independent_of_n(tmp_path, cohort):
    again = make_phantom(tmp_path / "again", n=4, size=24, seed=3)
    assert _digest(again) == _digest(cohort)
    other = make_phantom(tmp_path / "other", n=4, size=24, seed=4)
    assert _digest(other)["images/sub-000.nii.gz"] != _digest(cohort)["images/sub-000.nii.gz"]
    assert (other / "clinical.csv").read_bytes() != (cohort / "clinical.csv").read_bytes()
    t4, _ = phantom_table(4, seed=3)
    t9, _ = phantom_table(9, seed=3)
    pd.testing.assert_frame_equal(t4, t9.iloc[:4])


def test_table_realism():
    truth, clinical = phantom_table(400, seed=0)
    age = truth.groupby("smoking")["age"].mean()
    assert age["current"] > age["never"] + 4 and age["former"] > age["never"] + 4
    assert (truth.loc[truth.smoking == "never", "pack_years"] == 0).all()
    assert (truth.loc[truth.smoking != "never", "pack_years"] > 0).all()
    current = truth[truth.smoking == "current"]
    assert np.corrcoef(current.age, current.pack_years)[0, 1] > 0.3
    ipf = truth.diagnosis == "IPF"
    assert truth.loc[ipf, "age"].mean() > truth.loc[~ipf, "age"].mean()
    assert set(truth.diagnosis) == {"none", "IPF", "CTD-ILD"}
    assert set(truth.blood_group) == {"A", "B", "AB", "O"}
    missing = clinical[list(PHANTOM_COLUMNS)].isna().to_numpy().mean()
    assert 0.12 < missing < 0.18
    assert not clinical["id"].isna().any()


@pytest.mark.parametrize(
    "attrs, region, expected",
    [
        ({"smoking": "current"}, "upper_lung", -60.0),
        ({"diagnosis": "IPF"}, "lower_lung&lung_periphery", 120.0),
        ({"age": 70.0}, "lung", 10.0),
    ],
)
def test_planted_effect_is_exact(attrs, region, expected):
    base_img, base_lab = render_subject(ATTRS, np.random.default_rng(7), size=16)
    img, lab = render_subject({**ATTRS, **attrs}, np.random.default_rng(7), size=16)
    assert np.array_equal(lab.array, base_lab.array)
    diff = img.array.astype(np.float64) - base_img.array
    mask = region_masks(lab.array, lab.affine, names=[region])[region]
    assert mask.sum() > 0
    assert np.allclose(diff[mask], expected, atol=1e-3)
    assert np.abs(diff[~mask]).max() == 0.0


def test_pack_years_and_former_add_up_in_upper_zone():
    base, lab = render_subject(ATTRS, np.random.default_rng(1), size=16)
    img, _ = render_subject(
        {**ATTRS, "smoking": "former", "pack_years": 20.0}, np.random.default_rng(1), size=16
    )
    upper = region_masks(lab.array, lab.affine, names=["upper_lung"])["upper_lung"]
    assert np.allclose((img.array - base.array)[upper], -20.0 - 10.0, atol=1e-3)


def test_null_attribute_changes_nothing():
    a, _ = render_subject(ATTRS, np.random.default_rng(2), size=16)
    b, _ = render_subject(
        {**ATTRS, "blood_group": "AB", "sex": "M"}, np.random.default_rng(2), size=16
    )
    assert np.array_equal(a.array, b.array)


def test_custom_effects_and_noise_level():
    img, lab = render_subject(ATTRS, np.random.default_rng(0), size=32, effects=[])
    spec = [EffectSpec(attribute="sex", value="F", region="left_lung", shift_hu=50.0)]
    img2, _ = render_subject(ATTRS, np.random.default_rng(0), size=32, effects=spec)
    assert np.allclose((img2.array - img.array)[lab.array == 2], 50.0, atol=1e-3)
    assert np.array_equal(img2.array[lab.array != 2], img.array[lab.array != 2])
    outside = img.array[:3, :3, :]  # pure air plus noise
    assert abs(outside.std() - NOISE_STD_HU) < 6
    assert default_effects()[0].describe() == "smoking = current: -60 HU in upper_lung"


def test_bad_arguments_and_cli(tmp_path, capsys):
    with pytest.raises(UnveilError, match="at least 4 subjects"):
        make_phantom(tmp_path / "x", n=3, size=16)
    assert main(["phantom", "--out", str(tmp_path / "y"), "--n", "4", "--size", "20"]) == 2
    assert "divisible by 8" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert (
        main(["phantom", "--out", str(tmp_path / "z"), "--n", "4", "--size", "16", "--seed", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "wrote 4 phantom subjects" in out and "upper_lung" in out
    assert (tmp_path / "z" / "effects.json").is_file()
    # An existing non-empty folder is refused without --overwrite, replaced with it.
    assert main(["phantom", "--out", str(tmp_path / "z"), "--n", "4", "--size", "16"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        main(["phantom", "--out", str(tmp_path / "z"), "--n", "5", "--size", "16", "--overwrite"])
        == 0
    )
    assert len(list((tmp_path / "z" / "images").iterdir())) == 5
