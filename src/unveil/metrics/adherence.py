"""Condition adherence: does a generated CT carry the clinical value it was conditioned on?

A model that ignores its text still makes realistic CTs, so realism and fidelity cannot
tell whether the condition is used.  Adherence asks an independent reader: for every
attribute of the template, a small 3D CNN is trained on the **real training split**
(category and boolean fields -> a classifier, number and days fields -> a regressor) and
then applied

- to the real test scans: the reference, i.e. how readable the attribute is from a real
  CT at all (an attribute no classifier can read from real scans cannot be checked on
  generated ones either);
- to the generated test scans: does the generator's output carry the conditioned value?
  AUROC for categories (binary, or the macro mean of one-vs-rest AUROCs over the classes
  present), MAE in the attribute's unit for numbers;
- to counterfactual pairs (factual and edited prompt, same mask, same noise): does an edit
  move the reading the right way?  *Effectiveness* is the fraction of subjects whose
  reading moves towards the edit (the probability of the edited class rises; the
  predicted number moves in the direction of the change), and the mean change.

Every figure has a bootstrap interval over subjects.

What the CNN sees (:func:`adherence_input`): the volume on the model's preprocessed grid
(RAS, the configured spacing, the fixed HU window mapped to ``[0, 1]``), cropped to the
bounding box of the lungs and reduced by area averaging to ``size^3`` cells (default
32), as two channels: the lung fraction of each cell (shape) and the mean window-mapped
intensity of the lung voxels in the cell (0 where the cell holds no lung).  Intensity
outside the lungs is not shown: the study is about the lungs, and it keeps the reader from
using body size or bone as a shortcut.  The network (``AttributeNet`` in
:mod:`unveil.metrics.adherence_fit`, which also trains it) is three
stride-2 3D convolutions (8, 16, 32 channels) with global average pooling and a linear
head: small on purpose, since training splits of a few dozen subjects cannot support
more, and a global pooling reader is what an intensity shift needs.

The reader is imperfect and trained on real scans only, so a generated volume may be read
worse because it is out of the reader's domain; the real-scan reference and the mask-only
model (whose generated AUROC should sit at chance and whose effectiveness is exactly 0,
since its output does not depend on the text) are the comparisons that make the generated
figures interpretable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from unveil.metrics.adherence_fit import (  # noqa: F401  (names of this module before the split)
    AttributeModel,
    Kind,
    fit_attribute_model,
)
from unveil.metrics.intervals import (
    MIN_SUBJECTS,
    mean_ci,
    percentile_interval,
    resampled_statistics,
)
from unveil.text.edits import apply_edits

if TYPE_CHECKING:
    from unveil.text.edits import Edit
    from unveil.text.template import Template

#: A classifier needs at least two classes with this many training subjects each.
MIN_PER_CLASS = 2
#: A regressor needs at least this many training subjects with a value, not all equal.
MIN_REGRESSION = 3


def figure(
    value: float | None,
    ci_low: float | None = None,
    ci_high: float | None = None,
    n: int = 0,
    statistic: str = "mean",
    unit: str = "",
) -> dict[str, Any]:
    """One reported figure as it goes into ``summary.json`` (NaN written as ``None``)."""

    def clean(v: float | None) -> float | None:
        if v is None:
            return None
        v = float(v)
        return None if math.isnan(v) else v

    return {
        "value": clean(value),
        "ci_low": clean(ci_low),
        "ci_high": clean(ci_high),
        "n": int(n),
        "statistic": statistic,
        "unit": unit,
    }


# ----------------------------------------------------------------------------- input


def adherence_input(image01: np.ndarray, lung: np.ndarray, size: int = 32) -> np.ndarray:
    """The reader's view of one volume: ``(2, size, size, size)`` float32.

    Args:
        image01: ``(X, Y, Z)`` the CT with the fixed HU window mapped to ``[0, 1]`` (for a
            preprocessed network tensor ``x`` in ``[-1, 1]``: ``(x + 1) / 2``).
        lung: ``(X, Y, Z)``, non-zero = lung.
        size: cells per axis after reduction.

    Returns:
        Channel 0: the lung fraction of each cell; channel 1: the mean of ``image01`` over
        the lung voxels of the cell, 0 where there are none.  The volume is first cropped
        to the lungs' bounding box; with no lung at all both channels are 0.
    """
    # lazy torch (~1.6 s): analyze, report and compare import unveil.metrics but never use it
    import torch
    import torch.nn.functional as F

    img = np.clip(np.asarray(image01, dtype=np.float32), 0.0, 1.0)
    m = np.asarray(lung) != 0
    if img.ndim != 3 or m.shape != img.shape:
        raise ValueError(f"image01 and lung must be 3D of one shape, got {img.shape} and {m.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not m.any():
        return np.zeros((2, size, size, size), dtype=np.float32)
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(m))
    img, mf = img[box], m[box].astype(np.float32)
    t = torch.from_numpy(np.stack([mf, img * mf]))[None]
    # "area" is adaptive average pooling: an exact mean over each cell when reducing,
    # and plain repetition when a small crop must be enlarged.
    red = F.interpolate(t, size=(size, size, size), mode="area")[0]
    frac, total = red[0], red[1]
    mean = torch.where(frac > 1e-6, total / frac.clamp_min(1e-6), torch.zeros_like(total))
    return torch.stack([frac, mean]).numpy().astype(np.float32)


# ---------------------------------------------------------------------- attributes


def attribute_kind(template: Template, field_name: str) -> Kind:
    """Classifier for category and boolean fields, regressor for number and days fields."""
    return "regressor" if template.field(field_name).kind in ("number", "days") else "classifier"


def attribute_unit(template: Template, field_name: str) -> str:
    f = template.field(field_name)
    if f.kind == "days":
        return "days"
    if f.kind == "number":
        return (f.unit or "").strip()
    return ""


def trainable(
    template: Template, field_name: str, values: Sequence[Any]
) -> tuple[bool, str | None]:
    """Whether a reader can be trained from these training values (``None`` = missing).

    Returns ``(True, None)`` or ``(False, clause)``: the clause says why, without a final
    period, to be completed by the caller ("adherence of age was not measured: <clause>.").
    """
    have = [v for v in values if v is not None]
    if attribute_kind(template, field_name) == "classifier":
        counts: dict[Any, int] = {}
        for v in have:
            counts[v] = counts.get(v, 0) + 1
        usable = [c for c, k in counts.items() if k >= MIN_PER_CLASS]
        if len(usable) < 2:
            seen = ", ".join(f"{c}: {k}" for c, k in counts.items()) or "none"
            return False, (
                f"the {field_name} classifier needs at least two classes with {MIN_PER_CLASS} or "
                f"more training subjects each, and the training split has {seen}"
            )
        return True, None
    if len(have) < MIN_REGRESSION or len(set(have)) < 2:
        return False, (
            f"the {field_name} regressor needs at least {MIN_REGRESSION} training subjects with "
            f"differing values, and the training split has {len(have)} with {len(set(have))} "
            "distinct value(s)"
        )
    return True, None


def train_attribute_models(
    template: Template,
    fields: Sequence[str],
    train_rows: Sequence[Mapping[str, Any]],
    train_inputs: np.ndarray,
    *,
    seed: int = 0,
    **fit_kwargs: Any,
) -> tuple[dict[str, AttributeModel], dict[str, str]]:
    """One reader per field, trained on the real training subjects that have a value.

    A classifier keeps only the classes with at least :data:`MIN_PER_CLASS` training
    subjects (a class seen once cannot be learned; its subjects are left out of training).

    Args:
        template: the checkpoint's template (field kinds and values).
        fields: template field names.
        train_rows: the clinical rows of the training subjects (column -> raw value).
        train_inputs: ``(N, 2, S, S, S)`` :func:`adherence_input` of the same subjects.
        seed: each field gets its own stream ``[seed, field index]``.
        fit_kwargs: passed to :func:`fit_attribute_model` (``epochs``, ``lr``...).

    Returns:
        ``(models by field, reasons by field for those not trained)``.
    """
    models: dict[str, AttributeModel] = {}
    reasons: dict[str, str] = {}
    for k, name in enumerate(fields):
        values = [template.value(r, name) for r in train_rows]
        ok, why = trainable(template, name, values)
        if not ok:
            reasons[name] = str(why)
            continue
        kind = attribute_kind(template, name)
        if kind == "classifier":
            counts: dict[Any, int] = {}
            for v in values:
                if v is not None:
                    counts[v] = counts.get(v, 0) + 1
            classes = [
                c for c in _class_order(template, name, counts) if counts[c] >= MIN_PER_CLASS
            ]
            keep = [i for i, v in enumerate(values) if v in classes]
        else:
            classes = None
            keep = [i for i, v in enumerate(values) if v is not None]
        models[name] = fit_attribute_model(
            name,
            np.asarray(train_inputs)[keep],
            [values[i] for i in keep],
            kind,
            classes=classes,
            seed=int(np.random.SeedSequence([seed, k]).generate_state(1)[0]),
            unit=attribute_unit(template, name),
            **fit_kwargs,
        )
    return models, reasons


def _class_order(template: Template, name: str, counts: Mapping[Any, int]) -> list[Any]:
    """Classes in the template's vocabulary order (booleans False before True)."""
    if template.field(name).kind == "boolean":
        return [c for c in (False, True) if c in counts]
    vocab = [c for c in template.values_of(name) if c in counts]
    return vocab + [c for c in counts if c not in vocab]


# ------------------------------------------------------------------------- figures


def _auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half), ``None`` without
    both a positive and a negative."""
    # lazy scipy.stats (~1 s): report and compare import unveil.metrics but never use it
    from scipy.stats import rankdata

    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auroc(labels: Sequence[Any], probs: np.ndarray, classes: Sequence[Any]) -> float | None:
    """AUROC of a classifier's probabilities against the true labels.

    Two classes: the AUROC of the second class's probability.  More: the macro mean of the
    one-vs-rest AUROCs of the classes that have both positives and negatives among
    ``labels``.  ``None`` when no class has both (a single class in the set).
    """
    p = np.asarray(probs, dtype=np.float64)
    lab = list(labels)
    if p.ndim != 2 or p.shape != (len(lab), len(classes)):
        raise ValueError(f"probs must be (N, K) = ({len(lab)}, {len(classes)}), got {p.shape}")
    if len(classes) == 2:
        return _auc(np.array([v == classes[1] for v in lab]), p[:, 1])
    aucs = [_auc(np.array([v == c for v in lab]), p[:, k]) for k, c in enumerate(classes)]
    aucs = [a for a in aucs if a is not None]
    return float(np.mean(aucs)) if aucs else None


def auroc_ci(
    labels: Sequence[Any],
    probs: np.ndarray,
    classes: Sequence[Any],
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """:func:`auroc` with a bootstrap interval over subjects (resamples where it is
    undefined are skipped): ``(auroc, lo, hi)``, NaN where undefined.

    The resampling and percentile rule of :mod:`unveil.metrics.intervals`; fewer than
    :data:`~unveil.metrics.intervals.MIN_SUBJECTS` subjects, or fewer than two resamples
    where the AUROC is defined, give no interval.
    """
    lab = list(labels)
    p = np.asarray(probs, dtype=np.float64)
    point = auroc(lab, p, classes)
    if point is None:
        return (math.nan, math.nan, math.nan)
    n = len(lab)
    if n < MIN_SUBJECTS:
        return (point, math.nan, math.nan)
    vals = resampled_statistics(
        lambda idx: auroc([lab[i] for i in idx], p[idx], classes), (n,), rng, n_boot
    )
    if vals.size < 2:
        return (point, math.nan, math.nan)
    return (point, *percentile_interval(vals, level))


def reading_figures(
    model: AttributeModel,
    values: Sequence[Any],
    inputs: np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 1000,
) -> tuple[dict[str, Any], list[Any]]:
    """How well ``model`` reads the conditioned (or true) ``values`` from ``inputs``.

    Args:
        model: a trained reader.
        values: one value per volume (``None`` = missing: left out).
        inputs: ``(N, 2, S, S, S)``.
        rng: bootstrap generator.
        n_boot: bootstrap resamples.

    Returns:
        ``(figure, per-volume readings)``: the figure is AUROC (classifier) or MAE in the
        attribute's unit (regressor) as a :func:`figure` dict, ``value`` ``None`` when
        undefined (one class only, no value); the readings are the predicted class code or
        number per volume.
    """
    x = np.asarray(inputs, dtype=np.float32)
    pred = model.predict(x) if len(x) else np.zeros((0, max(len(model.classes), 1)))
    keep = [i for i, v in enumerate(values) if v is not None]
    if model.kind == "classifier":
        readings = [model.classes[int(np.argmax(row))] for row in pred]
        if not keep:
            return figure(None, statistic="AUROC"), readings
        lo_hi = auroc_ci([values[i] for i in keep], pred[keep], model.classes, rng, n_boot)
        return figure(*lo_hi, n=len(keep), statistic="AUROC"), readings
    readings = [float(v) for v in pred]
    err = [abs(float(pred[i]) - float(values[i])) for i in keep]
    if not err:
        return figure(None, statistic="mean", unit=model.unit), readings
    return figure(
        *mean_ci(err, rng, n_boot), n=len(err), statistic="mean", unit=model.unit
    ), readings


# -------------------------------------------------------------------------- edits


@dataclass(frozen=True)
class EditTarget:
    """What an edit asks of one subject.

    Attributes:
        target: the class code the edit sets (classifier), or the new value (regressor).
        direction: ``+1`` / ``-1``: the sign of ``new - old`` for numbers, ``+1`` for
            categories (the probability of ``target`` should rise).
        intended: ``new - old`` for numbers, ``None`` for categories.
    """

    target: Any
    direction: int
    intended: float | None


def edit_target(template: Template, edit: Edit, row: Mapping[str, Any]) -> EditTarget | None:
    """What ``edit`` asks of a subject with clinical ``row``, or ``None`` when it has no
    direction for this subject: the edit leaves the prompt unchanged (already at the
    target, or a shift of a missing number), removes the value (``unset``), or sets a
    number whose factual value is missing."""
    if edit.op == "unset":
        return None
    edited = apply_edits(row, [edit], template)
    if template.render(edited) == template.render(row):
        return None
    new = template.value(edited, edit.field)
    if attribute_kind(template, edit.field) == "classifier":
        return EditTarget(new, 1, None) if new is not None else None
    old = template.value(row, edit.field)
    if old is None or new is None or new == old:
        return None
    return EditTarget(float(new), 1 if new > old else -1, float(new) - float(old))


def effectiveness(
    model: AttributeModel,
    factual_inputs: np.ndarray,
    edited_inputs: np.ndarray,
    targets: Sequence[EditTarget],
    rng: np.random.Generator,
    n_boot: int = 1000,
) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    """Does an edit move the reader the right way?  One row per subject with a target.

    Per subject the *change towards the edit* is ``p_target(edited) - p_target(factual)``
    for a classifier (probability units) and ``direction * (pred(edited) -
    pred(factual))`` for a regressor (the attribute's unit): positive means the reading
    moved the way the edit asks.

    Args:
        model: the reader of the edited field.
        factual_inputs: ``(N, 2, S, S, S)`` of the factual generated volumes.
        edited_inputs: ``(N, 2, S, S, S)`` of the edited ones (same mask, same noise).
        targets: ``N`` :class:`EditTarget` from :func:`edit_target`.
        rng: bootstrap generator.
        n_boot: bootstrap resamples.

    Returns:
        ``(moved, change, per-subject changes)``: ``moved`` is the fraction of subjects
        with a positive change (a tie, as for a model that ignores the text, is not a
        move), ``change`` the mean change; both :func:`figure` dicts with intervals over
        subjects.
    """
    n = len(targets)
    if n == 0:
        return figure(None, statistic="fraction"), figure(None), []
    pf = model.predict(factual_inputs)
    pe = model.predict(edited_inputs)
    changes = []
    for i, t in enumerate(targets):
        if model.kind == "classifier":
            if t.target not in model.classes:
                changes.append(math.nan)
                continue
            k = model.classes.index(t.target)
            changes.append(float(pe[i, k] - pf[i, k]))
        else:
            changes.append(float(t.direction * (pe[i] - pf[i])))
    ch = np.asarray(changes, dtype=np.float64)
    ok = ~np.isnan(ch)
    moved = (ch[ok] > 0).astype(np.float64)
    unit = "probability" if model.kind == "classifier" else model.unit
    if not ok.any():
        return figure(None, statistic="fraction"), figure(None, unit=unit), changes
    return (
        figure(*mean_ci(moved, rng, n_boot), n=int(ok.sum()), statistic="fraction"),
        figure(*mean_ci(ch[ok], rng, n_boot), n=int(ok.sum()), statistic="mean", unit=unit),
        changes,
    )
