"""What every record shares: lenient cell types, the base model, JSON cleaning, and the
one sentence for a record that does not validate.

Cells reach a record from three writers: Python code (floats, possibly NaN), JSON (NaN
written as ``null``) and CSV (every cell a string, NaN written as an empty cell).  The
annotated types here read all three the same way, so a row read back from any of them
equals the row that was written:

- :data:`Num`: a float; ``None`` and an empty cell are NaN;
- :data:`Count`: an int (``"12"`` and ``12.0`` read as 12); :data:`MaybeCount` also None;
- :data:`Flag`: a bool; ``"True"``/``"false"``/``"1"`` as in CSV, an empty cell is False;
- :data:`Text`: a string; a number (an id such as ``7`` in a hand-written file) becomes
  its text;
- :data:`MaybeText`: a string or None; an empty cell is None.

Anything else (a list where a number belongs, ``"abc"`` for a p-value) fails validation,
and :func:`record_error` turns the first failure into one sentence that names the file,
the field and the fix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from unveil.errors import DataError


def _num(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    return value


def _count(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        try:
            x = float(value)
        except ValueError:
            return value
        return int(x) if x.is_integer() else value
    return value


def _flag(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return value


def _text(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def _maybe_text(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return _text(value)


#: A float; ``None`` (JSON) and an empty cell (CSV) read as NaN.
Num = Annotated[float, BeforeValidator(_num)]
#: An int; ``"12"`` and ``12.0`` read as 12.
Count = Annotated[int, BeforeValidator(_count)]
#: An int or None; an empty cell reads as None.
MaybeCount = Annotated[int | None, BeforeValidator(_count)]
#: A bool; CSV's ``True``/``False`` read as bools, an empty cell as False.
Flag = Annotated[bool, BeforeValidator(_flag)]
#: A string; a number becomes its text.
Text = Annotated[str, BeforeValidator(_text)]
#: A string or None; an empty cell reads as None.
MaybeText = Annotated[str | None, BeforeValidator(_maybe_text)]


class Record(BaseModel):
    """Base of the records whose every field the reader knows (``extra="forbid"``).

    Used for what ``unveil analyze`` writes: it is rewritten in seconds by rerunning the
    analysis, so a reader refuses a field it does not know (a file from another version of
    unveil) with a sentence saying so, rather than render numbers whose meaning may have
    changed.  The run record, which costs a whole generation to rewrite, keeps unknown
    fields instead (see :class:`unveil.records.run.RunRecord`).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def clean_json(obj: Any) -> Any:
    """A JSON-safe copy: NaN and inf become None (JSON has no such numbers), numpy scalars
    and tuples become Python values and lists."""
    if isinstance(obj, Mapping):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "item"):  # a numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _where(loc: tuple[Any, ...]) -> str:
    """``('cohort_stats', 3, 'mean_diff_hu')`` -> ``cohort_stats[3].mean_diff_hu``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not str(part).startswith(("function-", "constrained-")):
            text += f".{part}" if text else str(part)
    return text or "the top level"


def record_error(path: str | os.PathLike, err: ValidationError, fix: str) -> DataError:
    """One sentence for a record that does not validate: the file, the first field at
    fault, what is wrong with it, and ``fix`` (e.g. ``rerun unveil analyze RUN``)."""
    first = err.errors()[0]
    loc = tuple(first.get("loc", ()))
    where = _where(loc)
    kind = first.get("type", "")
    if kind == "missing" and loc and isinstance(loc[-1], int):  # a tuple too short
        what = f"has too few values in '{_where(loc[:-1])}'"
    elif kind == "missing":
        what = f"lacks the field '{where}'"
    elif kind == "extra_forbidden":
        what = f"has a field '{where}' this version of unveil does not know"
    else:
        got = first.get("input")
        shown = repr(got) if len(repr(got)) <= 40 else f"a {type(got).__name__}"
        reason = str(first.get("msg", "is invalid")).rstrip(".")
        reason = reason[0].lower() + reason[1:] if reason else "is invalid"
        what = f"has '{where}' = {shown}, which is wrong ({reason})"
    more = len(err.errors()) - 1
    also = f" (and {more} other problem(s))" if more > 0 else ""
    return DataError(f"{path} {what}{also}; {fix}.")
