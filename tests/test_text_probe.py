"""Field probe: pairs that differ in one field, in nothing, in everything."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from unveil.errors import ConfigError
from unveil.text.encoders import FeaturesEncoder
from unveil.text.probe import probe_field


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@dataclass
class Field:
    name: str
    column: str
    kind: str
    vocab: dict = field(default_factory=dict)
    range: tuple | None = None


class MiniTemplate:
    """A stand-in with the template API the probe relies on (render, fields, values_of)."""

    fields = [
        Field("age", "age", "number", range=(0, 120)),
        Field("sex", "sex", "category", {"F": "Female", "M": "Male"}),
        Field(
            "smoking", "smoking", "category", {"never": "Never smoker", "current": "Current smoker"}
        ),
        Field("blood_group", "blood", "category", {"A": "Blood group A", "O": "Blood group O"}),
    ]

    def render(self, row, drop=None):
        parts = []
        for f in self.fields:
            value = row.get(f.column)
            if f.name in (drop or set()) or value is None:
                continue
            parts.append(f"Age {value:.0f}" if f.kind == "number" else f.vocab[value])
        return "Lung CT scan: " + ". ".join(parts) + "."

    def values_of(self, name):
        f = next(f for f in self.fields if f.name == name)
        if f.kind != "category":
            raise ConfigError(f"field {name} is a number")
        return list(f.vocab)


def make_rows(n: int = 16) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = [
        {
            "id": f"S{i}",
            "age": float(rng.integers(40, 85)),
            "sex": str(rng.choice(["F", "M"])),
            "smoking": str(rng.choice(["never", "current"])),
            "blood": str(rng.choice(["A", "O"])),
        }
        for i in range(n)
    ]
    rows.append(dict(rows[0], id="twin"))  # renders exactly like row 0
    rows[3]["smoking"] = None  # a missing value: editing it adds the clause
    return rows


def test_probe_groups_on_features_encoder():
    result = probe_field(
        MiniTemplate(),
        make_rows(),
        "smoking",
        FeaturesEncoder(),
        n_pairs=12,
        rng=np.random.default_rng(0),
    )
    assert result.same_prompt.n == 12
    assert result.same_prompt.dist_max == 0.0 and result.same_prompt.cos_min == pytest.approx(1.0)
    assert result.same_text.n == 1 and result.same_text.dist_max == 0.0
    assert result.differ_in_field.n == 12 and result.different_rows.n == 12
    # every row holds one of the two values, so half of the sampled edits change nothing
    assert result.unchanged_edits > 0
    assert result.differ_in_field.dist_min > 0
    assert result.differ_in_field.dist_mean < result.different_rows.dist_mean
    assert result.differ_in_field.cos_mean > result.different_rows.cos_mean
    assert 0 < result.separation < 1
    assert result.separation == pytest.approx(
        result.differ_in_field.dist_mean / result.different_rows.dist_mean
    )
    table = result.table()
    for name in ("same prompt", "same text, other rows", "differ in smoking", "different rows"):
        assert name in table
    assert f"{result.separation:.3f}" in table and "features:v1" in table


def test_probe_numeric_field_and_determinism():
    rows = make_rows()
    encoder = FeaturesEncoder()
    a = probe_field(MiniTemplate(), rows, "age", encoder, n_pairs=8, rng=np.random.default_rng(5))
    b = probe_field(MiniTemplate(), rows, "age", encoder, n_pairs=8, rng=np.random.default_rng(5))
    assert a.table() == b.table()
    assert a.differ_in_field.n == 8 and a.differ_in_field.dist_min > 0
    # a number change moves the embedding far less than a different patient
    assert a.separation < 0.5


def test_probe_refusals_and_empty_groups():
    template = MiniTemplate()
    with pytest.raises(ConfigError, match="no field 'weight'"):
        probe_field(template, make_rows(), "weight", FeaturesEncoder())
    # two identical rows: no different-row pairs, so no separation
    rows = [make_rows()[0], dict(make_rows()[0], id="x")]
    result = probe_field(template, rows, "sex", FeaturesEncoder(), n_pairs=4)
    assert result.different_rows.n == 0 and math.isnan(result.separation)
    assert "different rows): -" in result.table()


def test_probe_with_shipped_template():
    from unveil.text.template import load_template

    template = load_template("phantom")  # shipped with the package: must load
    rows = [
        {
            "id": "a",
            "age": 70,
            "sex": "F",
            "smoking": "never",
            "pack_years": 0,
            "diagnosis": "IPF",
            "blood_group": "A",
        },
        {
            "id": "b",
            "age": 55,
            "sex": "M",
            "smoking": "current",
            "pack_years": 40,
            "diagnosis": "none",
            "blood_group": "O",
        },
        {
            "id": "c",
            "age": 62,
            "sex": "M",
            "smoking": "former",
            "pack_years": 20,
            "diagnosis": "CTD-ILD",
            "blood_group": "B",
        },
    ]
    result = probe_field(template, rows, "smoking", FeaturesEncoder(), n_pairs=6)
    assert result.same_prompt.dist_max == 0.0
    assert result.differ_in_field.n == 6 and result.unchanged_edits == 3
    assert result.differ_in_field.dist_mean < result.different_rows.dist_mean
