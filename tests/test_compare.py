"""``unveil compare``: one table across evaluation folders, in ablation order."""

from __future__ import annotations

import csv
import json

import pytest

from unveil.cli import main
from unveil.errors import UnveilError
from unveil.metrics.compare import compare, load_eval
from unveil.metrics.eval_render import variant_name


def _fig(value, lo, hi, n=5, statistic="mean", unit=""):
    return {
        "value": value,
        "ci_low": lo,
        "ci_high": hi,
        "n": n,
        "statistic": statistic,
        "unit": unit,
    }


def info_dict(family, fusion, **changes):
    """A whole ``info.json`` as ``unveil evaluate`` writes it (every field of the record)."""
    info = {
        "checkpoint": f"/runs/{family}-{fusion}/checkpoints/ckpt-00000100.pt",
        "step": 100,
        "run_name": f"{family}-{fusion}",
        "family": family,
        "fusion": fusion,
        "variant": variant_name(family, fusion),
        "cohort": "/cohorts/phantom",
        "split": "test",
        "n_subjects": 5,
        "subjects": ["a", "b", "c", "d", "e"],
        "seed": 0,
        "hu_window": [-1000.0, 500.0],
        "n_boot": 1000,
        "n_boot_set": 200,
        "guidance_scale": None,
        "amp": "none",
        "sample_steps": None,
        "features_2d": None,
        "features_3d": None,
        "fid_slices": "axial slices through the lung mask",
        "fid_size_2d": None,
        "fid_size_3d": None,
        "edits": ["smoking=current"],
        "adherence": {
            "reader": "3D CNN",
            "input_size": 32,
            "epochs": 150,
            "train_subjects": 20,
            "attributes": ["smoking"],
            "models": {
                "smoking": {"kind": "classifier", "classes": ["never", "current"], "n_train": 20}
            },
        },
        "versions": {"unveil": "0.1.0"},
        "config": {"model": {"family": family, "fusion": fusion}},
    }
    info.update(changes)
    return info


def _eval(folder, family, fusion, mae, *, fid=None, auroc=None, recovery=None):
    folder.mkdir(parents=True)
    info = info_dict(family, fusion)
    summary = {
        "mae_hu_lung": _fig(mae, mae - 5, mae + 5, unit="HU"),
        "ssim": _fig(0.8, 0.75, 0.85),
        "psnr": _fig("inf", 30.0, "inf", statistic="median", unit="dB"),
        "ms_ssim": None,
        "ms_ssim_reason": "MS-SSIM not computed: too small.",
        "wasserstein_lung": _fig(mae / 2, mae / 2 - 1, mae / 2 + 1, unit="HU"),
        "texture_z_lung": _fig(1.5, 1.0, 2.0),
        "dice_lung": _fig(0.9, 0.85, 0.95),
        "fid_2d": _fig(fid, fid * 0.8, fid * 1.2, statistic="set") if fid is not None else None,
        "fid_2d_reason": None if fid is not None else "no network.",
        "effectiveness_smoking=current": _fig(0.8, 0.6, 1.0, statistic="fraction"),
    }
    if auroc is not None:
        summary["adherence_smoking_auroc_generated"] = _fig(
            auroc, auroc - 0.1, auroc + 0.1, statistic="AUROC"
        )
    (folder / "info.json").write_text(json.dumps(info))
    (folder / "summary.json").write_text(json.dumps(summary))
    if recovery is not None:
        (folder / "recovery.csv").write_text(recovery)
    return folder


RECOVERY = (
    "contrast,region,planted_hu,recovered_hu,ci_low,ci_high,error_hu,relative_error,sign_ok,"
    "within_30pct,null_control\n"
    "smoking=current,lung,40,30,20,40,-10,-0.25,True,True,False\n"
    "smoking=current,upper_lung,60,20,10,30,-40,-0.67,True,False,False\n"
    "smoking=current,airway,0,1,-2,4,1,,True,True,False\n"
    "blood_group=O,lung,0,-3,-6,1,-3,,True,True,True\n"
)


def test_compare_writes_one_table_in_ablation_order_with_mask_only_first(tmp_path):
    d_aff = _eval(tmp_path / "diff_affine", "diffusion", "affine", 30.0, auroc=0.7)
    g_ca = _eval(tmp_path / "gan_xattn", "gan", "cross_attention", 40.0, fid=12.0)
    g_aff = _eval(tmp_path / "gan_affine", "gan", "affine", 45.0, fid=15.0, recovery=RECOVERY)
    g_mask = _eval(tmp_path / "gan_mask", "gan", "none", 50.0, fid=20.0)
    d_mask = _eval(tmp_path / "diff_mask", "diffusion", "none", 60.0)
    out = tmp_path / "cmp"
    columns, rows = compare([d_aff, g_ca, g_aff, g_mask, d_mask], out)
    assert [r["model"] for r in rows] == [
        "GAN mask-only",
        "GAN affine",
        "GAN cross-attention",
        "diffusion mask-only",
        "diffusion affine",
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "comparison.csv",
        "comparison.md",
        "comparison.png",
    ]
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["model"] for r in table] == [r["model"] for r in rows]
    assert float(table[1]["mae_hu_lung"]) == 45.0 and float(table[1]["mae_hu_lung_ci_low"]) == 40.0
    # Ratios against the mask-only model of the same family.
    assert float(table[0]["mae_hu_lung_vs_mask_only"]) == 1.0
    assert float(table[2]["mae_hu_lung_vs_mask_only"]) == pytest.approx(40 / 50)
    assert float(table[4]["mae_hu_lung_vs_mask_only"]) == pytest.approx(30 / 60)
    assert float(table[1]["fid_2d_vs_mask_only"]) == pytest.approx(15 / 20)
    assert table[3]["fid_2d"] == "" and table[3]["fid_2d_vs_mask_only"] == ""  # no network there
    # PSNR medians that are infinite stay infinite; MS-SSIM (nowhere computed) has no column.
    assert table[0]["psnr"] == "inf" and "ms_ssim" not in columns
    # Adherence and effectiveness columns appear where any run has them.
    assert table[4]["adherence_smoking_auroc_generated"] == "0.7"
    assert table[0]["adherence_smoking_auroc_generated"] == ""
    assert float(table[0]["effectiveness_smoking=current"]) == 0.8
    # Planted-vs-recovered columns for the folder holding recovery.csv (planted rows only).
    assert float(table[1]["recovery_mean_abs_error_hu"]) == pytest.approx(25.0)
    assert float(table[1]["recovery_sign_ok"]) == 1.0
    assert float(table[1]["recovery_within_30pct"]) == 0.5
    assert float(table[1]["recovery_null_max_abs_hu"]) == 3.0
    assert table[0]["recovery_mean_abs_error_hu"] == ""

    md = (out / "comparison.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[1].startswith("| GAN mask-only | 5 | 50 [45, 55] |")
    assert [ln.split(" | ")[0] for ln in lines[1:]] == [f"| {r['model']}" for r in rows]
    assert "MAE lung (HU) / mask-only" in lines[0] and "FID 2D ↓" in lines[0]


def test_two_runs_of_one_variant_are_told_apart_and_bad_folders_are_refused(tmp_path, capsys):
    a = _eval(tmp_path / "run1", "gan", "affine", 40.0)
    b = _eval(tmp_path / "run2", "gan", "affine", 42.0)
    _, rows = compare([a, b], tmp_path / "cmp")
    assert [r["model"] for r in rows] == ["GAN affine (run1)", "GAN affine (run2)"]
    assert rows[0]["mae_hu_lung_vs_mask_only"] is None  # no mask-only run to divide by
    assert load_eval(a).summary.figure("psnr").value == float("inf")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnveilError, match="is not an evaluation folder"):
        compare([a, empty], tmp_path / "cmp2")
    assert not (tmp_path / "cmp2").exists()
    assert main(["compare", str(a), str(empty), "--out", str(tmp_path / "cmp3")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not an evaluation folder" in err
    assert main(["compare", str(b), str(a), "--out", str(tmp_path / "cmp4")]) == 0
    assert "GAN affine (run2)" in capsys.readouterr().out
