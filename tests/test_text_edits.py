"""Structured edits: parsing, applying, stable text, every error as one sentence."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unveil.cli import main
from unveil.errors import UnveilError
from unveil.text.edits import (
    Edit,
    EditError,
    apply_edits,
    edit_field,
    edits_label,
    parse_edit,
    parse_edits,
    split_edit,
)
from unveil.text.template import load_template

ROW = {
    "id": "P1",
    "age": "76.3",
    "sex": "F",
    "smoking": "never",
    "pack_years": "10",
    "diagnosis": "IPF",
    "blood_group": "A",
}
AIIB_ROW = {
    "id": "A1",
    "diagnosis": 1,
    "survival_1y": 0,
    "age": 70,
    "sex": 2,
    "ctd_type": 0,
    "ctd_diagnosis_days": "",
    "smoking": 0,
    "pack_years": 0,
    "smoking_stop_days": "",
    "occupational_risk": 0,
    "environmental_risk": 0,
    "precipitins": "",
    "familial_disease": "",
}


@pytest.fixture(scope="module")
def phantom():
    return load_template("phantom")


@pytest.fixture(scope="module")
def aiib():
    return load_template("aiib23")


def one_sentence(msg: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg
    assert msg.endswith("."), msg


# ---------------------------------------------------------------------------- parsing


def test_parse_every_kind(phantom):
    assert parse_edit("smoking=current", phantom) == Edit("smoking", "set", "current")
    assert parse_edit("age=24", phantom) == Edit("age", "set", 24.0)
    assert parse_edit("age+=10", phantom) == Edit("age", "add", 10.0)
    assert parse_edit("age-=5", phantom) == Edit("age", "sub", 5.0)
    assert parse_edit("unset smoking", phantom) == Edit("smoking", "unset")
    assert parse_edit("unset-smoking", phantom) == Edit("smoking", "unset")
    assert parse_edit(" smoking = Current Smoker ", phantom) == Edit("smoking", "set", "current")


def test_stable_text_round_trips(phantom, aiib):
    for text in (
        "smoking=current",
        "age=24",
        "age+=10",
        "age-=5",
        "unset-smoking",
        "age=24.5",
        "diagnosis=CTD-ILD",
    ):
        e = parse_edit(text, phantom)
        assert str(e) == text
        assert parse_edit(str(e), phantom) == e
    # the word and any spelling of the code give the same canonical text
    assert str(parse_edit("smoking=current smoker", phantom)) == "smoking=current"
    assert str(parse_edit("age=24.0", phantom)) == "age=24"
    assert str(parse_edit("smoking=current smoker", aiib)) == "smoking=1"
    assert str(parse_edit("smoking=1.0", aiib)) == "smoking=1"
    assert parse_edit("smoking=current smoker", aiib).describe() == "smoking = current smoker"
    assert edits_label(parse_edits(["smoking=current", "age+=10"], phantom, ["sex"])) == (
        "smoking=current,age+=10,unset-sex"
    )


# ---------------------------------------------------------------------------- applying


def test_apply_category_word_or_code(phantom, aiib):
    out = apply_edits(ROW, [parse_edit("smoking=current smoker", phantom)], phantom)
    assert out["smoking"] == "current"
    assert "Current smoker." in phantom.render(out)
    for text in ("smoking=current smoker", "smoking=1", "smoking=1.0", "smoking=CURRENT SMOKER"):
        out = apply_edits(AIIB_ROW, [parse_edit(text, aiib)], aiib)
        assert out["smoking"] == 1, text
        assert "Current smoker." in aiib.render(out)


def test_apply_boolean(aiib):
    out = apply_edits(AIIB_ROW, [parse_edit("survival_1y=alive", aiib)], aiib)
    assert out["survival_1y"] == 1 and "One-year outcome: alive." in aiib.render(out)
    out = apply_edits(AIIB_ROW, [parse_edit("familial_disease=yes", aiib)], aiib)
    assert "Familial pulmonary fibrosis." in aiib.render(out)
    assert str(parse_edit("precipitins=negative", aiib)) == "precipitins=0"


def test_apply_numbers_and_unset(phantom):
    edits = [
        parse_edit(t, phantom) for t in ("age=24", "pack_years+=10", "pack_years-=5", "unset sex")
    ]
    out = apply_edits(ROW, edits, phantom)
    assert out["age"] == 24 and out["pack_years"] == 15 and out["sex"] is None
    assert phantom.render(out) == (
        "Lung CT scan: diagnosis is IPF. Age 24. Never smoker. Pack-years: 15. Blood group A."
    )
    assert ROW["age"] == "76.3" and ROW["sex"] == "F"  # input row untouched
    out = apply_edits(ROW, [parse_edit("age+=10", phantom)], phantom)
    assert out["age"] == pytest.approx(86.3)


def test_apply_days(aiib):
    out = apply_edits(
        {**AIIB_ROW, "ctd_diagnosis_days": 100}, [parse_edit("ctd_diagnosis_days+=813", aiib)], aiib
    )
    assert "CTD diagnosed 2.5 years before the scan." in aiib.render(out)


def test_shift_of_missing_value_keeps_it_missing(phantom):
    row = {**ROW, "age": ""}
    e = parse_edit("age+=10", phantom)
    assert apply_edits(row, [e], phantom)["age"] == ""
    with pytest.raises(EditError) as exc:
        apply_edits(row, [e], phantom, on_missing="error")
    one_sentence(str(exc.value))


def test_edits_apply_in_order(phantom):
    edits = parse_edits(["smoking=former", "smoking=current", "age=50", "age+=1"], phantom)
    out = apply_edits(ROW, edits, phantom)
    assert out["smoking"] == "current" and out["age"] == 51


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text, words",
    [
        ("smokin=current", ["no field", "did you mean 'smoking'", "smoking"]),
        ("smoking=sometimes", ["'sometimes'", "never smoker", "former smoker", "current smoker"]),
        ("age=500", ["outside the valid range", "[0, 120]"]),
        ("age=-1", ["outside the valid range"]),
        ("smoking+=1", ["not a number"]),
        ("sex-=1", ["not a number"]),
        ("age+=ten", ["needs a number"]),
        ("age=old", ["needs a number"]),
        ("age", ["not of the form"]),
        ("age==3", ["needs a number"]),
        ("smoking=", ["no value", "unset smoking"]),
        ("unset nope", ["no field"]),
        ("smoking=unknown", ["unset smoking"]),
        ("", ["empty"]),
    ],
)
def test_parse_errors_are_one_sentence(phantom, text, words):
    with pytest.raises(EditError) as exc:
        parse_edit(text, phantom)
    msg = str(exc.value)
    one_sentence(msg)
    for w in words:
        assert w in msg, (w, msg)


def test_shift_out_of_range_is_error(phantom):
    with pytest.raises(EditError) as exc:
        apply_edits(ROW, [parse_edit("age+=50", phantom)], phantom)
    one_sentence(str(exc.value))
    assert "126.3" in str(exc.value)


def test_hand_made_edit_checked_on_apply(phantom):
    with pytest.raises(EditError):
        apply_edits(ROW, [Edit("smoking", "set", "sometimes")], phantom)
    with pytest.raises(EditError):
        apply_edits(ROW, [Edit("nope", "unset")], phantom)
    with pytest.raises(EditError):
        apply_edits(ROW, [Edit("sex", "add", 1.0)], phantom)


def test_grammar_without_template():
    # The one spelling of the forms, shared with the analysis of runs without a template.
    assert split_edit("smoking=current") == ("smoking", "=", "current")
    assert split_edit(" age += 10 ") == ("age", "+=", "10")
    assert split_edit("age=+10") == ("age", "=", "+10")
    assert split_edit("age-=5") == ("age", "-=", "5")
    assert split_edit("unset-smoking") == ("smoking", "unset", "")
    assert split_edit("unset smoking") == ("smoking", "unset", "")
    assert split_edit("smoking=") == ("smoking", "=", "")
    assert split_edit("permuted-1:blood_group") is None
    assert split_edit("1age=3") is None
    assert edit_field("age+=10") == "age" and edit_field("unset-smoking") == "smoking"
    assert edit_field("no edit here") is None


def test_edit_error_is_unveil_error():
    assert issubclass(EditError, UnveilError)


# ---------------------------------------------------------------------------- CLI exit status


@pytest.fixture()
def cohort(tmp_path):
    d = tmp_path / "cohort"
    d.mkdir()
    (d / "clinical.csv").write_text(
        "id,age,sex,smoking,pack_years,diagnosis,blood_group\n"
        "S1,76,F,never,0,IPF,A\n"
        "S2,95,M,current,30,none,O\n"
    )
    return d


@pytest.mark.parametrize(
    "args, words",
    [
        (["--set", "smokin=current"], "no field"),
        (["--set", "smoking=sometimes"], "valid values"),
        (["--set", "age=500"], "outside the valid range"),
        (["--set", "smoking+=1"], "not a number"),
        (["--set", "age+=30"], "subject 'S2'"),
        (["--unset", "nope"], "no field"),
    ],
)
def test_cli_edit_errors_exit_2(cohort, capsys, args, words):
    rc = main(["prompts", str(cohort), "--template", "phantom", *args])
    err = capsys.readouterr().err
    assert rc == 2
    line = err.strip()
    assert line.startswith("unveil prompts: error: ") and words in line
    one_sentence(line)


def test_cli_edit_error_no_traceback_subprocess(cohort):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unveil",
            "prompts",
            str(cohort),
            "--template",
            "phantom",
            "--set",
            "smoking=sometimes",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "valid values are" in proc.stderr
