"""``unveil evaluate`` end to end on the tiny phantom, and the condition-adherence readers on
volumes whose attribute is planted."""

from __future__ import annotations

import csv
import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unveil.cli import main
from unveil.errors import UnveilError
from unveil.infer.counterfactual import Generator
from unveil.metrics.adherence import (
    EditTarget,
    adherence_input,
    auroc,
    edit_target,
    effectiveness,
    fit_attribute_model,
    reading_figures,
)
from unveil.metrics.eval_render import per_subject_csv, summary_markdown
from unveil.metrics.eval_subject import mask_figures, volume_figures
from unveil.metrics.eval_summary import (
    AttributePlan,
    SummaryOptions,
    adherence_figures,
    build_summary,
    edit_reasons,
    effectiveness_figures,
    feature_figures,
    fidelity_notes,
    is_number,
    overlap_note,
    summarize_records,
    texture_z,
    unit,
)
from unveil.metrics.eval_types import Readers, SubjectResult
from unveil.metrics.evaluate import EvaluationRequest, evaluate, json_safe, variant_name
from unveil.metrics.features import missing_network_message
from unveil.records.evaluation import EvaluationSummary
from unveil.text.edits import parse_edit
from unveil.text.template import load_template

# sub-000 (val) and sub-001 (test) are not in the training split of the tiny phantom.
IDS = ["sub-000", "sub-001"]
SMALL = {"n_boot": 200, "progress": False, "adherence_size": 8, "adherence_epochs": 40}


@pytest.fixture
def gan_ckpt(tiny_gan_run):
    """The session's tiny GAN, trained on ``tiny_phantom``: read-only."""
    return tiny_gan_run.checkpoint


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ evaluate end to end


def test_evaluate_writes_every_file_with_weight_free_figures_and_fid_reasons(
    gan_ckpt, tiny_phantom, tmp_path
):
    out = tmp_path / "eval"
    summary = evaluate(
        gan_ckpt, tiny_phantom, out, ids=IDS, edits=["pack_years+=20", "smoking=current"], **SMALL
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "info.json",
        "per_subject.csv",
        "summary.json",
        "summary.md",
    ]
    rows = _csv(out / "per_subject.csv")
    assert [r["id"] for r in rows] == IDS
    saved = json.loads((out / "summary.json").read_text())
    # Weight-free and paired figures are finite numbers with an interval over 2 subjects.
    for key in (
        "mae_hu",
        "mae_hu_lung",
        "ssim",
        "ssim_lung",
        "wasserstein_lung",
        "wasserstein_upper_lung",
        "wasserstein_lung_core",
        "texture_z_lung",
        "texture_lung/mean_hu",
        "ref_dice_lung",
    ):
        fig = saved[key]
        assert math.isfinite(fig["value"]) and fig["n"] == 2, key
        assert fig["ci_low"] <= fig["value"] <= fig["ci_high"], key
    assert saved["mae_hu_lung"]["unit"] == "HU" and saved["psnr"]["statistic"] == "median"
    # The per-subject MAE in the CSV is what the summary averages.
    assert saved["mae_hu"]["value"] == pytest.approx(
        np.mean([float(r["mae_hu"]) for r in rows]), rel=1e-5
    )
    # The Wasserstein distance of the lung is the per-subject mean-free part too: it is at
    # least the absolute difference of the means (a property of W1).
    for r in rows:
        assert float(r["wasserstein_lung"]) >= float(r["texture_lung/mean_hu"]) - 1e-3
    # The classical segmenter finds the phantom's lungs on the real scans.
    assert saved["ref_dice_lung"]["value"] > 0.85
    # No network named: null plus the one sentence, for both kinds.
    for kind in ("2d", "3d"):
        assert saved[f"fid_{kind}"] is None and saved[f"kid_{kind}"] is None
        assert saved[f"fid_{kind}_reason"] == missing_network_message(kind)
    assert saved["ms_ssim"] is None and "MS-SSIM not computed" in saved["ms_ssim_reason"]
    # Adherence: only pack_years has enough training subjects in the 4-subject split.
    assert saved["adherence_pack_years_mae_generated"]["n"] == 1  # sub-001's value is missing
    assert "classifier needs at least two classes" in saved["adherence_smoking_reason"]
    assert saved["effectiveness_smoking=current"] is None
    assert "smoking classifier" in saved["effectiveness_smoking=current_reason"]
    assert saved["effectiveness_pack_years+=20"]["n"] == 1
    assert (
        rows[0]["adherence_pack_years_value"] == "36.8"
        and rows[1]["adherence_pack_years_value"] == ""
    )
    info = json.loads((out / "info.json").read_text())
    assert info["family"] == "gan" and info["fusion"] == "affine"
    assert info["variant"] == "GAN affine" == variant_name("gan", "affine")
    assert info["subjects"] == IDS and info["n_subjects"] == 2 and info["seed"] == 0
    assert info["adherence"]["models"]["pack_years"]["n_train"] == 4
    md = (out / "summary.md").read_text()
    assert "| mae_hu_lung | mean |" in md and "fid_2d, kid_2d" in md
    assert summary["mae_hu"]["value"] == saved["mae_hu"]["value"]
    # The same call again is refused, and nothing is changed.
    with pytest.raises(UnveilError, match="already exists"):
        evaluate(gan_ckpt, tiny_phantom, out, ids=IDS, **SMALL)


class _Scripted(torch.nn.Module):
    """A fixed random projection of pooled intensities (RandomProjectionFeatures as a module)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(dims)
        cells = 3 * 16 if dims == 2 else 8
        self.pool = torch.nn.AdaptiveAvgPool2d(4) if dims == 2 else torch.nn.AdaptiveAvgPool3d(2)
        self.register_buffer("w", torch.randn(cells, 6, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1) @ self.w


def test_fid_and_kid_are_numbers_when_feature_networks_are_named(gan_ckpt, tiny_phantom, tmp_path):
    f2, f3 = tmp_path / "net2d.pt", tmp_path / "net3d.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated; the loader also reads it
        warnings.simplefilter("ignore")
        torch.jit.script(_Scripted(2)).save(str(f2))
        torch.jit.script(_Scripted(3)).save(str(f3))
    out = tmp_path / "eval"
    evaluate(
        gan_ckpt,
        tiny_phantom,
        out,
        ids=IDS,
        features_2d=f2,
        features_3d=f3,
        adherence=False,
        **SMALL,
    )
    saved = json.loads((out / "summary.json").read_text())
    for key in ("fid_2d", "kid_2d", "fid_3d", "kid_3d"):
        assert isinstance(saved[key], dict) and math.isfinite(saved[key]["value"]), key
        assert f"{key}_reason" not in saved
    assert saved["fid_2d"]["value"] > 0  # an untrained generator is far from the real slices
    assert saved["fid_2d"]["ci_low"] <= saved["fid_2d"]["value"] <= saved["fid_2d"]["ci_high"]
    assert saved["adherence_reason"].endswith("(--no-adherence).")
    assert json.loads((out / "info.json").read_text())["features_2d"] == str(f2.resolve())
    # A named file that is not a network is refused before anything is generated.
    bad = tmp_path / "bad.pt"
    bad.write_text("not a network")
    with pytest.raises(UnveilError, match="not a TorchScript"):
        evaluate(gan_ckpt, tiny_phantom, tmp_path / "x", ids=IDS, features_2d=bad, **SMALL)
    assert not (tmp_path / "x").exists()


def test_a_perfect_generator_scores_zero_error_and_no_edit_effect(
    gan_ckpt, tiny_phantom, tmp_path, monkeypatch
):
    # The real preprocessed scan stands in for the generator's output, whatever the prompt.
    monkeypatch.setattr(
        Generator, "generate", lambda self, prepared, prompt, noise: prepared.image[None]
    )
    out = tmp_path / "eval"
    evaluate(gan_ckpt, tiny_phantom, out, ids=IDS, edits=["pack_years+=20"], **SMALL)
    s = json.loads((out / "summary.json").read_text())
    assert s["mae_hu"]["value"] == pytest.approx(0.0, abs=0.05)
    assert s["mae_hu_lung"]["value"] == pytest.approx(0.0, abs=0.05)
    assert s["ssim"]["value"] == pytest.approx(1.0, abs=1e-4)
    assert s["ssim_lung"]["value"] == pytest.approx(1.0, abs=1e-4)
    assert s["psnr"]["value"] == "inf" or s["psnr"]["value"] > 80
    assert s["wasserstein_lung"]["value"] == pytest.approx(0.0, abs=0.05)
    assert s["texture_z_lung"]["value"] == pytest.approx(0.0, abs=0.05)
    # The segmenter sees the real scan, so it agrees with itself on the real scan.
    assert s["dice_lung"]["value"] == pytest.approx(s["ref_dice_lung"]["value"], abs=0.02)
    assert s["lungmask_failed"]["value"] == 0
    # The generated reading equals the real reading; an output blind to the text moves nothing.
    assert s["adherence_pack_years_mae_generated"]["value"] == pytest.approx(
        s["adherence_pack_years_mae_real"]["value"], abs=1e-6
    )
    assert s["effectiveness_pack_years+=20"]["value"] == 0.0
    assert s["effectiveness_pack_years+=20_change"]["value"] == 0.0
    assert s["effectiveness_pack_years+=20_intended"]["value"] == 20.0


def test_a_generated_ct_without_lungs_is_a_recorded_failure(
    gan_ckpt, tiny_phantom, tmp_path, monkeypatch
):
    # Uniform -250 HU: a body but no air, so unveil lungmask finds no lungs.
    monkeypatch.setattr(
        Generator,
        "generate",
        lambda self, prepared, prompt, noise: torch.zeros_like(prepared.image)[None],
    )
    out = tmp_path / "eval"
    evaluate(gan_ckpt, tiny_phantom, out, ids=IDS, adherence=False, **SMALL)
    s = json.loads((out / "summary.json").read_text())
    assert s["lungmask_failed"]["value"] == 1.0 and s["dice_lung"]["value"] == 0.0
    assert s["ref_lungmask_failed"]["value"] == 0.0
    rows = _csv(out / "per_subject.csv")
    assert all(r["lungmask_failed"] == "1" and "lung" in r["lungmask_error"] for r in rows)


def test_cli_errors_are_one_line_and_a_run_prints_its_figures(
    gan_ckpt, tiny_phantom, tmp_path, capsys
):
    base = ["evaluate", "--checkpoint", str(gan_ckpt), "--cohort", str(tiny_phantom)]
    assert (
        main([*base, "--out", str(tmp_path / "a"), "--features-2d", str(tmp_path / "none.pt")]) == 2
    )
    assert main([*base, "--out", str(tmp_path / "b"), "--edit", "smoking=sometimes"]) == 2
    assert main([*base, "--out", str(tmp_path / "c"), "--attributes", "shoe_size"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("unveil evaluate: error:") == 3
    assert not any((tmp_path / d).exists() for d in "abc")
    # The default split is the run's test split (one subject in the tiny phantom).
    assert (
        main(
            [
                *base,
                "--out",
                str(tmp_path / "ok"),
                "--no-adherence",
                "--n-boot",
                "50",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "mae_hu_lung:" in printed and "fid_2d: not computed" in printed
    assert json.loads((tmp_path / "ok" / "info.json").read_text())["subjects"] == ["sub-001"]


def test_json_safe_writes_inf_as_a_string_and_nan_as_null():
    assert json_safe({"a": math.inf, "b": [math.nan, -math.inf, 1.5], "c": np.float32(2)}) == {
        "a": "inf",
        "b": [None, "-inf", 1.5],
        "c": 2.0,
    }


# ------------------------------------------------------------------ adherence readers


def _planted(rng, n, shift_hu, label):
    """A 12^3 volume (window-mapped to [0, 1]) with a ball of lung whose HU depends on label."""
    grid = np.stack(np.meshgrid(*(np.arange(12),) * 3, indexing="ij"))
    centre = rng.uniform(5.0, 7.0, size=3)[:, None, None, None]
    lung = ((grid - centre) ** 2).sum(0) < rng.uniform(3.0, 4.5) ** 2
    hu = 40.0 + rng.normal(0.0, 20.0, lung.shape)
    hu[lung] = -870.0 + shift_hu * label + rng.normal(0.0, 25.0, int(lung.sum()))
    return adherence_input((np.clip(hu, -1000, 500) + 1000) / 1500, lung, size=8)


def test_adherence_input_reports_lung_fraction_and_mean_lung_intensity():
    img = np.zeros((8, 8, 8))
    lung = np.zeros((8, 8, 8), bool)
    lung[2:6, 2:6, 2:6] = True
    img[lung] = 0.25
    img[~lung] = 0.9  # never seen by the reader
    x = adherence_input(img, lung, size=2)
    assert x.shape == (2, 2, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0)  # cropped to the lung box: every cell is lung
    np.testing.assert_allclose(x[1], 0.25, rtol=1e-6)
    assert not adherence_input(img, np.zeros_like(lung), size=4).any()


def test_auroc_known_values():
    assert (
        auroc([0, 0, 1, 1], np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]]), [0, 1])
        == 1.0
    )
    assert (
        auroc([1, 1, 0, 0], np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]]), [0, 1])
        == 0.0
    )
    assert auroc([0, 1], np.array([[0.5, 0.5], [0.5, 0.5]]), [0, 1]) == 0.5  # ties count half
    assert auroc([1, 1], np.array([[0.5, 0.5], [0.2, 0.8]]), [0, 1]) is None
    # Three classes: macro mean of the one-vs-rest AUROCs, here 0.75 (a: one tie pair
    # counts half of 2), 1 (b) and 2.5 / 3 (c: its positive ties with one negative).
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]])
    assert auroc(["a", "b", "c", "a"], p, ["a", "b", "c"]) == pytest.approx(
        (0.75 + 1 + 2.5 / 3) / 3
    )


def test_a_planted_binary_attribute_is_read_from_real_volumes():
    rng = np.random.default_rng(0)
    labels = [i % 2 for i in range(20)]
    x = np.stack([_planted(rng, 12, 80.0, lab) for lab in labels])
    model = fit_attribute_model(
        "smoking", x[:14], labels[:14], "classifier", classes=[0, 1], seed=0, epochs=60
    )
    fig, readings = reading_figures(model, labels[14:], x[14:], np.random.default_rng(1), 200)
    assert fig["statistic"] == "AUROC" and fig["n"] == 6
    assert fig["value"] >= 0.9
    assert readings == labels[14:]
    # The same seed gives the same reader.
    again = fit_attribute_model(
        "smoking", x[:14], labels[:14], "classifier", classes=[0, 1], seed=0, epochs=60
    )
    np.testing.assert_array_equal(again.predict(x[14:]), model.predict(x[14:]))


def test_a_planted_number_is_regressed_and_an_edit_moves_the_reading():
    rng = np.random.default_rng(1)
    ages = rng.uniform(30, 80, size=24)
    # 2 HU per year inside the lung.
    x = np.stack([_planted(rng, 12, 2.0, a) for a in ages])
    model = fit_attribute_model(
        "age", x[:18], ages[:18], "regressor", seed=0, epochs=80, unit="years"
    )
    fig, _ = reading_figures(model, list(ages[18:]), x[18:], np.random.default_rng(2), 200)
    baseline = float(np.mean(np.abs(ages[18:] - ages[:18].mean())))
    assert fig["unit"] == "years" and fig["value"] < 0.6 * baseline
    # An edit "age += 30" realised as +60 HU in the lung moves every reading up; no change
    # (a generator blind to the text) moves none.
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    factual = np.stack([_planted(rng_a, 12, 2.0, 40.0) for _ in range(6)])
    edited = np.stack([_planted(rng_b, 12, 2.0, 70.0) for _ in range(6)])
    targets = [EditTarget(70.0, 1, 30.0)] * 6
    moved, change, per = effectiveness(
        model, factual, edited, targets, np.random.default_rng(3), 200
    )
    assert moved["value"] == 1.0 and change["value"] > 5.0 and len(per) == 6
    moved0, change0, _ = effectiveness(
        model, factual, factual, targets, np.random.default_rng(3), 200
    )
    assert moved0["value"] == 0.0 and change0["value"] == 0.0


def test_edit_targets_follow_the_prompt():
    t = load_template("phantom")
    row = {
        "age": 58.6,
        "sex": "M",
        "smoking": "former",
        "pack_years": None,
        "diagnosis": "none",
        "blood_group": "A",
    }
    assert edit_target(t, parse_edit("smoking=current", t), row) == EditTarget("current", 1, None)
    assert edit_target(t, parse_edit("smoking=former", t), row) is None  # prompt unchanged
    assert edit_target(t, parse_edit("pack_years+=10", t), row) is None  # missing stays missing
    assert edit_target(t, parse_edit("age=30", t), row) == EditTarget(
        30.0, -1, pytest.approx(-28.6)
    )
    assert edit_target(t, parse_edit("unset smoking", t), row) is None


def test_without_the_runs_splits_adherence_says_why_and_the_rest_is_measured(
    gan_ckpt, tiny_phantom, tmp_path
):
    # The checkpoint alone, away from its run folder: no splits.json to train the readers on.
    lone = tmp_path / "lone" / "ckpt.pt"
    lone.parent.mkdir()
    lone.write_bytes(gan_ckpt.read_bytes())
    with pytest.raises(UnveilError, match="splits.json"):
        evaluate(lone, tiny_phantom, tmp_path / "x", **SMALL)  # --split test needs it too
    out = tmp_path / "eval"
    evaluate(lone, tiny_phantom, out, ids=["sub-002"], edits=["age+=10"], **SMALL)
    s = json.loads((out / "summary.json").read_text())
    assert "training split of the run" in s["adherence_reason"]
    assert (
        s["effectiveness_age+=10"] is None and "training split" in s["effectiveness_age+=10_reason"]
    )
    assert math.isfinite(s["mae_hu_lung"]["value"]) and s["mae_hu_lung"]["ci_low"] is None  # n = 1


# ------------------------------------------------------------------ the pure parts (no files)


def _tex(mean, pct):
    return {"lung": {"mean_hu": mean, "laa950_pct": pct, "n_voxels": 100}}


def test_texture_z_divides_by_the_spread_of_the_real_subjects():
    real = [_tex(-850.0, 10.0), _tex(-830.0, 14.0), _tex(-840.0, 12.0)]
    fake = [_tex(-840.0, 10.0), _tex(-830.0, 16.0), _tex(-840.0, None)]
    z = texture_z(real, fake)
    # SD (ddof 1) of the real means is 10 HU, of the LAA-950 % is 2.
    assert z[0]["texture_z_lung"] == pytest.approx((10 / 10 + 0 / 2) / 2)
    assert z[1]["texture_z_lung"] == pytest.approx((0 / 10 + 2 / 2) / 2)
    assert z[2]["texture_z_lung"] == pytest.approx(0.0)  # the missing feature is left out
    assert texture_z(real[:1], fake[:1]) == [{}]  # one subject has no spread


def test_summarize_records_orders_fidelity_first_and_names_units_and_statistics():
    records = [
        {"id": "a", "wasserstein_lung": 3.0, "psnr": math.inf, "mae_hu": 10.0, "n_lung": 5},
        {"id": "b", "wasserstein_lung": 5.0, "psnr": 30.0, "mae_hu": 20.0, "n_lung": 7},
    ]
    s = summarize_records(records, seed=0, n_boot=50)
    assert list(s) == ["mae_hu", "psnr", "wasserstein_lung"]  # n_lung is bookkeeping
    assert s["mae_hu"]["value"] == 15.0 and s["mae_hu"]["unit"] == "HU" and s["mae_hu"]["n"] == 2
    assert s["psnr"]["statistic"] == "median" and s["psnr"]["unit"] == "dB"
    assert s["psnr"]["value"] == math.inf
    assert [unit(k) for k in ("texture_lung/mean_hu", "texture_lung/laa950_pct", "dice_lung")] == [
        "HU",
        "%",
        "",
    ]
    assert is_number(1) and is_number(math.inf) and not is_number(True)
    assert not is_number(math.nan) and not is_number(None)


def test_fidelity_notes_say_why_ms_ssim_and_texture_distances_are_missing():
    notes = fidelity_notes([{"ms_ssim": None, "ms_ssim_reason": "too small."}])
    assert notes["ms_ssim"] is None and notes["ms_ssim_reason"] == "too small."
    assert "at least two subjects" in notes["texture_z_reason"]
    assert fidelity_notes([{"ms_ssim": 0.9}, {"ms_ssim": 0.8}]) == {}


def test_feature_figures_give_numbers_with_a_network_and_sentences_without():
    rng = np.random.default_rng(0)
    real = [rng.normal(size=(4, 3)) for _ in range(5)]
    fake = [rng.normal(1.0, size=(4, 3)) for _ in range(5)]
    out = feature_figures({"2d": (real, fake), "3d": None}, seed=0, n_boot_set=20, n_subjects=5)
    assert out["fid_2d"]["value"] > 0 and out["fid_2d"]["n"] == 5
    assert out["fid_2d"]["ci_low"] <= out["fid_2d"]["value"] <= out["fid_2d"]["ci_high"]
    assert out["kid_2d"]["statistic"] == "set (interval over subjects)"
    assert out["fid_3d"] is None and out["fid_3d_reason"] == missing_network_message("3d")
    few = feature_figures(
        {"3d": ([real[0][:1]], [fake[0][:1]])}, seed=0, n_boot_set=5, n_subjects=1
    )
    assert few["fid_3d"] is None and "at least 2 subjects" in few["kid_3d_reason"]


def test_adherence_and_edits_without_readers_are_sentences():
    t = load_template("phantom")
    edits = {str(parse_edit(e, t)): parse_edit(e, t) for e in ("age+=10", "unset smoking")}
    off = Readers(note="condition adherence was not asked for (--no-adherence).")
    reasons = edit_reasons(edits, off, t)
    assert reasons["age+=10"].endswith("(--no-adherence).")
    assert "removes a value" in reasons["unset-smoking"]
    partial = Readers(reasons={"age": "too few subjects"})
    assert edit_reasons(edits, partial, t)["age+=10"].endswith("too few subjects.")
    rows = [{"age": 60.0}, {"age": 70.0}]
    results = [SubjectResult({"id": i, "mae_hu": 1.0}, _tex(-850, 1), _tex(-850, 1)) for i in "ab"]
    plan = AttributePlan(t, ["age"], rows, edits, reasons)
    opts = SummaryOptions(seed=0, n_boot=20)
    summary, columns = adherence_figures(results, off, plan, opts)
    assert summary == {"adherence_reason": off.note} and columns == [{}, {}]
    summary, _ = adherence_figures(results, partial, plan, opts)
    assert summary["adherence_age_mae_real"] is None
    assert summary["adherence_age_reason"].endswith("too few subjects.")
    eff, _ = effectiveness_figures(results, off, plan, opts)
    assert (
        eff["effectiveness_age+=10"] is None
        and eff["effectiveness_age+=10_reason"] == (reasons["age+=10"])
    )
    assert overlap_note(["a"], Readers(train_ids=["a"])) == {}  # no reader, nothing optimistic


def test_build_summary_puts_figures_then_sentences_and_rows_in_column_order():
    results = [
        SubjectResult(
            {"id": "a", "mae_hu": 10.0, "texture_lung/mean_hu": 1.0}, _tex(-850, 1), _tex(-840, 1)
        ),
        SubjectResult(
            {"id": "b", "mae_hu": 20.0, "texture_lung/mean_hu": 2.0}, _tex(-830, 3), _tex(-830, 3)
        ),
    ]
    plan = AttributePlan(load_template("phantom"), [], [{}, {}], {}, {})
    readers = Readers(note="condition adherence was not asked for (--no-adherence).")
    summary, rows = build_summary(
        results, ["a", "b"], readers, plan, SummaryOptions(seed=0, n_boot=20)
    )
    assert list(summary)[:3] == ["mae_hu", "texture_lung/mean_hu", "texture_z_lung"]
    assert summary["ms_ssim"] is None and summary["fid_2d"] is None
    assert list(summary)[-1] == "adherence_reason"
    assert list(rows[0]) == ["id", "mae_hu", "texture_lung/mean_hu", "texture_z_lung"]
    # The per-feature texture columns go last in the CSV; text cells are neutralised.
    text = per_subject_csv([{**rows[0], "id": "=cmd"}, rows[1]])
    assert text.splitlines()[0] == "id,mae_hu,texture_z_lung,texture_lung/mean_hu"
    assert text.splitlines()[1].startswith("'=cmd,10,")


def test_volume_and_mask_figures_of_a_perfect_copy():
    rng = np.random.default_rng(0)
    labels = np.zeros((16, 16, 16), np.int16)
    labels[3:8, 3:13, 3:13], labels[9:14, 3:13, 3:13] = 1, 2
    real = np.where(labels > 0, -850.0, 40.0) + rng.normal(0, 20, labels.shape)
    real[0] = -1000.0  # air around the body
    lung = labels > 0
    regions = {"lung": lung, "right_lung": labels == 1}
    rec, texture, t_real, t_fake = volume_figures(real, real.copy(), lung, regions, (-1000, 500))
    assert rec["mae_hu"] == pytest.approx(0.0) and rec["wasserstein_lung"] == pytest.approx(0.0)
    assert set(t_real) == {"lung", "right_lung"} and t_real == t_fake
    assert all(v == pytest.approx(0.0) for v in texture.values() if v is not None)
    dice = mask_figures(
        {"": (labels, None), "ref_": (None, "no lungs found.")},
        labels,
        {"lung": (1, 2), "right_lung": (1,)},
    )
    assert dice == {
        "dice_lung": 1.0,
        "dice_right_lung": 1.0,
        "lungmask_failed": 0,
        "lungmask_error": None,
        "ref_dice_lung": 0.0,
        "ref_dice_right_lung": 0.0,
        "ref_lungmask_failed": 1,
        "ref_lungmask_error": "no lungs found.",
    }


def test_summary_markdown_renders_the_records():
    summary = EvaluationSummary.model_validate(
        {
            "mae_hu_lung": {
                "value": 12.34567,
                "ci_low": 10.0,
                "ci_high": 15.0,
                "n": 2,
                "statistic": "mean",
                "unit": "HU",
            },
            "psnr": {
                "value": math.inf,
                "ci_low": None,
                "ci_high": None,
                "n": 1,
                "statistic": "median",
                "unit": "dB",
            },
            "fid_2d": None,
            "fid_2d_reason": "no network.",
            "kid_2d": None,
            "kid_2d_reason": "no network.",
        }
    )
    info = SimpleNamespace(
        variant="GAN affine", checkpoint="ck.pt", step=3, cohort="c", split=None, n_subjects=2,
        seed=0, n_boot=100, n_boot_set=20,
    )  # fmt: skip
    md = summary_markdown(summary, info)
    assert "# Evaluation: GAN affine" in md and "split: explicit ids, 2 subjects" in md
    assert "| mae_hu_lung | mean | 12.35 | [10, 15] | 2 | HU |" in md
    assert "| psnr | median | inf |  | 1 | dB |" in md
    assert "- **fid_2d, kid_2d**: no network." in md


def test_the_request_is_validated_once_with_the_cli_defaults():
    import argparse

    from unveil.commands import evaluate as command

    r = EvaluationRequest.create(checkpoint="ck.pt", cohort="c", out="o", ids=[], features_2d="")
    assert r.ids is None and r.features_2d is None and r.split == "test"
    with pytest.raises(UnveilError, match=r"^--n-boot must be at least 1, not 0\.$"):
        EvaluationRequest.create(checkpoint="ck.pt", cohort="c", out="o", n_boot=0)
    with pytest.raises(UnveilError, match="option adherence_size is invalid"):
        EvaluationRequest.create(checkpoint="ck.pt", cohort="c", out="o", adherence_size="big")
    with pytest.raises(TypeError, match="shoe_size"):  # a programming error stays one
        EvaluationRequest.create(checkpoint="ck.pt", cohort="c", out="o", shoe_size=3)
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = vars(parser.parse_args(["evaluate", "--checkpoint", "k", "--cohort", "c", "--out", "o"]))
    for name in ("split", "ids", "seed", "features_2d", "features_3d", "n_boot", "device"):
        assert args[name] == EvaluationRequest.model_fields[name].default, name
    for name in ("guidance_scale", "steps", "amp", "attributes", "fid_size_2d", "fid_size_3d"):
        assert args[name] == EvaluationRequest.model_fields[name].default, name
    assert args["edit"] == list(EvaluationRequest.model_fields["edits"].default)
    assert not args["no_adherence"] and not args["no_progress"] and not args["overwrite"]
