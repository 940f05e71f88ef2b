"""The HTML report, its figures and ``unveil report``, on a tiny fake analysed run."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from unveil.analysis import charts, figures
from unveil.analysis.analyze import COHORT_COLUMNS
from unveil.analysis.report import (
    edit_field,
    fmt_hu,
    load_results,
    verdict_lines,
    write_report,
)
from unveil.cli import main
from unveil.data.io import Volume, write_volume
from unveil.errors import UnveilError
from unveil.records import RunLayout, as_results

SHAPE = (16, 16, 16)
# LPS-like storage (x and y flipped) with anisotropic voxels: the report must reorient.
AFFINE = np.array([[-1.5, 0, 0, 10.0], [0, -1.5, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1.0]])
EDIT = "smoking=current"
NULL = "blood_group=O"
PERM = "permuted-1:blood_group"

# The report reads what `unveil analyze` writes: the same column order.
COHORT_HEADER = list(COHORT_COLUMNS)


def _label_map() -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.int16)
    lab[2:7, 3:13, 2:14] = 1  # low i = larger RAS x (affine flips x): the right lung
    lab[9:14, 3:13, 2:14] = 2
    lab[7:9, 6:9, 8:15] = 3
    return lab


def _stat(contrast, region, mean, lo, hi, q, sig, null=False, n=2, qc=None, kind=""):
    return {
        "contrast": contrast,
        "region": region,
        "n_subjects": n,
        "mean_diff_hu": mean,
        "ci_low": lo,
        "ci_high": hi,
        "sd_hu": 2.0,
        "se_hu": 2.0 / n**0.5,
        "effect_size_dz": mean / 2.0,
        "statistic": 0.0,
        "p_value": q / 2,
        "q_value": q,
        "p_calibrated": None if qc is None else qc / 2,
        "q_calibrated": qc,
        "significant": sig,
        "test": "wilcoxon signed-rank",
        "null_control": null,
        "control_kind": kind or ("null_edit" if null else ""),
        "floor_mean_hu": 0.1,
        "floor_sd_hu": 2.0,
        "seed_sd_hu": 1.5,
        "mde_hu": 3.96,
        "n_seeds": 2,
    }


def _results(edit: str = EDIT, null: str = NULL, checkpoint: str = "runs/ckpt/last.pt") -> dict:
    cohort_stats = [
        _stat(edit, "upper_lung", -58.0, -64.0, -52.0, 0.0004, True, qc=0.0008),
        _stat(edit, "lung", -19.6, -22.0, -17.0, 0.002, True, qc=0.004),
        _stat(edit, "airway", 0.3, -1.0, 1.5, 0.6, False, qc=0.7),
        _stat(null, "upper_lung", 0.4, -1.2, 2.0, 0.8, False, null=True, qc=0.9),
        _stat(null, "lung", -0.2, -1.0, 0.7, 0.9, False, null=True, qc=0.9),
        _stat(PERM, "upper_lung", 0.6, -0.5, 1.7, 0.7, False, null=True, kind="permuted"),
        _stat(PERM, "lung", 0.1, -0.4, 0.6, 0.9, False, null=True, kind="permuted"),
    ]
    recovery = [
        {
            "contrast": edit,
            "region": "upper_lung",
            "planted_hu": -60.0,
            "recovered_hu": -58.0,
            "ci_low": -64.0,
            "ci_high": -52.0,
            "error_hu": 2.0,
            "relative_error": -0.0333,
            "sign_ok": True,
            "within_30pct": True,
        },
        {
            "contrast": edit,
            "region": "lung",
            "planted_hu": -20.0,
            "recovered_hu": -19.6,
            "ci_low": -22.0,
            "ci_high": -17.0,
            "error_hu": 0.4,
            "relative_error": -0.02,
            "sign_ok": True,
            "within_30pct": True,
        },
        {
            "contrast": null,
            "region": "lung",
            "planted_hu": 0.0,
            "recovered_hu": -0.2,
            "ci_low": -1.0,
            "ci_high": 0.7,
            "error_hu": -0.2,
            "relative_error": None,
            "sign_ok": True,
            "within_30pct": True,
        },
    ]
    observed = [
        {
            "attribute": edit.split("=")[0],
            "group_a": "current",
            "group_b": "never",
            "region": "upper_lung",
            "n_a": 1,
            "n_b": 1,
            "mean_hu_a": -870.0,
            "mean_hu_b": -815.0,
            "diff_hu": -55.0,
            "ci_low": -70.0,
            "ci_high": -40.0,
            "contrast": edit,
            "method": "difference of group means, bootstrap over subjects",
        },
    ]
    adjusted = [
        {
            "contrast": edit,
            "attribute": "smoking",
            "region": region,
            "term_a": "smoking[current]",
            "term_b": "smoking[never] (reference)",
            "scale": 1.0,
            "n_subjects": 40,
            "n_parameters": 6,
            "diff_hu": diff,
            "se_hu": 3.0,
            "ci_low": diff - 6.0,
            "ci_high": diff + 6.0,
            "p_value": 0.001,
            "method": "OLS on 5 attribute(s) of the clinical table, HC3 covariance",
        }
        for region, diff in (("upper_lung", -61.0), ("lung", -20.5))
    ]
    noise_floor = [
        {
            "region": region,
            "n_subjects": 2,
            "n_seeds": 2,
            "floor_mean_hu": 0.1,
            "floor_sd_hu": 2.0,
            "seed_sd_hu": 1.5,
            "mde_hu": 3.96,
        }
        for region in ("lung", "upper_lung", "airway")
    ]
    specificity = [
        {
            "contrast": edit,
            "null_control": False,
            "peak_region": "upper_lung",
            "peak_hu": -58.0,
            "peak_ci_low": -64.0,
            "peak_ci_high": -52.0,
            "spill_hu": -1.2,
            "spill_ci_low": -2.0,
            "spill_ci_high": -0.4,
            "spill_fraction": 0.0207,
            "airway_hu": 0.3,
            "airway_ci_low": -1.0,
            "airway_ci_high": 1.5,
            "n_subjects": 2,
        }
    ]
    run = {
        "checkpoint": checkpoint,
        "cohort": "cohort",
        "family": "diffusion",
        "edits": [edit],
        "null_edits": [null],
        "permuted_controls": [PERM],
        "noise": "per-subject",
        "seeds": [0, 1],
        "floor_seed_offset": 1000,
        "subjects": ["sub-000", "sub-001"],
        "from_scan": False,
        "hu_window": [-1000, 500],
    }
    verdict = {
        "alpha": 0.05,
        "test": "wilcoxon",
        "null_control_passed": True,
        "recovery": {
            "checked": [
                {
                    "contrast": edit,
                    "region": "upper_lung",
                    "planted_hu": -60.0,
                    "recovered_hu": -58.0,
                    "ok": True,
                },
            ],
            "passed": True,
        },
        "specificity": [
            f"{edit}: largest in upper_lung -58.0 HU [-64.0, -52.0]; rest of the lung -1.2 HU "
            "[-2.0, -0.4] (spill 2% of the peak); airway +0.3 HU [-1.0, +1.5]"
        ],
        "notes": ["with 2 subject(s) the two-sided signed-rank test cannot reach p < 0.05."],
    }
    calibration = {
        "available": True,
        "mu_hu": 0.25,
        "tau_hu": 0.1,
        "n_rows": 4,
        "n_controls": 2,
        "controls": [null, PERM],
    }
    return {
        "run": run,
        "settings": {"n_boot": 2000, "test": "wilcoxon", "bootstrap": "BCa over subjects"},
        "cohort_stats": cohort_stats,
        "noise_floor": noise_floor,
        "calibration": calibration,
        "specificity": specificity,
        "observed": observed,
        "adjusted": adjusted,
        "recovery": recovery,
        "verdict": verdict,
        "alpha": 0.05,
    }


def _write_csv(path, rows, header):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def make_run(
    root,
    edit: str = EDIT,
    null: str = NULL,
    checkpoint: str = "runs/ckpt/last.pt",
    json_tables: bool = True,
):
    """A fake analysed run: 2 subjects, 2 seeds, 16^3 volumes, analysis files."""
    rng = np.random.default_rng(0)
    layout = RunLayout(root)
    results = _results(edit, null, checkpoint)
    run = dict(results["run"])
    run["config"] = {"model": {"family": "diffusion", "fusion": "affine"}, "data": {}}
    cohort = root / "cohort"
    lab = _label_map()
    lung = np.isin(lab, [1, 2])
    upper = lung & (np.arange(16)[None, None, :] >= 10)
    for sid in run["subjects"]:
        write_volume(Volume(lab, AFFINE), cohort / "masks" / f"{sid}.nii.gz")
        base = np.where(lung, -850.0, np.where(lab == 3, -1000.0, 40.0)).astype(np.float32)
        for k in run["seeds"]:
            fact = base + rng.normal(0, 10, SHAPE).astype(np.float32)
            floor = base + rng.normal(0, 10, SHAPE).astype(np.float32)
            write_volume(Volume(fact, AFFINE), layout.factual(sid, k))
            write_volume(Volume(floor, AFFINE), layout.floor(sid, k))
            write_volume(Volume(fact - 60.0 * upper, AFFINE), layout.edited(sid, edit, k))
            write_volume(Volume(fact.copy(), AFFINE), layout.edited(sid, null, k))
        # The difference maps unveil analyze writes (the report reads them).
        write_volume(
            Volume((-60.0 * upper).astype(np.float32), AFFINE), layout.map_nifti(sid, edit)
        )
        write_volume(Volume(np.zeros(SHAPE, np.float32), AFFINE), layout.map_nifti(sid, null))
    (root / "counterfactual.json").write_text(json.dumps(run))
    ana = layout.analysis_dir
    ana.mkdir(parents=True, exist_ok=True)
    stored = dict(results)
    if not json_tables:
        stored = {k: results[k] for k in ("run", "settings", "verdict", "calibration", "alpha")}
    (ana / "results.json").write_text(json.dumps(stored))
    _write_csv(ana / "cohort_stats.csv", results["cohort_stats"], COHORT_HEADER)
    for key in ("recovery", "observed", "adjusted", "noise_floor", "specificity"):
        _write_csv(ana / f"{key}.csv", results[key], list(results[key][0]))
    return results


def _data_parts(page: str, mime: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(rf'src="data:{re.escape(mime)};base64,([A-Za-z0-9+/=]+)"', page)
    ]


def _no_external_refs(page: str) -> None:
    low = page.lower()
    for bad in ("http://", "https://", 'src="//', "<link", "@import", "<script"):
        assert bad not in low, bad


# --------------------------------------------------------------------------- verdict


def test_verdict_lines_name_effect_planted_size_and_null_control():
    lines = verdict_lines(_results())
    assert lines == [
        "smoking=current: upper_lung -58 HU [-64, -52], calibrated q<0.001 (planted -60 HU, "
        "error 3%); also significant in 1 other region(s): lung",
        "null control blood_group=O: nothing significant after FDR (passed); largest |effect| "
        "0.40 HU",
        "permuted-label controls (1): nothing significant after FDR (passed); largest |effect| "
        "0.60 HU",
        "empirical null from 4 null-control row(s): systematic error +0.25 HU, spread 0.10 HU; "
        "real edits are judged against it",
        "specificity: smoking=current: largest in upper_lung -58.0 HU [-64.0, -52.0]; rest of "
        "the lung -1.2 HU [-2.0, -0.4] (spill 2% of the peak); airway +0.3 HU [-1.0, +1.5]",
        "planted effects recovered in 1/1 planted region(s) (right sign, within 30%, significant)",
    ]
    # Without the analysis verdict and calibration (an older results.json): raw q, and
    # every planted row counted.
    res = _results()
    del res["verdict"], res["calibration"], res["run"]["permuted_controls"]
    for r in res["cohort_stats"]:
        r.pop("q_calibrated")
    old = verdict_lines(res)
    assert old[0].startswith("smoking=current: upper_lung -58 HU [-64, -52], q<0.001 (planted")
    assert old[-1] == (
        "planted effects: right sign in 2/2 edit-region pairs, within 30% of the planted size in 2/2"
    )


def test_verdict_lines_flag_failed_null_and_missed_effect():
    res = _results()
    for r in res["cohort_stats"]:
        r["significant"] = r["contrast"] in (NULL, PERM) and r["region"] == "lung"
    res["cohort_stats"][4]["q_value"] = 0.03
    lines = verdict_lines(res)
    assert lines[0].startswith(
        "smoking=current: nothing significant after calibration and FDR (largest: upper_lung"
    )
    assert "planted -60 HU in upper_lung NOT recovered" in lines[0]
    assert lines[1].startswith(
        "null control blood_group=O: FAILED, significant in 1 region(s) (lung;"
    )
    assert "q=0.03" in lines[1]
    assert lines[2].startswith(
        "permuted-label controls (1): FAILED, significant in 1 region(s) "
        "(permuted-1:blood_group lung;"
    )
    res["verdict"]["recovery"]["checked"][0]["ok"] = False
    res["verdict"]["recovery"]["checked"].append(
        {
            "contrast": EDIT,
            "region": "lower_lung",
            "planted_hu": 0.0,
            "recovered_hu": -7.0,
            "check": "nothing planted",
            "ok": False,
        }
    )
    res["verdict"]["recovery"]["spill_limit_hu"] = 5.0
    assert verdict_lines(res)[-1] == (
        "planted effects recovered in 0/1 planted region(s) (right sign, within 30%, "
        "significant); 0/1 zone(s) where nothing was planted within 5 HU; missed: "
        "smoking=current in upper_lung, smoking=current in lower_lung"
    )
    res["calibration"] = {"available": False, "n_rows": 2}
    assert "calibration unavailable (2 null-control row(s))" in verdict_lines(res)[3]


def test_fmt_hu_and_edit_field():
    assert fmt_hu(-58.04, -64.4, -51.6) == "-58 HU [-64, -52]"
    assert fmt_hu(2.345, 1.0, 3.5) == "+2.3 HU [1.0, 3.5]"
    assert fmt_hu(None) == "n/a"
    assert fmt_hu(-0.001, -0.07, 0.04) == "0.00 HU [-0.07, 0.04]"  # no "-0.00", no "+0.00"
    assert edit_field("smoking=current") == "smoking"
    assert edit_field("age+=10") == "age"
    assert edit_field("unset-smoking") == "smoking"


# --------------------------------------------------------------------------- figures


def test_to_ras_and_view_slice_give_radiological_axial_view():
    # A marker at the patient's right-anterior-superior corner, stored in LPS order.
    vol = np.zeros((6, 5, 4), dtype=np.float32)
    vol[0, 0, 3] = 1.0  # i=0 -> largest x (right); j=0 -> largest y (anterior); k=3 superior
    ras, spacing = figures.to_ras(vol, AFFINE)
    assert ras.shape == (6, 5, 4)
    assert spacing == (1.5, 1.5, 2.5)
    assert ras[5, 4, 3] == 1.0
    axial = figures.view_slice(ras, "axial", 3)
    assert axial.shape == (5, 6)  # rows along A, columns along R
    assert axial[0, 0] == 1.0  # anterior at the top, patient right on the image left
    coronal = figures.view_slice(ras, "coronal", 4)
    assert coronal.shape == (4, 6)
    assert coronal[0, 0] == 1.0  # superior at the top, patient right on the left
    sagittal = figures.view_slice(ras, "sagittal", 5)
    assert sagittal[0, 0] == 1.0  # superior at the top, anterior on the left
    assert figures.lung_centre(ras > 0) == (5, 4, 3)
    assert figures.lung_centre(None, ras.shape) == figures.lung_centre(ras < 0) == (3, 2, 2)


def test_slice_panel_gif_and_charts_encode():
    rng = np.random.default_rng(1)
    fact = rng.normal(-800, 50, SHAPE).astype(np.float32)
    edit = fact - 30.0
    png = figures.slice_panel(fact, edit, edit - fact, "axial", 8, affine=AFFINE)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    assert img.width > img.height > 100  # three panels side by side
    with pytest.raises(ValueError, match="view must be"):
        figures.slice_panel(fact, edit, edit - fact, "oblique", 1)
    gif = figures.slices_gif(fact, edit, edit - fact, affine=AFFINE, panel_px=64, max_frames=6)
    im = Image.open(io.BytesIO(gif))
    assert im.format == "GIF" and im.n_frames == 6
    assert im.width == 3 * 64 + 4  # three 64 px panels (square in mm here) and gaps
    small = figures.slices_gif(fact, edit, edit - fact, panel_px=128, max_frames=16, max_bytes=1)
    assert len(small) < len(
        figures.slices_gif(fact, edit, edit - fact, panel_px=128, max_frames=16)
    )
    res = as_results(_results())
    bars = charts.region_bars(res.cohort_stats, EDIT, res.recovery)
    assert Image.open(io.BytesIO(bars)).format == "PNG"
    with pytest.raises(ValueError, match="no cohort rows"):
        charts.region_bars(res.cohort_stats, "age+=10")
    assert Image.open(io.BytesIO(charts.recovery_plot(res.recovery))).format == "PNG"
    lungs = np.zeros(SHAPE, dtype=bool)
    lungs[4:12, 4:12, 2:14] = True
    diff = np.zeros(SHAPE, dtype=np.float32)
    diff[:, :, 0] = 500.0  # outside the lungs: must not win
    diff[4:12, 4:12, 12] = -30.0
    assert figures.strongest_slice(diff, lungs, "axial") == 12
    assert figures.strongest_slice(diff, None, "axial") == 0
    assert figures.robust_diff_range(np.zeros(SHAPE)) == 1.0
    assert figures.robust_diff_range(np.full(SHAPE, -40.0)) == pytest.approx(40.0)


# --------------------------------------------------------------------------- page


def test_write_report_is_self_contained_and_complete(tmp_path):
    run_root = tmp_path / "run"
    make_run(run_root)
    out = write_report(run_root)
    assert out == run_root / "report.html"
    page = out.read_text(encoding="utf-8")
    assert (
        "smoking=current: upper_lung -58 HU [-64, -52], calibrated q&lt;0.001 (planted -60 HU"
        in page
    )
    assert "null control blood_group=O: nothing significant after FDR (passed)" in page
    assert "<th>mean HU [95% CI]</th>" in page and "<td>upper_lung</td>" in page
    assert "<th>calibrated q</th>" in page and "<th>MDE HU</th>" in page
    assert "Planted against recovered" in page
    assert "Counterfactual, observed and adjusted association: smoking" in page
    # one table: counterfactual, raw and adjusted side by side for each region
    row = re.search(r"<tr><td>upper_lung</td><td>-58 HU \[-64, -52\]</td>(.*?)</tr>", page)
    assert row and row.group(1) == "<td>-55 HU [-70, -40]</td><td>-61 HU [-67, -55]</td>"
    assert "smoking[current] &minus; smoking[never] (reference)" in page
    assert "<h2>Noise floor</h2>" in page and "<th>seed-to-seed SD HU</th>" in page
    assert "<td>3.96</td>" in page  # the MDE
    assert "<h2>Empirical calibration</h2>" in page and "&mu; = 0.25 HU" in page
    assert "Largest in <b>upper_lung</b>" in page and "spill 2% of the peak" in page
    assert "permuted-label controls</dt><dd>1</dd>" in page
    assert "drawn per subject and seed" in page
    assert "last.pt" in page and "diffusion, fusion affine" in page
    assert "-1000 to 500 HU" in page and "Benjamini" in page and "Schuemie" in page
    assert "2000 bootstrap resamples (BCa over subjects)" in page
    assert "Cautions from the analysis" in page and "cannot reach p &lt; 0.05" in page
    assert "difference of group means, bootstrap over subjects" in page
    _no_external_refs(page)
    pngs = _data_parts(page, "image/png")
    gifs = _data_parts(page, "image/gif")
    # 3 bar charts (edit, null edit, permuted control) + recovery plot + 2 edits x 2
    # subjects x (axial, coronal); no slices for the permuted control.
    assert len(pngs) == 3 + 1 + 8
    assert len(gifs) == 4
    for data in pngs:
        assert Image.open(io.BytesIO(data)).format == "PNG"
    for data in gifs:
        gif = Image.open(io.BytesIO(data))
        assert gif.format == "GIF" and gif.n_frames > 1
        assert len(data) < 2_000_000
    # The difference panel of the smoking edit is not flat: the upper lung is 60 HU darker.
    assert "&plusmn;60 HU" in page
    # The axial view is taken where the (upper-lung) difference is, not at mid-lung.
    assert "Axial slice 11 where the mean |difference| in the lungs is largest" in page
    assert not list(run_root.glob(".report.html.*"))  # atomic: no temporary left behind


def test_report_escapes_strings_from_files(tmp_path):
    run_root = tmp_path / "run"
    evil = "smoking=<script>alert(1)</script>"
    make_run(run_root, edit=evil, checkpoint="https://evil.example/@import/ckpt.pt")
    page = write_report(run_root, subjects_shown=1).read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    _no_external_refs(page)
    assert len(_data_parts(page, "image/gif")) == 2  # one subject, two edits


def test_tables_fall_back_to_csv(tmp_path):
    run_root = tmp_path / "run"
    make_run(run_root, json_tables=False)
    res = load_results(run_root)
    assert len(res.cohort_stats) == 7 and res.cohort_stats[0].significant is True
    assert res.adjusted and res.noise_floor and res.specificity
    assert res.recovery[0].within  # an older file: within_30pct stands in for the tolerance
    assert res.cohort_stats == as_results(_results()).cohort_stats  # CSV reads as JSON does
    assert verdict_lines(res) == verdict_lines(_results())
    page = write_report(run_root, out_path=tmp_path / "r.html", subjects_shown=0).read_text()
    assert "upper_lung -58 HU [-64, -52]" in page
    assert "data:image/gif" not in page  # no subject shown


def test_missing_results_is_one_sentence(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(UnveilError, match="run `unveil analyze"):
        write_report(tmp_path / "run")
    assert not (tmp_path / "run" / "report.html").exists()


# --------------------------------------------------------------------------- CLI


def test_cli_report(tmp_path, capsys):
    run_root = tmp_path / "run"
    make_run(run_root)
    out = tmp_path / "page.html"
    assert main(["report", str(run_root), "--out", str(out), "--subjects", "1"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    assert "null control blood_group=O: nothing significant after FDR (passed)" in printed
    assert out.is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unveil analyze" in err[0]
    assert not (empty / "report.html").exists()


def test_report_reads_the_analysis_maps_and_the_runs_hu_window(tmp_path):
    run_root = tmp_path / "run"
    make_run(run_root)
    layout = RunLayout(run_root)
    # The volumes say -60 HU; the map analyze wrote says -10: the page shows the map.
    lab = _label_map()
    upper = np.isin(lab, [1, 2]) & (np.arange(16)[None, None, :] >= 10)
    for sid in ("sub-000", "sub-001"):
        write_volume(
            Volume((-10.0 * upper).astype(np.float32), AFFINE), layout.map_nifti(sid, EDIT)
        )
    layout.map_nifti("sub-001", NULL).unlink()
    run = json.loads(layout.json_path.read_text())
    layout.json_path.write_text(json.dumps({**run, "hu_window": [-900, 300]}))
    page = write_report(run_root).read_text(encoding="utf-8")
    assert "&plusmn;10 HU" in page and "&plusmn;60 HU" not in page
    assert "-900 to 300 HU" in page and "-1000 to 500 HU" not in page
    assert f"The difference map of sub-001 for this edit is not in {layout.maps_dir}" in page
    assert "run unveil analyze again to draw its slice views" in page
    assert len(_data_parts(page, "image/gif")) == 3  # one null-control subject without a map


def test_report_of_a_bad_results_file_is_one_sentence(tmp_path, capsys):
    run_root = tmp_path / "run"
    make_run(run_root)
    path = RunLayout(run_root).results_json
    raw = json.loads(path.read_text())
    raw["cohort_stats"][0]["q_value"] = "small"
    path.write_text(json.dumps(raw))
    assert main(["report", str(run_root)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "cohort_stats[0].q_value" in line and f"run `unveil analyze {run_root}` again" in line
    assert not (run_root / "report.html").exists()
