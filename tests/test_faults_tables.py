"""Faults in tables and generated volumes that used to pass silently.

A. An ``.xlsx`` whose formula cells have no stored value (openpyxl writes formulas without
   one): the values read as missing; ``unveil check`` warns, ``unveil prompts`` and the
   cohort loading of ``unveil train`` refuse, naming the cells.
B. CSV injection: text cells a spreadsheet would run as formulas (``=cmd``, ``@x``) are
   written with a quote in front, numbers never; unveil's own readers undo it.
C. ``unveil analyze`` refuses a generated volume holding NaN or inf.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import openpyxl
import pandas as pd
import pytest

from test_cohort import make_cohort  # the cohort factory (tests/ is on sys.path under pytest)
from unveil.cli import main
from unveil.csvsafe import neutralise_cell, neutralise_frame, restore_cell, restore_frame
from unveil.errors import DataError
from unveil.fs import write_json, write_text

FIX = (
    "open and save the file in a spreadsheet program so the values are computed, or "
    "replace formulas by values."
)


def one_sentence(msg: str) -> None:
    assert "\n" not in msg.strip() and "Traceback" not in msg
    assert msg.strip().endswith("."), msg


def write_xlsx(path, header, rows, sheet="patients"):
    """A workbook as openpyxl writes it: a text starting with '=' is a formula with no
    stored value."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = sheet
    ws.append(list(header))
    for row in rows:
        ws.append(list(row))
    wb.create_sheet("notes")["A1"] = "=1+1"  # a formula on another sheet is not read
    wb.save(path)
    return path


def formula_sentence(path, n, shown, sheet="patients"):
    return (
        f"{path} has {n} formula cell(s) without a computed value on sheet '{sheet}' "
        f"({shown}), which would be read as missing values; {FIX}"
    )


# ------------------------------------------------------------- A: formulas without values


def test_reader_records_formula_cells_without_value(tmp_path):
    from unveil.data.table import (
        read_clinical_table,
        require_computed,
        uncomputed_formulas,
        uncomputed_formulas_sentence,
    )

    path = write_xlsx(
        tmp_path / "t.xlsx",
        ["id", "age", "ratio"],
        [[f"s{i}", 50 + i, f"=B{i + 2}/10"] for i in range(8)],
    )
    df = read_clinical_table(path)
    assert df["ratio"].isna().all()  # what every reader sees: the values are missing
    assert uncomputed_formulas(df) == ("patients", [f"C{i}" for i in range(2, 10)])
    msg = uncomputed_formulas_sentence(df, path)
    assert msg == formula_sentence(path, 8, "C2, C3, C4, C5, C6 and 3 more")
    one_sentence(msg)
    with pytest.raises(DataError) as err:
        require_computed(df, path)
    assert str(err.value) == msg


def _cache_values(path, cached):
    """Rewrite the first sheet as a spreadsheet program saves it: ``cached`` maps a cell
    to ``(t attribute or None, stored value text)``."""
    with zipfile.ZipFile(path) as zin:
        items = [(i, zin.read(i.filename)) for i in zin.infolist()]
    with zipfile.ZipFile(path, "w") as zout:
        for item, data in items:
            if item.filename == "xl/worksheets/sheet1.xml":
                text = data.decode()
                for ref, (kind, value) in cached.items():
                    start = text.index(f'<c r="{ref}"')
                    end = text.index("</c>", start) + len("</c>")
                    formula = text[text.index("<f>", start) : text.index("</f>", start) + 4]
                    t = f' t="{kind}"' if kind else ""
                    text = (
                        text[:start] + f'<c r="{ref}"{t}>{formula}<v>{value}</v></c>' + text[end:]
                    )
                data = text.encode()
            zout.writestr(item, data)


def test_stored_values_including_empty_text_are_not_reported(tmp_path):
    from unveil.data.table import read_clinical_table, uncomputed_formulas

    path = write_xlsx(
        tmp_path / "t.xlsx",
        ["id", "age", "note"],
        [["a", "=40+1", '=IF(B2>0,"","x")'], ["b", "=B2+1", "ok"]],
    )
    # B2 computed (41), C2 computed to empty text (Excel: t="str" with <v></v>), B3 not.
    _cache_values(path, {"B2": (None, "41"), "C2": ("str", "")})
    df = read_clinical_table(path)
    assert df.loc[2, "age"] == 41
    assert uncomputed_formulas(df) == ("patients", ["B3"])


def test_csv_and_formula_free_workbooks_report_nothing(tmp_path):
    from unveil.data.table import read_clinical_table, uncomputed_formulas

    path = write_xlsx(tmp_path / "t.xlsx", ["id", "age"], [["a", 1], ["b", 2]])
    assert uncomputed_formulas(read_clinical_table(path)) == ("", [])
    (tmp_path / "t.csv").write_text("id,age\na,=1+1\n")
    assert uncomputed_formulas(read_clinical_table(tmp_path / "t.csv")) == ("", [])


@pytest.fixture()
def formula_cohort(tmp_path):
    """A clean cohort whose table is an .xlsx with the age of s01 as a formula (B3)."""
    made = make_cohort(tmp_path / "c", n=3)
    table = pd.read_csv(made.root / "clinical.csv")
    (made.root / "clinical.csv").unlink()
    rows = table.astype(object).where(table.notna(), None).values.tolist()
    rows[1][1] = "=B2+1"
    write_xlsx(made.root / "clinical.xlsx", table.columns, rows)
    return made


def test_check_warns_naming_the_cells(formula_cohort, capsys):
    xlsx = formula_cohort.root / "clinical.xlsx"
    rc = main(["check", str(formula_cohort.root)])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert f"warning: {formula_sentence(xlsx, 1, 'B3')}" in out.splitlines()
    assert "0 error(s), 1 warning(s): usable." in out


def test_train_cohort_loading_refuses(formula_cohort, tmp_path):
    from unveil.config import load_config
    from unveil.data.cohort import Cohort
    from unveil.train.data import load_training_data

    xlsx = formula_cohort.root / "clinical.xlsx"
    cfg = load_config()
    with pytest.raises(DataError) as err:
        load_training_data(cfg, formula_cohort.root, tmp_path / "run", progress=False)
    assert str(err.value) == formula_sentence(xlsx, 1, "B3")
    with pytest.raises(DataError, match="B3"):
        Cohort.open(formula_cohort.root, cfg.data, require_table=False)


def test_prompts_refuses_naming_the_cells(tmp_path, capsys):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    header = ["id", "age", "sex", "smoking", "pack_years", "diagnosis", "blood_group"]
    rows = [
        ["p1", 70, "F", "never", 0, "IPF", "A"],
        ["p2", "=B2-5", "M", "current", "=B3/2", "none", "O"],
    ]
    xlsx = write_xlsx(cohort / "clinical.xlsx", header, rows)
    out = tmp_path / "prompts.csv"
    rc = main(["prompts", str(cohort), "--template", "phantom", "--out", str(out)])
    _, err = capsys.readouterr()
    assert rc == 2
    assert err.strip() == f"unveil prompts: error: {formula_sentence(xlsx, 2, 'B3, E3')}"
    assert not out.exists()


# -------------------------------------------------------------------- B: CSV injection


@pytest.mark.parametrize(
    ("raw", "written"),
    [
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ("+cmd", "'+cmd"),
        ("-cmd", "'-cmd"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("-", "'-"),
        ("-1+2", "'-1+2"),
        ("'=x", "''=x"),  # so that restoring is exact
        ("''@x", "'''@x"),
        # text that is a plain number is read as that number, never as a formula
        ("-5", "-5"),
        ("+1.5", "+1.5"),
        ("-2e3", "-2e3"),
        ("-.5", "-.5"),
        ("'-5", "'-5"),
        ("sub-001", "sub-001"),
        ("", ""),
        (" =x", " =x"),
    ],
)
def test_neutralise_cell_and_restore(raw, written):
    assert neutralise_cell(raw) == written
    assert restore_cell(written) == raw


@pytest.mark.parametrize("value", [-55.0, -5, 3, 0.0, np.float32(-1.5), np.int64(-7), None, True])
def test_numbers_are_never_changed(value):
    assert neutralise_cell(value) is value
    assert restore_cell(value) is value


def test_frame_round_trip_through_the_table_reader(tmp_path):
    from unveil.data.table import read_clinical_table

    df = pd.DataFrame(
        {
            "id": ["=cmd", "@x", "-5", "s1"],
            "age": [-55.0, 60.5, -1.0, 70.0],
            "group": ["+a", "-", "'=b", "plain"],
        }
    )
    safe = neutralise_frame(df)
    assert list(safe["id"]) == ["'=cmd", "'@x", "-5", "s1"]
    assert list(safe["age"]) == [-55.0, 60.5, -1.0, 70.0]
    assert restore_frame(safe).equals(df)
    path = tmp_path / "clinical.csv"
    write_text(path, safe.to_csv(index=False, lineterminator="\n"))
    assert path.read_text().splitlines()[1] == "'=cmd,-55.0,'+a"
    back = read_clinical_table(path)
    assert list(back["id"]) == list(df["id"])
    assert list(back["group"]) == list(df["group"])
    assert back["age"].tolist() == df["age"].tolist()


def test_prompts_csv_quotes_formula_ids_and_reads_back(tmp_path, capsys):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    ids = ["=cmd|' /C calc'!A0", "@SUM(A1)", "-5", "+cmd"]
    lines = ["id,age,sex,smoking,pack_years,diagnosis,blood_group"]
    lines += [f'"{i}",{60 + k},F,never,{k},IPF,A' for k, i in enumerate(ids)]
    (cohort / "clinical.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "prompts.csv"
    assert main(["prompts", str(cohort), "--template", "phantom", "--out", str(out)]) == 0
    rows = list(csv.reader(io.StringIO(out.read_text())))[1:]
    assert [r[0] for r in rows] == ["'=cmd|' /C calc'!A0", "'@SUM(A1)", "-5", "'+cmd"]
    assert [restore_cell(r[0]) for r in rows] == ids
    assert all(r[1].startswith("Lung CT scan") for r in rows)
    # Without --out the same CSV goes to stdout.
    capsys.readouterr()
    assert main(["prompts", str(cohort), "--template", "phantom"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("'=cmd|")


def test_plant_tables_quote_levels_and_read_back(tmp_path):
    from test_plant import AFFINE, _source
    from unveil.data.effects import parse_spec
    from unveil.data.io import Volume, write_volume
    from unveil.data.plant import plant_cohort
    from unveil.data.table import read_clinical_table

    src = tmp_path / "src"
    img, lab = _source(np.random.default_rng(0))
    write_volume(Volume(img, AFFINE), src / "images" / "=src.nii.gz")
    write_volume(Volume(lab, AFFINE), src / "masks" / "=src.nii.gz")
    spec = parse_spec(
        {
            "attributes": {
                "group": {"values": ["=cmd", "@x"], "probs": [0.5, 0.5]},
                "age": {"range": [-80, -40]},
            },
            "effects": [],
        }
    )
    out = plant_cohort(src, spec, tmp_path / "planted", n=4, seed=0, progress=False)
    truth = pd.read_csv(out / "truth.csv", dtype=str)
    assert set(truth["group"]) <= {"'=cmd", "'@x"}
    assert (truth["age"].astype(float) < 0).all()  # numbers written as numbers
    assert set(pd.read_csv(out / "provenance.csv")["source"]) == {"'=src"}
    assert json.loads((out / "effects.json").read_text())["sources"] == ["=src"]
    back = read_clinical_table(out / "truth.csv")
    assert set(back["group"]) <= {"=cmd", "@x"}
    assert back["age"].dtype.kind == "f"


# ------------------------------------------------------------------ analysis fake runs

SIZE = 16


def _labels() -> np.ndarray:
    labels = np.zeros((SIZE,) * 3, dtype=np.uint8)
    labels[9:15, 3:13, 2:14] = 1  # right lung at larger RAS x
    labels[1:7, 3:13, 2:14] = 2
    labels[7:9, 7:9, 8:15] = 3  # airway
    return labels


def _fake_run(root, ids, nan_volume=None):
    """A tiny counterfactual run of ``ids`` (no model): cohort, run.json and volumes.
    ``nan_volume``: ``(id, contrast)`` whose seed-0 volume gets NaN and inf voxels."""
    from unveil.config import DataConfig
    from unveil.data.io import Volume, write_volume
    from unveil.records import RunLayout

    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -15.0
    labels = _labels()
    lung = np.isin(labels, [1, 2])
    cohort = root / "cohort"
    rows = ["id,age,smoking,blood_group"]
    for k, sid in enumerate(ids):
        rows.append(f'"{sid}",{50 + 5 * k},{"current" if k % 2 else "never"},{"AO"[k % 2]}')
        real = np.where(lung, -870.0, 40.0) + rng.normal(0, 20.0, labels.shape)
        write_volume(Volume(real.astype(np.float32), affine), cohort / "images" / f"{sid}.nii.gz")
        write_volume(Volume(labels, affine), cohort / "masks" / f"{sid}.nii.gz")
    write_text(cohort / "clinical.csv", "\n".join(rows) + "\n")
    run = root / "run"
    layout = RunLayout(run)
    edit, null = "smoking=current", "blood_group=O"
    write_json(
        layout.json_path,
        {
            "cohort": str(cohort),
            "edits": [edit],
            "null_edits": [null],
            "noise": "per-subject",
            "seeds": [0],
            "subjects": list(ids),
            "hu_window": [-1000, 500],
            "config": {"data": DataConfig().model_dump()},
        },
    )
    for sid in ids:
        factual = np.where(lung, -860.0, 30.0) + rng.normal(0, 20.0, labels.shape)
        outputs = {
            "factual": (layout.factual(sid, 0), factual),
            "floor": (layout.floor(sid, 0), factual + rng.normal(0, 2.0, labels.shape)),
            edit: (layout.edited(sid, edit, 0), factual - 30.0 * lung),
            null: (layout.edited(sid, null, 0), factual + rng.normal(0, 2.0, labels.shape)),
        }
        for name, (path, arr) in outputs.items():
            arr = arr.astype(np.float32)
            if nan_volume == (sid, name):
                arr[lung] = np.nan
                arr[0, 0, 0] = np.inf
            write_volume(Volume(arr, affine), path)
    return run, layout


def test_analysis_csv_quotes_ids_and_keeps_them_raw_in_json(tmp_path):
    from unveil.analysis.analyze import analyze_run
    from unveil.records import SubjectRegionRow, read_table_csv

    ids = ["=cmd", "@SUM(A1)", "-5", "s03"]
    run, layout = _fake_run(tmp_path, ids)
    results = analyze_run(run, n_boot=100, seed=0, progress=False)
    path = layout.analysis_dir / "subject_regions.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        written = {row["id"] for row in csv.DictReader(fh)}
    assert written == {"'=cmd", "'@SUM(A1)", "-5", "s03"}
    assert results["run"]["subjects"] == ids
    saved = json.loads((layout.analysis_dir / "results.json").read_text())
    assert saved["run"]["subjects"] == ids
    # the records' reader restores them
    assert {row.id for row in read_table_csv(path, SubjectRegionRow, "rerun")} == set(ids)
    # the mean differences are numbers, negative ones untouched
    frame = pd.read_csv(path)
    edit_rows = frame[(frame.contrast == "smoking=current") & (frame.region == "lung")]
    assert np.allclose(edit_rows.mean_diff_hu, -30.0, atol=0.01)


# ------------------------------------------------------------ C: non-finite generations


def test_analyze_refuses_non_finite_generated_volume(tmp_path, capsys):
    from unveil.analysis.analyze import analyze_run

    run, layout = _fake_run(tmp_path, ["s00", "s01", "s02"], nan_volume=("s01", "blood_group=O"))
    bad = layout.edited("s01", "blood_group=O", 0)
    n_nan = int(np.isin(_labels(), [1, 2]).sum())
    expected = (
        f"{bad} holds {n_nan} NaN and 1 infinite voxel(s): the generator produced non-finite "
        "values (a diverged model or a non-finite --guidance-scale); regenerate the run with "
        "unveil counterfactual."
    )
    with pytest.raises(DataError) as err:
        analyze_run(run, n_boot=100, progress=False)
    assert str(err.value) == expected
    one_sentence(expected)
    assert not layout.analysis_dir.exists()  # nothing half written
    rc = main(["analyze", str(run)])
    assert rc == 2
    # the progress bar may precede it on stderr; the error is the last line
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"unveil analyze: error: {expected}"
