"""The evaluation folder's records (``info.json``, ``summary.json``): one writer, one reader,
one sentence for a folder that does not match."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from unveil.cli import main
from unveil.errors import DataError, UnveilError
from unveil.records.evaluation import (
    EVALUATION_FILES,
    Evaluation,
    EvaluationInfo,
    EvaluationSummary,
    Figure,
    json_ready,
    read_evaluation,
    write_evaluation,
)


def _info(**changes):
    info = {
        "checkpoint": "/runs/gan/checkpoints/ckpt-00000100.pt",
        "step": 100,
        "run_name": "gan",
        "family": "gan",
        "fusion": "affine",
        "variant": "GAN affine",
        "cohort": "/cohorts/phantom",
        "split": "test",
        "n_subjects": 2,
        "subjects": ["sub-000", "=cmd"],
        "seed": 0,
        "hu_window": [-1000.0, 500.0],
        "n_boot": 1000,
        "n_boot_set": 200,
        "guidance_scale": None,
        "amp": "bf16",
        "sample_steps": None,
        "features_2d": None,
        "features_3d": "/nets/medicalnet.pt",
        "fid_slices": "axial slices through the lung mask",
        "fid_size_2d": None,
        "fid_size_3d": 64,
        "edits": ["smoking=current"],
        "adherence": {
            "reader": "3D CNN",
            "input_size": 32,
            "epochs": 150,
            "train_subjects": 4,
            "attributes": ["smoking", "age"],
            "models": {"age": {"kind": "regressor", "classes": [], "n_train": 4}},
        },
        "versions": {"unveil": "0.1.0", "torch": "2.4"},
        "config": {"preprocess": {"hu_window": [-1000.0, 500.0]}, "nan": None},
    }
    info.update(changes)
    return info


def _summary():
    fig = {"value": 42.5, "ci_low": 40.0, "ci_high": 45.0, "n": 2, "statistic": "mean"}
    return {
        "mae_hu_lung": {**fig, "unit": "HU"},
        "psnr": {
            **fig,
            "value": math.inf,
            "ci_high": math.inf,
            "statistic": "median",
            "unit": "dB",
        },
        "ms_ssim": None,
        "ms_ssim_reason": "MS-SSIM not computed: too small.",
        "fid_2d": None,
        "fid_2d_reason": "no network.",
        "adherence_smoking_reason": "too few subjects.",
        "adherence_note": "2 of the 2 evaluated subjects are in the training split.",
        "effectiveness_smoking=current": {
            **fig,
            "value": None,
            "ci_low": None,
            "ci_high": None,
            "unit": "",
        },
    }


def _write_raw(folder, info, summary):
    folder.mkdir(parents=True)
    (folder / "info.json").write_text(json.dumps(info))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_an_evaluation_round_trips_through_its_files_with_inf_as_text(tmp_path):
    record = Evaluation(
        info=EvaluationInfo.model_validate(_info()),
        summary=EvaluationSummary.model_validate(_summary()),
    )
    out = write_evaluation(
        tmp_path / "eval", record, per_subject_csv="id\nsub-000\n", summary_md="# Evaluation\n"
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(EVALUATION_FILES)
    raw = json.loads((out / "summary.json").read_text())
    assert raw["psnr"]["value"] == "inf" and raw["psnr"]["ci_low"] == 40.0  # JSON has no inf
    assert list(raw) == list(_summary())  # report order kept
    assert list(json.loads((out / "info.json").read_text())) == list(_info())  # field order
    back = read_evaluation(out)
    assert back == record
    assert back.summary.figure("psnr").value == math.inf
    assert back.summary.figure("ms_ssim") is None and back.summary.figure("absent") is None
    assert back.summary.reason("fid_2d") == "no network."
    assert [k for k, _ in back.summary.figures()] == [
        "mae_hu_lung",
        "psnr",
        "ms_ssim",
        "fid_2d",
        "effectiveness_smoking=current",
    ]
    assert dict(back.summary.sentences())["adherence_note"].startswith("2 of the 2")
    assert back.info.subjects == ["sub-000", "=cmd"]  # raw ids, not spreadsheet-quoted
    assert back.info.adherence.models["age"].kind == "regressor"
    assert back.summary.to_dict()["mae_hu_lung"] == {**_summary()["mae_hu_lung"]}
    # The folder is complete or absent: writing over it needs overwrite.
    with pytest.raises(UnveilError, match="already exists"):
        write_evaluation(out, record, per_subject_csv="", summary_md="")


def test_an_old_folder_without_an_optional_field_is_read(tmp_path):
    info = _info()
    del info["amp"]  # evaluations before --amp existed
    folder = _write_raw(tmp_path / "old", info, _summary())
    record = read_evaluation(folder)
    assert record.info.amp is None and record.info.family == "gan"


@pytest.mark.parametrize(
    ("file", "change", "field"),
    [
        ("info.json", lambda i, s: i.pop("family"), "lacks the field 'family'"),
        (
            "info.json",
            lambda i, s: i["adherence"].pop("epochs"),
            "lacks the field 'adherence.epochs'",
        ),
        ("info.json", lambda i, s: i.update(colour="red"), "has an unknown field 'colour'"),
        ("info.json", lambda i, s: i.update(step="many"), "has an invalid field 'step'"),
        (
            "summary.json",
            lambda i, s: s["mae_hu_lung"].pop("unit"),
            "lacks the field 'mae_hu_lung.unit'",
        ),
        ("summary.json", lambda i, s: s["psnr"].update(mode=1), "has an unknown field 'psnr.mode'"),
        ("summary.json", lambda i, s: s.update(ssim="high"), "'ssim' should be a figure or null"),
        (
            "summary.json",
            lambda i, s: s.update(ssim_reason=3),
            "'ssim_reason' should be a sentence",
        ),
    ],
)
def test_a_folder_that_does_not_match_the_record_is_one_sentence(tmp_path, file, change, field):
    info, summary = _info(), _summary()
    change(info, summary)
    folder = _write_raw(tmp_path / "eval", json_ready(info), json_ready(summary))
    with pytest.raises(DataError) as caught:
        read_evaluation(folder)
    text = str(caught.value)
    assert str(folder / file) in text and field in text
    assert text.endswith(f"rerun unveil evaluate for {folder}.") and "\n" not in text


def test_a_folder_without_records_or_with_broken_json_is_refused(tmp_path):
    with pytest.raises(DataError, match="is not an evaluation folder .it has no info.json"):
        read_evaluation(tmp_path)
    folder = _write_raw(tmp_path / "eval", _info(), _summary())
    (folder / "summary.json").write_text("{not json")
    with pytest.raises(DataError, match="summary.json cannot be read as JSON"):
        read_evaluation(folder)


def test_compare_refuses_a_folder_missing_a_required_field_in_one_line(tmp_path, capsys):
    info = _info()
    del info["fusion"]
    folder = _write_raw(tmp_path / "old", info, json_ready(_summary()))
    assert main(["compare", str(folder), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "info.json lacks the field 'fusion'" in err and "rerun unveil evaluate" in err
    assert not (tmp_path / "cmp").exists()


def test_json_ready_writes_inf_as_text_nan_as_null_and_numpy_as_numbers():
    out = json_ready(
        {1: [math.nan, -math.inf, np.float32(2.5)], "b": (np.int64(3), np.bool_(True))}
    )
    assert out == {"1": [None, "-inf", 2.5], "b": [3, True]}
    assert type(out["b"][0]) is int and type(out["1"][2]) is float
    assert json_ready(np.float64(math.inf)) == "inf" and json_ready("inf") == "inf"


def test_a_figure_reads_inf_text_and_refuses_unknown_fields():
    f = Figure.model_validate(
        {
            "value": "inf",
            "ci_low": None,
            "ci_high": "-inf",
            "n": 1,
            "statistic": "median",
            "unit": "dB",
        }
    )
    assert f.value == math.inf and f.ci_high == -math.inf
    with pytest.raises(ValueError):
        Figure.model_validate({**f.model_dump(), "extra": 1})
