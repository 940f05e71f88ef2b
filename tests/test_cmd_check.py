"""``unveil check`` in-process: table, problems, exit status, no traceback."""

from __future__ import annotations

import pandas as pd
import pytest

from test_cohort import make_cohort  # the cohort factory (tests/ is on sys.path under pytest)
from unveil.cli import main
from unveil.errors import ConfigError, DataError


def test_clean_cohort_prints_table_and_exits_0(tmp_path, capsys):
    made = make_cohort(tmp_path / "c", n=3)
    rc = main(["check", str(made.root)])
    out, err = capsys.readouterr()
    assert rc == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("id "))
    assert lines[header].split() == [
        "id",
        "shape",
        "spacing",
        "mm",
        "orient",
        "HU",
        "min..max",
        "labels",
        "table",
    ]
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [r[0] for r in rows] == made.ids
    assert rows[0][1:4] == ["12x12x10", "1.50x1.50x2.00", "LAS"]
    assert rows[0][5:] == ["0,1,2,3", "yes"]
    lo, hi = (float(v) for v in rows[0][4].split(".."))
    assert -1100 < lo < -950 and 40 < hi < 200
    # columns are aligned: every row starts its shape column where the header does
    col = lines[header].index("shape")
    assert all(
        line[col - 2 : col] == "  " and line[col] != " " for line in lines[header + 1 : header + 4]
    )
    assert "3 subject(s), 3 complete; 0 error(s), 0 warning(s): usable." in out
    assert "error" not in err.lower()


def test_broken_cohort_exits_2_without_traceback(tmp_path, capsys):
    made = make_cohort(tmp_path / "c", n=3)
    made.mask("s01").unlink()
    data = made.image("s02").read_bytes()
    made.image("s02").write_bytes(data[: len(data) // 2])  # truncated gzip
    rc = main(["check", str(made.root)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in out + err
    problems = [line for line in out.splitlines() if line.startswith(("error:", "warning:"))]
    assert any(line.startswith("error:") and "s01.nii.gz has no mask" in line for line in problems)
    assert any("s02.nii.gz is unreadable or truncated" in line for line in problems)
    assert "1 complete; 2 error(s)" in out and "NOT usable" in out


def test_warnings_alone_keep_exit_0(tmp_path, capsys):
    made = make_cohort(tmp_path / "c", n=2)
    with made.table.open("a") as f:
        f.write("ghost,70,male,never\n")
    rc = main(["check", str(made.root)])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "warning: " in out and "'ghost'" in out and "usable." in out


def test_missing_cohort_is_one_line_and_debug_reraises(tmp_path, capsys):
    rc = main(["check", str(tmp_path / "nowhere")])
    _, err = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0 and "nowhere does not exist" in err
    with pytest.raises(DataError):
        main(["--debug", "check", str(tmp_path / "nowhere")])


def test_id_column_option_and_config_overrides(tmp_path, capsys):
    made = make_cohort(tmp_path / "c", n=2, id_column="patient")
    assert main(["check", str(made.root)]) == 2
    out, _ = capsys.readouterr()
    assert "no id column 'id'" in out and "--id-column" in out
    assert main(["check", str(made.root), "--id-column", "patient"]) == 0
    capsys.readouterr()
    # the table given by name through a dotted override
    pd.read_csv(made.table).to_excel(made.root / "patients.xlsx", index=False)
    made.table.unlink()
    # argparse takes options before COHORT or after the overrides, not between them
    rc = main(["check", "--id-column", "patient", str(made.root), "data.table=patients.xlsx"])
    out, _ = capsys.readouterr()
    assert rc == 0 and "patients.xlsx" in out


def test_config_file_and_bad_override(tmp_path, capsys):
    made = make_cohort(tmp_path / "c", n=1)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data:\n  labels: {right_lung: 1, left_lung: 2}\n  airway_label: null\n")
    assert main(["check", str(made.root), "--config", str(cfg)]) == 2
    out, _ = capsys.readouterr()
    assert "label value(s) 3 that data.labels does not name" in out
    assert main(["check", str(made.root), "data.nope=1"]) == 2
    _, err = capsys.readouterr()
    assert "unknown config key 'data.nope'" in err and "Traceback" not in err
    with pytest.raises(ConfigError):
        main(["--debug", "check", str(made.root), "data.nope=1"])


def test_progress_bar_on_stderr_for_many_subjects(tmp_path, capsys):
    made = make_cohort(tmp_path / "c", n=9, shape=(8, 8, 8))
    assert main(["check", str(made.root)]) == 0
    out, err = capsys.readouterr()
    assert "checking" in err and "checking" not in out
    small = make_cohort(tmp_path / "small", n=2, shape=(8, 8, 8))
    main(["check", str(small.root)])
    assert "checking" not in capsys.readouterr().err
