"""Does the text encoder see a field?  A check to run before training on a cohort.

A counterfactual edit can only move the image if it moves the text embedding.  The probe
builds pairs of prompts from real rows and compares their pooled embeddings:

* **same prompt**: a row rendered twice; the distance must be exactly 0 (a check of
  deterministic rendering and encoding);
* **same text, other rows**: two different rows that render to the same sentence, if any;
* **differ in FIELD**: one row rendered as it is and with FIELD set to another value, all
  else equal: what a counterfactual edit of FIELD does to the embedding;
* **different rows**: two random rows that render differently: the spread of the cohort.

The *separation ratio* is the mean distance of the FIELD pairs over the mean distance of
the different-row pairs: near 0 means the encoder barely registers the field (an edit of
it will hardly reach the image); near or above 1 means one field's change moves the
embedding as much as swapping the patient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Protocol

import numpy as np
import torch

from unveil.errors import ConfigError, DataError
from unveil.text.encoders import TextEncoder


class _Template(Protocol):
    fields: Sequence[Any]

    def render(self, row: Mapping[str, Any], drop: set[str] | None = None) -> str: ...

    def values_of(self, field: str) -> list[Any]: ...


@dataclass
class GroupStats:
    """Cosine similarity and Euclidean distance of the pooled embeddings of one pair group.

    Statistics are NaN when the group has no pair.
    """

    name: str
    n: int
    cos_mean: float
    cos_min: float
    cos_max: float
    dist_mean: float
    dist_min: float
    dist_max: float

    @classmethod
    def of(cls, name: str, a: torch.Tensor, b: torch.Tensor) -> GroupStats:
        """Stats of pairs ``(a[i], b[i])``; ``a``, ``b``: ``(N, E)``."""
        if a.shape[0] == 0:
            nan = math.nan
            return cls(name, 0, nan, nan, nan, nan, nan, nan)
        a, b = a.double(), b.double()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
        dist = torch.linalg.vector_norm(a - b, dim=1)
        return cls(
            name,
            int(a.shape[0]),
            float(cos.mean()),
            float(cos.min()),
            float(cos.max()),
            float(dist.mean()),
            float(dist.min()),
            float(dist.max()),
        )


@dataclass
class ProbeResult:
    """What :func:`probe_field` measured.

    Attributes:
        field: the probed field.
        encoder: the encoder's identity.
        same_prompt, same_text, differ_in_field, different_rows: the four pair groups.
        separation: ``differ_in_field.dist_mean / different_rows.dist_mean`` (NaN if undefined).
        unchanged_edits: sampled edits whose prompt did not change (the row already held the
            value, or two values share the same words); they are not in ``differ_in_field``.
    """

    field: str
    encoder: str
    same_prompt: GroupStats
    same_text: GroupStats
    differ_in_field: GroupStats
    different_rows: GroupStats
    separation: float
    unchanged_edits: int = 0
    groups: list[GroupStats] = dataclass_field(init=False)

    def __post_init__(self) -> None:
        self.groups = [self.same_prompt, self.same_text, self.differ_in_field, self.different_rows]

    def table(self) -> str:
        """The four groups and the separation ratio, as a table in plain text."""
        head = ("pairs", "cos mean", "cos min", "cos max", "dist mean", "dist min", "dist max")
        width = max(len(g.name) for g in self.groups)
        lines = [
            f"probe of field '{self.field}' with text encoder {self.encoder}",
            f"{'group':<{width}}  " + "  ".join(f"{h:>9}" for h in head),
        ]
        for g in self.groups:
            values = (g.cos_mean, g.cos_min, g.cos_max, g.dist_mean, g.dist_min, g.dist_max)
            cells = [f"{g.n:>9d}"] + [
                ("-" if math.isnan(v) else f"{v:.4f}").rjust(9) for v in values
            ]
            lines.append(f"{g.name:<{width}}  " + "  ".join(cells))
        sep = "-" if math.isnan(self.separation) else f"{self.separation:.3f}"
        lines.append(
            f"separation ratio (mean distance, {self.differ_in_field.name} / "
            f"{self.different_rows.name}): {sep}"
        )
        if self.unchanged_edits:
            lines.append(
                f"edits that left the prompt unchanged (not counted): {self.unchanged_edits}"
            )
        return "\n".join(lines)


def _field_spec(template: Any, name: str) -> Any:
    for f in template.fields:
        if f.name == name:
            return f
    names = ", ".join(f.name for f in template.fields)
    raise ConfigError(f"the template has no field '{name}' to probe; its fields are: {names}.")


def _alternatives(template: Any, spec: Any, rows: list[Mapping[str, Any]]) -> list[Any]:
    """Values to set FIELD to: the vocabulary of a category, else the values seen in rows."""
    try:
        values = list(template.values_of(spec.name))
    except (ConfigError, AttributeError, KeyError, ValueError):
        values = []
    if len(values) < 2:
        seen: dict[str, Any] = {}
        for row in rows:
            v = row.get(spec.column)
            if v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == "":
                continue
            seen.setdefault(str(v), v)
        values = list(seen.values())
    return values


def probe_field(
    template: _Template,
    rows: Sequence[Mapping[str, Any]] | Any,
    field: str,
    encoder: TextEncoder,
    n_pairs: int = 64,
    rng: np.random.Generator | None = None,
    batch_size: int = 64,
) -> ProbeResult:
    """Measure how much editing ``field`` moves the pooled embedding (see module docstring).

    Args:
        template: a clinical template (``render(row, drop=None)``, ``fields`` with ``.name``
            and ``.column``, ``values_of(field)``).
        rows: clinical rows (mappings column -> raw value, or a pandas DataFrame); at least 2.
        field: the template field to probe.
        encoder: the frozen text encoder.
        n_pairs: the most pairs per group.
        rng: the source of the random pairs (default: ``numpy.random.default_rng(0)``).
        batch_size: prompts per encoder call.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    if hasattr(rows, "to_dict") and not isinstance(rows, Mapping):
        rows = rows.to_dict("records")
    rows = [dict(r) for r in rows]
    if len(rows) < 2:
        raise DataError(f"the field probe needs at least 2 table rows, got {len(rows)}.")
    spec = _field_spec(template, field)
    values = _alternatives(template, spec, rows)
    if len(values) < 2:
        raise DataError(
            f"field '{field}' (column '{spec.column}') has fewer than 2 distinct values in the "
            "template vocabulary and the rows, so there is nothing to edit it to."
        )
    prompts = [template.render(r) for r in rows]

    # The pair groups draw from ``rng`` in this order.
    # same prompt: render again, so the check covers rendering as well as encoding.
    order = rng.permutation(len(rows))[:n_pairs]
    same_prompt = [(prompts[i], template.render(rows[i])) for i in order]
    same_text, n_texts = _same_text_pairs(prompts, n_pairs, rng)
    differ, unchanged = _field_edit_pairs(
        template, rows, prompts, spec.column, values, n_pairs, rng
    )
    different = _different_row_pairs(prompts, n_texts, n_pairs, rng)

    names = ["same prompt", "same text, other rows", f"differ in {field}", "different rows"]
    groups = [same_prompt, same_text, differ, different]
    stats = _group_stats(encoder, names, groups, batch_size)
    field_stats, rows_stats = stats[2], stats[3]
    separation = (
        field_stats.dist_mean / rows_stats.dist_mean
        if field_stats.n and rows_stats.n and rows_stats.dist_mean > 0
        else math.nan
    )
    return ProbeResult(
        field=field,
        encoder=encoder.identity,
        same_prompt=stats[0],
        same_text=stats[1],
        differ_in_field=stats[2],
        different_rows=stats[3],
        separation=separation,
        unchanged_edits=unchanged,
    )


def _same_text_pairs(
    prompts: list[str], n_pairs: int, rng: np.random.Generator
) -> tuple[list[tuple[str, str]], int]:
    """``(pairs of distinct rows that render to the same sentence, number of distinct sentences)``.

    At most ``n_pairs``, drawn at random when there are more.
    """
    by_text: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_text.setdefault(p, []).append(i)
    same_text = [(p, p) for p, idx in by_text.items() for _ in idx[1:]]
    if len(same_text) > n_pairs:
        same_text = [same_text[k] for k in rng.permutation(len(same_text))[:n_pairs]]
    return same_text, len(by_text)


def _field_edit_pairs(
    template: _Template,
    rows: list[dict[str, Any]],
    prompts: list[str],
    column: str,
    values: list[Any],
    n_pairs: int,
    rng: np.random.Generator,
) -> tuple[list[tuple[str, str]], int]:
    """``(pairs (prompt, prompt with column set to another value), edits that changed nothing)``.

    (row, value) combinations are sampled without replacement until ``n_pairs`` pairs differ.
    """
    differ: list[tuple[str, str]] = []
    unchanged = 0
    for k in rng.permutation(len(rows) * len(values)):
        if len(differ) >= n_pairs:
            break
        i, v = divmod(int(k), len(values))
        edited = dict(rows[i])
        edited[column] = values[v]
        text = template.render(edited)
        if text == prompts[i]:
            unchanged += 1
        else:
            differ.append((prompts[i], text))
    return differ, unchanged


def _different_row_pairs(
    prompts: list[str], n_texts: int, n_pairs: int, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """Up to ``n_pairs`` random pairs of rows whose sentences differ (none with one sentence)."""
    different: list[tuple[str, str]] = []
    if n_texts > 1:
        for _ in range(20 * n_pairs):
            if len(different) >= n_pairs:
                break
            i, j = rng.choice(len(prompts), size=2, replace=False)
            if prompts[i] != prompts[j]:
                different.append((prompts[i], prompts[j]))
    return different


def _group_stats(
    encoder: TextEncoder,
    names: list[str],
    groups: list[list[tuple[str, str]]],
    batch_size: int,
) -> list[GroupStats]:
    """Encode every prompt of every pair group in batches; the :class:`GroupStats` of each."""
    flat = [t for g in groups for pair in g for t in pair]
    pooled = []
    for start in range(0, len(flat), batch_size):
        pooled.append(encoder.encode(flat[start : start + batch_size]).pooled.detach().cpu())
    pooled_all = torch.cat(pooled) if pooled else torch.zeros(0, encoder.pooled_width)
    stats = []
    offset = 0
    for name, group in zip(names, groups, strict=True):
        block = pooled_all[offset : offset + 2 * len(group)]
        offset += 2 * len(group)
        stats.append(GroupStats.of(name, block[0::2], block[1::2]))
    return stats
