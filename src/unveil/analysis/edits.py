"""The edits of a run as the analysis needs them: field, table column, operation, value.

Pure: edit strings (and a template, when one can be rebuilt) in, :class:`ParsedEdit` out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unveil.data.effects import is_missing
from unveil.errors import UnveilError
from unveil.records import RUN_JSON, RunRecord
from unveil.text.edits import parse_edit, split_edit
from unveil.text.template import load_template

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParsedEdit:
    """An edit as the analysis needs it.

    Attributes:
        text: the edit string of the run (``smoking=current``).
        field: the template field (``smoking``).
        column: the table column that field reads (the field name when no template).
        op: ``set``, ``add``, ``sub`` or ``unset``.
        value: the raw code (category) or a float (number); None for ``unset``.
        numeric: True when the field holds numbers (slopes, not groups, for the observed
            association).
    """

    text: str
    field: str
    column: str
    op: str
    value: Any
    numeric: bool

    def apply(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``attributes`` (column -> value) with this edit applied."""
        out = dict(attributes)
        current = out.get(self.column)
        if self.op == "set":
            out[self.column] = self.value
        elif self.op == "unset":
            out[self.column] = None
        else:
            x = None if is_missing(current) else number(current)
            sign = 1.0 if self.op == "add" else -1.0
            out[self.column] = None if x is None else x + sign * float(self.value)
        return out


def number(text: Any) -> float | None:
    """``text`` as a finite float (numbers and numeric strings), else None."""
    if text is None or isinstance(text, bool):
        return None
    try:
        v = float(str(text).strip())
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_run_edit(text: str, template: Any | None = None) -> ParsedEdit:
    """Parse an edit string of a run; with a template, through :func:`unveil.text.edits.parse_edit`.

    Without a template (none could be rebuilt from the run's config) the stable text form
    ``str(edit)`` is parsed directly (``field=value``, ``field+=x``, ``field-=x``,
    ``unset-field``), the field is taken to be the table column of the same name, and a
    ``set`` value is numeric when it reads as a number.
    """
    if template is not None:
        try:
            e = parse_edit(text, template)
        except UnveilError as err:
            # The run was made with the checkpoint's own template; a shipped template of the
            # same name may have changed since, so fall back on the edit's text form.
            log.warning(
                "edit %s does not fit template %s (%s); parsing its text", text, template.name, err
            )
        else:
            f = template.field(e.field)
            numeric = f.kind in ("number", "days")
            value = float(e.value) if numeric and e.value is not None else e.value
            return ParsedEdit(text, e.field, f.column, e.op, value, numeric)
    parts = split_edit(text)
    if parts is not None and parts[1] == "unset":
        return ParsedEdit(text, parts[0], parts[0], "unset", None, False)
    if parts is None or not parts[2]:
        raise UnveilError(
            f"edit '{text}' in {RUN_JSON} is not of the form field=value, field+=number, "
            "field-=number or unset-field; re-run unveil counterfactual."
        )
    name, sign, raw = parts
    if sign != "=":
        delta = number(raw)
        if delta is None:
            raise UnveilError(
                f"edit '{text}' in {RUN_JSON} shifts by '{raw}', which is not a number; "
                "re-run unveil counterfactual."
            )
        return ParsedEdit(text, name, name, "add" if sign == "+=" else "sub", delta, True)
    num = number(raw)
    return ParsedEdit(text, name, name, "set", raw if num is None else num, num is not None)


def template_from_run(run: RunRecord) -> Any | None:
    """The run's template, rebuilt cheaply from its config (no model is loaded); None if not."""
    name = run.config_section("text").get("template")
    id_column = run.config_section("data").get("id_column", "id")
    if not name:
        return None
    try:
        return load_template(name, id_column=id_column)
    except UnveilError as err:
        log.warning("template %s not found (%s); edits are parsed from their text form", name, err)
        return None


def baseline_value(baseline: Sequence[ParsedEdit], column: str) -> Any | None:
    """The value a ``set`` baseline gives ``column`` (the last one wins), else None."""
    value = None
    for b in baseline:
        if b.column == column and b.op == "set":
            value = b.value
    return value


def numeric_change(edit: ParsedEdit, x_mean: float, base: Any | None) -> float:
    """What a numeric edit changes the attribute by, for scaling a slope.

    ``+=``/``-=``: the delta.  ``set``: target minus the run's baseline value of the column
    when it has one (every subject started there), else target minus the cohort mean (the
    mean change a linear association predicts).
    """
    if edit.op == "add":
        return float(edit.value)
    if edit.op == "sub":
        return -float(edit.value)
    start = number(base) if base is not None else None
    return float(edit.value) - (start if start is not None else x_mean)
