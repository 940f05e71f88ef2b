"""Condition dropout for training, driven by an injected ``numpy.random.Generator``.

* Field dropout leaves a field out of the sentence exactly as if its value were missing,
  so the model learns to read prompts with any subset of fields.
* Prompt dropout drops the whole prompt: the caller must then use the network's learned
  null condition (classifier-free guidance).  The text returned is then ``""``.

Probabilities 0 and 1 are exact: a draw ``u`` in [0, 1) drops when ``u < p``, so ``p=0``
never drops and ``p=1`` always does.  Every call consumes the same number of draws
(one for the prompt, then one per template field), so the random stream does not depend on
the outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from unveil.errors import ConfigError
from unveil.text.template import Template

FieldP = float | Mapping[str, float]


def _check_p(p: float, what: str) -> float:
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a probability between 0 and 1, not {p!r}.") from None
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{what} must be a probability between 0 and 1, not {p}.")
    return p


def field_probabilities(template: Template, field_p: FieldP) -> dict[str, float]:
    """Per-field dropout probabilities: one number for all fields, or a mapping field -> p
    (fields not named get 0)."""
    if isinstance(field_p, Mapping):
        for name in field_p:
            template.field(name)  # unknown names are an error
        return {
            n: _check_p(field_p.get(n, 0.0), f"field dropout of {n}") for n in template.field_names
        }
    p = _check_p(field_p, "field dropout")
    return dict.fromkeys(template.field_names, p)


def draw_dropout(
    template: Template, field_p: FieldP, prompt_p: float, rng: np.random.Generator
) -> tuple[set[str], bool]:
    """One draw: the set of fields to drop, and whether to drop the whole prompt."""
    probs = field_probabilities(template, field_p)
    prompt_p = _check_p(prompt_p, "prompt dropout")
    u = rng.random(1 + len(template.field_names))
    is_null = bool(u[0] < prompt_p)
    dropped = {n for n, ui in zip(template.field_names, u[1:], strict=True) if ui < probs[n]}
    return dropped, is_null


def render_with_dropout(
    template: Template,
    row: Mapping[str, Any],
    field_p: FieldP,
    prompt_p: float,
    rng: np.random.Generator,
) -> tuple[str, bool]:
    """The prompt of ``row`` after dropout, and True when the whole prompt is dropped (then
    the text is ``""`` and the caller uses the learned null condition)."""
    dropped, is_null = draw_dropout(template, field_p, prompt_p, rng)
    text = template.render(row, drop=dropped)  # rendered even when null: bad rows always fail
    return ("", True) if is_null else (text, False)
