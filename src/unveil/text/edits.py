"""Structured edits of a clinical row, checked against a template.

An edit works on what the template *renders*: ``smoking=current`` accepts the vocabulary
word (``current smoker``) or the raw code (``current``, or ``1`` in a coded table) and
stores the raw code that renders as that word.  Forms::

    smoking=current      set a category or boolean field (word or raw code)
    age=24               set a number / days field (checked against the field's range)
    age+=10  age-=5      shift a number / days field
    unset smoking        make the field absent (also written unset-smoking)

``str(edit)`` is the stable text form used in file names and reports: the raw code for
categories (``smoking=current``), numbers without a trailing ``.0`` (``age+=10``) and
``unset-smoking`` for an unset.  ``parse_edit(str(edit), template) == edit``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Literal

from unveil.errors import UnveilError
from unveil.text.template import (
    MISSING,
    Template,
    format_number,
    normalize_code,
)

Op = Literal["set", "add", "sub", "unset"]
_EDIT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(\+=|-=|=)(.*)$", re.S)
_UNSET_RE = re.compile(r"^\s*unset(?:\s+|-)([A-Za-z_][A-Za-z0-9_]*)\s*$")
_FORMS = "field=value, field+=number, field-=number or unset FIELD"


class EditError(UnveilError):
    """An edit that does not fit the template."""


@dataclass(frozen=True)
class Edit:
    """One structured edit.

    Attributes:
        field: the template field name.
        op: ``set``, ``add`` (``+=``), ``sub`` (``-=``) or ``unset``.
        value: for ``set`` on a category/boolean the raw code as written in the template's
            vocab; for numbers a float; None for ``unset``.
        word: the words the template renders for a category/boolean ``set`` (for reports;
            not part of equality).
    """

    field: str
    op: Op
    value: Any = None
    word: str | None = dc_field(default=None, compare=False)

    def __str__(self) -> str:
        if self.op == "unset":
            return f"unset-{self.field}"
        sign = {"set": "=", "add": "+=", "sub": "-="}[self.op]
        return f"{self.field}{sign}{_code_text(self.value)}"

    def describe(self) -> str:
        """A readable form for reports (``smoking = current smoker``, ``age += 10``)."""
        if self.op == "unset":
            return f"{self.field} unset"
        if self.op == "set":
            return (
                f"{self.field} = {self.word if self.word is not None else _code_text(self.value)}"
            )
        return f"{self.field} {'+=' if self.op == 'add' else '-='} {_code_text(self.value)}"


def _code_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_number(value, 6)
    return str(value)


def _num(text: str) -> float | None:
    key = normalize_code(text)
    if key is MISSING or isinstance(key, str) or not math.isfinite(float(key)):
        return None
    return float(key)


def _range_text(rng: tuple[float, float]) -> str:
    return f"[{format_number(rng[0], 6)}, {format_number(rng[1], 6)}]"


def parse_unset(name: str, template: Template) -> Edit:
    """The edit that makes field ``name`` absent."""
    f = _field(template, name.strip(), f"unset {name.strip()}")
    return Edit(f.name, "unset")


def _field(template: Template, name: str, text: str):
    if name not in template.field_names:
        close = difflib.get_close_matches(name, template.field_names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise EditError(
            f"edit '{text}' names no field of template {template.name}{hint}; fields are: "
            f"{', '.join(template.field_names)}."
        )
    return template.field(name)


def _valid_values(template: Template, name: str) -> str:
    f = template.field(name)
    pairs = []
    for code, word in zip(template.values_of(name), template.words_of(name), strict=True):
        c = _code_text(code)
        pairs.append(word if normalize_code(c) == normalize_code(word) else f"{word} ({c})")
    if f.kind == "boolean" and not f.vocab:
        pairs = ["yes", "no"]
    return ", ".join(pairs)


def split_edit(text: str) -> tuple[str, str, str] | None:
    """The grammar of an edit alone, without a template: ``(field, sign, raw value)``.

    ``sign`` is ``"="``, ``"+="``, ``"-="`` or ``"unset"`` (``raw`` then ``""``); ``raw`` is
    the stripped text after the sign, possibly empty.  None when ``text`` is not of one of
    the forms of the module doc.  This is the one place the forms are spelled: callers
    that have no template (e.g. an analysis reading an old run) parse with it too.
    """
    if not isinstance(text, str):
        return None
    m = _UNSET_RE.match(text)
    if m:
        return (m.group(1), "unset", "")
    m = _EDIT_RE.match(text)
    if not m:
        return None
    return (m.group(1), m.group(2), m.group(3).strip())


def edit_field(text: str) -> str | None:
    """The field an edit text changes (``smoking=current``, ``age+=10`` and
    ``unset-smoking`` -> ``smoking`` / ``age``), by :func:`split_edit`; None if not an edit."""
    parts = split_edit(text)
    return None if parts is None else parts[0]


def parse_edit(text: str, template: Template) -> Edit:
    """Parse one edit (see the module doc) and check it against ``template``."""
    if not isinstance(text, str) or not text.strip():
        raise EditError(f"edit {text!r} is empty; write it as {_FORMS}.")
    parts = split_edit(text)
    if parts is None:
        raise EditError(f"edit '{text.strip()}' is not of the form {_FORMS}.")
    name, sign, raw = parts
    if sign == "unset":
        return parse_unset(name, template)
    f = _field(template, name, text.strip())
    if not raw:
        raise EditError(
            f"edit '{text.strip()}' gives no value; write {name}=VALUE, or 'unset {name}' to make it absent."
        )
    if sign in ("+=", "-="):
        if f.kind not in ("number", "days"):
            raise EditError(
                f"edit '{text.strip()}' shifts {f.kind} field {name}, which is not a number; "
                f"set it instead ({name}=VALUE, one of: {_valid_values(template, name)})."
            )
        delta = _num(raw)
        if delta is None:
            raise EditError(f"edit '{text.strip()}' needs a number after '{sign}', not '{raw}'.")
        return Edit(f.name, "add" if sign == "+=" else "sub", delta)
    # set
    if f.kind in ("number", "days"):
        value = _num(raw)
        if value is None:
            raise EditError(
                f"edit '{text.strip()}' needs a number for {f.kind} field {name}, not '{raw}'"
                f"{'; use unset ' + name + ' to make it absent' if template.is_missing_code(name, raw) else ''}."
            )
        _check_range(template, name, value, text.strip())
        return Edit(f.name, "set", value)
    code = _match_code(template, name, raw)
    if code is None:
        extra = (
            f"; use 'unset {name}' to make it absent" if template.is_missing_code(name, raw) else ""
        )
        raise EditError(
            f"edit '{text.strip()}' gives '{raw}', which is not a value of field {name}; valid "
            f"values are: {_valid_values(template, name)}{extra}."
        )
    return Edit(f.name, "set", code, template.word(name, code))


def _match_code(template: Template, name: str, raw: str) -> Any:
    """The vocab's raw code whose word or code matches ``raw`` (words first), or None."""
    want = normalize_code(raw)
    codes = template.values_of(name)
    words = template.words_of(name)
    for code, word in zip(codes, words, strict=True):
        if normalize_code(word) == want:
            return code
    if template.word(name, raw) is not None:
        f = template.field(name)
        if f.kind == "category":
            for code in codes:
                if normalize_code(code) == want:
                    return code
        else:  # boolean: any boolean spelling of a code
            target = template.word(name, raw)
            for code, word in zip(codes, words, strict=True):
                if word == target:
                    return code
    return None


def _check_range(template: Template, name: str, value: float, text: str, subject: str = "") -> None:
    rng = template.field(name).range
    if rng is not None and not rng[0] <= value <= rng[1]:
        raise EditError(
            f"edit '{text}' gives {format_number(value, 6)}{subject}, outside the valid range "
            f"{_range_text(rng)} of field {name}; choose a value inside it or widen the template's range."
        )


def parse_edits(texts: Iterable[str], template: Template, unset: Iterable[str] = ()) -> list[Edit]:
    """Parse ``--set`` texts and ``--unset`` field names, in that order."""
    return [*(parse_edit(t, template) for t in texts), *(parse_unset(u, template) for u in unset)]


def apply_edits(
    row: Mapping[str, Any],
    edits: Iterable[Edit],
    template: Template,
    on_missing: Literal["keep", "error"] = "keep",
) -> dict[str, Any]:
    """A new row (column -> raw value) with ``edits`` applied in order; ``row`` is unchanged.

    ``set`` stores the raw code (categories) or the number; ``unset`` stores None, which
    every template reads as missing.  A shift (``+=``/``-=``) of a field that is missing in
    this row leaves it missing (``on_missing="keep"``) or raises (``"error"``).  Results
    outside the field's range raise :class:`EditError`.
    """
    out = dict(row)
    for e in edits:
        f = _field(template, e.field, str(e))
        if e.op == "unset":
            out[f.column] = None
            continue
        if e.op == "set":
            if f.kind in ("number", "days"):
                value = (
                    _num(str(e.value)) if not isinstance(e.value, (int, float)) else float(e.value)
                )
                if value is None:
                    raise EditError(f"edit '{e}' needs a number for {f.kind} field {f.name}.")
                _check_range(template, f.name, value, str(e))
                out[f.column] = int(value) if value.is_integer() else value
            else:
                if template.word(f.name, e.value) is None:
                    raise EditError(
                        f"edit '{e}' gives {e.value!r}, which is not a value of field {f.name}; valid "
                        f"values are: {_valid_values(template, f.name)}."
                    )
                out[f.column] = e.value
            continue
        if f.kind not in ("number", "days"):
            raise EditError(
                f"edit '{e}' shifts {f.kind} field {f.name}, which is not a number; set it instead."
            )
        current = template.value(out, f.name)
        if current is None:
            if on_missing == "error":
                raise EditError(
                    f"edit '{e}' shifts field {f.name}, which is missing in this row; set it instead."
                )
            continue
        delta = float(e.value)
        value = current + delta if e.op == "add" else current - delta
        _check_range(template, f.name, value, str(e))
        out[f.column] = int(value) if float(value).is_integer() else value
    return out


def edits_label(edits: Iterable[Edit]) -> str:
    """The stable text of several edits joined with ``,`` (``smoking=current,age+=10``)."""
    return ",".join(str(e) for e in edits)
