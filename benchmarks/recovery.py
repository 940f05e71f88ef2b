"""Calibration of recovered against planted effects, per generator family.

For every planted size ``s`` of ``--sizes`` (HU; default -15 -30 -60) a phantom cohort is
built with two planted effects: ``smoking=current`` shifts the upper lung zone by ``s`` and
``diagnosis=IPF`` shifts the lower lung periphery by ``-2 s`` (the other sign, another
place); nothing else is planted, and blood group is the null attribute.  For every family
of ``--families`` (the demo's configs: ``demo`` for gan, ``demo-diffusion`` for diffusion)
a model is trained on it, counterfactuals are generated on the held-out subjects
(``smoking: never -> current``, ``diagnosis: none -> IPF``, null edit ``blood_group=O``
with its permuted-label controls) and analysed with ``unveil analyze``'s statistics.

Printed per family and size: planted and recovered shift in each planted region with the
bootstrap CI over subjects, the spill (mean effect in the lung outside the planted region)
and the largest |effect| of the null controls.  Then per family the **calibration slope**
(recovered / planted: the mean over the planted cells, with a bootstrap CI over cells),
the largest spill fraction and the null maximum.  The last line is one summary row.

    python benchmarks/recovery.py --out recovery-bench            # CPU, about an hour
    python benchmarks/recovery.py --out rb --device cuda --steps 3000

Everything is written under ``--out`` (cohorts, runs, analyses); a re-run reuses what is
complete (a trained checkpoint, an analysed run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

FAMILY_CONFIGS = {"gan": "demo", "diffusion": "demo-diffusion"}
EDITS = {"smoking=current": ("smoking=never", "upper_lung", 1.0)}
EDITS["diagnosis=IPF"] = ("diagnosis=none", "lower_lung&lung_periphery", -2.0)
NULL_EDIT = "blood_group=O"


def planted_effects(size: float):
    from unveil.data.effects import EffectSpec

    return [
        EffectSpec(attribute="smoking", value="current", region="upper_lung", shift_hu=size),
        EffectSpec(
            attribute="diagnosis",
            value="IPF",
            region="lower_lung&lung_periphery",
            shift_hu=-2.0 * size,
        ),
    ]


def run_cell(root: Path, family: str, size: float, args) -> dict:
    """Cohort -> train -> counterfactual (both edits) -> analyze; returns results.json."""
    from unveil.analysis.analyze import analyze_run
    from unveil.config import load_config, resolve_config_path
    from unveil.data.phantom import make_phantom
    from unveil.infer.counterfactual import run_counterfactual
    from unveil.train.loop import train

    cohort = root / f"cohort_{size:+g}"
    if not (cohort / "effects.json").is_file():
        make_phantom(
            cohort, n=args.n, size=args.grid, seed=args.seed, effects=planted_effects(size)
        )
    run = root / f"{family}_{size:+g}"
    overrides = [f"train.device={args.device}", *args.set]
    cfg = load_config(resolve_config_path(FAMILY_CONFIGS[family]), overrides)
    ckpts = sorted((run / "train" / "checkpoints").glob("ckpt-*.pt"))
    steps = args.steps or cfg.train.steps
    if not any(p.name == f"ckpt-{steps:08d}.pt" for p in ckpts):
        train(cfg, cohort, run / "train", steps=args.steps, resume=bool(ckpts), progress=True)
    ckpt = sorted((run / "train" / "checkpoints").glob("ckpt-*.pt"))[-1]
    results_path = run / "recovery-results.json"
    if results_path.is_file():
        return json.loads(results_path.read_text())
    splits = json.loads((run / "train" / "splits.json").read_text())["splits"]
    held_out = [*splits.get("val", []), *splits.get("test", [])]
    out = {}
    # One counterfactual run per edit: each has its own baseline (never smoker; no disease).
    for edit, (baseline, _, _) in EDITS.items():
        cf = run / f"cf_{edit.split('=')[0]}"
        if not (cf / "counterfactual.json").is_file():
            run_counterfactual(
                ckpt,
                cohort,
                cf,
                edits=[edit],
                null_edits=[NULL_EDIT],
                baseline=[baseline],
                seeds=args.seeds,
                ids=held_out,
                device=args.device,
                overwrite=True,
            )
        out[edit] = analyze_run(cf, n_boot=1000, progress=False)
    results_path.write_text(json.dumps(out))
    return out


def cell_rows(family: str, size: float, results: dict) -> list[dict]:
    """Planted vs recovered per planted region, with spill and the null maximum."""
    rows = []
    for edit, (_, region, factor) in EDITS.items():
        res = results[edit]
        rec = {(r["contrast"], r["region"]): r for r in res.get("recovery", [])}
        stats = {(r["contrast"], r["region"]): r for r in res.get("cohort_stats", [])}
        spill = {r["contrast"]: r for r in res.get("specificity", [])}
        nulls = [abs(r["mean_diff_hu"]) for r in res.get("cohort_stats", []) if r["null_control"]]
        r = rec.get((edit, region)) or {}
        st = stats.get((edit, region)) or {}
        sp = spill.get(edit) or {}
        rows.append(
            {
                "family": family,
                "edit": edit,
                "region": region,
                "planted_hu": float(r.get("planted_hu", size * factor)),
                "recovered_hu": _num(r.get("recovered_hu")),
                "ci_low": _num(st.get("ci_low")),
                "ci_high": _num(st.get("ci_high")),
                "spill_hu": _num(sp.get("spill_hu")),
                "spill_fraction": _num(sp.get("spill_fraction")),
                "null_max_hu": max(nulls) if nulls else math.nan,
            }
        )
    return rows


def _num(v) -> float:
    return math.nan if v is None else float(v)


def summarize(rows: list[dict], rng: np.random.Generator) -> dict:
    """Calibration slope (mean of recovered / planted over cells) with a bootstrap CI."""
    ratios = np.array([r["recovered_hu"] / r["planted_hu"] for r in rows if r["planted_hu"] != 0.0])
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return {"slope": math.nan, "low": math.nan, "high": math.nan}
    boot = rng.choice(ratios, size=(2000, ratios.size), replace=True).mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "slope": float(ratios.mean()),
        "low": float(lo),
        "high": float(hi),
        "spill_max": float(np.nanmax([abs(r["spill_fraction"]) for r in rows] or [math.nan])),
        "null_max_hu": float(np.nanmax([r["null_max_hu"] for r in rows] or [math.nan])),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--families", nargs="+", default=["gan", "diffusion"])
    p.add_argument("--sizes", nargs="+", type=float, default=[-15.0, -30.0, -60.0])
    p.add_argument("--n", type=int, default=160, help="phantom subjects per cohort")
    p.add_argument("--grid", type=int, default=24, help="phantom size (voxels per side)")
    p.add_argument("--seed", type=int, default=1, help="phantom seed (not the demo's 0)")
    p.add_argument("--steps", type=int, default=None, help="training steps (config default)")
    p.add_argument("--seeds", type=int, default=2, help="noise seeds per subject")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    args = p.parse_args(argv)
    bad = [f for f in args.families if f not in FAMILY_CONFIGS]
    if bad or any(s == 0 for s in args.sizes):
        print(f"unknown family {bad} or a zero size; use {list(FAMILY_CONFIGS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    all_rows: list[dict] = []
    t0 = time.perf_counter()
    for family in args.families:
        for size in args.sizes:
            all_rows += cell_rows(family, size, run_cell(args.out, family, size, args))
    head = f"{'family':<10} {'edit':<16} {'region':<26} {'planted':>8} {'recovered [95% CI]':>26} {'spill':>7} {'null max':>8}"
    print(head)
    for r in all_rows:
        ci = f"{r['recovered_hu']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"
        print(
            f"{r['family']:<10} {r['edit']:<16} {r['region']:<26} {r['planted_hu']:>+8.1f} "
            f"{ci:>26} {r['spill_hu']:>+7.1f} {r['null_max_hu']:>8.2f}"
        )
    print(f"\n{'family':<10} {'slope [95% CI]':>24} {'max spill fraction':>19} {'null max HU':>12}")
    summary = []
    for family in args.families:
        s = summarize([r for r in all_rows if r["family"] == family], rng)
        summary.append(f"{family} slope {s['slope']:.2f} [{s['low']:.2f}, {s['high']:.2f}]")
        print(
            f"{family:<10} {s['slope']:>7.2f} [{s['low']:.2f}, {s['high']:.2f}]{'':>6} "
            f"{s['spill_max']:>19.2f} {s['null_max_hu']:>12.2f}"
        )
    (args.out / "recovery.json").write_text(json.dumps(all_rows, indent=1))
    print(f"({time.perf_counter() - t0:.0f} s)")
    print("summary: " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
