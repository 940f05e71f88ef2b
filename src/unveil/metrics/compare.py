"""``unveil compare EVAL1 EVAL2 ...``: one table across model variants, like the ablation.

Each ``EVAL`` folder is the output of ``unveil evaluate`` (``info.json`` and
``summary.json``).  Rows are the model variants named from ``info.json`` (family +
fusion: "GAN mask-only", "diffusion cross-attention"...), ordered as in the published
ablation: GAN before diffusion, and within a family mask-only first (the reference), then
concat, affine, cross-attention, affine+cross-attention; variants of the same kind keep
the order given on the command line, and two runs of one variant are told apart by their
folder name.

Columns are the key figures with their 95% intervals over subjects, where at least one run
has them: MAE in the lung (HU), SSIM, PSNR (median), MS-SSIM, FID / KID (2D and 3D, only
when a feature network was named), Wasserstein distance in the lung (HU), texture distance
in the lung (in SDs of the real subjects), lung Dice of ``unveil lungmask`` on the
generated CT, every adherence figure (AUROC / MAE per attribute) and every effectiveness
figure (fraction of subjects moved the right way per edit).  Ratio columns
``<figure> / mask-only`` divide error-type figures by the mask-only run of the same family
(absent without one): below 1 means the condition helps.  When an ``EVAL`` folder holds a
``recovery.csv`` (from ``unveil analyze`` of a counterfactual run on a planted cohort,
copied there), planted-vs-recovered columns are added: mean absolute error (HU) and the
fractions with the right sign and within 30% over the planted (edit, region) rows, and the
largest absolute shift recovered for a null-control edit.

Outputs in ``DIR``: ``comparison.md``, ``comparison.csv`` (value, ci_low, ci_high per
figure) and ``comparison.png`` (one panel per figure, points with interval bars), all
written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unveil.csvsafe import neutralise_cell, restore_cell
from unveil.errors import UnveilError
from unveil.fs import write_bytes, write_text
from unveil.metrics.eval_render import FAMILY_NAMES, FUSION_NAMES, csv_cell, fmt
from unveil.records.evaluation import EvaluationInfo, EvaluationSummary, read_evaluation

#: Fixed key figures: (summary key, column title, lower is better?).
KEY_FIGURES: tuple[tuple[str, str, bool], ...] = (
    ("mae_hu_lung", "MAE lung (HU)", True),
    ("ssim", "SSIM", False),
    ("psnr", "PSNR (dB, median)", False),
    ("ms_ssim", "MS-SSIM", False),
    ("fid_2d", "FID 2D", True),
    ("kid_2d", "KID 2D", True),
    ("fid_3d", "FID 3D", True),
    ("kid_3d", "KID 3D", True),
    ("wasserstein_lung", "Wasserstein lung (HU)", True),
    ("texture_z_lung", "texture distance lung (SD)", True),
    ("dice_lung", "lung Dice", False),
)
#: Figures with a ``/ mask-only`` ratio column (errors and distances, positive scale).
RATIO_FIGURES: tuple[str, ...] = ("mae_hu_lung", "wasserstein_lung", "fid_2d", "fid_3d")
#: Planted-vs-recovered columns read from ``recovery.csv``.
RECOVERY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("recovery_mean_abs_error_hu", "recovery |error| (HU)"),
    ("recovery_sign_ok", "recovery sign ok"),
    ("recovery_within_30pct", "recovery within 30%"),
    ("recovery_null_max_abs_hu", "null control max |shift| (HU)"),
)
_FAMILY_ORDER = list(FAMILY_NAMES)
_FUSION_ORDER = list(FUSION_NAMES)


@dataclass
class EvalRun:
    """One evaluation folder, read back through :mod:`unveil.records.evaluation`.

    Attributes:
        path: the folder.
        label: the row name (the variant name, with the folder name when two runs share it).
        summary: ``summary.json`` (``inf`` read back as a float).
        info: ``info.json``.
        recovery: planted-vs-recovered figures from ``recovery.csv`` (empty without one).
    """

    path: Path
    label: str
    summary: EvaluationSummary
    info: EvaluationInfo
    recovery: dict[str, float | None] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.info.family

    @property
    def fusion(self) -> str:
        return self.info.fusion


def load_eval(path: str | Path) -> EvalRun:
    """Read an ``unveil evaluate`` folder; one-sentence :class:`~unveil.errors.DataError`
    when it is not one (a file or a field missing, an unknown field)."""
    p = Path(path)
    record = read_evaluation(p)
    recovery = _read_recovery(p / "recovery.csv")
    return EvalRun(p, record.info.variant, record.summary, record.info, recovery)


def _read_recovery(path: Path) -> dict[str, float | None]:
    """Aggregate ``recovery.csv`` rows (columns of ``unveil analyze``)."""
    if not path.is_file():
        return {}
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        # unveil analyze quotes formula-like text cells (unveil.csvsafe); undo it.
        rows = [{restore_cell(k): restore_cell(v) for k, v in r.items()} for r in rows]
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise UnveilError(
            f"{path} cannot be read as CSV ({type(err).__name__}); copy it again from the analysis."
        ) from None
    need = {"planted_hu", "recovered_hu", "error_hu", "sign_ok", "within_30pct", "null_control"}
    if rows and not need <= set(rows[0]):
        raise UnveilError(
            f"{path} lacks the columns {', '.join(sorted(need - set(rows[0])))}; copy the "
            "recovery.csv written by unveil analyze."
        )

    def num(v: str) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    def flag(v: str) -> bool:
        return str(v).strip().lower() in ("true", "1", "yes")

    planted = [
        r
        for r in rows
        if not flag(r["null_control"])
        and num(r["planted_hu"]) not in (0.0,)
        and math.isfinite(num(r["planted_hu"]))
    ]
    nulls = [r for r in rows if flag(r["null_control"])]

    def mean(vals: Sequence[float]) -> float | None:
        vals = [v for v in vals if math.isfinite(v)]
        return sum(vals) / len(vals) if vals else None

    nul = [abs(num(r["recovered_hu"])) for r in nulls if math.isfinite(num(r["recovered_hu"]))]
    return {
        "recovery_mean_abs_error_hu": mean([abs(num(r["error_hu"])) for r in planted]),
        "recovery_sign_ok": mean([float(flag(r["sign_ok"])) for r in planted]),
        "recovery_within_30pct": mean([float(flag(r["within_30pct"])) for r in planted]),
        "recovery_null_max_abs_hu": max(nul) if nul else None,
    }


def order_runs(runs: Sequence[EvalRun]) -> list[EvalRun]:
    """The ablation order (see the module text); stable for equal kinds."""

    def key(r: EvalRun) -> tuple[int, int]:
        fam = _FAMILY_ORDER.index(r.family) if r.family in _FAMILY_ORDER else len(_FAMILY_ORDER)
        fus = _FUSION_ORDER.index(r.fusion) if r.fusion in _FUSION_ORDER else len(_FUSION_ORDER)
        return fam, fus

    ordered = sorted(runs, key=key)
    counts: dict[str, int] = {}
    for r in ordered:
        counts[r.label] = counts.get(r.label, 0) + 1
    for r in ordered:
        if counts[r.label] > 1:
            r.label = f"{r.label} ({r.path.name})"
    return ordered


def figure_columns(runs: Sequence[EvalRun]) -> list[tuple[str, str, bool | None]]:
    """``(key, title, lower is better)`` of every figure at least one run has a value for:
    the fixed key figures, then every adherence and effectiveness figure."""
    cols: list[tuple[str, str, bool | None]] = []
    for key, title, lower in KEY_FIGURES:
        if any(r.summary.figure(key) is not None for r in runs):
            cols.append((key, title, lower))
    dynamic: list[str] = []
    for r in runs:
        for k, v in r.summary.figures():
            if (
                k.startswith(("adherence_", "effectiveness_"))
                and v is not None
                and k not in dynamic
                and not k.endswith("_intended")
            ):
                dynamic.append(k)
    for k in dynamic:
        lower = "_mae_" in k
        cols.append((k, _dynamic_title(k), lower))
    return cols


def _dynamic_title(key: str) -> str:
    if key.startswith("effectiveness_"):
        rest = key.removeprefix("effectiveness_")
        if rest.endswith("_change"):
            return f"{rest.removesuffix('_change')}: mean change"
        return f"{rest}: moved right way"
    rest = key.removeprefix("adherence_")
    for metric in ("auroc", "mae"):
        for side in ("real", "generated"):
            tail = f"_{metric}_{side}"
            if rest.endswith(tail):
                return f"{rest.removesuffix(tail)} {metric.upper()} ({side})"
    return rest


def _value(run: EvalRun, key: str) -> tuple[float | None, float | None, float | None]:
    f = run.summary.figure(key)
    if f is None:
        return None, None, None
    return f.value, f.ci_low, f.ci_high


def _reference(run: EvalRun, runs: Sequence[EvalRun]) -> EvalRun | None:
    """The first mask-only run of the same family."""
    return next((r for r in runs if r.family == run.family and r.fusion == "none"), None)


def _ratio(v: float | None, ref: float | None) -> float | None:
    if v is None or ref is None or not math.isfinite(v) or not math.isfinite(ref) or ref == 0:
        return None
    return v / ref


def compare_table(runs: Sequence[EvalRun]) -> tuple[list[str], list[dict[str, Any]]]:
    """The comparison as CSV-like rows: ``(columns, rows)``.

    Columns: ``model``, ``family``, ``fusion``, ``eval``, ``split``, ``n_subjects``, then
    per figure ``<key>``, ``<key>_ci_low``, ``<key>_ci_high``, then the ratio columns
    ``<key>_vs_mask_only`` and the recovery columns.
    """
    figs = figure_columns(runs)
    ratios = [k for k in RATIO_FIGURES if any(k == f[0] for f in figs)]
    with_recovery = any(r.recovery for r in runs)
    columns = ["model", "family", "fusion", "eval", "split", "n_subjects"]
    for key, _, _ in figs:
        columns += [key, f"{key}_ci_low", f"{key}_ci_high"]
    columns += [f"{k}_vs_mask_only" for k in ratios]
    if with_recovery:
        columns += [k for k, _ in RECOVERY_COLUMNS]
    rows = []
    for r in runs:
        row: dict[str, Any] = {
            "model": r.label,
            "family": r.family,
            "fusion": r.fusion,
            "eval": str(r.path),
            "split": r.info.split,
            "n_subjects": r.info.n_subjects,
        }
        for key, _, _ in figs:
            row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"] = _value(r, key)
        ref = _reference(r, runs)
        for k in ratios:
            row[f"{k}_vs_mask_only"] = _ratio(_value(r, k)[0], _value(ref, k)[0]) if ref else None
        if with_recovery:
            for k, _ in RECOVERY_COLUMNS:
                row[k] = r.recovery.get(k)
        rows.append(row)
    return columns, rows


def compare_markdown(
    runs: Sequence[EvalRun], columns: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> str:
    """``comparison.md``: one row per model, ``value [lo, hi]`` cells."""
    figs = figure_columns(runs)
    ratios = [c for c in columns if c.endswith("_vs_mask_only")]
    rec = [k for k, _ in RECOVERY_COLUMNS if k in columns]
    titles = ["model", "n"]
    for _, title, lower in figs:
        arrow = "" if lower is None else (" ↓" if lower else " ↑")
        titles.append(f"{title}{arrow}")
    names = {k: t for k, t, _ in KEY_FIGURES}
    titles += [f"{names[c.removesuffix('_vs_mask_only')]} / mask-only" for c in ratios]
    titles += [t for k, t in RECOVERY_COLUMNS if k in rec]
    lines = [
        "# Model comparison",
        "",
        "Figures are the statistic over test subjects with its 95% bootstrap interval; ↓ lower "
        "is better, ↑ higher is better.  Ratios divide by the mask-only model of the same family.",
        "",
        "| " + " | ".join(titles) + " |",
        "|" + "---|" * len(titles),
    ]
    for row in rows:
        cells = [str(row["model"]), str(row["n_subjects"] if row["n_subjects"] is not None else "")]
        for key, _, _ in figs:
            v, lo, hi = row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"]
            cell = fmt(v)
            if v is not None and lo is not None and hi is not None:
                cell += f" [{fmt(lo)}, {fmt(hi)}]"
            cells.append(cell)
        cells += ["" if row[c] is None else f"{row[c]:.3g}" for c in ratios]
        cells += [fmt(row[k]) for k in rec]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    splits = {(r.info.split, tuple(r.info.subjects)) for r in runs}
    if len(splits) > 1:
        lines += [
            "Note: the runs were evaluated on different subjects; set-level figures (FID, KID) "
            "and texture distances are comparable only on the same subjects.",
            "",
        ]
    lines += ["Evaluation folders:", ""]
    lines += [f"- {r.label}: `{r.path}`" for r in runs]
    lines.append("")
    return "\n".join(lines)


def compare_csv(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """``comparison.csv``; text cells a spreadsheet would run as formulas (a variant name
    ``=x`` from info.json) are written ``'=x`` (:mod:`unveil.csvsafe`), numbers as they are."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([neutralise_cell(c) for c in columns])
    for row in rows:
        w.writerow([csv_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def compare_plot(runs: Sequence[EvalRun], rows: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG: one panel per figure, one point per model with its interval as an error bar,
    coloured by family.  Matplotlib's Agg canvas is used directly (no pyplot state)."""
    figs = figure_columns(runs)
    n = max(len(figs), 1)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    width = max(3.2 * ncols, 0.5 * len(rows) * ncols)
    fig = Figure(figsize=(width, 2.9 * nrows + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    colours = {"gan": "tab:blue", "diffusion": "tab:orange", "rflow": "tab:green"}
    labels = [str(r["model"]) for r in rows]
    for i, (key, title, lower) in enumerate(figs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for j, row in enumerate(rows):
            v, lo, hi = row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"]
            if v is None or not math.isfinite(v):
                continue
            err = None
            if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                err = [[max(v - lo, 0.0)], [max(hi - v, 0.0)]]
            ax.errorbar(
                [j],
                [v],
                yerr=err,
                fmt="o",
                capsize=3,
                color=colours.get(str(row["family"]), "tab:gray"),
            )
        arrow = "" if lower is None else (" (lower better)" if lower else " (higher better)")
        ax.set_title(f"{title}{arrow}", fontsize=8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Model comparison (95% intervals over subjects)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def compare(evals: Sequence[str | Path], out: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Read the evaluation folders and write ``comparison.md|csv|png`` into ``out``.

    Returns ``(columns, rows)`` of the table in row order.  Raises :class:`UnveilError`
    when no folder is given or one is not an evaluation folder (nothing written then);
    :class:`~unveil.errors.DataError` names the file and the field of an evaluation
    folder that does not match :mod:`unveil.records.evaluation`.
    """
    if not evals:
        raise UnveilError("give at least one evaluation folder written by unveil evaluate.")
    runs = order_runs([load_eval(p) for p in evals])
    columns, rows = compare_table(runs)
    md = compare_markdown(runs, columns, rows)
    table = compare_csv(columns, rows)
    png = compare_plot(runs, rows)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UnveilError(f"--out {out} is a file; give a folder for the comparison.")
    write_text(out / "comparison.md", md)
    write_text(out / "comparison.csv", table)
    write_bytes(out / "comparison.png", png)
    return columns, rows
