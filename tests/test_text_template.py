"""Templates: golden sentences, value formatting, missing codes, identifiers, YAML checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from unveil.errors import ConfigError, DataError, UnveilError
from unveil.text.template import (
    Template,
    format_days,
    format_number,
    load_template,
    looks_like_identifier,
    normalize_code,
    templates_dir,
)


def one_sentence(msg: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg
    assert msg.endswith("."), msg


def make(fields, **top):
    return Template.from_dict(
        {"prefix": top.pop("prefix", "Scan:"), **top, "fields": fields}, source="test"
    )


PHANTOM_FULL = {
    "id": "P001",
    "age": "76.3",
    "sex": "F",
    "smoking": "never",
    "pack_years": "0",
    "diagnosis": "IPF",
    "blood_group": "A",
}
AIIB_FULL = {
    "id": "A1",
    "diagnosis": 1,
    "survival_1y": 0,
    "age": 76.0,
    "sex": 2,
    "ctd_type": 2,
    "ctd_diagnosis_days": 913,
    "smoking": 2,
    "pack_years": 20.4,
    "smoking_stop_days": 45,
    "occupational_risk": 1,
    "environmental_risk": 0,
    "precipitins": 1,
    "familial_disease": 0,
}


# ---------------------------------------------------------------------------- golden


def test_phantom_golden_full():
    t = load_template("phantom")
    assert t.render(PHANTOM_FULL) == (
        "Lung CT scan: diagnosis is IPF. Age 76. Female. Never smoker. Pack-years: 0. Blood group A."
    )


def test_phantom_golden_with_missing_values():
    t = load_template("phantom")
    row = {
        "id": "P002",
        "age": "",
        "sex": " m ",
        "smoking": "NA",
        "pack_years": "32.5",
        "diagnosis": "none",
        "blood_group": float("nan"),
    }
    assert t.render(row) == (
        "Lung CT scan: diagnosis is no fibrotic lung disease. Male. Pack-years: 33."
    )
    row2 = {
        "id": "P003",
        "age": 54.5,
        "sex": None,
        "smoking": "Current",
        "pack_years": "unknown",
        "diagnosis": "",
        "blood_group": "ab",
    }
    assert t.render(row2) == "Lung CT scan: Age 55. Current smoker. Blood group AB."


def test_aiib23_golden_full():
    t = load_template("aiib23")
    assert t.render(AIIB_FULL) == (
        "Lung CT scan: diagnosis is IPF. One-year outcome: dead. Age 76. Female. "
        "Connective tissue disease: systemic sclerosis. CTD diagnosed 2.5 years before the scan. "
        "Ex-smoker. Pack-years: 20. Stopped smoking 45 days before the scan. "
        "Occupational exposure risk. No environmental exposure risk. Precipitins positive. "
        "No familial pulmonary fibrosis."
    )


def test_aiib23_golden_missing_codes():
    t = load_template("aiib23")
    row = {
        "id": "A2",
        "diagnosis": "1",
        "survival_1y": "0",
        "age": "76",
        "sex": "2",
        "ctd_type": 99999,
        "ctd_diagnosis_days": "Not Available",
        "smoking": "0",
        "pack_years": "99999",
        "smoking_stop_days": "",
        "occupational_risk": "unknown",
        "environmental_risk": "N/A",
        "precipitins": "99999.0",
        "familial_disease": None,
    }
    # The example sentence of the published study.
    assert t.render(row) == (
        "Lung CT scan: diagnosis is IPF. One-year outcome: dead. Age 76. Female. Never smoker."
    )


def test_all_missing_gives_prefix_only():
    t = load_template("phantom")
    row = dict.fromkeys(PHANTOM_FULL, "")
    assert t.render(row) == "Lung CT scan."


# ---------------------------------------------------------------------------- formatting


def test_integers_never_have_point_zero():
    t = make([{"name": "age", "column": "age", "kind": "number", "phrase": "Age {value}"}])
    for raw in (76, 76.0, "76", "76.0", np.float64(76.0), np.int64(76), "7.6e1"):
        assert t.render({"age": raw}) == "Scan: Age 76.", raw
    assert t.render({"age": 76.5}) == "Scan: Age 77."  # half away from zero
    assert t.render({"age": 2.5}) == "Scan: Age 3."


def test_decimals_and_units():
    t = make(
        [
            {
                "name": "fev",
                "column": "fev",
                "kind": "number",
                "phrase": "FEV1 {value}",
                "unit": "L",
                "rounding": 2,
            }
        ]
    )
    assert t.render({"fev": "2.456"}) == "Scan: FEV1 2.46 L."
    assert t.render({"fev": 2.5}) == "Scan: FEV1 2.5 L."
    assert t.render({"fev": 3.0}) == "Scan: FEV1 3 L."


def test_signs_kept():
    t = make(
        [
            {
                "name": "delta",
                "column": "delta",
                "kind": "number",
                "phrase": "change {value}",
                "range": [-10, 10],
            },
            {
                "name": "since",
                "column": "since",
                "kind": "days",
                "phrase": "event {value} before the scan",
            },
        ],
        prefix="",
    )
    assert t.render({"delta": -3, "since": -3}) == "Change -3. Event -3 days before the scan."
    assert t.render({"delta": "-3.0", "since": "-1"}) == "Change -3. Event -1 day before the scan."
    assert t.render({"delta": -0.2, "since": 0}) == "Change 0. Event 0 days before the scan."


def test_format_helpers():
    assert format_number(76.0, 0) == "76"
    assert format_number(-3, 0) == "-3"
    assert format_number(0.125, 2) == "0.13"
    assert format_number(-0.4, 0) == "0"
    assert format_days(1, 0) == "1 day"
    assert format_days(30, 0) == "30 days"
    assert format_days(90, 0) == "3 months"
    assert format_days(365, 0) == "12 months"
    assert format_days(913, 1) == "2.5 years"
    assert format_days(365.25 * 3, 1) == "3 years"
    assert format_days(-800, 1) == "-2.2 years"


def test_code_normalisation():
    assert (
        normalize_code("1")
        == normalize_code(1)
        == normalize_code(1.0)
        == normalize_code(" 1.0 ")
        == 1
    )
    assert normalize_code(np.int64(2)) == 2
    assert normalize_code(" Never ") == "never"
    for missing in (None, float("nan"), "", "   ", np.nan):
        assert normalize_code(missing) is normalize_code(None)
    t = load_template("aiib23")
    for code in (1, 1.0, "1", " 1 ", "1.0", np.float64(1.0)):
        assert t.value({**AIIB_FULL, "smoking": code}, "smoking") == 1
        assert t.clause({**AIIB_FULL, "smoking": code}, "smoking") == "current smoker"


# ---------------------------------------------------------------------------- missing / unknown


def test_unknown_is_missing_not_no():
    t = make(
        [{"name": "fam", "column": "fam", "kind": "boolean", "phrase": "familial disease: {value}"}]
    )
    assert t.render({"fam": "unknown"}) == "Scan."
    assert t.render({"fam": "Unknown "}) == "Scan."
    assert t.render({"fam": 0}) == "Scan: familial disease: no."
    assert t.render({"fam": "yes"}) == "Scan: familial disease: yes."
    a = load_template("aiib23")
    out = a.render({**AIIB_FULL, "familial_disease": "unknown", "precipitins": "unknown"})
    assert "familial" not in out.lower() and "precipitins" not in out.lower()


def test_vocab_wins_over_missing_codes():
    t = make(
        [
            {
                "name": "smoking",
                "column": "smoking",
                "kind": "category",
                "phrase": "{value}",
                "vocab": {"never": "never smoker", "unknown": "smoking status unknown"},
            }
        ]
    )
    assert t.render({"smoking": "UNKNOWN"}) == "Scan: smoking status unknown."
    assert t.render({"smoking": "NA"}) == "Scan."


def test_field_and_template_missing_codes_merge():
    t = make(
        [
            {
                "name": "age",
                "column": "age",
                "kind": "number",
                "phrase": "Age {value}",
                "missing": [-1],
            },
            {"name": "pack", "column": "pack", "kind": "number", "phrase": "pack-years: {value}"},
        ],
        missing=[99999, "not recorded"],
    )
    assert t.render({"age": -1, "pack": "99999.0"}) == "Scan."
    assert t.render({"age": "Not Recorded", "pack": -1}) == "Scan: pack-years: -1."


def test_category_value_outside_vocab_is_error():
    t = load_template("phantom")
    with pytest.raises(DataError) as exc:
        t.render({**PHANTOM_FULL, "smoking": "sometimes"})
    msg = str(exc.value)
    one_sentence(msg)
    assert "'smoking'" in msg and "'sometimes'" in msg and "vocab" in msg and "missing" in msg


def test_number_that_is_not_a_number_is_error():
    t = load_template("phantom")
    with pytest.raises(DataError) as exc:
        t.render({**PHANTOM_FULL, "age": "seventy"})
    one_sentence(str(exc.value))
    assert "'seventy'" in str(exc.value) and "'age'" in str(exc.value)


def test_row_without_template_column_is_error():
    t = load_template("phantom")
    row = dict(PHANTOM_FULL)
    del row["pack_years"]
    with pytest.raises(DataError) as exc:
        t.render(row)
    one_sentence(str(exc.value))
    with pytest.raises(DataError):
        t.check_columns(row.keys())


def test_drop_behaves_like_missing():
    t = load_template("phantom")
    missing_row = {**PHANTOM_FULL, "smoking": "", "age": "NA"}
    assert t.render(PHANTOM_FULL, drop={"smoking", "age"}) == t.render(missing_row)
    with pytest.raises(UnveilError):
        t.render(PHANTOM_FULL, drop={"nope"})


def test_id_never_rendered():
    t = load_template("phantom")
    out = t.render({**PHANTOM_FULL, "id": "SECRET-7781"})
    assert "SECRET" not in out and "7781" not in out


# ---------------------------------------------------------------------------- identifiers


@pytest.mark.parametrize(
    "column",
    [
        "id",
        "ID",
        "PatientID",
        "patient_id",
        "Patient Name",
        "name",
        "MRN",
        "dob",
        "DOB",
        "date_of_birth",
        "Date of Birth",
        "AccessionNumber",
        "accession",
        "subject_id",
    ],
)
def test_identifier_columns_refused(column):
    with pytest.raises(ConfigError) as exc:
        make([{"name": "x", "column": column, "kind": "category", "vocab": {"a": "a thing"}}])
    one_sentence(str(exc.value))
    assert column in str(exc.value)


def test_configured_id_column_refused():
    data = {
        "fields": [{"name": "code", "column": "scan_code", "kind": "category", "vocab": {"a": "a"}}]
    }
    Template.from_dict(data)  # fine with the default id column
    with pytest.raises(ConfigError):
        Template.from_dict(data, id_column="scan_code")


def test_clinical_names_not_identifiers():
    for col in (
        "age",
        "diagnosis",
        "pack_years",
        "ctd_diagnosis_days",
        "fluid",
        "survival_1y",
        "blood_group",
    ):
        assert not looks_like_identifier(col), col


# ---------------------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    "data, words",
    [
        (
            {
                "fields": [
                    {
                        "name": "a",
                        "column": "a",
                        "kind": "number",
                        "phrase": "A {value}",
                        "colour": 1,
                    }
                ]
            },
            "colour",
        ),
        (
            {"fields": [{"name": "a", "column": "a", "kind": "numbr", "phrase": "A {value}"}]},
            "kind",
        ),
        ({"feilds": []}, "feilds"),
        ({"fields": [{"name": "a", "column": "a", "kind": "number"}]}, "bare number"),
        ({"fields": [{"name": "a", "column": "a", "kind": "number", "phrase": "A"}]}, "{value}"),
        ({"fields": [{"name": "a", "column": "a", "kind": "category"}]}, "vocab"),
        (
            {"fields": [{"name": "a", "column": "a", "kind": "category", "vocab": {False: "no"}}]},
            "quote",
        ),
        (
            {
                "fields": [
                    {"name": "a", "column": "a", "kind": "category", "vocab": {1: "x", "1.0": "y"}}
                ]
            },
            "twice",
        ),
        (
            {"fields": [{"name": "a", "column": "a", "kind": "boolean", "vocab": {1: "yes"}}]},
            "both",
        ),
        (
            {
                "fields": [
                    {
                        "name": "a",
                        "column": "a",
                        "kind": "number",
                        "phrase": "A {value}",
                        "range": [5, 1],
                    }
                ]
            },
            "range",
        ),
        (
            {"fields": [{"name": "a b", "column": "a", "kind": "number", "phrase": "A {value}"}]},
            "letters",
        ),
        ({"fields": []}, "fields"),
    ],
)
def test_bad_yaml_is_one_sentence(data, words):
    with pytest.raises(ConfigError) as exc:
        Template.from_dict(data, source="bad.yaml")
    msg = str(exc.value)
    one_sentence(msg)
    assert msg.startswith("bad.yaml") and words in msg


def test_load_by_name_and_path(tmp_path):
    by_name = load_template("phantom")
    by_path = load_template(templates_dir() / "phantom.yaml")
    assert by_name.identity() == by_path.identity()
    assert by_name.field_names == [
        "diagnosis",
        "age",
        "sex",
        "smoking",
        "pack_years",
        "blood_group",
    ]
    with pytest.raises(ConfigError) as exc:
        load_template("no-such-template")
    one_sentence(str(exc.value))
    assert "phantom" in str(exc.value) and "aiib23" in str(exc.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("fields: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        load_template(bad)
    one_sentence(str(exc.value))


def test_shipped_templates_document_phantom_columns():
    t = load_template("phantom")
    assert t.columns == ["diagnosis", "age", "sex", "smoking", "pack_years", "blood_group"]
    assert t.values_of("smoking") == ["never", "former", "current"]
    assert t.values_of("diagnosis") == ["none", "IPF", "CTD-ILD"]
    assert t.values_of("sex") == ["F", "M"]
    assert t.values_of("blood_group") == ["A", "B", "AB", "O"]
    a = load_template("aiib23")
    assert a.values_of("smoking") == [0, 1, 2]
    assert a.words_of("smoking") == ["never smoker", "current smoker", "ex-smoker"]
    assert {f.kind for f in a.fields} == {"number", "category", "boolean", "days"}


def test_fields_interface():
    t = load_template("phantom")
    f = t.fields[1]
    assert (f.name, f.column, f.kind, f.range) == ("age", "age", "number", (0.0, 120.0))
    s = t.field("smoking")
    assert s.vocab["current"] == "current smoker"
    with pytest.raises(ConfigError):
        t.values_of("age")
    with pytest.raises(ConfigError) as exc:
        t.field("smokin")
    assert "did you mean 'smoking'" in str(exc.value)


def test_parse_row():
    t = load_template("aiib23")
    v = t.parse_row({**AIIB_FULL, "age": "", "survival_1y": "1"})
    assert v["age"] is None and v["survival_1y"] is True and v["smoking"] == 2
    assert math.isclose(v["pack_years"], 20.4)


def test_identity_stable_and_content_sensitive(tmp_path):
    src = yaml.safe_load((templates_dir() / "phantom.yaml").read_text())
    a = Template.from_dict(src)
    b = Template.from_dict({**src, "description": "other words", "name": "renamed"})
    assert a.identity() == b.identity() == load_template("phantom").identity()
    assert len(a.identity()) == 16
    changed = yaml.safe_load((templates_dir() / "phantom.yaml").read_text())
    changed["fields"][1]["phrase"] = "Aged {value}"
    assert Template.from_dict(changed).identity() != a.identity()
    changed = yaml.safe_load((templates_dir() / "phantom.yaml").read_text())
    changed["fields"][3]["vocab"]["never"] = "non-smoker"
    assert Template.from_dict(changed).identity() != a.identity()
    reordered = yaml.safe_load((templates_dir() / "phantom.yaml").read_text())
    reordered["fields"] = reordered["fields"][::-1]
    assert Template.from_dict(reordered).identity() != a.identity()
