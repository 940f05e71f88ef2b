"""Read a clinical table (CSV or Excel) into rows, exactly as written.

Every cell is kept as the text the file holds (numbers too: a template parses them), empty
cells are empty strings, nothing is imputed, and the id column is a stripped string.  Codes
such as ``NA`` or ``None`` are *not* turned into NaN here, so a template decides what is
missing.  Each problem is one sentence (:class:`unveil.errors.DataError`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

from unveil.errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".xlsx", ".xlsm")
TABLE_NAMES = ("clinical.csv", "clinical.xlsx")


def find_table(cohort: str | os.PathLike, table: str | None = None) -> Path:
    """The clinical table of a cohort folder (``clinical.csv`` or ``clinical.xlsx``, or
    ``table`` inside it), or ``cohort`` itself when it is a table file."""
    p = Path(cohort)
    if p.is_file():
        return p
    if not p.exists():
        raise DataError(f"cohort {p} does not exist; give a cohort folder or a table file.")
    if table:
        cand = p / table
        if not cand.is_file():
            raise DataError(f"cohort {p} has no table {table}; check the table name or give the table file directly.")
        return cand
    found = [p / n for n in TABLE_NAMES if (p / n).is_file()]
    if not found:
        raise DataError(
            f"cohort {p} has no clinical table ({' or '.join(TABLE_NAMES)}); add one or give the table file directly."
        )
    if len(found) > 1:
        raise DataError(
            f"cohort {p} has both {found[0].name} and {found[1].name}; give the one to use as a file path."
        )
    return found[0]


def _sniff_separator(path: Path) -> str:
    """The separator of a delimited text file: the most frequent of , ; TAB in its header."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = fh.readline()
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else ","


def _read_delimited(path: Path) -> pd.DataFrame:
    """A delimited text file as strings, refusing rows whose length differs from the header."""
    sep = _sniff_separator(path)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=sep, strict=True)
        rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]  # skip blank lines
    if not rows:
        raise pd.errors.EmptyDataError("no header")
    header, body = rows[0][1], [r for _, r in rows[1:]]
    for line, r in rows[1:]:
        if len(r) != len(header):
            raise csv.Error(f"line {line} has {len(r)} fields but the header has {len(header)}")
    return pd.DataFrame(body, columns=header, dtype=str)


def read_table(path: str | os.PathLike, id_column: str = "id") -> pd.DataFrame:
    """The table at ``path`` (``.csv``/``.tsv``/``.txt`` or ``.xlsx``) as a DataFrame of strings.

    Column names are stripped; values are kept as written (empty cells are ``""``); the
    ``id_column`` holds stripped strings, each present and unique.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"clinical table {path} does not exist; check the path.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            df = _read_delimited(path)
        elif suffix in (".xlsx", ".xlsm"):
            df = pd.read_excel(path, sheet_name=0, dtype=object, engine="openpyxl")
            df = df.map(_cell_text)
        elif suffix == ".xls":
            raise DataError(f"clinical table {path} is an old .xls workbook; save it as .xlsx or .csv.")
        else:
            raise DataError(
                f"clinical table {path} has suffix '{path.suffix}'; give a .csv or .xlsx file."
            )
    except DataError:
        raise
    except UnicodeDecodeError:
        raise DataError(f"clinical table {path} is not UTF-8 text; save it as UTF-8 CSV.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"clinical table {path} is empty; it needs a header row with '{id_column}' and one row per subject.") from None
    except (pd.errors.ParserError, csv.Error) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"clinical table {path} is malformed ({first.rstrip('.')}); fix the file so every row has the header's columns.") from None
    except Exception as err:  # openpyxl / zip errors for a corrupt or mislabelled workbook
        raise DataError(
            f"clinical table {path} cannot be read as {suffix.lstrip('.')} ({type(err).__name__}); check the file is not corrupt or mislabelled."
        ) from None

    df.columns = [str(c).strip() for c in df.columns]
    dup_cols = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if dup_cols:
        raise DataError(f"clinical table {path} has the column '{dup_cols[0]}' twice; rename one of them.")
    if id_column not in df.columns:
        raise DataError(
            f"clinical table {path} has no id column '{id_column}' (columns found: "
            f"{', '.join(df.columns) or 'none'}); rename the column or pass --id-column."
        )
    # Drop rows that are entirely empty (trailing blank lines in spreadsheets).
    blank = df.apply(lambda r: all(str(v).strip() == "" for v in r), axis=1) if len(df) else []
    if len(df):
        df = df.loc[~blank].reset_index(drop=True)
    if df.empty:
        raise DataError(f"clinical table {path} has a header but no rows; add one row per subject.")
    ids = df[id_column].astype(str).str.strip()
    empty = [i + 2 for i, v in enumerate(ids) if v == ""]
    if empty:
        raise DataError(
            f"clinical table {path} has an empty '{id_column}' on line {empty[0]}"
            f"{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''}; give every row an id."
        )
    dups = sorted(set(ids[ids.duplicated()]))
    if dups:
        shown = ", ".join(dups[:10]) + (f" and {len(dups) - 10} more" if len(dups) > 10 else "")
        raise DataError(f"clinical table {path} has duplicate ids in '{id_column}': {shown}; make each id unique.")
    df[id_column] = ids
    return df


def _cell_text(value: object) -> str:
    """An Excel cell as text: empty cells are "", integral floats lose their ".0"."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:
            return ""
        if value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, bool):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def table_rows(df: pd.DataFrame) -> list[dict[str, object]]:
    """The rows of a table as plain dicts (column -> value)."""
    return df.to_dict(orient="records")
