"""The demo end to end (slow: about 8 minutes on a 2-core CPU; CI runs it).

Asserted: every stage runs, the analysis covers every region for the edits and the null
controls (the null edit and its permuted-label controls), the planted ground truth is read
back exactly, the report is self-contained, and the controls hold with the statistics of
docs/statistics.md: the planted smoking effect (-60 HU, upper lung zone) is recovered with
its sign, in its zone and within 25% of its size, with the airway (nothing planted)
within 5 HU; IPF (lower periphery) and ten years of age (whole lung) come out with their
sign, place and at least half their size; the null attribute (blood group) is significant
nowhere.  Training is deterministic on CPU, so this is the same run every time on the
same software and thread count (measured: smoking -55.0 HU, IPF +71.1 of +90, age +6.8 of
+10, null at most 3.9 HU and significant nowhere).  With one thread, as a test that left
torch at one thread once made it (tests/conftest.py now restores the count), it came out
at -51.0, +81.8, +6.6 and 4.5 HU, so the bounds leave room for the thread count; what the
demo does not yet meet (the spill into the middle and lower zones, the age slope) is in
docs/recovery.md.
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
    assert recovery[("age+=10", "lung")]["planted_hu"] == pytest.approx(10.0)
    ipf_planted = recovery[("diagnosis=IPF", "lower_lung&lung_periphery")]["planted_hu"]
    assert 60.0 < ipf_planted <= 120.0
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
    contrasts = {
        "smoking=current",
        "diagnosis=IPF",
        "age+=10",
        "blood_group=O",
        "permuted-1:blood_group",
        "permuted-2:blood_group",
    }
    assert all((c, r) in rows for c in contrasts for r in regions)
    verdict = results["verdict"]
    assert {v["contrast"] for v in verdict["edits"]} == contrasts

    # Smoking: sign, zone and size (within 25%); nothing in the airway.
    up = rows[("smoking=current", "upper_lung")]
    assert up["significant"] and -75.0 <= up["mean_diff_hu"] <= -45.0, up
    zones = {
        z: rows[("smoking=current", z)]["mean_diff_hu"]
        for z in ("upper_lung", "middle_lung", "lower_lung")
    }
    assert min(zones, key=zones.get) == "upper_lung", zones
    assert abs(rows[("smoking=current", "airway")]["mean_diff_hu"]) < 5.0
    spec = {s["contrast"]: s for s in results["specificity"]}
    assert spec["smoking=current"]["peak_region"] == "upper_lung"
    # IPF and age: sign, place, at least half the planted size.
    ipf = rows[("diagnosis=IPF", "lower_lung&lung_periphery")]
    assert ipf["significant"] and ipf["mean_diff_hu"] >= 0.5 * ipf_planted, ipf
    assert ipf["mean_diff_hu"] > rows[("diagnosis=IPF", "upper_lung")]["mean_diff_hu"] + 30.0
    # Age over the subjects whose age the edit changes: the held-out subjects without an
    # age are left out (their effect is 0 by construction) and the run records them.
    age = rows[("age+=10", "lung")]
    assert age["significant"] and 7.5 <= age["mean_diff_hu"] <= 12.5, age
    record = json.loads((out / "counterfactual" / "counterfactual.json").read_text())
    left_out = record["unchanged"].get("age+=10", [])
    assert age["n_subjects"] == len(record["subjects"]) - len(left_out), age
    assert any(n.startswith("age+=10: ") for n in verdict["notes"]) == bool(left_out)
    # Negative controls: significant nowhere, the calibration fitted on them.
    assert verdict["null_control_passed"] is True
    assert not any(r["significant"] for r in results["cohort_stats"] if r["null_control"])
    assert results["calibration"]["available"] and results["calibration"]["n_controls"] == 3
    assert "positive control (planted effects):" in printed
    html = (out / "counterfactual" / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and "blood_group=O" in html
