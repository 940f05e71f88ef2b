"""CSV cells a spreadsheet will not run as formulas (OWASP "CSV Injection").

A spreadsheet program that opens a CSV file treats a cell that begins with ``=``, ``+``,
``-`` or ``@`` as a formula, and a leading tab or carriage return can hide one, so an id or
a table value such as ``=HYPERLINK(...)`` written raw into an output CSV would run on the
machine of whoever opens the file.  As OWASP recommends, every CSV unveil writes with ids
or table text goes through :func:`neutralise_cell` / :func:`neutralise_frame`, which put a
single quote in front of such a text cell (``=cmd`` is written ``'=cmd``); spreadsheets
show it as text.

What is changed, and what is not:

- only text is changed.  Numbers (``int``, ``float``, numpy numbers, booleans, negative
  ones like ``-55.0`` included) are written exactly as before, and so is text that is a
  plain decimal number (``-5``, ``+1.5``, ``-2e3``): a spreadsheet reads it as that number,
  not as a formula, so an id ``-5`` stays ``-5`` in the file;
- a text cell that already begins with quotes followed by a trigger character (``'=x``)
  gets one more quote, so that :func:`restore_cell` undoes exactly what was done:
  ``restore_cell(neutralise_cell(v)) == v`` for every value.

The readers inside unveil restore: :func:`unveil.data.table.read_clinical_table` (the
``clinical.csv`` and ``truth.csv`` of a planted cohort), the analysis records' CSV reader
(:func:`unveil.records.read_table_csv`) and ``unveil compare`` (``recovery.csv``).  Any other
program reading these files should apply the same rule (drop one leading ``'`` when the
rest, stripped of leading quotes, begins with ``= + - @``, tab or carriage return and is
not a plain number).

The raw ids also stay where no spreadsheet runs them: ``analysis/results.json``
(``run.subjects``) and ``run.json`` of a counterfactual run, the ``maps/<id>/`` folder
names of an analysis, ``info.json`` (``subjects``) of an evaluation, ``effects.json``
(``sources``) of a planted cohort and the clinical table itself for ``prompts.csv``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: First characters that make a spreadsheet read a cell as a formula.
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")

_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _needs_quote(text: str) -> bool:
    """Whether ``text`` gets a quote in front (see the module text)."""
    bare = text.lstrip("'")
    return bare.startswith(TRIGGERS) and _PLAIN_NUMBER.fullmatch(bare) is None


def neutralise_cell(value: Any) -> Any:
    """``value`` with a ``'`` in front when it is text a spreadsheet would run as a
    formula; any other value (numbers, ``None``, plain-number text) is returned as it is."""
    if isinstance(value, str) and _needs_quote(value):
        return "'" + value
    return value


def restore_cell(value: Any) -> Any:
    """Undo :func:`neutralise_cell`: drop the quote it added; anything else is unchanged."""
    if isinstance(value, str) and value.startswith("'") and _needs_quote(value[1:]):
        return value[1:]
    return value


def neutralise_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with every text cell and column name through :func:`neutralise_cell`
    (number columns are left untouched)."""
    return _map_text(df, neutralise_cell)


def restore_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Undo :func:`neutralise_frame` on a frame read back from CSV (text cells and column
    names; numbers are never quoted, so number columns are left untouched)."""
    return _map_text(df, restore_cell)


def _map_text(df: pd.DataFrame, fn: Any) -> pd.DataFrame:
    """A copy of ``df`` with ``fn`` applied to the cells of its text columns and to its
    column names (by position, so a repeated column name is no problem)."""
    # lazy pandas: `unveil --help` imports this module (via commands/prompts.py)
    from pandas.api.types import is_string_dtype

    out = df.copy()
    for i in range(out.shape[1]):
        col = out.iloc[:, i]
        if col.dtype == object or is_string_dtype(col.dtype):
            out.isetitem(i, col.map(fn))
    out.columns = [fn(c) for c in out.columns]
    return out


def prompts_csv_text(ids: Sequence[str], prompts: Sequence[str]) -> str:
    """The ``id,prompt`` CSV that ``unveil prompts`` and the demo write, cells neutralised
    (an id such as ``=cmd`` is written ``'=cmd``; the raw ids stay in the clinical table)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "prompt"])
    w.writerows((neutralise_cell(i), neutralise_cell(p)) for i, p in zip(ids, prompts, strict=True))
    return buf.getvalue()
