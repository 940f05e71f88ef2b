"""The clinical table of a cohort: one row per subject, read as it is.

The table is a CSV (or TSV) or an Excel ``.xlsx`` sheet with an id column (``id`` unless
configured) that matches the image file names.  Values are kept as read: a missing value
stays missing (``NaN``), nothing is imputed, because a missing value is simply left out of
the subject's sentence later on.  Ids are turned into stripped strings so that ``007`` in
the table still matches ``images/007.nii.gz``.

The data frame returned by :func:`read_clinical_table` is indexed by the row number in the
file (the header is row 1), so problems can point at a row a user can find in an editor.
Duplicate ids are not an error here: :func:`duplicate_ids` lists them and ``unveil check``
reports them.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pandas as pd

from unveil.errors import DataError

#: Names looked for in a cohort folder when ``data.table`` is not set.
TABLE_NAMES = ("clinical.csv", "clinical.xlsx", "clinical.tsv")

# pandas' default missing-value markers include "None", which in a clinical table is often
# a real answer ("occupational exposure: None"); this list keeps it as text.
_NA_VALUES = ["", "NA", "N/A", "n/a", "NaN", "nan", "#N/A", "NULL", "null", "<NA>"]


def find_table(cohort_root: str | os.PathLike, table_name: str | None = None) -> Path:
    """The clinical table of the cohort at ``cohort_root``.

    ``table_name`` (``data.table``) is a file name inside the cohort or any path; without
    it the cohort must hold exactly one of ``clinical.csv``, ``clinical.xlsx`` or
    ``clinical.tsv``.  Raises :class:`DataError` with one sentence otherwise.
    """
    root = Path(cohort_root)
    if table_name:
        path = Path(table_name)
        if not path.is_absolute():
            path = root / path
        if not path.is_file():
            raise DataError(
                f"clinical table {path} (data.table) does not exist; fix data.table or add the file."
            )
        return path
    found = [root / name for name in TABLE_NAMES if (root / name).is_file()]
    if not found:
        raise DataError(
            f"{root} has no clinical table; add clinical.csv or clinical.xlsx with one row "
            "per subject, or name the file with data.table=FILE."
        )
    if len(found) > 1:
        raise DataError(
            f"{root} holds {' and '.join(p.name for p in found)}; remove one or choose it with "
            f"data.table={found[0].name}."
        )
    return found[0]


def read_clinical_table(path: str | os.PathLike, id_column: str = "id") -> pd.DataFrame:
    """Read a clinical table (``.csv``, ``.tsv`` or the first sheet of an ``.xlsx``).

    Returns a data frame with the file's columns (names stripped of surrounding blanks),
    the id column as stripped strings (``""`` where a row has no id), values otherwise as
    read (missing values are ``NaN``), rows that are entirely empty dropped, and the index
    set to the row number in the file (header = row 1; exact for CSV files and for sheets
    without blank rows above the header).

    Raises :class:`DataError` (one sentence) when the file is missing, unreadable or
    malformed, has no id column, or has no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"clinical table {path} does not exist; check the path.")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        df = _read_delimited(path, sep="\t" if suffix == ".tsv" else ",", id_column=id_column)
    elif suffix == ".xlsx":
        df = _read_excel(path, id_column)
    elif suffix == ".xls":
        raise DataError(
            f"{path} is an old .xls workbook; save it as .xlsx or .csv and point data.table at it."
        )
    else:
        raise DataError(f"{path} is not a table unveil reads; save it as .csv, .tsv or .xlsx.")
    df.columns = [str(c).strip() for c in df.columns]
    # Every physical line or sheet row becomes a row, blank ones included, so that the
    # index is the row number a user sees; blank rows are dropped only after numbering.
    df.index = pd.RangeIndex(2, 2 + len(df), name="row")
    df = df.dropna(how="all")
    if id_column not in df.columns:
        raise DataError(_missing_id_sentence(path, id_column, list(df.columns)))
    if df.empty:
        raise DataError(f"{path} has a header but no rows; add one row per subject.")
    df[id_column] = [_id_string(v) for v in df[id_column]]
    return df


def duplicate_ids(df: pd.DataFrame, id_column: str = "id") -> list[str]:
    """Ids that appear on more than one row, sorted (empty ids are not counted)."""
    ids = df[id_column]
    dup = ids[ids.duplicated(keep=False) & (ids != "")]
    return sorted(set(dup))


def _read_delimited(path: Path, sep: str, id_column: str) -> pd.DataFrame:
    kwargs = {
        "sep": sep,
        "keep_default_na": False,
        "na_values": _NA_VALUES,
        "skip_blank_lines": False,
        "encoding": "utf-8-sig",  # Excel writes a byte-order mark that would join the header
    }
    try:
        # The header is read first to find the id column as spelled in the file (" id "),
        # so that it can be read as text: "007" must not become 7.
        header = pd.read_csv(path, nrows=0, **kwargs).columns
        raw_ids = [c for c in header if str(c).strip() == id_column]
        return pd.read_csv(path, dtype={c: str for c in raw_ids}, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; write a header line and one row per subject.") from None
    except pd.errors.ParserError as err:
        # pandas names the line ("Expected 3 fields in line 7, saw 4"); keep that part.
        reason = str(err).split("C error: ")[-1].strip().rstrip(".")
        raise DataError(
            f"{path} is malformed ({reason}); give every row as many fields as the header, "
            "quoting values that contain the separator."
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; save it as 'CSV UTF-8'.") from None
    except OSError as err:
        raise DataError(f"{path} cannot be read ({err.strerror or err}); check it.") from None


def _read_excel(path: Path, id_column: str) -> pd.DataFrame:
    try:
        return pd.read_excel(path, sheet_name=0, na_values=_NA_VALUES, keep_default_na=False)
    except ImportError:
        raise DataError(
            f"{path} needs openpyxl to be read; install it (pip install openpyxl) or save "
            "the table as .csv."
        ) from None
    except Exception as err:  # openpyxl/zipfile raise many types for a damaged workbook
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise DataError(
            f"{path} is not a readable .xlsx workbook ({reason}); re-save it from the "
            "spreadsheet program or export it as .csv."
        ) from None


def _id_string(value: object) -> str:
    """A table id as text: stripped, missing -> ``""``, ``7.0`` (Excel numbers) -> ``7``."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _missing_id_sentence(path: Path, id_column: str, columns: list[str]) -> str:
    shown = ", ".join(repr(c) for c in columns[:12]) + (", ..." if len(columns) > 12 else "")
    hint = ""
    close = [c for c in columns if c.lower() == id_column.lower()] or difflib.get_close_matches(
        id_column, columns, n=1
    )
    if close:
        hint = f" (did you mean '{close[0]}'?)"
    elif len(columns) == 1 and ";" in columns[0]:
        hint = " (the file looks semicolon-separated; save it comma-separated)"
    return (
        f"{path} has no id column '{id_column}'{hint}; its columns are {shown}; pass "
        "--id-column NAME or set data.id_column."
    )
