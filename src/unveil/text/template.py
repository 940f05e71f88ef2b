"""Clinical table row -> one short sentence, driven by a template written as YAML data.

A template lists fields in a fixed order.  Each field reads one table column and renders
one short clause ending with a period; the clauses follow an optional ``prefix``::

    Lung CT scan: diagnosis is IPF. One-year outcome: dead. Age 76. Female. Never smoker.

Rules that hold for every template:

* A missing value leaves its field out of the sentence (no imputation).  Empty cells,
  NaN/None and the codes in :data:`BUILTIN_MISSING` are always missing; a template adds its
  own codes at the top level (``missing:``) and per field.
* The vocabulary wins over the missing codes: ``unknown`` is missing unless a field's
  ``vocab`` gives it a word, and it is never rendered as "no".
* Codes are compared after normalising: strings are stripped and case-folded, numbers (and
  strings that spell numbers) compare as numbers, so ``1``, ``1.0`` and ``"1"`` match.
* Numbers keep their sign; ``rounding: 0`` renders an integer (``76``, never ``76.0``);
  with more decimals trailing zeros are dropped (``20.5``, ``20``).
* ``days`` fields hold a duration in days and render it in days, months or years
  (``2.5 years``).
* A category value that is neither in the vocabulary nor a missing code is an error that
  names the column, the value and the fix.
* A template that would render an identifier column is refused.

See ``configs/templates/phantom.yaml`` for a commented example.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unveil.errors import ConfigError, DataError

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


def _as_bool(key: Any) -> bool | None:
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


def _show(value: Any) -> str:
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
                sides = [_as_bool(normalize_code(k)) for k in self.vocab]
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
                keys = [_as_bool(k) for k in keys]
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


# ---------------------------------------------------------------------------- Template


class Template:
    """A validated template: renders rows, parses values, validates edits.

    Attributes:
        name: the template's name.
        fields: the :class:`FieldSpec` objects in sentence order (``.name``, ``.column``,
            ``.kind``, ``.vocab`` raw code -> words, ``.range``).
        field_names: the field names in sentence order.
        prefix: the text before the clauses.
    """

    def __init__(self, spec: TemplateSpec, name: str | None = None, id_column: str | None = "id"):
        self.spec = spec
        self.name = spec.name or name or "unnamed"
        self.prefix = spec.prefix.strip()
        self.fields: list[FieldSpec] = list(spec.fields)
        self.field_names: list[str] = [f.name for f in self.fields]
        self._by_name = {f.name: f for f in self.fields}
        template_missing = {normalize_code(c) for c in (*BUILTIN_MISSING, *spec.missing)}
        self._missing: dict[str, set[Any]] = {
            f.name: template_missing | {normalize_code(c) for c in f.missing} for f in self.fields
        }
        # normalised code -> (raw key as written, words)
        self._vocab: dict[str, dict[Any, tuple[Any, str]]] = {}
        for f in self.fields:
            table: dict[Any, tuple[Any, str]] = {}
            if f.kind == "category":
                for key, word in f.vocab.items():
                    table[normalize_code(key)] = (key, word.strip())
            elif f.kind == "boolean":
                vocab = f.vocab or {True: "yes", False: "no"}
                for key, word in vocab.items():
                    table[_as_bool(normalize_code(key))] = (key, word.strip())
            self._vocab[f.name] = table
        self.check_identifiers(id_column)

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        source: str = "template",
        name: str | None = None,
        id_column: str | None = "id",
    ) -> Template:
        """Validate a parsed YAML mapping; every problem is one sentence (:class:`ConfigError`)."""
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{source} must hold a mapping with a 'fields' list, not a {type(data).__name__}."
            )
        try:
            spec = TemplateSpec.model_validate(dict(data))
        except ValidationError as err:
            raise ConfigError(_sentence(err, source, data)) from None
        return cls(spec, name=name, id_column=id_column)

    def check_identifiers(self, id_column: str | None = "id") -> None:
        """Refuse a template that would put an identifier column into a prompt."""
        for f in self.fields:
            if looks_like_identifier(f.column, id_column):
                raise ConfigError(
                    f"template {self.name} field {f.name} renders column '{f.column}', which is "
                    "(or is named like) an identifier; identifiers must never enter a prompt, so "
                    "remove that field from the template."
                )

    # -- lookups ------------------------------------------------------------------------

    def field(self, name: str) -> FieldSpec:
        """The field called ``name``; an unknown name is a one-sentence error."""
        try:
            return self._by_name[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.field_names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"template {self.name} has no field '{name}'{hint}; its fields are: "
                f"{', '.join(self.field_names)}."
            ) from None

    @property
    def columns(self) -> list[str]:
        return [f.column for f in self.fields]

    def values_of(self, field: str) -> list[Any]:
        """The raw codes of a category or boolean field, in vocabulary order."""
        f = self.field(field)
        if f.kind not in ("category", "boolean"):
            raise ConfigError(
                f"field {field} of template {self.name} is a {f.kind}, not a category; it has no list of values."
            )
        return [raw for raw, _ in self._vocab[f.name].values()]

    def words_of(self, field: str) -> list[str]:
        """The words of a category or boolean field, in the order of :meth:`values_of`."""
        self.values_of(field)
        return [word for _, word in self._vocab[field].values()]

    def word(self, field: str, code: Any) -> str | None:
        """The words for a raw ``code`` of a category/boolean field, or None when not in the vocab."""
        f = self.field(field)
        key = normalize_code(code)
        if f.kind == "boolean":
            key = _as_bool(key)
        hit = self._vocab[f.name].get(key)
        return hit[1] if hit else None

    def is_missing_code(self, field: str, code: Any) -> bool:
        key = normalize_code(code)
        return key is MISSING or key in self._missing[self.field(field).name]

    def check_columns(self, columns: Iterable[str], source: str = "the table") -> None:
        """Refuse a table that lacks a column the template reads."""
        have = list(columns)
        absent = [f.column for f in self.fields if f.column not in have]
        if absent:
            raise DataError(
                f"{source} has no column '{absent[0]}' read by template {self.name} "
                f"(columns found: {', '.join(map(str, have))}); rename the column or edit the template."
            )

    # -- values -------------------------------------------------------------------------

    def value(self, row: Mapping[str, Any], field: str) -> Any:
        """The parsed value of ``field`` in ``row``: None when missing, a float for number and
        days, the raw vocabulary key for a category, a bool for a boolean."""
        f = self.field(field)
        if f.column not in row:
            raise DataError(
                f"the row has no column '{f.column}' read by field {f.name} of template {self.name}; "
                "rename the column or edit the template."
            )
        raw = row[f.column]
        key = normalize_code(raw)
        if key is MISSING:
            return None
        if f.kind in ("category", "boolean"):
            lookup = _as_bool(key) if f.kind == "boolean" else key
            hit = self._vocab[f.name].get(lookup)
            if hit is not None:
                return hit[0] if f.kind == "category" else lookup
            if key in self._missing[f.name]:
                return None
            valid = ", ".join(_show(k) for k, _ in self._vocab[f.name].values())
            if f.kind == "boolean" and not f.vocab:
                valid = "true/false, yes/no or 1/0"
            raise DataError(
                f"column '{f.column}' holds {_show(raw)}, which field {f.name} of template "
                f"{self.name} neither has in its vocab ({valid}) nor lists as missing; add it to "
                f"the field's vocab or to its missing codes."
            )
        if key in self._missing[f.name]:
            return None
        if isinstance(key, (str, bool)):
            raise DataError(
                f"column '{f.column}' holds {_show(raw)}, which is not a number for {f.kind} field "
                f"{f.name} of template {self.name}; fix the value or add it to the field's missing codes."
            )
        if not math.isfinite(key):
            raise DataError(
                f"column '{f.column}' holds {_show(raw)}, which is not a finite number for field "
                f"{f.name} of template {self.name}; fix the value or add it to the field's missing codes."
            )
        return float(key)

    def parse_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Every field's parsed value (see :meth:`value`), keyed by field name."""
        return {f.name: self.value(row, f.name) for f in self.fields}

    def clause(self, row: Mapping[str, Any], field: str) -> str | None:
        """The rendered clause of one field (without its period), or None when missing."""
        f = self.field(field)
        v = self.value(row, field)
        if v is None:
            return None
        if f.kind == "category":
            text = self._vocab[f.name][normalize_code(v)][1]
        elif f.kind == "boolean":
            text = self._vocab[f.name][v][1]
        elif f.kind == "days":
            text = format_days(v, f.rounding)
        else:
            text = format_number(v, f.rounding) + (f" {f.unit.strip()}" if f.unit else "")
        return f.phrase.replace("{value}", text).strip()

    # -- rendering ---------------------------------------------------------------------

    def render(self, row: Mapping[str, Any], drop: set[str] | Iterable[str] | None = None) -> str:
        """One sentence for ``row`` (a mapping column -> raw value).

        Fields in ``drop`` are left out exactly like missing values.  The id column is never
        read.  With every field absent the result is the prefix alone, ending with a period.
        """
        dropped = set(drop or ())
        for name in dropped:
            self.field(name)  # unknown names are an error
        clauses = []
        for f in self.fields:
            if f.name in dropped:
                continue
            c = self.clause(row, f.name)
            if c:
                clauses.append(c)
        return self.join(clauses)

    def join(self, clauses: list[str]) -> str:
        """Join clauses into the sentence: each ends with a period and starts with a capital,
        except that the first clause keeps its case after a prefix ending with a colon."""
        prefix = self.prefix
        parts: list[str] = []
        for i, c in enumerate(clauses):
            c = c.strip()
            keep_case = i == 0 and prefix.endswith(":")
            if not keep_case:
                c = c[:1].upper() + c[1:]
            if not c.endswith((".", "!", "?")):
                c += "."
            parts.append(c)
        if not parts:
            return (prefix.rstrip(":;, ") + ".") if prefix else ""
        return " ".join([prefix, *parts]) if prefix else " ".join(parts)

    # -- identity ------------------------------------------------------------------------

    def identity(self) -> str:
        """A stable hash (16 hex digits) of everything that changes what is rendered or how
        edits are checked: prefix, missing codes, and every field in order.  The name and
        description are not part of it."""

        def code(v: Any) -> list[str]:
            n = normalize_code(v)
            return [type(n).__name__, repr(n)]

        canon = {
            "prefix": self.prefix,
            "missing": sorted(
                {json.dumps(code(c)) for c in (*BUILTIN_MISSING, *self.spec.missing)}
            ),
            "fields": [
                {
                    "name": f.name,
                    "column": f.column,
                    "kind": f.kind,
                    "phrase": f.phrase,
                    "unit": f.unit,
                    "rounding": f.rounding,
                    "vocab": [[*code(k), w.strip()] for k, w in f.vocab.items()],
                    "range": list(f.range) if f.range else None,
                    "missing": sorted(json.dumps(code(c)) for c in f.missing),
                }
                for f in self.fields
            ],
        }
        blob = json.dumps(canon, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Template({self.name!r}, fields={self.field_names}, identity={self.identity()})"


# ---------------------------------------------------------------------------- loading


def templates_dir() -> Path:
    """The folder of shipped templates (``configs/templates``)."""
    from unveil.config import configs_dir

    return configs_dir() / "templates"


def shipped_templates() -> list[str]:
    try:
        return sorted(p.stem for p in templates_dir().glob("*.yaml"))
    except ConfigError:
        return []


def load_template(name_or_path: str | os.PathLike, id_column: str | None = "id") -> Template:
    """A template from a YAML path, or by the name of a shipped one (``phantom``, ``aiib23``).

    ``id_column`` is the table's id column, which no field may render.
    """
    p = Path(name_or_path)
    path: Path | None = None
    if p.is_file():
        path = p
    elif p.suffix in ("", ".yaml", ".yml") and p.parent == Path("."):
        try:
            cand = templates_dir() / (p.name if p.suffix else f"{p.name}.yaml")
        except ConfigError:
            cand = None
        if cand is not None and cand.is_file():
            path = cand
    if path is None:
        raise ConfigError(
            f"template {name_or_path} is neither a file nor a shipped template; give a YAML path "
            f"or one of: {', '.join(shipped_templates()) or '(none shipped)'}."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"template file {path} is not valid YAML{where}; fix its syntax."
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"template file {path} cannot be read ({err.__class__.__name__}); check it is a UTF-8 text file."
        ) from None
    if data is None:
        raise ConfigError(f"template file {path} is empty; it needs at least a 'fields' list.")
    return Template.from_dict(
        data, source=f"template file {path}", name=path.stem, id_column=id_column
    )


def _sentence(err: ValidationError, source: str, data: Any) -> str:
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
