"""``unveil prompts`` (the table reader itself is tested in ``tests/test_table.py``)."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from unveil.cli import main

HEADER = "id,age,sex,smoking,pack_years,diagnosis,blood_group\n"
ROWS = (
    "SECRET-001,76.3,F,never,0,IPF,A\n"
    "SECRET-002,,M,current,32.5,none,O\n"
    "SECRET-003,55,f,NA,12,CTD-ILD,\n"
)
EXPECTED = {
    "SECRET-001": "Lung CT scan: diagnosis is IPF. Age 76. Female. Never smoker. Pack-years: 0. Blood group A.",
    "SECRET-002": "Lung CT scan: diagnosis is no fibrotic lung disease. Male. Current smoker. Pack-years: 33. Blood group O.",
    "SECRET-003": "Lung CT scan: diagnosis is CTD-ILD. Age 55. Female. Pack-years: 12.",
}


def one_sentence(msg: str) -> None:
    assert "\n" not in msg.strip() and "Traceback" not in msg
    assert msg.strip().endswith("."), msg


@pytest.fixture()
def cohort(tmp_path):
    d = tmp_path / "cohort"
    d.mkdir()
    (d / "clinical.csv").write_text(HEADER + ROWS)
    return d


def read_prompts(text: str) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["id", "prompt"]
    return {r[0]: r[1] for r in rows[1:]}


def counts(table: str) -> dict[str, tuple[int, int]]:
    out = {}
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[3].isdigit():
            out[parts[0]] = (int(parts[3]), int(parts[4]))
    return out


# ---------------------------------------------------------------------------- command


def test_writes_csv_and_counts(cohort, tmp_path, capsys):
    out = tmp_path / "prompts.csv"
    assert main(["prompts", str(cohort), "--template", "phantom", "--out", str(out)]) == 0
    assert read_prompts(out.read_text()) == EXPECTED
    stdout = capsys.readouterr().out
    assert counts(stdout) == {
        "diagnosis": (3, 0),
        "age": (2, 1),
        "sex": (3, 0),
        "smoking": (2, 1),
        "pack_years": (3, 0),
        "blood_group": (2, 1),
    }
    assert "field" in stdout and "present" in stdout and "missing" in stdout
    assert "wrote 3 prompts" in stdout
    assert not list(tmp_path.glob(".prompts.csv*"))  # no temporary left behind


def test_prints_csv_without_out(cohort, capsys):
    assert main(["prompts", str(cohort), "--template", "phantom"]) == 0
    captured = capsys.readouterr()
    assert read_prompts(captured.out) == EXPECTED
    assert counts(captured.err)["age"] == (2, 1)


def test_prompt_never_contains_id(cohort, capsys):
    main(["prompts", str(cohort), "--template", "phantom"])
    for prompt in read_prompts(capsys.readouterr().out).values():
        assert "SECRET" not in prompt


def test_edits_change_every_prompt(cohort, tmp_path, capsys):
    out = tmp_path / "p.csv"
    rc = main(
        [
            "prompts",
            str(cohort),
            "-t",
            "phantom",
            "-o",
            str(out),
            "--set",
            "smoking=current smoker",
            "--set",
            "age+=10",
            "--unset",
            "sex",
        ]
    )
    assert rc == 0
    prompts = read_prompts(out.read_text())
    assert prompts["SECRET-001"] == (
        "Lung CT scan: diagnosis is IPF. Age 86. Current smoker. Pack-years: 0. Blood group A."
    )
    assert prompts["SECRET-002"] == (
        "Lung CT scan: diagnosis is no fibrotic lung disease. Current smoker. Pack-years: 33. Blood group O."
    )
    table = capsys.readouterr().out
    assert counts(table)["sex"] == (0, 3) and counts(table)["smoking"] == (3, 0)
    assert "smoking=current, age+=10, unset-sex" in table


def test_table_file_given_directly_and_xlsx(cohort, tmp_path, capsys):
    df = pd.read_csv(cohort / "clinical.csv", dtype=str, keep_default_na=False)
    xlsx = tmp_path / "table.xlsx"
    df.to_excel(xlsx, index=False)
    assert main(["prompts", str(xlsx), "--template", "phantom"]) == 0
    assert read_prompts(capsys.readouterr().out) == EXPECTED
    folder = tmp_path / "xcohort"
    folder.mkdir()
    df.to_excel(folder / "clinical.xlsx", index=False)
    assert main(["prompts", str(folder), "--template", "phantom"]) == 0
    assert read_prompts(capsys.readouterr().out) == EXPECTED


def test_custom_id_column_and_template_path(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("subject,smoking\nA,1\nB,99999\n")
    tpl = tmp_path / "mine.yaml"
    tpl.write_text(
        "prefix: 'CT:'\nmissing: [99999]\nfields:\n"
        "  - {name: smoking, column: smoking, kind: category, vocab: {1: current smoker}}\n"
    )
    assert main(["prompts", str(table), "-t", str(tpl), "--id-column", "subject"]) == 0
    assert read_prompts(capsys.readouterr().out) == {"A": "CT: current smoker.", "B": "CT."}


@pytest.mark.parametrize(
    "setup, args, words",
    [
        (None, ["-t", "nope"], "shipped template"),
        (None, ["-t", "phantom", "--id-column", "pid"], "no id column 'pid'"),
        (None, ["-t", "aiib23"], "no column"),
        (None, ["-t", "phantom", "--encoder", "features"], "--probe"),
        (None, ["-t", "phantom", "--probe", "smokin"], "did you mean 'smoking'"),
        ("bad_value", ["-t", "phantom"], "subject 'SECRET-002'"),
        ("id_template", ["-t", "{tpl}"], "identifier"),
        ("id_template_custom", ["-t", "{tpl}", "--id-column", "scan_code"], "identifier"),
    ],
)
def test_errors_exit_2_one_sentence(cohort, tmp_path, capsys, setup, args, words):
    if setup == "bad_value":
        (cohort / "clinical.csv").write_text(HEADER + ROWS.replace("current", "sometimes"))
    tpl = tmp_path / "tpl.yaml"
    if setup == "id_template":
        tpl.write_text("fields:\n  - {name: who, column: id, kind: category, vocab: {a: a}}\n")
    if setup == "id_template_custom":
        (cohort / "clinical.csv").write_text("scan_code,smoking\nx,never\n")
        tpl.write_text(
            "fields:\n  - {name: code, column: scan_code, kind: category, vocab: {x: x}}\n"
        )
    args = [a.replace("{tpl}", str(tpl)) for a in args]
    rc = main(["prompts", str(cohort), *args])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith("unveil prompts: error: ")
    one_sentence(captured.err)
    assert words in captured.err


def test_refuses_to_overwrite_the_table(cohort, capsys):
    table = cohort / "clinical.csv"
    before = table.read_text()
    rc = main(["prompts", str(cohort), "-t", "phantom", "--out", str(table)])
    assert rc == 2 and table.read_text() == before
    one_sentence(capsys.readouterr().err)


def test_semicolon_table_with_blank_lines(tmp_path, capsys):
    table = tmp_path / "t.csv"
    table.write_text("\ufeff" + (HEADER + ROWS).replace(",", ";").replace("\n", "\n\n", 1))
    assert main(["prompts", str(table), "--template", "phantom"]) == 0
    assert read_prompts(capsys.readouterr().out) == EXPECTED


@pytest.mark.parametrize(
    "rows, words",
    [
        (ROWS + "SECRET-001,70,M,never,0,IPF,A\n", "duplicate ids in 'id': SECRET-001;"),
        (ROWS + ",70,M,never,0,IPF,A\n", "empty 'id' on row 5"),
        (ROWS + "SECRET-004,70,M,never,0,IPF\n", "line 5 has 6 fields but the header has 7"),
    ],
)
def test_refuses_ambiguous_rows(cohort, capsys, rows, words):
    (cohort / "clinical.csv").write_text(HEADER + rows)
    rc = main(["prompts", str(cohort), "-t", "phantom"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    one_sentence(captured.err)
    assert words in captured.err


def test_missing_cohort_is_one_sentence(tmp_path, capsys):
    assert main(["prompts", str(tmp_path / "nope"), "-t", "phantom"]) == 2
    err = capsys.readouterr().err
    one_sentence(err)
    assert "does not exist" in err


def test_probe_prints_its_table(cohort, tmp_path, capsys):
    out = tmp_path / "p.csv"
    rc = main(
        [
            "prompts",
            str(cohort),
            "-t",
            "phantom",
            "-o",
            str(out),
            "--encoder",
            "features",
            "--probe",
            "smoking",
        ]
    )
    assert rc == 0 and out.is_file()
    assert "probe of field 'smoking'" in capsys.readouterr().out
