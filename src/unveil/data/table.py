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

A workbook saved by a program that does not compute formulas (openpyxl, pandas) holds
formula cells without a stored value, which every reader, pandas included, sees as empty:
the values would silently become missing.  :func:`read_clinical_table` records those cells
of the sheet it reads (:func:`uncomputed_formulas`); the callers decide: ``unveil check``
warns, and ``unveil prompts`` and every command that opens a cohort refuse
(:func:`require_computed`).  (xlsxwriter stores 0 as the value of every formula instead,
which cannot be told from a real 0 and is not detected.)

A text cell of a ``.csv``/``.tsv``/``.txt`` table that begins with a single quote followed
by ``=``, ``+``, ``-``, ``@``, a tab or a carriage return loses that quote when read: it is
how unveil (see :mod:`unveil.csvsafe`) and other tools following OWASP write such values so
that spreadsheets do not run them as formulas, so a table unveil wrote (the ``clinical.csv``
of ``unveil plant``) reads back exactly.

This is the one reader of clinical tables: the cohort layer, ``unveil check`` and
``unveil prompts`` all use it.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import logging
import os
import posixpath
import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pandas as pd

from unveil.csvsafe import restore_frame
from unveil.errors import DataError

log = logging.getLogger(__name__)

#: Names looked for in a cohort folder when ``data.table`` is not set.
TABLE_NAMES = ("clinical.csv", "clinical.xlsx", "clinical.tsv")

_DELIMITED = (".csv", ".tsv", ".txt")
_EXCEL = (".xlsx", ".xlsm")

# pandas' default missing-value markers include "None", which in a clinical table is often
# a real answer ("occupational exposure: None"); this list keeps it as text.
_NA_VALUES = ["", "NA", "N/A", "n/a", "NaN", "nan", "#N/A", "NULL", "null", "<NA>"]

# Key of ``DataFrame.attrs`` where read_clinical_table records the formula cells without a
# stored value: {"sheet": name, "cells": ["B3", ...]}.
_FORMULAS_ATTR = "unveil_uncomputed_formulas"
# How many cells a sentence names before "and N more".
_SHOWN_CELLS = 5


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

    Text cells of a delimited file quoted against spreadsheet formulas (``'=x``, see
    :mod:`unveil.csvsafe`) are restored (``=x``).  For a workbook, the formula cells of the
    sheet that hold no stored value are recorded in ``df.attrs`` (read them with
    :func:`uncomputed_formulas`; :func:`require_computed` refuses them): they read as
    missing, which the caller must warn about or refuse.

    Raises :class:`DataError` (one sentence) when the file is missing, unreadable or
    malformed (a row with more or fewer fields than the header), names a column twice,
    has no id column, or has no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"clinical table {path} does not exist; check the path.")
    suffix = path.suffix.lower()
    formulas = None
    if suffix in _DELIMITED:
        df, first_row = _read_delimited(path, suffix, id_column)
        df = restore_frame(df)
    elif suffix in _EXCEL:
        df, first_row = _read_excel(path), 2
        formulas = _uncomputed_formula_cells(path)
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
    if formulas is not None and formulas[1]:
        df.attrs[_FORMULAS_ATTR] = {"sheet": formulas[0], "cells": list(formulas[1])}
    return df


def uncomputed_formulas(df: pd.DataFrame) -> tuple[str, list[str]]:
    """``(sheet name, cells)`` of a table read by :func:`read_clinical_table`: the cells
    (``"B3"``) of the sheet read that hold a formula but no stored value, and so read as
    missing; ``("", [])`` for a text table or a workbook without such cells."""
    rec = df.attrs.get(_FORMULAS_ATTR) or {}
    return str(rec.get("sheet", "")), list(rec.get("cells", []))


def uncomputed_formulas_sentence(df: pd.DataFrame, path: str | os.PathLike) -> str | None:
    """The sentence naming the formula cells without a value (see
    :func:`uncomputed_formulas`) and the fix, or ``None`` when there are none."""
    sheet, cells = uncomputed_formulas(df)
    if not cells:
        return None
    shown = ", ".join(cells[:_SHOWN_CELLS])
    if len(cells) > _SHOWN_CELLS:
        shown += f" and {len(cells) - _SHOWN_CELLS} more"
    return (
        f"{path} has {len(cells)} formula cell(s) without a computed value on sheet "
        f"'{sheet}' ({shown}), which would be read as missing values; open and save the file "
        "in a spreadsheet program so the values are computed, or replace formulas by values."
    )


def require_computed(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Refuse (:class:`DataError`, one sentence) a table read from a workbook whose formula
    cells have no stored value, for uses where those values would silently be missing."""
    msg = uncomputed_formulas_sentence(df, path)
    if msg:
        raise DataError(msg)


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


def _uncomputed_formula_cells(path: Path) -> tuple[str, list[str]] | None:
    """``(sheet name, cells)`` of the first worksheet (the one pandas reads) that hold a
    formula (``<f>``) but no stored value (no ``<v>``, or an empty one on a cell that is
    not text), in file order, or ``None`` when the workbook's parts cannot be followed (it
    was read, so this is only logged).

    The sheet XML is read directly because openpyxl cannot tell these cells apart: with
    ``data_only=True`` a formula never computed (openpyxl writes ``<f>B2+1</f><v/>``) and
    a formula whose stored result is empty text (``=IF(A2="","",A2)``, which Excel writes
    ``t="str"`` with ``<v></v>``) are both ``None``; the second is a real (blank) value.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            sheet, part = _first_worksheet(zf)
            with zf.open(part) as fh:
                return sheet, _formula_cells_without_value(fh)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, ElementTree.ParseError) as err:
        log.warning("could not check %s for formulas without a stored value: %s", path, err)
        return None


def _local(tag: str) -> str:
    """An XML name without its namespace (``{ns}sheet`` -> ``sheet``)."""
    return tag.rsplit("}", 1)[-1]


def _relationships(zf: zipfile.ZipFile, rels_path: str) -> dict[str, tuple[str, str]]:
    """``{id: (type, target)}`` of a ``.rels`` part."""
    root = ElementTree.fromstring(zf.read(rels_path))
    return {
        el.get("Id", ""): (el.get("Type", ""), el.get("Target", ""))
        for el in root.iter()
        if _local(el.tag) == "Relationship"
    }


def _first_worksheet(zf: zipfile.ZipFile) -> tuple[str, str]:
    """``(name, part path)`` of the first worksheet of a workbook, as openpyxl (and so
    pandas' ``sheet_name=0``) finds it: the first sheet of ``workbook.xml`` that is not a
    chart sheet and whose part exists."""
    names = set(zf.namelist())
    book = "xl/workbook.xml"
    if "_rels/.rels" in names:
        for kind, target in _relationships(zf, "_rels/.rels").values():
            if kind.endswith("/officeDocument"):
                book = target.lstrip("/")
                break
    folder = posixpath.dirname(book)
    rels = _relationships(zf, posixpath.join(folder, "_rels", posixpath.basename(book) + ".rels"))
    for el in ElementTree.fromstring(zf.read(book)).iter():
        if _local(el.tag) != "sheet":
            continue
        rid = next((v for k, v in el.attrib.items() if k.startswith("{") and _local(k) == "id"), "")
        kind, target = rels.get(rid, ("", ""))
        if not target or "chartsheet" in kind:
            continue
        part = (
            target.lstrip("/")
            if target.startswith("/")
            else posixpath.normpath(posixpath.join(folder, target))
        )
        if part in names:
            return el.get("name", ""), part
    raise KeyError("the workbook has no worksheet")


def _formula_cells_without_value(fh) -> list[str]:
    """References (``B3``) of the ``<c>`` cells of a sheet part with a formula but no
    stored value (see :func:`_uncomputed_formula_cells`)."""
    cells: list[str] = []
    row = col = 0
    for event, el in ElementTree.iterparse(fh, events=("start", "end")):
        tag = _local(el.tag)
        if event == "start":
            if tag == "row":
                row = int(el.get("r") or row + 1)
                col = 0
            continue
        if tag == "c":
            ref = el.get("r")
            if ref:
                letters = re.match(r"[A-Za-z]*", ref).group(0).upper()
                col = _column_number(letters) if letters else col + 1
            else:
                col += 1
                ref = f"{_column_letters(col)}{row}"
            kids = {_local(child.tag): child for child in el}
            if "f" in kids and "is" not in kids:
                value = kids.get("v")
                # An empty <v/> is a stored value only for text (t="str": a formula whose
                # result is ""); openpyxl writes <f>..</f><v/> for a formula never computed.
                if value is None or (not value.text and el.get("t") != "str"):
                    cells.append(ref)
            el.clear()
        elif tag == "row":
            el.clear()
    return cells


def _column_number(letters: str) -> int:
    """``A`` -> 1, ``Z`` -> 26, ``AA`` -> 27."""
    n = 0
    for ch in letters:
        n = n * 26 + ord(ch) - ord("A") + 1
    return n


def _column_letters(n: int) -> str:
    """1 -> ``A``, 27 -> ``AA``."""
    out = ""
    while n > 0:
        n, rem = divmod(n - 1, 26)
        out = chr(ord("A") + rem) + out
    return out


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
