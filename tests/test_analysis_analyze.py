"""``unveil analyze`` on a fake counterfactual run built without any model.

The fake run has a known answer: the "edited" volumes are the factual ones plus exactly the
planted smoking effect (-60 HU in the upper lung zone for subjects who are not current
smokers) plus a little independent noise, and the null edit changes nothing but that noise.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from unveil.analysis.analyze import analyze_run, display_slices, format_table, parse_run_edit
from unveil.analysis.layout import RunLayout, edit_slug, read_run
from unveil.config import DataConfig
from unveil.data.effects import EffectSpec, effects_record, write_effects_json
from unveil.data.io import Volume, read_volume, write_volume
from unveil.data.regions import region_mask
from unveil.errors import UnveilError
from unveil.fs import write_json, write_text

SIZE = 16
SHIFT = -60.0
SMOKING = [
    "never",
    "former",
    "current",
    "never",
    "former",
    "never",
    "current",
    "never",
    "former",
    "never",
]
BLOOD = ["A", "O", "B", "O", "A", "O", "A", "B", "O", "A"]
AGES = [50.0, 66.0, 61.0, 45.0, 70.0, 52.0, 58.0, 48.0, 64.0, 55.0]
SEEDS = [0, 1]


def _affine() -> np.ndarray:
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    a[:3, 3] = -15.0
    return a


def _labels() -> np.ndarray:
    lab = np.zeros((SIZE,) * 3, dtype=np.uint8)
    lab[9:15, 3:13, 2:14] = 1  # right lung at larger RAS x
    lab[1:7, 3:13, 2:14] = 2
    lab[7:9, 7:9, 8:15] = 3  # airway
    return lab


def _build(root):
    rng = np.random.default_rng(0)
    cohort = root / "cohort"
    affine, labels = _affine(), _labels()
    upper = region_mask(labels, affine, "upper_lung")
    lung = labels == 1
    lung |= labels == 2
    ids = [f"sub-{k:03d}" for k in range(len(SMOKING))]
    rows = ["id,age,smoking,blood_group"]
    for sid, smoke, blood, age in zip(ids, SMOKING, BLOOD, AGES, strict=True):
        rows.append(f"{sid},{age},{smoke},{blood}")
        real = np.where(lung, -870.0, 40.0) + rng.normal(0, 20.0, labels.shape)
        if smoke == "current":
            real[upper] += SHIFT
        write_volume(Volume(real.astype(np.float32), affine), cohort / "images" / f"{sid}.nii.gz")
        write_volume(Volume(labels, affine), cohort / "masks" / f"{sid}.nii.gz")
    write_text(cohort / "clinical.csv", "\n".join(rows) + "\n")
    write_text(cohort / "truth.csv", "\n".join(rows) + "\n")
    effects = [
        EffectSpec(attribute="smoking", value="current", region="upper_lung", shift_hu=SHIFT)
    ]
    write_effects_json(
        cohort / "effects.json", effects_record(effects, ["age", "smoking", "blood_group"])
    )

    run = root / "run"
    layout = RunLayout(run)
    edit, null = "smoking=current", "blood_group=O"
    write_json(
        layout.json_path,
        {
            "checkpoint": "fake.pt",
            "cohort": str(cohort),
            "family": "gan",
            "edits": [edit],
            "null_edits": [null],
            "seeds": SEEDS,
            "floor_seed_offset": 1000,
            "subjects": ids,
            "from_scan": False,
            "baseline": ["blood_group=A"],  # no effect: the planted expectation is unchanged
            "hu_window": [-1000, 500],
            "config": {"data": DataConfig().model_dump(), "text": {"template": "phantom"}},
        },
    )
    for sid, smoke in zip(ids, SMOKING, strict=True):
        anatomy = np.where(lung, -860.0, 30.0) + rng.normal(0, 5.0, labels.shape)
        for k in SEEDS:
            factual = anatomy + rng.normal(0, 20.0, labels.shape)
            floor = anatomy + rng.normal(0, 20.0, labels.shape)
            edited = factual + rng.normal(0, 3.0, labels.shape)
            if smoke != "current":
                edited[upper] += SHIFT
            nulled = factual + rng.normal(0, 3.0, labels.shape)
            for path, arr in (
                (layout.factual(sid, k), factual),
                (layout.floor(sid, k), floor),
                (layout.edited(sid, edit, k), edited),
                (layout.edited(sid, null, k), nulled),
            ):
                write_volume(Volume(arr.astype(np.float32), affine), path)
    return run


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    run = _build(tmp_path_factory.mktemp("analyze"))
    results = analyze_run(run, n_boot=400, seed=0, progress=False)
    return run, results


def _row(rows, contrast, region):
    found = [r for r in rows if r["contrast"] == contrast and r["region"] == region]
    assert len(found) == 1, (contrast, region)
    return found[0]


def test_layout_slug_and_paths(tmp_path):
    assert edit_slug("smoking=current") == "smoking=current"
    assert edit_slug("diagnosis=non IPF/x") == "diagnosis=non_IPF_x"
    assert edit_slug("age-=5.5") == "age-=5.5"
    lay = RunLayout(tmp_path)
    assert lay.edited("s1", "a b", 2).name == "a_b_s2.nii.gz"
    assert lay.floor("s1", 0).name == "floor_s0.nii.gz"
    assert lay.map_png("s1", "age+=10") == tmp_path / "analysis/maps/s1/age+=10_mean_diff.png"


def test_read_run_errors(tmp_path):
    with pytest.raises(UnveilError, match="counterfactual.json is missing"):
        read_run(tmp_path)
    (tmp_path / "counterfactual.json").write_text("{not json")
    with pytest.raises(UnveilError, match="corrupt"):
        read_run(tmp_path)
    (tmp_path / "counterfactual.json").write_text(
        json.dumps({"cohort": "c", "edits": ["a=1"], "seeds": [0], "subjects": ["s"]})
    )
    with pytest.raises(UnveilError, match=r"factual_s0.nii.gz is missing.*unveil counterfactual"):
        read_run(tmp_path)
    assert read_run(tmp_path, check_volumes=False)["null_edits"] == []


def test_parse_run_edit_without_template():
    e = parse_run_edit("smoking=current")
    assert (e.column, e.op, e.value, e.numeric) == ("smoking", "set", "current", False)
    e = parse_run_edit("age+=10")
    assert (e.op, e.value, e.numeric) == ("add", 10.0, True)
    assert e.apply({"age": 60.0})["age"] == 70.0
    assert parse_run_edit("age-=5").apply({"age": "60"})["age"] == 55.0
    assert parse_run_edit("unset-smoking").apply({"smoking": "never"})["smoking"] is None
    with pytest.raises(UnveilError):
        parse_run_edit("nonsense")


def test_recovers_planted_shift_in_upper_lung(analyzed):
    run, results = analyzed
    up = _row(results["cohort_stats"], "smoking=current", "upper_lung")
    planted = SHIFT * sum(s != "current" for s in SMOKING) / len(SMOKING)  # -48 HU
    assert up["mean_diff_hu"] == pytest.approx(planted, rel=0.10)
    assert up["ci_low"] < planted < up["ci_high"]
    assert up["significant"] and up["q_value"] < 0.05
    assert up["effect_size_dz"] < -1.0
    assert up["n_subjects"] == len(SMOKING) and up["n_seeds"] == len(SEEDS)
    # nothing planted in the lower zone or the airway
    for region in ("lower_lung", "airway"):
        row = _row(results["cohort_stats"], "smoking=current", region)
        assert abs(row["mean_diff_hu"]) < 3.0 and not row["significant"]
    rec = _row(results["recovery"], "smoking=current", "upper_lung")
    assert rec["planted_hu"] == pytest.approx(planted)
    assert abs(rec["error_hu"]) < 0.1 * abs(planted)
    assert rec["sign_ok"] and rec["within_30pct"]
    # an effect planted in the upper zone counts in "lung" in proportion to its voxels
    lung = _row(results["recovery"], "smoking=current", "lung")
    assert lung["planted_hu"] == pytest.approx(planted / 3.0, rel=0.15)
    assert results["verdict"]["recovery"]["passed"] is True


def test_null_edit_reports_nothing(analyzed):
    _, results = analyzed
    nulls = [r for r in results["cohort_stats"] if r["contrast"] == "blood_group=O"]
    assert nulls and all(r["null_control"] for r in nulls)
    assert not any(r["significant"] for r in nulls)
    assert all(abs(r["mean_diff_hu"]) < 1.0 for r in nulls)
    v = results["verdict"]
    assert v["null_control_passed"] is True
    null_v = next(e for e in v["edits"] if e["contrast"] == "blood_group=O")
    assert null_v["summary"].startswith("null control passed")
    assert (
        "upper_lung"
        in next(e for e in v["edits"] if e["contrast"] == "smoking=current")["significant_regions"]
    )
    # BH over all rows: q >= p everywhere
    assert all(r["q_value"] >= r["p_value"] - 1e-12 for r in results["cohort_stats"])


def test_observed_association_in_real_cohort(analyzed):
    _, results = analyzed
    row = _row(results["observed"], "smoking=current", "upper_lung")
    assert (row["n_a"], row["n_b"]) == (2, 8)
    assert row["diff_hu"] == pytest.approx(SHIFT, abs=3.0)
    assert row["ci_low"] <= row["diff_hu"] <= row["ci_high"] < 0.0
    low = _row(results["observed"], "smoking=current", "lower_lung")
    assert abs(low["diff_hu"]) < 5.0


def test_every_output_written(analyzed):
    run, results = analyzed
    out = RunLayout(run).analysis_dir
    for name in (
        "subject_regions.csv",
        "cohort_stats.csv",
        "observed.csv",
        "recovery.csv",
        "results.json",
    ):
        assert (out / name).is_file(), name
    with open(out / "cohort_stats.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:15] == [
        "contrast", "region", "n_subjects", "mean_diff_hu", "ci_low", "ci_high", "floor_mean_hu",
        "floor_sd_hu", "effect_size_dz", "statistic", "p_value", "q_value", "significant", "test",
        "null_control",
    ]  # fmt: skip
    assert len(rows) == len(results["cohort_stats"])
    with open(out / "subject_regions.csv", newline="") as fh:
        sub = list(csv.DictReader(fh))
    floors = {r["id"] for r in sub if r["contrast"] == "noise_floor"}
    assert len(floors) == len(SMOKING)
    on_disk = json.loads((out / "results.json").read_text())
    assert "config" not in on_disk["run"] and on_disk["alpha"] == 0.05
    assert set(on_disk) >= {"run", "cohort_stats", "observed", "recovery", "verdict"}
    lay = RunLayout(run)
    for sid in ("sub-000", "sub-002"):
        for edit in ("smoking=current", "blood_group=O"):
            assert lay.map_png(sid, edit).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the mean map is in HU on the source grid: -60 in the upper zone of a never smoker
    vol = read_volume(lay.map_nifti("sub-000", "smoking=current"))
    np.testing.assert_allclose(vol.affine, _affine())
    upper = region_mask(_labels(), _affine(), "upper_lung")
    assert float(vol.array[upper].mean()) == pytest.approx(SHIFT, abs=1.0)
    assert abs(float(vol.array[~upper].mean())) < 1.0
    assert lay.map_png("sub-000", "noise_floor").is_file()  # chance on the same scale
    floor_map = read_volume(lay.map_nifti("sub-000", "noise_floor")).array
    assert 5.0 < float(floor_map.std()) < 30.0  # two seeds of 20 HU noise, averaged
    assert "upper_lung" in format_table(results)
    assert any("groups of 2 and 8" in n for n in results["verdict"]["notes"])
    assert all(math.isfinite(r["p_value"]) for r in results["cohort_stats"])


def test_cli_missing_json_exits_2(tmp_path, capsys):
    from unveil.cli import main

    (tmp_path / "notarun").mkdir()
    rc = main(["analyze", str(tmp_path / "notarun")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "counterfactual.json is missing" in err


def test_cli_runs_and_prints_table(analyzed, capsys):
    from unveil.cli import main

    run, _ = analyzed
    rc = main(["analyze", str(run), "--n-boot", "200", "--test", "t"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "smoking=current" in out and "upper_lung" in out and "null control passed" in out
    stats = json.loads((RunLayout(run).analysis_dir / "results.json").read_text())
    assert stats["settings"]["test"] == "t"
    assert stats["cohort_stats"][0]["test"] == "paired t"


def test_display_slices_radiological_whatever_the_storage():
    vol = np.zeros((8, 6, 4), dtype=np.float32)
    vol[5:8] = 1.0  # larger i = patient's right under a RAS affine
    ras = np.diag([2.0, 3.0, 4.0, 1.0])
    sl = display_slices(vol, vol > 0, ras)
    assert sl["axial"].shape == (6, 8)  # rows anterior-posterior, columns right-left
    assert sl["axial"][:, :3].all() and not sl["axial"][:, 3:].any()  # right on the left
    assert sl["axial_aspect"] == 1.5 and sl["coronal_aspect"] == 2.0
    # the same anatomy stored left-to-right (x axis flipped) shows the same picture
    las = ras.copy()
    las[0, 0] = -2.0
    flipped = display_slices(vol[::-1].copy(), vol[::-1] > 0, las)
    np.testing.assert_array_equal(flipped["axial"], sl["axial"])


def test_expected_shift_per_unit_and_intersection():
    from unveil.analysis.analyze import _region_indices, expected_shift_means

    effects = [
        EffectSpec(attribute="age", per_unit=1.0, reference=60.0, region="lung"),
        EffectSpec(
            attribute="diagnosis", value="IPF", region="lower_lung&lung_periphery", shift_hu=120.0
        ),
    ]
    regions = ["lung", "upper_lung", "lower_lung&lung_periphery", "airway"]
    idx = _region_indices(_labels(), _affine(), DataConfig(), regions)
    truth = {"age": 70.0, "diagnosis": "none"}
    got = expected_shift_means(effects, parse_run_edit("age+=10"), truth, idx)
    assert got["lung"] == pytest.approx(10.0) and got["upper_lung"] == pytest.approx(10.0)
    assert got["airway"] == 0.0
    got = expected_shift_means(effects, parse_run_edit("diagnosis=IPF"), truth, idx)
    assert got["lower_lung&lung_periphery"] == pytest.approx(120.0)
    share = idx["lower_lung&lung_periphery"].size / idx["lung"].size
    assert got["lung"] == pytest.approx(120.0 * share) and got["upper_lung"] == 0.0
    # an IPF subject edited to IPF: nothing changes
    same = expected_shift_means(
        effects, parse_run_edit("diagnosis=IPF"), {**truth, "diagnosis": "IPF"}, idx
    )
    assert same["lower_lung&lung_periphery"] == 0.0


def test_observed_numeric_edit_is_a_scaled_slope():
    from unveil.analysis.analyze import _observed

    rng = np.random.default_rng(0)
    ages = rng.uniform(40, 80, 30)
    real = {
        f"s{i}": np.array([-870.0 + 1.0 * (a - 60.0) + rng.normal(0, 2.0)])
        for i, a in enumerate(ages)
    }
    clinical = {f"s{i}": {"age": a} for i, a in enumerate(ages)}
    clinical["s0"]["age"] = None  # missing values are excluded
    notes: list[str] = []
    edit = parse_run_edit("age+=10")
    rows = _observed(["age+=10"], {"age+=10": edit}, ["lung"], real, clinical, 300, 0, notes)
    (row,) = rows
    assert row["n_a"] == 29 and row["diff_hu"] == pytest.approx(10.0, abs=1.0)
    assert row["ci_low"] < 10.0 < row["ci_high"]
    down = _observed(
        ["age-=10"], {"age-=10": parse_run_edit("age-=10")}, ["lung"], real, clinical, 300, 0, notes
    )
    assert down[0]["diff_hu"] == pytest.approx(-row["diff_hu"])
    assert down[0]["ci_low"] < down[0]["ci_high"] < 0


def test_generated_volume_off_the_mask_grid_is_refused(tmp_path):
    from unveil.analysis.analyze import _read_generated

    path = tmp_path / "factual_s0.nii.gz"
    write_volume(Volume(np.zeros((4, 4, 4), dtype=np.float32), np.eye(4)), path)
    with pytest.raises(UnveilError, match=r"shape \(4, 4, 4\).*re-run unveil counterfactual"):
        _read_generated(path, (8, 8, 8))
