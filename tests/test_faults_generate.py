"""Faults of the inference path: outputs never land on real scans, absurd sampling options
and non-finite volumes are refused before anything is written, and an interrupted
counterfactual run resumes to exactly the result of an uninterrupted one."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from unveil.cli import main
from unveil.config import load_config, resolve_config_path
from unveil.data.io import read_volume
from unveil.errors import UnveilError
from unveil.infer import counterfactual as cfmod
from unveil.infer.counterfactual import PLAN_JSON, generate_cohort, run_counterfactual
from unveil.records import RUN_JSON
from unveil.train.loop import train

FAST = ["train.val_every=1000", "train.ckpt_every=1000"]
CF_ARGS = dict(
    edits=["smoking=current"],
    null_edits=["blood_group=O"],
    baseline=["smoking=never"],
    seeds=2,
    ids=["sub-000", "sub-001"],
    n_permuted=1,
    progress=False,
)


@pytest.fixture
def ckpt(tiny_gan_run):
    """The session's tiny GAN (a noise input, trained on ``tiny_phantom``): read-only."""
    return tiny_gan_run.checkpoint


@pytest.fixture(scope="module")
def complete_run(tiny_gan_run, tiny_phantom, tmp_path_factory):
    """An uninterrupted counterfactual run (read-only: copy it to modify)."""
    out = tmp_path_factory.mktemp("cf") / "run"
    return run_counterfactual(tiny_gan_run.checkpoint, tiny_phantom, out, **CF_ARGS)


@pytest.fixture
def cohort(tiny_phantom, tmp_path):
    """A private copy of the phantom cohort (these tests try to write into it)."""
    return shutil.copytree(tiny_phantom, tmp_path / "cohort")


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli_fails(capsys, argv):
    """Run the CLI expecting a user error: exit 2 and exactly one line on stderr (argparse's
    own type checks exit 2 through SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as ex:
        code = ex.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def _generate(ckpt, cohort, out, *extra):
    return ["generate", "--checkpoint", str(ckpt), "--cohort", str(cohort), "--out", str(out),
            "--no-progress", *extra]  # fmt: skip


def _counterfactual(ckpt, cohort, out, *extra):
    return ["counterfactual", "--checkpoint", str(ckpt), "--cohort", str(cohort), "--out",
            str(out), "--edit", "smoking=current", "--seeds", "1", "--ids", "sub-000",
            "--no-progress", *extra]  # fmt: skip


# ------------------------------------------------------------------ real scans are safe


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_generate_into_the_cohorts_images_is_refused(ckpt, cohort, capsys, overwrite):
    before = _snapshot(cohort)
    for out in (cohort / "images", cohort / "masks", cohort / "images" / "gen"):
        line = _cli_fails(capsys, _generate(ckpt, cohort, out, "--ids", "sub-002", *overwrite))
        assert f"--out {out} lies in" in line and "refused even with --overwrite" in line
    assert _snapshot(cohort) == before  # sub-002's real scan is byte for byte unchanged


def test_generate_into_another_cohorts_images_is_refused(ckpt, cohort, tiny_phantom, capsys):
    # --cohort is one cohort, --out the images/ of another (a folder next to a clinical table).
    before = _snapshot(cohort)
    line = _cli_fails(
        capsys, _generate(ckpt, tiny_phantom, cohort / "images", "--ids", "sub-002", "--overwrite")
    )
    assert f"cohort at {cohort.resolve()}" in line
    assert _snapshot(cohort) == before


def test_counterfactual_into_the_cohorts_masks_is_refused(ckpt, cohort, capsys):
    before = _snapshot(cohort)
    for out in (cohort / "masks", cohort / "images" / "cf"):
        line = _cli_fails(capsys, _counterfactual(ckpt, cohort, out, "--overwrite"))
        assert "lies in" in line
    assert _snapshot(cohort) == before


def test_generate_refuses_existing_files_unless_overwrite(ckpt, tiny_phantom, tmp_path, capsys):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "sub-005.nii.gz").write_bytes(b"precious")
    argv = _generate(ckpt, tiny_phantom, out, "--ids", "sub-004", "sub-005")
    line = _cli_fails(capsys, argv)
    assert f"{out / 'sub-005.nii.gz'} already exists (1 of the 2 output file(s) do)" in line
    assert "--overwrite" in line
    # Checked for every subject before generating: sub-004 was not written either.
    assert sorted(p.name for p in out.iterdir()) == ["sub-005.nii.gz"]
    assert (out / "sub-005.nii.gz").read_bytes() == b"precious"
    assert main([*argv, "--overwrite"]) == 0
    assert read_volume(out / "sub-005.nii.gz").shape == (16, 16, 16)
    assert (out / "sub-004.nii.gz").is_file()


# ------------------------------------------------------------------ absurd options


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e30", "-1"])
def test_absurd_guidance_is_refused_before_anything_is_written(
    ckpt, tiny_phantom, tmp_path, capsys, value
):
    for argv in (
        _generate(ckpt, tiny_phantom, tmp_path / "gen", "--ids", "sub-000"),
        _counterfactual(ckpt, tiny_phantom, tmp_path / "cf"),
    ):
        line = _cli_fails(capsys, [*argv, f"--guidance-scale={value}"])
        assert "--guidance-scale" in line and "between 0 and 100" in line
    assert list(tmp_path.iterdir()) == []


def test_bad_steps_and_seeds_are_refused(ckpt, tiny_phantom, tmp_path, capsys):
    gen = _generate(ckpt, tiny_phantom, tmp_path / "gen", "--ids", "sub-000")
    cf = _counterfactual(ckpt, tiny_phantom, tmp_path / "cf")
    assert "--steps 0 is not a whole number of at least 1" in _cli_fails(
        capsys, [*gen, "--steps", "0"]
    )
    assert "--steps -3" in _cli_fails(capsys, [*cf, "--steps", "-3"])
    assert "--seeds 0" in _cli_fails(capsys, [*cf, "--seeds", "0"])
    assert "--seed: -1 is negative" in _cli_fails(capsys, [*gen, "--seed", "-1"])
    assert list(tmp_path.iterdir()) == []


def test_steps_beyond_the_diffusion_schedule_are_refused(
    tiny_diffusion_run, tiny_phantom, tmp_path
):
    ck = tiny_diffusion_run.checkpoint
    with pytest.raises(UnveilError, match=r"--steps 100000 is more than the \d+ diffusion"):
        generate_cohort(ck, tiny_phantom, tmp_path / "gen", ids=["sub-000"], steps=100000)
    assert not (tmp_path / "gen").exists()


# ------------------------------------------------------------------ non-finite volumes


def _nan_on_call(monkeypatch, which):
    """Make Generator.generate return NaN on the calls numbered in ``which`` (from 1)."""
    real = cfmod.Generator.generate
    calls = []

    def fake(self, prepared, prompt, noise):
        calls.append(prompt)
        out = real(self, prepared, prompt, noise)
        return torch.full_like(out, float("nan")) if len(calls) in which else out

    monkeypatch.setattr(cfmod.Generator, "generate", fake)
    return calls


def test_generate_refuses_a_non_finite_volume(ckpt, tiny_phantom, tmp_path, capsys, monkeypatch):
    _nan_on_call(monkeypatch, {2})
    out = tmp_path / "gen"
    line = _cli_fails(
        capsys, _generate(ckpt, tiny_phantom, out, "--ids", "sub-004", "sub-005", "--seed", "7")
    )
    assert "the generated volume of subject sub-005, seed 7 holds 4096 non-finite value(s)" in line
    assert "a diverged checkpoint or a non-finite/huge --guidance-scale" in line
    # The finite one is complete; the NaN one was not written (nor a temporary file).
    assert sorted(p.name for p in out.iterdir()) == ["sub-004.nii.gz"]


def test_counterfactual_refuses_a_non_finite_floor_and_stays_incomplete(
    ckpt, tiny_phantom, tmp_path, monkeypatch
):
    _nan_on_call(monkeypatch, {2})  # factual, then floor: the floor is NaN
    out = tmp_path / "cf"
    with pytest.raises(UnveilError) as err:
        run_counterfactual(ckpt, tiny_phantom, out, **CF_ARGS)
    msg = str(err.value)
    assert "subject sub-000, seed 0 (noise floor) holds" in msg and "diverged checkpoint" in msg
    sub = out / "subjects" / "sub-000"
    assert sorted(p.name for p in sub.iterdir()) == ["factual_s0.nii.gz"]
    assert not (out / RUN_JSON).exists()  # the run is not marked complete
    with pytest.raises(UnveilError, match="incomplete|missing"):
        from unveil.records import read_run

        read_run(out)


# ------------------------------------------------------------------ resuming


def _volumes(run):
    return {p.relative_to(run): read_volume(p).array for p in sorted(run.rglob("*.nii.gz"))}


def _assert_same_run(a, b):
    ra, rb = (json.loads((r / RUN_JSON).read_text()) for r in (a, b))
    assert ra == rb
    va, vb = _volumes(a), _volumes(b)
    assert sorted(va) == sorted(vb) and len(va) == 2 * 2 * (2 + 1 + 1 + 1)
    for k in va:
        assert np.array_equal(va[k], vb[k]), k


def test_interrupted_counterfactual_resumes_to_the_uninterrupted_result(
    ckpt, tiny_phantom, complete_run, tmp_path, monkeypatch, caplog
):
    out = tmp_path / "cf"
    real = cfmod.Generator.generate
    calls = []

    def interrupt_after_7(self, *a):
        calls.append(1)
        if len(calls) > 7:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(cfmod.Generator, "generate", interrupt_after_7)
    with pytest.raises(KeyboardInterrupt):
        run_counterfactual(ckpt, tiny_phantom, out, **CF_ARGS)
    assert (out / PLAN_JSON).is_file() and not (out / RUN_JSON).exists()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert len(kept) == 7

    calls.clear()
    monkeypatch.setattr(
        cfmod.Generator, "generate", lambda self, *a: (calls.append(1), real(self, *a))[1]
    )
    with caplog.at_level(logging.INFO, logger="unveil.infer.counterfactual"):
        run_counterfactual(ckpt, tiny_phantom, out, **CF_ARGS)
    assert "7 of 20 volume(s) already written are kept (skipped), 13 to generate" in caplog.text
    # Only the missing volumes were made: at most 13 network passes (fewer where a
    # contrast leaves a subject's prompt unchanged and reuses its factual volume).
    assert 0 < len(calls) <= 13
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # the others untouched
    _assert_same_run(complete_run, out)


def test_deleted_volumes_and_record_are_regenerated_exactly(
    ckpt, tiny_phantom, complete_run, tmp_path, caplog
):
    out = shutil.copytree(complete_run, tmp_path / "cf")
    (out / RUN_JSON).unlink()
    for p in [
        *(out / "subjects" / "sub-001").glob("*_s1.nii.gz"),
        out / "subjects/sub-000/floor_s0.nii.gz",
    ]:
        p.unlink()
    with caplog.at_level(logging.INFO, logger="unveil.infer.counterfactual"):
        run_counterfactual(ckpt, tiny_phantom, out, **CF_ARGS)
    assert "14 of 20 volume(s) already written are kept" in caplog.text
    _assert_same_run(complete_run, out)


def test_resume_with_other_parameters_is_refused_unless_overwrite(
    ckpt, tiny_phantom, complete_run, tmp_path, capsys
):
    out = shutil.copytree(complete_run, tmp_path / "cf")
    # A complete run is refused as before.
    with pytest.raises(UnveilError, match="already holds a counterfactual run"):
        run_counterfactual(ckpt, tiny_phantom, out, **CF_ARGS)
    (out / RUN_JSON).unlink()  # now an interrupted run
    plan = (out / PLAN_JSON).read_bytes()
    line = _cli_fails(capsys, _counterfactual(ckpt, tiny_phantom, out, "--seeds", "2"))
    assert f"{out} holds an interrupted counterfactual run made with other parameters" in line
    assert "(null_edits, baseline, permuted_controls, subjects differ)" in line
    assert "choose another --out, or pass --overwrite" in line
    assert (out / PLAN_JSON).read_bytes() == plan and not (out / RUN_JSON).exists()
    # --overwrite starts again: every volume of the new run is regenerated.
    assert main([*_counterfactual(ckpt, tiny_phantom, out, "--overwrite")]) == 0
    run = json.loads((out / RUN_JSON).read_text())
    assert run["subjects"] == ["sub-000"] and run["seeds"] == [0] and run["null_edits"] == []
    assert json.loads((out / PLAN_JSON).read_text())["seeds"] == [0]


def test_stochastic_samplers_run_and_pairs_share_their_step_noise(tiny_phantom, tmp_path):
    """sampler=ddpm (noise at every step) used to fail with a ValueError traceback."""
    cfg = load_config(
        resolve_config_path("tiny-diffusion"),
        [*FAST, "diffusion.sample_steps=2", "diffusion.sampler=ddpm"],
    )
    ck = train(cfg, tiny_phantom, tmp_path / "run", steps=1, progress=False)
    runs = [
        run_counterfactual(
            ck,
            tiny_phantom,
            tmp_path / name,
            edits=["smoking=current"],
            seeds=1,
            ids=["sub-000"],
            progress=False,
        )
        for name in ("a", "b")
    ]
    vol = [read_volume(r / "subjects/sub-000/factual_s0.nii.gz").array for r in runs]
    assert np.isfinite(vol[0]).all() and np.array_equal(vol[0], vol[1])
    floor = read_volume(runs[0] / "subjects/sub-000/floor_s0.nii.gz").array
    assert not np.array_equal(floor, vol[0])  # another seed, other per-step noise


@pytest.mark.parametrize("command", ["generate", "counterfactual", "evaluate"])
def test_corrupt_splits_json_with_split_is_one_sentence(
    ckpt, tiny_phantom, tmp_path, capsys, command
):
    """--split reads the training run's splits.json: a cut file is named, not a traceback."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    copy = run / "checkpoints" / ckpt.name
    shutil.copy(ckpt, copy)
    (run / "splits.json").write_text('{"splits": {"train": [')
    argv = [command, "--checkpoint", str(copy), "--cohort", str(tiny_phantom),
            "--out", str(tmp_path / "out"), "--split", "test"]  # fmt: skip
    if command == "counterfactual":
        argv += ["--edit", "smoking=current"]
    line = _cli_fails(capsys, argv)
    assert "splits.json" in line and "not valid JSON" in line
    assert not (tmp_path / "out").exists()
