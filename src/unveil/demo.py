"""The end-to-end demo on built-in data, in minutes on a CPU.

phantom cohort (planted effects) -> prompts -> train a small conditional GAN (or, with
``model="diffusion"``, a small diffusion model) -> counterfactuals on held-out subjects
(from a never-smoker baseline: smoking -> current, diagnosis -> IPF, age + 10 years; the
null attribute blood group with its permuted-label controls) -> analyze -> HTML report ->
verdict.  Defaults: 160 subjects at 24^3.  The phantom plants -60 HU in the upper lung zone
for current vs never smokers, +120 HU in the lower periphery for IPF, +1 HU per year of age
over the lungs and nothing for blood group, so the demo doubles as the positive / negative
control of the whole pipeline.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unveil.analysis.analyze import analyze_run
from unveil.analysis.report import verdict_lines, write_report
from unveil.config import Config, load_config, resolve_config_path
from unveil.csvsafe import prompts_csv_text
from unveil.data.phantom import check_phantom_args, make_phantom
from unveil.data.splits import split_counts
from unveil.data.table import find_table, read_clinical_table
from unveil.errors import UnveilError
from unveil.fs import write_text
from unveil.infer.counterfactual import run_counterfactual
from unveil.text.template import load_template
from unveil.train.loop import train

log = logging.getLogger(__name__)

#: The edits: smoking (-60 HU upper zone), IPF (+120 HU lower periphery against no
#: disease) and ten years of age (+10 HU over the lungs), all from a never-smoker baseline.
DEMO_EDITS = ("smoking=current", "diagnosis=IPF", "age+=10")
DEMO_BASELINE = "smoking=never"
DEMO_NULL_EDIT = "blood_group=O"
#: The config of each generator family's demo.
DEMO_CONFIGS = {"gan": "demo", "diffusion": "demo-diffusion"}


@dataclass
class DemoResult:
    out: Path
    report: Path
    results: dict[str, Any]
    verdict: list[str]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        rec = (self.results.get("verdict") or {}).get("recovery") or {}
        return bool(rec.get("passed"))


@dataclass
class _Clock:
    """The seconds each stage took, in the order the stages ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Announce the stage on stdout and record its duration once it has finished."""
        self.seconds[name] = time.perf_counter()
        print(f"[demo] {name} ...", flush=True)
        yield
        self.seconds[name] = round(time.perf_counter() - self.seconds[name], 1)


def run_demo(
    out: str | Path = "unveil-demo",
    n: int = 160,
    size: int = 24,
    steps: int | None = None,
    seeds: int = 2,
    config: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    model: str = "gan",
) -> DemoResult:
    """Run the whole pipeline into ``out`` and return the verdict.

    ``model`` picks the generator family (``gan``, the default, or ``diffusion``); its
    config is ``demo`` / ``demo-diffusion`` unless ``config`` names another.
    """
    if model not in DEMO_CONFIGS:
        raise UnveilError(f"--model must be one of {', '.join(DEMO_CONFIGS)}, not '{model}'.")
    config = DEMO_CONFIGS[model] if config is None else config
    cfg = _check_demo_args(config, n, size, steps, seeds)
    out = Path(out)
    _clear_out(out, overwrite)
    clock = _Clock()

    cohort = out / "cohort"
    with clock.stage("phantom"):
        make_phantom(cohort, n=n, size=size, seed=0, progress=progress)
    with clock.stage("prompts"):
        _write_prompts(cfg, cohort, out / "prompts.csv")
    with clock.stage("train"):
        run_dir = out / "run"
        ckpt = train(cfg, cohort, run_dir, steps=steps, progress=progress)
    with clock.stage("counterfactual"):
        cf = out / "counterfactual"
        _counterfactuals(ckpt, cohort, run_dir, cf, seeds, progress)
    with clock.stage("analyze"):
        # No HU margin: the null controls calibrate the test (docs/statistics.md).
        results = analyze_run(cf, n_boot=1000, progress=progress)
    with clock.stage("report"):
        report = write_report(cf)
    return DemoResult(out, report, results, verdict_lines(results), clock.seconds)


def _clear_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``, which removes it."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UnveilError(
            f"{out} already exists and is not empty; pass --overwrite or choose another --out."
        )
    if out.exists() and overwrite:
        shutil.rmtree(out)


def _write_prompts(cfg: Config, cohort: Path, path: Path) -> None:
    """Write every subject's prompt to ``path`` and print the first as an example."""
    template = load_template(cfg.text.template)
    table = read_clinical_table(find_table(cohort), cfg.data.id_column)
    rows = table.drop(columns=[cfg.data.id_column]).to_dict("records")
    ids = [str(i) for i in table[cfg.data.id_column]]
    write_text(path, prompts_csv_text(ids, [template.render(r) for r in rows]))
    print(f"[demo] e.g. {template.render(rows[0])}")


def _counterfactuals(
    ckpt: Path, cohort: Path, run_dir: Path, cf: Path, seeds: int, progress: bool
) -> None:
    """The demo's edits and null edit on the held-out (validation and test) subjects."""
    splits = json.loads((run_dir / "splits.json").read_text())["splits"]
    held_out = [*splits.get("val", []), *splits.get("test", [])]
    run_counterfactual(
        ckpt,
        cohort,
        cf,
        edits=list(DEMO_EDITS),
        null_edits=[DEMO_NULL_EDIT],
        baseline=[DEMO_BASELINE],
        seeds=seeds,
        ids=held_out,
        progress=progress,
    )


def _check_demo_args(config: str, n: int, size: int, steps: int | None, seeds: int) -> Config:
    """Validate every argument before anything is built; returns the loaded config.

    The demo takes minutes: a value that can only fail at the end (too few held-out
    subjects, zero seeds) is refused here, in one sentence, before the phantom is written.
    """
    check_phantom_args(n, size)
    if steps is not None and steps < 1:
        raise UnveilError(f"--steps {steps} is not a number of training steps; give 1 or more.")
    if seeds < 1:
        raise UnveilError(f"--seeds {seeds} is not usable; give at least 1 noise seed per subject.")
    cfg = load_config(resolve_config_path(config))
    counts = split_counts(n, cfg.split.fractions)
    if sum(counts[1:]) < 6:
        raise UnveilError(
            f"--n {n} leaves {sum(counts[1:])} held-out subjects; the demo needs at least 6, "
            "raise --n (the default is 160)."
        )
    return cfg
