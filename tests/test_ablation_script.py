"""``scripts/ablation.sh`` end to end on a tiny phantom (slow: about a minute; CI runs it).

Two variants, two training steps: what is checked is the chain the docs rely on (train,
counterfactual + analysis, evaluate, compare), its resumption and its refusals, not the
figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unveil.data.phantom import make_phantom

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablation.sh"
OVERRIDES = ["train.steps=2", "preprocess.patch_size=[16,16,16]", "train.batch_size=2"]


def _run(cohort: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    # The `unveil` entry point of the interpreter running the tests.
    full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full.get('PATH', '')}"
    full.setdefault("OMP_NUM_THREADS", "1")
    full.update(env)
    return subprocess.run(
        ["bash", str(SCRIPT), str(cohort), str(out), *OVERRIDES],
        env=full,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_ablation_script_runs_resumes_and_refuses(tmp_path):
    cohort = tmp_path / "cohort"
    make_phantom(cohort, n=24, size=16, seed=0)
    out = tmp_path / "out"
    env = {"VARIANTS": "gan-maskonly gan-concat", "SEEDS": "1", "AMP": "bf16"}
    first = _run(cohort, out, **env)
    assert first.returncode == 0, first.stderr[-3000:]
    table = (out / "comparison" / "comparison.md").read_text()
    assert "GAN mask-only" in table and "GAN concat" in table
    for v in ("gan-maskonly", "gan-concat"):
        assert (out / v / "eval" / "recovery.csv").is_file()
        assert json.loads((out / v / "eval" / "info.json").read_text())["amp"] == "bf16"
        assert json.loads((out / v / "cf" / "counterfactual.json").read_text())["amp"] == "bf16"
    ckpt = out / "gan-concat" / "run" / "checkpoints" / "ckpt-00000002.pt"
    cf = out / "gan-concat" / "cf" / "counterfactual.json"
    stamps = (ckpt.stat().st_mtime_ns, cf.stat().st_mtime_ns)

    # Re-running resumes: finished stages are skipped, nothing is retrained or regenerated.
    again = _run(cohort, out, **env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (ckpt.stat().st_mtime_ns, cf.stat().st_mtime_ns) == stamps

    bad = _run(cohort, tmp_path / "bad", VARIANTS="gan-bogus")
    assert bad.returncode == 2 and "variants are named like gan-concat" in bad.stderr
    no_effects = _run(tmp_path, tmp_path / "bad2")
    assert no_effects.returncode == 2 and "has no effects.json" in no_effects.stderr
