"""Subjects whose prompt a contrast leaves unchanged are recorded and left out of its statistics."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from unveil.analysis.analyze import analyze_run
from unveil.analysis.compute.effects import leave_out_unchanged
from unveil.data.io import read_volume
from unveil.infer.counterfactual import run_counterfactual
from unveil.records import RunLayout, read_run_record


def test_leave_out_unchanged_blanks_only_the_named_subjects_of_the_named_contrast():
    ev = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)
    pl = ev + 100.0
    out_ev, out_pl, notes = leave_out_unchanged(
        ev, pl, ["age+=10", "smoking=current"], ["a", "b", "c"], {"age+=10": ["b", "zz"]}
    )
    assert np.isnan(out_ev[0, 1]).all() and np.isnan(out_pl[0, 1]).all()
    keep = np.ones_like(ev, dtype=bool)
    keep[0, 1] = False
    np.testing.assert_array_equal(out_ev[keep], ev[keep])
    np.testing.assert_array_equal(out_pl[keep], pl[keep])
    assert not np.isnan(ev).any()  # the inputs are not modified
    assert len(notes) == 1 and notes[0].startswith("age+=10: 1 of 3 subject(s) left out")
    same, _, none = leave_out_unchanged(ev, pl, ["age+=10", "smoking=current"], ["a", "b", "c"], {})
    np.testing.assert_array_equal(same, ev)
    assert none == []


def test_missing_age_and_existing_diagnosis_are_left_out(tiny_gan_run, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_gan_run.cohort, cohort)
    table = pd.read_csv(cohort / "clinical.csv", dtype=str, keep_default_na=False)
    ids = list(table["id"][:4])
    table.loc[table["id"].isin(ids), "age"] = "55.0"
    table.loc[table["id"] == ids[1], "age"] = ""  # a shift of a missing field: no change
    table.loc[table["id"].isin(ids[:2]), "diagnosis"] = "none"
    table.loc[table["id"] == ids[2], "diagnosis"] = "IPF"  # already has it: no change
    table.loc[table["id"] == ids[3], "diagnosis"] = "none"
    table.to_csv(cohort / "clinical.csv", index=False)

    out = run_counterfactual(
        tiny_gan_run.checkpoint,
        cohort,
        tmp_path / "cf",
        edits=["age+=10", "diagnosis=IPF"],
        baseline=["smoking=never"],
        seeds=1,
        ids=ids,
        progress=False,
    )
    record = read_run_record(out / "counterfactual.json")
    assert record.unchanged == {"age+=10": [ids[1]], "diagnosis=IPF": [ids[2]]}
    # The left-out subject's edited volume is its factual one (reused, not generated again).
    layout = RunLayout(out)
    fac = read_volume(layout.factual(ids[1], 0)).array
    np.testing.assert_array_equal(read_volume(layout.edited(ids[1], "age+=10", 0)).array, fac)
    other = read_volume(layout.edited(ids[0], "age+=10", 0)).array
    assert not np.array_equal(other, read_volume(layout.factual(ids[0], 0)).array)
    results = analyze_run(out, n_boot=200, progress=False)
    n = {(r["contrast"], r["region"]): r["n_subjects"] for r in results["cohort_stats"]}
    assert n[("age+=10", "lung")] == 3 and n[("diagnosis=IPF", "lung")] == 3
    notes = results["verdict"]["notes"] if "notes" in results["verdict"] else results["notes"]
    assert any(s.startswith("age+=10: 1 of 4 subject(s) left out") for s in notes)
