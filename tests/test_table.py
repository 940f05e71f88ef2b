"""Reading the clinical table (``unveil.data.table``): the one reader of CSV/TSV/XLSX tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from unveil.data.table import (
    duplicate_ids,
    find_table,
    read_clinical_table,
    require_ids,
    table_rows,
)
from unveil.errors import DataError

HEADER = "id,age,sex,smoking,pack_years,diagnosis,blood_group\n"
ROWS = (
    "SECRET-001,76.3,F,never,0,IPF,A\n"
    "SECRET-002,,M,current,32.5,none,O\n"
    "SECRET-003,55,f,NA,12,CTD-ILD,\n"
)


def one_sentence(msg: str) -> None:
    assert "\n" not in msg.strip() and "Traceback" not in msg
    assert msg.strip().endswith("."), msg


def write(tmp_path, text: str, name: str = "t.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---------------------------------------------------------------------------- values


def test_keeps_values_missing_as_nan(tmp_path):
    df = read_clinical_table(write(tmp_path, HEADER + ROWS))
    assert list(df["id"]) == ["SECRET-001", "SECRET-002", "SECRET-003"]
    assert list(df.index) == [2, 3, 4]  # row numbers in the file
    assert df.loc[2, "age"] == 76.3 and df.loc[4, "age"] == 55  # numbers stay numbers
    assert math.isnan(df.loc[3, "age"])  # an empty cell is missing, not imputed
    assert math.isnan(df.loc[4, "smoking"])  # "NA" is missing
    assert math.isnan(df.loc[4, "blood_group"])
    assert df.loc[4, "sex"] == "f"  # text as written


def test_ids_are_stripped_strings(tmp_path):
    assert list(read_clinical_table(write(tmp_path, "id,age\n007,1\n 8 ,2\n"))["id"]) == [
        "007",
        "8",
    ]


def test_semicolon_and_bom(tmp_path):
    p = tmp_path / "t.csv"
    p.write_bytes("\ufeffid;age\nA;1,5\n".encode())
    df = read_clinical_table(p)
    assert list(df.columns) == ["id", "age"] and df.loc[2, "age"] == "1,5"  # as written


@pytest.mark.parametrize(
    "name, text",
    [
        ("t.csv", "id\tage\na\t1\n"),  # a tab-separated file saved as .csv
        ("t.txt", "id\tage\na\t1\n"),  # Excel's "Text (Tab delimited)"
        ("t.txt", "id;age\na;1\n"),
        ("t.tsv", "id\tage\na\t1\n"),
    ],
)
def test_separator_is_sniffed(tmp_path, name, text):
    df = read_clinical_table(write(tmp_path, text, name))
    assert list(df.columns) == ["id", "age"] and df.loc[2, "age"] == 1


def test_separator_in_quoted_header_is_not_counted(tmp_path):
    df = read_clinical_table(write(tmp_path, 'id,"a;b;c"\n1,2\n'))
    assert list(df.columns) == ["id", "a;b;c"]


def test_blank_lines_and_blank_cells(tmp_path):
    # Blank lines above the header and between rows; a row of blanks; a blank cell.
    df = read_clinical_table(write(tmp_path, "\n\nid,age,sex\n1,2,F\n\n , , \n3,4, \n"))
    assert list(df["id"]) == ["1", "3"] and list(df.index) == [4, 7]
    assert list(df["age"]) == [2, 4] and df["age"].dtype.kind == "f"  # still numbers
    assert math.isnan(df.loc[7, "sex"])


def test_xlsx_and_xlsm(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "age": [50, None], "sex": ["F", "None"]})
    for name in ("t.xlsx", "t.xlsm"):
        frame.to_excel(tmp_path / name, index=False)
        df = read_clinical_table(tmp_path / name)
        assert list(df["id"]) == ["a", "b"] and list(df.index) == [2, 3]
        assert df.loc[2, "age"] == 50 and math.isnan(df.loc[3, "age"])
        assert df.loc[3, "sex"] == "None"  # a real answer, not missing


def test_duplicate_and_empty_ids(tmp_path):
    p = write(tmp_path, "id,age\n1,2\n2,3\n1,4\n3,5\n3,6\n")
    df = read_clinical_table(p)  # reading does not refuse them ...
    assert duplicate_ids(df) == ["1", "3"]
    with pytest.raises(DataError) as exc:  # ... require_ids does
        require_ids(df, p)
    one_sentence(str(exc.value))
    assert "duplicate ids in 'id': 1, 3" in str(exc.value)

    p = write(tmp_path, "id,age\n1,2\n,3\n")
    df = read_clinical_table(p)
    assert list(df["id"]) == ["1", ""]
    with pytest.raises(DataError) as exc:
        require_ids(df, p)
    one_sentence(str(exc.value))
    assert "empty 'id' on row 3" in str(exc.value)
    require_ids(read_clinical_table(write(tmp_path, "id,age\n1,2\n2,3\n")), p)


def test_table_rows_leave_the_id_out(tmp_path):
    df = read_clinical_table(write(tmp_path, "id,age,sex\n007,70,F\nb,,M\n"))
    rows = table_rows(df)
    assert [sid for sid, _ in rows] == ["007", "b"]
    assert rows[0][1] == {"age": 70, "sex": "F"}
    assert math.isnan(rows[1][1]["age"])


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("\n \n", "is empty"),
        ("id,age\n", "no rows"),
        ("pid,age\n1,2\n", "no id column 'id'"),
        ('id,age\n1,"2\n', "malformed"),
        ('id,age\n1,"2"x\n', "malformed"),
        # more fields than the header: pandas would shift the first row into the index
        ("id,age\n1,2,3\n", "line 2 has 3 fields but the header has 2"),
        ("id,age\n1,2\n2,3,4\n", "line 3 has 3 fields but the header has 2"),
        # fewer fields: pandas would fill the row up with missing values
        ("id,age,sex\n1,2\n", "line 2 has 2 fields but the header has 3"),
        ("id,id\n1,2\n", "column 'id' twice"),
        (" id,id\n1,2\n", "column 'id' twice"),
        ("id,age,age\n1,2,3\n", "column 'age' twice"),
    ],
)
def test_errors_are_one_sentence(tmp_path, content, words):
    p = tmp_path / "t.csv"
    if content is not None:
        p.write_text(content)
    with pytest.raises(DataError) as exc:
        read_clinical_table(p)
    one_sentence(str(exc.value))
    assert words in str(exc.value) and str(p) in str(exc.value)


def test_missing_id_column_names_the_columns(tmp_path):
    with pytest.raises(DataError) as exc:
        read_clinical_table(write(tmp_path, "pid,age\n1,2\n"))
    assert "its columns are 'pid', 'age'" in str(exc.value)
    with pytest.raises(DataError, match="semicolon-separated"):  # a .tsv is always tabs
        read_clinical_table(write(tmp_path, "id;age\na;1\n", "t.tsv"))


def test_bad_files(tmp_path):
    bad = write(tmp_path, "not a workbook", "t.xlsx")
    with pytest.raises(DataError) as exc:
        read_clinical_table(bad)
    one_sentence(str(exc.value))
    latin = tmp_path / "l.csv"
    latin.write_bytes("id,name\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError) as exc:
        read_clinical_table(latin)
    one_sentence(str(exc.value))
    assert "UTF-8" in str(exc.value)
    for name, words in (("t.parquet", "not a table"), ("t.xls", ".xls workbook")):
        with pytest.raises(DataError) as exc:
            read_clinical_table(write(tmp_path, "x", name))
        one_sentence(str(exc.value))
        assert words in str(exc.value)
    pd.DataFrame([["id", "age", "age"], ["a", 1, 2]]).to_excel(
        tmp_path / "d.xlsx", index=False, header=False
    )
    with pytest.raises(DataError, match="column 'age' twice"):
        read_clinical_table(tmp_path / "d.xlsx")


# ---------------------------------------------------------------------------- finding


def test_find_table(tmp_path):
    with pytest.raises(DataError) as exc:
        find_table(tmp_path / "nope")
    one_sentence(str(exc.value))
    assert "does not exist" in str(exc.value)
    with pytest.raises(DataError) as exc:
        find_table(tmp_path)
    one_sentence(str(exc.value))
    assert "clinical.csv" in str(exc.value)
    (tmp_path / "clinical.csv").write_text(HEADER)
    assert find_table(tmp_path) == tmp_path / "clinical.csv"
    (tmp_path / "clinical.xlsx").write_text("")
    with pytest.raises(DataError) as exc:
        find_table(tmp_path)
    one_sentence(str(exc.value))


def test_find_table_accepts_the_table_file(tmp_path):
    p = write(tmp_path, HEADER + ROWS, "patients.csv")
    assert find_table(p) == p
    with pytest.raises(DataError) as exc:  # a table name inside a file makes no sense
        find_table(p, "clinical.csv")
    one_sentence(str(exc.value))
    assert "not a cohort folder" in str(exc.value)
