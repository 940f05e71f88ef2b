"""``unveil analyze`` on fake counterfactual runs built without any model.

The first fake run has a known answer: the "edited" volumes are the factual ones plus
exactly the planted smoking effect (-60 HU in the upper lung zone for subjects who are not
current smokers) plus a little independent noise; the null edit and two permuted-label
controls change nothing but that noise; and the noise floor is biased (floor - factual is
+50 HU everywhere), which must not make anything significant now that effects are tested
against zero.  The second run is a biased model: every edit and every control shifts all
voxels by about +3 HU, which the raw test calls significant and the calibration on the
controls does not.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from unveil.analysis.analyze import analyze_run, format_table, parse_run_edit
from unveil.analysis.compute.association import adjusted_association, observed_rows
from unveil.analysis.compute.calibration import calibrate_rows
from unveil.analysis.compute.effects import (
    add_training_uncertainty,
    cohort_rows,
    noise_floor_rows,
    with_noise_floor,
)
from unveil.analysis.compute.recovery import expected_shift_means
from unveil.analysis.compute.results import compute_results
from unveil.analysis.compute.verdict import analysis_notes
from unveil.analysis.figures import display_slices
from unveil.analysis.inputs import AnalysisOptions, Measurements, run_design
from unveil.analysis.load import read_generated
from unveil.analysis.regions import region_indices
from unveil.config import DataConfig
from unveil.data.effects import EffectSpec, effects_record, write_effects_json
from unveil.data.io import Volume, read_volume, write_volume
from unveil.data.regions import region_mask
from unveil.errors import UnveilError
from unveil.fs import write_json, write_text
from unveil.records import (
    AdjustedRow,
    Calibration,
    CohortRow,
    RunLayout,
    RunRecord,
    edit_slug,
    read_run,
)

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
FLOOR_BIAS = 50.0
PERMUTED = ["permuted-1:blood_group", "permuted-2:blood_group"]


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
            "permuted_controls": PERMUTED,
            "noise": "per-subject",
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
            # A biased generator: its second seed is 50 HU brighter everywhere.
            floor = factual + FLOOR_BIAS + rng.normal(0, 1.0, labels.shape)
            edited = factual + rng.normal(0, 3.0, labels.shape)
            if smoke != "current":
                edited[upper] += SHIFT
            nulled = factual + rng.normal(0, 3.0, labels.shape)
            outputs = [
                (layout.factual(sid, k), factual),
                (layout.floor(sid, k), floor),
                (layout.edited(sid, edit, k), edited),
                (layout.edited(sid, null, k), nulled),
            ]
            outputs += [
                (layout.edited(sid, name, k), factual + rng.normal(0, 3.0, labels.shape))
                for name in PERMUTED
            ]
            for path, arr in outputs:
                write_volume(Volume(arr.astype(np.float32), affine), path)
    return run


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    run = _build(tmp_path_factory.mktemp("analyze"))
    results = analyze_run(run, n_boot=400, seed=0, progress=False)
    return run, results


BIAS = 3.0
N_BIASED = 8


def _build_biased(root):
    """A model with a systematic +3 HU shift: every edit and control brightens every voxel.

    No effects.json (nothing planted); the run record has no 'noise' key (an older run).
    """
    rng = np.random.default_rng(1)
    cohort = root / "cohort"
    affine, labels = _affine(), _labels()
    lung = (labels == 1) | (labels == 2)
    ids = [f"sub-{k:03d}" for k in range(N_BIASED)]
    rows = ["id,age,smoking,blood_group"]
    for sid, smoke, blood, age in zip(ids, SMOKING, BLOOD, AGES, strict=False):
        rows.append(f"{sid},{age},{smoke},{blood}")
        real = np.where(lung, -870.0, 40.0) + rng.normal(0, 20.0, labels.shape)
        write_volume(Volume(real.astype(np.float32), affine), cohort / "images" / f"{sid}.nii.gz")
        write_volume(Volume(labels, affine), cohort / "masks" / f"{sid}.nii.gz")
    write_text(cohort / "clinical.csv", "\n".join(rows) + "\n")
    run = root / "run"
    layout = RunLayout(run)
    edit, null = "smoking=current", "blood_group=O"
    perm = [f"permuted-{i}:blood_group" for i in range(1, 5)]
    write_json(
        layout.json_path,
        {
            "cohort": str(cohort),
            "edits": [edit],
            "null_edits": [null],
            "permuted_controls": perm,
            "seeds": [0],
            "subjects": ids,
            "hu_window": [-1000, 500],
            "config": {"data": DataConfig().model_dump()},
        },
    )
    # Each contrast has its own systematic shift near +3 HU (the spread the calibration
    # must learn), and each subject a little variation around it.
    shift = {c: BIAS + rng.normal(0.0, 0.4) for c in [null, *perm]}
    shift[edit] = BIAS + 0.2
    for sid in ids:
        factual = np.where(lung, -860.0, 30.0) + rng.normal(0, 20.0, labels.shape)
        write_volume(Volume(factual.astype(np.float32), affine), layout.factual(sid, 0))
        floor = factual + rng.normal(0, 2.0, labels.shape)
        write_volume(Volume(floor.astype(np.float32), affine), layout.floor(sid, 0))
        for c, b in shift.items():
            arr = factual + b + rng.normal(0.0, 0.3) + rng.normal(0, 2.0, labels.shape)
            write_volume(Volume(arr.astype(np.float32), affine), layout.edited(sid, c, 0))
    return run


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    run = _build_biased(tmp_path_factory.mktemp("biased"))
    return run, analyze_run(run, n_boot=200, seed=0, progress=False)


def _row(rows, contrast, region):
    """The one row of a contrast and region (rows of results.json, or records)."""

    def key(r, k):
        return r[k] if isinstance(r, dict) else getattr(r, k)

    found = [r for r in rows if key(r, "contrast") == contrast and key(r, "region") == region]
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
    assert lay.edited("s1", "permuted-1:blood_group", 0).name == "permuted-1_blood_group_s0.nii.gz"


def test_read_run_lists_permuted_controls_as_volumes(tmp_path):
    record = {
        "cohort": "c",
        "edits": ["a=1"],
        "permuted_controls": ["permuted-1:b"],
        "seeds": [0],
        "subjects": ["s"],
        "noise": "per-subject",
    }
    (tmp_path / "counterfactual.json").write_text(json.dumps(record))
    run = read_run(tmp_path, check_volumes=False)
    assert run.permuted_controls == ["permuted-1:b"] and run.null_edits == []
    assert run.noise == "per-subject"
    names = {p.name for p in RunLayout(tmp_path).volumes(run)}
    assert names == {
        "factual_s0.nii.gz",
        "floor_s0.nii.gz",
        "a=1_s0.nii.gz",
        "permuted-1_b_s0.nii.gz",
    }
    with pytest.raises(UnveilError, match=r"permuted-1_b_s0.nii.gz is missing"):
        for p in RunLayout(tmp_path).volumes(run)[:2]:
            write_volume(Volume(np.zeros((2, 2, 2), dtype=np.float32), np.eye(4)), p)
        write_volume(
            Volume(np.zeros((2, 2, 2), dtype=np.float32), np.eye(4)),
            RunLayout(tmp_path).edited("s", "a=1", 0),
        )
        read_run(tmp_path)
    for bad in ({"permuted_controls": "permuted-1:b"}, {"noise": 1}):
        (tmp_path / "counterfactual.json").write_text(json.dumps({**record, **bad}))
        with pytest.raises(UnveilError):
            read_run(tmp_path, check_volumes=False)
    (tmp_path / "counterfactual.json").write_text(
        json.dumps({**record, "permuted_controls": ["a=1"]})
    )
    with pytest.raises(UnveilError, match="collide"):
        read_run(tmp_path, check_volumes=False)


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
    assert read_run(tmp_path, check_volumes=False).null_edits == []


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
    assert up["significant"] and up["q_calibrated"] < 0.05 and up["q_value"] < 0.05
    assert up["effect_size_dz"] < -1.0
    assert up["se_hu"] == pytest.approx(up["sd_hu"] / math.sqrt(len(SMOKING)))
    assert up["n_subjects"] == len(SMOKING) and up["n_seeds"] == len(SEEDS)
    assert up["control_kind"] == "" and not up["null_control"]
    # nothing planted in the lower zone or the airway
    for region in ("lower_lung", "airway"):
        row = _row(results["cohort_stats"], "smoking=current", region)
        assert abs(row["mean_diff_hu"]) < 3.0 and not row["significant"]
    rec = _row(results["recovery"], "smoking=current", "upper_lung")
    assert rec["planted_hu"] == pytest.approx(planted)
    assert abs(rec["error_hu"]) < 0.1 * abs(planted)
    assert rec["sign_ok"] and rec["within_tolerance"] and rec["within_30pct"]
    # an effect planted in the upper zone counts in "lung" in proportion to its voxels
    lung = _row(results["recovery"], "smoking=current", "lung")
    assert lung["planted_hu"] == pytest.approx(planted / 3.0, rel=0.15)
    low = _row(results["recovery"], "smoking=current", "lower_lung")
    assert low["planted_hu"] == 0.0 and low["within_tolerance"]  # |recovered| <= 5 HU
    rec_v = results["verdict"]["recovery"]
    assert rec_v["passed"] is True and rec_v["tolerance"] == 0.3
    checks = {(c["region"], c["check"]) for c in rec_v["checked"]}
    assert checks == {
        ("upper_lung", "planted"),
        ("middle_lung", "nothing planted"),
        ("lower_lung", "nothing planted"),
    }


def test_biased_noise_floor_makes_nothing_significant(analyzed):
    # The old bug: effects tested against a floor 50 HU off made a null edit "significant".
    _, results = analyzed
    floor = {r["region"]: r for r in results["noise_floor"]}
    assert all(f["floor_mean_hu"] == pytest.approx(FLOOR_BIAS, abs=0.5) for f in floor.values())
    for contrast in ("blood_group=O", *PERMUTED):
        rows = [r for r in results["cohort_stats"] if r["contrast"] == contrast]
        assert len(rows) == len(floor)
        assert not any(r["significant"] for r in rows)
        assert all(r["q_value"] > 0.05 for r in rows), contrast
    # and the floor is reported, with what it lets one detect
    lung = floor["lung"]
    mde = (1.959964 + 0.841621) * lung["floor_sd_hu"] / math.sqrt(len(SMOKING))
    assert lung["mde_hu"] == pytest.approx(mde, rel=1e-4)
    assert lung["seed_sd_hu"] < 1.0  # floor = factual + 50 + 1 HU voxel noise
    up = _row(results["cohort_stats"], "smoking=current", "upper_lung")
    assert up["floor_mean_hu"] == floor["upper_lung"]["floor_mean_hu"]
    assert up["mde_hu"] == floor["upper_lung"]["mde_hu"]


def test_null_controls_report_nothing(analyzed):
    _, results = analyzed
    for contrast, kind in [("blood_group=O", "null_edit")] + [(p, "permuted") for p in PERMUTED]:
        rows = [r for r in results["cohort_stats"] if r["contrast"] == contrast]
        assert rows and all(r["null_control"] and r["control_kind"] == kind for r in rows)
        assert not any(r["significant"] for r in rows)
        assert all(abs(r["mean_diff_hu"]) < 1.0 for r in rows)
        # leave-one-out calibrated p, for display
        assert all(0.0 <= r["p_calibrated"] <= 1.0 for r in rows)
    v = results["verdict"]
    assert v["null_control_passed"] is True
    assert v["null_control_max_abs_hu"] < 1.0
    null_v = next(e for e in v["edits"] if e["contrast"] == "blood_group=O")
    assert null_v["summary"].startswith("null control passed")
    assert (
        "upper_lung"
        in next(e for e in v["edits"] if e["contrast"] == "smoking=current")["significant_regions"]
    )
    # the permuted controls are read as null controls and calibrate the real edit
    cal = results["calibration"]
    assert cal["available"] and cal["n_controls"] == 3 and cal["n_rows"] == 27
    assert set(cal["controls"]) == {"blood_group=O", *PERMUTED}
    assert abs(cal["mu_hu"]) < 0.5 and cal["tau_hu"] < 0.5
    # permuted controls are not edits: no association, no planted expectation
    for table in ("observed", "adjusted", "recovery"):
        assert not [r for r in results[table] if r["contrast"] in PERMUTED], table
    assert results["settings"]["control_kinds"]["permuted-1:blood_group"] == "permuted"
    # BH within each family: q >= p everywhere
    assert all(r["q_value"] >= r["p_value"] - 1e-12 for r in results["cohort_stats"])
    assert not any("per-subject" in n for n in v["notes"])  # the run says so


def test_specificity_of_the_planted_edit(analyzed):
    _, results = analyzed
    spec = next(r for r in results["specificity"] if r["contrast"] == "smoking=current")
    assert spec["peak_region"] == "upper_lung"
    assert spec["peak_hu"] == pytest.approx(-48.0, rel=0.1)
    assert abs(spec["spill_hu"]) < 1.0 and spec["spill_fraction"] < 0.03
    assert spec["spill_ci_low"] <= spec["spill_hu"] <= spec["spill_ci_high"]
    assert abs(spec["airway_hu"]) < 1.0
    up = _row(results["cohort_stats"], "smoking=current", "upper_lung")
    assert (spec["peak_ci_low"], spec["peak_ci_high"]) == (up["ci_low"], up["ci_high"])
    (line,) = results["verdict"]["specificity"]
    assert line.startswith("smoking=current: largest in upper_lung -48")
    assert "rest of the lung" in line and "airway" in line


def test_observed_association_in_real_cohort(analyzed):
    _, results = analyzed
    row = _row(results["observed"], "smoking=current", "upper_lung")
    assert (row["n_a"], row["n_b"]) == (2, 8)
    assert row["diff_hu"] == pytest.approx(SHIFT, abs=3.0)
    assert row["ci_low"] <= row["diff_hu"] <= row["ci_high"] < 0.0
    low = _row(results["observed"], "smoking=current", "lower_lung")
    assert abs(low["diff_hu"]) < 5.0
    # the null edit is compared with the run's baseline value (blood_group=A), not the rest
    blood = _row(results["observed"], "blood_group=O", "lung")
    assert blood["group_b"] == "blood_group=A"
    assert (blood["n_a"], blood["n_b"]) == (BLOOD.count("O"), BLOOD.count("A"))
    adj = _row(results["adjusted"], "smoking=current", "upper_lung")
    assert adj["diff_hu"] == pytest.approx(SHIFT, abs=5.0)
    assert adj["term_a"] == "smoking[current]" and adj["n_subjects"] == len(SMOKING)


def test_every_output_written(analyzed):
    run, results = analyzed
    out = RunLayout(run).analysis_dir
    for name in (
        "subject_regions.csv",
        "cohort_stats.csv",
        "noise_floor.csv",
        "specificity.csv",
        "observed.csv",
        "adjusted.csv",
        "recovery.csv",
        "results.json",
    ):
        assert (out / name).is_file(), name
    with open(out / "cohort_stats.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [
        "contrast", "region", "n_subjects", "mean_diff_hu", "ci_low", "ci_high", "sd_hu",
        "se_hu", "effect_size_dz", "statistic", "p_value", "q_value", "se_train_hu",
        "se_total_hu", "p_total", "q_total", "p_calibrated", "q_calibrated", "significant", "test", "null_control", "control_kind", "floor_mean_hu",
        "floor_sd_hu", "seed_sd_hu", "mde_hu", "n_seeds",
    ]  # fmt: skip
    assert len(rows) == len(results["cohort_stats"])
    with open(out / "subject_regions.csv", newline="") as fh:
        sub = list(csv.DictReader(fh))
    floors = {r["id"] for r in sub if r["contrast"] == "noise_floor"}
    assert len(floors) == len(SMOKING)
    assert {r["contrast"] for r in sub} >= set(PERMUTED)
    with open(out / "recovery.csv", newline="") as fh:
        assert "within_tolerance" in next(csv.DictReader(fh))
    on_disk = json.loads((out / "results.json").read_text())
    assert "config" not in on_disk["run"] and on_disk["alpha"] == 0.05
    assert set(on_disk) >= {
        "run", "cohort_stats", "noise_floor", "calibration", "specificity", "observed",
        "adjusted", "recovery", "verdict",
    }  # fmt: skip
    lay = RunLayout(run)
    for sid in ("sub-000", "sub-002"):
        for edit in ("smoking=current", "blood_group=O", *PERMUTED):
            assert lay.map_png(sid, edit).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the mean map is in HU on the source grid: -60 in the upper zone of a never smoker
    vol = read_volume(lay.map_nifti("sub-000", "smoking=current"))
    np.testing.assert_allclose(vol.affine, _affine())
    upper = region_mask(_labels(), _affine(), "upper_lung")
    assert float(vol.array[upper].mean()) == pytest.approx(SHIFT, abs=1.0)
    assert abs(float(vol.array[~upper].mean())) < 1.0
    assert lay.map_png("sub-000", "noise_floor").is_file()  # chance on the same scale
    floor_map = read_volume(lay.map_nifti("sub-000", "noise_floor")).array
    assert float(floor_map.mean()) == pytest.approx(FLOOR_BIAS, abs=0.5)
    assert "upper_lung" in format_table(results) and "q cal" in format_table(results)
    assert any("groups of 2 and 8" in n for n in results["verdict"]["notes"])
    assert all(math.isfinite(r["p_value"]) for r in results["cohort_stats"])


def test_calibration_on_a_biased_model(biased):
    _, results = biased
    cal = results["calibration"]
    assert cal["available"] and cal["n_controls"] == 5
    assert cal["mu_hu"] == pytest.approx(BIAS, abs=0.8)
    assert 0.0 <= cal["tau_hu"] < 1.5
    lung = _row(results["cohort_stats"], "smoking=current", "lung")
    # raw: a consistent +3 HU in every subject is "significant"; calibrated: it is what
    # every attribute without effect produces through this model.
    assert lung["mean_diff_hu"] == pytest.approx(BIAS + 0.2, abs=0.5)
    assert lung["q_value"] < 0.05
    assert lung["p_calibrated"] > lung["p_value"] and lung["q_calibrated"] > 0.05
    assert not lung["significant"]
    assert not any(
        r["significant"] for r in results["cohort_stats"] if r["contrast"] == "smoking=current"
    )
    # the controls themselves are judged raw, and they do shift: the null control fails
    v = results["verdict"]
    assert v["null_control_passed"] is False
    assert v["null_control_max_abs_hu"] > 2.0
    null_v = next(e for e in v["edits"] if e["contrast"] == "blood_group=O")
    assert null_v["summary"].startswith("null control FAILED")
    assert v["recovery"] is None and results["recovery"] == []  # nothing planted
    assert any("per-subject" in n and "not independent" in n for n in v["notes"])


def _cohort_row(contrast, est, se, p, null, n=10):
    """A cohort row as the tests against zero leave it (no FDR, no calibration yet)."""
    return CohortRow(
        contrast=contrast, region="lung", n_subjects=n, mean_diff_hu=est, ci_low=math.nan,
        ci_high=math.nan, se_hu=se, p_value=p, q_value=math.nan, significant=False,
        null_control=null,
    )  # fmt: skip


def test_too_few_controls_fall_back_on_the_raw_test():
    rows = [_cohort_row("a=1", -20.0, 1.0, 0.001, False), _cohort_row("b=1", 0.5, 1.0, 0.6, True)]
    out, cal = calibrate_rows(rows, alpha=0.05)
    assert not cal.available and cal.n_rows == 1
    assert out[0].significant and math.isnan(out[0].p_calibrated)
    assert not out[1].significant
    assert not rows[0].significant  # pure: the rows given are not changed


def test_calibrate_rows_judges_edits_against_the_empirical_null():
    rng = np.random.default_rng(5)
    # controls: systematic error N(4, 1^2), small sampling error, every one raw-significant
    rows = [
        _cohort_row(f"null-{i}", 4.0 + rng.normal(0.0, 1.0), 0.2, 1e-4, True) for i in range(12)
    ]
    rows.append(_cohort_row("x=1", 4.5, 0.2, 1e-6, False))
    rows.append(_cohort_row("y=1", -30.0, 2.0, 1e-6, False))
    rows, cal = calibrate_rows(rows, alpha=0.05)
    assert cal.available and cal.n_rows == 12
    assert cal.mu_hu == pytest.approx(4.0, abs=0.8)
    x, y = rows[-2], rows[-1]
    assert x.p_calibrated > 0.3 and not x.significant  # within the model's bias
    assert y.p_calibrated < 1e-3 and y.significant  # far outside it
    assert all(r.significant for r in rows[:12])  # controls: raw, not calibrated
    assert all(0.0 <= r.p_calibrated <= 1.0 for r in rows[:12])  # leave-one-out


def test_adjusted_association_removes_confounding():
    rng = np.random.default_rng(2)
    n = 200
    smoker = rng.random(n) < 0.5
    age = np.where(smoker, rng.normal(72, 5, n), rng.normal(52, 5, n))  # smokers older
    blood = rng.choice(["A", "B", "O"], n)
    height = rng.normal(170, 8, n)
    y = -860.0 - 60.0 * smoker + 1.0 * (age - 60.0) + rng.normal(0, 4.0, n)
    ids = [f"s{i}" for i in range(n)]
    table = {
        sid: {
            "age": float(a),
            "smoking": "current" if sm else "never",
            # attributes without effect, with missing values: a level, a fill + indicator
            "blood_group": str(b) if i % 7 else None,
            "height": float(h) if i % 9 else None,
        }
        for i, (sid, sm, a, b, h) in enumerate(zip(ids, smoker, age, blood, height, strict=True))
    }
    real = {sid: np.array([v, v + 10.0]) for sid, v in zip(ids, y, strict=True)}
    edits = [parse_run_edit("smoking=current"), parse_run_edit("age+=10")]
    base = [parse_run_edit("smoking=never")]
    raw, _ = observed_rows(
        ["smoking=current"], {"smoking=current": edits[0]}, ["lung", "upper_lung"], real,
        table, 300, 0, base,
    )  # fmt: skip
    rows, _ = adjusted_association(table, real, ["lung", "upper_lung"], edits, base)
    smoke = _row(rows, "smoking=current", "lung")
    assert raw[0].group_b == "smoking=never"
    assert raw[0].diff_hu > -50.0  # confounded by age: about -60 + 20
    assert smoke.diff_hu == pytest.approx(-60.0, abs=3.0)
    assert smoke.ci_low < -60.0 < smoke.ci_high
    assert smoke.term_a == "smoking[current]" and "reference" in smoke.term_b
    assert smoke.n_subjects == n
    age10 = _row(rows, "age+=10", "lung")
    assert age10.diff_hu == pytest.approx(10.0, abs=1.5) and age10.scale == 10.0
    # same answer whatever the region's offset
    assert _row(rows, "smoking=current", "upper_lung").diff_hu == pytest.approx(smoke.diff_hu)
    # a baseline that is not the reference level: never -> current against former
    table2 = {s: {**r, "smoking": "former" if i % 3 == 0 else r["smoking"]} for i, (s, r) in enumerate(table.items())}  # fmt: skip
    rows2, _ = adjusted_association(
        table2, real, ["lung"], edits[:1], [parse_run_edit("smoking=former")]
    )
    assert rows2[0].term_b == "smoking[former]"
    assert math.isfinite(rows2[0].se_hu) and rows2[0].se_hu > 0
    # an edit to the reference level without a baseline: against the other levels, not 0
    recorded = [r["blood_group"] for r in table.values() if r["blood_group"]]
    top = sorted(set(recorded), key=lambda b: (-recorded.count(b), b))[0]  # the reference
    (blood,), _ = adjusted_association(
        table, real, ["lung"], [parse_run_edit(f"blood_group={top}")]
    )
    assert blood.term_b == "blood_group[other recorded levels, by frequency]"
    assert abs(blood.diff_hu) < 3.0 and blood.se_hu > 0.1
    assert blood.ci_low < 0.0 < blood.ci_high
    # a column without variation: no row, and a caution that says why
    flat = {sid: {**r, "site": "A"} for sid, r in table.items()}
    none, notes = adjusted_association(flat, real, ["lung"], [parse_run_edit("site=B")])
    assert none == [] and any("site" in n and "does not vary" in n for n in notes)


def test_observed_compares_target_with_the_baseline_value():
    smoking = ["never"] * 6 + ["former"] * 6 + ["current"] * 6
    real = {f"s{i}": np.array([-860.0 - 40.0 * (s == "current")]) for i, s in enumerate(smoking)}
    clinical = {f"s{i}": {"smoking": s} for i, s in enumerate(smoking)}
    edit = parse_run_edit("smoking=current")
    args = (["smoking=current"], {"smoking=current": edit}, ["lung"], real, clinical, 200, 0)
    (with_base,), notes = observed_rows(*args, [parse_run_edit("smoking=never")])
    assert (with_base.group_b, with_base.n_b) == ("smoking=never", 6)
    assert with_base.diff_hu == pytest.approx(-40.0)
    assert notes == []  # groups of 6 and 6: no caution
    (rest,), _ = observed_rows(*args)
    assert (rest.group_b, rest.n_b) == ("smoking!=current", 12)


def test_cli_missing_json_exits_2(tmp_path, capsys):
    from unveil.cli import main

    (tmp_path / "notarun").mkdir()
    rc = main(["analyze", str(tmp_path / "notarun")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "counterfactual.json is missing" in err


def test_cli_runs_and_prints_table(analyzed, capsys):
    from unveil.cli import main

    run, results = analyzed
    assert results["verdict"]["recovery"]["passed"] is True  # with the default tolerances
    # A tolerance of 0.001%: the recovered -48.0x HU is no longer "within" the planted -48.
    argv = ["analyze", str(run), "--n-boot", "200", "--test", "t", "--tolerance", "0.00001"]
    rc = main([*argv, "--spill-limit", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "smoking=current" in out and "upper_lung" in out and "null control passed" in out
    assert "specificity: smoking=current: largest in upper_lung" in out
    assert "empirical null from 27 control row(s)" in out
    assert "planted-effect recovery FAILED" in out
    stats = json.loads((RunLayout(run).analysis_dir / "results.json").read_text())
    assert stats["settings"]["test"] == "t"
    assert stats["cohort_stats"][0]["test"] == "one-sample t"
    assert stats["settings"]["recovery_tolerance"] == 0.00001
    assert stats["verdict"]["recovery"]["spill_limit_hu"] == 0.0


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
    # anterior in row 0 (imshow's default origin), as in the report's panels
    front = np.zeros_like(vol)
    front[:, 5, :] = 1.0  # largest j = most anterior under a RAS affine
    assert display_slices(front, vol > 0, ras)["axial"][0].all()


def test_display_slices_centre_is_the_lung_centroid():
    # One rule for every mid-lung slice (analyze maps and report panels): the centroid of
    # the lung mask, which a stray mask voxel far away barely moves (a bounding box would).
    vol = np.zeros((20, 20, 20), dtype=np.float32)
    lung = np.zeros(vol.shape, dtype=bool)
    lung[4:11, 4:11, 4:11] = True
    lung[19, 19, 19] = True
    assert display_slices(vol, lung, np.eye(4))["centre"] == (7, 7, 7)
    assert display_slices(vol, np.zeros_like(lung), np.eye(4))["centre"] == (10, 10, 10)


def test_expected_shift_per_unit_and_intersection():
    effects = [
        EffectSpec(attribute="age", per_unit=1.0, reference=60.0, region="lung"),
        EffectSpec(
            attribute="diagnosis", value="IPF", region="lower_lung&lung_periphery", shift_hu=120.0
        ),
    ]
    regions = ["lung", "upper_lung", "lower_lung&lung_periphery", "airway"]
    idx = region_indices(_labels(), _affine(), DataConfig(), regions)
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
    rng = np.random.default_rng(0)
    ages = rng.uniform(40, 80, 30)
    real = {
        f"s{i}": np.array([-870.0 + 1.0 * (a - 60.0) + rng.normal(0, 2.0)])
        for i, a in enumerate(ages)
    }
    clinical = {f"s{i}": {"age": a} for i, a in enumerate(ages)}
    clinical["s0"]["age"] = None  # missing values are excluded
    edit = parse_run_edit("age+=10")
    (row,), _ = observed_rows(["age+=10"], {"age+=10": edit}, ["lung"], real, clinical, 300, 0)
    assert row.n_a == 29 and row.diff_hu == pytest.approx(10.0, abs=1.0)
    assert row.ci_low < 10.0 < row.ci_high
    (down,), _ = observed_rows(
        ["age-=10"], {"age-=10": parse_run_edit("age-=10")}, ["lung"], real, clinical, 300, 0
    )
    assert down.diff_hu == pytest.approx(-row.diff_hu)
    assert down.ci_low < down.ci_high < 0


def test_generated_volume_off_the_mask_grid_is_refused(tmp_path):
    path = tmp_path / "factual_s0.nii.gz"
    write_volume(Volume(np.zeros((4, 4, 4), dtype=np.float32), np.eye(4)), path)
    with pytest.raises(UnveilError, match=r"shape \(4, 4, 4\).*re-run unveil counterfactual"):
        read_generated(path, (8, 8, 8))


def test_training_cohort_uncertainty_keeps_a_learned_chance_association_from_significance():
    """A model applies the chance association of its training cohort (here -3 HU) to every
    held-out subject alike: tiny subject-level SE, 'significant' on that alone.  With the
    adjusted regression's SE of the same contrast added it is not; a real -60 HU shift is."""
    rows = [
        _cohort_row("smoking=current", -60.0, 0.5, 1e-9, False, n=30),
        _cohort_row("blood_group=O", -3.0, 0.2, 1e-9, True, n=30),
    ]
    adjusted = [
        AdjustedRow(contrast="smoking=current", region="lung", diff_hu=-60.0, se_hu=8.0),
        AdjustedRow(contrast="blood_group=O", region="lung", diff_hu=-3.0, se_hu=2.2),
    ]
    rows = add_training_uncertainty(rows, adjusted)
    assert rows[1].se_total_hu == pytest.approx(math.hypot(0.2, 2.2))
    assert rows[1].se_train_hu == 2.2
    assert rows[1].p_total > 0.1 and rows[0].p_total < 1e-6
    rows, _ = calibrate_rows(rows, alpha=0.05, min_rows=5)  # too few controls: judged on p_total
    assert rows[0].significant and not rows[1].significant
    assert rows[1].q_value < 0.05  # the subject-level test alone would have called it


# ------------------------------------------------------------ pure compute, no files


def test_run_design_classifies_the_controls():
    run = RunRecord(
        cohort="c",
        edits=["smoking=current", "blood_group=A"],
        null_edits=["blood_group=O"],
        permuted_controls=["permuted-1:blood_group"],
        baseline=["smoking=never"],
        seeds=[0],
        subjects=["s"],
    )
    design = run_design(run, ["lung"], null_attributes=["blood_group"])
    assert design.contrasts == [
        "smoking=current", "blood_group=A", "blood_group=O", "permuted-1:blood_group",
    ]  # fmt: skip
    assert design.kinds == {
        "smoking=current": "",
        "blood_group=A": "effect_free",  # an edit of an attribute declared effect-free
        "blood_group=O": "null_edit",
        "permuted-1:blood_group": "permuted",
    }
    assert design.controls == design.contrasts[1:]
    assert design.parsed["smoking=current"].column == "smoking"
    assert "permuted-1:blood_group" not in design.parsed  # not an edit
    assert design.baseline[0].value == "never"


REGIONS5 = ["lung", "upper_lung", "middle_lung", "lower_lung", "airway"]


def _synthetic(n_run=8, n_all=14, seed=3):
    """A run's measured arrays made up: smoking=current darkens the upper zone by 40 HU in
    every subject, the null edit and two permuted controls do nothing."""
    rng = np.random.default_rng(seed)
    run = RunRecord(
        cohort="c",
        edits=["smoking=current"],
        null_edits=["blood_group=O"],
        permuted_controls=["permuted-1:blood_group", "permuted-2:blood_group"],
        seeds=[0, 1],
        subjects=[f"s{i}" for i in range(n_run)],
        noise="per-subject",
        hu_window=[-1000, 500],
    )
    effects = [
        EffectSpec(attribute="smoking", value="current", region="upper_lung", shift_hu=-40.0)
    ]
    design = run_design(run, REGIONS5, effects=effects)
    m = Measurements.empty(len(design.contrasts), n_run, 2, len(REGIONS5))
    m.n_voxels[:] = [300, 100, 100, 100, 20]
    upper = -40.0 + rng.normal(0.0, 2.0, n_run)
    zones = np.stack([upper, rng.normal(0, 0.5, n_run), rng.normal(0, 0.5, n_run)], axis=1)
    m.edit_vals[0, :, 1:4] = zones
    m.edit_vals[0, :, 0] = zones.mean(axis=1)
    m.edit_vals[0, :, 4] = rng.normal(0.0, 0.5, n_run)
    for ei in range(1, 4):
        m.edit_vals[ei] = rng.normal(0.0, 0.3, (n_run, len(REGIONS5)))
    m.floor_seed[:] = rng.normal(0.0, 1.0, m.floor_seed.shape)
    m.planted[0] = 0.0
    m.planted[0, :, 1] = -40.0
    m.planted[0, :, 0] = -40.0 / 3.0
    smoking = ["current" if i % 3 == 0 else "never" for i in range(n_all)]
    clinical = {
        f"s{i}": {"age": 50.0 + i, "smoking": smoking[i], "blood_group": "AO"[i % 2]}
        for i in range(n_all)
    }
    m.real_means = {
        f"s{i}": -860.0 + rng.normal(0, 3.0, len(REGIONS5)) - 40.0 * np.array([0, 1, 0, 0, 0])
        * (smoking[i] == "current")
        for i in range(n_all)
    }  # fmt: skip
    return design, m, clinical, run


def test_compute_results_from_arrays_without_files():
    design, m, clinical, run = _synthetic()
    results = compute_results(design, m, clinical, run, AnalysisOptions(n_boot=200))
    up = _row(results.cohort_stats, "smoking=current", "upper_lung")
    assert (
        isinstance(up, CohortRow)
        and up.significant
        and up.mean_diff_hu == pytest.approx(-40, abs=2)
    )
    floor = {f.region: f for f in results.noise_floor}
    assert up.floor_sd_hu == floor["upper_lung"].floor_sd_hu and up.n_seeds == 2
    assert not any(r.significant for r in results.cohort_stats if r.null_control)
    assert results.calibration.available and results.calibration.n_controls == 3
    (spec,) = [s for s in results.specificity if s.contrast == "smoking=current"]
    assert spec.peak_region == "upper_lung" and abs(spec.spill_hu) < 1.0
    obs = _row(results.observed, "smoking=current", "upper_lung")
    assert obs.diff_hu == pytest.approx(-40.0, abs=5.0) and obs.group_b == "smoking!=current"
    assert _row(results.adjusted, "smoking=current", "upper_lung").n_subjects == 14
    rec = _row(results.recovery, "smoking=current", "upper_lung")
    assert rec.planted_hu == -40.0 and rec.within and rec.sign_ok
    verdict = results.verdict
    assert verdict.recovery.passed is True and verdict.null_control_passed is True
    assert [e.contrast for e in verdict.edits] == design.contrasts
    assert verdict.specificity[0].startswith("smoking=current: largest in upper_lung")
    assert results.settings.control_kinds == {c: design.kinds[c] for c in design.controls}
    assert results.run is run
    # pure and seeded: the same arrays give the same record, which is valid JSON
    again = compute_results(design, m, clinical, run, AnalysisOptions(n_boot=200))
    assert again.to_json() == results.to_json()
    json.dumps(results.to_json(), allow_nan=False)


def test_cohort_rows_and_noise_floor_from_arrays():
    rng = np.random.default_rng(0)
    edit_vals = np.stack([rng.normal(-5.0, 1.0, (10, 2)), rng.normal(0.0, 1.0, (10, 2))])
    edit_vals[0, 3, 1] = np.nan  # a subject without the region
    rows = cohort_rows(["a=1", "b=1"], {"b=1": "null_edit"}, ["lung", "airway"], edit_vals, 200,
                       0, "t", 2, min_effect_hu=1.0)  # fmt: skip
    assert [(r.contrast, r.region, r.n_subjects) for r in rows] == [
        ("a=1", "lung", 10), ("a=1", "airway", 9), ("b=1", "lung", 10), ("b=1", "airway", 10),
    ]  # fmt: skip
    assert rows[0].test == "one-sample t (margin 1 HU)" and rows[2].test == "one-sample t"
    assert rows[2].null_control and rows[2].control_kind == "null_edit"
    floor = noise_floor_rows(["lung", "airway"], np.full((4, 2, 2), 3.0))
    assert floor[0].floor_mean_hu == 3.0 and floor[0].floor_sd_hu == 0.0 and floor[0].mde_hu == 0.0
    assert with_noise_floor(rows, floor)[1].floor_mean_hu == 3.0


def test_analysis_notes_say_what_limits_the_run():
    cal = Calibration(available=False, n_rows=1)
    rows = [_cohort_row("a=1", 1.0, 1.0, 0.5, False, n=4)]
    notes = analysis_notes(cal, [0.2, 0.0], (-1000, 500), rows, "wilcoxon", 0.05, False, False)
    assert notes[0].startswith("calibration unavailable: 1 negative-control row(s)")
    assert notes[1].startswith("10.0% of lung voxels") and "[-1000, 500]" in notes[1]
    assert "with 4 subject(s) the two-sided signed-rank test cannot reach p < 0.05" in notes[2]
    assert notes[3] == "the run has no null edit, so there is no negative control."
    assert "not independent" in notes[4] and len(notes) == 5
    ok = Calibration(available=True, n_rows=9)
    assert analysis_notes(ok, [0.0], (-1000, 500), rows, "t", 0.05, True, True) == []
