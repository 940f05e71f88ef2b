"""Planted effects: the spec format, drawing attributes, and adding exact HU shifts in regions.

A *spec* (YAML, used by ``unveil plant``; the phantom builds the same objects in code)::

    attributes:
      smoking: {values: [never, current], probs: [0.6, 0.4]}
      age: {range: [40, 80]}
      blood_group: {values: [A, B, AB, O]}
    effects:
      - {attribute: smoking, value: current, region: upper_lung, shift_hu: -60}
      - {attribute: age, per_unit: 1.0, reference: 60, region: lung}

An effect with ``value`` adds ``shift_hu`` HU inside ``region`` to every subject whose
attribute equals ``value``.  An effect with ``per_unit`` adds ``per_unit * (x - reference)``
HU, where ``x`` is the subject's numeric attribute; ``reference`` defaults to 0 and
``shift_hu`` is not used.  Effects add up.  Regions come from the vocabulary of
:mod:`unveil.data.regions` (or ``a&b`` intersections).  Attributes that no effect names are
the *null attributes*: by construction they change nothing in the image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from unveil.config import DataConfig
from unveil.data.regions import REGIONS_RULE, canonical_region, region_masks
from unveil.errors import ConfigError, UnveilError
from unveil.fs import write_json

#: A clinical value as YAML gives it.
Scalar = str | int | float | bool


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(
        v, bool | np.bool_
    )


def _as_float(v: Any) -> float | None:
    """``v`` as a number when it is one (or a numeric string), else None."""
    if v is None or isinstance(v, bool | np.bool_):
        return None
    if _is_number(v):
        return float(v)
    try:
        return float(str(v))
    except ValueError:
        return None


def is_missing(v: Any) -> bool:
    """True for None, NaN and the empty string (how a CSV cell is missing)."""
    if v is None:
        return True
    if isinstance(v, float | np.floating) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def same_value(a: Any, b: Any) -> bool:
    """Equality of two clinical values: numerically when both are numbers, else as text.

    So ``1``, ``1.0`` and ``"1.0"`` match, and ``"current"`` matches ``"current"``.
    """
    fa, fb = _as_float(a), _as_float(b)
    if fa is not None and fb is not None:
        return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-9)
    return str(a).strip() == str(b).strip()


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttributeSpec(_Spec):
    """How one attribute is drawn: ``values`` (+ optional ``probs``) or a uniform ``range``.

    ``decimals`` rounds draws from a range (the rounded value is the true one, used for the
    effects and written to truth.csv); ``missing`` is the fraction of subjects whose value is
    left empty in clinical.csv (the image still carries the effect of the true value).
    """

    values: list[Scalar] | None = None
    probs: list[float] | None = None
    range: tuple[float, float] | None = None
    decimals: int = Field(default=1, ge=0, le=6)
    missing: float = Field(default=0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one_kind(self) -> AttributeSpec:
        if (self.values is None) == (self.range is None):
            raise ValueError("give exactly one of 'values' (a list) or 'range' ([low, high])")
        if self.values is not None:
            if not self.values:
                raise ValueError("'values' is empty; list at least one value")
            if len({str(v) for v in self.values}) != len(self.values):
                raise ValueError("'values' lists the same value twice")
            if self.probs is not None:
                if len(self.probs) != len(self.values):
                    raise ValueError(
                        f"'probs' has {len(self.probs)} numbers for {len(self.values)} values; "
                        "give one probability per value"
                    )
                if any(p < 0 for p in self.probs) or abs(sum(self.probs) - 1.0) > 1e-6:
                    raise ValueError("'probs' must be non-negative and sum to 1")
        else:
            if self.probs is not None:
                raise ValueError("'probs' goes with 'values', not with 'range'")
            lo, hi = self.range  # type: ignore[misc]
            if not lo < hi:
                raise ValueError("'range' must be [low, high] with low < high")
        return self

    @property
    def numeric(self) -> bool:
        """True for a range, or for values that are all numbers."""
        return self.range is not None or all(_is_number(v) for v in self.values or ())

    def draw(self, rng: np.random.Generator) -> Any:
        """One value: ``values`` by ``probs`` (uniform if absent), or uniform in ``range``."""
        if self.values is not None:
            idx = int(rng.choice(len(self.values), p=self.probs))
            return self.values[idx]
        lo, hi = self.range  # type: ignore[misc]
        return round(float(rng.uniform(lo, hi)), self.decimals)


class EffectSpec(_Spec):
    """One planted effect (see the module docstring for the rule)."""

    attribute: str
    value: Scalar | None = None
    per_unit: float | None = Field(default=None, description="HU per unit of the attribute")
    reference: float | None = Field(
        default=None, description="attribute value where a per-unit effect is zero (default 0)"
    )
    region: str
    shift_hu: float | None = Field(default=None, description="HU added when attribute == value")

    @field_validator("region")
    @classmethod
    def _region_known(cls, v: str) -> str:
        try:
            return canonical_region(v)
        except ConfigError as err:
            raise ValueError(str(err).rstrip(".")) from None

    @model_validator(mode="after")
    def _one_kind(self) -> EffectSpec:
        if (self.value is None) == (self.per_unit is None):
            raise ValueError(
                f"effect on '{self.attribute}' must give exactly one of 'value' (with shift_hu) "
                "or 'per_unit' (HU per unit)"
            )
        if self.value is not None:
            if self.shift_hu is None:
                raise ValueError(
                    f"effect on '{self.attribute}' = {self.value!r} needs 'shift_hu' (HU added)"
                )
            if self.reference is not None:
                raise ValueError(
                    f"effect on '{self.attribute}' = {self.value!r} has a 'reference', which "
                    "only per_unit effects use; remove it"
                )
        else:
            if self.shift_hu is not None:
                raise ValueError(
                    f"per_unit effect on '{self.attribute}' also gives 'shift_hu'; a per-unit "
                    "effect adds per_unit * (value - reference) HU, so remove shift_hu"
                )
            if self.reference is None:
                self.reference = 0.0
        return self

    @property
    def kind(self) -> str:
        """``"value"`` or ``"per_unit"``."""
        return "value" if self.value is not None else "per_unit"

    def shift(self, x: Any) -> float | None:
        """HU this effect adds for a subject whose attribute is ``x`` (None: does not apply)."""
        if is_missing(x):
            return None
        if self.value is not None:
            return float(self.shift_hu) if same_value(x, self.value) else None  # type: ignore[arg-type]
        fx = _as_float(x)
        if fx is None:
            raise UnveilError(
                f"attribute '{self.attribute}' has the non-numeric value {x!r} but a per_unit "
                "effect needs a number; fix the value or the effect."
            )
        return float(self.per_unit) * (fx - float(self.reference or 0.0))  # type: ignore[arg-type]

    def describe(self) -> str:
        """One line such as ``smoking = current: -60 HU in upper_lung``."""
        if self.value is not None:
            return f"{self.attribute} = {self.value}: {self.shift_hu:+g} HU in {self.region}"
        return (
            f"{self.attribute}: {self.per_unit:+g} HU per unit above {self.reference:g} "
            f"in {self.region}"
        )

    def to_json(self) -> dict[str, Any]:
        """The ground-truth record written to effects.json."""
        return {
            "attribute": self.attribute,
            "kind": self.kind,
            "value": self.value,
            "per_unit": self.per_unit,
            "reference": self.reference,
            "region": self.region,
            "shift_hu": self.shift_hu,
            "description": self.describe(),
        }


class PlantSpec(_Spec):
    """A whole spec file: attributes to draw and effects to plant."""

    attributes: dict[str, AttributeSpec]
    effects: list[EffectSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _effects_refer_to_attributes(self) -> PlantSpec:
        if not self.attributes:
            raise ValueError("'attributes' is empty; define at least one attribute")
        if "id" in self.attributes:
            raise ValueError("'id' is the subject id column and cannot be an attribute")
        for e in self.effects:
            attr = self.attributes.get(e.attribute)
            if attr is None:
                raise ValueError(
                    f"effect names attribute '{e.attribute}', which is not under 'attributes' "
                    f"({', '.join(self.attributes)})"
                )
            if e.value is not None:
                if attr.values is None:
                    raise ValueError(
                        f"effect on '{e.attribute}' uses 'value' but the attribute is a range; "
                        "use per_unit for a range attribute"
                    )
                if not any(same_value(e.value, v) for v in attr.values):
                    raise ValueError(
                        f"effect value {e.value!r} is not among the values of '{e.attribute}' "
                        f"({', '.join(str(v) for v in attr.values)})"
                    )
            elif not attr.numeric:
                raise ValueError(
                    f"per_unit effect on '{e.attribute}' needs a numeric attribute, but its "
                    "values are not all numbers"
                )
        return self

    @property
    def null_attributes(self) -> list[str]:
        """Attributes that no effect names."""
        return null_attributes(self.attributes, self.effects)


def null_attributes(attributes: Iterable[str], effects: Sequence[EffectSpec]) -> list[str]:
    """The attributes (in the given order) that no effect names."""
    used = {e.attribute for e in effects}
    return [a for a in attributes if a not in used]


_SPEC_KEYS = {
    "PlantSpec": list(PlantSpec.model_fields),
    "AttributeSpec": list(AttributeSpec.model_fields),
    "EffectSpec": list(EffectSpec.model_fields),
}


def _spec_sentence(err: ValidationError, source: str) -> str:
    """The first validation error as one sentence naming the spec file and the key."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    where = ".".join(str(p) for p in loc) or "the top level"
    if e["type"] == "extra_forbidden":
        if len(loc) == 1:
            model = "PlantSpec"
        elif loc[0] == "attributes":
            model = "AttributeSpec"
        else:
            model = "EffectSpec"
        return (
            f"{source}: unknown key '{loc[-1]}' at {where}; valid keys there are "
            f"{', '.join(_SPEC_KEYS[model])}."
        )
    msg = str(e["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return f"{source}: {where} is invalid: {msg.rstrip('.')}."


def parse_spec(tree: Any, source: str = "spec") -> PlantSpec:
    """Validate a spec given as a dict; :class:`ConfigError` (one sentence) when it is wrong."""
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{source} must be a mapping with 'attributes' and 'effects', not a "
            f"{type(tree).__name__}."
        )
    try:
        return PlantSpec.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_spec_sentence(err, source)) from None


def load_spec(path: str | os.PathLike) -> PlantSpec:
    """Read and validate a YAML spec file (one-sentence :class:`ConfigError` on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"spec file {path} does not exist; check the path given to --spec.")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"spec file {path} is not valid YAML{at}; fix its syntax.") from None
    return parse_spec(tree, f"spec file {path}")


def draw_attributes(
    attributes: Mapping[str, AttributeSpec], rng: np.random.Generator
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Draw one subject: ``(true, observed)`` dicts; ``observed`` has None for hidden values.

    The draws happen in the order of ``attributes`` and always consume the same number of
    random numbers, so a subject is the same whatever the other settings.
    """
    true = {name: spec.draw(rng) for name, spec in attributes.items()}
    hide = {name: bool(rng.random() < spec.missing) for name, spec in attributes.items()}
    observed = {name: (None if hide[name] else v) for name, v in true.items()}
    return true, observed


def effect_shift(
    effects: Sequence[EffectSpec], attributes: Mapping[str, Any]
) -> list[tuple[str, float]]:
    """The ``(region, hu)`` shifts that apply to a subject with these (true) attributes.

    Effects whose attribute is absent or missing, or whose value does not match, do not
    apply; per-unit effects always apply (possibly with 0 HU).
    """
    out: list[tuple[str, float]] = []
    for e in effects:
        hu = e.shift(attributes.get(e.attribute))
        if hu is not None:
            out.append((e.region, hu))
    return out


def apply_effects(
    image: np.ndarray,
    label_map: np.ndarray,
    affine: np.ndarray,
    effects: Sequence[EffectSpec],
    attributes: Mapping[str, Any],
    data_cfg: DataConfig | None = None,
) -> np.ndarray:
    """Add every applicable effect's HU shift exactly inside its region.

    Args:
        image: HU, shape ``(X, Y, Z)``.
        label_map: integer labels on the same grid, ``(X, Y, Z)``.
        affine: ``(4, 4)`` voxel -> RAS+ mm (regions use world superior-inferior and mm).
        effects: the effects to plant.
        attributes: the subject's true attribute values.
        data_cfg: label meaning (default :class:`DataConfig`).

    Returns:
        A new float32 array ``(X, Y, Z)``: ``image`` plus the shifts (lung regions contain
        only lung voxels, so nothing outside the lungs changes for a lung region).
    """
    if image.shape != label_map.shape:
        raise ValueError(f"image {image.shape} and label map {label_map.shape} differ in shape")
    shifts = effect_shift(effects, attributes)
    out = np.asarray(image, dtype=np.float64).copy()
    if shifts:
        masks = region_masks(label_map, affine, data_cfg, names=sorted({r for r, _ in shifts}))
        for region, hu in shifts:
            out[masks[region]] += hu
    return out.astype(np.float32)


def effects_record(
    effects: Sequence[EffectSpec],
    attributes: Iterable[str],
    negative_control: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The effects.json content: effects, the region rule, null attributes, then ``extra``."""
    attrs = list(attributes)
    record: dict[str, Any] = {
        "effects": [e.to_json() for e in effects],
        "regions_rule": REGIONS_RULE,
        "effect_rule": (
            "value effect: shift_hu is added inside region when the subject's true attribute "
            "equals value; per_unit effect: per_unit * (attribute - reference) HU is added "
            "inside region; effects add up; applied after noise, so the image difference "
            "between two attribute settings is exactly the sum of shifts"
        ),
        "attributes": attrs,
        "null_attributes": null_attributes(attrs, effects),
    }
    if negative_control is not None:
        record["negative_control"] = negative_control
    record.update(extra)
    return record


def write_effects_json(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Atomically write an :func:`effects_record` to ``path``."""
    return write_json(path, dict(record))
