"""The records of a counterfactual run and of its analysis: written and read through one
place, round trips exact, old folders read with their fallbacks, bad ones one sentence."""

from __future__ import annotations

import json
import math

import pytest

from unveil.config import DEFAULT_HU_WINDOW
from unveil.errors import DataError, UnveilError
from unveil.records import (
    AnalysisSettings,
    Calibration,
    CohortRow,
    FileIdentity,
    NoiseFloorRow,
    RecoveryRow,
    Results,
    RunLayout,
    RunPlan,
    RunRecord,
    SpecificityRow,
    SubjectRegionRow,
    Verdict,
    VerdictEdit,
    as_results,
    read_results,
    read_run_plan,
    read_run_record,
    write_analysis,
    write_run_plan,
    write_run_record,
)

NEW_RUN = {
    "checkpoint": "/runs/ckpt-00000010.pt",
    "cohort": "/data/cohort",
    "family": "gan",
    "edits": ["smoking=current"],
    "null_edits": ["blood_group=O"],
    "baseline": ["smoking=never"],
    "permuted_controls": ["permuted-1:blood_group"],
    "seeds": [0, 1],
    "noise": "per-subject",
    "subjects": ["sub-000", "sub-001"],
    "from_scan": False,
    "guidance_scale": 1.0,
    "steps": None,
    "hu_window": [-1000.0, 500.0],
    "amp": "none",
    "config": {"data": {"id_column": "id"}, "text": {"template": "phantom"}},
}


def _one_sentence(text: str) -> None:
    assert "\n" not in text and text.endswith(".") and text.count("; ") >= 1, text


# ------------------------------------------------------------------ the run record


def test_run_record_round_trip_is_exact(tmp_path):
    record = RunRecord(**NEW_RUN)
    path = write_run_record(tmp_path / "counterfactual.json", record)
    assert json.loads(path.read_text()) == NEW_RUN  # every field, in the writer's order
    assert list(json.loads(path.read_text())) == list(NEW_RUN)
    back = read_run_record(path)
    assert back == record
    assert back.window == (-1000.0, 500.0) and back.per_subject_noise
    assert back.contrasts == ["smoking=current", "blood_group=O", "permuted-1:blood_group"]
    assert "config" not in back.described() and back.described()["steps"] is None


def test_an_old_run_reads_with_the_fallbacks(tmp_path):
    old = {"cohort": "c", "edits": ["a=1"], "seeds": [0], "subjects": ["s", 7]}
    (tmp_path / "counterfactual.json").write_text(json.dumps(old))
    run = read_run_record(tmp_path / "counterfactual.json")
    assert run.null_edits == [] and run.permuted_controls == [] and run.baseline == []
    assert run.noise is None and not run.per_subject_noise  # shared noise: an older run
    assert run.floor_offset == 1000 and run.window == DEFAULT_HU_WINDOW
    assert run.steps is None and run.config_section("data") == {}
    assert run.subjects == ["s", "7"]  # an id written as a number is text
    # results.json repeats the record with the fallbacks the readers always made explicit
    assert run.described() == {
        **old,
        "subjects": ["s", "7"],
        "null_edits": [],
        "permuted_controls": [],
        "floor_seed_offset": 1000,
    }


def test_a_newer_run_keeps_fields_it_does_not_know(tmp_path):
    (tmp_path / "counterfactual.json").write_text(json.dumps({**NEW_RUN, "sampler": "ddim"}))
    run = read_run_record(tmp_path / "counterfactual.json")
    assert run.described()["sampler"] == "ddim"  # passed on, never interpreted


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"cohort": None}, "'cohort'"),
        ({"seeds": ["first"]}, "'seeds[0]' = 'first'"),
        ({"edits": "smoking=current"}, "'edits' = 'smoking=current'"),
        ({"hu_window": [-1000]}, "'hu_window'"),
    ],
)
def test_a_bad_run_record_is_one_sentence(tmp_path, change, words):
    path = tmp_path / "counterfactual.json"
    path.write_text(json.dumps({**NEW_RUN, **change}))
    with pytest.raises(DataError) as err:
        read_run_record(path)
    text = str(err.value)
    assert str(path) in text and words in text and "re-run unveil counterfactual" in text
    _one_sentence(text)


def test_a_run_record_without_a_required_field_names_it(tmp_path):
    path = tmp_path / "counterfactual.json"
    path.write_text(json.dumps({k: v for k, v in NEW_RUN.items() if k != "subjects"}))
    with pytest.raises(
        DataError, match=r"lacks the field 'subjects'; re-run unveil counterfactual"
    ):
        read_run_record(path)


# ------------------------------------------------------------------ the plan


def _plan(**change) -> RunPlan:
    fields = dict(
        checkpoint=FileIdentity(path="/c.pt", size=10, mtime_ns=5, step=2),
        cohort="/data/cohort",
        cohort_files="abc",
        family="gan",
        edits=["smoking=current"],
        null_edits=[],
        baseline=[],
        permuted_controls=[],
        seeds=[0],
        noise="per-subject",
        subjects=["s"],
        from_scan=False,
        guidance_scale=1.0,
        steps=None,
        amp="none",
    )
    return RunPlan(**{**fields, **change})


def test_plan_round_trip_and_differences(tmp_path):
    path = write_run_plan(tmp_path / "counterfactual.plan.json", _plan())
    back = read_run_plan(path)
    assert back == _plan() and back.differences(_plan()) == []
    assert _plan(seeds=[0, 1], cohort_files="x").differences(back) == ["cohort_files", "seeds"]
    # other subjects have other files: the digest is not named twice
    assert _plan(subjects=["t"], cohort_files="x").differences(back) == ["subjects"]
    # an older plan without a field (read as None) differs from this run's value
    raw = json.loads(path.read_text())
    del raw["amp"]
    path.write_text(json.dumps(raw))
    assert _plan().differences(read_run_plan(path)) == ["amp"]
    path.write_text("{not json")
    assert read_run_plan(path) is None
    path.write_text(json.dumps({"seeds": "all"}))
    assert read_run_plan(path) is None


# ------------------------------------------------------------------ the analysis


def _cohort_row(contrast="smoking=current", region="lung", **change) -> CohortRow:
    fields = dict(
        contrast=contrast, region=region, n_subjects=6, mean_diff_hu=-12.5, ci_low=-15.0,
        ci_high=-10.0, sd_hu=3.0, se_hu=1.2, effect_size_dz=-4.1, statistic=0.0,
        p_value=0.03125, q_value=0.0625, p_calibrated=math.nan, q_calibrated=math.nan,
        significant=False, test="wilcoxon signed-rank", null_control=False, control_kind="",
        floor_mean_hu=0.1, floor_sd_hu=1.0, seed_sd_hu=0.7, mde_hu=1.1, n_seeds=2,
        se_train_hu=0.0, se_total_hu=1.2, p_total=0.0001, q_total=0.0002,
    )  # fmt: skip
    return CohortRow(**{**fields, **change})


def _results() -> Results:
    return Results(
        run=RunRecord(**NEW_RUN),
        settings=AnalysisSettings(n_boot=200, alpha=0.05, test="wilcoxon"),
        cohort_stats=[
            _cohort_row(),
            _cohort_row("blood_group=O", "lung", null_control=True, control_kind="null_edit"),
        ],
        noise_floor=[
            NoiseFloorRow(region="lung", n_subjects=6, floor_mean_hu=0.1, floor_sd_hu=1.0)
        ],
        calibration=Calibration(available=False, n_rows=1, controls=["blood_group=O"]),
        specificity=[
            SpecificityRow(
                contrast="smoking=current", peak_region=None, peak_hu=math.nan, spill_hu=math.nan
            )
        ],  # fmt: skip
        recovery=[
            RecoveryRow(
                contrast="=cmd",
                region="lung",
                planted_hu=-12.0,
                recovered_hu=-12.5,
                sign_ok=True,
                within_tolerance=True,
                within_30pct=True,
            )
        ],  # fmt: skip
        verdict=Verdict(
            alpha=0.05,
            edits=[VerdictEdit(contrast="smoking=current", summary="no region differs")],
            notes=["a caution"],
        ),
    )


def test_results_round_trip_through_json_and_csv(tmp_path):
    layout = RunLayout(tmp_path)
    results = _results()
    subject_rows = [
        SubjectRegionRow(id="=cmd", contrast="x", seed=0, region="lung", n_voxels=3,
                         mean_diff_hu=1.5)
    ]  # fmt: skip
    write_analysis(layout.analysis_dir, results, subject_rows)
    on_disk = json.loads(layout.results_json.read_text())
    assert on_disk["cohort_stats"][0]["p_calibrated"] is None  # NaN is null in JSON
    assert "config" not in on_disk["run"] and "n_boot" not in on_disk  # legacy key not written
    assert "specificity" not in on_disk["verdict"]["edits"][0]  # absent, not null
    back = read_results(tmp_path)
    assert back.to_json() == results.to_json() == on_disk
    assert math.isnan(back.cohort_stats[0].p_calibrated)
    # the CSV files say the same: a results.json without tables reads them back
    slim = {k: on_disk[k] for k in ("run", "settings", "calibration", "verdict", "alpha")}
    layout.results_json.write_text(json.dumps(slim))
    from_csv = read_results(tmp_path)
    assert from_csv.to_json() == on_disk
    assert from_csv.recovery[0].contrast == "=cmd"  # the spreadsheet quote is removed
    assert layout.table_csv("recovery").read_text().splitlines()[1].startswith("'=cmd,")
    assert layout.table_csv("subject_regions").read_text().splitlines()[1].startswith("'=cmd,")


def test_old_results_read_with_the_fallbacks():
    old = _results().to_json()
    del old["calibration"], old["verdict"], old["settings"]
    old["n_boot"] = 500  # the oldest files kept it at the top level
    for row in old["cohort_stats"]:
        for key in ("q_calibrated", "p_calibrated", "se_train_hu", "se_total_hu", "p_total"):
            del row[key]
    for row in old["recovery"]:
        del row["within_tolerance"], row["null_control"]
    results = as_results(old)
    assert results.calibration is None and results.verdict is None
    assert results.bootstraps == 500
    row = results.cohort_stats[0]
    assert math.isnan(row.q_calibrated) and math.isnan(row.p_total)
    rec = results.recovery[0]
    assert rec.within is True and rec.null_control is False  # within_30pct stands in


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda r: r["cohort_stats"][1].update(mean_diff_hu="large"), "cohort_stats[1].mean_diff_hu"),
        (lambda r: r["cohort_stats"][0].pop("significant"), "lacks the field 'cohort_stats[0].significant'"),
        (lambda r: r["noise_floor"][0].update(colour="red"), "'noise_floor[0].colour' this version"),
        (lambda r: r.update(extra={}), "'extra' this version of unveil does not know"),
        (lambda r: r["run"].pop("seeds"), "lacks the field 'run.seeds'"),
    ],
)  # fmt: skip
def test_bad_results_are_one_sentence(tmp_path, mutate, words):
    layout = RunLayout(tmp_path)
    write_analysis(layout.analysis_dir, _results(), [])
    raw = json.loads(layout.results_json.read_text())
    mutate(raw)
    layout.results_json.write_text(json.dumps(raw))
    with pytest.raises(DataError) as err:
        read_results(tmp_path)
    text = str(err.value)
    assert str(layout.results_json) in text and words in text
    assert f"run `unveil analyze {tmp_path}` again" in text
    _one_sentence(text)


def test_a_bad_csv_cell_names_the_file_and_row(tmp_path):
    layout = RunLayout(tmp_path)
    write_analysis(layout.analysis_dir, _results(), [])
    raw = json.loads(layout.results_json.read_text())
    del raw["cohort_stats"]
    layout.results_json.write_text(json.dumps(raw))
    path = layout.table_csv("cohort_stats")
    path.write_text(path.read_text().replace("-12.5", "minus twelve", 1))
    with pytest.raises(DataError, match=r"cohort_stats.csv \(row 2\) has 'mean_diff_hu'"):
        read_results(tmp_path)


def test_missing_or_corrupt_results_say_to_analyze(tmp_path):
    with pytest.raises(UnveilError, match="does not exist"):
        read_results(tmp_path / "nothing")
    with pytest.raises(UnveilError, match=r"results.json is missing; run `unveil analyze"):
        read_results(tmp_path)
    layout = RunLayout(tmp_path)
    layout.analysis_dir.mkdir()
    layout.results_json.write_text("[1, 2]")
    with pytest.raises(UnveilError, match="not a JSON object"):
        read_results(tmp_path)
