"""Field and prompt dropout: exact edges, rates, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from unveil.errors import UnveilError
from unveil.text.dropout import draw_dropout, field_probabilities, render_with_dropout
from unveil.text.template import load_template

ROW = {
    "id": "P1",
    "age": "76",
    "sex": "F",
    "smoking": "never",
    "pack_years": "10",
    "diagnosis": "IPF",
    "blood_group": "A",
}


@pytest.fixture(scope="module")
def t():
    return load_template("phantom")


def test_p0_never_drops(t):
    rng = np.random.default_rng(0)
    full = t.render(ROW)
    for _ in range(2000):
        assert render_with_dropout(t, ROW, 0.0, 0.0, rng) == (full, False)


def test_p1_always_drops(t):
    rng = np.random.default_rng(1)
    for _ in range(2000):
        assert render_with_dropout(t, ROW, 0.0, 1.0, rng) == ("", True)
    for _ in range(2000):
        text, null = render_with_dropout(t, ROW, 1.0, 0.0, rng)
        assert (text, null) == ("Lung CT scan.", False)  # every field dropped, prompt kept


def test_field_dropout_equals_missing(t):
    rng = np.random.default_rng(2)
    text, null = render_with_dropout(t, ROW, {"smoking": 1.0, "age": 1.0}, 0.0, rng)
    assert not null
    assert text == t.render({**ROW, "smoking": "", "age": "NA"})


def test_rates_match_probabilities(t):
    rng = np.random.default_rng(3)
    n = 20000
    nulls = 0
    dropped_counts = dict.fromkeys(t.field_names, 0)
    for _ in range(n):
        dropped, null = draw_dropout(t, 0.3, 0.1, rng)
        nulls += null
        for name in dropped:
            dropped_counts[name] += 1
    # 5 standard deviations of a binomial proportion
    assert abs(nulls / n - 0.1) < 5 * np.sqrt(0.1 * 0.9 / n)
    for name, c in dropped_counts.items():
        assert abs(c / n - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n), name


def test_per_field_mapping(t):
    probs = field_probabilities(t, {"smoking": 0.5})
    assert probs["smoking"] == 0.5 and probs["age"] == 0.0
    with pytest.raises(UnveilError):
        field_probabilities(t, {"smokin": 0.5})


@pytest.mark.parametrize("bad", [-0.1, 1.5, "x", float("nan")])
def test_bad_probability_is_error(t, bad):
    rng = np.random.default_rng(0)
    with pytest.raises(UnveilError):
        render_with_dropout(t, ROW, bad, 0.0, rng)
    with pytest.raises(UnveilError):
        render_with_dropout(t, ROW, 0.0, bad, rng)


def test_deterministic_and_outcome_independent_stream(t):
    a = [render_with_dropout(t, ROW, 0.5, 0.2, np.random.default_rng(7)) for _ in range(1)]
    b = [render_with_dropout(t, ROW, 0.5, 0.2, np.random.default_rng(7)) for _ in range(1)]
    assert a == b
    # the number of draws does not depend on p: streams stay aligned across settings
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    render_with_dropout(t, ROW, 0.0, 0.0, r1)
    render_with_dropout(t, ROW, 1.0, 1.0, r2)
    assert r1.random() == r2.random()


def test_bad_row_fails_even_when_prompt_dropped(t):
    rng = np.random.default_rng(0)
    with pytest.raises(UnveilError):
        render_with_dropout(t, {**ROW, "smoking": "sometimes"}, 0.0, 1.0, rng)
