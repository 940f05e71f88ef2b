"""The clinical table of a cohort: one row per subject, read as it is.

The table is a CSV (comma-, semicolon- or tab-separated; ``.csv``, ``.tsv``, ``.txt``) or
an Excel ``.xlsx``/``.xlsm`` sheet with an id column (``id`` unless configured) that matches
the image file names.  Values are kept as read: a missing value stays missing (``NaN``),
nothing is imputed, because a missing value is simply left out of the subject's sentence
later on.  Ids are turned into stripped strings so that ``007`` in
the table still matches ``images/007.nii.gz``.

The data frame returned by :func:`read_clinical_table` is indexed by the row number in the
file (the header is row 1), so problems can point at a row a user can find in an editor.
A row with more or fewer fields than the header, or a column name given twice, is refused
(pandas would otherwise shift the row's values or rename the column silently).  Duplicate
and empty ids are not an error here: :func:`duplicate_ids` lists them, ``unveil check``
reports them, and :func:`require_ids` refuses them where every row must be one subject.

This is the one reader of clinical tables: the cohort layer, ``unveil check`` and
``unveil prompts`` all use it.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import os
import re
from pathlib import Path

import pandas as pd

from unveil.errors import DataError

#: Names looked for in a cohort folder when ``data.table`` is not set.
TABLE_NAMES = ("clinical.csv", "clinical.xlsx", "clinical.tsv")

_DELIMITED = (".csv", ".tsv", ".txt")
_EXCEL = (".xlsx", ".xlsm")

# pandas' default missing-value markers include "None", which in a clinical table is often
# a real answer ("occupational exposure: None"); this list keeps it as text.
_NA_VALUES = ["", "NA", "N/A", "n/a", "NaN", "nan", "#N/A", "NULL", "null", "<NA>"]


def find_table(cohort_root: str | os.PathLike, table_name: str | None = None) -> Path:
    """The clinical table of the cohort at ``cohort_root``, or ``cohort_root`` itself when it
    is a table file (and ``table_name`` is not set).

    ``table_name`` (``data.table``) is a file name inside the cohort or any path; without
    it the cohort must hold exactly one of ``clinical.csv``, ``clinical.xlsx`` or
    ``clinical.tsv``.  Raises :class:`DataError` with one sentence otherwise.
    """
    root = Path(cohort_root)
    if root.is_file():
        if table_name:
            raise DataError(
                f"{root} is a file, not a cohort folder, so data.table={table_name} cannot be "
                "found in it; give the cohort folder or the table file alone."
            )
        return root
    if not root.exists():
        raise DataError(f"{root} does not exist; give a cohort folder or a clinical table file.")
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
    """Read a clinical table (``.csv``/``.tsv``/``.txt`` or the first sheet of an
    ``.xlsx``/``.xlsm``).  The separator of a ``.csv``/``.txt`` file is the most frequent of
    comma, semicolon and tab in its header line; a ``.tsv`` is tab-separated.

    Returns a data frame with the file's columns (names stripped of surrounding blanks),
    the id column as stripped strings (``""`` where a row has no id), values otherwise as
    read (missing values, blank cells included, are ``NaN``), rows that are entirely empty
    dropped, and the index set to the row number in the file (header = row 1, or the first
    non-blank line of a text file; exact for text files without line breaks inside quoted
    values and for sheets without blank rows above the header).

    Raises :class:`DataError` (one sentence) when the file is missing, unreadable or
    malformed (a row with more or fewer fields than the header), names a column twice,
    has no id column, or has no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"clinical table {path} does not exist; check the path.")
    suffix = path.suffix.lower()
    if suffix in _DELIMITED:
        df, first_row = _read_delimited(path, suffix, id_column)
    elif suffix in _EXCEL:
        df, first_row = _read_excel(path), 2
    elif suffix == ".xls":
        raise DataError(
            f"{path} is an old .xls workbook; save it as .xlsx or .csv and point data.table at it."
        )
    else:
        raise DataError(f"{path} is not a table unveil reads; save it as .csv, .tsv or .xlsx.")
    df.columns = [str(c).strip() for c in df.columns]
    # A cell holding only blanks is an empty cell; it no longer keeps a column of numbers
    # from being read as numbers.
    blank = df.map(lambda v: isinstance(v, str) and not v.strip())
    if blank.any(axis=None):
        df = df.mask(blank)
        for col in blank.columns[blank.any()]:
            if col != id_column:
                with contextlib.suppress(ValueError, TypeError):
                    df[col] = pd.to_numeric(df[col])
    # Every physical line or sheet row becomes a row, blank ones included, so that the
    # index is the row number a user sees; blank rows are dropped only after numbering.
    df.index = pd.RangeIndex(first_row, first_row + len(df), name="row")
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


def require_ids(df: pd.DataFrame, path: str | os.PathLike, id_column: str = "id") -> None:
    """Refuse (:class:`DataError`, one sentence) a table where a row has no id or an id is
    on more than one row, for uses where every row must be exactly one subject."""
    empty = [int(r) for r in df.index[df[id_column] == ""]]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(
            f"{path} has an empty '{id_column}' on row {empty[0]}{more}; give every row an id."
        )
    dups = duplicate_ids(df, id_column)
    if dups:
        shown = ", ".join(dups[:10]) + (f" and {len(dups) - 10} more" if len(dups) > 10 else "")
        raise DataError(f"{path} has duplicate ids in '{id_column}': {shown}; make each id unique.")


def table_rows(df: pd.DataFrame, id_column: str = "id") -> list[tuple[str, dict]]:
    """The rows of a table as ``(id, {column: value})`` pairs, the id column left out."""
    rows = df.drop(columns=[id_column]).to_dict("records")
    return list(zip(df[id_column], rows, strict=True))


def _malformed(path: Path, reason: str) -> DataError:
    return DataError(
        f"{path} is malformed ({reason}); give every row as many fields as the header, "
        "quoting values that contain the separator."
    )


def _check_header(path: Path, names: list[object]) -> None:
    """Refuse a header that names a column twice (pandas would rename one silently)."""
    seen: set[str] = set()
    for name in names:
        if name is None or (isinstance(name, float) and name != name):
            continue
        text = str(name).strip()
        if text and text in seen:
            raise DataError(f"{path} has the column '{text}' twice; rename one of them.")
        seen.add(text)


def _sniff_separator(line: str) -> str:
    """The most frequent of comma, semicolon and tab outside quotes (comma on a tie)."""
    bare = re.sub(r'"[^"]*"', "", line)
    counts = {sep: bare.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _check_fields(path: Path, suffix: str) -> tuple[str, int]:
    """The separator and the number of blank lines above the header, after checking that
    every non-blank record has as many fields as the header (pandas would otherwise fill
    a short row with missing values, or shift a long first row into the index)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        lines = list(fh)  # split as the csv module does (\n, \r\n, \r)
    skip = next((i for i, line in enumerate(lines) if line.strip()), None)
    if skip is None:
        raise pd.errors.EmptyDataError("no header")
    sep = "\t" if suffix == ".tsv" else _sniff_separator(lines[skip])
    reader = csv.reader(lines[skip:], delimiter=sep, strict=True)
    try:
        header = next(reader)
        _check_header(path, header)
        for record in reader:
            if len(record) != len(header) and any(c.strip() for c in record):
                line = skip + reader.line_num
                raise _malformed(
                    path,
                    f"line {line} has {len(record)} fields but the header has {len(header)}",
                )
    except csv.Error as err:
        raise _malformed(path, f"line {skip + reader.line_num}: {err}") from None
    return sep, skip


def _read_delimited(path: Path, suffix: str, id_column: str) -> tuple[pd.DataFrame, int]:
    """The table and the row number of its first data line."""
    try:
        sep, skip = _check_fields(path, suffix)
        kwargs = {
            "sep": sep,
            "skiprows": skip,
            "keep_default_na": False,
            "na_values": _NA_VALUES,
            "skip_blank_lines": False,
            "float_precision": "round_trip",  # numbers exactly as Python reads them
            "encoding": "utf-8-sig",  # Excel writes a byte-order mark that would join the header
        }
        # The header is read first to find the id column as spelled in the file (" id "),
        # so that it can be read as text: "007" must not become 7.
        header = pd.read_csv(path, nrows=0, **kwargs).columns
        raw_ids = [c for c in header if str(c).strip() == id_column]
        df = pd.read_csv(path, dtype={c: str for c in raw_ids}, **kwargs)
        return df, skip + 2
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; write a header line and one row per subject.") from None
    except pd.errors.ParserError as err:
        # pandas names the line ("Expected 3 fields in line 7, saw 4"); keep that part.
        raise _malformed(path, str(err).split("C error: ")[-1].strip().rstrip(".")) from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; save it as 'CSV UTF-8'.") from None
    except OSError as err:
        raise DataError(f"{path} cannot be read ({err.strerror or err}); check it.") from None


def _read_excel(path: Path) -> pd.DataFrame:
    try:
        # The header row as written: pandas renames a repeated column ("age.1") silently.
        first = pd.read_excel(path, sheet_name=0, header=None, nrows=1)
        _check_header(path, first.iloc[0].tolist() if len(first) else [])
        return pd.read_excel(path, sheet_name=0, na_values=_NA_VALUES, keep_default_na=False)
    except DataError:
        raise
    except ImportError:
        raise DataError(
            f"{path} needs openpyxl to be read; install it (pip install openpyxl) or save "
            "the table as .csv."
        ) from None
    except Exception as err:  # openpyxl/zipfile raise many types for a damaged workbook
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise DataError(
            f"{path} is not a readable {path.suffix.lower()} workbook ({reason}); re-save it "
            "from the spreadsheet program or export it as .csv."
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
