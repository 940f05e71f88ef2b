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

See ``configs/templates/phantom.yaml`` for a commented example.  The YAML schema and the
value codes live in :mod:`unveil.text.template_spec` (importable from here too).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from unveil.config import configs_dir
from unveil.errors import ConfigError, DataError
from unveil.text.template_spec import (  # noqa: F401  (names of this module before the split)
    BUILTIN_MISSING,
    MISSING,
    FieldSpec,
    Kind,
    TemplateSpec,
    as_bool,
    format_days,
    format_number,
    looks_like_identifier,
    normalize_code,
    show_value,
    validation_sentence,
)

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
                    table[as_bool(normalize_code(key))] = (key, word.strip())
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
            raise ConfigError(validation_sentence(err, source, data)) from None
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
            key = as_bool(key)
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
            lookup = as_bool(key) if f.kind == "boolean" else key
            hit = self._vocab[f.name].get(lookup)
            if hit is not None:
                return hit[0] if f.kind == "category" else lookup
            if key in self._missing[f.name]:
                return None
            valid = ", ".join(show_value(k) for k, _ in self._vocab[f.name].values())
            if f.kind == "boolean" and not f.vocab:
                valid = "true/false, yes/no or 1/0"
            raise DataError(
                f"column '{f.column}' holds {show_value(raw)}, which field {f.name} of template "
                f"{self.name} neither has in its vocab ({valid}) nor lists as missing; add it to "
                f"the field's vocab or to its missing codes."
            )
        if key in self._missing[f.name]:
            return None
        if isinstance(key, (str, bool)):
            raise DataError(
                f"column '{f.column}' holds {show_value(raw)}, which is not a number for {f.kind} field "
                f"{f.name} of template {self.name}; fix the value or add it to the field's missing codes."
            )
        if not math.isfinite(key):
            raise DataError(
                f"column '{f.column}' holds {show_value(raw)}, which is not a finite number for field "
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
