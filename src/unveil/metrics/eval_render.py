"""Rendering of ``unveil evaluate`` and ``unveil compare``: names, cells, CSV and Markdown.

Pure text from records: :func:`per_subject_csv` (``per_subject.csv``),
:func:`summary_markdown` (``summary.md``, from the typed records of
:mod:`unveil.records.evaluation`), :func:`fmt` and :func:`csv_cell` (shared with the
comparison), and the display names of model variants.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from unveil.csvsafe import neutralise_cell
from unveil.family_registry import family_display_name, family_names
from unveil.fusion_registry import DISPLAY_NAMES
from unveil.metrics.eval_summary import FIDELITY_KEYS
from unveil.records.evaluation import EvaluationInfo, EvaluationSummary, json_ready

#: Model families and fusion kinds in the order of the published ablation.  The fusion
#: kinds and their display names are the fusion registry's (a live view: a kind
#: registered later is named too).
FUSION_NAMES: Mapping[str, str] = DISPLAY_NAMES
#: Display names of the registered families (the family registry is the one source).
FAMILY_NAMES: dict[str, str] = {n: family_display_name(n) for n in family_names()}


def variant_name(family: str, fusion: str) -> str:
    """``"GAN mask-only"``, ``"diffusion cross-attention"``... from the config's names."""
    return f"{family_display_name(family)} {FUSION_NAMES.get(fusion, fusion)}"


def json_safe(obj: Any) -> Any:
    """A copy for strict JSON: NaN -> ``None``, ``±inf`` -> ``"inf"`` / ``"-inf"``."""
    return json_ready(obj)


def fmt(v: Any) -> str:
    """A figure for a table: ``n/a`` for missing, ``inf``, 4 significant digits."""
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    v = float(v)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def csv_cell(v: Any) -> str:
    """A CSV cell: numbers with 6 significant digits (``inf``/``-inf``, NaN empty) and
    text through :func:`unveil.csvsafe.neutralise_cell` (``=cmd`` -> ``'=cmd``), so no id
    or name runs as a spreadsheet formula; the raw ids stay in ``info.json``."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6g}"
    if isinstance(v, (int, np.integer)):
        return str(v)
    return neutralise_cell(str(v))


def per_subject_csv(
    rows: Sequence[Mapping[str, Any]], extras: Sequence[Mapping[str, Any]] | None = None
) -> str:
    """One row per subject (each row merged with its ``extras``); columns in first-seen
    order, the per-feature texture columns last; missing values empty."""
    merged = [dict(r) for r in rows]
    if extras is not None:
        merged = [r | dict(e) for r, e in zip(merged, extras, strict=True)]
    cols: list[str] = []
    for r in merged:
        cols.extend(k for k in r if k not in cols)
    late = [c for c in cols if c.startswith("texture_") and "/" in c]
    cols = [c for c in cols if c not in late] + late
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([neutralise_cell(c) for c in cols])
    for r in merged:
        w.writerow([csv_cell(r.get(c)) for c in cols])
    return buf.getvalue()


#: The tables of ``summary.md``: title, and which figure keys go in it (first match wins).
SECTIONS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("Fidelity against the real scan (paired)", lambda k: k in FIDELITY_KEYS),
    (
        "Realism without weights: HU histogram distance per region",
        lambda k: k.startswith("wasserstein_"),
    ),
    ("Realism without weights: texture distance per region", lambda k: k.startswith("texture_z_")),
    (
        "Mask consistency (unveil lungmask on the generated CT against the input mask)",
        lambda k: k.startswith(("dice_", "lungmask_")),
    ),
    ("Reference: unveil lungmask on the real CT", lambda k: k.startswith("ref_")),
    ("Realism with a feature network (FID, KID)", lambda k: k.startswith(("fid_", "kid_"))),
    (
        "Condition adherence (reader trained on real training scans)",
        lambda k: k.startswith("adherence_"),
    ),
    ("Counterfactual effectiveness", lambda k: k.startswith("effectiveness_")),
    ("Texture statistics, |generated - real| per feature", lambda k: k.startswith("texture_")),
)


def summary_markdown(summary: EvaluationSummary, info: EvaluationInfo) -> str:
    """``summary.md``: one table per group of figures, then every reason."""
    lines = [
        f"# Evaluation: {info.variant}",
        "",
        f"- checkpoint: `{info.checkpoint}` (step {info.step})",
        f"- cohort: `{info.cohort}`, split: {info.split or 'explicit ids'}, "
        f"{info.n_subjects} subjects, noise seed {info.seed}",
        f"- intervals: 95% bootstrap over subjects ({info.n_boot} resamples; FID/KID "
        f"{info.n_boot_set})",
        "",
    ]
    figures = dict(summary.figures())
    done: set[str] = set()
    for title, pick in SECTIONS:
        keys = [k for k in figures if k not in done and pick(k)]
        if not keys:
            continue
        done.update(keys)
        lines += [
            f"## {title}",
            "",
            "| figure | statistic | value | 95% CI | n | unit |",
            "|---|---|---|---|---|---|",
        ]
        for k in keys:
            f = figures[k]
            if f is None:
                lines.append(f"| {k} | | n/a | | 0 | |")
                continue
            ci = f"[{fmt(f.ci_low)}, {fmt(f.ci_high)}]" if f.ci_low is not None else ""
            lines.append(f"| {k} | {f.statistic} | {fmt(f.value)} | {ci} | {f.n} | {f.unit} |")
        lines.append("")
    # One bullet per distinct sentence (FID and KID of one kind share theirs).
    notes: dict[str, list[str]] = {}
    for k, v in summary.sentences():
        notes.setdefault(v, []).append(k.removesuffix("_reason").removesuffix("_note"))
    if notes:
        lines += ["## Not computed, and notes", ""]
        lines += [f"- **{', '.join(keys)}**: {text}" for text, keys in notes.items()]
        lines.append("")
    lines += [
        "FID and KID depend on the feature network and on the number of samples; compare them "
        "only between models evaluated on the same subjects with the same network file.",
        "",
    ]
    return "\n".join(lines)
