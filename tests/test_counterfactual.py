"""Counterfactual pairs share mask and noise by construction; generation writes HU on the
source grid; edits and checkpoints are validated; the CLI chain runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unveil.cli import main
from unveil.config import load_config, resolve_config_path
from unveil.data.io import read_volume
from unveil.errors import UnveilError
from unveil.infer.counterfactual import generate_cohort, run_counterfactual
from unveil.train.loop import train

FAST = ["train.val_every=1000", "train.ckpt_every=1000"]


@pytest.fixture
def gan_ckpt(tiny_gan_run):
    """The session's tiny GAN (a noise input, 2 steps on ``tiny_phantom``): read-only."""
    return tiny_gan_run.checkpoint


@pytest.fixture
def diffusion_ckpt(tiny_diffusion_run):
    """The session's tiny diffusion model (2 sampling steps): read-only."""
    return tiny_diffusion_run.checkpoint


@pytest.fixture(scope="module")
def maskonly_ckpt(tiny_phantom, tmp_path_factory):
    cfg = load_config(resolve_config_path("tiny-gan"), [*FAST, "model.fusion=none"])
    return train(
        cfg, tiny_phantom, tmp_path_factory.mktemp("maskonly") / "run", steps=1, progress=False
    )


def _vol(path):
    return read_volume(path).array


def test_pairs_share_noise_and_write_hu_on_the_source_grid(gan_ckpt, tiny_phantom, tmp_path):
    out = run_counterfactual(
        gan_ckpt,
        tiny_phantom,
        tmp_path / "cf",
        edits=["smoking=current"],
        null_edits=["blood_group=O"],
        baseline=["smoking=never"],
        seeds=2,
        ids=["sub-000", "sub-001"],
        progress=False,
    )
    run = json.loads((out / "counterfactual.json").read_text())
    assert run["edits"] == ["smoking=current"] and run["baseline"] == ["smoking=never"]
    assert run["seeds"] == [0, 1] and run["subjects"] == ["sub-000", "sub-001"]
    sub = out / "subjects" / "sub-000"
    src = read_volume(tiny_phantom / "images" / "sub-000.nii.gz")
    f0 = read_volume(sub / "factual_s0.nii.gz")
    assert f0.shape == src.shape and np.allclose(f0.affine, src.affine)
    assert f0.array.min() >= -1000.5 and f0.array.max() <= 500.5  # HU inside the window
    # Same prompt, same seed: regenerated bit for bit (noise is part of the pair, not global state).
    again = run_counterfactual(
        gan_ckpt,
        tiny_phantom,
        tmp_path / "cf2",
        edits=["smoking=current"],
        baseline=["smoking=never"],
        seeds=1,
        ids=["sub-000"],
        progress=False,
    )
    assert np.array_equal(_vol(again / "subjects/sub-000/factual_s0.nii.gz"), f0.array)
    # Another seed gives another image (the noise input is used), and so does the floor.
    assert not np.array_equal(_vol(sub / "factual_s1.nii.gz"), f0.array)
    assert not np.array_equal(_vol(sub / "floor_s0.nii.gz"), f0.array)


def test_an_edit_that_does_not_change_the_prompt_gives_exactly_zero(
    gan_ckpt, tiny_phantom, tmp_path
):
    # With the baseline smoking=never, the edit smoking=never leaves every prompt unchanged.
    out = run_counterfactual(
        gan_ckpt,
        tiny_phantom,
        tmp_path / "cf",
        edits=["smoking=never"],
        baseline=["smoking=never"],
        seeds=1,
        ids=["sub-002"],
        progress=False,
    )
    sub = out / "subjects" / "sub-002"
    assert np.array_equal(_vol(sub / "smoking=never_s0.nii.gz"), _vol(sub / "factual_s0.nii.gz"))


def test_mask_only_model_has_exactly_no_counterfactual_effect(
    maskonly_ckpt, tiny_phantom, tmp_path
):
    out = run_counterfactual(
        maskonly_ckpt,
        tiny_phantom,
        tmp_path / "cf",
        edits=["smoking=current", "age+=20"],
        seeds=1,
        ids=["sub-003"],
        progress=False,
    )
    sub = out / "subjects" / "sub-003"
    f = _vol(sub / "factual_s0.nii.gz")
    assert np.array_equal(_vol(sub / "smoking=current_s0.nii.gz"), f)
    assert np.array_equal(_vol(sub / "age+=20_s0.nii.gz"), f)


def test_bad_edits_and_reuse_of_a_run_folder_are_refused(gan_ckpt, tiny_phantom, tmp_path):
    with pytest.raises(UnveilError, match="not a value of field smoking|valid values"):
        run_counterfactual(
            gan_ckpt, tiny_phantom, tmp_path / "a", edits=["smoking=sometimes"], progress=False
        )
    with pytest.raises(UnveilError, match="no field|unknown field|not a field"):
        run_counterfactual(
            gan_ckpt, tiny_phantom, tmp_path / "b", edits=["shoe_size=9"], progress=False
        )
    with pytest.raises(UnveilError, match="not complete subjects"):
        run_counterfactual(
            gan_ckpt,
            tiny_phantom,
            tmp_path / "c",
            edits=["smoking=current"],
            ids=["nobody"],
            progress=False,
        )
    run_counterfactual(
        gan_ckpt,
        tiny_phantom,
        tmp_path / "d",
        edits=["smoking=current"],
        seeds=1,
        ids=["sub-000"],
        progress=False,
    )
    with pytest.raises(UnveilError, match="already holds a counterfactual run"):
        run_counterfactual(
            gan_ckpt, tiny_phantom, tmp_path / "d", edits=["smoking=current"], progress=False
        )


def test_generate_writes_one_volume_per_subject(gan_ckpt, tiny_phantom, tmp_path):
    written = generate_cohort(
        gan_ckpt, tiny_phantom, tmp_path / "gen", ids=["sub-004", "sub-005"], progress=False
    )
    assert [p.name for p in written] == ["sub-004.nii.gz", "sub-005.nii.gz"]
    assert read_volume(written[0]).same_grid(
        read_volume(tiny_phantom / "images" / "sub-004.nii.gz")
    )


def test_cli_counterfactual_analyze_report_chain(gan_ckpt, tiny_phantom, tmp_path, capsys):
    cf = tmp_path / "cf"
    assert (
        main(
            [
                "counterfactual",
                "--checkpoint",
                str(gan_ckpt),
                "--cohort",
                str(tiny_phantom),
                "--out",
                str(cf),
                "--edit",
                "smoking=current",
                "--null-edit",
                "blood_group=O",
                "--baseline",
                "smoking=never",
                "--seeds",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["analyze", str(cf), "--n-boot", "100"]) == 0
    assert main(["report", str(cf)]) == 0
    html = (cf / "report.html").read_text()
    assert "smoking=current" in html and "https://" not in html
    assert (
        main(
            [
                "counterfactual",
                "--checkpoint",
                str(gan_ckpt),
                "--cohort",
                str(tiny_phantom),
                "--out",
                str(tmp_path / "x"),
                "--edit",
                "smoking=sometimes",
            ]
        )
        == 2
    )
    assert "Traceback" not in capsys.readouterr().err


def test_diffusion_pairs_share_noise(diffusion_ckpt, tiny_phantom, tmp_path):
    ck = diffusion_ckpt
    a = run_counterfactual(
        ck,
        tiny_phantom,
        tmp_path / "a",
        edits=["smoking=current"],
        seeds=1,
        ids=["sub-000"],
        progress=False,
    )
    b = run_counterfactual(
        ck,
        tiny_phantom,
        tmp_path / "b",
        edits=["smoking=current"],
        seeds=1,
        ids=["sub-000"],
        progress=False,
    )
    for name in ("factual_s0.nii.gz", "smoking=current_s0.nii.gz", "floor_s0.nii.gz"):
        assert np.array_equal(
            _vol(a / "subjects/sub-000" / name), _vol(b / "subjects/sub-000" / name)
        )
    fa = _vol(a / "subjects/sub-000/factual_s0.nii.gz")
    assert not np.array_equal(_vol(a / "subjects/sub-000/floor_s0.nii.gz"), fa)


def test_bf16_generation_stays_close_to_float32_and_is_recorded(gan_ckpt, tiny_phantom, tmp_path):
    full = generate_cohort(
        gan_ckpt, tiny_phantom, tmp_path / "fp32", ids=["sub-004"], progress=False
    )
    half = generate_cohort(
        gan_ckpt, tiny_phantom, tmp_path / "bf16", ids=["sub-004"], progress=False, amp="bf16"
    )
    a, b = read_volume(full[0]), read_volume(half[0])
    assert b.same_grid(a) and b.array.dtype == np.float32 and np.isfinite(b.array).all()
    diff = np.abs(a.array.astype(np.float64) - b.array)
    # bfloat16 keeps ~3 significant digits: the images differ (autocast did run), by a few
    # HU on a 1500 HU window, not by anatomy.
    assert diff.max() > 0
    assert diff.mean() < 10.0, diff.mean()
    out = run_counterfactual(
        gan_ckpt,
        tiny_phantom,
        tmp_path / "cf",
        edits=["smoking=current"],
        seeds=1,
        ids=["sub-004"],
        progress=False,
        amp="bf16",
    )
    assert json.loads((out / "counterfactual.json").read_text())["amp"] == "bf16"


def test_bf16_diffusion_sampling_is_finite_and_close(diffusion_ckpt, tiny_phantom, tmp_path):
    ck = diffusion_ckpt
    vols = {
        amp: _vol(
            generate_cohort(
                ck, tiny_phantom, tmp_path / amp, ids=["sub-000"], progress=False, amp=amp
            )[0]
        )
        for amp in ("none", "bf16")
    }
    assert np.isfinite(vols["bf16"]).all()
    diff = np.abs(vols["none"].astype(np.float64) - vols["bf16"])
    assert diff.max() > 0 and diff.mean() < 10.0, diff.mean()


def test_unknown_precision_is_refused(gan_ckpt, tiny_phantom, tmp_path):
    with pytest.raises(UnveilError, match="amp must be one of none, bf16"):
        generate_cohort(
            gan_ckpt, tiny_phantom, tmp_path / "x", ids=["sub-004"], progress=False, amp="fp8"
        )
    assert not (tmp_path / "x").exists()
    with pytest.raises(UnveilError, match="amp must be one of none, bf16"):
        run_counterfactual(
            gan_ckpt, tiny_phantom, tmp_path / "cf", edits=["smoking=current"], amp="fp16"
        )
    assert not (tmp_path / "cf").exists()
