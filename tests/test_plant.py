"""unveil plant: spec validation, left-right mirror, exact planted effects, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from unveil.cli import main
from unveil.data.effects import (
    AttributeSpec,
    EffectSpec,
    apply_effects,
    effect_shift,
    load_spec,
    parse_spec,
    same_value,
)
from unveil.data.io import Volume, read_volume, write_volume
from unveil.data.plant import flip_lr, lr_axis, plant_cohort
from unveil.data.regions import region_masks
from unveil.errors import ConfigError, DataError

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "plant" / "example.yaml"

# An LPS-like affine: array i runs towards the subject's left (world x decreasing), so the
# right lung (label 1, positive RAS x) sits at low i.
AFFINE = np.array([[-2.0, 0, 0, 23.0], [0, -2.0, 0, 23.0], [0, 0, 2.0, -23.0], [0, 0, 0, 1.0]])


def _source(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lab = np.zeros((24, 24, 24), dtype=np.uint8)
    lab[3:11, 5:19, 4:21] = 1
    lab[13:21, 5:19, 6:20] = 2
    lab[11:13, 10:12, 14:24] = 3
    img = np.full(lab.shape, 40.0, dtype=np.float32)
    img[np.isin(lab, [1, 2])] = -850.0
    img[lab == 3] = -1000.0
    img[:, :, :2] = -1000.0
    img += rng.normal(0.0, 20.0, img.shape).astype(np.float32)
    return img, lab


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src") / "real"
    rng = np.random.default_rng(0)
    for sid in ("a", "b"):
        img, lab = _source(rng)
        write_volume(Volume(img, AFFINE), root / "images" / f"{sid}.nii.gz")
        write_volume(Volume(lab, AFFINE), root / "masks" / f"{sid}.nii.gz")
    return root


@pytest.fixture(scope="module")
def planted(source, tmp_path_factory) -> tuple[Path, Path]:
    """The example spec planted, and the same seed with no effects (identical otherwise)."""
    base = tmp_path_factory.mktemp("planted")
    spec = load_spec(EXAMPLE)
    with_fx = plant_cohort(source, EXAMPLE, base / "with", n=6, seed=0)
    no_fx = plant_cohort(
        source, spec.model_copy(update={"effects": []}), base / "without", n=6, seed=0
    )
    return with_fx, no_fx


def _world_x_mean(mask: np.ndarray, affine: np.ndarray) -> float:
    ijk = np.stack(np.nonzero(mask)).astype(float)
    return float((affine[0, :3] @ ijk + affine[0, 3]).mean())


# ------------------------------------------------------------------------------- the spec


def test_example_spec_parses():
    spec = load_spec(EXAMPLE)
    assert list(spec.attributes) == ["smoking", "age", "blood_group"]
    assert spec.null_attributes == ["blood_group"]
    assert [e.kind for e in spec.effects] == ["value", "per_unit"]
    assert effect_shift(spec.effects, {"smoking": "current", "age": 70.0}) == [
        ("upper_lung", -60.0),
        ("lung", 10.0),
    ]
    assert effect_shift(spec.effects, {"smoking": "never", "age": None}) == []


@pytest.mark.parametrize(
    "tree, match",
    [
        ({"attributes": {"a": {"values": [1, 2]}}, "effect": []}, "unknown key 'effect'"),
        ({"attributes": {"a": {"vals": [1]}}}, "unknown key 'vals' at attributes.a.vals"),
        (
            {
                "attributes": {"a": {"values": ["x"]}},
                "effects": [
                    {"attribute": "a", "value": "x", "region": "lung", "shift_hu": 1, "hu": 2}
                ],
            },
            "unknown key 'hu'",
        ),
        ({"attributes": {"a": {"values": ["x", "y"], "probs": [0.5, 0.6]}}}, "sum to 1"),
        ({"attributes": {"a": {"values": ["x"], "range": [0, 1]}}}, "exactly one of 'values'"),
        (
            {
                "attributes": {"a": {"values": ["x"]}},
                "effects": [{"attribute": "a", "value": "z", "region": "lung", "shift_hu": 1}],
            },
            "not among the values",
        ),
        (
            {
                "attributes": {"a": {"range": [0, 1]}},
                "effects": [{"attribute": "a", "per_unit": 1, "shift_hu": 3, "region": "lung"}],
            },
            "remove shift_hu",
        ),
        (
            {
                "attributes": {"a": {"values": ["x"]}},
                "effects": [
                    {"attribute": "a", "value": "x", "region": "upper_lobe", "shift_hu": 1}
                ],
            },
            "region 'upper_lobe'",
        ),
        (
            {
                "attributes": {"a": {"values": ["x"]}},
                "effects": [{"attribute": "b", "value": "x", "region": "lung", "shift_hu": 1}],
            },
            "not under 'attributes'",
        ),
        (
            {
                "attributes": {"a": {"values": ["x", "y"]}},
                "effects": [{"attribute": "a", "per_unit": 1.0, "region": "lung"}],
            },
            "needs a numeric attribute",
        ),
    ],
)
def test_spec_errors_are_one_sentence_naming_the_file(tree, match):
    with pytest.raises(ConfigError, match=match) as err:
        parse_spec(tree, "spec file s.yaml")
    msg = str(err.value)
    assert msg.startswith("spec file s.yaml") and "\n" not in msg


def test_load_spec_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("attributes: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(bad)


def test_values_compare_across_types_and_draws_are_seeded():
    assert same_value(1, "1.0") and same_value("current", "current") and not same_value(1, 2)
    a = AttributeSpec(range=(40, 80), decimals=0)
    draws = [a.draw(np.random.default_rng(3)) for _ in range(2)]
    assert draws[0] == draws[1] and float(draws[0]).is_integer() and 40 <= draws[0] <= 80


def test_apply_effects_only_inside_region():
    lab = np.zeros((8, 8, 8), dtype=np.uint8)
    lab[1:4, 1:7, 1:7], lab[4:7, 1:7, 1:7] = 1, 2
    img = np.zeros(lab.shape, dtype=np.float32)
    eff = [EffectSpec(attribute="d", value="IPF", region="right_lung", shift_hu=100.0)]
    out = apply_effects(img, lab, np.eye(4), eff, {"d": "IPF"})
    assert np.array_equal(out == 100.0, lab == 1)
    assert np.array_equal(apply_effects(img, lab, np.eye(4), eff, {"d": "none"}), img)


# --------------------------------------------------------------------------- the mirror


def test_flip_swaps_labels_so_right_stays_right():
    img, lab = _source(np.random.default_rng(1))
    assert lr_axis(AFFINE) == 0
    assert _world_x_mean(lab == 1, AFFINE) > 0 > _world_x_mean(lab == 2, AFFINE)
    img_f, lab_f = flip_lr(img, lab, AFFINE)
    # Mirrored anatomy: what was at voxel i is now at X-1-i, with the same affine.
    assert np.array_equal(img_f, img[::-1])
    assert np.array_equal(lab_f == 1, (lab == 2)[::-1])
    assert np.array_equal(lab_f == 3, (lab == 3)[::-1])
    assert _world_x_mean(lab_f == 1, AFFINE) > 0 > _world_x_mean(lab_f == 2, AFFINE)


# ------------------------------------------------------------------------------ cohorts


def test_cohort_layout_and_truth(planted):
    out, _ = planted
    ids = [f"sub-{k:03d}" for k in range(6)]
    for sub in ("images", "masks"):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"{i}.nii.gz" for i in ids]
    truth = pd.read_csv(out / "truth.csv")
    clinical = pd.read_csv(out / "clinical.csv")
    assert list(truth.columns) == list(clinical.columns) == ["id", "smoking", "age", "blood_group"]
    assert list(truth["id"]) == ids and not truth.isna().any().any()
    assert set(truth.smoking) <= {"never", "current"} and truth.age.between(40, 80).all()
    rec = json.loads((out / "effects.json").read_text())
    assert rec["null_attributes"] == ["blood_group"] and len(rec["effects"]) == 2
    assert rec["sources"] == ["a", "b"] and rec["spec"]["attributes"]["age"]["range"] == [
        40.0,
        80.0,
    ]
    prov = pd.read_csv(out / "provenance.csv")
    assert set(prov.source) <= {"a", "b"} and set(prov.flipped) == {True, False}


def test_effects_planted_exactly_and_masks_follow_images(planted):
    with_fx, no_fx = planted
    truth = pd.read_csv(with_fx / "truth.csv")
    spec = load_spec(EXAMPLE)
    for row in truth.to_dict("records"):
        a = read_volume(with_fx / "images" / f"{row['id']}.nii.gz")
        b = read_volume(no_fx / "images" / f"{row['id']}.nii.gz")
        lab = read_volume(with_fx / "masks" / f"{row['id']}.nii.gz")
        assert a.same_grid(b) and a.same_grid(lab)
        assert np.array_equal(lab.array, read_volume(no_fx / "masks" / f"{row['id']}.nii.gz").array)
        expected = np.zeros(a.shape)
        masks = region_masks(lab.array, lab.affine)
        for region, hu in effect_shift(spec.effects, row):
            expected[masks[region]] += hu
        assert np.abs(expected).max() > 0
        assert np.allclose(a.array.astype(np.float64) - b.array, expected, atol=1e-3)
        # The mask went through the image's transform: its lungs cover dark voxels.
        lung = np.isin(lab.array, [1, 2])
        assert (b.array[lung] < -400).mean() > 0.9
        # Right lung label on the subject's right whether or not the scan was mirrored.
        assert _world_x_mean(lab.array == 1, lab.affine) > _world_x_mean(lab.array == 2, lab.affine)


def test_cli_same_seed_same_bytes_and_errors(planted, source, tmp_path, capsys):
    with_fx, _ = planted
    out = tmp_path / "cli"
    rc = main(
        ["plant", "--cohort", str(source), "--spec", str(EXAMPLE), "--out", str(out), "--n", "6"]
    )
    assert rc == 0
    assert "null attributes (no effect): blood_group" in capsys.readouterr().out
    for p in sorted(with_fx.rglob("*")):
        if p.is_file():
            q = out / p.relative_to(with_fx)
            assert (
                hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(q.read_bytes()).digest()
            ), p.name

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"attributes": {"a": {"values": ["x"]}}, "efects": []}))
    assert (
        main(["plant", "--cohort", str(source), "--spec", str(bad), "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown key 'efects'" in err and str(bad) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_spacing_and_crop(source, tmp_path):
    out = plant_cohort(source, EXAMPLE, tmp_path / "sp", n=1, seed=2, spacing=3.0)
    vol = read_volume(out / "images" / "sub-000.nii.gz")
    assert np.allclose(vol.spacing, 3.0)
    assert max(vol.shape) <= 16
    out = plant_cohort(source, EXAMPLE, tmp_path / "cr", n=1, seed=2, crop=[16, 20, 12])
    vol = read_volume(out / "images" / "sub-000.nii.gz")
    assert vol.shape == (16, 20, 12)
    start = [int(v) for v in pd.read_csv(out / "provenance.csv").crop_start[0].split()]
    # The crop keeps its place in world space: the affine origin is the source voxel `start`.
    assert np.allclose(vol.affine[:3, 3], AFFINE[:3, :3] @ start + AFFINE[:3, 3])


def test_source_errors(tmp_path, source):
    root = tmp_path / "nomask"
    img, lab = _source(np.random.default_rng(0))
    write_volume(Volume(img, AFFINE), root / "images" / "a.nii.gz")
    with pytest.raises(DataError, match="has no mask masks/a"):
        plant_cohort(root, EXAMPLE, tmp_path / "o1", n=1)
    write_volume(
        Volume(np.where(lab == 3, 3, 0).astype(np.uint8), AFFINE), root / "masks" / "a.nii.gz"
    )
    with pytest.raises(DataError, match="has no lung voxels"):
        plant_cohort(root, EXAMPLE, tmp_path / "o2", n=1)
    with pytest.raises(DataError, match="no images/ folder"):
        plant_cohort(tmp_path / "nothing", EXAMPLE, tmp_path / "o3", n=1)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
