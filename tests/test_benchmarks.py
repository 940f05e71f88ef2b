"""Smoke test of benchmarks/train_step.py at the tiniest settings.

Timings are never asserted (project rule); what is checked is that the script measures
what it says: parameter counts of the real models, ratios to the baseline of the same run,
the implied time per diffusion patch, the published comparison arithmetic, per-case child
processes for peak memory, and failures reported without ending the run.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"

# Shrink the shipped realistic configs to seconds: 8^3 patches, 8/16-channel UNet, a
# 1-layer PatchGAN (2 layers would reduce 8 voxels to a 1-voxel logit grid).
TINY = [
    "--device", "cpu", "--sizes", "8x8x8:b2", "--iters", "2", "--warmup", "0",
    "--threads", "1", "--text-tokens", "6",
    "--set", "model.channels=[8,16]", "--set", "model.norm_groups=4", "--set", "model.heads=2",
    "--set", "gan.disc_channels=8", "--set", "gan.disc_layers=1", "--set", "text.cond_dim=16",
]  # fmt: skip


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    return importlib.import_module("train_step")


def test_parse_sizes(bench):
    sizes = bench.parse_sizes("64x64x32:b2, 128x128x64:b1,16x16x8")
    assert [(s.shape, s.batch) for s in sizes] == [
        ((64, 64, 32), 2),
        ((128, 128, 64), 1),
        ((16, 16, 8), 1),
    ]
    assert sizes[0].label == "64x64x32"
    for bad in ("64x64:b2", "64x64x32:bx", "0x8x8", "64x64x32:b0", ""):
        with pytest.raises(ValueError, match="64x64x32:b2"):
            bench.parse_sizes(bad)


def test_published_table_arithmetic(bench):
    common = {"shape": [64, 64, 32], "params_d": 0}
    results = [
        # GAN at the published batch: plain ratio 8.0 / 2.0 = 4x, patch 1.2 / 0.6 = 2x.
        {**common, "config": "gan-affine", "family": "gan", "batch": 2, "params_g": 10**7,
         "params_d": 2 * 10**6, "train_med": 2.0, "eval_med": 0.6, "patch_s": 0.6},
        # Diffusion at batch 2 against the published batch 1: per sample, 12.5 / (5 / 2) = 5x;
        # patch 4.6 * 250 / (0.5 * 50) = 46x.
        {**common, "config": "diffusion-affine", "family": "diffusion", "batch": 2,
         "params_g": 10**7, "train_med": 5.0, "eval_med": 0.5, "patch_s": 25.0},
        # Another shape is not compared with the published figures.
        {**common, "shape": [128, 128, 64], "config": "gan-maskonly", "family": "gan",
         "batch": 1, "params_g": 1, "train_med": 1.0, "eval_med": 1.0, "patch_s": 1.0},
    ]  # fmt: skip
    table = bench.published_table(results)
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, two rows
    gan, diff = lines[2], lines[3]
    assert gan.startswith("gan-affine") and "12.00M" in gan and "79.00M" in gan
    assert "4.00x" in gan and "2.00x" in gan and "train ok (3x), patch NO (3x)" in gan
    assert "5.00x*" in diff and "46.00x" in diff and "train ok (3x), patch ok (15x)" in diff
    assert "9.20x" in diff  # one denoising step: 4.6 / 0.5
    assert bench.published_table([results[2]]) is None


def test_format_table_markdown():
    import sys

    sys.path.insert(0, str(BENCH_DIR))
    try:
        from _common import format_table
    finally:
        sys.path.remove(str(BENCH_DIR))
    text = format_table(["a", "bb"], [["x", "1"], ["yy", "22"]], markdown=True)
    assert text.splitlines() == ["| a  | bb |", "|----|---:|", "| x  |  1 |", "| yy | 22 |"]
    with pytest.raises(ValueError, match="2 cells"):
        format_table(["a"], [["x", "y"]])


def test_in_process_run_prints_table(bench, tmp_path, capsys):
    import torch

    from unveil.config import load_config, resolve_config_path
    from unveil.model import ModelMeta, build_models
    from unveil.nn.build import count_parameters

    out = tmp_path / "bench.json"
    argv = [*TINY, "--families", "gan,diffusion", "--fusions", "affine", "--no-isolate"]
    argv += ["--iters", "1", "--rounds", "2"]  # later flags win: 1 call x 2 rounds
    rc = bench.main([*argv, "--markdown", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    table = [ln for ln in captured.out.splitlines() if ln.startswith("| ")]
    configs = [ln.split("|")[1].strip() for ln in table]
    # The baseline is added although --fusions did not name it, and comes first.
    assert configs[1:] == ["gan-maskonly", "gan-affine", "diffusion-maskonly", "diffusion-affine"]
    # Progress goes to stderr; the second round starts again from the first case.
    assert "[4/8] diffusion-affine 8x8x8 b2 ..." in captured.err
    assert "[5/8] gan-maskonly 8x8x8 b2 ..." in captured.err

    results = {r["config"]: r for r in json.loads(out.read_text())["results"]}
    overrides = [a for a, prev in zip(argv[1:], argv, strict=False) if prev == "--set"]
    for name, r in results.items():
        assert len(r["train_s"]) == 2 and len(r["eval_s"]) == 2 and r["rounds"] == 2
        assert r["train_med"] == pytest.approx(sum(r["train_s"]) / 2)  # median of two
        assert r["train_busy"] > 0 and r["eval_gflop"] > 0
        assert r["threads"] == 1 and r["pid"] == os.getpid()
        cfg = load_config(resolve_config_path(name), overrides)
        meta = ModelMeta(["a", "b", "c"], 1, "minilm", "", 384, 384, {}, "")
        torch.manual_seed(0)
        gen, disc = build_models(cfg, meta)
        assert r["params_g"] == count_parameters(gen)
        assert r["params_d"] == (count_parameters(disc) if disc is not None else 0)
        row = next(ln for ln in table if ln.split("|")[1].strip() == name)
        assert f"{r['params_g'] / 1e6:.2f}M" in row
    # Diffusion: the patch time is implied from the shipped 50 DDIM steps, and the text
    # model's guided step evaluates conditional + null branches in one batch of 2.
    d_base, d_aff = results["diffusion-maskonly"], results["diffusion-affine"]
    assert d_aff["sample_steps"] == 50
    assert d_aff["patch_s"] == pytest.approx(50 * d_aff["eval_med"])
    assert (d_base["evals_batch"], d_aff["evals_batch"]) == (1, 2)
    assert d_aff["eval_gflop"] > 1.9 * d_base["eval_gflop"]
    assert results["gan-affine"]["patch_s"] == results["gan-affine"]["eval_med"]
    # Ratio columns are against the same-run baseline.
    base_row = next(ln for ln in table if "gan-maskonly" in ln)
    aff_row = next(ln for ln in table if "gan-affine" in ln)
    g_base, g_aff = results["gan-maskonly"], results["gan-affine"]
    assert base_row.count("1.00x") == 3
    assert f"{g_aff['train_med'] / g_base['train_med']:.2f}x" in aff_row
    assert "(50)" in captured.out and "cumulative" in captured.out

    # Saved results print the same report again without measuring (to merge runs).
    assert bench.main(["--load", str(out), "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == captured.out.strip()


def test_isolated_child_and_failed_case(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [*TINY, "--families", "gan", "--fusions", "maskonly", "--json", str(out)]
    rc = bench.main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    (r,) = json.loads(out.read_text())["results"]
    # Measured in a child process, whose own high-water mark is the peak.
    assert r["pid"] != os.getpid()
    assert r["peak_kind"] == "process peak RSS"
    assert r["peak_mib"] >= r["import_rss_mib"] > 50
    assert "fresh process per case" in captured.out

    # Channels that norm_groups (4) does not divide are refused by the config check: the
    # case is reported as failed under the table and the exit status is 1.
    rc = bench.main([*TINY, "--families", "gan", "--fusions", "maskonly", "--no-isolate",
                     "--set", "model.channels=[6,12]"])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1
    assert "failed" in captured.out and "norm_groups" in captured.out


def test_bad_arguments(bench, capsys):
    assert bench.main(["--sizes", "64x64", "--device", "cpu"]) == 2
    assert "DxHxW:bN" in capsys.readouterr().err
    assert bench.main(["--fusions", "film", "--device", "cpu"]) == 2
    assert "maskonly,concat" in capsys.readouterr().err.replace(", ", ",")
    assert bench.main(["--load", "/nonexistent/bench.json"]) == 2
    assert "written by --json" in capsys.readouterr().err


def test_a_saved_file_without_a_field_is_one_sentence(bench, tmp_path, capsys):
    # A results file whose measured row lacks a field (an older script, a hand edit) is
    # refused naming the field, before any table is printed.
    info = {
        "date": "today",
        "device": "cpu",
        "device_name": "x",
        "torch": "2",
        "threads": 1,
        "amp": "none",
        "warmup": 0,
        "iters": 1,
        "rounds": 1,
        "isolated": False,
    }
    failed = {
        "config": "gan-maskonly",
        "family": "gan",
        "fusion": "none",
        "shape": [8, 8, 8],
        "batch": 1,
        "error": "RuntimeError: out of memory",
    }
    measured = {**failed, "config": "gan-affine", "fusion": "affine", "device": "cpu"}
    del measured["error"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"info": info, "args": {}, "results": [failed, measured]}))
    assert bench.main(["--load", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lacks the field 'results.1.threads'" in err
    assert err.endswith("rerun the benchmark with --json PATH.")
    # A file of failed rows only is read (and printed with its failures).
    path.write_text(json.dumps({"info": info, "args": {}, "results": [failed]}))
    bench.main(["--load", str(path)])
    assert "failed: gan-maskonly 8x8x8 b1: RuntimeError: out of memory" in capsys.readouterr().out  # fmt: skip


# ------------------------------------------------------------------ train_loop.py


@pytest.fixture()
def loop_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    return importlib.import_module("train_loop")


def test_train_loop_smoke(loop_bench, tmp_path, capsys):
    """The real loop against the bare step at tiny size: one row, the arithmetic of the
    steady-state window and of the amortised checkpoint, and the last line."""
    out = tmp_path / "loop.json"
    argv = ["--configs", "tiny-gan", "--device", "cpu", "--threads", "1", "--steps", "6",
            "--skip", "1", "--rounds", "2", "--subjects", "6", "--bare-block", "1",
            "--set", "train.ckpt_every=2", "--work", str(tmp_path / "w"), "--json", str(out)]  # fmt: skip
    rc = loop_bench.main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    (r,) = json.loads(out.read_text())["results"]
    assert lines[-1] == f"loop efficiency: {r['efficiency']:.3f}"
    row = next(ln for ln in lines if ln.startswith("tiny-gan"))
    assert f"{r['efficiency']:.3f}" in row and "16x16x16" in row
    # The window runs from the end of step 1 to the end of step 5 (4 steps) in 2 segments:
    # bare blocks after steps 1, 3 and 5.  The checkpoints of steps 2 and 4 fall inside it
    # and are taken out, then added back once per ckpt_every (saves at 2, 4 and 6).
    assert r["window_steps"] == 4 and len(r["bare_s"]) == 3
    assert r["n_ckpt"] == 3 and r["ckpt_every"] == 2
    assert r["loop_s"] == pytest.approx(r["steady_s"] + r["ckpt_s"] / 2)
    assert r["efficiency"] == pytest.approx(r["bare_med"] / r["loop_s"])
    assert r["n_val"] == 0 and "validation (whole-volume generation) skipped" in captured.out
    assert "tiny-gan (cpu): 6 loop steps, 3 bare blocks of 1 steps" in captured.err
    # The run is real: one loss record per step, the last checkpoint at step 6.
    run = tmp_path / "w" / "run-tiny-gan"
    assert len((run / "losses.jsonl").read_text().splitlines()) == 6
    assert (run / "checkpoints" / "ckpt-00000006.pt").exists()


def test_train_loop_patch_read_and_bad_arguments(loop_bench, tmp_path, capsys):
    argv = ["--patch-read", "16", "--patch-iters", "2", "--work", str(tmp_path)]
    assert loop_bench.main(argv) == 0
    out = capsys.readouterr().out
    for way in ("in memory", "memory map (unveil.data.stream)", "MONAI PersistentDataset"):
        assert way in out
    assert "patch 8x8x8" in out
    assert (
        loop_bench.main(["--configs", "demo", "--steps", "4", "--skip", "2", "--device", "cpu"])
        == 2
    )
    assert "--steps must exceed --skip by more than --rounds" in capsys.readouterr().err
