"""The demo end to end (slow: a few minutes on a 2-core CPU; CI runs it).

What is asserted is what the shipped demo delivers today: every stage runs, the analysis
covers every region for the edit and the null control, the planted ground truth is read
back exactly, and the report is self-contained.  Whether the planted smoking effect is
recovered, and whether the null control passes, is reported in the verdict but not
asserted: the small CPU model does not learn the clinical effects within the demo's time
budget (see the project's issues), and the negative control rightly flags that.
"""

from __future__ import annotations

import json

import pytest

from unveil.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reads_back_the_planted_truth(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "verdict:" in printed and "positive control" in printed
    results = json.loads((out / "counterfactual" / "analysis" / "results.json").read_text())
    rows = {(r["contrast"], r["region"]): r for r in results["cohort_stats"]}
    recovery = {(r["contrast"], r["region"]): r for r in results["recovery"]}
    # Ground truth read back: current vs never smoker is -60 HU in the upper zone only.
    assert recovery[("smoking=current", "upper_lung")]["planted_hu"] == pytest.approx(-60.0)
    assert recovery[("smoking=current", "lower_lung")]["planted_hu"] == pytest.approx(0.0)
    assert rows[("smoking=current", "upper_lung")]["n_subjects"] >= 6
    regions = {r for (_, r) in rows}
    assert {
        "upper_lung",
        "middle_lung",
        "lower_lung",
        "lung_core",
        "lung_periphery",
        "airway",
    } <= regions
    assert all((c, r) in rows for c in ("smoking=current", "blood_group=O") for r in regions)
    verdict = results["verdict"]
    assert {v["contrast"] for v in verdict["edits"]} == {"smoking=current", "blood_group=O"}
    assert verdict["null_control_passed"] in (True, False)
    html = (out / "counterfactual" / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "blood_group=O" in html
