"""The YAML schema of a template and the value codes it is written in.

:class:`TemplateSpec` / :class:`FieldSpec` validate a template document (one sentence per
problem, see :func:`validation_sentence`); :func:`normalize_code` is the comparison key of
raw table values and vocabulary keys; :func:`format_number` / :func:`format_days` render
numbers; :func:`looks_like_identifier` spots identifier columns.
:class:`unveil.text.template.Template` is built on them.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Kind = Literal["number", "category", "boolean", "days"]

#: Codes that always mean "missing" (compared after normalising), in every template.
BUILTIN_MISSING: tuple[Any, ...] = (
    "",
    "NA",
    "N/A",
    "NaN",
    "null",
    "Not Available",
    "unknown",
    "missing",
)

_TRUE_WORDS = {"true", "yes", "y", "t"}
_FALSE_WORDS = {"false", "no", "n", "f"}
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DAYS_PER_YEAR = 365.25
_DAYS_PER_MONTH = _DAYS_PER_YEAR / 12


class _Missing:
    """Sentinel for a value that is absent (None, NaN, empty string)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


# ---------------------------------------------------------------------------- normalising


def _is_nan(value: Any) -> bool:
    try:
        return value is None or bool(value != value)  # NaN, pd.NA raise or are != self
    except (TypeError, ValueError):
        return True  # pd.NA: bool(NA != NA) raises -> treat as missing


def normalize_code(value: Any) -> Any:
    """The comparison key of a raw table value or vocabulary key.

    Strings are stripped and case-folded; numbers and strings that spell numbers become an
    ``int`` when integral, else a ``float``; booleans become 0/1; None, NaN, pandas NA and
    empty strings become :data:`MISSING`.
    """
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        with contextlib.suppress(ValueError, TypeError):
            value = value.item()  # numpy scalar -> python
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float):
            if math.isnan(value):
                return MISSING
            if math.isfinite(value) and value.is_integer():
                return int(value)
        return value
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return MISSING
        if _NUMBER_RE.match(s):
            return normalize_code(float(s)) if any(c in s for c in ".eE") else int(s)
        return s.casefold()
    if _is_nan(value):
        return MISSING
    return normalize_code(str(value))


def as_bool(key: Any) -> bool | None:
    """A normalised code read as a boolean, or None when it is not one."""
    if key == 1 and not isinstance(key, str):
        return True
    if key == 0 and not isinstance(key, str):
        return False
    if isinstance(key, str):
        if key in _TRUE_WORDS:
            return True
        if key in _FALSE_WORDS:
            return False
    return None


def format_number(value: float, decimals: int) -> str:
    """``value`` rounded half away from zero to ``decimals``; integral results have no point.

    The sign is kept (``-3`` stays ``-3``); a result that rounds to zero is ``0``.
    """
    q = Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    if q == 0:
        return "0"
    text = f"{q:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_days(days: float, decimals: int) -> str:
    """A duration in days as ``N days`` (under 60), ``N months`` (under 2 years) or ``N years``."""
    a = abs(days)
    if a < 60:
        number, unit = format_number(days, decimals), "day"
    elif a < 2 * _DAYS_PER_YEAR:
        number, unit = format_number(days / _DAYS_PER_MONTH, decimals), "month"
    else:
        number, unit = format_number(days / _DAYS_PER_YEAR, decimals), "year"
    plural = "" if number in ("1", "-1") else "s"
    return f"{number} {unit}{plural}"


def show_value(value: Any) -> str:
    """A raw value for an error message."""
    if isinstance(value, float) and value.is_integer():
        return repr(int(value))
    return repr(value) if isinstance(value, str) else str(value)


# ---------------------------------------------------------------------------- identifiers

_ID_TOKENS = {
    "id",
    "ids",
    "uid",
    "uuid",
    "pid",
    "mrn",
    "dob",
    "ssn",
    "nhs",
    "accession",
    "patient",
    "patients",
    "name",
    "names",
    "surname",
    "firstname",
    "lastname",
    "fullname",
    "forename",
    "initials",
    "birthdate",
    "dateofbirth",
    "subjectid",
    "patientid",
    "caseid",
    "studyid",
    "scanid",
    "accessionnumber",
    "email",
    "address",
    "postcode",
    "zipcode",
    "phone",
}
_ID_SUBSTRINGS = ("patient", "accession", "birth", "mrn")


def looks_like_identifier(column: str, id_column: str | None = "id") -> bool:
    """True when ``column`` is the id column or is named like an identifier."""
    if id_column is not None and column.strip().casefold() == str(id_column).strip().casefold():
        return True
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", column)  # PatientID -> Patient ID
    tokens = [t for t in re.split(r"[^a-z0-9]+", spaced.casefold()) if t]
    joined = "".join(tokens)
    if any(t in _ID_TOKENS for t in tokens) or joined in _ID_TOKENS:
        return True
    if "date of birth" in " ".join(tokens):
        return True
    return any(s in joined for s in _ID_SUBSTRINGS)


# ---------------------------------------------------------------------------- YAML schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(_Strict):
    """One field of a template: which column, how to read it, how to say it."""

    name: str = Field(description="field name used in edits (smoking=current)")
    column: str = Field(description="table column the value is read from")
    kind: Kind = Field(description="number, category, boolean or days")
    phrase: str = Field(default="{value}", description="clause with one {value} placeholder")
    unit: str | None = Field(default=None, description="number kind: written after the value")
    rounding: int = Field(default=0, ge=0, le=6, description="decimals for number and days")
    vocab: dict[Any, str] = Field(
        default_factory=dict, description="raw code -> words (category and boolean kinds)"
    )
    range: tuple[float, float] | None = Field(
        default=None, description="valid [low, high] for number and days kinds, used by edits"
    )
    missing: list[Any] = Field(
        default_factory=list,
        description="codes that make this field absent (added to the template's)",
    )

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _FIELD_NAME_RE.match(v):
            raise ValueError(
                f"field name '{v}' must be letters, digits and underscores (it is used in edits "
                "like name=value)"
            )
        return v

    @field_validator("column")
    @classmethod
    def _column_ok(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a field's column must not be empty")
        return v.strip()

    @field_validator("phrase")
    @classmethod
    def _phrase_ok(cls, v: str) -> str:
        if v.count("{value}") != 1:
            raise ValueError(f"phrase '{v}' must contain {{value}} exactly once")
        if re.search(r"[{}]", v.replace("{value}", "")):
            raise ValueError(f"phrase '{v}' may hold no braces other than {{value}}")
        return v.strip()

    @field_validator("vocab", mode="before")
    @classmethod
    def _vocab_mapping(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise ValueError("vocab must be a mapping of raw code -> words")
        for key, word in v.items():
            if not isinstance(word, str) or not word.strip():
                raise ValueError(
                    f"vocab entry {key!r} must map to non-empty words in quotes, not {word!r}"
                )
        return dict(v)

    @field_validator("missing", mode="before")
    @classmethod
    def _missing_list(cls, v: Any) -> Any:
        if v is None:
            return []
        return list(v) if isinstance(v, (list, tuple)) else [v]

    @field_validator("range")
    @classmethod
    def _range_ok(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] <= v[1]:
            raise ValueError(f"range {list(v)} must be [low, high] with low <= high")
        return v

    @model_validator(mode="after")
    def _kind_consistent(self) -> FieldSpec:
        where = f"field {self.name}"
        if self.kind in ("number", "days"):
            if self.vocab:
                raise ValueError(
                    f"{where} is a {self.kind}; vocab is only for category and boolean fields"
                )
            if self.kind == "days" and self.unit:
                raise ValueError(f"{where} is days; its unit is chosen when rendering, remove unit")
            label = self.phrase.replace("{value}", "").strip(" .:,;")
            if not label and not self.unit:
                raise ValueError(
                    f"{where} would render a bare number; label it in the phrase (e.g. 'Age {{value}}') or give a unit"
                )
        else:
            if self.unit is not None or self.range is not None or self.rounding:
                raise ValueError(
                    f"{where} is a {self.kind}; unit, range and rounding are only for number and days fields"
                )
            if self.kind == "category" and not self.vocab:
                raise ValueError(f"{where} is a category and needs a vocab (raw code -> words)")
            for key in self.vocab:
                if isinstance(key, bool) and self.kind == "category":
                    raise ValueError(
                        f"vocab key {key} of {where} was read by YAML as a boolean; quote it (for example 'no':)"
                    )
                if normalize_code(key) is MISSING:
                    raise ValueError(
                        f"vocab of {where} has an empty key; remove it or list it under missing"
                    )
            if self.kind == "boolean":
                sides = [as_bool(normalize_code(k)) for k in self.vocab]
                if any(s is None for s in sides):
                    bad = next(k for k, s in zip(self.vocab, sides, strict=True) if s is None)
                    raise ValueError(
                        f"vocab key {bad!r} of boolean {where} is not a boolean code (true/false, yes/no, 1/0)"
                    )
                if self.vocab and set(sides) != {True, False}:
                    raise ValueError(
                        f"vocab of boolean {where} must give words for both true and false"
                    )
                if not self.vocab and not self.phrase.replace("{value}", "").strip(" .:,;"):
                    raise ValueError(
                        f"{where} would render a bare yes/no; label it in the phrase or give a vocab"
                    )
            keys = [normalize_code(k) for k in self.vocab]
            if self.kind == "boolean":
                keys = [as_bool(k) for k in keys]
            dup = [k for i, k in enumerate(keys) if k in keys[:i]]
            if dup:
                raise ValueError(
                    f"vocab of {where} lists the code {dup[0]!r} twice (after normalising)"
                )
        return self


class TemplateSpec(_Strict):
    """The whole YAML document of a template."""

    name: str | None = Field(default=None, description="template name (default: file name)")
    description: str | None = None
    prefix: str = Field(default="", description="text before the clauses, e.g. 'Lung CT scan:'")
    missing: list[Any] = Field(
        default_factory=list,
        description="codes that make any field absent (added to the built-in ones)",
    )
    fields: list[FieldSpec] = Field(min_length=1)

    @field_validator("missing", mode="before")
    @classmethod
    def _missing_list(cls, v: Any) -> Any:
        if v is None:
            return []
        return list(v) if isinstance(v, (list, tuple)) else [v]

    @field_validator("prefix", mode="before")
    @classmethod
    def _prefix_str(cls, v: Any) -> Any:
        return "" if v is None else v

    @model_validator(mode="after")
    def _unique_names(self) -> TemplateSpec:
        names = [f.name for f in self.fields]
        dup = [n for i, n in enumerate(names) if n in names[:i]]
        if dup:
            raise ValueError(f"field name '{dup[0]}' appears twice; field names must be unique")
        return self


# ---------------------------------------------------------------------------- errors


def validation_sentence(err: ValidationError, source: str, data: Any) -> str:
    """The first pydantic error as one sentence naming the key and the fix."""
    errors = err.errors()
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])  # typos first
    loc = list(e["loc"])
    parts: list[str] = []
    model: type[BaseModel] = TemplateSpec
    node: Any = data
    for i, p in enumerate(loc):
        if isinstance(p, int):
            label = ""
            if (
                isinstance(node, list)
                and p < len(node)
                and isinstance(node[p], Mapping)
                and "name" in node[p]
            ):
                label = f" ({node[p]['name']})"
            parts[-1] = f"{parts[-1]}[{p}]{label}" if parts else f"[{p}]"
            node = node[p] if isinstance(node, list) and p < len(node) else None
            continue
        if i < len(loc) - 1 and p == "fields":
            model = FieldSpec
        parts.append(str(p))
        node = node.get(p) if isinstance(node, Mapping) else None
    key = ".".join(parts) or "(top level)"
    if e["type"] == "extra_forbidden":
        valid = list(model.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{source}: unknown key '{key}'{hint}; valid keys are: {', '.join(valid)}."
    if e["type"] == "missing":
        return f"{source}: required key '{key}' is missing; add it."
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = e.get("input")
    got_s = "" if isinstance(got, (dict, list)) or e["type"] == "value_error" else f" (got {got!r})"
    if not parts:
        return f"{source}: {msg}{got_s}."
    return f"{source}: key '{key}' is invalid: {msg}{got_s}."
